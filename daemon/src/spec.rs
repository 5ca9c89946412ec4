//! Validation at the proto edge: each mutating image request becomes a
//! spec here, or is refused with INVALID_ARGUMENT before anything is read
//! or written. Rules shared with the agent and the CLI (guest names,
//! sizes, user-data) come from [`imprint_proto::limits`]; checks that need
//! the catalog (the image's disks, visibility) are the operation's.

use imprint_proto::{hardware::Hardware, limits, v1 as pb};

use crate::{
    catalog::{ListQuery, validate_image_name, validate_notes, validate_site_name, validate_tags},
    domain::ImageState,
    error::DaemonError,
};

/// The longest request id a caller may give.
const MAX_REQUEST_ID: usize = 128;

/// A caller's idempotency key: retries with it return the first answer.
fn request_id(id: String) -> Result<Option<String>, DaemonError> {
    if id.len() > MAX_REQUEST_ID {
        return Err(DaemonError::invalid(format!(
            "request_id is longer than {MAX_REQUEST_ID} characters"
        )));
    }
    Ok(Some(id).filter(|s| !s.is_empty()))
}

/// Name, notes and tags of a new image.
#[derive(Debug, Clone)]
pub struct ImageMeta {
    /// Image name.
    pub name: String,
    /// Free text.
    pub notes: String,
    /// Tags.
    pub tags: Vec<String>,
}

impl ImageMeta {
    fn new(name: String, notes: String, tags: Vec<String>) -> Result<Self, DaemonError> {
        validate_image_name(&name)?;
        validate_notes(&notes)?;
        validate_tags(&tags)?;
        Ok(Self { name, notes, tags })
    }
}

/// A capture of a guest into a new image.
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    /// Idempotency key.
    pub request_id: Option<String>,
    /// The new image.
    pub meta: ImageMeta,
    /// The guest, by name or UUID.
    pub guest: String,
    /// The host (empty: the only one the caller may use).
    pub host: String,
    /// Disks not to capture.
    pub exclude_disks: Vec<String>,
    /// How long a shutdown may take.
    pub shutdown_timeout_seconds: u32,
    /// Power off a guest that does not shut down.
    pub allow_force_off: bool,
    /// Offline, live or crash-consistent.
    pub mode: pb::CaptureMode,
    /// A live capture's freeze limit (0: the agent's).
    pub freeze_timeout_seconds: u32,
    /// Store the image generalized.
    pub seal: bool,
}

impl TryFrom<pb::CaptureImageRequest> for CaptureSpec {
    type Error = DaemonError;

    fn try_from(r: pb::CaptureImageRequest) -> Result<Self, DaemonError> {
        let meta = ImageMeta::new(r.name, r.notes, r.tags)?;
        if r.guest.is_empty() {
            return Err(DaemonError::invalid("guest is required"));
        }
        if r.shutdown_timeout_seconds > 86_400 {
            return Err(DaemonError::invalid(
                "shutdown_timeout_seconds is more than a day",
            ));
        }
        let mode = pb::CaptureMode::try_from(r.mode).map_err(|_| {
            DaemonError::invalid(format!("capture mode {} is not a CaptureMode", r.mode))
        })?;
        if r.freeze_timeout_seconds > 3_600 {
            return Err(DaemonError::invalid(
                "freeze_timeout_seconds is more than an hour",
            ));
        }
        if r.freeze_timeout_seconds != 0 && mode != pb::CaptureMode::Live {
            return Err(DaemonError::invalid(
                "freeze_timeout_seconds is for live captures (mode LIVE)",
            ));
        }
        Ok(Self {
            request_id: request_id(r.request_id)?,
            meta,
            guest: r.guest,
            host: r.host,
            exclude_disks: r.exclude_disks,
            shutdown_timeout_seconds: r.shutdown_timeout_seconds,
            allow_force_off: r.allow_force_off,
            mode,
            freeze_timeout_seconds: r.freeze_timeout_seconds,
            seal: r.seal,
        })
    }
}

/// A deploy of an image as a new guest. The sizes are checked against the
/// image's disks when the image is read.
#[derive(Debug, Clone)]
pub struct DeploySpec {
    /// Idempotency key.
    pub request_id: Option<String>,
    /// The request, every field checked that can be without the catalog.
    pub req: pb::DeployImageRequest,
}

