//! Durable operations on the [`Catalog`]: rows, progress, final states.
//! Their leases between daemons are in `leases`.

use sqlx::Row;

use crate::{
    catalog::{Catalog, CatalogError, Result, now, text},
    domain::{OpKind, OpState},
};

/// The page-token scope of the operations listing (newest first).
const OPS_SCOPE: &str = "ops";

/// How long an operation's lease lasts without renewal: the time another
/// daemon waits before it takes over the operations of a dead one.
pub const LEASE_SECONDS: i64 = 15;

/// An operation row.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationRow {
    /// UUID (also the id the agent runs it under).
    pub id: String,
    /// Account that started it.
    pub account_id: String,
    /// Client request id, if any.
    pub request_id: Option<String>,
    /// What it does.
    pub kind: OpKind,
    /// Where it is.
    pub state: OpState,
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
    /// Seconds since the epoch (0 while running).
    pub finished_unix: i64,
    /// The request as sent to the agent (protobuf, hex).
    pub agent_request: String,
    /// Guest involved (capture, delete-guest: libvirt UUID; deploy: new
    /// name).
    pub guest: String,
    /// Recent progress rate.
    pub rate_bps: f64,
    /// Daemon driving it.
    pub lease_owner: String,
    /// Its lease ends then (seconds since the epoch) unless renewed.
    pub lease_until: i64,
}

impl OperationRow {
    /// Still running.
    pub fn running(&self) -> bool {
        self.state == OpState::Running
    }
}

/// The image a capture creates, recorded with its operation.
#[derive(Debug, Clone)]
pub struct NewImage<'a> {
    /// Id (also given to the agent).
    pub id: &'a str,
    /// Name.
    pub name: &'a str,
    /// Notes.
    pub notes: &'a str,
    /// Tags.
    pub tags: &'a [String],
    /// Host captured from.
    pub source_host: &'a str,
    /// Guest captured from (its name).
    pub source_guest: &'a str,
}

/// A new operation.
#[derive(Debug, Clone)]
pub struct NewOperation<'a> {
    /// Starting account.
    pub account_id: &'a str,
    /// Client request id (idempotency key).
    pub request_id: Option<&'a str>,
    /// Kind.
    pub kind: OpKind,
    /// Image involved.
    pub image_id: Option<&'a str>,
    /// Host.
    pub host: &'a str,
    /// Guest involved.
    pub guest: &'a str,
    /// The request to send to the agent (protobuf, hex).
    pub agent_request: &'a str,
    /// The image a capture creates, inserted in the same transaction.
    pub new_image: Option<NewImage<'a>>,
}

/// How an operation's end changes its image.
#[derive(Debug, Clone)]
pub enum ImageOutcome {
    /// Nothing to change.
    None,
    /// The capture succeeded: the image becomes `active`.
    Active {
        /// Guest-visible bytes.
        size_bytes: i64,
        /// Recorded configuration.
        config_json: String,
        /// Disks, JSON.
        disks_json: String,
        /// Site whose store holds it (the capturing host's).
        site: String,
        /// Stored generalized.
        sealed: bool,
    },
    /// The capture failed: the image becomes `failed` with this reason.
    Failed(String),
}

pub(super) const SELECT_OP: &str = "SELECT id, account_id, request_id, kind, state, phase, image_id, host, bytes_done, bytes_total, \
     error, error_code, result, created_unix, updated_unix, finished_unix, agent_request, guest, rate_bps, lease_owner, lease_until FROM operations";

pub(super) fn op_from(row: &sqlx::any::AnyRow) -> Result<OperationRow> {
    Ok(OperationRow {
        id: row.try_get("id")?,
        account_id: row.try_get("account_id")?,
        request_id: row.try_get("request_id")?,
        kind: text(row.try_get::<String, _>("kind")?)?,
        state: text(row.try_get::<String, _>("state")?)?,
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
        finished_unix: row.try_get("finished_unix")?,
        agent_request: row.try_get("agent_request")?,
        guest: row.try_get("guest")?,
        rate_bps: row.try_get("rate_bps")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until: row.try_get("lease_until")?,
    })
}

