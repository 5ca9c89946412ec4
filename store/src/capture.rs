//! Capture: disks → chunks → store → manifest.
//!
//! One disk at a time flows through a bounded pipeline:
//!
//! ```text
//! reader thread ──jobs──▶ N workers ──results──▶ collector (caller's thread)
//!   reads a chunk,         zero check, BLAKE3,     builds the index,
//!   SHA-256 of the disk    touch if known, else    progress, heartbeat
//!   (holes not read)       compress + insert
//! ```
//!
//! Memory is a fixed pool of chunk buffers (`2 × workers + 2`), so it does
//! not grow with the disk; the only per-disk structure is the index (32
//! bytes per chunk). Known chunks are detected by digest *before*
//! compression, so a recapture compresses only what changed.
//!
//! The manifest is committed last. A capture that fails or is cancelled
//! removes its index files; chunks it stored stay for a retry to reuse
//! until GC collects them.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::{
    ChunkDigest, Error, ErrorKind, FixedIndex, ImageId, Manifest, Result, Store,
    backend::{Inserted, WriterInfo},
    blob::BlobEncoder,
    index::Layout,
    manifest::{DiskEntry, validate_name},
    source::{DiskSource, is_all_zero},
};

/// How to capture.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// zstd level for new chunks.
    pub zstd_level: i32,
    /// Compression workers (default: all cores).
    pub threads: usize,
    /// Set to `true` to stop the capture; it then fails with `Cancelled`.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Guest configuration to record in the manifest.
    pub config: serde_json::Value,
    /// Labels to record in the manifest.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Record each disk's SHA-256 (comparable with `sha256sum` of a raw
    /// export). SHA-256 is serial and reads every guest-visible byte, holes
    /// included (about 0.8 s per GiB here): turning it off makes
    /// recaptures of mostly unchanged disks several times faster.
    pub disk_sha256: bool,
    /// Id of the new image, chosen by the caller (the control daemon
    /// records the image before the capture starts). `None`: a fresh one.
    /// An id that names a committed image is refused with `Conflict`.
    pub image_id: Option<ImageId>,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            zstd_level: 3,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cancel: None,
            config: serde_json::Value::Null,
            labels: Default::default(),
            disk_sha256: true,
            image_id: None,
        }
    }
}

/// One disk to capture.
pub struct DiskInput<'a> {
    /// Name recorded in the manifest (`vda`, a file name...).
    pub name: String,
    /// Where its bytes come from.
    pub source: Box<dyn DiskSource + 'a>,
    /// The same disk at an earlier point in time (an incremental capture):
    /// its chunk digests, one per chunk of this disk. Chunks the source
    /// reports unchanged since then ([`DiskSource::may_have_changed`]) are
    /// taken from it unread. Such a disk gets no SHA-256 here (it would
    /// need every byte).
    pub base: Option<Vec<ChunkDigest>>,
}

impl std::fmt::Debug for DiskInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskInput")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Figures of a capture (one disk, or all).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CaptureStats {
    /// Guest-visible bytes covered.
    pub bytes_total: u64,
    /// Bytes read from the source (holes are not read).
    pub bytes_read: u64,
    /// Bytes of new blobs written to the store (compressed).
    pub bytes_stored: u64,
    /// Uncompressed bytes of the new chunks.
    pub bytes_new: u64,
    /// Uncompressed bytes found already in the store.
    pub bytes_deduplicated: u64,
    /// Bytes of zero chunks and holes, recorded and not stored.
    pub zero_bytes_skipped: u64,
    /// Bytes taken unread from the base of an incremental capture.
    pub bytes_reused: u64,
    /// Chunks written.
    pub chunks_new: u64,
    /// Chunks already present.
    pub chunks_deduplicated: u64,
    /// Zero chunks.
    pub chunks_zero: u64,
    /// Chunks taken unread from the base.
    pub chunks_reused: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl CaptureStats {
    fn add(&mut self, o: &CaptureStats) {
        self.bytes_total += o.bytes_total;
        self.bytes_read += o.bytes_read;
        self.bytes_stored += o.bytes_stored;
        self.bytes_new += o.bytes_new;
        self.bytes_deduplicated += o.bytes_deduplicated;
        self.zero_bytes_skipped += o.zero_bytes_skipped;
        self.chunks_new += o.chunks_new;
        self.chunks_deduplicated += o.chunks_deduplicated;
        self.chunks_zero += o.chunks_zero;
        self.bytes_reused += o.bytes_reused;
        self.chunks_reused += o.chunks_reused;
    }
}

