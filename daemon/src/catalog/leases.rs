//! Leases of running operations between daemons sharing a catalog: who
//! drives which operation, taking over those of a daemon that died, and
//! failing those of hosts that went silent.

use sqlx::Row;

use super::{
    Catalog, CatalogError, LEASE_SECONDS, OperationRow, Result, now,
    operations::{SELECT_OP, op_from},
};

impl Catalog {
    /// Take the lease of every running operation whose lease has expired
    /// (its daemon died) and, with `include_own`, of those already this
    /// daemon's (from before a restart); returns them. Several daemons may run this at once: each
    /// operation goes to one.
    pub async fn claim_operations(&self, include_own: bool) -> Result<Vec<OperationRow>> {
        let t = now();
        let ids = sqlx::query(
            "UPDATE operations SET lease_owner = $1, lease_until = $2 \
             WHERE state = 'running' AND (lease_until < $3 OR (lease_owner = $1 AND $4)) RETURNING id",
        )
        .bind(self.daemon_id())
        .bind(t + LEASE_SECONDS)
        .bind(t)
        .bind(include_own)
        .fetch_all(self.pool())
        .await?;
        self.operations_by_id(&ids).await
    }

    /// The rows of the `id` columns `rows` returned.
    async fn operations_by_id(&self, rows: &[sqlx::any::AnyRow]) -> Result<Vec<OperationRow>> {
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get("id")?;
            out.push(self.operation(&id).await?);
        }
        Ok(out)
    }

    /// Take over the running operations of `owner`, a daemon known to be
    /// dead ([`crate::liveness`]), whatever their lease says; returns them.
    /// Several daemons may do this at once: each operation goes to one.
    pub async fn claim_operations_of(&self, owner: &str) -> Result<Vec<OperationRow>> {
        let ids = sqlx::query(
            "UPDATE operations SET lease_owner = $1, lease_until = $2 \
             WHERE state = 'running' AND lease_owner = $3 RETURNING id",
        )
        .bind(self.daemon_id())
        .bind(now() + LEASE_SECONDS)
        .bind(owner)
        .fetch_all(self.pool())
        .await?;
        self.operations_by_id(&ids).await
    }

    /// Extend this daemon's leases; returns the running operations it
    /// still holds (one it lost while stalled is not among them).
    pub async fn renew_leases(&self) -> Result<Vec<String>> {
        let t = now();
        sqlx::query(
            "UPDATE operations SET lease_until = $1 WHERE state = 'running' AND lease_owner = $2 RETURNING id",
        )
        .bind(t + LEASE_SECONDS)
        .bind(self.daemon_id())
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|r| r.try_get("id").map_err(CatalogError::from))
        .collect()
    }

    /// Operations still running (to re-attach to after a restart).
    pub async fn running_operations(&self) -> Result<Vec<OperationRow>> {
        let sql = format!("{SELECT_OP} WHERE state = 'running' ORDER BY created_unix");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(op_from)
            .collect()
    }

    /// Fail every running operation of hosts silent since `cutoff_unix`:
    /// no operation stays running forever.
    pub async fn fail_operations_of_silent_hosts(&self, cutoff_unix: i64) -> Result<u64> {
        let t = now();
        let r = sqlx::query(
            "UPDATE operations SET state = 'failed', error_code = 14, phase = 'done', updated_unix = $1, finished_unix = $1, \
             error = 'the agent on host ' || host || ' stopped sending heartbeats; the operation''s outcome is unknown' \
             WHERE state = 'running' AND host IN (SELECT name FROM hosts WHERE last_heartbeat_unix < $2)",
        )
        .bind(t)
        .bind(cutoff_unix)
        .execute(self.pool())
        .await?;
        // Their images (and any left behind by a crash between the two
        // updates of finish_operation's callers) fail with the reason.
        sqlx::query(
            "UPDATE images SET state = 'failed', updated_unix = $1, \
             failure_reason = (SELECT o.error FROM operations o WHERE o.image_id = images.id AND o.kind = 'capture' AND o.state <> 'running' ORDER BY o.updated_unix DESC LIMIT 1) \
             WHERE state = 'creating' AND EXISTS (SELECT 1 FROM operations o WHERE o.image_id = images.id AND o.kind = 'capture' AND o.state <> 'running') \
             AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.image_id = images.id AND o.state = 'running')",
        )
        .bind(t)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected())
    }
}
