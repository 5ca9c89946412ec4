//! Copy an image from one store to another (another site), sending only the
//! chunks the destination lacks.
//!
//! Every chunk sent is decoded and checked against its digest first, so a
//! damaged source chunk is never copied; chunks the destination has are
//! touched (kept from its GC) and trusted, as a capture would. The
//! destination registers the copy as a writer while it runs, writes the
//! indexes, then commits the manifest last: an interrupted copy leaves no
//! image, only chunks a retry reuses. The copied manifest and indexes are
//! read back from the destination, which checks their checksums.

use std::{
    collections::HashSet,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
};

use serde::Serialize;

use crate::{
    ChunkDigest, Error, ErrorKind, ImageId, Result, Store, blob::BlobDecoder, capture::WriterGuard,
};

/// What a copy did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    /// The image.
    pub image_id: String,
    /// Distinct data chunks the image references.
    pub chunks_total: u64,
    /// Chunks the destination lacked and received.
    pub chunks_sent: u64,
    /// Their stored (compressed) bytes: what crossed to the destination.
    pub bytes_sent: u64,
    /// Chunks the destination had already.
    pub chunks_present: u64,
    /// Compressed bytes read back and checked at the destination before
    /// the copy was committed (0 when not asked to verify).
    pub bytes_verified: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// One chunk's fate in a copy: the stored bytes sent, or `None` when the
/// destination had it.
type Moved = Result<Option<u64>>;

/// Move the chunks `dst` lacks, several at a time (stores on the network
/// want many requests in flight); results come back to this thread, which
/// reports progress and keeps the writer registration alive.
#[allow(clippy::too_many_arguments)]
fn copy_chunks(
    src: &Store,
    dst: &Store,
    id: &ImageId,
    digests: &[ChunkDigest],
    cancel: Option<&AtomicBool>,
    writer: &WriterGuard<'_>,
    report: &mut CopyReport,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let depth = src.backend().io_depth().max(dst.backend().io_depth());
    let workers = (cores * depth).clamp(1, 32).min(digests.len().max(1));
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = crossbeam_channel::unbounded::<Moved>();
    std::thread::scope(|s| {
        for _ in 0..workers {
            let (tx, next, stop) = (tx.clone(), &next, &stop);
            s.spawn(move || {
                let mut blob = Vec::new();
                let mut plain = Vec::new();
                let mut decoder = match BlobDecoder::new() {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= digests.len() || stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let d = &digests[i];
                    let moved = (|| -> Moved {
                        if dst.backend().touch_chunk(d)? {
                            return Ok(None);
                        }
                        src.backend().read_chunk(d, &mut blob)?;
                        decoder
                            .decode_into(&blob, d, &mut plain)
                            .map_err(|e| e.context(format!("source chunk of image {id}")))?;
                        dst.backend().insert_chunk(d, &blob)?;
                        Ok(Some(blob.len() as u64))
                    })();
                    if tx.send(moved).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut first_error = None;
        let mut done = 0u64;
        for moved in rx.iter() {
            match moved {
                Ok(None) => report.chunks_present += 1,
                Ok(Some(bytes)) => {
                    report.chunks_sent += 1;
                    report.bytes_sent += bytes;
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
            }
            done += 1;
            if first_error.is_none() && cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                stop.store(true, Ordering::Relaxed);
                first_error = Some(Error::cancelled());
            }
            if first_error.is_none()
                && let Err(e) = writer.maybe_heartbeat()
            {
                stop.store(true, Ordering::Relaxed);
                first_error = Some(e);
            }
            progress(done, report.chunks_total);
        }
        first_error.map_or(Ok(()), Err)
    })
}

/// Copy image `id` from `src` to `dst`; `progress(chunks done, total)`.
pub fn copy_image(
    src: &Store,
    dst: &Store,
    id: &ImageId,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CopyReport> {
    copy_image_with(src, dst, id, None, false, progress)
}

/// [`copy_image`] that stops (leaving no image at `dst`) once `cancel` is
/// set; with `verify`, every chunk of the image is read back from `dst` and
/// checked before the manifest is committed there, so a copy that fails the
/// check never looks usable.
pub fn copy_image_with(
    src: &Store,
    dst: &Store,
    id: &ImageId,
    cancel: Option<&AtomicBool>,
    verify: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CopyReport> {
    let started = std::time::Instant::now();
    if src.chunk_size() != dst.chunk_size() {
        return Err(Error::invalid(format!(
            "the stores cut images differently ({} and {} byte chunks); copy between stores of one chunk size",
            src.chunk_size(),
            dst.chunk_size()
        )));
    }
    let manifest = src.manifest(id)?;
    match dst.backend().read_manifest(id) {
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("image {id} is in the destination store already"),
            ));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut digests: Vec<ChunkDigest> = Vec::new();
    let mut seen = HashSet::new();
    for disk in 0..manifest.disks.len() {
        let index = src.read_index(&manifest, disk)?;
        for d in index.digests() {
            if !d.is_zero_chunk() && seen.insert(*d) {
                digests.push(*d);
            }
        }
    }
    let mut report = CopyReport {
        image_id: id.to_string(),
        chunks_total: digests.len() as u64,
        ..Default::default()
    };
    let writer = WriterGuard::register(dst, id)?;
    let result = (|| {
        copy_chunks(
            src,
            dst,
            id,
            &digests,
            cancel,
            &writer,
            &mut report,
            progress,
        )?;
        for disk in &manifest.disks {
            let bytes = src.backend().read_image_file(id, &disk.index_file)?;
            dst.backend()
                .write_image_file(id, &disk.index_file, &bytes)?;
        }
        if verify {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let v = crate::verify::verify_images_until(
                dst,
                std::slice::from_ref(&manifest),
                threads,
                cancel,
            )?;
            if !v.is_ok() {
                return Err(Error::corrupt(format!(
                    "the copy of image {id} failed its check at the destination ({} missing, {} corrupt chunks, {} unreadable indexes)",
                    v.missing.len(),
                    v.corrupt.len(),
                    v.bad_images.len()
                )));
            }
            report.bytes_verified = v.bytes_checked;
        }
        dst.backend()
            .commit_manifest(id, &src.backend().read_manifest(id)?)?;
        // Read back: checksums of the manifest and of every index.
        let copied = dst.manifest(id)?;
        for disk in 0..copied.disks.len() {
            dst.read_index(&copied, disk)?;
        }
        Ok(())
    })();
    drop(writer);
    if let Err(e) = result {
        let _ = dst.backend().delete_image(id);
        return Err(e);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