impl Catalog {
    /// Start an operation, or return the one a previous call with the same
    /// request id started (`true` when it is new).
    pub async fn begin_operation(&self, n: &NewOperation<'_>) -> Result<(OperationRow, bool)> {
        self.begin_operation_with_id(&uuid::Uuid::new_v4().to_string(), n)
            .await
    }

    /// [`Catalog::begin_operation`] with the id the new operation gets.
    pub async fn begin_operation_with_id(
        &self,
        id: &str,
        n: &NewOperation<'_>,
    ) -> Result<(OperationRow, bool)> {
        if let Some(rid) = n.request_id
            && let Some(op) = self.operation_by_request(n.account_id, rid).await?
        {
            if op.kind != n.kind {
                return Err(CatalogError::Exists(format!(
                    "request id {rid:?} was already used for a {} operation",
                    op.kind
                )));
            }
            return Ok((op, false));
        }
        if n.kind.changes_guest()
            && let Some((other, kind)) = self.running_guest_change(n.host, n.guest).await?
        {
            // A concurrent retry of this very request may have won.
            if let Some(rid) = n.request_id
                && let Some(op) = self.operation_by_request(n.account_id, rid).await?
            {
                return Ok((op, false));
            }
            return Err(CatalogError::WrongState(format!(
                "guest {} on host {} is being {} by operation {other}; wait for it or cancel it",
                n.guest,
                n.host,
                kind.guest_change_words()
            )));
        }
        match self.insert_operation(id, n).await {
            Ok(()) => Ok((self.operation(id).await?, true)),
            // A concurrent retry with the same request id won: return its
            // row. Otherwise a concurrent capture of the same guest won.
            Err(CatalogError::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                if let Some(rid) = n.request_id
                    && let Some(op) = self.operation_by_request(n.account_id, rid).await?
                {
                    return Ok((op, false));
                }
                Err(CatalogError::WrongState(format!(
                    "guest {} on host {} is being captured or deleted by another operation",
                    n.guest, n.host
                )))
            }
            Err(e) => Err(e),
        }
    }

    async fn insert_operation(&self, id: &str, n: &NewOperation<'_>) -> Result<()> {
        let t = now();
        let mut tx = self.pool().begin().await?;
        if let Some(img) = &n.new_image {
            sqlx::query("INSERT INTO images (id, owner_id, name, notes, state, visibility, source_host, source_guest, created_unix, updated_unix) \
                         VALUES ($1, $2, $3, $4, 'creating', 'private', $5, $6, $7, $7)")
                .bind(img.id)
                .bind(n.account_id)
                .bind(img.name)
                .bind(img.notes)
                .bind(img.source_host)
                .bind(img.source_guest)
                .bind(t)
                .execute(&mut *tx)
                .await?;
            crate::catalog::insert_tags(&mut tx, img.id, img.tags).await?;
        }
        if n.kind.reads_image()
            && let Some(img) = n.image_id
        {
            // Touch the image row (a lock in PostgreSQL, the write lock in
            // SQLite) on the condition that it is still readable: a delete
            // that got there first makes this fail, one that comes later
            // sees this operation (see Catalog::begin_delete).
            let r = sqlx::query("UPDATE images SET updated_unix = updated_unix WHERE id = $1 AND state IN ('active', 'deprecated')")
                .bind(img)
                .execute(&mut *tx)
                .await?;
            if r.rows_affected() == 0 {
                return Err(CatalogError::WrongState(format!(
                    "image {img} is being deleted"
                )));
            }
        }
        sqlx::query(
            "INSERT INTO operations (id, account_id, request_id, kind, state, phase, image_id, host, guest, agent_request, created_unix, updated_unix, lease_owner, lease_until) \
             VALUES ($1, $2, $3, $4, 'running', 'queued', $5, $6, $7, $8, $9, $9, $10, $11)",
        )
        .bind(id)
        .bind(n.account_id)
        .bind(n.request_id)
        .bind(n.kind.as_str())
        .bind(n.image_id.or(n.new_image.as_ref().map(|i| i.id)))
        .bind(n.host)
        .bind(n.guest)
        .bind(n.agent_request)
        .bind(t)
        .bind(self.daemon_id())
        .bind(t + LEASE_SECONDS)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The running capture of a guest, if any.
    pub async fn running_capture_of(&self, host: &str, guest: &str) -> Result<Option<String>> {
        Ok(sqlx::query("SELECT id FROM operations WHERE kind = 'capture' AND state = 'running' AND host = $1 AND guest = $2")
            .bind(host)
            .bind(guest)
            .fetch_optional(self.pool())
            .await?
            .map(|r| r.try_get("id"))
            .transpose()?)
    }

    /// The running operation that changes guest `guest` (libvirt UUID) of
    /// `host` (a capture or a delete), if any: its id and kind.
    pub async fn running_guest_change(
        &self,
        host: &str,
        guest: &str,
    ) -> Result<Option<(String, OpKind)>> {
        let row = sqlx::query("SELECT id, kind FROM operations WHERE kind IN ('capture', 'delete-guest') AND state = 'running' AND host = $1 AND guest = $2")
            .bind(host)
            .bind(guest)
            .fetch_optional(self.pool())
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let kind = text(row.try_get::<String, _>("kind")?)?;
        Ok(Some((row.try_get("id")?, kind)))
    }

    /// The running deploy making a guest named `name` on `host`, if any.
    pub async fn running_deploy_of(&self, host: &str, name: &str) -> Result<Option<String>> {
        Ok(sqlx::query("SELECT id FROM operations WHERE kind = 'deploy' AND state = 'running' AND host = $1 AND guest = $2")
            .bind(host)
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .map(|r| r.try_get("id"))
            .transpose()?)
    }

    /// Running deploys and exports reading an image.
    pub async fn running_deploys_of(&self, image_id: &str) -> Result<Vec<String>> {
        sqlx::query("SELECT id FROM operations WHERE kind IN ('deploy', 'export', 'copy') AND state = 'running' AND image_id = $1")
            .bind(image_id)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| Ok(r.try_get("id")?))
            .collect()
    }