/// Progress of a running capture.
#[derive(Debug, Clone)]
pub struct CaptureProgress {
    /// Disk being read (0-based).
    pub disk: usize,
    /// Guest-visible bytes of all disks.
    pub bytes_total: u64,
    /// Guest-visible bytes processed so far, all disks.
    pub bytes_done: u64,
    /// Figures so far, all disks.
    pub stats: CaptureStats,
}

/// Result of a capture.
#[derive(Debug, Clone)]
pub struct CaptureReport {
    /// The committed manifest.
    pub manifest: Manifest,
    /// Totals over all disks.
    pub stats: CaptureStats,
    /// Per disk.
    pub disks: Vec<CaptureStats>,
}

/// How often a capture refreshes its writer registration.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Capture `disks` into `store` as a new image called `name`.
pub fn capture(
    store: &Store,
    name: &str,
    disks: Vec<DiskInput<'_>>,
    opts: &CaptureOptions,
    progress: &mut dyn FnMut(&CaptureProgress),
) -> Result<CaptureReport> {
    validate_name(name)?;
    if disks.is_empty() {
        return Err(Error::invalid("an image needs at least one disk"));
    }
    let started = Instant::now();
    let image_id = match &opts.image_id {
        Some(id) => {
            match store.backend().read_manifest(id) {
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
                Ok(_) => {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!("image {id} exists already"),
                    ));
                }
            }
            id.clone()
        }
        None => ImageId::generate(),
    };
    let writer = WriterGuard::register(store, &image_id)?;
    let result = capture_inner(store, &image_id, name, disks, opts, progress, &writer);
    if result.is_err() {
        // Leave nothing that looks like an image; chunks stay for a retry.
        let _ = store.backend().delete_image(&image_id);
    }
    drop(writer);
    let mut report = result?;
    report.stats.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn capture_inner(
    store: &Store,
    image_id: &ImageId,
    name: &str,
    disks: Vec<DiskInput<'_>>,
    opts: &CaptureOptions,
    progress: &mut dyn FnMut(&CaptureProgress),
    writer: &WriterGuard<'_>,
) -> Result<CaptureReport> {
    let bytes_total: u64 = disks.iter().map(|d| d.source.size_bytes()).sum();
    let mut totals = CaptureStats::default();
    let mut per_disk = Vec::new();
    let mut entries = Vec::new();
    let mut bytes_before = 0;
    for (i, disk) in disks.into_iter().enumerate() {
        let disk_name = disk.name.clone();
        let size = disk.source.size_bytes();
        let mut on_progress = |s: &CaptureStats| {
            let mut all = totals.clone();
            all.add(s);
            progress(&CaptureProgress {
                disk: i,
                bytes_total,
                bytes_done: bytes_before + s.bytes_total,
                stats: all,
            });
        };
        let (index, sha256, stats) = capture_disk(
            store,
            disk.source,
            disk.base,
            opts,
            &mut on_progress,
            writer,
        )
        .map_err(|e| e.context(format!("capture disk {i} ({disk_name})")))?;
        let index_file = format!("disk{i}.fidx");
        let encoded = index.encode();
        store
            .backend()
            .write_image_file(image_id, &index_file, &encoded)?;
        let zero_chunks = index.digests().iter().filter(|d| d.is_zero_chunk()).count() as u64;
        entries.push(DiskEntry {
            name: disk_name,
            index_file,
            index_blake3: blake3::hash(&encoded).to_hex().to_string(),
            size_bytes: size,
            sha256: sha256.map(hex::encode),
            zero_chunks,
            data_chunks: index.digests().len() as u64 - zero_chunks,
        });
        bytes_before += size;
        totals.add(&stats);
        per_disk.push(stats);
    }
    let manifest = Manifest {
        image_id: image_id.clone(),
        name: name.to_string(),
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        chunk_size: store.chunk_size(),
        disks: entries,
        config: opts.config.clone(),
        labels: opts.labels.clone(),
    };
    check_cancel(opts)?;
    store
        .backend()
        .commit_manifest(image_id, &manifest.encode()?)?;
    Ok(CaptureReport {
        manifest,
        stats: totals,
        disks: per_disk,
    })
}

fn check_cancel(opts: &CaptureOptions) -> Result<()> {
    match &opts.cancel {
        Some(c) if c.load(Ordering::Relaxed) => Err(Error::cancelled()),
        _ => Ok(()),
    }
}

/// Keeps the capture registered as a writer so GC spares its chunks.
pub(crate) struct WriterGuard<'a> {
    store: &'a Store,
    writer_id: String,
    last_beat: std::cell::Cell<Instant>,
}

