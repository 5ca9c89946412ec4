//! Guests belong to accounts, and `GuestService`.
//!
//! A grant on a host (`allow-host`) lets an account deploy there; it does
//! not make the host's other guests its own. A guest belongs to the account
//! that deployed it through imprint, or to the account an admin assigned it
//! to (existing fleets are adopted with `imprint guest assign HOST
//! --all-unowned --account ACCOUNT`). Capturing and deleting, the calls that
//! act on an existing guest, need to own it; admins may act on every guest. A guest
//! the caller does not own answers NOT_FOUND, exactly like a guest that
//! does not exist, so names do not leak between accounts.

use std::sync::Arc;

use imprint_proto::v1::{self as pb, guest_service_server::GuestService};
use tonic::{Request, Response, Status};

use crate::{
    auth,
    catalog::HostRow,
    catalog::{Account, Catalog, GuestOwner},
    dispatch::Dispatcher,
    error::DaemonError,
    ops::{Ops, usable_host},
    spec::DeleteGuestSpec,
};

/// The service.
#[derive(Debug, Clone)]
pub struct Guests {
    d: Arc<Dispatcher>,
    ops: Ops,
}

impl Guests {
    /// Over the dispatcher (agents and catalog).
    pub fn new(d: Arc<Dispatcher>) -> Self {
        Self {
            ops: Ops::new(d.clone()),
            d,
        }
    }

    fn catalog(&self) -> &Catalog {
        self.d.catalog()
    }

    async fn admin<T>(&self, req: &Request<T>) -> Result<Account, DaemonError> {
        auth::admin(self.catalog(), req, "assign guests").await
    }

    async fn agent_guests(&self, host: &HostRow) -> Result<Vec<pb::Guest>, DaemonError> {
        Ok(self
            .d
            .agent(host)?
            .list_guests(pb::ListGuestsRequest {})
            .await
            .map_err(|e| DaemonError::from_agent(&host.name, e))?
            .into_inner()
            .guests)
    }
}

fn to_pb(host: &str, g: &pb::Guest, owner: Option<&GuestOwner>) -> pb::HostGuest {
    pb::HostGuest {
        host: host.to_string(),
        name: g.name.clone(),
        uuid: g.uuid.clone(),
        power_state: g.power_state,
        owner: owner.map(|o| o.account.clone()).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl GuestService for Guests {
    async fn list_guests(
        &self,
        req: Request<pb::ListHostGuestsRequest>,
    ) -> Result<Response<pb::ListHostGuestsResponse>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let host = usable_host(self.catalog(), &who, &req.get_ref().host).await?;
        let owners = self.catalog().guest_owners(&host.name).await?;
        let guests = self
            .agent_guests(&host)
            .await?
            .iter()
            .filter_map(|g| {
                let owner = owners.get(&g.uuid);
                (who.is_admin || owner.is_some_and(|o| o.account_id == who.id))
                    .then(|| to_pb(&host.name, g, owner))
            })
            .collect();
        Ok(Response::new(pb::ListHostGuestsResponse { guests }))
    }

    async fn assign_guests(
        &self,
        req: Request<pb::AssignGuestsRequest>,
    ) -> Result<Response<pb::AssignGuestsResponse>, Status> {
        let who = self.admin(&req).await?;
        let r = req.into_inner();
        if r.guests.is_empty() && !r.all_unowned {
            return Err(
                DaemonError::invalid("name the guests to assign, or ask for all_unowned").into(),
            );
        }
        let account = self.catalog().account_by_name(&r.account).await?;
        let host = usable_host(self.catalog(), &who, &r.host).await?;
        let owners = self.catalog().guest_owners(&host.name).await?;
        let on_host = self.agent_guests(&host).await?;
        // Every name must resolve before anything is written.
        let mut chosen: Vec<&pb::Guest> = Vec::new();
        for asked in &r.guests {
            let g = on_host
                .iter()
                .find(|g| &g.name == asked || &g.uuid == asked)
                .ok_or_else(|| {
                    DaemonError::not_found(format!("host {}: no guest {asked:?}", host.name))
                })?;
            chosen.push(g);
        }
        let named: Vec<(String, String)> = chosen
            .iter()
            .map(|g| (g.uuid.clone(), g.name.clone()))
            .collect();
        let unowned: Vec<(String, String)> = if r.all_unowned {
            on_host
                .iter()
                .filter(|g| {
                    !owners.contains_key(&g.uuid) && !named.iter().any(|(u, _)| u == &g.uuid)
                })
                .map(|g| (g.uuid.clone(), g.name.clone()))
                .collect()
        } else {
            Vec::new()
        };
        self.catalog()
            .assign_guests(&host.name, &named, &account.id, true)
            .await?;
        self.catalog()
            .assign_guests(&host.name, &unowned, &account.id, false)
            .await?;
        // Answer with what each now belongs to.
        let now_owned = self.catalog().guest_owners(&host.name).await?;
        let mut chosen: Vec<&pb::Guest> = chosen;
        chosen.extend(
            on_host
                .iter()
                .filter(|g| unowned.iter().any(|(u, _)| u == &g.uuid)),
        );
        chosen.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        chosen.dedup_by(|a, b| a.uuid == b.uuid);
        tracing::info!(host = %host.name, account = %account.name, by = %who.name, guests = chosen.len(), "guests assigned");
        Ok(Response::new(pb::AssignGuestsResponse {
            guests: chosen
                .iter()
                .map(|g| to_pb(&host.name, g, now_owned.get(&g.uuid)))
                .collect(),
        }))
    }

    async fn unassign_guest(
        &self,
        req: Request<pb::UnassignGuestRequest>,
    ) -> Result<Response<pb::HostGuest>, Status> {
        let who = self.admin(&req).await?;
        let r = req.into_inner();
        let o = self.catalog().unassign_guest(&r.host, &r.guest).await?;
        tracing::info!(host = %r.host, guest = %o.name, from = %o.account, by = %who.name, "guest unassigned");
        Ok(Response::new(pb::HostGuest {
            host: r.host,
            name: o.name,
            uuid: o.uuid,
            ..Default::default()
        }))
    }

    async fn delete_guest(
        &self,
        req: Request<pb::DeleteGuestRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let spec = DeleteGuestSpec::try_from(req.into_inner())?;
        let op = self.ops.delete_guest(&who, spec).await?;
        Ok(Response::new(crate::api::operations::op_to_pb(&op)))
    }
}
