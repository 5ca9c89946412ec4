//! Lints: an agent reads an image, without booting it, for what its
//! deploys will meet; the report is kept with the image.

use imprint_proto::v1 as pb;

use super::{Ops, new_id};
use crate::{
    catalog::{Account, NewOperation, OperationRow},
    dispatch::AgentRequest,
    domain::OpKind,
    error::DaemonError,
    spec::LintSpec,
};

impl Ops {
    /// Lint the image `s` names on a host the caller may use.
    pub async fn lint(&self, who: &Account, s: LintSpec) -> Result<OperationRow, DaemonError> {
        if let Some(op) = self
            .replay(who, s.request_id.as_deref(), OpKind::Lint)
            .await?
        {
            return Ok(op);
        }
        let img = self.readable(who, &s.image_id, "linted").await?;
        let host = super::usable_host(self.catalog(), who, &s.host).await?;
        let op_id = new_id();
        let agent_req = AgentRequest::Lint(pb::LintImageRequest {
            operation_id: op_id.clone(),
            image_id: img.id.clone(),
            store: self.d.source_store(&img.id, &host).await?,
        });
        let encoded = agent_req.encode();
        let n = NewOperation {
            account_id: &who.id,
            request_id: s.request_id.as_deref(),
            kind: OpKind::Lint,
            image_id: Some(&img.id),
            host: &host.name,
            guest: "",
            agent_request: &encoded,
            new_image: None,
        };
        self.start(&op_id, &n, &agent_req).await
    }
}
