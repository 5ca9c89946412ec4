//! Deleting a guest: its agent forces it off, deletes the pool volumes of
//! its disks and undefines it; on success its ownership record goes
//! (see `dispatch::follow`).

use imprint_proto::v1 as pb;

use super::{Ops, new_id};
use crate::{
    catalog::{Account, NewOperation, OperationRow, guest_not_found},
    dispatch::AgentRequest,
    domain::OpKind,
    error::{DaemonError, ErrorKind},
    spec::DeleteGuestSpec,
};

impl Ops {
    /// Delete the guest `s` names, which `who` must own (admins: any).
    /// A guest `who` cannot see answers NOT_FOUND like a missing one; one
    /// a capture, deploy or delete works on, FAILED_PRECONDITION.
    pub async fn delete_guest(
        &self,
        who: &Account,
        s: DeleteGuestSpec,
    ) -> Result<OperationRow, DaemonError> {
        if let Some(op) = self
            .replay(who, s.request_id.as_deref(), OpKind::DeleteGuest)
            .await?
        {
            return Ok(op);
        }
        let host = super::usable_host(self.catalog(), who, &s.host).await?;
        let guest = self
            .d
            .agent(&host)?
            .get_guest(pb::GetGuestRequest {
                guest: s.guest.clone(),
            })
            .await
            .map_err(|e| DaemonError::from_agent(&host.name, e))
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => guest_not_found(&host.name, &s.guest).into(),
                _ => e,
            })?
            .into_inner();
        self.catalog()
            .check_guest_owner(who, &host.name, &guest.uuid, &s.guest)
            .await?;
        // A deploy making a guest of that name is not over: the guest is
        // its to remove if it fails. (Running captures and deletes are
        // refused when the row is made, under a unique index.)
        if let Some(other) = self
            .catalog()
            .running_deploy_of(&host.name, &guest.name)
            .await?
        {
            return Err(DaemonError::wrong_state(format!(
                "guest {} on host {} is being deployed by operation {other}; wait for it or cancel it",
                guest.name, host.name
            )));
        }
        let op_id = new_id();
        let agent_req = AgentRequest::DeleteGuest(pb::DeleteGuestAgentRequest {
            operation_id: op_id.clone(),
            guest: guest.uuid.clone(),
        });
        let encoded = agent_req.encode();
        let n = NewOperation {
            account_id: &who.id,
            request_id: s.request_id.as_deref(),
            kind: OpKind::DeleteGuest,
            image_id: None,
            host: &host.name,
            guest: &guest.uuid,
            agent_request: &encoded,
            new_image: None,
        };
        let op = self.start(&op_id, &n, &agent_req).await?;
        tracing::info!(op = %op.id, host = %host.name, guest = %guest.name, uuid = %guest.uuid, by = %who.name, "guest delete started");
        Ok(op)
    }
}