impl TryFrom<pb::DeployImageRequest> for DeploySpec {
    type Error = DaemonError;

    fn try_from(mut r: pb::DeployImageRequest) -> Result<Self, DaemonError> {
        limits::check_guest_name(&r.guest_name).map_err(DaemonError::invalid)?;
        limits::check_vcpus(r.vcpus).map_err(DaemonError::invalid)?;
        limits::check_memory_mib(r.memory_mib).map_err(DaemonError::invalid)?;
        limits::check_user_data(&r.user_data).map_err(DaemonError::invalid)?;
        Ok(Self {
            request_id: request_id(std::mem::take(&mut r.request_id))?,
            req: r,
        })
    }
}

/// An import of a file on a host as a new image.
#[derive(Debug, Clone)]
pub struct ImportSpec {
    /// Idempotency key.
    pub request_id: Option<String>,
    /// The new image.
    pub meta: ImageMeta,
    /// The file on the host, or a URL.
    pub path: String,
    /// Its format (0: detected).
    pub format: i32,
    /// The host (empty: the only one the caller may use).
    pub host: String,
    /// A hardware profile to start from.
    pub profile: String,
    /// Hardware given inline, over the profile's.
    pub hardware: Hardware,
}

impl TryFrom<pb::ImportImageRequest> for ImportSpec {
    type Error = DaemonError;

    fn try_from(r: pb::ImportImageRequest) -> Result<Self, DaemonError> {
        let meta = ImageMeta::new(r.name, r.notes, r.tags)?;
        if r.path.is_empty() {
            return Err(DaemonError::invalid("path is required"));
        }
        let hardware = r
            .hardware
            .as_ref()
            .map(Hardware::try_from)
            .transpose()
            .map_err(DaemonError::invalid)?
            .unwrap_or_default();
        Ok(Self {
            request_id: request_id(r.request_id)?,
            meta,
            path: r.path,
            format: r.format,
            host: r.host,
            profile: r.profile,
            hardware,
        })
    }
}

/// An export of one disk of an image to a file on a host.
#[derive(Debug, Clone)]
pub struct ExportSpec {
    /// Idempotency key.
    pub request_id: Option<String>,
    /// The image.
    pub image_id: String,
    /// Which disk.
    pub disk: u32,
    /// The file to write.
    pub path: String,
    /// Its format.
    pub format: i32,
    /// The host (empty: the only one the caller may use).
    pub host: String,
}

impl TryFrom<pb::ExportImageRequest> for ExportSpec {
    type Error = DaemonError;

    fn try_from(r: pb::ExportImageRequest) -> Result<Self, DaemonError> {
        Ok(Self {
            request_id: request_id(r.request_id)?,
            image_id: r.image_id,
            disk: r.disk,
            path: r.path,
            format: r.format,
            host: r.host,
        })
    }
}

impl ExportSpec {
    /// The file is checked after the image's visibility (NOT_FOUND first).
    pub fn check_path(&self) -> Result<(), DaemonError> {
        if self.path.is_empty() {
            return Err(DaemonError::invalid("path is required"));
        }
        Ok(())
    }
}

/// A lint of an image on a host.
#[derive(Debug, Clone)]
pub struct LintSpec {
    /// Idempotency key.
    pub request_id: Option<String>,
    /// The image.
    pub image_id: String,
    /// The host (empty: the only one the caller may use).
    pub host: String,
}

impl TryFrom<pb::ImageLintRequest> for LintSpec {
    type Error = DaemonError;

    fn try_from(r: pb::ImageLintRequest) -> Result<Self, DaemonError> {
        Ok(Self {
            request_id: request_id(r.request_id)?,
            image_id: r.image_id,
            host: r.host,
        })
    }
}

/// The longest guest name (or UUID) a delete names: libvirt's names are
/// free text, but no sane one is longer.
const MAX_GUEST_NAME: usize = 255;

/// A delete of a guest.
#[derive(Debug, Clone)]
pub struct DeleteGuestSpec {
    /// Idempotency key.
    pub request_id: Option<String>,
    /// The host.
    pub host: String,
    /// The guest's name or UUID.
    pub guest: String,
}

