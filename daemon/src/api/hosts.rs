//! `HostService`: agents register and heartbeat; operators list hosts.

use imprint_proto::v1::{self as pb, host_service_server::HostService};
use tonic::{Request, Response, Status};

use crate::{
    catalog::Catalog,
    catalog::HostRow,
    credentials::authenticate_host,
    dispatch::{Dispatcher, HEARTBEAT_INTERVAL_SECONDS},
    error::DaemonError,
};

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

fn to_pb(h: HostRow) -> pb::Host {
    pb::Host {
        alive: Dispatcher::alive(&h),
        name: h.name,
        agent_endpoint: h.agent_endpoint,
        libvirt_uri: h.libvirt_uri,
        version: h.version,
        cpus: u32::try_from(h.cpus).unwrap_or(0),
        memory_bytes: crate::catalog::unsigned(h.memory_bytes),
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
        crate::catalog::validate_host_name(&name)?;
        authenticate_host(&self.catalog, &req, &name).await?;
        let r = req.into_inner();
        if crate::dispatch::AgentScheme::of(&r.agent_endpoint).is_none() {
            let said = format!(
                "agent endpoint {:?}: {}",
                r.agent_endpoint,
                crate::dispatch::AgentScheme::RULE
            );
            return Err(DaemonError::invalid(said).into());
        }
        // A site nobody configured would give its images a location whose
        // store no daemon can open (they could never be deleted).
        if !r.site.is_empty() && r.site != crate::catalog::DEFAULT_SITE {
            match self.catalog.site(&r.site).await {
                Ok(_) => {}
                Err(crate::catalog::CatalogError::NotFound(_)) => {
                    let said = format!(
                        "host {}: site {:?} is not configured on the daemon (imprintd --site {}=LOCATION)",
                        r.name, r.site, r.site
                    );
                    return Err(DaemonError::wrong_state(said).into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let row = HostRow {
            name: r.name.clone(),
            agent_endpoint: r.agent_endpoint,
            libvirt_uri: r.libvirt_uri,
            version: r.version,
            cpus: i32::try_from(r.cpus)
                .map_err(|_| DaemonError::invalid("cpus is out of range"))?,
            memory_bytes: i64::try_from(r.memory_bytes)
                .map_err(|_| DaemonError::invalid("memory_bytes is out of range"))?,
            site: r.site,
            last_heartbeat_unix: 0,
        };
        self.catalog.register_host(&row).await?;
        tracing::info!(host = %r.name, "host registered");
        let host = self
            .catalog
            .hosts()
            .await?
            .into_iter()
            .find(|h| h.name == r.name)
            .ok_or_else(|| DaemonError::internal("registered host vanished"))?;
        Ok(Response::new(to_pb(host)))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let name = req.get_ref().name.clone();
        authenticate_host(&self.catalog, &req, &name).await?;
        let running = req.into_inner().running_operation_ids;
        self.catalog.heartbeat(&name).await?;
        // What the host still runs but the catalog ended (the reaper failed
        // it while the host was silent): the agent cancels it.
        let cancel_operation_ids = self.catalog.ended_among(&name, &running).await?;
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
        for h in self.catalog.hosts().await? {
            if self.catalog.may_use_host(&who, &h.name).await? {
                hosts.push(to_pb(h));
            }
        }
        Ok(Response::new(pb::ListHostsResponse { hosts }))
    }
}
