//! Dispatch of operations to host agents, and following them to the end.
//!
//! An operation is a row first. The request for the agent is stored with it
//! (protobuf, hex) and sent under the operation's id, on which agents are
//! idempotent. Then one task per operation follows the agent's progress
//! stream into the row until the final state. After a daemon restart every
//! running row gets its task again ([`Dispatcher::resume_all`]): a request
//! the agent never acknowledged is sent again; an acknowledged one is
//! watched; one the agent no longer knows fails with that reason. Agents
//! that stop heartbeating have their operations failed by the reaper, so
//! nothing stays running forever.
//!
//! Several daemons may share one catalog (PostgreSQL). Each running
//! operation is driven by the daemon holding its lease in the row
//! ([`crate::ops::LEASE_SECONDS`]); every daemon renews its leases every
//! [`LEASE_RENEW_EVERY`] and claims operations whose lease expired. On
//! PostgreSQL a daemon that died is noticed sooner: its liveness lock
//! ([`crate::liveness`]) goes with its connection, and the others take its
//! operations over within about a second. A daemon that finds it lost a
//! lease (it stalled) stops following that operation.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use imprint_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use imprint_store::Store;
use prost::Message;
use tokio::sync::{Notify, watch};
use tonic::{Code, Status, transport::Channel};

use crate::{
    catalog::{Catalog, ImageDiskRow, now},
    domain::{ImageState, LocationState, OpKind, OpState},
    error::status,
    hosts::HEARTBEAT_INTERVAL_SECONDS,
    ops::{HostRow, ImageOutcome, OperationRow},
    sites::{DEFAULT_SITE, site_of_host},
};

/// How long the daemon waits for an agent to accept a request.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before retrying an agent that cannot be reached.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// At most one progress write per operation this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How often a daemon renews its leases and looks for orphaned operations.
pub const LEASE_RENEW_EVERY: Duration = Duration::from_secs(5);

/// The request an operation sends to its agent.
#[derive(Debug, Clone)]
pub enum AgentRequest {
    /// A capture.
    Capture(pb::CaptureRequest),
    /// A deploy.
    Deploy(pb::DeployRequest),
    /// An import of a file on the host.
    Import(pb::ImportRequest),
    /// An export to a file on the host.
    Export(pb::ExportRequest),
    /// A copy between two sites' stores.
    Copy(pb::CopyRequest),
}

impl AgentRequest {
    /// Hex of the protobuf encoding (kept in the operation row).
    pub fn encode(&self) -> String {
        hex::encode(match self {
            AgentRequest::Capture(r) => r.encode_to_vec(),
            AgentRequest::Deploy(r) => r.encode_to_vec(),
            AgentRequest::Import(r) => r.encode_to_vec(),
            AgentRequest::Export(r) => r.encode_to_vec(),
            AgentRequest::Copy(r) => r.encode_to_vec(),
        })
    }

    fn decode(kind: OpKind, hexed: &str) -> Result<Self, String> {
        let bytes = hex::decode(hexed).map_err(|e| e.to_string())?;
        match kind {
            OpKind::Capture => pb::CaptureRequest::decode(bytes.as_slice())
                .map(AgentRequest::Capture)
                .map_err(|e| e.to_string()),
            OpKind::Deploy => pb::DeployRequest::decode(bytes.as_slice())
                .map(AgentRequest::Deploy)
                .map_err(|e| e.to_string()),
            OpKind::Import => pb::ImportRequest::decode(bytes.as_slice())
                .map(AgentRequest::Import)
                .map_err(|e| e.to_string()),
            OpKind::Export => pb::ExportRequest::decode(bytes.as_slice())
                .map(AgentRequest::Export)
                .map_err(|e| e.to_string()),
            OpKind::Copy => pb::CopyRequest::decode(bytes.as_slice())
                .map(AgentRequest::Copy)
                .map_err(|e| e.to_string()),
            OpKind::Delete => Err("delete operations are not sent to agents".to_string()),
        }
    }
}

/// Whether a status means "the agent could not be reached" (retry) rather
/// than "the agent said no" (final).
fn unreachable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded)
}

/// Sends operations to agents and follows them.
#[derive(Debug)]
pub struct Dispatcher {
    catalog: Catalog,
    store: Option<Store>,
    clients: Mutex<HashMap<String, AgentServiceClient<Channel>>>,
    changed: watch::Sender<u64>,
    usage_wanted: Notify,
    agent_tls: Option<tonic::transport::ClientTlsConfig>,
    /// Operations this daemon drives now, by id.
    following: Mutex<HashMap<String, (tokio::task::AbortHandle, Instant)>>,
    /// Sites' stores, opened on first use.
    site_stores: Mutex<HashMap<String, Store>>,
    /// The background loops, stopped on shutdown.
    background: crate::background::Background,
}

impl Dispatcher {
    /// Over `catalog`, with direct access to the image store when the
    /// daemon has it (needed to delete images and account their space).
    pub fn new(catalog: Catalog, store: Option<Store>) -> Arc<Self> {
        Self::with_agent_tls(catalog, store, None)
    }

