//! Verify: re-read chunks and prove they are whole and what they claim to
//! be; report every missing or corrupt chunk by name, with the images that
//! need it.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
    time::Instant,
};

use serde::Serialize;

use crate::{ChunkDigest, ErrorKind, ImageId, Manifest, Result, Store, blob::BlobDecoder};

/// A chunk that failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChunkProblem {
    /// The chunk's name.
    pub digest: String,
    /// What is wrong with it.
    pub reason: String,
    /// Images whose disks reference it (empty: unreferenced).
    pub images: Vec<String>,
}

/// An image whose manifest or index cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageProblem {
    /// The image.
    pub image_id: String,
    /// What is wrong.
    pub reason: String,
}

/// Result of a verify.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Images whose manifest and indexes were checked.
    pub images_checked: u64,
    /// Distinct chunks read and checked.
    pub chunks_checked: u64,
    /// Blob bytes read.
    pub bytes_checked: u64,
    /// Referenced chunks that are not in the store.
    pub missing: Vec<ChunkProblem>,
    /// Chunks whose bytes are damaged.
    pub corrupt: Vec<ChunkProblem>,
    /// Images that cannot be read at all.
    pub bad_images: Vec<ImageProblem>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl VerifyReport {
    /// Whether everything checked is sound.
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.corrupt.is_empty() && self.bad_images.is_empty()
    }
}

/// Verify the listed images (all chunks they reference).
pub fn verify_images(
    store: &Store,
    manifests: &[Manifest],
    threads: usize,
) -> Result<VerifyReport> {
    verify_images_until(store, manifests, threads, None)
}

/// [`verify_images`] that stops with a cancelled error once `cancel` is
/// set (a copy being cancelled while it verifies).
pub fn verify_images_until(
    store: &Store,
    manifests: &[Manifest],
    threads: usize,
    cancel: Option<&std::sync::atomic::AtomicBool>,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let mut report = VerifyReport::default();
    let refs = collect_refs(store, manifests.iter().cloned().map(Ok), &mut report);
    check_chunks(store, refs, threads, cancel, &mut report);
    if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
        return Err(crate::Error::cancelled());
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Verify the whole store: every image, and every stored chunk (referenced
/// or not).
pub fn verify_store(store: &Store, threads: usize) -> Result<VerifyReport> {
    let started = Instant::now();
    let mut report = VerifyReport::default();
    let listed = store.list()?;
    let mut manifests = Vec::new();
    for (id, m) in listed {
        match m {
            Ok(m) => manifests.push(Ok(m)),
            Err(e) => manifests.push(Err((id, e.to_string()))),
        }
    }
    let mut refs = collect_refs(store, manifests.into_iter(), &mut report);
    store.backend().list_chunks(&mut |c| {
        refs.entry(c.digest).or_default();
        Ok(())
    })?;
    check_chunks(store, refs, threads, None, &mut report);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

type Refs = BTreeMap<ChunkDigest, BTreeSet<ImageId>>;

fn collect_refs(
    store: &Store,
    manifests: impl Iterator<Item = std::result::Result<Manifest, (ImageId, String)>>,
    report: &mut VerifyReport,
) -> Refs {
    let mut refs = Refs::new();
    for m in manifests {
        let m = match m {
            Ok(m) => m,
            Err((id, reason)) => {
                report.bad_images.push(ImageProblem {
                    image_id: id.to_string(),
                    reason,
                });
                continue;
            }
        };
        report.images_checked += 1;
        for disk in 0..m.disks.len() {
            match store.read_index(&m, disk) {
                Ok(index) => {
                    for d in index.digests().iter().filter(|d| !d.is_zero_chunk()) {
                        refs.entry(*d).or_default().insert(m.image_id.clone());
                    }
                }
                Err(e) => report.bad_images.push(ImageProblem {
                    image_id: m.image_id.to_string(),
                    reason: e.to_string(),
                }),
            }
        }
    }
    refs
}

fn check_chunks(
    store: &Store,
    refs: Refs,
    threads: usize,
    cancel: Option<&std::sync::atomic::AtomicBool>,
    report: &mut VerifyReport,
) {
    let work: Vec<(ChunkDigest, BTreeSet<ImageId>)> = refs.into_iter().collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out = Mutex::new((Vec::new(), Vec::new(), 0u64, 0u64));
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let Ok(mut decoder) = BlobDecoder::new() else {
                    return;
                };
                let (mut blob, mut raw) = (Vec::new(), Vec::new());
                loop {
                    if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
                        break;
                    }
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((digest, images)) = work.get(i) else {
                        break;
                    };
                    let problem = |reason: String| ChunkProblem {
                        digest: digest.to_hex(),
                        reason,
                        images: images.iter().map(ToString::to_string).collect(),
                    };
                    let r = store.backend().read_chunk(digest, &mut blob);
                    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        Err(e) if e.kind() == ErrorKind::NotFound => {
                            o.0.push(problem(e.to_string()));
                            continue;
                        }
                        Err(e) => {
                            o.1.push(problem(e.to_string()));
                            continue;
                        }
                        Ok(()) => {
                            o.2 += 1;
                            o.3 += blob.len() as u64;
                        }
                    }
                    drop(o);
                    if let Err(e) = decoder.decode_into(&blob, digest, &mut raw) {
                        out.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .1
                            .push(problem(e.to_string()));
                    }
                }
            });
        }
    });
    let (mut missing, mut corrupt, chunks, bytes) =
        out.into_inner().unwrap_or_else(|p| p.into_inner());
    missing.sort_by(|a: &ChunkProblem, b| a.digest.cmp(&b.digest));
    corrupt.sort_by(|a: &ChunkProblem, b| a.digest.cmp(&b.digest));
    report.missing = missing;
    report.corrupt = corrupt;
    report.chunks_checked = chunks;
    report.bytes_checked = bytes;
}
