//! Garbage collection: mark every chunk the committed images reference,
//! sweep the others once they are older than the grace period.
//!
//! Safety with concurrent captures (on this host or others) rests on three
//! rules, see the crate documentation for the argument:
//! 1. A capture registers as a writer before it touches any chunk, and
//!    refreshes its registration while it runs. The sweep cut-off is never
//!    later than the start of any live writer minus the grace period.
//! 2. A capture that finds a chunk present *touches* it, and a chunk's age
//!    is its last insert or touch.
//! 3. The sweep moves a chunk aside before deleting it, and re-checks its
//!    age after the move (see [`crate::backend::ChunkStore::remove_chunk_if_older`]).
//!
//! If any manifest or index cannot be read, GC stops before sweeping: it
//! would otherwise delete chunks that image needs.

use std::{
    collections::HashSet,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{ChunkDigest, Error, Result, Store};

/// How to collect.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced chunks younger than this are kept (covers clock skew
    /// between hosts and captures that have not registered yet).
    pub grace: Duration,
    /// A writer whose heartbeat is older than this is presumed dead.
    pub writer_stale_after: Duration,
    /// Count what would be removed, remove nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3600),
            writer_stale_after: Duration::from_secs(900),
            dry_run: false,
        }
    }
}

/// Result of a GC run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Nothing was removed.
    pub dry_run: bool,
    /// Committed images marked.
    pub images: u64,
    /// Distinct chunks referenced by them.
    pub chunks_referenced: u64,
    /// Chunks found in the store.
    pub chunks_total: u64,
    /// Unreferenced chunks removed (or that would be, in a dry run).
    pub chunks_removed: u64,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Unreferenced chunks kept because they are younger than the cut-off.
    pub chunks_kept_recent: u64,
    /// Abandoned partial images removed.
    pub incomplete_images_removed: u64,
    /// Bytes of leftover temporary files removed.
    pub stray_bytes_freed: u64,
    /// Live writers that held the cut-off back.
    pub live_writers: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Run GC on `store`.
pub fn collect_garbage(store: &Store, opts: &GcOptions) -> Result<GcReport> {
    let started = Instant::now();
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let backend = store.backend();
    let now = SystemTime::now();
    let mut cutoff = now.checked_sub(opts.grace).unwrap_or(UNIX_EPOCH);

    // 1. Writers first: anything they touch from now on is newer than this.
    let mut writer_images = HashSet::new();
    for w in backend.list_writers()? {
        let alive = now
            .duration_since(w.heartbeat)
            .map_or(true, |age| age < opts.writer_stale_after);
        if !alive {
            continue;
        }
        report.live_writers += 1;
        writer_images.insert(w.info.image_id.clone());
        // A writer's touches are file times from the kernel's coarse
        // clock, up to a tick behind the clock its start was read from: a
        // start just past a second boundary can be later than them. A
        // second of slack spares them.
        let start = UNIX_EPOCH + Duration::from_secs(w.info.started_unix.saturating_sub(1));
        cutoff = cutoff.min(start.checked_sub(opts.grace).unwrap_or(UNIX_EPOCH));
    }

    // 2. Mark.
    let mut referenced: HashSet<ChunkDigest> = HashSet::new();
    for (id, m) in store.list()? {
        let m = m.map_err(|e| {
            Error::new(
                e.kind(),
                format!("GC stopped before sweeping: image {id} cannot be read ({e})"),
            )
        })?;
        for disk in 0..m.disks.len() {
            let index = store
                .read_index(&m, disk)
                .map_err(|e| Error::new(e.kind(), format!("GC stopped before sweeping: {e}")))?;
            referenced.extend(index.digests().iter().filter(|d| !d.is_zero_chunk()));
        }
        report.images += 1;
    }
    report.chunks_referenced = referenced.len() as u64;

    // 3. Partial images of dead captures.
    for (id, modified) in backend.list_incomplete()? {
        if writer_images.contains(&id) || modified >= cutoff {
            continue;
        }
        report.incomplete_images_removed += 1;
        if !opts.dry_run {
            backend.delete_image(&id)?;
        }
    }

    // 4. Sweep.
    let mut candidates = Vec::new();
    backend.list_chunks(&mut |c| {
        report.chunks_total += 1;
        if referenced.contains(&c.digest) {
            return Ok(());
        }
        if c.modified >= cutoff {
            report.chunks_kept_recent += 1;
        } else {
            candidates.push(c);
        }
        Ok(())
    })?;
    for c in candidates {
        if opts.dry_run {
            report.chunks_removed += 1;
            report.bytes_freed += c.size_bytes;
        } else if let Some(freed) = backend.remove_chunk_if_older(&c.digest, cutoff)? {
            report.chunks_removed += 1;
            report.bytes_freed += freed;
        } else {
            report.chunks_kept_recent += 1;
        }
    }
    report.stray_bytes_freed = backend.remove_stray_files(cutoff, opts.dry_run)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
