//! Checkpoints for incremental recaptures.
//!
//! A capture whose view is a libvirt backup creates a checkpoint with it,
//! `imprint-<image id>`: a persistent dirty bitmap on each qcow2 disk,
//! counting every block the guest writes from that point in time on. The
//! next capture of the guest takes its backup incrementally from the
//! newest such checkpoint whose image is still in the store: QEMU exports
//! the blocks changed since (NBD block status of the bitmap), and every
//! clean chunk reuses the parent image's digest unread. Any doubt falls
//! back to a full read and says why; raw disks are always read in full
//! (QEMU keeps bitmaps in qcow2 only). After a capture only its own
//! checkpoint is kept (each bitmap costs the guest's writes a little).

use imprint_store::{ChunkDigest, ImageId, Manifest, Store};

use crate::{
    domain::GuestConfig,
    hypervisor::{GuestRef, Hypervisor},
};

/// Prefix of the checkpoints imprint makes.
pub const PREFIX: &str = "imprint-";

/// Image label naming the checkpoint taken with the image.
pub const CHECKPOINT_LABEL: &str = "imprint.checkpoint";

/// Image label naming the image an incremental capture started from.
pub const PARENT_LABEL: &str = "imprint.parent";

/// The checkpoint taken with `image`.
pub fn name_for(image: &ImageId) -> String {
    format!("{PREFIX}{image}")
}

/// The image a parent checkpoint belongs to, and its disks' digests.
#[derive(Debug, Clone)]
pub struct Parent {
    /// Its checkpoint.
    pub checkpoint: String,
    /// Its image.
    pub image_id: ImageId,
    /// Its manifest.
    pub manifest: Manifest,
}

/// What a capture does about checkpoints.
#[derive(Debug, Clone, Default)]
pub struct Increment {
    /// The checkpoint to create with the backup, and the disks (qcow2) it
    /// tracks.
    pub checkpoint: Option<(String, Vec<String>)>,
    /// Where to read changes from.
    pub parent: Option<Parent>,
    /// Why some or all tracked disks are read in full (shown in the result).
    pub full_read_reason: Option<String>,
}

impl Increment {
    /// Whether the view exports `disk`'s changes since the parent.
    pub fn tracks_changes_of(&self, disk: &str) -> bool {
        self.parent.is_some()
            && self
                .checkpoint
                .as_ref()
                .is_some_and(|(_, disks)| disks.iter().any(|d| d == disk))
    }

    /// Read in full from here on, because `why`.
    pub fn fall_back(&mut self, why: String) {
        self.parent = None;
        self.full_read_reason = Some(why);
    }

    /// The base digests of `disk` (whose view is `size_bytes` long), or
    /// `None` (read it in full; the reason is recorded).
    pub fn base_for(
        &mut self,
        store: &Store,
        disk: &str,
        size_bytes: u64,
    ) -> Option<Vec<ChunkDigest>> {
        let parent = self.parent.as_ref()?;
        if !self
            .checkpoint
            .as_ref()
            .is_some_and(|(_, disks)| disks.iter().any(|d| d == disk))
        {
            return None;
        }
        let Some(i) = parent.manifest.disks.iter().position(|d| d.name == disk) else {
            self.full_read_reason = Some(format!(
                "disk {disk} is not in image {}; it is read in full",
                parent.image_id
            ));
            return None;
        };
        if parent.manifest.disks[i].size_bytes != size_bytes {
            self.full_read_reason = Some(format!(
                "disk {disk} was resized since image {} ({} → {size_bytes} bytes); it is read in full",
                parent.image_id, parent.manifest.disks[i].size_bytes
            ));
            return None;
        }
        match store.read_index(&parent.manifest, i) {
            Ok(index) => Some(index.digests().to_vec()),
            Err(e) => {
                self.full_read_reason = Some(format!(
                    "the index of disk {disk} in image {} cannot be read ({e}); it is read in full",
                    parent.image_id
                ));
                None
            }
        }
    }
}

/// Decide what the capture of `guest` into `image` does about checkpoints:
/// which disks get one (the chosen qcow2 disks), and the newest earlier
/// checkpoint whose image is still in the store.
pub fn plan(
    hv: &dyn Hypervisor,
    store: &Store,
    guest: &GuestRef,
    config: &GuestConfig,
    chosen: &[(usize, String)],
    image: &ImageId,
) -> Increment {
    let tracked: Vec<String> = chosen
        .iter()
        .map(|(i, _)| &config.disks[*i])
        .filter(|d| d.format == "qcow2")
        .map(|d| d.target_dev.clone())
        .collect();
    if tracked.is_empty() {
        return Increment {
            full_read_reason: Some("raw disks are read in full (no qcow2 disk to track)".into()),
            ..Default::default()
        };
    }
    let mut inc = Increment {
        checkpoint: Some((name_for(image), tracked)),
        ..Default::default()
    };
    let names = match hv.checkpoints(guest) {
        Ok(n) => n,
        Err(e) => {
            inc.fall_back(format!(
                "the guest's checkpoints cannot be listed ({e}); read in full"
            ));
            return inc;
        }
    };
    let mut gone = None;
    let mut newest: Option<Parent> = None;
    for name in names {
        let Some(id) = name
            .strip_prefix(PREFIX)
            .and_then(|s| s.parse::<ImageId>().ok())
        else {
            continue;
        };
        match store.manifest(&id) {
            Ok(m) if m.labels.get(CHECKPOINT_LABEL) == Some(&name) => {
                if newest
                    .as_ref()
                    .is_none_or(|p| p.manifest.created_unix < m.created_unix)
                {
                    newest = Some(Parent {
                        checkpoint: name,
                        image_id: id,
                        manifest: m,
                    });
                }
            }
            _ => gone = Some(name),
        }
    }
    match (newest, gone) {
        (Some(p), _) => inc.parent = Some(p),
        (None, Some(name)) => inc.fall_back(format!(
            "the image of checkpoint {name} is gone; read in full"
        )),
        (None, None) => {
            inc.fall_back("no checkpoint of an earlier capture of this guest; read in full".into())
        }
    }
    inc
}

/// After the capture: keep only `keep` (the new image's checkpoint, or
/// none when the capture failed) of imprint's checkpoints of `guest`.
/// Failures are logged: a stale checkpoint costs a bitmap, not data.
pub fn prune(hv: &dyn Hypervisor, guest: &GuestRef, keep: Option<&str>) {
    let names = match hv.checkpoints(guest) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(guest = %guest.name, error = %e, "cannot list checkpoints to prune");
            return;
        }
    };
    for name in names
        .iter()
        .filter(|n| n.starts_with(PREFIX) && Some(n.as_str()) != keep)
    {
        if let Err(e) = hv.delete_checkpoint(guest, name) {
            tracing::warn!(guest = %guest.name, checkpoint = %name, error = %e, "cannot delete checkpoint");
        }
    }
}
