//! Filesystem freezes through the guest agent, for live captures.
//!
//! A freeze is bounded: a watchdog thaws the guest at the deadline whatever
//! the work under the freeze is doing, and the work's result is then
//! thrown away. A freeze request that times out may still be carried out
//! later (qemu-guest-agent runs one command at a time; a freeze hook that
//! hangs holds the freeze back, not forever), so after any failure the
//! caller keeps its journal entry until a thaw is confirmed: the agent's
//! recovery pass sends thaws until one gets through (see
//! [`crate::work::recover_where`]).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use crate::{
    error::{AgentError, Kind, Result},
    hypervisor::{GuestRef, Hypervisor},
};

/// How long one thaw request may wait for the guest agent.
pub const THAW_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`thaw_until_through`] keeps trying.
pub const THAW_PATIENCE: Duration = Duration::from_secs(600);

/// Send thaws to `guest` until one gets through (or it stops running, or
/// [`THAW_PATIENCE`] passes): a freeze that timed out is carried out when
/// the guest agent gets to it, and must be undone at once then. The
/// journal's recovery pass covers a restart of this agent.
pub fn thaw_until_through(hv: &dyn Hypervisor, guest: &GuestRef) {
    let start = Instant::now();
    while start.elapsed() < THAW_PATIENCE {
        match hv.fs_thaw(guest, THAW_TIMEOUT) {
            Ok(()) => {
                tracing::info!(guest = %guest.name, "thawed after a failed freeze");
                return;
            }
            Err(e) => match hv.power_state(guest) {
                Ok(
                    crate::hypervisor::PowerState::Running | crate::hypervisor::PowerState::Paused,
                ) => {
                    tracing::debug!(guest = %guest.name, error = %e, "thaw not through yet")
                }
                _ => return,
            },
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    tracing::warn!(guest = %guest.name, "no thaw got through; the recovery pass goes on trying");
}

/// What a bounded freeze did.
#[derive(Debug)]
pub struct Frozen<T> {
    /// The work's result, or why the freeze failed.
    pub result: Result<T>,
    /// From the freeze request to the end of the thaw.
    pub frozen_for: Duration,
    /// A thaw got through (or nothing was frozen): the guest's filesystems
    /// are thawed. When false, thaws must go on (the journal's job).
    pub thawed: bool,
}

/// Freeze `guest`'s filesystems, run `work`, thaw: the filesystems stay
/// frozen at most `bound` (then they are thawed and the result is
/// `DeadlineExceeded`, whatever `work` returned).
pub fn while_frozen<T>(
    hv: &dyn Hypervisor,
    guest: &GuestRef,
    bound: Duration,
    work: impl FnOnce() -> Result<T>,
) -> Frozen<T> {
    let start = Instant::now();
    if let Err(e) = hv.fs_freeze(guest, bound) {
        // It may still freeze later: one thaw now, the journal's after.
        let thawed = hv.fs_thaw(guest, THAW_TIMEOUT).is_ok();
        let waited = start.elapsed();
        let result = Err(if waited >= bound {
            AgentError::new(
                Kind::DeadlineExceeded,
                format!(
                    "the guest agent of {} did not freeze its filesystems within {} s ({}); nothing was captured{}",
                    guest.name,
                    bound.as_secs(),
                    e.message,
                    if thawed {
                        ""
                    } else {
                        "; thaws are sent until one gets through"
                    },
                ),
            )
        } else {
            e.context(format!(
                "freeze the filesystems of guest {} for a live capture",
                guest.name
            ))
        });
        return Frozen {
            result,
            frozen_for: start.elapsed(),
            thawed,
        };
    }
    let expired_flag = AtomicBool::new(false);
    let expired = &expired_flag;
    let (done, deadline) = mpsc::channel::<()>();
    let result = std::thread::scope(|s| {
        s.spawn(move || {
            let left = bound.saturating_sub(start.elapsed());
            if let Err(mpsc::RecvTimeoutError::Timeout) = deadline.recv_timeout(left) {
                expired.store(true, Ordering::SeqCst);
                tracing::warn!(guest = %guest.name, bound = ?bound, "freeze bound reached; thawing");
                if let Err(e) = hv.fs_thaw(guest, THAW_TIMEOUT) {
                    tracing::warn!(guest = %guest.name, error = %e, "cannot thaw at the freeze bound");
                }
            }
        });
        let r = work();
        drop(done);
        r
    });
    // The watchdog has ended (the scope joined it). Thaw in any case: a
    // thaw of thawed filesystems is harmless, and the watchdog's may have
    // failed.
    let thaw = hv.fs_thaw(guest, THAW_TIMEOUT);
    let frozen_for = start.elapsed();
    let thawed = thaw.is_ok();
    let result = match (expired.load(Ordering::SeqCst), thaw) {
        (true, _) => Err(AgentError::new(
            Kind::DeadlineExceeded,
            format!(
                "the filesystems of guest {} would have stayed frozen longer than {} s; they were thawed and the capture failed",
                guest.name,
                bound.as_secs()
            ),
        )),
        (false, Err(e)) => Err(e.context(format!(
            "thaw the filesystems of guest {} (thaws are sent until one gets through)",
            guest.name
        ))),
        (false, Ok(())) => result,
    };
    Frozen {
        result,
        frozen_for,
        thawed,
    }
}
