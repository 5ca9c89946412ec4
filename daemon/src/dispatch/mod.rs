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
//! ([`crate::catalog::LEASE_SECONDS`]); every daemon renews its leases every
//! [`LEASE_RENEW_EVERY`] and claims operations whose lease expired. On
//! PostgreSQL a daemon that died is noticed sooner: its liveness lock
//! ([`crate::liveness`]) goes with its connection, and the others take its
//! operations over within about a second. A daemon that finds it lost a
//! lease (it stalled) stops following that operation.
//!
//! Here: the dispatcher, starting and cancelling operations. `agents`: the
//! agent client pool and sending; `follow`: following operations, leases,
//! final states; `duties`: the background loops.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use imprint_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use imprint_store::Store;
use prost::Message;
use tokio::sync::{Notify, watch};
use tonic::{Code, transport::Channel};

use crate::{
    catalog::{Catalog, ImageDiskRow, count, now, signed, unsigned},
    catalog::{DEFAULT_SITE, site_of_host},
    catalog::{HostRow, ImageOutcome, OperationRow},
    domain::{ImageState, LocationState, OpKind, OpState, phase},
    error::{DaemonError, ErrorKind},
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
    /// A lint of a stored image.
    Lint(pb::LintImageRequest),
    /// A guest's deletion.
    DeleteGuest(pb::DeleteGuestAgentRequest),
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
            AgentRequest::Lint(r) => r.encode_to_vec(),
            AgentRequest::DeleteGuest(r) => r.encode_to_vec(),
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
            OpKind::Lint => pb::LintImageRequest::decode(bytes.as_slice())
                .map(AgentRequest::Lint)
                .map_err(|e| e.to_string()),
            OpKind::DeleteGuest => pb::DeleteGuestAgentRequest::decode(bytes.as_slice())
                .map(AgentRequest::DeleteGuest)
                .map_err(|e| e.to_string()),
            OpKind::Delete => Err("delete operations are not sent to agents".to_string()),
        }
    }
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
    /// Lint every image a capture or import makes (`--auto-lint`).
    auto_lint: std::sync::atomic::AtomicBool,
    /// Deploys that do not say are lazy where they can be
    /// (`--lazy-deploys`).
    lazy_deploys: std::sync::atomic::AtomicBool,
}

mod agents;
mod duties;
mod follow;

