//! Lazy deploys: the new guest boots at once, each disk on a small qcow2
//! overlay that reads what it has not got from the stored image, exported
//! by the agent over NBD ([`crate::nbd::server`]); the agent then fills the
//! disk's own volume (raw or qcow2) while the guest runs: libvirt's block
//! copy mirrors everything the disk reads (overlay and export) into the
//! volume, the guest's writes included, with many requests in flight; once
//! in step the disk is switched (pivoted) to the volume, which then stands
//! alone. The overlay is removed and the export closes.
//!
//! The guest's disks stop (pause) on a failed read rather than see an
//! error, and QEMU waits [`RECONNECT_DELAY`] seconds for an export that
//! went away; a chunk that is missing or damaged fails the fill, naming
//! it.

use std::{
    path::{Path, PathBuf},
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
    hypervisor::{CopyTarget, GuestRef, Hypervisor, PowerState},
    journal::Entry,
    nbd::server::Export,
    work::{Ctx, DeployOutcome, LAZY_FILL, Report, end_deploy, retrying},
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
/// Copies of one disk that may end without filling it (an export that
/// came back late) before the fill fails.
const ATTEMPTS: u32 = 5;
/// How long a fill waits for libvirtd to answer again (a restart).
const LIBVIRT_PATIENCE: Duration = Duration::from_secs(120);
/// Pool types whose volumes are files, so an overlay can be qcow2 with a
/// backing image.
const FILE_POOLS: [&str; 3] = ["dir", "fs", "netfs"];

/// Whether a lazy deploy can write volumes into a pool of `kind`.
pub fn check(kind: &str, start: bool) -> Result<()> {
    if !start {
        return Err(AgentError::new(
            Kind::InvalidArgument,
            "a lazy deploy starts its guest (start must be set)",
        ));
    }
    if !FILE_POOLS.contains(&kind) {
        return Err(AgentError::new(
            Kind::FailedPrecondition,
            format!(
                "a lazy deploy needs a pool of files (dir, fs or netfs) to hold the qcow2 overlays its guest starts on; this pool is of type {kind:?}"
            ),
        ));
    }
    Ok(())
}

/// The overlay volume a lazy deploy's disk `dev` starts on.
pub fn overlay_name(guest: &str, dev: &str) -> String {
    format!("{guest}-{dev}.fill.qcow2")
}

/// One disk being filled.
#[derive(Debug)]
pub struct LazyDisk {
    /// The disk's index in the image.
    pub index: usize,
    /// Guest device.
    pub dev: String,
    /// The volume filled.
    pub target: CopyTarget,
    /// The overlay volume the guest started on (removed once filled).
    pub overlay: String,
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

/// Where an export or server of disk `disk` listens for operation `op`
/// (a lazy deploy's, a lint's, a seal's): a socket in `dir`.
pub fn socket_path(dir: &Path, op: &str, disk: usize) -> PathBuf {
    dir.join(format!("{op}-{disk}.sock"))
}

/// Export disk `disk` of the image on `socket`, and the backing the new
/// volume names.
pub fn export_disk(
    socket: &Path,
    store: &Store,
    manifest: &Manifest,
    disk: usize,
) -> Result<(Export, NbdBacking, u64)> {
    let reader = DiskReader::open(store, manifest, disk, CACHE_CHUNKS)?;
    let size = reader.size_bytes();
    let name = format!("disk{disk}");
    let export = Export::start(socket, &name, Arc::new(reader), qemu_gid()).map_err(|e| {
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

/// Name `backing` (or nothing) as the backing image in the header of the
/// qcow2 `overlay` itself, without touching its data: so a tool that opens
/// the overlay alone (virt-sysprep, giving the clone a fresh identity
/// before it boots) reads the image through the export. The domain's XML
/// names the backing for QEMU, so the header names none once that is done.
pub fn set_header_backing(overlay: &str, backing: Option<&NbdBacking>) -> Result<()> {
    let url = backing.map_or_else(String::new, |b| {
        crate::nbd::unix_url(Path::new(&b.socket), &b.export)
    });
    let mut cmd = std::process::Command::new("qemu-img");
    cmd.args(["rebase", "-u", "-f", "qcow2", "-b", &url]);
    if backing.is_some() {
        cmd.args(["-F", "raw"]);
    }
    crate::tool::run(cmd.arg(overlay), &format!("qemu-img rebase {overlay}")).map(drop)
}

/// The image a lazy deploy's volumes are filled from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Its store.
    pub store: &'a Store,
    /// Its manifest.
    pub manifest: &'a Manifest,
}

/// Fill every lazy disk of the running `guest`, one after the other;
/// `report(done, total)` in guest-visible bytes. Then remove the overlays
/// of `pool` the guest no longer uses (a volume that cannot be removed
/// is logged, not a failure: the guest is complete).
#[allow(clippy::too_many_arguments)]
pub fn fill(
    hv: &dyn Hypervisor,
    guest: &GuestRef,
    pool: &str,
    source: Source<'_>,
    disks: &[LazyDisk],
    mib_s: u64,
    cancel: &Arc<AtomicBool>,
    report: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let total: u64 = disks.iter().map(|d| d.size).sum();
    let mut before = 0;
    for d in disks {
        fill_disk(hv, guest, source, d, mib_s, cancel, &mut |done| {
            report(before + done, total)
        })?;
        before += d.size;
        report(before, total);
    }
    for d in disks {
        let gone = retrying(LIBVIRT_PATIENCE, || {
            match hv.delete_volume(pool, &d.overlay) {
                Err(e) if e.kind == Kind::NotFound => Ok(()),
                r => r,
            }
        });
        if let Err(e) = gone {
            tracing::warn!(guest = %guest.name, volume = %d.overlay, error = %e, "cannot remove a filled disk's overlay");
        }
    }
    Ok(())
}

/// Whether disk `d` is filled in two steps: the agent writes the image
/// into the volume itself, from the store, as a full deploy does (at its
/// speed, not at the speed of QEMU's copy through the export), then QEMU
/// copies only what the guest wrote above the export (a shallow copy:
/// the overlay's clusters) and keeps the volume in step until the pivot.
/// A raw volume only (the agent's qcow2 writer makes fresh images), and
/// not under a speed cap (QEMU enforces the cap on its copy).
fn prefilled(d: &LazyDisk, mib_s: u64) -> bool {
    mib_s == 0 && d.target.format == "raw"
}

/// Write disk `d.index` of the image into `d`'s volume (all of it, zeros
/// too: a retry finds it partly written, and perhaps with what an earlier
/// copy brought from the overlay, which the next copy brings again).
fn prefill(
    source: Source<'_>,
    d: &LazyDisk,
    cancel: &Arc<AtomicBool>,
    report: &mut dyn FnMut(u64),
) -> Result<()> {
    let what = || format!("write volume {} of disk {}", d.target.path, d.dev);
    let mut target = imprint_store::source::FileTarget::open_existing(Path::new(&d.target.path))
        .map_err(|e| AgentError::new(Kind::Internal, format!("{}: {e}", what())))?;
    let opts = imprint_store::restore::RestoreOptions {
        sync: true,
        cancel: Some(cancel.clone()),
        ..Default::default()
    };
    imprint_store::restore::restore_disk(
        source.store,
        source.manifest,
        d.index,
        &mut target,
        &opts,
        &mut |p| report(p.bytes_done),
    )
    .map_err(|e| AgentError::from(e).context(what()))?;
    Ok(())
}

fn fill_disk(
    hv: &dyn Hypervisor,
    guest: &GuestRef,
    source: Source<'_>,
    d: &LazyDisk,
    mib_s: u64,
    cancel: &Arc<AtomicBool>,
    report: &mut dyn FnMut(u64),
) -> Result<()> {
    // libvirtd may restart during a fill: the job runs on in QEMU, and the
    // calls wait for libvirtd to answer again.
    let backed = || retrying(LIBVIRT_PATIENCE, || hv.has_backing(guest, &d.dev));
    let job = || retrying(LIBVIRT_PATIENCE, || hv.block_job(guest, &d.dev));
    // Progress never goes back (a shallow copy's own figures start at 0
    // after the volume was written).
    let mut shown = 0;
    let mut show = |b: u64| {
        shown = shown.max(b.min(d.size));
        report(shown);
    };
    for _ in 0..ATTEMPTS {
        if !backed()? {
            return Ok(());
        }
        // A copy started before an agent restart runs on: follow it.
        if job()?.is_none() {
            let shallow = prefilled(d, mib_s);
            if shallow {
                prefill(source, d, cancel, &mut show)?;
            }
            retrying(LIBVIRT_PATIENCE, || {
                hv.block_copy(guest, &d.dev, &d.target, mib_s, shallow)
            })?;
        }
        while let Some((cur, end)) = job()? {
            if cancel.load(Ordering::Relaxed) {
                return Err(AgentError::new(Kind::Cancelled, "cancelled"));
            }
            if end > 0 {
                show(
                    u64::try_from(u128::from(cur) * u128::from(d.size) / u128::from(end))
                        .unwrap_or(d.size),
                );
            }
            // In step (libvirt says so only once QEMU has): switch the disk
            // to its volume, which ends the job.
            if end > 0
                && cur == end
                && retrying(LIBVIRT_PATIENCE, || hv.block_pivot(guest, &d.dev))?
            {
                break;
            }
            std::thread::sleep(POLL);
        }
        if !backed()? {
            return Ok(());
        }
        if let Some(failure) = d.export.failure() {
            return Err(AgentError::new(
                Kind::DataLoss,
                format!("filling disk {}: {failure}", d.dev),
            ));
        }
        tracing::warn!(guest = %guest.name, dev = %d.dev, "the fill ended early; copying again");
    }
    Err(AgentError::new(
        Kind::Unavailable,
        format!(
            "the fill of disk {} ended early {ATTEMPTS} times; the guest keeps reading from the agent's export",
            d.dev
        ),
    ))
}

/// Resume a lazy deploy a previous run of the agent left filling (its
/// journal `entry`): serve its exports again on the sockets QEMU
/// reconnects to, follow (or start again) the copy of every disk still
/// backed, and end as the deploy would have. The image's store is
/// `store` (an error when it cannot be opened). A guest that is no longer
/// running cannot be filled: the deploy fails and what it made goes, as
/// for any failed deploy.
pub fn resume(
    ctx: &Ctx,
    store: Result<Store>,
    mut entry: Entry,
    cancel: &Arc<AtomicBool>,
    report: Report<'_>,
) -> Result<DeployOutcome> {
    let Entry::Deploy {
        guest_name,
        pool,
        filling: Some(f),
        ..
    } = &entry
    else {
        return Err(AgentError::new(
            Kind::Internal,
            "not a filling lazy deploy's journal entry",
        ));
    };
    let (guest, pool, f) = (
        GuestRef {
            name: guest_name.clone(),
            uuid: f.guest_uuid.clone(),
        },
        pool.clone(),
        f.clone(),
    );
    let claims = ctx
        .busy
        .claim(
            &format!("name:{}", guest.name),
            &format!("guest name {}", guest.name),
        )
        // A resumed fill is never refused for the host's fill limit.
        .and_then(|n| {
            Ok((
                n,
                ctx.busy
                    .claim_slot(LAZY_FILL, usize::MAX, "lazy deploy fills")?,
            ))
        });
    let r = claims.and_then(|_claims| {
        let store = store?;
        let image = f.image_id.parse().map_err(AgentError::from)?;
        let manifest = retrying(LIBVIRT_PATIENCE, || {
            store.manifest(&image).map_err(AgentError::from)
        })?;
        match retrying(LIBVIRT_PATIENCE, || ctx.hv.power_state(&guest))? {
            PowerState::Running | PowerState::Paused => {}
            _ => {
                return Err(AgentError::new(
                    Kind::FailedPrecondition,
                    format!(
                        "guest {} stopped before its volumes were filled (they read from the agent's export): the deploy is undone",
                        guest.name
                    ),
                ));
            }
        }
        let mut disks = Vec::new();
        for d in &f.disks {
            let (export, _, size) = export_disk(Path::new(&d.socket), &store, &manifest, d.index)?;
            disks.push(LazyDisk {
                index: d.index,
                dev: d.dev.clone(),
                target: CopyTarget {
                    path: d.target.clone(),
                    format: d.format.clone(),
                },
                overlay: d.overlay.clone(),
                export,
                size,
            });
        }
        tracing::info!(guest = %guest.name, disks = disks.len(), "serving a lazy deploy's exports again; resuming its fill");
        // Reads that found no export for longer than QEMU's reconnect delay
        // stopped the guest rather than failed it: the exports answer
        // again, so it runs on (QEMU retries those reads).
        if retrying(LIBVIRT_PATIENCE, || ctx.hv.paused_on_io_error(&guest))? {
            tracing::warn!(guest = %guest.name, "the guest stopped on a read while the agent was away; resuming it");
            retrying(LIBVIRT_PATIENCE, || ctx.hv.resume(&guest))?;
        }
        report(RUNNING_PHASE, 0, disks.iter().map(|d| d.size).sum());
        fill(
            &*ctx.hv,
            &guest,
            &pool,
            Source {
                store: &store,
                manifest: &manifest,
            },
            &disks,
            f.fill_mib_s,
            cancel,
            &mut |done, total| report(RUNNING_PHASE, done, total),
        )?;
        Ok(DeployOutcome {
            guest: guest.clone(),
            volumes: f.volume_paths.clone(),
            macs: f.macs.clone(),
            bytes_written: f.bytes_written,
            write_seconds: 0.0,
            generalize_seconds: 0.0,
            started: true,
        })
    });
    end_deploy(ctx, &mut entry, r, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_deploys_need_a_started_guest_on_a_pool_of_files() {
        assert!(check("dir", true).is_ok());
        assert!(check("netfs", true).is_ok());
        let stopped = check("dir", false).expect_err("not started");
        assert_eq!(stopped.kind, Kind::InvalidArgument);
        for kind in ["logical", "iscsi", "rbd", "disk"] {
            let e = check(kind, true).expect_err("not files");
            assert_eq!(e.kind, Kind::FailedPrecondition, "{kind}");
            assert!(e.to_string().contains(kind), "{e}");
        }
    }
}
