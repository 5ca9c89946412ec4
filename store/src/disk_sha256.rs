//! Whole-disk SHA-256, off the capture's critical path.
//!
//! A capture that reads every byte of a disk hashes it on the way
//! (`DiskEntry::sha256` in the manifest). An incremental capture does not
//! read the unchanged chunks, so its disks' SHA-256 is computed afterwards
//! from the stored image — chunks in disk order, zero chunks without a
//! read — and recorded beside the manifest in [`FILE`]. Until then a
//! disk's SHA-256 is *pending*. The image is usable at once: deploys,
//! exports and copies do not need it (every chunk carries its own BLAKE3).

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{ErrorKind, ImageId, Manifest, Result, Store, blob::BlobDecoder};

/// The image file holding SHA-256 computed after the capture.
pub const FILE: &str = "disk-sha256.json";

/// What [`FILE`] holds: one entry per disk, in manifest order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// Hex SHA-256 of each disk (`None`: not computed).
    pub disks: Vec<Option<String>>,
}

/// A disk's SHA-256 and whether it is known yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "sha256", rename_all = "snake_case")]
pub enum DiskSha256 {
    /// Known (hex).
    Done(String),
    /// To be computed from the stored image.
    Pending,
}

/// Each disk's SHA-256: from the manifest, else from [`FILE`].
pub fn sums(store: &Store, manifest: &Manifest) -> Result<Vec<DiskSha256>> {
    let recorded = match store.backend().read_image_file(&manifest.image_id, FILE) {
        Ok(b) => serde_json::from_slice::<Recorded>(&b).unwrap_or_default(),
        Err(e) if e.kind() == ErrorKind::NotFound => Recorded::default(),
        Err(e) => return Err(e),
    };
    Ok(manifest
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            d.sha256
                .clone()
                .or_else(|| recorded.disks.get(i).cloned().flatten())
                .map_or(DiskSha256::Pending, DiskSha256::Done)
        })
        .collect())
}

/// SHA-256 of disk `disk` of `manifest`, read back from the store in
/// order (chunks decoded and checked against their BLAKE3).
pub fn compute(store: &Store, manifest: &Manifest, disk: usize) -> Result<[u8; 32]> {
    let index = store.read_index(manifest, disk)?;
    let mut sha = Sha256::new();
    let mut decoder = BlobDecoder::new()?;
    let (mut blob, mut raw) = (Vec::new(), Vec::new());
    let zeros = vec![0u8; index.chunk_size() as usize];
    for (i, digest) in index.digests().iter().enumerate() {
        let (_, len) = index.chunk_range(i);
        if digest.is_zero_chunk() {
            sha.update(&zeros[..len]);
            continue;
        }
        store.backend().read_chunk(digest, &mut blob)?;
        decoder.decode_into(&blob, digest, &mut raw)?;
        sha.update(&raw[..len.min(raw.len())]);
    }
    Ok(sha.finalize().into())
}

/// Compute every pending SHA-256 of image `id` and record them; returns
/// them all. An image deleted meanwhile is `NotFound` (nothing written).
pub fn complete(store: &Store, id: &ImageId) -> Result<Vec<DiskSha256>> {
    let manifest = store.manifest(id)?;
    let mut recorded = Recorded {
        disks: sums(store, &manifest)?
            .into_iter()
            .map(|s| match s {
                DiskSha256::Done(h) => Some(h),
                DiskSha256::Pending => None,
            })
            .collect(),
    };
    if recorded.disks.iter().all(Option::is_some) {
        return sums(store, &manifest);
    }
    for (i, slot) in recorded.disks.iter_mut().enumerate() {
        if slot.is_none() {
            *slot = Some(hex::encode(compute(store, &manifest, i)?));
        }
    }
    // Not for an image deleted while it was hashed.
    store.manifest(id)?;
    let bytes = serde_json::to_vec_pretty(&recorded)
        .map_err(|e| crate::Error::new(ErrorKind::Io, format!("encode {FILE}: {e}")))?;
    store.backend().write_image_file(id, FILE, &bytes)?;
    sums(store, &manifest)
}
