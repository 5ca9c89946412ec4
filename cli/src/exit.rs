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
#[allow(dead_code)]
pub const UNAVAILABLE: u8 = 6;
/// Stored data failed its checks (corrupt, missing chunks, newer format).
pub const DATA: u8 = 7;
/// No space left on the store or the target.
pub const NO_SPACE: u8 = 8;
/// Cancelled (Ctrl-C).
pub const CANCELLED: u8 = 130;

/// The exit code for an error chain: the first store error in it decides.
pub fn code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(se) = cause.downcast_ref::<imprint_store::Error>() {
            return match se.kind() {
                ErrorKind::NotFound => NOT_FOUND,
                ErrorKind::InvalidArgument | ErrorKind::TargetTooSmall => USAGE,
                ErrorKind::Conflict => CONFLICT,
                ErrorKind::PermissionDenied => PERMISSION,
                ErrorKind::Corrupt | ErrorKind::UnsupportedVersion => DATA,
                ErrorKind::StorageFull => NO_SPACE,
                ErrorKind::Cancelled => CANCELLED,
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