impl<'a> WriterGuard<'a> {
    pub(crate) fn register(store: &'a Store, image_id: &ImageId) -> Result<Self> {
        let writer_id = uuid::Uuid::new_v4().to_string();
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        store.backend().register_writer(&WriterInfo {
            writer_id: writer_id.clone(),
            image_id: image_id.clone(),
            host,
            pid: std::process::id(),
            boot_id: crate::store::boot_id(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })?;
        Ok(Self {
            store,
            writer_id,
            last_beat: std::cell::Cell::new(Instant::now()),
        })
    }

    pub(crate) fn maybe_heartbeat(&self) -> Result<()> {
        if self.last_beat.get().elapsed() >= HEARTBEAT_EVERY {
            self.store.backend().heartbeat_writer(&self.writer_id)?;
            self.last_beat.set(Instant::now());
        }
        Ok(())
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        let _ = self.store.backend().unregister_writer(&self.writer_id);
    }
}

enum Job {
    /// Chunk `i`, read: store it.
    Data {
        i: usize,
        buf: Arc<Pooled>,
        len: usize,
    },
    /// Chunk `i`, unchanged since the base: its base digest (kept fresh for
    /// GC, and proven present).
    Reuse {
        i: usize,
        digest: ChunkDigest,
        len: usize,
    },
}

enum Outcome {
    Zero,
    New { stored: u64 },
    Existing,
    Reused,
}

struct Done {
    i: usize,
    len: usize,
    read: bool,
    /// `None`: skipped because the capture is already failing.
    result: Option<Result<(ChunkDigest, Outcome)>>,
}

fn capture_disk(
    store: &Store,
    mut source: Box<dyn DiskSource + '_>,
    base: Option<Vec<ChunkDigest>>,
    opts: &CaptureOptions,
    progress: &mut dyn FnMut(&CaptureStats),
    writer: &WriterGuard<'_>,
) -> Result<(FixedIndex, Option<[u8; 32]>, CaptureStats)> {
    let started = Instant::now();
    let size = source.size_bytes();
    let chunk_size = store.chunk_size();
    let mut index = FixedIndex::new_zeroed(size, chunk_size)?;
    if let Some(b) = &base
        && b.len() != index.digests().len()
    {
        return Err(Error::invalid(format!(
            "the base has {} chunks; the disk has {}",
            b.len(),
            index.digests().len()
        )));
    }
    // SHA-256 needs every byte; chunks taken from a base are not read.
    let disk_sha256 = opts.disk_sha256 && base.is_none();
    // Network stores want several requests in flight per core.
    // At most 32 in all: each worker holds buffers (and, capturing, a zstd
    // context), and compression past the core count only queues.
    let workers =
        (opts.threads.max(1) * store.backend().io_depth().max(1)).min(opts.threads.max(32));
    let n_bufs = 2 * workers + 4;
    let abort = AtomicBool::new(false);
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(n_bufs);
    let (job_tx, job_rx) = bounded::<Job>(n_bufs);
    let (done_tx, done_rx) = unbounded::<Done>();
    let mut stats = CaptureStats::default();

    let (sha_tx, sha_rx) = bounded::<ShaPart>(n_bufs);
    // Digests being stored right now: a second copy of a chunk (inside one
    // image) arriving meanwhile is a duplicate, not a second upload.
    let in_flight = Mutex::new(HashSet::new());
    let (reader_result, sha, first_error) = std::thread::scope(|s| {
        let hasher = disk_sha256.then(|| {
            let chunk_size = chunk_size as usize;
            s.spawn(move || hash_disk(&sha_rx, chunk_size))
        });
        let sha_tx = disk_sha256.then_some(sha_tx);
        let reader = {
            let layout = index.layout();
            let abort = &abort;
            let pool_tx = pool_tx.clone();
            let done_tx = done_tx.clone();
            let source = &mut source;
            let base = base.as_deref();
            s.spawn(move || {
                read_disk(
                    &mut **source,
                    base,
                    layout,
                    n_bufs,
                    opts,
                    abort,
                    (&pool_tx, &pool_rx),
                    sha_tx,
                    &job_tx,
                    &done_tx,
                )
            })
        };
        for _ in 0..workers {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let abort = &abort;
            let in_flight = &in_flight;
            s.spawn(move || {
                compress_worker(store, opts.zstd_level, abort, in_flight, &job_rx, &done_tx)
            });
        }
        drop((job_rx, done_tx, pool_tx));

        let mut first_error: Option<Error> = None;
        let mut last_progress = Instant::now();
        for done in done_rx.iter() {
            stats.bytes_total += done.len as u64;
            if done.read {
                stats.bytes_read += done.len as u64;
            }
            match done.result {
                None => {}
                Some(Ok((digest, outcome))) => {
                    index.set(done.i, digest);
                    match outcome {
                        Outcome::Zero => {
                            stats.zero_bytes_skipped += done.len as u64;
                            stats.chunks_zero += 1;
                        }
                        Outcome::New { stored } => {
                            stats.bytes_stored += stored;
                            stats.bytes_new += done.len as u64;
                            stats.chunks_new += 1;
                        }
                        Outcome::Existing => {
                            stats.bytes_deduplicated += done.len as u64;
                            stats.chunks_deduplicated += 1;
                        }
                        Outcome::Reused => {
                            stats.bytes_reused += done.len as u64;
                            stats.chunks_reused += 1;
                        }
                    }
                }
                Some(Err(e)) => {
                    abort.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
            }
            if first_error.is_none()
                && let Err(e) = writer.maybe_heartbeat()
            {
                abort.store(true, Ordering::Relaxed);
                first_error = Some(e);
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                progress(&stats);
            }
        }
        let reader_result = reader.join().unwrap_or_else(|_| {
            Err(Error::new(
                crate::ErrorKind::Io,
                "capture reader thread panicked",
            ))
        });
        let sha = hasher.map(|h| {
            h.join()
                .map_err(|_| Error::new(crate::ErrorKind::Io, "SHA-256 thread panicked"))
        });
        (reader_result, sha, first_error)
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    reader_result?;
    let sha256 = sha.transpose()?;
    stats.seconds = started.elapsed().as_secs_f64();
    progress(&stats);
    debug_assert_eq!(stats.bytes_total, size);
    Ok((index, sha256, stats))
}

/// A chunk buffer that goes back to the pool when its last user (the
/// SHA-256 thread or a worker) drops it.
struct Pooled {
    buf: Vec<u8>,
    pool: Sender<Vec<u8>>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let _ = self.pool.send(std::mem::take(&mut self.buf));
    }
}

/// What the SHA-256 thread hashes, in disk order.
enum ShaPart {
    Data(Arc<Pooled>),
    Zero(usize),
}

/// Hash the disk in order, off the reader's critical path: SHA-256 is the
/// one serial step of a capture.
fn hash_disk(parts: &Receiver<ShaPart>, chunk_size: usize) -> [u8; 32] {
    let mut sha = Sha256::new();
    // Zeroed pages of a fresh allocation cost nothing until touched; SHA-256
    // only reads them.
    let zeros = vec![0u8; chunk_size];
    for part in parts.iter() {
        match part {
            ShaPart::Data(b) => sha.update(&b.buf),
            ShaPart::Zero(len) => sha.update(&zeros[..len]),
        }
    }
    sha.finalize().into()
}

#[allow(clippy::too_many_arguments)]
fn read_disk(
    source: &mut dyn DiskSource,
    base: Option<&[ChunkDigest]>,
    layout: Layout,
    n_bufs: usize,
    opts: &CaptureOptions,
    abort: &AtomicBool,
    pool: (&Sender<Vec<u8>>, &Receiver<Vec<u8>>),
    sha_tx: Option<Sender<ShaPart>>,
    job_tx: &Sender<Job>,
    done_tx: &Sender<Done>,
) -> Result<()> {
    let chunk_size = layout.chunk_size as usize;
    let mut allocated = 0;
    let chunk_count = usize::try_from(layout.chunk_count()).map_err(|_| {
        Error::invalid(format!(
            "a disk of {} bytes has more chunks than this machine can address",
            layout.size_bytes
        ))
    })?;
    for i in 0..chunk_count {
        if abort.load(Ordering::Relaxed) {
            return Err(Error::new(crate::ErrorKind::Io, "capture aborted"));
        }
        check_cancel(opts).inspect_err(|_| abort.store(true, Ordering::Relaxed))?;
        let (offset, len) = layout.chunk_range(i);
        // Unchanged since the base: its digest, unread.
        if let Some(base) = base
            && !source
                .may_have_changed(offset, len as u64)
                .map_err(|e| Error::io(format!("find changes at offset {offset}"), e))?
        {
            let digest = base[i];
            if digest.is_zero_chunk() {
                let _ = done_tx.send(Done {
                    i,
                    len,
                    read: false,
                    result: Some(Ok((digest, Outcome::Zero))),
                });
            } else if job_tx.send(Job::Reuse { i, digest, len }).is_err() {
                return Err(Error::new(crate::ErrorKind::Io, "capture workers stopped"));
            }
            continue;
        }
        let has_data = source
            .may_have_data(offset, len as u64)
            .map_err(|e| Error::io(format!("find data at offset {offset}"), e))?;
        if !has_data {
            if let Some(tx) = &sha_tx {
                let _ = tx.send(ShaPart::Zero(len));
            }
            // Zero chunks bypass the workers but must still be counted by
            // the collector.
            let _ = done_tx.send(Done {
                i,
                len,
                read: false,
                result: Some(Ok((ChunkDigest::ZERO_CHUNK, Outcome::Zero))),
            });
            continue;
        }
        let mut buf = if allocated < n_bufs {
            allocated += 1;
            Vec::with_capacity(chunk_size)
        } else {
            pool.1
                .recv()
                .map_err(|_| Error::new(crate::ErrorKind::Io, "capture workers stopped"))?
        };
        buf.resize(len, 0);
        if let Err(e) = source.read_exact_at(offset, &mut buf) {
            let _ = pool.0.send(buf);
            abort.store(true, Ordering::Relaxed);
            return Err(Error::io(format!("read {len} bytes at offset {offset}"), e));
        }
        let buf = Arc::new(Pooled {
            buf,
            pool: pool.0.clone(),
        });
        if let Some(tx) = &sha_tx {
            let _ = tx.send(ShaPart::Data(buf.clone()));
        }
        if job_tx.send(Job::Data { i, buf, len }).is_err() {
            return Err(Error::new(crate::ErrorKind::Io, "capture workers stopped"));
        }
    }
    Ok(())
}

fn compress_worker(
    store: &Store,
    level: i32,
    abort: &AtomicBool,
    in_flight: &Mutex<HashSet<ChunkDigest>>,
    jobs: &Receiver<Job>,
    done: &Sender<Done>,
) {
    let mut encoder = match BlobEncoder::new(level) {
        Ok(e) => Some(e),
        Err(e) => {
            abort.store(true, Ordering::Relaxed);
            let _ = done.send(Done {
                i: 0,
                len: 0,
                read: false,
                result: Some(Err(e)),
            });
            None
        }
    };
    for job in jobs.iter() {
        let failing = abort.load(Ordering::Relaxed);
        let d = match (job, &mut encoder) {
            (Job::Data { i, buf, len }, Some(enc)) => Done {
                i,
                len,
                read: true,
                result: (!failing).then(|| store_chunk(store, enc, in_flight, &buf.buf)),
            },
            (Job::Data { i, len, .. }, None) => Done {
                i,
                len,
                read: true,
                result: None,
            },
            (Job::Reuse { i, digest, len }, _) => Done {
                i,
                len,
                read: false,
                result: (!failing).then(|| reuse_chunk(store, digest)),
            },
        };
        let _ = done.send(d);
    }
}

fn store_chunk(
    store: &Store,
    enc: &mut BlobEncoder,
    in_flight: &Mutex<HashSet<ChunkDigest>>,
    data: &[u8],
) -> Result<(ChunkDigest, Outcome)> {
    if is_all_zero(data) {
        return Ok((ChunkDigest::ZERO_CHUNK, Outcome::Zero));
    }
    let digest = ChunkDigest::of(data);
    let claim = |d: ChunkDigest| in_flight.lock().map_or(true, |mut s| s.insert(d));
    if !claim(digest) {
        // Another worker is storing this very chunk; if it fails, the
        // capture fails with it.
        return Ok((digest, Outcome::Existing));
    }
    let r = touch_or_insert(store, enc, digest, data);
    if let Ok(mut s) = in_flight.lock() {
        s.remove(&digest);
    }
    r
}

/// A chunk of the base, unchanged: touched so GC keeps it for the new
/// image; missing (the base's image was deleted and collected meanwhile)
/// is an error, as the bytes were not read.
fn reuse_chunk(store: &Store, digest: ChunkDigest) -> Result<(ChunkDigest, Outcome)> {
    if store.backend().touch_chunk(&digest)? {
        Ok((digest, Outcome::Reused))
    } else {
        Err(Error::new(
            ErrorKind::NotFound,
            format!("chunk {digest} of the base is no longer in the store"),
        ))
    }
}

fn touch_or_insert(
    store: &Store,
    enc: &mut BlobEncoder,
    digest: ChunkDigest,
    data: &[u8],
) -> Result<(ChunkDigest, Outcome)> {
    if store.backend().touch_chunk(&digest)? {
        return Ok((digest, Outcome::Existing));
    }
    let blob = enc.encode(data)?;
    let stored = blob.len() as u64;
    match store.backend().insert_chunk(&digest, blob)? {
        Inserted::New => Ok((digest, Outcome::New { stored })),
        Inserted::Existed => Ok((digest, Outcome::Existing)),
    }
}
