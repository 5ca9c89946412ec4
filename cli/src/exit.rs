//! Exit codes, one per class of failure, so scripts can branch on them.
//! Documented in `docs/cli.md`; never renumber.

use imprint_store::ErrorKind;

/// Any failure not classified below.
pub const FAILURE: u8 = 1;
/// Bad command line or invalid argument.
pub const USAGE: u8 = 2;
/// The image, store, file or chunk does not exist.
pub const NOT_FOUND: u8 = 3;
/// Access refused (permissions, read-only filesystem).
pub const PERMISSION: u8 = 4;
/// Conflict: already exists, ambiguous name, busy.
pub const CONFLICT: u8 = 5;
/// A service is unreachable (daemon, agent, libvirt, object store).
pub const UNAVAILABLE: u8 = 6;
/// Stored data failed its checks (corrupt, missing chunks, newer format).
pub const DATA: u8 = 7;
/// No space left on the store or the target.
pub const NO_SPACE: u8 = 8;
/// Cancelled (Ctrl-C).
pub const CANCELLED: u8 = 130;

/// A usage error (exit code 2) with a message.
pub fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(tonic::Status::invalid_argument(msg))
}

/// The exit code for a gRPC status code (the daemon's answer, or a failed
/// operation's error code).
pub fn for_code(code: tonic::Code) -> u8 {
    use tonic::Code as C;
    match code {
        C::Ok => 0,
        C::InvalidArgument | C::OutOfRange => USAGE,
        C::NotFound => NOT_FOUND,
        C::PermissionDenied | C::Unauthenticated => PERMISSION,
        C::AlreadyExists | C::FailedPrecondition | C::Aborted => CONFLICT,
        C::Unavailable | C::DeadlineExceeded => UNAVAILABLE,
        C::DataLoss => DATA,
        C::ResourceExhausted => NO_SPACE,
        C::Cancelled => CANCELLED,
        _ => FAILURE,
    }
}

/// The exit code for an error chain: the first store error or gRPC status
/// in it decides.
pub fn code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<tonic::Status>() {
            return for_code(s.code());
        }
        if let Some(se) = cause.downcast_ref::<imprint_store::Error>() {
            return match se.kind() {
                ErrorKind::NotFound => NOT_FOUND,
                ErrorKind::InvalidArgument | ErrorKind::TargetTooSmall => USAGE,
                ErrorKind::Conflict => CONFLICT,
                ErrorKind::PermissionDenied => PERMISSION,
                ErrorKind::Corrupt | ErrorKind::UnsupportedVersion => DATA,
                ErrorKind::StorageFull => NO_SPACE,
                ErrorKind::Cancelled => CANCELLED,
                ErrorKind::Unavailable => UNAVAILABLE,
                _ => FAILURE,
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::NotFound => NOT_FOUND,
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                    PERMISSION
                }
                std::io::ErrorKind::StorageFull => NO_SPACE,
                _ => FAILURE,
            };
        }
    }
    FAILURE
}
