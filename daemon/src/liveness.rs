//! Which daemons on a shared PostgreSQL catalog are alive, without a
//! query per operation.
//!
//! Each daemon holds a session-level advisory lock named after its daemon
//! id on a connection of its own, for as long as it runs. PostgreSQL
//! releases it the moment that connection dies (the process was killed,
//! its host fell off the network): another daemon that can take the lock
//! of an operation's lease owner knows that owner is gone, and takes its
//! operations over at once instead of waiting for the lease to expire.
//! The check costs one small query per daemon and second, however many
//! operations run. The lease in the row stays the rule for who drives an
//! operation; this only shortens the wait when its owner is dead.
//!
//! SQLite catalogs have one daemon: nothing to do.

use sqlx::{Connection, Row};

use crate::catalog::{Catalog, Result};

/// The advisory lock key of daemon `id`: 63 bits of SHA-256, so ids do
/// not collide with other users of advisory locks on the same server
/// (the prefix keeps them in their own space).
pub fn lock_key(id: &str) -> i64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("imprint-daemon-lease:{id}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b) & i64::MAX
}

/// This daemon's lock, held on a connection of its own.
#[derive(Debug)]
pub struct Held {
    conn: sqlx::AnyConnection,
}

impl Held {
    /// Whether the connection (and with it the lock) is still there.
    pub async fn alive(&mut self) -> bool {
        self.conn.ping().await.is_ok()
    }
}

impl Catalog {
    /// Take this daemon's liveness lock (PostgreSQL; `None` on SQLite). It
    /// waits while a previous process of the same daemon id still holds
    /// it, for at most `wait`.
    pub async fn hold_liveness(&self, wait: std::time::Duration) -> Result<Option<Held>> {
        if self.is_sqlite() {
            return Ok(None);
        }
        let mut conn = self.pool().acquire().await?.detach();
        let key = lock_key(self.daemon_id());
        let deadline = std::time::Instant::now() + wait;
        loop {
            let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1) AS got")
                .bind(key)
                .fetch_one(&mut conn)
                .await?
                .try_get("got")?;
            if got {
                return Ok(Some(Held { conn }));
            }
            if std::time::Instant::now() >= deadline {
                return Err(crate::catalog::CatalogError::Exists(format!(
                    "another daemon with id {:?} holds its liveness lock; give each daemon its own --daemon-id",
                    self.daemon_id()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    /// Lease owners of running operations (other than this daemon) whose
    /// process is gone: their liveness lock is free.
    pub async fn dead_lease_owners(&self) -> Result<Vec<String>> {
        if self.is_sqlite() {
            return Ok(Vec::new());
        }
        let owners: Vec<String> = sqlx::query(
            "SELECT DISTINCT lease_owner FROM operations WHERE state = 'running' AND lease_owner <> $1 AND lease_owner <> ''",
        )
        .bind(self.daemon_id())
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|r| r.try_get("lease_owner"))
        .collect::<std::result::Result<_, _>>()?;
        if owners.is_empty() {
            return Ok(owners);
        }
        // Try and release on one connection: session locks belong to it.
        let mut conn = self.pool().acquire().await?;
        let mut dead = Vec::new();
        for owner in owners {
            let key = lock_key(&owner);
            let free: bool = sqlx::query("SELECT pg_try_advisory_lock($1) AS got")
                .bind(key)
                .fetch_one(&mut *conn)
                .await?
                .try_get("got")?;
            if free {
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(key)
                    .execute(&mut *conn)
                    .await?;
                dead.push(owner);
            }
        }
        Ok(dead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testpg::catalogs;

    #[test]
    fn keys_differ_and_are_positive() {
        let (a, b) = (lock_key("d1:7340"), lock_key("d2:7340"));
        assert_ne!(a, b);
        assert!(a >= 0 && b >= 0);
        assert_eq!(a, lock_key("d1:7340"));
    }

    #[tokio::test]
    async fn a_dead_daemon_is_seen_at_once() {
        for (backend, c) in catalogs().await {
            let d1 = c.clone().with_daemon_id("d1");
            let d2 = c.clone().with_daemon_id("d2");
            let held = d1
                .hold_liveness(std::time::Duration::from_secs(5))
                .await
                .expect("hold");
            if held.is_none() {
                assert!(c.is_sqlite(), "{backend:?}: only SQLite has no lock");
                continue;
            }
            // A second process with the same id waits, then gives up.
            let twin = d1
                .hold_liveness(std::time::Duration::from_millis(600))
                .await;
            assert!(twin.is_err(), "one holder per daemon id");
            let (alice, _) = d1.create_account("alice", false, false).await.expect("a");
            d1.begin_operation(&crate::catalog::NewOperation {
                account_id: &alice.id,
                request_id: None,
                kind: crate::domain::OpKind::Deploy,
                image_id: None,
                host: "h",
                guest: "g",
                agent_request: "",
                new_image: None,
            })
            .await
            .expect("op");
            assert!(
                d2.dead_lease_owners().await.expect("check").is_empty(),
                "d1 lives"
            );
            drop(held);
            let start = std::time::Instant::now();
            loop {
                if d2.dead_lease_owners().await.expect("check") == ["d1"] {
                    break;
                }
                assert!(
                    start.elapsed().as_secs() < 5,
                    "the lock went with the connection"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            // The check released what it took: d1 may come back.
            assert!(
                d1.hold_liveness(std::time::Duration::from_secs(5))
                    .await
                    .expect("again")
                    .is_some()
            );
        }
    }
}
