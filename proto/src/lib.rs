//! The gRPC contract of imprint: `.proto` files under `proto/imprint/v1/`,
//! compiled with `tonic-prost-build` into `OUT_DIR`.
//!
//! - `agent.proto`: the per-host agent's API (capture, deploy, guests,
//!   operations with a progress stream).
//! - `images.proto`, `operations.proto`: the control daemon's public API
//!   (images, sharing, durable operations, hosts).
//! - [`tls`]: mutual TLS between daemon and agents from PEM files.

pub mod hardware;
pub mod tls;

pub mod limits;

/// Version 1 of the API.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("imprint.v1");
}

/// Encoded `FileDescriptorSet` of every service, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("imprint_descriptor");
