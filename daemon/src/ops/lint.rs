//! Lints: an agent reads an image, without booting it, for what its
//! deploys will meet; the report is kept with the image.

use super::Ops;
use crate::{
    catalog::{Account, OperationRow},
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
        self.d
            .start_lint(&who.id, s.request_id.as_deref(), &img.id, &host)
            .await
    }
}