    /// [`Dispatcher::new`], calling agents over mutual TLS.
    pub fn with_agent_tls(
        catalog: Catalog,
        store: Option<Store>,
        agent_tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Arc<Self> {
        Arc::new(Self {
            catalog,
            store,
            clients: Mutex::default(),
            changed: watch::Sender::new(0),
            usage_wanted: Notify::new(),
            agent_tls,
            following: Mutex::default(),
            site_stores: Mutex::default(),
            background: crate::background::Background::default(),
        })
    }

    /// The store of site `site` (the daemon's own `--store` for the default
    /// site), for metadata work: deletes, never bulk data.
    pub async fn site_store(&self, site: &str) -> Result<Store, Status> {
        if site == DEFAULT_SITE
            && let Some(s) = &self.store
        {
            return Ok(s.clone());
        }
        if let Some(s) = self
            .site_stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(site)
        {
            return Ok(s.clone());
        }
        let row = self.catalog.site(site).await.map_err(status)?;
        let location = imprint_store::Location::parse(&row.store)
            .map_err(|e| Status::failed_precondition(format!("site {site}: {e}")))?;
        let store = tokio::task::spawn_blocking(move || Store::open_at(&location, false))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(format!("site {site}: {e}")))?;
        self.site_stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(site.to_string(), store.clone());
        Ok(store)
    }

    /// Where a deploy or export on `host` reads image `image_id` from: ""
    /// (the agent's own store) when the image is at the host's site,
    /// otherwise the store of another site that has it (by name).
    pub async fn source_store(&self, image_id: &str, host: &HostRow) -> Result<String, Status> {
        let here = site_of_host(&host.site);
        let available: Vec<String> = self
            .catalog
            .locations(image_id)
            .await
            .map_err(status)?
            .into_iter()
            .filter(|l| l.state == LocationState::Available)
            .map(|l| l.site)
            .collect();
        if available.iter().any(|s| s == here) {
            return Ok(String::new());
        }
        let Some(other) = available.first() else {
            return Err(Status::failed_precondition(format!(
                "image {image_id} has no complete copy at any site"
            )));
        };
        let site = self.catalog.site(other).await.map_err(|_| {
            Status::failed_precondition(format!(
                "image {image_id} is stored at site {other}, whose store is not configured (imprintd --site {other}=LOCATION)"
            ))
        })?;
        Ok(site.store)
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The store, if this daemon has one.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Ticks whenever an operation row changed (watchers re-read theirs).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Tell watchers something changed.
    pub fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Ask for the space accounting to be redone soon.
    pub fn usage_changed(&self) {
        self.usage_wanted.notify_one();
    }

    /// A client for the agent of `host` (connected lazily, reused).
    pub fn agent(&self, host: &HostRow) -> Result<AgentServiceClient<Channel>, Status> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&host.agent_endpoint) {
            return Ok(c.clone());
        }
        let bad = |e: &dyn std::fmt::Display| {
            Status::failed_precondition(format!(
                "host {} registered agent endpoint {:?}: {e}",
                host.name, host.agent_endpoint
            ))
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(host.agent_endpoint.clone())
            .map_err(|e| bad(&e))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        match (&self.agent_tls, AgentScheme::of(&host.agent_endpoint)) {
            // The socket's file mode is the credential.
            (_, Some(AgentScheme::Unix)) => {}
            (Some(t), Some(AgentScheme::Https)) => {
                endpoint = endpoint.tls_config(t.clone()).map_err(|e| bad(&e))?;
            }
            (None, Some(AgentScheme::Https)) => {
                return Err(bad(
                    &"it is https, but this daemon has no TLS configuration",
                ));
            }
            (_, None) => return Err(bad(&AgentScheme::RULE)),
        }
        let c = AgentServiceClient::new(endpoint.connect_lazy());
        clients.insert(host.agent_endpoint.clone(), c.clone());
        Ok(c)
    }

    /// Whether `host` sent a heartbeat recently.
    pub fn alive(host: &HostRow) -> bool {
        now() - host.last_heartbeat_unix < 3 * i64::from(HEARTBEAT_INTERVAL_SECONDS)
    }