impl TryFrom<pb::DeleteGuestRequest> for DeleteGuestSpec {
    type Error = DaemonError;

    fn try_from(r: pb::DeleteGuestRequest) -> Result<Self, DaemonError> {
        if r.host.is_empty() {
            return Err(DaemonError::invalid("host is required"));
        }
        if r.guest.is_empty() {
            return Err(DaemonError::invalid("guest is required"));
        }
        // Guests made outside imprint may have names imprint would not
        // give: refuse only what libvirt cannot name.
        if r.guest.len() > MAX_GUEST_NAME
            || r.guest.contains('/')
            || r.guest.chars().any(char::is_control)
        {
            return Err(DaemonError::invalid(format!(
                "guest {:?} is not a guest name or UUID (at most {MAX_GUEST_NAME} bytes, no '/' or control characters)",
                r.guest
            )));
        }
        Ok(Self {
            request_id: request_id(r.request_id)?,
            host: r.host,
            guest: r.guest,
        })
    }
}

/// A copy of an image to another site's store.
#[derive(Debug, Clone)]
pub struct CopySpec {
    /// Idempotency key.
    pub request_id: Option<String>,
    /// The image.
    pub image_id: String,
    /// The target site.
    pub site: String,
}

impl TryFrom<pb::CopyImageRequest> for CopySpec {
    type Error = DaemonError;

    fn try_from(r: pb::CopyImageRequest) -> Result<Self, DaemonError> {
        Ok(Self {
            request_id: request_id(r.request_id)?,
            image_id: r.image_id,
            site: r.site,
        })
    }
}

impl CopySpec {
    /// The site name is checked after the image's visibility.
    pub fn check_site(&self) -> Result<(), DaemonError> {
        Ok(validate_site_name(&self.site)?)
    }
}

/// A delete of an image.
#[derive(Debug, Clone)]
pub struct DeleteSpec {
    /// Idempotency key.
    pub request_id: Option<String>,
    /// The image.
    pub image_id: String,
}

impl TryFrom<pb::DeleteImageRequest> for DeleteSpec {
    type Error = DaemonError;

    fn try_from(r: pb::DeleteImageRequest) -> Result<Self, DaemonError> {
        Ok(Self {
            request_id: request_id(r.request_id)?,
            image_id: r.id,
        })
    }
}

/// The fields an update may change.
const UPDATABLE: [&str; 8] = [
    "name",
    "notes",
    "tags",
    "recommended_profiles",
    "min_vcpus",
    "min_memory_mib",
    "min_disk_bytes",
    "hardware",
];

/// Changes to an image's metadata: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UpdateSpec {
    /// The image.
    pub id: String,
    /// New name.
    pub name: Option<String>,
    /// New notes.
    pub notes: Option<String>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// Profiles recommended for deploys.
    pub recommended_profiles: Option<Vec<String>>,
    /// Least vCPUs a deploy may give.
    pub min_vcpus: Option<u32>,
    /// Least memory a deploy may give.
    pub min_memory_mib: Option<u64>,
    /// Least size of a deploy's first disk.
    pub min_disk_bytes: Option<u64>,
    /// The image's hardware.
    pub hardware: Option<pb::HardwareProfile>,
}

impl UpdateSpec {
    /// Whether any of the hardware fields changes.
    pub fn changes_hardware(&self) -> bool {
        self.recommended_profiles.is_some()
            || self.min_vcpus.is_some()
            || self.min_memory_mib.is_some()
            || self.min_disk_bytes.is_some()
            || self.hardware.is_some()
    }

    /// Whether any of name, notes, tags changes.
    pub fn changes_meta(&self) -> bool {
        self.name.is_some() || self.notes.is_some() || self.tags.is_some()
    }
}

impl TryFrom<pb::UpdateImageRequest> for UpdateSpec {
    type Error = DaemonError;

