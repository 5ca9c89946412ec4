//! The daemon's typed domain: the states and kinds the catalog stores as
//! text, as enums, with their one text form (what the catalog holds) and
//! their one conversion to the API.

use imprint_proto::v1 as pb;

/// A text (in the catalog) or number (in a request) that names no value
/// of the enum it should.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {text:?}")]
pub struct UnknownText {
    /// What it should have named.
    pub what: &'static str,
    /// What it said.
    pub text: String,
}

/// An enum stored as one of a fixed set of texts.
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text the catalog stores.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownText;

            fn from_str(s: &str) -> Result<Self, UnknownText> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownText { what: $what, text: s.to_string() }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// The life of an image in the catalog.
    ImageState, "image state" {
        /// Its capture or import runs.
        Creating = "creating",
        /// Deployable.
        Active = "active",
        /// Its capture failed; kept with the reason until deleted.
        Failed = "failed",
        /// Deployable, left out of default listings.
        Deprecated = "deprecated",
        /// Its delete runs.
        Deleting = "deleting",
        /// Gone from the store; the row keeps the history.
        Deleted = "deleted",
    }
}

impl ImageState {
    /// May be deployed (and exported, copied).
    pub fn deployable(self) -> bool {
        matches!(self, ImageState::Active | ImageState::Deprecated)
    }
}

impl From<ImageState> for pb::ImageState {
    fn from(s: ImageState) -> Self {
        match s {
            ImageState::Creating => pb::ImageState::Creating,
            ImageState::Active => pb::ImageState::Active,
            ImageState::Failed => pb::ImageState::Failed,
            ImageState::Deprecated => pb::ImageState::Deprecated,
            ImageState::Deleting => pb::ImageState::Deleting,
            ImageState::Deleted => pb::ImageState::Deleted,
        }
    }
}

impl TryFrom<pb::ImageState> for ImageState {
    type Error = UnknownText;

    fn try_from(s: pb::ImageState) -> Result<Self, UnknownText> {
        Ok(match s {
            pb::ImageState::Creating => ImageState::Creating,
            pb::ImageState::Active => ImageState::Active,
            pb::ImageState::Failed => ImageState::Failed,
            pb::ImageState::Deprecated => ImageState::Deprecated,
            pb::ImageState::Deleting => ImageState::Deleting,
            pb::ImageState::Deleted => ImageState::Deleted,
            pb::ImageState::Unspecified => {
                return Err(UnknownText {
                    what: "image state",
                    text: s.as_str_name().to_string(),
                });
            }
        })
    }
}

text_enum! {
    /// Who sees an image.
    Visibility, "visibility" {
        /// Its owner.
        Private = "private",
        /// Its owner and the accounts it is shared with (who accepted).
        Shared = "shared",
        /// Everyone.
        Public = "public",
    }
}

impl From<Visibility> for pb::Visibility {
    fn from(v: Visibility) -> Self {
        match v {
            Visibility::Private => pb::Visibility::Private,
            Visibility::Shared => pb::Visibility::Shared,
            Visibility::Public => pb::Visibility::Public,
        }
    }
}

/// A filter on visibility: none (unspecified) or one.
pub fn visibility_filter(v: i32) -> Result<Option<Visibility>, UnknownText> {
    match pb::Visibility::try_from(v) {
        Ok(pb::Visibility::Unspecified) => Ok(None),
        Ok(pb::Visibility::Private) => Ok(Some(Visibility::Private)),
        Ok(pb::Visibility::Shared) => Ok(Some(Visibility::Shared)),
        Ok(pb::Visibility::Public) => Ok(Some(Visibility::Public)),
        Err(_) => Err(UnknownText {
            what: "visibility",
            text: v.to_string(),
        }),
    }
}

text_enum! {
    /// A stored copy of an image at a site.
    LocationState, "location state" {
        /// Complete: deploys at that site read it.
        Available = "available",
        /// Its copy runs.
        Copying = "copying",
    }
}

impl From<LocationState> for pb::LocationState {
    fn from(s: LocationState) -> Self {
        match s {
            LocationState::Available => pb::LocationState::Available,
            LocationState::Copying => pb::LocationState::Copying,
        }
    }
}

text_enum! {
    /// Where an operation is.
    OpState, "operation state" {
        /// An agent works on it.
        Running = "running",
        /// Done.
        Succeeded = "succeeded",
        /// Ended with an error.
        Failed = "failed",
        /// Stopped on request.
        Cancelled = "cancelled",
    }
}

impl OpState {
    /// Final: nothing changes it any more.
    pub fn is_final(self) -> bool {
        self != OpState::Running
    }
}

impl From<OpState> for pb::OperationState {
    fn from(s: OpState) -> Self {
        match s {
            OpState::Running => pb::OperationState::Running,
            OpState::Succeeded => pb::OperationState::Succeeded,
            OpState::Failed => pb::OperationState::Failed,
            OpState::Cancelled => pb::OperationState::Cancelled,
        }
    }
}

text_enum! {
    /// What an operation does.
    OpKind, "operation kind" {
        /// A guest into a new image.
        Capture = "capture",
        /// An image into a new guest.
        Deploy = "deploy",
        /// An image out of the store and the catalog.
        Delete = "delete",
        /// A disk file (or URL) into a new image.
        Import = "import",
        /// An image's disk into a file.
        Export = "export",
        /// An image to another site's store.
        Copy = "copy",
        /// An image's disks read for what its deploys will meet.
        Lint = "lint",
        /// A guest forced off, its pool volumes deleted, undefined.
        DeleteGuest = "delete-guest",
    }
}

