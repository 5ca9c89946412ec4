//! Capture: a guest into a new image.

use imprint_proto::v1 as pb;

use super::{Ops, new_id};
use crate::{
    catalog::{Account, NewImage, NewOperation, OperationRow, guest_not_found},
    dispatch::AgentRequest,
    domain::OpKind,
    error::{DaemonError, ErrorKind},
    spec::CaptureSpec,
};

impl Ops {
    /// Capture the guest `s` names into a new image owned by `who`.
    pub async fn capture(
        &self,
        who: &Account,
        s: CaptureSpec,
    ) -> Result<OperationRow, DaemonError> {
        if let Some(op) = self
            .replay(who, s.request_id.as_deref(), OpKind::Capture)
            .await?
        {
            return Ok(op);
        }
        let host = super::usable_host(self.catalog(), who, &s.host).await?;
        // The guest must exist now; it is named by its UUID from here on, so
        // two captures of it conflict however it was named.
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
        let image_id = new_id();
        let op_id = new_id();
        let agent_req = AgentRequest::Capture(pb::CaptureRequest {
            operation_id: op_id.clone(),
            guest: guest.uuid.clone(),
            image_name: s.meta.name.clone(),
            exclude_disks: s.exclude_disks,
            shutdown_timeout_seconds: s.shutdown_timeout_seconds,
            allow_force_off: s.allow_force_off,
            labels: [("imprint.owner".to_string(), who.name.clone())].into(),
            image_id: image_id.clone(),
            mode: s.mode.into(),
            freeze_timeout_seconds: s.freeze_timeout_seconds,
            seal: s.seal,
        });
        let encoded = agent_req.encode();
        let n = NewOperation {
            account_id: &who.id,
            request_id: s.request_id.as_deref(),
            kind: OpKind::Capture,
            image_id: None,
            host: &host.name,
            guest: &guest.uuid,
            agent_request: &encoded,
            new_image: Some(NewImage {
                id: &image_id,
                name: &s.meta.name,
                notes: &s.meta.notes,
                tags: &s.meta.tags,
                source_host: &host.name,
                source_guest: &guest.name,
            }),
        };
        self.start(&op_id, &n, &agent_req).await
    }
}