    /// Forget an operation the agent refused outright (and the image its
    /// capture would have made): as if the call never happened.
    pub async fn undo_operation(&self, id: &str) -> Result<()> {
        let op = self.operation(id).await?;
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM operations WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if op.kind.creates_image()
            && let Some(img) = &op.image_id
        {
            sqlx::query("DELETE FROM images WHERE id = $1 AND state = 'creating'")
                .bind(img)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Record that the agent acknowledged the operation.
    pub async fn set_phase(&self, id: &str, phase: &str) -> Result<()> {
        sqlx::query("UPDATE operations SET phase = $1, updated_unix = $2 WHERE id = $3 AND state = 'running'")
            .bind(phase)
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// An account's operations, newest first, a page at a time.
    pub async fn operations_of(
        &self,
        account_id: &str,
        running_only: bool,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<(Vec<OperationRow>, Option<String>)> {
        let size = match page_size {
            0 => 50,
            n if n <= 1000 => i64::from(n),
            n => {
                return Err(CatalogError::Invalid(format!(
                    "page_size {n} is more than 1000"
                )));
            }
        };
        let cursor = page_token
            .filter(|t| !t.is_empty())
            .map(|t| crate::paging::decode_numeric(t, OPS_SCOPE))
            .transpose()?;
        let mut sql = format!("{SELECT_OP} WHERE account_id = $1");
        if running_only {
            sql.push_str(" AND state = 'running'");
        }
        if cursor.is_some() {
            sql.push_str(" AND (created_unix < $2 OR (created_unix = $2 AND id < $3))");
        }
        sql.push_str(&format!(
            " ORDER BY created_unix DESC, id DESC LIMIT {}",
            size + 1
        ));
        // Built from constants only; every value is bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account_id);
        if let Some((c, id)) = &cursor {
            q = q.bind(*c).bind(id.clone());
        }
        let rows = q.fetch_all(self.pool()).await?;
        let more = super::count(rows.len()) > size;
        let ops: Vec<OperationRow> = rows
            .iter()
            .take(usize::try_from(size).unwrap_or(0))
            .map(op_from)
            .collect::<Result<_>>()?;
        let next = if more {
            ops.last()
                .map(|o| crate::paging::encode(OPS_SCOPE, &o.created_unix.to_string(), &o.id))
        } else {
            None
        };
        Ok((ops, next))
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
        rate_bps: f64,
    ) -> Result<()> {
        sqlx::query("UPDATE operations SET phase = $1, bytes_done = $2, bytes_total = $3, updated_unix = $4, rate_bps = $6 WHERE id = $5 AND state = 'running'")
            .bind(phase)
            .bind(done)
            .bind(total)
            .bind(now())
            .bind(id)
            .bind(rate_bps)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// End an operation (once: a finished operation never changes again).
    pub async fn finish_operation(
        &self,
        id: &str,
        state: OpState,
        error: &str,
        error_code: i32,
        result: &str,
        image: &ImageOutcome,
    ) -> Result<bool> {
        if !state.is_final() {
            return Err(CatalogError::Invalid(format!(
                "{state:?} is not a final state"
            )));
        }
        let t = now();
        let mut tx = self.pool().begin().await?;
        let r = sqlx::query(
            "UPDATE operations SET state = $1, error = $2, error_code = $3, result = $4, phase = 'done', updated_unix = $5, finished_unix = $5 \
             WHERE id = $6 AND state = 'running'",
        )
        .bind(state.as_str())
        .bind(error)
        .bind(error_code)
        .bind(result)
        .bind(t)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        let image_id: Option<String> = sqlx::query("SELECT image_id FROM operations WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("image_id")?;
        if let Some(img) = image_id {
            match image {
                ImageOutcome::None => {}
                ImageOutcome::Active {
                    size_bytes,
                    config_json,
                    disks_json,
                    site,
                    sealed,
                } => {
                    // In the same transaction: an active image always has
                    // a location.
                    sqlx::query(
                        "INSERT INTO image_locations (image_id, site, state, operation_id, updated_unix) VALUES ($1, $2, 'available', '', $3) \
                         ON CONFLICT (image_id, site) DO NOTHING",
                    )
                    .bind(&img)
                    .bind(site)
                    .bind(t)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("UPDATE images SET state = 'active', size_bytes = $1, config_json = $2, disks_json = $3, updated_unix = $4, sealed = $5 \
                                 WHERE id = $6 AND state = 'creating'")
                        .bind(*size_bytes)
                        .bind(config_json)
                        .bind(disks_json)
                        .bind(t)
                        .bind(i32::from(*sealed))
                        .bind(&img)
                        .execute(&mut *tx)
                        .await?;
                }
                ImageOutcome::Failed(reason) => {
                    sqlx::query("UPDATE images SET state = 'failed', failure_reason = $1, updated_unix = $2 WHERE id = $3 AND state = 'creating'")
                        .bind(reason)
                        .bind(t)
                        .bind(&img)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The files other accounts than `account_id` exported on `host`: the
    /// paths finished exports reported, and those running ones asked for.
    pub async fn exported_paths_of_others(
        &self,
        host: &str,
        account_id: &str,
    ) -> Result<Vec<String>> {
        let sql = format!(
            "{SELECT_OP} WHERE kind = 'export' AND host = $1 AND account_id <> $2 AND state IN ('running', 'succeeded')"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(host)
            .bind(account_id)
            .fetch_all(self.pool())
            .await?;
        let mut out = Vec::new();
        for r in &rows {
            let op = op_from(r)?;
            use prost::Message;
            let asked = hex::decode(&op.agent_request)
                .ok()
                .and_then(|b| imprint_proto::v1::ExportRequest::decode(b.as_slice()).ok())
                .map(|r| r.path);
            let done = hex::decode(&op.result)
                .ok()
                .and_then(|b| imprint_proto::v1::AgentOperation::decode(b.as_slice()).ok())
                .and_then(|a| a.export)
                .map(|e| e.path);
            out.extend(asked.into_iter().chain(done).filter(|p| !p.is_empty()));
        }
        Ok(out)
    }

    /// Of `ids`, the operations of `host` the catalog has ended.
    pub async fn ended_among(&self, host: &str, ids: &[String]) -> Result<Vec<String>> {
        let mut ended = Vec::new();
        for id in ids.iter().take(1000) {
            match self.operation(id).await {
                Ok(op) if op.host == host && !op.running() => ended.push(op.id),
                Ok(_) | Err(CatalogError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ended)
    }

    /// The operation a request id started, if any.
    pub async fn operation_for_request(
        &self,
        account_id: &str,
        request_id: &str,
    ) -> Result<Option<OperationRow>> {
        self.operation_by_request(account_id, request_id).await
    }
}
