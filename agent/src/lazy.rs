//! Lazy deploys: the new guest boots at once on qcow2 volumes that read
//! what they have not got yet from the stored image, exported by the
//! agent over NBD ([`crate::nbd::server`]); the agent then fills them
//! (libvirt's block pull: QEMU copies every range the volume lacks from
//! the export into it) while the guest runs. When the pull ends the volume
//! has no backing image any more and the export closes.
//!
//! The guest's disks stop (pause) on a failed read rather than see an
//! error, and QEMU waits [`RECONNECT_DELAY`] seconds for an export that
//! went away; a chunk that is missing or damaged fails the fill, naming
//! it.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use imprint_store::{Manifest, Store, reader::DiskReader};

use crate::{
    domain::NbdBacking,
    error::{AgentError, Kind, Result},
    hypervisor::{GuestRef, Hypervisor},
    nbd::server::Export,
};

/// The phase a lazy deploy reports once its guest runs (the first of its
/// two milestones; the second is the operation's success).
pub const RUNNING_PHASE: &str = "guest running; filling volumes";
/// How long QEMU waits for an export that went away (an agent restart)
/// before a read fails (and the guest pauses).
pub const RECONNECT_DELAY: u32 = 60;
/// Decoded chunks an export keeps (memory per export: this many chunks).
const CACHE_CHUNKS: usize = 16;
/// How often the fill's progress is read.
const POLL: Duration = Duration::from_millis(200);
/// Pulls of one disk that may end without filling it (an export that
/// came back late) before the fill fails.
const ATTEMPTS: u32 = 5;
/// Pool types whose volumes are files, so they can be qcow2 with a
/// backing image.
const FILE_POOLS: [&str; 3] = ["dir", "fs", "netfs"];

/// Whether a lazy deploy can write volumes into a pool of `kind`, with
/// volumes of `format`.
pub fn check(kind: &str, format: &str, start: bool) -> Result<()> {
    if !start {
        return Err(AgentError::new(
            Kind::InvalidArgument,
            "a lazy deploy starts its guest (start must be set)",
        ));
    }
    if format != "qcow2" {
        return Err(AgentError::new(
            Kind::InvalidArgument,
            "a lazy deploy writes qcow2 volumes (a raw volume cannot read from a backing image): ask for disk format qcow2",
        ));
    }
    if !FILE_POOLS.contains(&kind) {
        return Err(AgentError::new(
            Kind::FailedPrecondition,
            format!(
                "a lazy deploy needs a pool of files (dir, fs or netfs) to hold qcow2 volumes with a backing image; this pool is of type {kind:?}"
            ),
        ));
    }
    Ok(())
}

/// One disk being filled.
#[derive(Debug)]
pub struct LazyDisk {
    /// Guest device.
    pub dev: String,
    /// Its export (stopped when dropped).
    pub export: Export,
    /// Guest-visible size.
    pub size: u64,
}

/// The group QEMU runs in (`libvirt-qemu` on Debian, else `kvm`): the
/// export sockets' group, since libvirt does not relabel NBD sockets.
fn qemu_gid() -> Option<u32> {
    ["libvirt-qemu", "kvm"].iter().find_map(|g| {
        nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    })
}

/// Export disk `disk` of the image for operation `op` from `dir`, and the
/// backing the new volume names.
pub fn export_disk(
    dir: &Path,
    op: &str,
    store: &Store,
    manifest: &Manifest,
    disk: usize,
) -> Result<(Export, NbdBacking, u64)> {
    let reader = DiskReader::open(store, manifest, disk, CACHE_CHUNKS)?;
    let size = reader.size_bytes();
    let socket = dir.join(format!("{op}-{disk}.sock"));
    let name = format!("disk{disk}");
    let export = Export::start(&socket, &name, Arc::new(reader), qemu_gid()).map_err(|e| {
        AgentError::new(
            Kind::Internal,
            format!("serve disk {disk} on {}: {e}", socket.display()),
        )
    })?;
    let backing = NbdBacking {
        socket: socket.display().to_string(),
        export: name,
        reconnect_delay: RECONNECT_DELAY,
    };
    Ok((export, backing, size))
}

/// Fill every lazy disk of the running `guest`, one after the other;
/// `report(done, total)` in guest-visible bytes.
pub fn fill(
    hv: &dyn Hypervisor,
    guest: &GuestRef,
    disks: &[LazyDisk],
    mib_s: u64,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let total: u64 = disks.iter().map(|d| d.size).sum();
    let mut before = 0;
    for d in disks {
        fill_disk(hv, guest, d, mib_s, cancel, &mut |done| {
            report(before + done, total)
        })?;
        before += d.size;
        report(before, total);
    }
    Ok(())
}

fn fill_disk(
    hv: &dyn Hypervisor,
    guest: &GuestRef,
    d: &LazyDisk,
    mib_s: u64,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(u64),
) -> Result<()> {
    for _ in 0..ATTEMPTS {
        if !hv.has_backing(guest, &d.dev)? {
            return Ok(());
        }
        hv.block_pull(guest, &d.dev, mib_s)?;
        while let Some((cur, end)) = hv.block_job(guest, &d.dev)? {
            if cancel.load(Ordering::Relaxed) {
                return Err(AgentError::new(Kind::Cancelled, "cancelled"));
            }
            if end > 0 {
                report(
                    u64::try_from(u128::from(cur) * u128::from(d.size) / u128::from(end))
                        .unwrap_or(d.size),
                );
            }
            std::thread::sleep(POLL);
        }
        if !hv.has_backing(guest, &d.dev)? {
            return Ok(());
        }
        if let Some(failure) = d.export.failure() {
            return Err(AgentError::new(
                Kind::DataLoss,
                format!("filling disk {}: {failure}", d.dev),
            ));
        }
        tracing::warn!(guest = %guest.name, dev = %d.dev, "the fill ended early; pulling again");
    }
    Err(AgentError::new(
        Kind::Unavailable,
        format!(
            "the fill of disk {} ended early {ATTEMPTS} times; the guest keeps reading from the agent's export",
            d.dev
        ),
    ))
}
