//! `HostService`: agents register and heartbeat; operators list hosts.

use std::time::{SystemTime, UNIX_EPOCH};

use imprint_proto::v1::{self as pb, host_service_server::HostService};
use tonic::{Request, Response, Status};

use crate::{
    catalog::HostRow,
    catalog::{Account, Catalog, CatalogError},
    credentials::authenticate_host,
    error::status,
};

/// Seconds between agent heartbeats; a host is alive while its last one is
/// younger than three intervals.
pub const HEARTBEAT_INTERVAL_SECONDS: u32 = 10;

/// The service.
#[derive(Debug, Clone)]
pub struct Hosts {
    catalog: Catalog,
}

impl Hosts {
    /// Over `catalog`. Registering and heartbeating need the host's
    /// credential ([`crate::credentials`]).
    pub fn new(catalog: Catalog) -> Self {
        Self { catalog }
    }
}

/// The host, if `who` may use it and it is alive. Hosts the account may
/// not use answer NOT_FOUND, like unknown ones.
pub async fn usable_host(catalog: &Catalog, who: &Account, host: &str) -> Result<HostRow, Status> {
    if host.is_empty() {
        return Err(Status::invalid_argument("host is required"));
    }
    let allowed = catalog.may_use_host(who, host).await.map_err(status)?;
    let row = match catalog.host(host).await {
        Ok(h) if allowed => h,
        Ok(_) | Err(CatalogError::NotFound(_)) => {
            return Err(Status::not_found(format!(
                "host {host:?} is not registered or not available to account {}",
                who.name
            )));
        }
        Err(e) => return Err(status(e)),
    };
    if !crate::dispatch::Dispatcher::alive(&row) {
        return Err(Status::unavailable(format!(
            "host {host} has not sent a heartbeat for {} s; its agent is down",
            crate::catalog::now() - row.last_heartbeat_unix
        )));
    }
    Ok(row)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn to_pb(h: HostRow) -> pb::Host {
    pb::Host {
        alive: now() - h.last_heartbeat_unix < 3 * i64::from(HEARTBEAT_INTERVAL_SECONDS),
        name: h.name,
        agent_endpoint: h.agent_endpoint,
        libvirt_uri: h.libvirt_uri,
        version: h.version,
        cpus: h.cpus as u32,
        memory_bytes: h.memory_bytes as u64,
        site: h.site,
        last_heartbeat_unix: h.last_heartbeat_unix,
    }
}

#[tonic::async_trait]
impl HostService for Hosts {
    async fn register_host(
        &self,
        req: Request<pb::RegisterHostRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        let name = req.get_ref().name.clone();
        crate::credentials::validate_host_name(&name).map_err(status)?;
        authenticate_host(&self.catalog, &req, &name).await?;
        let r = req.into_inner();
        if crate::dispatch::AgentScheme::of(&r.agent_endpoint).is_none() {
            return Err(Status::invalid_argument(format!(
                "agent endpoint {:?}: {}",
                r.agent_endpoint,
                crate::dispatch::AgentScheme::RULE
            )));
        }
        // A site nobody configured would give its images a location whose
        // store no daemon can open (they could never be deleted).
        if !r.site.is_empty() && r.site != crate::catalog::DEFAULT_SITE {
            match self.catalog.site(&r.site).await {
                Ok(_) => {}
                Err(crate::catalog::CatalogError::NotFound(_)) => {
                    return Err(Status::failed_precondition(format!(
                        "host {}: site {:?} is not configured on the daemon (imprintd --site {}=LOCATION)",
                        r.name, r.site, r.site
                    )));
                }
                Err(e) => return Err(status(e)),
            }
        }
        let row = HostRow {
            name: r.name.clone(),
            agent_endpoint: r.agent_endpoint,
            libvirt_uri: r.libvirt_uri,
            version: r.version,
            cpus: i32::try_from(r.cpus)
                .map_err(|_| Status::invalid_argument("cpus is out of range"))?,
            memory_bytes: i64::try_from(r.memory_bytes)
                .map_err(|_| Status::invalid_argument("memory_bytes is out of range"))?,
            site: r.site,
            last_heartbeat_unix: 0,
        };
        self.catalog.register_host(&row).await.map_err(status)?;
        tracing::info!(host = %r.name, "host registered");
        let host = self
            .catalog
            .hosts()
            .await
            .map_err(status)?
            .into_iter()
            .find(|h| h.name == r.name)
            .ok_or_else(|| Status::internal("registered host vanished"))?;
        Ok(Response::new(to_pb(host)))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let name = req.get_ref().name.clone();
        authenticate_host(&self.catalog, &req, &name).await?;
        let running = req.into_inner().running_operation_ids;
        self.catalog.heartbeat(&name).await.map_err(status)?;
        // What the host still runs but the catalog ended (the reaper failed
        // it while the host was silent): the agent cancels it.
        let cancel_operation_ids = self
            .catalog
            .ended_among(&name, &running)
            .await
            .map_err(status)?;
        if !cancel_operation_ids.is_empty() {
            tracing::warn!(host = %name, operations = ?cancel_operation_ids, "the host runs operations the catalog ended; asking it to cancel them");
        }
        imprint_service::metrics::daemon()
            .agent_heartbeats
            .get_or_create(&imprint_service::metrics::HostLabels { host: name.clone() })
            .inc();
        Ok(Response::new(pb::HeartbeatResponse {
            interval_seconds: HEARTBEAT_INTERVAL_SECONDS,
            cancel_operation_ids,
        }))
    }

    async fn list_hosts(
        &self,
        req: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        // Users see the hosts they may use (admins: all).
        let who = crate::auth::account(&self.catalog, &req).await?;
        let mut hosts = Vec::new();
        for h in self.catalog.hosts().await.map_err(status)? {
            if self
                .catalog
                .may_use_host(&who, &h.name)
                .await
                .map_err(status)?
            {
                hosts.push(to_pb(h));
            }
        }
        Ok(Response::new(pb::ListHostsResponse { hosts }))
    }
}
