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
}

/// Version 1 of the API.
pub mod v1 {
    tonic::include_proto!("imprint.v1");
}

/// Encoded `FileDescriptorSet` of every service, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("imprint_descriptor");