    async fn send(&self, host: &HostRow, req: &AgentRequest) -> Result<pb::AgentOperation, Status> {
        let mut c = self.agent(host)?;
        let call = async {
            match req {
                AgentRequest::Capture(r) => c.capture(r.clone()).await,
                AgentRequest::Deploy(r) => c.deploy(r.clone()).await,
                AgentRequest::Import(r) => c.import(r.clone()).await,
                AgentRequest::Export(r) => c.export(r.clone()).await,
                AgentRequest::Copy(r) => c.copy(r.clone()).await,
            }
        };
        match tokio::time::timeout(SEND_TIMEOUT, call).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the agent on host {} did not answer within {} s",
                host.name,
                SEND_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Send a new operation's request to its agent and follow it. If the
    /// agent refuses it (or cannot be reached), the operation and the image
    /// it would have made are removed and the agent's status returned:
    /// nothing changed. If the agent does not answer in time it may have
    /// started: the operation stays and is followed (the request is sent
    /// again, idempotently, until the agent answers or goes silent).
    ///
    /// Runs in its own task: a client that hangs up mid-call does not leave
    /// an operation nobody follows.
    pub async fn dispatch(
        self: &Arc<Self>,
        op: OperationRow,
        req: &AgentRequest,
    ) -> Result<OperationRow, Status> {
        let (me, req) = (self.clone(), req.clone());
        tokio::spawn(async move { me.dispatch_inner(op, &req).await })
            .await
            .map_err(|e| Status::internal(format!("dispatch task failed: {e}")))?
    }

    async fn dispatch_inner(
        self: &Arc<Self>,
        op: OperationRow,
        req: &AgentRequest,
    ) -> Result<OperationRow, Status> {
        let host = match self.catalog.host(&op.host).await {
            Ok(h) => h,
            Err(e) => {
                let _ = self.catalog.undo_operation(&op.id).await;
                return Err(status(e));
            }
        };
        match self.send(&host, req).await {
            Ok(a) => {
                let phase = if a.phase.is_empty() {
                    "dispatched"
                } else {
                    &a.phase
                };
                if let Err(e) = self.catalog.set_phase(&op.id, phase).await {
                    // Still 'queued': the follower sends again (idempotent).
                    tracing::warn!(op = %op.id, error = %e, "cannot record dispatch");
                }
                // Cancelled while the request was on its way: tell the agent.
                if self
                    .catalog
                    .operation(&op.id)
                    .await
                    .is_ok_and(|o| !o.running())
                {
                    let _ = self.agent_cancel(&host, &op.id).await;
                }
            }
            Err(e) if e.code() == Code::DeadlineExceeded => {
                tracing::warn!(op = %op.id, error = %e.message(), "no answer yet; following the operation");
            }
            Err(e) => {
                if let Err(u) = self.catalog.undo_operation(&op.id).await {
                    tracing::error!(op = %op.id, error = %u, "cannot remove a refused operation");
                }
                return Err(Status::new(
                    e.code(),
                    format!("host {}: {}", host.name, e.message()),
                ));
            }
        }
        self.bump();
        self.spawn_follower(op.clone());
        self.catalog.operation(&op.id).await.map_err(status)
    }

    /// Drive `op` to its end in a task of its own, unless this daemon
    /// already does; returns the task when it is new.
    pub fn spawn_follower(
        self: &Arc<Self>,
        op: OperationRow,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let mut following = self.following.lock().unwrap_or_else(|e| e.into_inner());
        if following.contains_key(&op.id) {
            return None;
        }
        let (me, id) = (self.clone(), op.id.clone());
        let task = tokio::spawn(async move {
            if op.kind == OpKind::Delete {
                me.finish_delete(&op).await;
            } else {
                me.clone().follow(op.id.clone()).await;
            }
            me.following
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&op.id);
        });
        following.insert(id, (task.abort_handle(), Instant::now()));
        Some(task)
    }

    /// Operations this daemon drives now.
    pub fn following(&self) -> usize {
        self.following.lock().map_or(0, |f| f.len())
    }

