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
    hypervisor::{GuestRef, Hypervisor, PowerState},
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
/// Pulls of one disk that may end without filling it (an export that
/// came back late) before the fill fails.
const ATTEMPTS: u32 = 5;
/// How long a fill waits for libvirtd to answer again (a restart).
const LIBVIRT_PATIENCE: Duration = Duration::from_secs(120);
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
    /// The disk's index in the image.
    pub index: usize,
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

/// Where a lazy deploy's export of disk `disk` listens: a socket in the
/// agent's NBD directory named for the operation.
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
    // libvirtd may restart during a fill: the job runs on in QEMU, and the
    // calls wait for libvirtd to answer again.
    let backed = || retrying(LIBVIRT_PATIENCE, || hv.has_backing(guest, &d.dev));
    let job = || retrying(LIBVIRT_PATIENCE, || hv.block_job(guest, &d.dev));
    for _ in 0..ATTEMPTS {
        if !backed()? {
            return Ok(());
        }
        // A pull started before an agent restart runs on: follow it.
        if job()?.is_none() {
            retrying(LIBVIRT_PATIENCE, || hv.block_pull(guest, &d.dev, mib_s))?;
        }
        while let Some((cur, end)) = job()? {
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
        if !backed()? {
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

/// Resume a lazy deploy a previous run of the agent left filling (its
/// journal `entry`): serve its exports again on the sockets QEMU
/// reconnects to, follow (or start again) the pull of every disk still
/// backed, and end as the deploy would have. The image's store is
/// `store` (an error when it cannot be opened). A guest that is no longer
/// running cannot be filled: the deploy fails and what it made goes, as
/// for any failed deploy.
pub fn resume(
    ctx: &Ctx,
    store: Result<Store>,
    mut entry: Entry,
    cancel: &AtomicBool,
    report: Report<'_>,
) -> Result<DeployOutcome> {
    let Entry::Deploy {
        guest_name,
        filling: Some(f),
        ..
    } = &entry
    else {
        return Err(AgentError::new(
            Kind::Internal,
            "not a filling lazy deploy's journal entry",
        ));
    };
    let (guest, f) = (
        GuestRef {
            name: guest_name.clone(),
            uuid: f.guest_uuid.clone(),
        },
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
            started: true,
        })
    });
    end_deploy(ctx, &mut entry, r, report)
}
