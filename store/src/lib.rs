//! # imprint-store: the image store and the capture/deploy data path
//!
//! Turns block devices into images in a content-addressed, deduplicating
//! store, and images back into block devices. No gRPC and no libvirt here:
//! the agent feeds this crate [`source::DiskSource`]s and
//! [`source::DiskTarget`]s.
//!
//! ## Formats (all declared in [`format`]; `docs/store-format.md`)
//! - A disk's guest-visible bytes are cut into fixed-size, aligned chunks
//!   (1 MiB by default, fixed per store). All-zero chunks and holes are
//!   recorded in the index as the zero digest and never stored.
//! - A stored chunk is a *blob* ([`blob`]): 24-byte header (magic, encoding,
//!   uncompressed length, payload length, CRC-32) and a zstd payload (or the
//!   raw bytes when zstd cannot shrink them). Its name is the BLAKE3 digest
//!   of its uncompressed bytes ([`ChunkDigest`]).
//! - A disk's *fixed index* ([`index`]) lists its chunk digests in order,
//!   with its size; sealed by a BLAKE3 trailer.
//! - The image *manifest* ([`manifest`]) lists the disks (index file, its
//!   BLAKE3, size, SHA-256 of the guest-visible bytes for comparison with
//!   `sha256sum` of a raw export), the guest configuration and provenance.
//!   An image exists exactly when its manifest does.
//!
//! Every magic is a 7-byte family plus a version byte, so a reader tells a
//! damaged file ([`ErrorKind::Corrupt`]) from a newer format
//! ([`ErrorKind::UnsupportedVersion`]).
//!
//! ## Backends ([`backend`])
//! [`backend::ChunkStore`] (put-if-absent, touch, get, list, remove-if-old)
//! and [`backend::ImageStore`] (indexes, manifests, writer registrations).
//! [`DirStore`] keeps them in a directory, the SAN mount.
//!
//! ## Pipelines
//! - [`capture::capture`]: reader → N workers (zero check, BLAKE3, touch if
//!   known, else compress and insert) → collector. Bounded buffer pool;
//!   known chunks are never compressed again.
//! - [`restore::restore_disk`]: feeder → N workers (fetch, CRC, decompress,
//!   BLAKE3 check) → positional writer; zero chunks become holes.
//! - [`verify`]: every chunk re-read and re-hashed; problems named.
//! - [`gc`]: mark from manifests, sweep what is unreferenced and old.
//!
//! ## GC invariants
//! 1. A chunk's age is its last insert *or touch*; capture touches every
//!    chunk it finds present, so reuse renews it.
//! 2. A capture registers as a writer before touching any chunk and
//!    heartbeats while it runs; GC's cut-off is `min(now, start of every
//!    live writer) - grace`. Every chunk a running capture relies on is
//!    therefore newer than the cut-off and survives the sweep.
//! 3. The sweep moves a chunk aside, re-checks its age, then deletes it (or
//!    puts it back). A touch that loses this race reports "absent", and the
//!    capture stores the chunk again.
//! 4. GC refuses to sweep when any manifest or index is unreadable.
//!
//! ## What may run at the same time
//! | | capture | deploy | verify | gc | delete image |
//! |---|---|---|---|---|---|
//! | **capture** | yes (same chunks dedup) | yes | yes | yes (rules 1–3) | yes |
//! | **deploy** | yes | yes | yes | yes, of committed images | no: the caller (daemon) refuses deletes while deploys read |
//! | **verify** | yes | yes | yes | may report chunks GC just removed as missing only if their image was deleted | same |
//! | **gc** | yes | yes | yes | one at a time (not enforced by the store) | yes |
//!
//! Several processes on several hosts may use one store directory at once.

pub mod backend;
pub mod blob;
pub mod capture;
pub mod copy;
mod digest;
mod dir;
pub mod disk_sha256;
mod error;
pub mod format;
mod format_check;
pub mod gc;
pub mod index;
pub mod manifest;
pub mod reader;
pub mod restore;
pub mod s3;
pub mod s3_keys;
#[cfg(feature = "test-util")]
pub mod s3_server;
pub mod source;
mod store;
pub mod usage;
pub mod verify;

pub use digest::{ChunkDigest, DiskSha256, ImageId};
pub use dir::DirStore;
pub use error::{Error, ErrorKind, Result};
pub use index::FixedIndex;
pub use manifest::Manifest;
pub use store::{Listed, Location, Store, StoreConfig};