impl OpKind {
    /// Makes a new image (its row is created with the operation).
    pub fn creates_image(self) -> bool {
        matches!(self, OpKind::Capture | OpKind::Import)
    }

    /// Changes an existing guest (named by its libvirt UUID in the row):
    /// at most one such operation runs per guest.
    pub fn changes_guest(self) -> bool {
        matches!(self, OpKind::Capture | OpKind::DeleteGuest)
    }

    /// How a refusal names what a guest-changing operation does.
    pub fn guest_change_words(self) -> &'static str {
        match self {
            OpKind::DeleteGuest => "deleted",
            _ => "captured",
        }
    }

    /// Reads an existing image (which may then not be deleted).
    pub fn reads_image(self) -> bool {
        matches!(
            self,
            OpKind::Deploy | OpKind::Export | OpKind::Copy | OpKind::Lint
        )
    }
}

text_enum! {
    /// A member's answer to an image shared with it.
    ShareStatus, "share status" {
        /// Not answered yet: the image is visible but not listed.
        Pending = "pending",
        /// Listed among the member's images.
        Accepted = "accepted",
        /// Hidden from the member.
        Rejected = "rejected",
    }
}

/// The phases the daemon itself sets; agents report their own (free text,
/// shown as they are).
pub mod phase {
    /// Recorded, not yet acknowledged by its agent (sent again on resume).
    pub const QUEUED: &str = "queued";
    /// Acknowledged by its agent, which reported no phase yet.
    pub const DISPATCHED: &str = "dispatched";
    /// Final (set with the final state).
    pub const DONE: &str = "done";

    /// The phase to record for what an agent that has the operation
    /// reports. An agent says "queued" for one it accepted and has not
    /// started; recorded as it is, that would read as [`QUEUED`] here (not
    /// acknowledged) and the request would be sent again to an agent that
    /// restarted and forgot it, running the operation twice.
    pub fn reported(agent_phase: &str) -> &str {
        if agent_phase.is_empty() || agent_phase == QUEUED {
            DISPATCHED
        } else {
            agent_phase
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The catalog's SQL names states and kinds by their text; every such
    /// literal must be a text of one of the enums (a typo would match no
    /// row, silently).
    #[test]
    fn sql_literals_are_known_texts() {
        let known: Vec<&str> = ImageState::ALL
            .iter()
            .map(|v| v.as_str())
            .chain(OpState::ALL.iter().map(|v| v.as_str()))
            .chain(OpKind::ALL.iter().map(|v| v.as_str()))
            .chain(Visibility::ALL.iter().map(|v| v.as_str()))
            .chain(LocationState::ALL.iter().map(|v| v.as_str()))
            .chain(ShareStatus::ALL.iter().map(|v| v.as_str()))
            .chain([phase::QUEUED, phase::DISPATCHED, phase::DONE])
            .collect();
        let sources = [
            include_str!("catalog/mod.rs"),
            include_str!("catalog/accounts.rs"),
            include_str!("catalog/images.rs"),
            include_str!("catalog/operations.rs"),
            include_str!("catalog/sharing.rs"),
            include_str!("catalog/sites.rs"),
            include_str!("catalog/hosts.rs"),
        ];
        let mut checked = 0;
        for src in sources {
            // Lines of SQL text: inside a string, quoted words.
            for line in src
                .lines()
                .filter(|l| l.contains('\'') && !l.trim_start().starts_with("//"))
            {
                let mut parts = line.split('\'');
                parts.next();
                while let (Some(word), Some(_)) = (parts.next(), parts.next()) {
                    // Lower-case words, with '-' inside ('delete-guest').
                    if word.starts_with(|c: char| c.is_ascii_lowercase())
                        && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                    {
                        assert!(
                            known.contains(&word),
                            "unknown state text '{word}' in: {line}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(
            checked > 30,
            "only {checked} SQL literals found: the scan is broken"
        );
    }

    #[test]
    fn texts_round_trip_and_unknown_ones_are_named() {
        for s in ImageState::ALL {
            assert_eq!(s.as_str().parse::<ImageState>(), Ok(*s));
            assert_eq!(ImageState::try_from(pb::ImageState::from(*s)), Ok(*s));
        }
        for s in OpState::ALL {
            assert_eq!(s.as_str().parse::<OpState>(), Ok(*s));
        }
        for v in Visibility::ALL {
            assert_eq!(v.as_str().parse::<Visibility>(), Ok(*v));
            assert_eq!(
                visibility_filter(pb::Visibility::from(*v) as i32),
                Ok(Some(*v))
            );
        }
        assert_eq!(visibility_filter(0), Ok(None));
        assert!(visibility_filter(42).is_err());
        for l in LocationState::ALL {
            assert_eq!(l.as_str().parse::<LocationState>(), Ok(*l));
        }
        for k in OpKind::ALL {
            assert_eq!(k.as_str().parse::<OpKind>(), Ok(*k));
        }
        let e = "lost".parse::<ImageState>().expect_err("unknown");
        assert_eq!(e.to_string(), "unknown image state \"lost\"");
        assert!(ImageState::try_from(pb::ImageState::Unspecified).is_err());
    }

    /// What an agent that has the operation reports never reads as "not
    /// acknowledged" (which would send the request again to an agent that
    /// restarted and forgot it: the operation would run twice).
    #[test]
    fn an_accepted_operation_is_never_recorded_queued() {
        assert_eq!(phase::reported("queued"), phase::DISPATCHED);
        assert_eq!(phase::reported(""), phase::DISPATCHED);
        assert_eq!(phase::reported("shutting down"), "shutting down");
    }
}
