//! The life of an image operation, independent of gRPC: from a checked
//! spec ([`crate::spec`]) to an operation row handed to its agent.
//!
//! Each starts the same way: a retry with the caller's request id returns
//! the operation the first call started (`Ops::replay`); then the
//! catalog checks (visibility, state, host), the agent's request, the row,
//! and dispatch (`Ops::start`). If the agent refuses, the row is gone and
//! nothing changed.
//!
//! - `capture`, `import`: operations that make a new image;
//! - `deploy`: deploys and exports, which read one;
//! - `copy`: copies between sites' stores and removing a site's copy;
//! - `delete`: deleting an image (no agent: the daemon's own store work);
//! - `guest_delete`: deleting a guest (its agent's work).

use std::sync::Arc;

use crate::{
    catalog::{Account, Catalog, CatalogError, HostRow, ImageRow, NewOperation, OperationRow},
    dispatch::{AgentRequest, Dispatcher},
    domain::OpKind,
    error::DaemonError,
};

mod capture;
mod copy;
mod delete;
mod deploy;
mod guest_delete;
mod import;
mod lint;

/// Starts image operations.
#[derive(Debug, Clone)]
pub struct Ops {
    d: Arc<Dispatcher>,
}

impl Ops {
    /// Over the dispatcher (and its catalog).
    pub fn new(d: Arc<Dispatcher>) -> Self {
        Self { d }
    }

    fn catalog(&self) -> &Catalog {
        self.d.catalog()
    }

    /// The operation an earlier call with this request id started.
    async fn replay(
        &self,
        who: &Account,
        request_id: Option<&str>,
        kind: OpKind,
    ) -> Result<Option<OperationRow>, DaemonError> {
        let Some(request_id) = request_id else {
            return Ok(None);
        };
        match self
            .catalog()
            .operation_for_request(&who.id, request_id)
            .await?
        {
            Some(op) if op.kind == kind => Ok(Some(op)),
            Some(op) => Err(DaemonError::exists(format!(
                "request id {request_id:?} was already used for a {} operation",
                op.kind
            ))),
            None => Ok(None),
        }
    }

    /// An image `who` sees and whose data may be read (active or
    /// deprecated), to be `what` ("deployed", "exported").
    async fn readable(&self, who: &Account, id: &str, what: &str) -> Result<ImageRow, DaemonError> {
        let img = self.catalog().get_image(who, id).await?;
        if !img.deployable() {
            return Err(DaemonError::wrong_state(format!(
                "image {} is {}; only active or deprecated images can be {what}",
                img.id, img.state
            )));
        }
        Ok(img)
    }

    /// Record a new operation and hand it to its agent (or return the one a
    /// retry with the same request id started).
    async fn start(
        &self,
        op_id: &str,
        n: &NewOperation<'_>,
        agent_req: &AgentRequest,
    ) -> Result<OperationRow, DaemonError> {
        let (op, new) = self.catalog().begin_operation_with_id(op_id, n).await?;
        if !new {
            return Ok(op);
        }
        let op = self.d.dispatch(op, agent_req).await?;
        tracing::info!(op = %op.id, kind = %op.kind, image = ?op.image_id, host = %op.host, "operation started");
        Ok(op)
    }
}

/// The host, if `who` may use it and it is alive. Hosts the account may
/// not use answer NOT_FOUND, like unknown ones.
pub async fn usable_host(
    catalog: &Catalog,
    who: &Account,
    host: &str,
) -> Result<HostRow, DaemonError> {
    if host.is_empty() {
        return Err(DaemonError::invalid("host is required"));
    }
    let allowed = catalog.may_use_host(who, host).await?;
    let row = match catalog.host(host).await {
        Ok(h) if allowed => h,
        Ok(_) | Err(CatalogError::NotFound(_)) => {
            return Err(DaemonError::not_found(format!(
                "host {host:?} is not registered or not available to account {}",
                who.name
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if !crate::dispatch::Dispatcher::alive(&row) {
        return Err(DaemonError::unavailable(format!(
            "host {host} has not sent a heartbeat for {} s; its agent is down",
            crate::catalog::now() - row.last_heartbeat_unix
        )));
    }
    Ok(row)
}

/// A new id for an operation or image.
fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
