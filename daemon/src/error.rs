//! The daemon's error, and its one map to gRPC statuses.
//!
//! Everything below the handlers returns [`DaemonError`]: a kind that says
//! what the caller may do about it, the context a person reads, and the
//! cause (kept for the log). [`ErrorKind::code`] is the only place a kind
//! becomes a gRPC code; it has no wildcard arm, so a new kind does not
//! compile until it says what callers see. Retries are decided on kinds
//! ([`ErrorKind::is_transient`]), never on codes.

use std::{error::Error as StdError, fmt};

use tonic::{Code, Status};

use crate::catalog::CatalogError;

/// What went wrong, as far as the caller is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The thing named does not exist, or the caller may not see it.
    NotFound,
    /// The thing to create exists already (or a request id was reused).
    Exists,
    /// The request itself is wrong: fix it before retrying.
    Invalid,
    /// The request is fine but the state of the system does not allow it
    /// now (an image in use, a host without TLS): change that first.
    WrongState,
    /// A concurrent change won: read again and retry the whole sequence.
    Aborted,
    /// A value outside the range the target has.
    OutOfRange,
    /// The caller is known but may not do this.
    Denied,
    /// The caller did not prove who it is.
    Unauthenticated,
    /// Out of space, quota or slots.
    Exhausted,
    /// Could not be reached or is down for now: retry later (transient).
    Unavailable,
    /// No answer in time; it may still have happened (transient).
    TimedOut,
    /// Stopped on request.
    Cancelled,
    /// Not something this build does.
    Unsupported,
    /// Stored data failed its check.
    DataLoss,
    /// A fault of ours; the log has the details.
    Internal,
    /// An agent's answer that says nothing more.
    Unknown,
}

impl ErrorKind {
    /// The gRPC code callers see. Exhaustive: no wildcard arm.
    pub fn code(self) -> Code {
        match self {
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::Exists => Code::AlreadyExists,
            ErrorKind::Invalid => Code::InvalidArgument,
            ErrorKind::WrongState => Code::FailedPrecondition,
            ErrorKind::Aborted => Code::Aborted,
            ErrorKind::OutOfRange => Code::OutOfRange,
            ErrorKind::Denied => Code::PermissionDenied,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::Exhausted => Code::ResourceExhausted,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::TimedOut => Code::DeadlineExceeded,
            ErrorKind::Cancelled => Code::Cancelled,
            ErrorKind::Unsupported => Code::Unimplemented,
            ErrorKind::DataLoss => Code::DataLoss,
            ErrorKind::Internal => Code::Internal,
            ErrorKind::Unknown => Code::Unknown,
        }
    }

    /// The kind of a status an agent answered with (the agents speak gRPC;
    /// this is the way back). Exhaustive over the codes.
    pub fn of_code(code: Code) -> Self {
        match code {
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists => ErrorKind::Exists,
            Code::InvalidArgument => ErrorKind::Invalid,
            Code::FailedPrecondition => ErrorKind::WrongState,
            Code::Aborted => ErrorKind::Aborted,
            Code::OutOfRange => ErrorKind::OutOfRange,
            Code::PermissionDenied => ErrorKind::Denied,
            Code::Unauthenticated => ErrorKind::Unauthenticated,
            Code::ResourceExhausted => ErrorKind::Exhausted,
            Code::Unavailable => ErrorKind::Unavailable,
            Code::DeadlineExceeded => ErrorKind::TimedOut,
            Code::Cancelled => ErrorKind::Cancelled,
            Code::Unimplemented => ErrorKind::Unsupported,
            Code::DataLoss => ErrorKind::DataLoss,
            // "OK" as an error is a broken peer.
            Code::Internal | Code::Ok => ErrorKind::Internal,
            Code::Unknown => ErrorKind::Unknown,
        }
    }

    /// Worth trying again later without changing anything.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::TimedOut)
    }
}

