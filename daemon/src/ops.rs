//! Durable operations and the host registry, on the [`Catalog`].

use sqlx::Row;

use crate::catalog::{Catalog, CatalogError, Result};

/// An operation row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRow {
    /// UUID (also the id the agent runs it under).
    pub id: String,
    /// Account that started it.
    pub account_id: String,
    /// Client request id, if any.
    pub request_id: Option<String>,
    /// `capture`, `deploy`, `delete`.
    pub kind: String,
    /// `running`, `succeeded`, `failed`, `cancelled`.
    pub state: String,
    /// What it is doing now.
    pub phase: String,
    /// Image involved.
    pub image_id: Option<String>,
    /// Host it runs on.
    pub host: String,
    /// Progress.
    pub bytes_done: i64,
    /// Progress.
    pub bytes_total: i64,
    /// Failure sentence.
    pub error: String,
    /// gRPC code of the failure.
    pub error_code: i32,
    /// Result, JSON.
    pub result: String,
    /// Seconds since the epoch.
    pub created_unix: i64,
    /// Seconds since the epoch.
    pub updated_unix: i64,
}

/// A new operation.
#[derive(Debug, Clone)]
pub struct NewOperation<'a> {
    /// Starting account.
    pub account_id: &'a str,
    /// Client request id (idempotency key).
    pub request_id: Option<&'a str>,
    /// Kind.
    pub kind: &'a str,
    /// Image involved.
    pub image_id: Option<&'a str>,
    /// Host.
    pub host: &'a str,
}

/// A registered host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    /// Unique name.
    pub name: String,
    /// Where the daemon reaches its agent.
    pub agent_endpoint: String,
    /// libvirt URI.
    pub libvirt_uri: String,
    /// Agent version.
    pub version: String,
    /// Capacity.
    pub cpus: i32,
    /// Capacity.
    pub memory_bytes: i64,
    /// Site.
    pub site: String,
    /// Last heartbeat.
    pub last_heartbeat_unix: i64,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

const SELECT_OP: &str = "SELECT id, account_id, request_id, kind, state, phase, image_id, host, bytes_done, bytes_total, \
     error, error_code, result, created_unix, updated_unix FROM operations";

fn op_from(row: &sqlx::any::AnyRow) -> Result<OperationRow> {
    Ok(OperationRow {
        id: row.try_get("id")?,
        account_id: row.try_get("account_id")?,
        request_id: row.try_get("request_id")?,
        kind: row.try_get("kind")?,
        state: row.try_get("state")?,
        phase: row.try_get("phase")?,
        image_id: row.try_get("image_id")?,
        host: row.try_get("host")?,
        bytes_done: row.try_get("bytes_done")?,
        bytes_total: row.try_get("bytes_total")?,
        error: row.try_get("error")?,
        error_code: row.try_get("error_code")?,
        result: row.try_get("result")?,
        created_unix: row.try_get("created_unix")?,
        updated_unix: row.try_get("updated_unix")?,
    })
}

