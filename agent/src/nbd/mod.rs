//! NBD, both ways, over UNIX sockets:
//! - [`NbdDisk`] (`client`): a capture reads a point-in-time view of a
//!   running guest's disk that QEMU exports during a pull-mode backup;
//! - [`server`]: a lazy deploy's guest boots on a stored image's disk that
//!   the agent exports read-only, straight from the store.
//!
//! `wire` holds the protocol's numbers both use.

mod client;
pub mod server;
mod wire;

pub use client::NbdDisk;

/// Export `export` on UNIX socket `socket`, as QEMU's tools (qemu-img,
/// qemu-nbd, a qcow2 header's backing file) name it.
pub fn unix_url(socket: &std::path::Path, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", socket.display())
}
