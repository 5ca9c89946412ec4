//! Import: a file on a host (or a URL) into a new image.

use imprint_proto::{hardware::Hardware, v1 as pb};

use super::{Ops, new_id};
use crate::{
    catalog::{Account, NewImage, NewOperation, OperationRow},
    dispatch::AgentRequest,
    domain::OpKind,
    error::DaemonError,
    spec::ImportSpec,
};

impl Ops {
    /// Import the file `s` names as a new image owned by `who`.
    pub async fn import(&self, who: &Account, s: ImportSpec) -> Result<OperationRow, DaemonError> {
        if let Some(op) = self
            .replay(who, s.request_id.as_deref(), OpKind::Import)
            .await?
        {
            return Ok(op);
        }
        // The imported image's hardware: the profile, then inline fields.
        let base = if s.profile.is_empty() {
            Hardware::default()
        } else {
            let p = self.catalog().profile(&s.profile).await?;
            Hardware::try_from(&p).map_err(DaemonError::wrong_state)?
        };
        let hardware = base.overlaid(&s.hardware).to_pb();
        let host = super::usable_host(self.catalog(), who, &s.host).await?;
        let image_id = new_id();
        let op_id = new_id();
        let agent_req = AgentRequest::Import(pb::ImportRequest {
            operation_id: op_id.clone(),
            path: s.path.clone(),
            format: s.format,
            image_name: s.meta.name.clone(),
            image_id: image_id.clone(),
            hardware: Some(hardware),
            refused_paths: self
                .catalog()
                .exported_paths_of_others(&host.name, &who.id)
                .await?,
        });
        let encoded = agent_req.encode();
        let n = NewOperation {
            account_id: &who.id,
            request_id: s.request_id.as_deref(),
            kind: OpKind::Import,
            image_id: None,
            host: &host.name,
            guest: "",
            agent_request: &encoded,
            new_image: Some(NewImage {
                id: &image_id,
                name: &s.meta.name,
                notes: &s.meta.notes,
                tags: &s.meta.tags,
                source_host: &host.name,
                source_guest: &s.path,
            }),
        };
        self.start(&op_id, &n, &agent_req).await
    }
}