    fn try_from(r: pb::UpdateImageRequest) -> Result<Self, DaemonError> {
        if r.update_mask.is_empty() {
            return Err(DaemonError::invalid(
                "update_mask is empty; name the fields to change: name, notes, tags",
            ));
        }
        if let Some(f) = r
            .update_mask
            .iter()
            .find(|f| !UPDATABLE.contains(&f.as_str()))
        {
            return Err(DaemonError::invalid(format!(
                "cannot update {f:?}; update_mask takes {}",
                UPDATABLE.join(", ")
            )));
        }
        let has = |f: &str| r.update_mask.iter().any(|m| m == f);
        let spec = UpdateSpec {
            name: has("name").then_some(r.name),
            notes: has("notes").then_some(r.notes),
            tags: has("tags").then_some(r.tags),
            recommended_profiles: has("recommended_profiles").then_some(r.recommended_profiles),
            min_vcpus: has("min_vcpus").then_some(r.min_vcpus),
            min_memory_mib: has("min_memory_mib").then_some(r.min_memory_mib),
            min_disk_bytes: has("min_disk_bytes").then_some(r.min_disk_bytes),
            hardware: has("hardware").then(|| r.hardware.unwrap_or_default()),
            id: r.id,
        };
        if let Some(h) = &spec.hardware {
            Hardware::try_from(h).map_err(DaemonError::invalid)?;
        }
        if spec
            .min_memory_mib
            .is_some_and(|m| m > limits::MAX_MEMORY_MIB)
        {
            return Err(DaemonError::invalid("min_memory_mib is more than 16 TiB"));
        }
        if spec.min_vcpus.is_some_and(|v| v > limits::MAX_VCPUS) {
            return Err(DaemonError::invalid(format!(
                "min_vcpus is more than {}",
                limits::MAX_VCPUS
            )));
        }
        Ok(spec)
    }
}

/// A listing's state filter: none, or an image state.
fn state_filter(s: i32) -> Result<Option<ImageState>, DaemonError> {
    match pb::ImageState::try_from(s) {
        Ok(pb::ImageState::Unspecified) => Ok(None),
        Ok(pb) => ImageState::try_from(pb)
            .map(Some)
            .map_err(|e| DaemonError::invalid(e.to_string())),
        Err(_) => Err(DaemonError::invalid(format!("unknown image state {s}"))),
    }
}

impl TryFrom<pb::ListImagesRequest> for ListQuery {
    type Error = DaemonError;

    fn try_from(r: pb::ListImagesRequest) -> Result<Self, DaemonError> {
        let state = state_filter(r.state)?;
        Ok(ListQuery {
            owner: Some(r.owner).filter(|s| !s.is_empty()),
            visibility: crate::domain::visibility_filter(r.visibility)
                .map_err(|e| DaemonError::invalid(e.to_string()))?,
            name_prefix: Some(r.name_prefix).filter(|s| !s.is_empty()),
            tag: Some(r.tag).filter(|s| !s.is_empty()),
            hide_deprecated: state.is_none(),
            state,
            page_size: r.page_size,
            page_token: Some(r.page_token).filter(|s| !s.is_empty()),
            order: r.order_by.parse()?,
        })
    }
}

/// Accounts to share an image with (or unshare from).
#[derive(Debug, Clone)]
pub struct MembersSpec {
    /// The image.
    pub id: String,
    /// The accounts, by name.
    pub accounts: Vec<String>,
}

impl MembersSpec {
    /// `share`: whether the accounts are added (for the message).
    pub fn new(r: pb::ShareImageRequest, share: bool) -> Result<Self, DaemonError> {
        if r.accounts.is_empty() {
            return Err(DaemonError::invalid(format!(
                "name at least one account to {} with",
                if share { "share" } else { "unshare" }
            )));
        }
        Ok(Self {
            id: r.id,
            accounts: r.accounts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn refused_before_anything_is_read() {
        let long_id = pb::DeleteImageRequest {
            id: "x".into(),
            request_id: "r".repeat(129),
        };
        let e = DeleteSpec::try_from(long_id).expect_err("long request id");
        assert_eq!(e.kind(), ErrorKind::Invalid);
        let e = DeploySpec::try_from(pb::DeployImageRequest {
            guest_name: "-rf".into(),
            ..Default::default()
        })
        .expect_err("bad guest name");
        assert_eq!(e.kind(), ErrorKind::Invalid);
        let e = UpdateSpec::try_from(pb::UpdateImageRequest {
            update_mask: vec!["owner".into()],
            ..Default::default()
        })
        .expect_err("unknown field");
        assert!(e.context().contains("update_mask takes name, notes"), "{e}");
    }
}
