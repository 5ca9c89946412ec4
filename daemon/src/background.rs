//! The daemon's background duties (lease renewal, liveness, silent hosts,
//! space accounting): every loop is spawned here, owned by one
//! cancellation token and one task tracker, and stopped (and awaited) on
//! shutdown instead of being dropped with the runtime mid-step. The
//! operations' followers run here too ([`Background::spawn_task`]).

use std::future::Future;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The set of background loops.
#[derive(Debug, Default)]
pub struct Background {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Background {
    /// Run `duty` until it ends or [`Background::stop`] is called (it is
    /// then dropped at its next await point).
    pub fn spawn(&self, name: &'static str, duty: impl Future<Output = ()> + Send + 'static) {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = token.cancelled() => tracing::debug!(duty = name, "background duty stopped"),
                () = duty => tracing::warn!(duty = name, "background duty ended by itself"),
            }
        });
    }

    /// Run one piece of work (an operation's follower, a dispatch) in a
    /// task of its own that shutdown stops and waits for like the duties;
    /// its end is normal. Returns its handle.
    pub fn spawn_task<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<Option<T>> {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = token.cancelled() => None,
                out = work => Some(out),
            }
        })
    }

    /// Stop every duty and wait until all have ended.
    pub async fn stop(&self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Whether [`Background::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.token.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_every_duty_and_waits_for_them() {
        let b = Background::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        for _ in 0..3 {
            let tx = tx.clone();
            // Holds a sender until it is dropped: the channel closes only
            // when every duty has ended.
            b.spawn("test", async move {
                let _tx = tx;
                std::future::pending::<()>().await;
            });
        }
        drop(tx);
        b.stop().await;
        assert!(b.stopped());
        assert_eq!(rx.recv().await, None, "every duty dropped its sender");
    }
}
