//! Guests belong to accounts, and `GuestService`.
//!
//! A grant on a host (`allow-host`) lets an account deploy there; it does
//! not make the host's other guests its own. A guest belongs to the account
//! that deployed it through imprint, or to the account an admin assigned it
//! to (existing fleets are adopted with `imprint guest assign HOST
//! --all-unowned --account ACCOUNT`). Capturing, the one call that acts on an
//! existing guest, needs to own it; admins may act on every guest. A guest
//! the caller does not own answers NOT_FOUND, exactly like a guest that
//! does not exist, so names do not leak between accounts.

use std::{collections::HashMap, sync::Arc};

use imprint_proto::v1::{self as pb, guest_service_server::GuestService};
use sqlx::Row;
use tonic::{Request, Response, Status};

use crate::{
    auth,
    catalog::HostRow,
    catalog::{Account, Catalog, CatalogError, Result, now},
    dispatch::Dispatcher,
    error::status,
    hosts::usable_host,
};

/// One ownership row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestOwner {
    /// libvirt UUID.
    pub uuid: String,
    /// Name when it was assigned.
    pub name: String,
    /// Owning account's id and name.
    pub account_id: String,
    /// Owning account's name.
    pub account: String,
}

impl Catalog {
    /// Owners of the guests of `host`, by UUID.
    pub async fn guest_owners(&self, host: &str) -> Result<HashMap<String, GuestOwner>> {
        let rows = sqlx::query(
            "SELECT g.guest_uuid, g.guest_name, g.account_id, a.name AS account \
             FROM guest_owners g JOIN accounts a ON a.id = g.account_id WHERE g.host = $1",
        )
        .bind(host)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let o = GuestOwner {
                    uuid: r.try_get("guest_uuid")?,
                    name: r.try_get("guest_name")?,
                    account_id: r.try_get("account_id")?,
                    account: r.try_get("account")?,
                };
                Ok((o.uuid.clone(), o))
            })
            .collect()
    }

    /// The owner of one guest, if anybody owns it.
    pub async fn guest_owner(&self, host: &str, uuid: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query("SELECT account_id FROM guest_owners WHERE host = $1 AND guest_uuid = $2")
                .bind(host)
                .bind(uuid)
                .fetch_optional(self.pool())
                .await?
                .map(|r| r.try_get("account_id"))
                .transpose()?,
        )
    }

    /// Give guests (UUID, name) of `host` to `account_id`, in one
    /// transaction. With `take`, a guest someone owns moves; without it,
    /// owned guests stay with their owner (adopting only what is nobody's,
    /// even if a deploy recorded its owner meanwhile).
    pub async fn assign_guests(
        &self,
        host: &str,
        guests: &[(String, String)],
        account_id: &str,
        take: bool,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let on_conflict = if take {
            "DO UPDATE SET guest_name = $3, account_id = $4, assigned_unix = $5"
        } else {
            "DO NOTHING"
        };
        for (uuid, name) in guests {
            let sql = format!(
                "INSERT INTO guest_owners (host, guest_uuid, guest_name, account_id, assigned_unix) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (host, guest_uuid) {on_conflict}"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(host)
                .bind(uuid)
                .bind(name)
                .bind(account_id)
                .bind(now())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forget who owns a guest named by UUID or by its recorded name;
    /// returns the row. A name several rows carry (a guest deleted and
    /// made again under its name) must be given as the UUID.
    pub async fn unassign_guest(&self, host: &str, guest: &str) -> Result<GuestOwner> {
        let all = self.guest_owners(host).await?;
        let owner = match all.get(guest) {
            Some(o) => o.clone(),
            None => {
                let named: Vec<&GuestOwner> = all.values().filter(|o| o.name == guest).collect();
                match named.as_slice() {
                    [one] => (*one).clone(),
                    [] => {
                        return Err(CatalogError::NotFound(format!(
                            "nobody owns a guest {guest:?} on host {host:?}"
                        )));
                    }
                    several => {
                        return Err(CatalogError::FailedPrecondition(format!(
                            "{} owned guests on host {host:?} were named {guest:?}; give the UUID ({})",
                            several.len(),
                            several
                                .iter()
                                .map(|o| o.uuid.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                }
            }
        };
        sqlx::query("DELETE FROM guest_owners WHERE host = $1 AND guest_uuid = $2")
            .bind(host)
            .bind(&owner.uuid)
            .execute(self.pool())
            .await?;
        Ok(owner)
    }
}

/// Refuse a call on guest `guest` of `host` unless `who` owns it or is an
/// admin. NOT_FOUND, with the same words as for a missing guest.
pub async fn check_owner(
    catalog: &Catalog,
    who: &Account,
    host: &str,
    guest: &pb::Guest,
    asked: &str,
) -> Result<(), Status> {
    if who.is_admin {
        return Ok(());
    }
    match catalog
        .guest_owner(host, &guest.uuid)
        .await
        .map_err(status)?
    {
        Some(owner) if owner == who.id => Ok(()),
        _ => Err(guest_not_found(host, asked)),
    }
}

/// What a missing guest and another account's guest both answer.
pub fn guest_not_found(host: &str, asked: &str) -> Status {
    Status::not_found(format!(
        "host {host}: no guest {asked:?} among your guests (guests not deployed through imprint are assigned by an admin: imprint guest assign {host} {asked} --account ACCOUNT)"
    ))
}

/// The service.
#[derive(Debug, Clone)]
pub struct Guests {
    d: Arc<Dispatcher>,
}

impl Guests {
    /// Over the dispatcher (agents and catalog).
    pub fn new(d: Arc<Dispatcher>) -> Self {
        Self { d }
    }

    fn catalog(&self) -> &Catalog {
        self.d.catalog()
    }

    async fn admin<T>(&self, req: &Request<T>) -> Result<Account, Status> {
        let who = auth::account(self.catalog(), req).await?;
        if !who.is_admin {
            return Err(Status::permission_denied(format!(
                "account {} is not an admin; only admins assign guests",
                who.name
            )));
        }
        Ok(who)
    }

    async fn agent_guests(&self, host: &HostRow) -> Result<Vec<pb::Guest>, Status> {
        Ok(self
            .d
            .agent(host)?
            .list_guests(pb::ListGuestsRequest {})
            .await
            .map_err(|e| agent_error(host, &e))?
            .into_inner()
            .guests)
    }
}

fn agent_error(host: &HostRow, e: &Status) -> Status {
    Status::new(e.code(), format!("host {}: {}", host.name, e.message()))
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
        let owners = self
            .catalog()
            .guest_owners(&host.name)
            .await
            .map_err(status)?;
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
            return Err(Status::invalid_argument(
                "name the guests to assign, or ask for all_unowned",
            ));
        }
        let account = self
            .catalog()
            .account_by_name(&r.account)
            .await
            .map_err(status)?;
        let host = usable_host(self.catalog(), &who, &r.host).await?;
        let owners = self
            .catalog()
            .guest_owners(&host.name)
            .await
            .map_err(status)?;
        let on_host = self.agent_guests(&host).await?;
        // Every name must resolve before anything is written.
        let mut chosen: Vec<&pb::Guest> = Vec::new();
        for asked in &r.guests {
            let g = on_host
                .iter()
                .find(|g| &g.name == asked || &g.uuid == asked)
                .ok_or_else(|| {
                    Status::not_found(format!("host {}: no guest {asked:?}", host.name))
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
            .await
            .map_err(status)?;
        self.catalog()
            .assign_guests(&host.name, &unowned, &account.id, false)
            .await
            .map_err(status)?;
        // Answer with what each now belongs to.
        let now_owned = self
            .catalog()
            .guest_owners(&host.name)
            .await
            .map_err(status)?;
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
        let o = self
            .catalog()
            .unassign_guest(&r.host, &r.guest)
            .await
            .map_err(status)?;
        tracing::info!(host = %r.host, guest = %o.name, from = %o.account, by = %who.name, "guest unassigned");
        Ok(Response::new(pb::HostGuest {
            host: r.host,
            name: o.name,
            uuid: o.uuid,
            ..Default::default()
        }))
    }
}
