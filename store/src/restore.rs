//! Deploy: manifest → chunks fetched in parallel → verified → decompressed →
//! written to the target; zero chunks become holes.
//!
//! ```text
//! feeder thread ──jobs──▶ N workers ──chunks──▶ writer (caller's thread)
//!   index order            fetch, CRC, zstd,      positional writes,
//!                          BLAKE3 == name         progress
//! ```
//!
//! Like capture, memory is a fixed pool of chunk buffers.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use serde::Serialize;

use crate::{
    ChunkDigest, Error, ErrorKind, Manifest, Result, Store,
    blob::BlobDecoder,
    source::{ConcurrentTarget, DiskTarget},
};

/// How to deploy.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Fetch/decompress workers (default: all cores).
    pub threads: usize,
    /// Set to `true` to stop; the deploy then fails with `Cancelled`.
    pub cancel: Option<Arc<AtomicBool>>,
    /// fsync the target at the end.
    pub sync: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cancel: None,
            sync: false,
        }
    }
}

/// Figures of a deploy.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RestoreStats {
    /// Guest-visible bytes of the disk.
    pub bytes_total: u64,
    /// Data bytes written to the target.
    pub bytes_written: u64,
    /// Blob bytes fetched from the store (compressed).
    pub bytes_fetched: u64,
    /// Bytes of zero chunks, left as holes (or zeroed on a used target).
    pub zero_bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Progress of a running deploy.
#[derive(Debug, Clone)]
pub struct RestoreProgress {
    /// Guest-visible bytes handled so far (zero chunks count at once).
    pub bytes_done: u64,
    /// Figures so far.
    pub stats: RestoreStats,
}