    /// Renew this daemon's leases, stop following operations it lost, and
    /// claim operations whose daemon died (with `include_own`, also the
    /// ones this daemon held before a restart). Returns how many it took.
    ///
    /// A held operation nobody here follows (its follower gave up, e.g. a
    /// delete whose store was unreachable) gets a follower again once it is
    /// older than a dispatch can take, so nothing held stays unattended.
    pub async fn lease_pass(self: &Arc<Self>, include_own: bool) -> Result<usize, Status> {
        let renewing = Instant::now();
        let held: HashSet<String> = self
            .catalog
            .renew_leases()
            .await
            .map_err(status)?
            .into_iter()
            .collect();
        {
            let mut following = self.following.lock().unwrap_or_else(|e| e.into_inner());
            following.retain(|id, (task, started)| {
                // Followers started after the renewal began may be of
                // operations created since: not in `held`, yet ours.
                if held.contains(id) || task.is_finished() || *started >= renewing {
                    return true;
                }
                // Ended meanwhile, or this daemon stalled past its lease and
                // another one drives it now.
                tracing::info!(op = %id, "no longer holding the operation's lease; stopped following it");
                task.abort();
                false
            });
        }
        let unattended: Vec<String> = {
            let following = self.following.lock().unwrap_or_else(|e| e.into_inner());
            held.iter()
                .filter(|id| !following.contains_key(*id))
                .cloned()
                .collect()
        };
        let settled = now() - 2 * SEND_TIMEOUT.as_secs() as i64;
        for id in unattended {
            match self.catalog.operation(&id).await {
                Ok(op) if op.running() && op.created_unix < settled => {
                    tracing::info!(op = %op.id, kind = %op.kind, "following a held operation again");
                    self.spawn_follower(op);
                }
                _ => {}
            }
        }
        let claimed = self
            .catalog
            .claim_operations(include_own)
            .await
            .map_err(status)?;
        let mut n = 0;
        for op in claimed {
            tracing::info!(op = %op.id, kind = %op.kind, host = %op.host, phase = %op.phase, "driving operation");
            if self.spawn_follower(op).is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn agent_cancel(&self, host: &HostRow, id: &str) -> Result<(), Status> {
        let mut c = self.agent(host)?;
        c.cancel_operation(pb::GetOperationRequest {
            operation_id: id.to_string(),
        })
        .await
        .map(|_| ())
    }

    /// At start: pick up this daemon's operations from before a restart
    /// and those of daemons that died.
    pub async fn resume_all(self: &Arc<Self>) -> Result<usize, Status> {
        self.lease_pass(true).await
    }

    /// Follow an operation until it is final (or failed by the reaper).
    async fn follow(self: Arc<Self>, id: String) {
        loop {
            let op = match self.catalog.operation(&id).await {
                Ok(op) if op.running() => op,
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(op = %id, error = %e, "cannot read operation; retrying");
                    tokio::time::sleep(RETRY_EVERY).await;
                    continue;
                }
            };
            match self.follow_once(&op).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(op = %id, error = %e, "agent not reachable; retrying");
                    tokio::time::sleep(RETRY_EVERY).await;
                }
            }
        }
    }

    /// One attempt: `Ok` when the operation reached its final state here,
    /// `Err` to retry.
    async fn follow_once(&self, op: &OperationRow) -> Result<(), Status> {
        let host = match self.catalog.host(&op.host).await {
            Ok(h) => h,
            // The host is gone from the catalog: the operation cannot end.
            Err(e @ crate::catalog::CatalogError::NotFound(_)) => {
                self.fail(op, Code::FailedPrecondition, &e.to_string())
                    .await;
                return Ok(());
            }
            // A database blip is no reason to fail the operation: retry.
            Err(e) => return Err(Status::unavailable(format!("read host {}: {e}", op.host))),
        };
        if op.phase == "queued" {
            // Never acknowledged: send again (idempotent on the id).
            let req = match AgentRequest::decode(op.kind, &op.agent_request) {
                Ok(r) => r,
                Err(e) => {
                    self.fail(
                        op,
                        Code::Internal,
                        &format!("stored request is unreadable: {e}"),
                    )
                    .await;
                    return Ok(());
                }
            };
            match self.send(&host, &req).await {
                Ok(_) => {
                    let _ = self.catalog.set_phase(&op.id, "dispatched").await;
                }
                Err(e) if unreachable(&e) => return Err(e),
                Err(e) => {
                    self.fail(
                        op,
                        e.code(),
                        &format!("host {}: {}", host.name, e.message()),
                    )
                    .await;
                    return Ok(());
                }
            }
        }
        let mut client = match self.agent(&host) {
            Ok(c) => c,
            Err(e) => {
                self.fail(op, e.code(), e.message()).await;
                return Ok(());
            }
        };
        let mut stream = match client
            .watch_operation(pb::GetOperationRequest {
                operation_id: op.id.clone(),
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(e) if e.code() == Code::NotFound => {
                self.fail(
                    op,
                    Code::Aborted,
                    &format!(
                        "the agent on host {} no longer knows this operation (it restarted while the operation ran); \
                         a capture's guest was returned to its power state from the agent's journal",
                        host.name
                    ),
                )
                .await;
                return Ok(());
            }
            Err(e) if unreachable(&e) => return Err(e),
            Err(e) => {
                self.fail(
                    op,
                    e.code(),
                    &format!("host {}: {}", host.name, e.message()),
                )
                .await;
                return Ok(());
            }
        };
        let mut rate = Rate::default();
        let mut last_write = Instant::now() - PROGRESS_EVERY;
        while let Some(a) = stream.message().await? {
            if a.state == pb::OperationState::Running as i32 {
                let bps = rate.sample(a.bytes_done);
                if last_write.elapsed() >= PROGRESS_EVERY {
                    last_write = Instant::now();
                    self.record_progress(&op.id, &a, bps).await;
                    self.bump();
                }
                continue;
            }
            // A final state not recorded (database down) is retried: the
            // agent sends it again on the next watch.
            return self.finish(op, &a).await;
        }
        Err(Status::unavailable("the progress stream ended early"))
    }

    async fn finish(&self, op: &OperationRow, a: &pb::AgentOperation) -> Result<(), Status> {
        // A new image is stored at its host's site.
        let site = match self.catalog.host(&op.host).await {
            Ok(h) => site_of_host(&h.site).to_string(),
            // Never guess the site: retry (the agent sends the end again).
            Err(e) => return Err(Status::unavailable(format!("read host {}: {e}", op.host))),
        };
        let (state, outcome) = match pb::OperationState::try_from(a.state) {
            Ok(pb::OperationState::Succeeded) => {
                let outcome = match &a.capture {
                    Some(c) if op.kind.creates_image() => {
                        let disks: Vec<ImageDiskRow> = c
                            .disks
                            .iter()
                            .map(|d| ImageDiskRow {
                                name: d.name.clone(),
                                size_bytes: d.size_bytes,
                                sha256: d.sha256.clone(),
                            })
                            .collect();
                        ImageOutcome::Active {
                            size_bytes: disks.iter().map(|d| d.size_bytes as i64).sum(),
                            config_json: c.config_json.clone(),
                            disks_json: serde_json::to_string(&disks).unwrap_or_default(),
                            site,
                        }
                    }
                    _ => ImageOutcome::None,
                };
                (OpState::Succeeded, outcome)
            }
            Ok(pb::OperationState::Cancelled) => {
                (OpState::Cancelled, self.image_failed(op, &a.error))
            }
            _ => (OpState::Failed, self.image_failed(op, &a.error)),
        };
        // A guest deployed through imprint belongs to the deploying account
        // (recorded before the end, so a retry records it again).
        if let (Some(d), pb::OperationState::Succeeded, "deploy") = (
            &a.deploy,
            pb::OperationState::try_from(a.state).unwrap_or_default(),
            op.kind.as_str(),
        ) && let Err(e) = self
            .catalog
            .assign_guests(
                &op.host,
                &[(d.guest_uuid.clone(), d.guest_name.clone())],
                &op.account_id,
                true,
            )
            .await
        {
            return Err(Status::unavailable(format!(
                "record the new guest's owner: {e}"
            )));
        }
        let result = hex::encode(a.encode_to_vec());
        // The final figures, so the row does not keep the last sampled ones.
        self.record_progress(&op.id, a, 0.0).await;
        match self
            .catalog
            .finish_operation(&op.id, state, &a.error, a.error_code, &result, &outcome)
            .await
        {
            Ok(true) => {
                tracing::info!(op = %op.id, kind = %op.kind, %state, error = %a.error, "operation finished");
                record_metrics(op, state, a);
                // A copy adds a site's bytes to what deleting frees.
                if (op.kind.creates_image() || op.kind == OpKind::Copy)
                    && state == OpState::Succeeded
                {
                    self.usage_changed();
                }
                self.record_damage(op, state, a).await;
                self.settle_copy(op).await;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(op = %op.id, error = %e, "cannot record the end of an operation; retrying");
                return Err(Status::unavailable(e.to_string()));
            }
        }
        self.bump();
        Ok(())
    }

    /// A deploy or export checks every chunk it reads: one that failed its
    /// check marks the image damaged (shown by `image show`); a deploy that
    /// read the whole image clears the mark.
    async fn record_damage(&self, op: &OperationRow, state: OpState, a: &pb::AgentOperation) {
        let (true, Some(image)) = (
            matches!(op.kind, OpKind::Deploy | OpKind::Export),
            &op.image_id,
        ) else {
            return;
        };
        let damage = match state {
            // A deploy reads every disk of the image; an export only one.
            OpState::Succeeded if op.kind == OpKind::Deploy => String::new(),
            OpState::Succeeded => return,
            _ if a.error_code == Code::DataLoss as i32 => {
                format!("{} (found by {} operation {})", a.error, op.kind, op.id)
            }
            _ => return,
        };
        if let Err(e) = self.catalog.set_damage(image, &damage).await {
            tracing::error!(op = %op.id, %image, error = %e, "cannot record the image's damage");
        } else if !damage.is_empty() {
            tracing::error!(op = %op.id, %image, %damage, "stored data of an image failed its check");
        }
    }

    async fn record_progress(&self, id: &str, a: &pb::AgentOperation, bps: f64) {
        if let Err(e) = self
            .catalog
            .update_progress(id, &a.phase, a.bytes_done as i64, a.bytes_total as i64, bps)
            .await
        {
            tracing::warn!(op = %id, error = %e, "cannot record progress");
        }
    }

    fn image_failed(&self, op: &OperationRow, error: &str) -> ImageOutcome {
        if op.kind.creates_image() {
            ImageOutcome::Failed(error.to_string())
        } else {
            ImageOutcome::None
        }
    }

    /// Fail an operation from the daemon's side.
    pub async fn fail(&self, op: &OperationRow, code: Code, error: &str) {
        let outcome = self.image_failed(op, error);
        if let Err(e) = self
            .catalog
            .finish_operation(&op.id, OpState::Failed, error, code as i32, "", &outcome)
            .await
        {
            tracing::error!(op = %op.id, error = %e, "cannot record a failure");
        }
        tracing::warn!(op = %op.id, %error, "operation failed");
        record_metrics(op, OpState::Failed, &pb::AgentOperation::default());
        self.settle_copy(op).await;
        self.bump();
    }

    /// After a copy ended: its location becomes available, or goes.
    async fn settle_copy(&self, op: &OperationRow) {
        if op.kind == OpKind::Copy
            && let Err(e) = self.catalog.settle_locations().await
        {
            // The background pass settles it later.
            tracing::warn!(op = %op.id, error = %e, "cannot settle the copy's location");
        }
    }

    /// Ask the agent to cancel a running operation.
    pub async fn cancel(&self, op: &OperationRow) -> Result<(), Status> {
        if op.kind == OpKind::Delete {
            return Err(Status::failed_precondition(
                "a delete cannot be cancelled once started",
            ));
        }
        if op.phase == "queued" {
            // It may be reaching the agent right now: ask it to stop too.
            if let Ok(host) = self.catalog.host(&op.host).await {
                let _ = self.agent_cancel(&host, &op.id).await;
            }
            // The agent never accepted it: nothing runs there.
            let outcome = self.image_failed(op, "cancelled before the agent started it");
            self.catalog
                .finish_operation(
                    &op.id,
                    OpState::Cancelled,
                    "cancelled before the agent started it",
                    Code::Cancelled as i32,
                    "",
                    &outcome,
                )
                .await
                .map_err(status)?;
            self.bump();
            return Ok(());
        }
        let host = self.catalog.host(&op.host).await.map_err(|e| {
            Status::failed_precondition(format!("cannot reach the operation's host: {e}"))
        })?;
        match self.agent_cancel(&host, &op.id).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Code::NotFound => Err(Status::failed_precondition(format!(
                "the agent on host {} no longer knows this operation; it ends when the host's silence is noticed",
                host.name
            ))),
            Err(e) if unreachable(&e) => Err(Status::unavailable(format!(
                "the agent on host {} cannot be reached to cancel: {}",
                host.name,
                e.message()
            ))),
            Err(e) => Err(Status::new(
                e.code(),
                format!("host {}: {}", host.name, e.message()),
            )),
        }
    }

    /// Carry out a delete operation: remove the manifest (the chunks are
    /// GC's), then mark the image deleted. Safe to repeat.
    pub async fn finish_delete(&self, op: &OperationRow) {
        let Some(image_id) = op.image_id.clone() else {
            self.fail(op, Code::Internal, "delete operation without an image")
                .await;
            return;
        };
        // Every site that holds (or is receiving) a copy.
        let mut sites: Vec<String> = match self.catalog.locations(&image_id).await {
            Ok(l) => l.into_iter().map(|l| l.site).collect(),
            Err(e) => {
                tracing::error!(op = %op.id, error = %e, "cannot read the image's locations; retrying later");
                return;
            }
        };
        if sites.is_empty() && self.store.is_some() {
            sites.push(DEFAULT_SITE.to_string());
        }
        for site in sites {
            let r = match self.site_store(&site).await {
                Ok(store) => {
                    let id = image_id.clone();
                    tokio::task::spawn_blocking(move || {
                        let id: imprint_store::ImageId = id
                            .parse()
                            .map_err(|e: imprint_store::Error| e.to_string())?;
                        match store.delete_image(&id) {
                            Ok(()) => Ok(()),
                            Err(e) if e.kind() == imprint_store::ErrorKind::NotFound => Ok(()),
                            Err(e) => Err(e.to_string()),
                        }
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
                }
                Err(e) => Err(e.message().to_string()),
            };
            let r = r.map_err(|e| format!("site {site}: {e}"));
            if let Err(e) = r {
                // The image goes back to the state it had.
                let prior = op
                    .agent_request
                    .strip_prefix("prior:")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(ImageState::Active);
                if let Err(e) = self.catalog.revert_deleting(&image_id, prior).await {
                    tracing::error!(op = %op.id, error = %e, "cannot restore image state");
                }
                self.fail(
                    op,
                    Code::Unavailable,
                    &format!("removing the image from the store failed: {e}"),
                )
                .await;
                return;
            }
            if let Err(e) = self.catalog.remove_location(&image_id, &site).await {
                tracing::warn!(op = %op.id, %site, error = %e, "cannot forget a removed location");
            }
        }
        if let Err(e) = self.catalog.mark_deleted(&image_id).await {
            // The operation stays running; the next start finishes it.
            tracing::error!(op = %op.id, error = %e, "cannot mark image deleted");
            return;
        }
        let _ = self
            .catalog
            .finish_operation(&op.id, OpState::Succeeded, "", 0, "", &ImageOutcome::None)
            .await;
        record_metrics(op, OpState::Succeeded, &pb::AgentOperation::default());
        self.usage_changed();
        self.bump();
    }

    /// On a shared catalog: hold this daemon's liveness lock, and take over
    /// at once the operations of daemons whose lock is free (they died);
    /// checked every [`LIVENESS_EVERY`]. Lost locks are taken again.
    async fn watch_liveness(self: Arc<Self>) {
        let mut held = None;
        loop {
            let alive = match &mut held {
                Some(h) => crate::liveness::Held::alive(h).await,
                None => false,
            };
            if !alive {
                match self.catalog.hold_liveness(LEASE_RENEW_EVERY).await {
                    Ok(Some(h)) => held = Some(h),
                    // SQLite: one daemon, nothing to watch.
                    Ok(None) => return,
                    Err(e) => tracing::warn!(error = %e, "cannot take this daemon's liveness lock"),
                }
            }
            match self.catalog.dead_lease_owners().await {
                Ok(dead) => {
                    for owner in dead {
                        match self.catalog.claim_operations_of(&owner).await {
                            Ok(ops) if !ops.is_empty() => {
                                tracing::warn!(daemon = %owner, operations = ops.len(), "took over the operations of a daemon that died");
                                for op in ops {
                                    self.spawn_follower(op);
                                }
                                self.bump();
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(daemon = %owner, error = %e, "cannot take over a dead daemon's operations")
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "liveness check failed"),
            }
            tokio::time::sleep(LIVENESS_EVERY).await;
        }
    }

    /// Begin work: resume the operations a previous daemon left running,
    /// then start the background duties. Returns how many were resumed.
    pub async fn start(self: &Arc<Self>) -> Result<usize, Status> {
        let resumed = self.resume_all().await?;
        if resumed > 0 {
            tracing::info!(resumed, "resumed running operations");
        }
        self.start_background();
        Ok(resumed)
    }

    /// Stop the background duties and wait for them (operations are rows:
    /// the next start resumes them).
    pub async fn stop(&self) {
        self.background.stop().await;
    }

    /// Background duties: fail operations of silent hosts, redo the space
    /// accounting when images came or went.
    fn start_background(self: &Arc<Self>) {
        let bg = &self.background;
        bg.spawn("liveness", self.clone().watch_liveness());
        let me = self.clone();
        bg.spawn("leases", async move {
            loop {
                tokio::time::sleep(LEASE_RENEW_EVERY).await;
                if let Err(e) = me.catalog.settle_locations().await {
                    tracing::warn!(error = %e, "cannot settle copy locations");
                }
                match me.lease_pass(false).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(operations = n, "took over operations whose daemon stopped");
                        me.bump();
                    }
                    Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
                }
            }
        });
        let me = self.clone();
        bg.spawn("silent hosts", async move {
            let every = Duration::from_secs(u64::from(HEARTBEAT_INTERVAL_SECONDS));
            // Agents need a few intervals to reach a daemon that was down:
            // judge silence only from then on.
            let started = now();
            loop {
                me.report_status().await;
                let silence = 3 * i64::from(HEARTBEAT_INTERVAL_SECONDS);
                let sweep = if now() - started < silence {
                    Ok(0)
                } else {
                    me.catalog
                        .fail_operations_of_silent_hosts(now() - silence)
                        .await
                };
                match sweep {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(operations = n, "failed the operations of silent hosts");
                        me.bump();
                    }
                    Err(e) => tracing::warn!(error = %e, "silent-host check failed"),
                }
                tokio::time::sleep(every).await;
            }
        });
        if self.store.is_some() {
            let me = self.clone();
            bg.spawn("usage and reconciliation", async move {
                let mut last_reconcile: Option<Instant> = None;
                loop {
                    me.refresh_usage().await;
                    if last_reconcile.is_none_or(|t| t.elapsed() >= RECONCILE_EVERY) {
                        me.reconcile_stores().await;
                        last_reconcile = Some(Instant::now());
                    }
                    // A change, or the next reconciliation, whichever is first.
                    let _ = tokio::time::timeout(RECONCILE_EVERY, me.usage_wanted.notified()).await;
                    // Several changes in a row make one pass.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
        }
    }

    /// `STATUS=` for systemd and gauges for /metrics: what runs now.
    async fn report_status(&self) {
        let running = self.catalog.running_operations().await.map(|o| o.len());
        let hosts = self.catalog.hosts().await.map(|h| {
            let alive = h.iter().filter(|h| Self::alive(h)).count();
            (alive, h.len())
        });
        if let (Ok(running), Ok((alive, all))) = (running, hosts) {
            imprint_service::notify::status(&format!(
                "serving; {running} operation(s) running; {alive} of {all} host(s) alive"
            ));
            let m = imprint_service::metrics::global();
            m.set(
                "imprint_operations_running",
                "Operations running now.",
                &[],
                running as f64,
            );
            m.set(
                "imprint_hosts_alive",
                "Hosts whose agent sent a heartbeat in the last 30 s.",
                &[],
                alive as f64,
            );
            m.set("imprint_hosts", "Registered hosts.", &[], all as f64);
        }
    }

    /// Recompute every image's referenced and exclusive bytes.
    pub async fn refresh_usage(&self) {
        // Every site's store: deleting an image frees its chunks at each
        // site that holds a copy.
        let Some(stores) = self.site_stores().await else {
            return;
        };
        let mut totals: HashMap<String, (i64, i64)> = HashMap::new();
        for (site, store) in stores {
            let r = tokio::task::spawn_blocking(move || imprint_store::usage::usage(&store)).await;
            match r {
                Ok(Ok(u)) => {
                    for (id, why) in &u.unreadable {
                        tracing::warn!(%site, image = %id, error = %why, "image unreadable in the store");
                    }
                    for i in &u.images {
                        let t = totals.entry(i.image_id.to_string()).or_default();
                        t.0 += i.exclusive_bytes as i64;
                        t.1 += i.referenced_bytes as i64;
                    }
                }
                Ok(Err(e)) => tracing::warn!(%site, error = %e, "space accounting failed"),
                Err(e) => tracing::warn!(%site, error = %e, "space accounting panicked"),
            }
        }
        let rows: Vec<(String, i64, i64)> = totals
            .into_iter()
            .map(|(id, (exclusive, referenced))| (id, exclusive, referenced))
            .collect();
        if let Err(e) = self.catalog.set_usage(&rows).await {
            tracing::warn!(error = %e, "cannot record space accounting");
        }
    }

    /// Delete manifests the catalog shows as failed or gone
    /// ([`crate::reconcile`]).
    pub async fn reconcile_stores(&self) {
        let Some(stores) = self.site_stores().await else {
            return;
        };
        if let Err(e) =
            crate::reconcile::reconcile(&self.catalog, stores, crate::reconcile::GRACE_SECONDS)
                .await
        {
            tracing::warn!(error = %e, "store reconciliation failed");
        }
    }

    /// Every site's store, each store once (two sites naming one store
    /// count once); `None` when the sites cannot be listed.
    async fn site_stores(&self) -> Option<Vec<(String, Store)>> {
        let mut stores = Vec::new();
        match self.catalog.sites().await {
            Ok(sites) if !sites.is_empty() => {
                // A store named by two sites counts once.
                let mut seen: Vec<imprint_store::Location> = Vec::new();
                for s in sites {
                    match imprint_store::Location::parse(&s.store) {
                        Ok(l) if seen.iter().any(|o| o.same_store(&l)) => continue,
                        Ok(l) => seen.push(l),
                        Err(_) => {}
                    }
                    match self.site_store(&s.name).await {
                        Ok(st) => stores.push((s.name, st)),
                        Err(e) => {
                            tracing::warn!(site = %s.name, error = %e.message(), "space accounting skips a site whose store cannot be opened")
                        }
                    }
                }
            }
            Ok(_) => stores.extend(self.store.clone().map(|s| ("default".to_string(), s))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the sites' stores");
                return None;
            }
        }
        Some(stores)
    }
}

/// Bytes per second over the last few seconds.
#[derive(Debug, Default)]
struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    fn sample(&mut self, done: u64) -> f64 {
        let t = Instant::now();
        self.samples.push_back((t, done));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(s, _)| t.duration_since(*s) > Duration::from_secs(5))
        {
            self.samples.pop_front();
        }
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 && b1 >= b0 => {
                (b1 - b0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// Count a finished operation in /metrics.
fn record_metrics(op: &OperationRow, result: OpState, a: &pb::AgentOperation) {
    let m = imprint_service::metrics::global();
    let kind = op.kind.as_str();
    let result = result.as_str();
    m.inc(
        "imprint_operations_total",
        "Operations finished, by kind and result.",
        &[("kind", kind), ("result", result)],
        1.0,
    );
    let secs = (now() - op.created_unix).max(0) as f64;
    m.inc(
        "imprint_operation_seconds_total",
        "Wall-clock seconds of finished operations, by kind (divide by imprint_operations_total).",
        &[("kind", kind)],
        secs,
    );
    if let Some(c) = &a.capture {
        for (what, n) in [
            ("read", c.bytes_read),
            ("stored", c.bytes_stored),
            ("deduplicated", c.bytes_deduplicated),
            ("zero", c.zero_bytes_skipped),
        ] {
            m.inc(
                "imprint_capture_bytes_total",
                "Bytes of successful captures: read from guests, newly stored (compressed), deduplicated, zero.",
                &[("what", what)],
                n as f64,
            );
        }
    }
    if let Some(d) = &a.deploy {
        m.inc(
            "imprint_deploy_bytes_total",
            "Guest-visible bytes written by successful deploys.",
            &[],
            d.bytes_written as f64,
        );
    }
}

/// How often a daemon on a shared catalog looks for daemons that died.
const LIVENESS_EVERY: Duration = Duration::from_secs(1);

/// How often the stores are reconciled with the catalog.
const RECONCILE_EVERY: Duration = Duration::from_secs(600);

/// How the daemon may reach an agent: never plaintext over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentScheme {
    /// `unix:///PATH`: the agent's socket on this machine (mode 0660).
    Unix,
    /// `https://HOST:PORT`: mutual TLS.
    Https,
}

impl AgentScheme {
    /// What agent endpoints may be.
    pub const RULE: &str = "agent endpoints are unix:///PATH (a local socket) or https://HOST:PORT (mutual TLS); agents never serve plaintext TCP";

    /// The scheme of `endpoint`, if it is one of ours.
    pub fn of(endpoint: &str) -> Option<Self> {
        if endpoint.starts_with("unix:") {
            Some(Self::Unix)
        } else if endpoint.starts_with("https://") {
            Some(Self::Https)
        } else {
            None
        }
    }
}