impl Catalog {
    /// Start an operation, or return the one a previous call with the same
    /// request id started (`true` when it is new).
    pub async fn begin_operation(&self, n: &NewOperation<'_>) -> Result<(OperationRow, bool)> {
        if let Some(rid) = n.request_id
            && let Some(op) = self.operation_by_request(n.account_id, rid).await?
        {
            if op.kind != n.kind {
                return Err(CatalogError::Conflict(format!(
                    "request id {rid:?} was already used for a {} operation",
                    op.kind
                )));
            }
            return Ok((op, false));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let t = now();
        let r = sqlx::query(
            "INSERT INTO operations (id, account_id, request_id, kind, state, phase, image_id, host, created_unix, updated_unix) \
             VALUES ($1, $2, $3, $4, 'running', 'queued', $5, $6, $7, $7)",
        )
        .bind(&id)
        .bind(n.account_id)
        .bind(n.request_id)
        .bind(n.kind)
        .bind(n.image_id)
        .bind(n.host)
        .bind(t)
        .execute(self.pool())
        .await;
        match r {
            Ok(_) => Ok((self.operation(&id).await?, true)),
            // Two concurrent retries: the other one won; return its row.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let rid = n.request_id.unwrap_or_default();
                let op = self
                    .operation_by_request(n.account_id, rid)
                    .await?
                    .ok_or_else(|| {
                        CatalogError::Conflict(format!("request id {rid:?} is in use"))
                    })?;
                Ok((op, false))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn operation_by_request(
        &self,
        account_id: &str,
        rid: &str,
    ) -> Result<Option<OperationRow>> {
        let sql = format!("{SELECT_OP} WHERE account_id = $1 AND request_id = $2");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account_id)
            .bind(rid)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(op_from)
            .transpose()
    }

    /// One operation.
    pub async fn operation(&self, id: &str) -> Result<OperationRow> {
        let sql = format!("{SELECT_OP} WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("operation {id} not found")))?;
        op_from(&row)
    }

    /// Record progress of a running operation.
    pub async fn update_progress(
        &self,
        id: &str,
        phase: &str,
        done: i64,
        total: i64,
    ) -> Result<()> {
        sqlx::query("UPDATE operations SET phase = $1, bytes_done = $2, bytes_total = $3, updated_unix = $4 WHERE id = $5 AND state = 'running'")
            .bind(phase)
            .bind(done)
            .bind(total)
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// End an operation (once: a finished operation never changes again).
    pub async fn finish_operation(
        &self,
        id: &str,
        state: &str,
        error: &str,
        error_code: i32,
        result: &str,
    ) -> Result<bool> {
        if !matches!(state, "succeeded" | "failed" | "cancelled") {
            return Err(CatalogError::InvalidArgument(format!(
                "{state:?} is not a final state"
            )));
        }
        let t = now();
        let r = sqlx::query(
            "UPDATE operations SET state = $1, error = $2, error_code = $3, result = $4, phase = 'done', updated_unix = $5, finished_unix = $5 \
             WHERE id = $6 AND state = 'running'",
        )
        .bind(state)
        .bind(error)
        .bind(error_code)
        .bind(result)
        .bind(t)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
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
        Ok(r.rows_affected())
    }

    /// Register (or re-register) a host.
    pub async fn register_host(&self, h: &HostRow) -> Result<()> {
        if h.name.is_empty() || h.agent_endpoint.is_empty() {
            return Err(CatalogError::InvalidArgument(
                "a host needs a name and an agent endpoint".into(),
            ));
        }
        let t = now();
        sqlx::query(
            "INSERT INTO hosts (name, agent_endpoint, libvirt_uri, version, cpus, memory_bytes, site, registered_unix, last_heartbeat_unix) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             ON CONFLICT (name) DO UPDATE SET agent_endpoint = $2, libvirt_uri = $3, version = $4, cpus = $5, memory_bytes = $6, site = $7, last_heartbeat_unix = $8",
        )
        .bind(&h.name)
        .bind(&h.agent_endpoint)
        .bind(&h.libvirt_uri)
        .bind(&h.version)
        .bind(h.cpus)
        .bind(h.memory_bytes)
        .bind(&h.site)
        .bind(t)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A heartbeat from a registered host.
    pub async fn heartbeat(&self, name: &str) -> Result<()> {
        let r = sqlx::query("UPDATE hosts SET last_heartbeat_unix = $1 WHERE name = $2")
            .bind(now())
            .bind(name)
            .execute(self.pool())
            .await?;
        if r.rows_affected() == 0 {
            return Err(CatalogError::NotFound(format!(
                "host {name:?} is not registered"
            )));
        }
        Ok(())
    }

    /// Every registered host.
    pub async fn hosts(&self) -> Result<Vec<HostRow>> {
        sqlx::query("SELECT name, agent_endpoint, libvirt_uri, version, cpus, memory_bytes, site, last_heartbeat_unix FROM hosts ORDER BY name")
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| {
                Ok(HostRow {
                    name: r.try_get("name")?,
                    agent_endpoint: r.try_get("agent_endpoint")?,
                    libvirt_uri: r.try_get("libvirt_uri")?,
                    version: r.try_get("version")?,
                    cpus: r.try_get("cpus")?,
                    memory_bytes: r.try_get("memory_bytes")?,
                    site: r.try_get("site")?,
                    last_heartbeat_unix: r.try_get("last_heartbeat_unix")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testpg::catalogs;

    #[tokio::test]
    async fn operations_are_idempotent_and_final() {
        for (_b, c) in catalogs().await {
            let (alice, _) = c.create_account("alice", false, false).await.expect("a");
            let (bob, _) = c.create_account("bob", false, false).await.expect("b");
            let n = NewOperation {
                account_id: &alice.id,
                request_id: Some("req-1"),
                kind: "capture",
                image_id: None,
                host: "h1",
            };
            let (op, new) = c.begin_operation(&n).await.expect("begin");
            assert!(new);
            assert_eq!(op.state, "running");
            let (again, new) = c.begin_operation(&n).await.expect("retry");
            assert!(!new, "a retried request finds its operation");
            assert_eq!(again.id, op.id);
            // Request ids are per account.
            let (other, new) = c
                .begin_operation(&NewOperation {
                    account_id: &bob.id,
                    ..n.clone()
                })
                .await
                .expect("bob");
            assert!(new);
            assert_ne!(other.id, op.id);
            // Same id for another kind of call is a client bug.
            let err = c
                .begin_operation(&NewOperation {
                    kind: "deploy",
                    ..n.clone()
                })
                .await
                .expect_err("kind");
            assert!(matches!(err, CatalogError::Conflict(_)));

            c.update_progress(&op.id, "reading disks", 10, 100)
                .await
                .expect("progress");
            let cur = c.operation(&op.id).await.expect("get");
            assert_eq!(
                (cur.phase.as_str(), cur.bytes_done, cur.bytes_total),
                ("reading disks", 10, 100)
            );
            assert_eq!(c.running_operations().await.expect("running").len(), 2);
            assert!(
                c.finish_operation(&op.id, "succeeded", "", 0, "{\"image_id\":\"x\"}")
                    .await
                    .expect("finish")
            );
            assert!(
                !c.finish_operation(&op.id, "failed", "late", 2, "")
                    .await
                    .expect("again"),
                "final once"
            );
            let done = c.operation(&op.id).await.expect("get");
            assert_eq!(done.state, "succeeded");
            assert_eq!(done.result, "{\"image_id\":\"x\"}");
            c.update_progress(&op.id, "ignored", 1, 1)
                .await
                .expect("progress");
            assert_eq!(
                c.operation(&op.id).await.expect("get").phase,
                "done",
                "a finished operation does not move"
            );
            assert!(matches!(
                c.operation("nope").await,
                Err(CatalogError::NotFound(_))
            ));
            assert!(matches!(
                c.finish_operation(&op.id, "running", "", 0, "").await,
                Err(CatalogError::InvalidArgument(_))
            ));
        }
    }

    #[tokio::test]
    async fn hosts_and_silent_agents() {
        for (_b, c) in catalogs().await {
            let (alice, _) = c.create_account("alice", false, false).await.expect("a");
            let h = HostRow {
                name: "h1".into(),
                agent_endpoint: "http://127.0.0.1:7341".into(),
                libvirt_uri: "qemu:///system".into(),
                version: "0.1.0".into(),
                cpus: 2,
                memory_bytes: 1 << 34,
                site: "dc1".into(),
                last_heartbeat_unix: 0,
            };
            c.register_host(&h).await.expect("register");
            c.register_host(&HostRow {
                version: "0.2.0".into(),
                ..h.clone()
            })
            .await
            .expect("re-register");
            let hosts = c.hosts().await.expect("hosts");
            assert_eq!(hosts.len(), 1);
            assert_eq!(hosts[0].version, "0.2.0");
            c.heartbeat("h1").await.expect("beat");
            assert!(matches!(
                c.heartbeat("h9").await,
                Err(CatalogError::NotFound(_))
            ));
            assert!(matches!(
                c.register_host(&HostRow {
                    name: String::new(),
                    ..h.clone()
                })
                .await,
                Err(CatalogError::InvalidArgument(_))
            ));

            let n = NewOperation {
                account_id: &alice.id,
                request_id: None,
                kind: "capture",
                image_id: None,
                host: "h1",
            };
            let (op, _) = c.begin_operation(&n).await.expect("begin");
            let beat = c.hosts().await.expect("hosts")[0].last_heartbeat_unix;
            // Heard from recently: nothing fails.
            assert_eq!(
                c.fail_operations_of_silent_hosts(beat - 60)
                    .await
                    .expect("sweep"),
                0
            );
            // Silent past the cut-off: its operations fail with a reason.
            assert_eq!(
                c.fail_operations_of_silent_hosts(beat + 1)
                    .await
                    .expect("sweep"),
                1
            );
            let failed = c.operation(&op.id).await.expect("get");
            assert_eq!(failed.state, "failed");
            assert_eq!(failed.error_code, 14);
            assert!(
                failed.error.contains("h1") && failed.error.contains("heartbeats"),
                "{}",
                failed.error
            );
        }
    }
}
