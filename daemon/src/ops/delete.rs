//! Deleting an image: no agent; the daemon removes the manifests from the
//! stores (the chunks go at gc) and marks the image deleted.

use super::{Ops, new_id};
use crate::{
    catalog::{Account, NewOperation, OperationRow},
    domain::OpKind,
    error::DaemonError,
    spec::DeleteSpec,
};

impl Ops {
    /// Delete an image of `who`; returns the finished operation.
    pub async fn delete(&self, who: &Account, s: DeleteSpec) -> Result<OperationRow, DaemonError> {
        if let Some(op) = self
            .replay(who, s.request_id.as_deref(), OpKind::Delete)
            .await?
        {
            return Ok(op);
        }
        if self.d.store().is_none() {
            // Checked after visibility so it leaks nothing.
            self.catalog().owned_image(who, &s.image_id).await?;
            return Err(DaemonError::wrong_state(
                "this daemon was started without --store, so it cannot remove images from the store",
            ));
        }
        let prior = self.catalog().begin_delete(who, &s.image_id).await?;
        let marker = format!("prior:{prior}");
        let n = NewOperation {
            account_id: &who.id,
            request_id: s.request_id.as_deref(),
            kind: OpKind::Delete,
            image_id: Some(&s.image_id),
            host: "",
            guest: "",
            agent_request: &marker,
            new_image: None,
        };
        let op: OperationRow = match self.catalog().begin_operation_with_id(&new_id(), &n).await {
            Ok((op, _)) => op,
            Err(e) => {
                let _ = self.catalog().revert_deleting(&s.image_id, prior).await;
                return Err(e.into());
            }
        };
        // In its own task: a client that hangs up does not stop it halfway.
        if let Some(task) = self.d.spawn_follower(op.clone()) {
            task.await
                .map_err(|e| DaemonError::internal("the delete task failed").with_source(e))?;
        }
        tracing::info!(op = %op.id, image = %s.image_id, account = %who.name, "image deleted");
        Ok(self.catalog().operation(&op.id).await?)
    }
}
