//! The seam between the data path and where bytes live: a directory on the
//! SAN today ([`crate::DirStore`]), an object store later.
//!
//! Contracts every backend keeps (the GC design in the crate docs relies on
//! them):
//! - [`ChunkStore::insert_chunk`] is put-if-absent and atomic: readers see
//!   the whole blob or nothing, never a prefix, even with several writers on
//!   several hosts.
//! - [`ChunkStore::touch_chunk`] refreshes the chunk's timestamp, and is
//!   atomic with respect to [`ChunkStore::remove_chunk_if_older`]: either the
//!   touch lands first and the chunk is kept, or it reports "absent" and the
//!   caller stores the chunk again.
//! - [`ImageStore::commit_manifest`] is atomic: an image exists exactly when
//!   its manifest does.

use std::{fmt::Debug, time::SystemTime};

use crate::{ChunkDigest, ImageId, Result};

/// A stored chunk as listed for GC and verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Its name.
    pub digest: ChunkDigest,
    /// Blob size in bytes (compressed, with header).
    pub size_bytes: u64,
    /// Last insert or touch.
    pub modified: SystemTime,
}

/// Whether an insert wrote the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The blob was written.
    New,
    /// A chunk of that digest was already there (and was touched).
    Existed,
}

/// Content-addressed blobs.
pub trait ChunkStore: Send + Sync + Debug {
    /// Store `blob` under `digest` unless a chunk of that digest exists.
    fn insert_chunk(&self, digest: &ChunkDigest, blob: &[u8]) -> Result<Inserted>;
    /// If the chunk exists, refresh its timestamp and return `true`.
    fn touch_chunk(&self, digest: &ChunkDigest) -> Result<bool>;
    /// Read a whole blob into `buf` (cleared first). Missing: `NotFound`.
    fn read_chunk(&self, digest: &ChunkDigest, buf: &mut Vec<u8>) -> Result<()>;
    /// Call `f` for every stored chunk, in no particular order.
    fn list_chunks(&self, f: &mut dyn FnMut(ChunkInfo) -> Result<()>) -> Result<()>;
    /// Remove the chunk if its timestamp is older than `cutoff`; return the
    /// bytes freed, or `None` when it was kept (or is already gone).
    fn remove_chunk_if_older(
        &self,
        digest: &ChunkDigest,
        cutoff: SystemTime,
    ) -> Result<Option<u64>>;
    /// Remove leftovers of interrupted writes older than `cutoff`; return
    /// bytes freed.
    fn remove_stray_files(&self, cutoff: SystemTime, dry_run: bool) -> Result<u64>;
    /// Requests each pipeline worker should have in flight: 1 for local
    /// storage; more for a network store, where a worker mostly waits.
    fn io_depth(&self) -> usize {
        1
    }
}

/// A registered writer (a capture in progress), so GC keeps what it touches.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriterInfo {
    /// Unique per capture.
    pub writer_id: String,
    /// Image being written.
    pub image_id: ImageId,
    /// Host name of the writer.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// The host's kernel boot id when it registered
    /// (`/proc/sys/kernel/random/boot_id`; empty if unknown): a process id
    /// means nothing after a reboot.
    #[serde(default)]
    pub boot_id: String,
    /// When the capture began (seconds since the Unix epoch, writer's clock).
    pub started_unix: u64,
}

/// A registered writer with the store's view of its liveness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterRecord {
    /// What the writer registered.
    pub info: WriterInfo,
    /// Last heartbeat (store clock).
    pub heartbeat: SystemTime,
}

/// Manifests, indexes, writer registrations and the store's own settings.
pub trait ImageStore: Send + Sync + Debug {
    /// The store's settings file, if the store has been created.
    fn read_config(&self) -> Result<Option<Vec<u8>>>;
    /// Create the store with this settings file; `Conflict` if it exists.
    fn create_config(&self, bytes: &[u8]) -> Result<()>;
    /// Write a file belonging to an image that is not yet committed.
    fn write_image_file(&self, image: &ImageId, name: &str, bytes: &[u8]) -> Result<()>;
    /// Read a file of an image.
    fn read_image_file(&self, image: &ImageId, name: &str) -> Result<Vec<u8>>;
    /// Publish the image: atomically write its manifest.
    fn commit_manifest(&self, image: &ImageId, bytes: &[u8]) -> Result<()>;
    /// The encoded manifest of a committed image.
    fn read_manifest(&self, image: &ImageId) -> Result<Vec<u8>>;
    /// Committed images.
    fn list_images(&self) -> Result<Vec<ImageId>>;
    /// Image folders with no manifest (captures running or dead), with their
    /// last modification.
    fn list_incomplete(&self) -> Result<Vec<(ImageId, SystemTime)>>;
    /// Remove an image (committed or not): manifest first, then its files.
    fn delete_image(&self, image: &ImageId) -> Result<()>;
    /// Register a writer; call [`ImageStore::heartbeat_writer`] while it runs.
    fn register_writer(&self, info: &WriterInfo) -> Result<()>;
    /// Refresh a writer's heartbeat.
    fn heartbeat_writer(&self, writer_id: &str) -> Result<()>;
    /// Remove a writer's registration.
    fn unregister_writer(&self, writer_id: &str) -> Result<()>;
    /// Registered writers.
    fn list_writers(&self) -> Result<Vec<WriterRecord>>;
}

/// A complete store backend.
pub trait Backend: ChunkStore + ImageStore {}
impl<T: ChunkStore + ImageStore> Backend for T {}
