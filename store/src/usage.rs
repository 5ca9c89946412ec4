//! Space accounting: what each image references, and what only it
//! references (the bytes GC would free once it is deleted).
//!
//! One pass over every manifest and index plus one listing of the chunks;
//! memory is one map entry per distinct chunk. The control daemon runs it
//! after images are added or deleted and keeps the figures in its catalog.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::{ChunkDigest, ImageId, Result, Store};

/// Space used by one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageUsage {
    /// The image.
    pub image_id: ImageId,
    /// Stored (compressed) bytes of every distinct chunk it references.
    pub referenced_bytes: u64,
    /// Stored bytes of the chunks no other committed image references:
    /// freed by GC once this image is deleted.
    pub exclusive_bytes: u64,
}

/// Result of [`usage`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct UsageReport {
    /// Per readable image, in the order the store lists them.
    pub images: Vec<ImageUsage>,
    /// Images whose manifest or index could not be read, with the reason.
    /// Their chunks count as used by nobody, so the exclusive bytes of the
    /// images sharing them may be over-stated until they are repaired.
    pub unreadable: Vec<(ImageId, String)>,
    /// Stored bytes of every chunk in the store (referenced or not).
    pub stored_bytes: u64,
}

/// Account the space of every committed image of `store`.
pub fn usage(store: &Store) -> Result<UsageReport> {
    let mut report = UsageReport::default();
    let mut per_image: Vec<(ImageId, HashSet<ChunkDigest>)> = Vec::new();
    let mut refs: HashMap<ChunkDigest, u32> = HashMap::new();
    for (id, m) in store.list()? {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                report.unreadable.push((id, e.to_string()));
                continue;
            }
        };
        let mut set = HashSet::new();
        let mut failed = None;
        for disk in 0..m.disks.len() {
            match store.read_index(&m, disk) {
                Ok(index) => set.extend(
                    index
                        .digests()
                        .iter()
                        .filter(|d| !d.is_zero_chunk())
                        .copied(),
                ),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(e) = failed {
            report.unreadable.push((id, e));
            continue;
        }
        for d in &set {
            *refs.entry(*d).or_default() += 1;
        }
        per_image.push((id, set));
    }
    let mut sizes: HashMap<ChunkDigest, u64> = HashMap::with_capacity(refs.len());
    store.backend().list_chunks(&mut |c| {
        report.stored_bytes += c.size_bytes;
        if refs.contains_key(&c.digest) {
            sizes.insert(c.digest, c.size_bytes);
        }
        Ok(())
    })?;
    for (image_id, set) in per_image {
        let mut u = ImageUsage {
            image_id,
            referenced_bytes: 0,
            exclusive_bytes: 0,
        };
        for d in &set {
            // A missing chunk occupies nothing (verify reports it).
            let size = sizes.get(d).copied().unwrap_or(0);
            u.referenced_bytes += size;
            if refs.get(d) == Some(&1) {
                u.exclusive_bytes += size;
            }
        }
        report.images.push(u);
    }
    Ok(report)
}
