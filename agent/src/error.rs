//! The agent's error: a kind callers map to a gRPC status, and a sentence.

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Guest, image, pool or volume does not exist.
    NotFound,
    /// Bad request (address, MAC, host name, size, name...).
    InvalidArgument,
    /// Exists already, or busy (guest already being captured).
    Conflict,
    /// The guest is not in a state the operation can start from.
    FailedPrecondition,
    /// This agent's settings do not allow it (a URL outside the allowed
    /// import prefixes).
    PermissionDenied,
    /// libvirt or the store cannot be reached.
    Unavailable,
    /// No space in the pool or the store.
    ResourceExhausted,
    /// Cancelled by the caller.
    Cancelled,
    /// Timed out (guest did not power off).
    DeadlineExceeded,
    /// Stored data failed its check (a chunk's digest, a damaged index).
    DataLoss,
    /// Anything else.
    Internal,
}

/// Error of the agent's work.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    /// Kind.
    pub kind: Kind,
    /// A sentence for people (the source's text included).
    pub message: String,
    /// What failed underneath, for logs and callers that look deeper.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl AgentError {
    /// An error of `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(
        kind: Kind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Prefix the message.
    pub fn context(mut self, c: impl std::fmt::Display) -> Self {
        self.message = format!("{c}: {}", self.message);
        self
    }
}

impl From<imprint_store::Error> for AgentError {
    fn from(e: imprint_store::Error) -> Self {
        use imprint_store::ErrorKind as K;
        let kind = match e.kind() {
            K::NotFound => Kind::NotFound,
            K::InvalidArgument | K::TargetTooSmall => Kind::InvalidArgument,
            K::Conflict => Kind::Conflict,
            K::PermissionDenied => Kind::FailedPrecondition,
            K::StorageFull => Kind::ResourceExhausted,
            K::Cancelled => Kind::Cancelled,
            K::Unavailable => Kind::Unavailable,
            K::Corrupt => Kind::DataLoss,
            K::UnsupportedVersion => Kind::FailedPrecondition,
            K::Io => Kind::Internal,
        };
        let message = e.to_string();
        Self::with_source(kind, message, e)
    }
}

impl From<crate::cloudinit::Invalid> for AgentError {
    fn from(e: crate::cloudinit::Invalid) -> Self {
        Self::new(Kind::InvalidArgument, e.0)
    }
}

/// Result of the agent's work.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
