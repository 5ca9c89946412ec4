//! The gRPC contract of imprint: `.proto` files under `proto/imprint/v1/`,
//! compiled with `tonic-prost-build` into `OUT_DIR`.
//!
//! - `agent.proto`: the per-host agent's API (capture, deploy, guests,
//!   operations with a progress stream).
//! - `images.proto`, `operations.proto`: the control daemon's public API
//!   (images, sharing, durable operations, hosts).
//! - [`tls`]: mutual TLS between daemon and agents from PEM files.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

pub mod hardware;
pub mod tls;

/// Limits every side checks the same way (CLI before sending, the daemon at
/// its edge, the agent before it writes).
pub mod limits {
    /// cloud-init user-data: it must fit the 1 MiB NoCloud seed volume with
    /// the meta-data and network-config beside it, and it stays far below
    /// the 4 MiB gRPC message limit so the caller hears this limit, not the
    /// transport's.
    pub const MAX_USER_DATA_BYTES: usize = 512 * 1024;

    /// Refuse user-data over [`MAX_USER_DATA_BYTES`], in words for people.
    pub fn check_user_data(user_data: &str) -> Result<(), String> {
        if user_data.len() > MAX_USER_DATA_BYTES {
            return Err(format!(
                "user-data is {} bytes; at most {} bytes (512 KiB) fit the cloud-init seed",
                user_data.len(),
                MAX_USER_DATA_BYTES
            ));
        }
        Ok(())
    }

    /// A new guest's name, as libvirt and imprint's volume names take it:
    /// 1-64 letters, digits, `-`, `_` or `.`, not starting with `-` or `.`.
    pub fn check_guest_name(name: &str) -> Result<(), String> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with(['-', '.'])
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "guest name {name:?} must be 1-64 letters, digits, '-', '_' or '.', not starting with '-' or '.'"
            ))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn guest_names() {
            for good in ["web1", "a", "db_2.prod", &"x".repeat(64)] {
                assert_eq!(check_guest_name(good), Ok(()), "{good}");
            }
            for bad in ["", "-rf", ".hidden", "a b", "a/b", "é", &"x".repeat(65)] {
                assert!(check_guest_name(bad).is_err(), "{bad:?}");
            }
        }
    }
}

/// Version 1 of the API.
pub mod v1 {
    tonic::include_proto!("imprint.v1");
}

/// Encoded `FileDescriptorSet` of every service, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("imprint_descriptor");
