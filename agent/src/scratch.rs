//! The scratch space of a point-in-time view. While a backup job runs,
//! QEMU copies the old contents of every block the guest overwrites into
//! the job's scratch file first (copy-before-write). When that file's
//! filesystem is full the copy fails, and QEMU stops the guest with its
//! write pending (a virtio disk's default on "no space": the guest sees no
//! error). Here the backup breaks, not the guest: the job is ended (the
//! guest's writes go straight to its disk again), the guest is let run (its
//! pending write is retried and succeeds) and the capture fails with
//! `ResourceExhausted`.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use crate::{
    error::{AgentError, Kind, Result},
    hypervisor::{GuestRef, Hypervisor},
};

/// Below this much space for QEMU, a scratch filesystem counts as full (a
/// qcow2 scratch file grows by clusters of 64 KiB plus metadata).
const FULL_BELOW: u64 = 8 << 20;

/// How often the guest's state is looked at during a read.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// Whether the filesystem of `dir` has (nearly) no space left for QEMU (an
/// unprivileged user: root's reserve does not count).
pub fn is_full(dir: &Path) -> bool {
    nix::sys::statvfs::statvfs(dir)
        .is_ok_and(|s| s.blocks_available().saturating_mul(s.fragment_size()) < FULL_BELOW)
}

/// If QEMU stopped `guest` because its scratch in `dir` is full: end the
/// backup job and let the guest run. Returns whether it did.
pub fn release_if_stuck(hv: &dyn Hypervisor, guest: &GuestRef, dir: &Path) -> Result<bool> {
    if !is_full(dir) || !hv.paused_on_io_error(guest)? {
        return Ok(false);
    }
    tracing::warn!(guest = %guest.name, dir = %dir.display(), "scratch space full; ending the backup job and resuming the guest");
    // The guest runs again even if the job would not end (libvirt
    // unavailable, or slow to cancel): a paused guest is the worse harm.
    let ended = hv.backup_end(guest);
    if let Err(e) = &ended {
        tracing::warn!(guest = %guest.name, error = %e, "cannot end the backup job; resuming the guest anyway");
    }
    hv.resume(guest)?;
    ended.map(|()| true)
}

/// Run `read` (of the view whose scratch is in `dir`) while watching the
/// guest; when the scratch runs out, release the guest at once and fail
/// the read with `ResourceExhausted`.
pub fn watched<T>(
    hv: &dyn Hypervisor,
    guest: &GuestRef,
    dir: &Path,
    read: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let released_flag = AtomicBool::new(false);
    let released = &released_flag;
    let (done, finished) = mpsc::channel::<()>();
    let result = std::thread::scope(|s| {
        s.spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(WATCH_EVERY) {
                match release_if_stuck(hv, guest, dir) {
                    Ok(true) => {
                        released.store(true, Ordering::SeqCst);
                        return;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(guest = %guest.name, error = %e, "cannot watch the scratch space"),
                }
            }
        });
        let r = read();
        drop(done);
        r
    });
    match result {
        Err(e) if released.load(Ordering::SeqCst) => Err(AgentError::new(
            Kind::ResourceExhausted,
            format!(
                "the scratch space of the point-in-time view ({}) ran out while guest {} wrote to its disks; the backup was ended and the guest runs on without error; nothing was captured ({})",
                dir.display(),
                guest.name,
                e.message
            ),
        )),
        other => other,
    }
}