pub use agents::{AgentScheme, HEARTBEAT_INTERVAL_SECONDS};

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
            auto_lint: std::sync::atomic::AtomicBool::new(false),
            lazy_deploys: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Deploys that do not say whether they are lazy are lazy where they
    /// can be (the guest starts, on a pool of files, with room in the
    /// host's fill limit), else written first (off unless set).
    pub fn set_lazy_deploys(&self, on: bool) {
        self.lazy_deploys
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// See [`Dispatcher::set_lazy_deploys`].
    pub fn lazy_deploys(&self) -> bool {
        self.lazy_deploys.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lint every image a capture or import makes, on the host that made
    /// it, once it is active (off unless set).
    pub fn set_auto_lint(&self, on: bool) {
        self.auto_lint
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Record a lint of image `image_id` on `host` for account `account_id`
    /// and hand it to the agent (or return the one a retry with the same
    /// request id started). Callers check who may lint what.
    pub async fn start_lint(
        self: &Arc<Self>,
        account_id: &str,
        request_id: Option<&str>,
        image_id: &str,
        host: &HostRow,
    ) -> Result<OperationRow, DaemonError> {
        let op_id = uuid::Uuid::new_v4().to_string();
        let req = AgentRequest::Lint(pb::LintImageRequest {
            operation_id: op_id.clone(),
            image_id: image_id.to_string(),
            store: self.source_store(image_id, host).await?,
        });
        let encoded = req.encode();
        let n = crate::catalog::NewOperation {
            account_id,
            request_id,
            kind: OpKind::Lint,
            image_id: Some(image_id),
            host: &host.name,
            guest: "",
            agent_request: &encoded,
            new_image: None,
        };
        let (row, new) = self.catalog.begin_operation_with_id(&op_id, &n).await?;
        if !new {
            return Ok(row);
        }
        let row = self.dispatch(row, &req).await?;
        tracing::info!(op = %row.id, kind = %row.kind, image = %image_id, host = %row.host, "operation started");
        Ok(row)
    }

    /// The store of site `site` (the daemon's own `--store` for the default
    /// site), for metadata work: deletes, never bulk data.
    pub async fn site_store(&self, site: &str) -> Result<Store, DaemonError> {
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
        let row = self.catalog.site(site).await?;
        let location = imprint_store::Location::parse(&row.store)
            .map_err(|e| DaemonError::wrong_state(format!("site {site}: {e}")).with_source(e))?;
        let store = tokio::task::spawn_blocking(move || Store::open_at(&location, false))
            .await
            .map_err(|e| DaemonError::internal("opening a site's store failed").with_source(e))?
            .map_err(|e| DaemonError::unavailable(format!("site {site}: {e}")).with_source(e))?;
        self.site_stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(site.to_string(), store.clone());
        Ok(store)
    }

    /// Where a deploy or export on `host` reads image `image_id` from: ""
    /// (the agent's own store) when the image is at the host's site,
    /// otherwise the store of another site that has it (by name).
    pub async fn source_store(
        &self,
        image_id: &str,
        host: &HostRow,
    ) -> Result<String, DaemonError> {
        let here = site_of_host(&host.site);
        let available: Vec<String> = self
            .catalog
            .locations(image_id)
            .await?
            .into_iter()
            .filter(|l| l.state == LocationState::Available)
            .map(|l| l.site)
            .collect();
        if available.iter().any(|s| s == here) {
            return Ok(String::new());
        }
        let Some(other) = available.first() else {
            return Err(DaemonError::wrong_state(format!(
                "image {image_id} has no complete copy at any site"
            )));
        };
        let site = self.catalog.site(other).await.map_err(|_| {
            DaemonError::wrong_state(format!(
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
    ) -> Result<OperationRow, DaemonError> {
        let (me, req) = (self.clone(), req.clone());
        self.background
            .spawn_task(async move { me.dispatch_inner(op, &req).await })
            .await
            .map_err(|e| DaemonError::internal("the dispatch task failed").with_source(e))?
            .unwrap_or_else(|| Err(DaemonError::unavailable("the daemon is shutting down")))
    }

    async fn dispatch_inner(
        self: &Arc<Self>,
        op: OperationRow,
        req: &AgentRequest,
    ) -> Result<OperationRow, DaemonError> {
        let host = match self.catalog.host(&op.host).await {
            Ok(h) => h,
            Err(e) => {
                let _ = self.catalog.undo_operation(&op.id).await;
                return Err(e.into());
            }
        };
        match self.send(&host, req).await {
            Ok(a) => {
                if let Err(e) = self
                    .catalog
                    .set_phase(&op.id, phase::reported(&a.phase))
                    .await
                {
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
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                tracing::warn!(op = %op.id, error = %e, "no answer yet; following the operation");
            }
            Err(e) => {
                if let Err(u) = self.catalog.undo_operation(&op.id).await {
                    tracing::error!(op = %op.id, error = %u, "cannot remove a refused operation");
                }
                return Err(e);
            }
        }
        self.bump();
        self.spawn_follower(op.clone());
        Ok(self.catalog.operation(&op.id).await?)
    }

    /// Ask the agent to cancel a running operation.
    pub async fn cancel(&self, op: &OperationRow) -> Result<(), DaemonError> {
        if op.kind == OpKind::Delete {
            return Err(DaemonError::wrong_state(
                "a delete cannot be cancelled once started",
            ));
        }
        if op.phase == phase::QUEUED {
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
                .await?;
            self.bump();
            return Ok(());
        }
        let host = self.catalog.host(&op.host).await.map_err(|e| {
            DaemonError::wrong_state(format!("cannot reach the operation's host: {e}"))
        })?;
        match self.agent_cancel(&host, &op.id).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(DaemonError::wrong_state(format!(
                "the agent on host {} no longer knows this operation; it ends when the host's silence is noticed",
                host.name
            ))),
            Err(e) if e.kind().is_transient() => {
                let said = format!("cannot cancel: the agent cannot be reached ({e})");
                Err(DaemonError::unavailable(said).with_source(e))
            }
            Err(e) => Err(e),
        }
    }
}
