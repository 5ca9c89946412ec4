//! The store's one public error: a matchable [`ErrorKind`], a sentence that
//! names what failed (image, chunk, path), and the underlying source.

use std::{fmt, io};

/// What went wrong, for callers that must react differently (map to a gRPC
/// code, an exit code, retry or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The image, chunk, index or store does not exist.
    NotFound,
    /// The caller asked for something impossible (bad name, bad size...).
    InvalidArgument,
    /// The thing exists already, or the name matches several images.
    Conflict,
    /// Bytes on disk do not match their checksum or digest, or do not parse.
    Corrupt,
    /// A file of ours written by a newer format version.
    UnsupportedVersion,
    /// The operating system refused access (permissions, read-only mount).
    PermissionDenied,
    /// No space left on the store or on the deploy target.
    StorageFull,
    /// The deploy target is smaller than the disk being written.
    TargetTooSmall,
    /// The operation was cancelled by its caller.
    Cancelled,
    /// The store could not be reached (network, object store down).
    Unavailable,
    /// Any other I/O failure.
    Io,
}

/// Error of every fallible call of this crate.
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<io::Error>,
}

impl Error {
    /// An error with no underlying I/O cause.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An I/O failure while doing `what`; the kind follows the OS error.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        let kind = match source.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                ErrorKind::PermissionDenied
            }
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorKind::StorageFull,
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => ErrorKind::Corrupt,
            _ => ErrorKind::Io,
        };
        Self {
            kind,
            message: what.into(),
            source: Some(source),
        }
    }

    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub(crate) fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "operation cancelled")
    }

    /// What went wrong, to match on.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The sentence without the source, for callers that render it apart.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with `context` in front of its message
    /// ("capture disk vda: ...").
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_kinds_map_to_store_kinds() {
        let e = Error::io("write x", io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(e.kind(), ErrorKind::StorageFull);
        assert!(e.to_string().starts_with("write x: "), "{e}");
        let e = Error::io("open y", io::Error::from_raw_os_error(nix::libc::EACCES));
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        let e = Error::io("open y", io::Error::from_raw_os_error(nix::libc::EROFS));
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        let e = Error::io("read z", io::Error::from_raw_os_error(nix::libc::ENOSPC));
        assert_eq!(e.kind(), ErrorKind::StorageFull);
    }

    #[test]
    fn context_prefixes_message() {
        let e = Error::not_found("chunk ab12 is missing").context("image foo");
        assert_eq!(e.to_string(), "image foo: chunk ab12 is missing");
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
}