const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Write disk `disk` of the image described by `manifest` to `target`.
pub fn restore_disk(
    store: &Store,
    manifest: &Manifest,
    disk: usize,
    target: &mut dyn DiskTarget,
    opts: &RestoreOptions,
    progress: &mut dyn FnMut(&RestoreProgress),
) -> Result<RestoreStats> {
    let started = Instant::now();
    let index = store.read_index(manifest, disk)?;
    let what = format!("image {} disk {disk}", manifest.image_id);
    let size = index.size_bytes();
    let capacity = target
        .size_bytes()
        .map_err(|e| Error::io(format!("{what}: read the target's size"), e))?;
    if capacity < size {
        return Err(Error::new(
            ErrorKind::TargetTooSmall,
            format!("{what} is {size} bytes; the target holds only {capacity} bytes"),
        ));
    }
    let mut stats = RestoreStats {
        bytes_total: size,
        ..Default::default()
    };

    // Zero runs first, coalesced: free on a fresh sparse target.
    let digests = index.digests();
    let mut i = 0;
    while i < digests.len() {
        if !digests[i].is_zero_chunk() {
            i += 1;
            continue;
        }
        let start = i;
        while i < digests.len() && digests[i].is_zero_chunk() {
            i += 1;
        }
        let (off, _) = index.chunk_range(start);
        let (last_off, last_len) = index.chunk_range(i - 1);
        let len = last_off + last_len as u64 - off;
        target
            .write_zeroes(off, len)
            .map_err(|e| Error::io(format!("{what}: zero {len} bytes at offset {off}"), e))?;
        stats.zero_bytes += len;
    }

    // Network stores want several requests in flight per core.
    // At most 32 in all: each worker holds buffers (and, capturing, a zstd
    // context), and compression past the core count only queues.
    let workers =
        (opts.threads.max(1) * store.backend().io_depth().max(1)).min(opts.threads.max(32));
    let n_bufs = 2 * workers + 2;
    let abort = AtomicBool::new(false);
    let (job_tx, job_rx) = bounded::<(usize, ChunkDigest)>(n_bufs);
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(n_bufs);
    let (done_tx, done_rx) = unbounded::<Result<(Vec<u8>, u64)>>();
    for _ in 0..n_bufs {
        let _ = pool_tx.send(Vec::new());
    }
    let mut first_error: Option<Error> = None;
    // Workers write themselves: straight through when the target takes
    // concurrent positional writes, one at a time through a lock otherwise.
    let locked;
    let writer: &dyn ConcurrentTarget = if target.concurrent().is_some() {
        target
            .concurrent()
            .ok_or_else(|| Error::invalid("target changed"))?
    } else {
        locked = Locked(Mutex::new(&mut *target));
        &locked
    };
    let layout = index.layout();
    std::thread::scope(|s| {
        let abort = &abort;
        s.spawn(move || {
            for (i, d) in digests.iter().enumerate() {
                if d.is_zero_chunk() {
                    continue;
                }
                if abort.load(Ordering::Relaxed) || job_tx.send((i, *d)).is_err() {
                    break;
                }
            }
        });
        for _ in 0..workers {
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            let pool = (pool_tx.clone(), pool_rx.clone());
            s.spawn(move || {
                fetch_worker(store, abort, &job_rx, &pool, &done_tx, &|i, buf: &[u8]| {
                    let (off, _) = layout.chunk_range(i);
                    writer.write_all_at(off, buf).map_err(|e| {
                        Error::io(format!("write {} bytes at offset {off}", buf.len()), e)
                    })
                })
            });
        }
        drop((job_rx, done_tx));
        let mut last_progress = Instant::now();
        for done in done_rx.iter() {
            match done {
                Ok((buf, fetched)) => {
                    stats.bytes_written += buf.len() as u64;
                    stats.bytes_fetched += fetched;
                    let _ = pool_tx.send(buf);
                }
                Err(e) => {
                    abort.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(e.context(&what));
                }
            }
            if first_error.is_none()
                && let Some(c) = &opts.cancel
                && c.load(Ordering::Relaxed)
            {
                abort.store(true, Ordering::Relaxed);
                first_error = Some(Error::cancelled());
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                progress(&RestoreProgress {
                    bytes_done: stats.bytes_written + stats.zero_bytes,
                    stats: stats.clone(),
                });
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    if opts.sync {
        target
            .sync()
            .map_err(|e| Error::io(format!("{what}: sync the target"), e))?;
    }
    stats.seconds = started.elapsed().as_secs_f64();
    progress(&RestoreProgress {
        bytes_done: size,
        stats: stats.clone(),
    });
    Ok(stats)
}

/// Serialises writes to a target that cannot take them concurrently.
struct Locked<'a>(Mutex<&'a mut dyn DiskTarget>);

impl ConcurrentTarget for Locked<'_> {
    fn write_all_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all_at(offset, buf)
    }
}

type WriteFn<'a> = dyn Fn(usize, &[u8]) -> Result<()> + Sync + 'a;

fn fetch_worker(
    store: &Store,
    abort: &AtomicBool,
    jobs: &Receiver<(usize, ChunkDigest)>,
    pool: &(Sender<Vec<u8>>, Receiver<Vec<u8>>),
    done: &Sender<Result<(Vec<u8>, u64)>>,
    write: &WriteFn<'_>,
) {
    let mut decoder = match BlobDecoder::new() {
        Ok(d) => d,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    let mut blob = Vec::new();
    for (i, digest) in jobs.iter() {
        if abort.load(Ordering::Relaxed) {
            continue;
        }
        let Ok(mut out) = pool.1.recv() else { return };
        let r = store
            .backend()
            .read_chunk(&digest, &mut blob)
            .and_then(|()| decoder.decode_into(&blob, &digest, &mut out))
            .map_err(|e| e.context(format!("chunk {i}")))
            .and_then(|()| write(i, &out));
        let msg = match r {
            Ok(()) => Ok((out, blob.len() as u64)),
            Err(e) => {
                let _ = pool.0.send(out);
                Err(e)
            }
        };
        if done.send(msg).is_err() {
            return;
        }
    }
}