/// A failure below the handlers: kind, context, cause.
#[derive(Debug)]
pub struct DaemonError {
    kind: ErrorKind,
    context: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl DaemonError {
    /// A failure of `kind`, said as `context`.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Self {
            kind,
            context: context.into(),
            source: None,
        }
    }

    /// Keep `source` as the cause (logged, not sent to callers).
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// [`ErrorKind::NotFound`].
    pub fn not_found(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, context)
    }

    /// [`ErrorKind::Exists`].
    pub fn exists(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Exists, context)
    }

    /// [`ErrorKind::Invalid`].
    pub fn invalid(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, context)
    }

    /// [`ErrorKind::WrongState`].
    pub fn wrong_state(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::WrongState, context)
    }

    /// [`ErrorKind::Unavailable`].
    pub fn unavailable(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, context)
    }

    /// [`ErrorKind::Denied`].
    pub fn denied(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Denied, context)
    }

    /// [`ErrorKind::Unauthenticated`].
    pub fn unauthenticated(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, context)
    }

    /// [`ErrorKind::Internal`].
    pub fn internal(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, context)
    }

    /// A status an agent (on `host`) answered with; a status made by this
    /// side's transport (a connection cut mid-call: an agent restarting
    /// answers UNKNOWN or CANCELLED "transport error") means the agent was
    /// not reached.
    pub fn from_agent(host: &str, status: Status) -> Self {
        let kind = if from_transport(&status) {
            ErrorKind::Unavailable
        } else {
            ErrorKind::of_code(status.code())
        };
        Self::new(kind, format!("host {host}: {}", status.message())).with_source(status)
    }

    /// What the caller may do about it.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What a person reads.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The same failure, said as `context` instead.
    pub fn reworded(mut self, context: impl Into<String>) -> Self {
        self.context = context.into();
        self
    }
}

/// Whether `status` was made by this side's transport, not sent by a peer.
fn from_transport(status: &Status) -> bool {
    StdError::source(status).is_some_and(|e| e.is::<tonic::transport::Error>())
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)
    }
}

impl StdError for DaemonError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<CatalogError> for DaemonError {
    fn from(e: CatalogError) -> Self {
        let kind = match &e {
            CatalogError::NotFound(_) => ErrorKind::NotFound,
            CatalogError::Invalid(_) => ErrorKind::Invalid,
            CatalogError::Exists(_) => ErrorKind::Exists,
            CatalogError::Denied(_) => ErrorKind::Denied,
            CatalogError::WrongState(_) => ErrorKind::WrongState,
            CatalogError::Database(_) | CatalogError::Migrate(_) => ErrorKind::Unavailable,
            CatalogError::Corrupt(_) => ErrorKind::Internal,
        };
        let context = match &e {
            CatalogError::NotFound(m)
            | CatalogError::Invalid(m)
            | CatalogError::Exists(m)
            | CatalogError::Denied(m)
            | CatalogError::WrongState(m) => m.clone(),
            // Database details stay in the log.
            CatalogError::Database(_) | CatalogError::Migrate(_) => {
                "the catalog database is unavailable; retry later".to_string()
            }
            CatalogError::Corrupt(_) => {
                "the catalog holds data this daemon cannot read; see its log".to_string()
            }
        };
        Self::new(kind, context).with_source(e)
    }
}

impl From<imprint_store::Error> for DaemonError {
    fn from(e: imprint_store::Error) -> Self {
        use imprint_store::ErrorKind as Store;
        let kind = match e.kind() {
            Store::NotFound => ErrorKind::NotFound,
            Store::InvalidArgument => ErrorKind::Invalid,
            Store::Conflict => ErrorKind::Exists,
            Store::Corrupt => ErrorKind::DataLoss,
            Store::UnsupportedVersion => ErrorKind::Unsupported,
            Store::StorageFull => ErrorKind::Exhausted,
            Store::TargetTooSmall => ErrorKind::OutOfRange,
            Store::Cancelled => ErrorKind::Cancelled,
            Store::Unavailable => ErrorKind::Unavailable,
            // The daemon's own access to its store: the operator's to fix.
            Store::PermissionDenied | Store::Io => ErrorKind::Internal,
        };
        Self::new(kind, e.to_string()).with_source(e)
    }
}

impl From<DaemonError> for Status {
    fn from(e: DaemonError) -> Self {
        if matches!(e.kind, ErrorKind::Internal | ErrorKind::Unavailable)
            && let Some(cause) = &e.source
        {
            tracing::error!(error = %e.context, cause = %cause, "request failed");
        }
        Status::new(e.kind.code(), e.context)
    }
}

impl From<CatalogError> for Status {
    fn from(e: CatalogError) -> Self {
        DaemonError::from(e).into()
    }
}

/// Map catalog errors to gRPC statuses (database details stay in the log).
pub fn status(e: CatalogError) -> Status {
    e.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_codes_round_trip() {
        use ErrorKind::*;
        for k in [
            NotFound,
            Exists,
            Invalid,
            WrongState,
            Aborted,
            OutOfRange,
            Denied,
            Unauthenticated,
            Exhausted,
            Unavailable,
            TimedOut,
            Cancelled,
            Unsupported,
            DataLoss,
            Internal,
            Unknown,
        ] {
            assert_eq!(ErrorKind::of_code(k.code()), k, "{k:?}");
        }
    }

    #[test]
    fn database_details_stay_in_the_log() {
        let e = DaemonError::from(CatalogError::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.kind().is_transient());
        let s = Status::from(e);
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("pool"), "{}", s.message());
    }
}
