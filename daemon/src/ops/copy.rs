//! Copies of an image between sites' stores, and removing a site's copy.

use imprint_proto::v1 as pb;

use super::{Ops, new_id};
use crate::{
    catalog::site_of_host,
    catalog::{Account, HostRow, ImageRow, LocationRow, NewOperation, OperationRow, SiteRow},
    dispatch::{AgentRequest, Dispatcher},
    domain::{LocationState, OpKind},
    error::DaemonError,
    spec::CopySpec,
};

impl Ops {
    /// Copy an image of `who` to the site `s` names.
    pub async fn copy(&self, who: &Account, s: CopySpec) -> Result<OperationRow, DaemonError> {
        if let Some(op) = self
            .replay(who, s.request_id.as_deref(), OpKind::Copy)
            .await?
        {
            return Ok(op);
        }
        let img = self.catalog().owned_image(who, &s.image_id).await?;
        if !img.state.deployable() {
            return Err(DaemonError::wrong_state(format!(
                "image {} is {}; only active or deprecated images can be copied",
                img.id, img.state
            )));
        }
        s.check_site()?;
        let target = self.catalog().site(&s.site).await?;
        let locations = self.catalog().locations(&img.id).await?;
        if let Some(l) = locations.iter().find(|l| l.site == target.name) {
            return Err(DaemonError::exists(format!(
                "image {} is at site {} already ({})",
                img.id, l.site, l.state
            )));
        }
        let source = self.copy_source(&img, &locations, &target).await?;
        let host = self.copy_host(&target).await?;
        let op_id = new_id();
        let agent_req = AgentRequest::Copy(pb::CopyRequest {
            operation_id: op_id.clone(),
            image_id: img.id.clone(),
            source_store: source.store.clone(),
            target_store: target.store.clone(),
        });
        let encoded = agent_req.encode();
        let n = NewOperation {
            account_id: &who.id,
            request_id: s.request_id.as_deref(),
            kind: OpKind::Copy,
            image_id: Some(&img.id),
            host: &host.name,
            // The target site, for the operation's readers.
            guest: &target.name,
            agent_request: &encoded,
            new_image: None,
        };
        let (op, new) = self.catalog().begin_operation_with_id(&op_id, &n).await?;
        if !new {
            return Ok(op);
        }
        if let Err(e) = self
            .catalog()
            .add_location(&img.id, &target.name, LocationState::Copying, &op.id)
            .await
        {
            let _ = self.catalog().undo_operation(&op.id).await;
            return Err(e.into());
        }
        let op = match self.d.dispatch(op, &agent_req).await {
            Ok(op) => op,
            Err(e) => {
                // Refused: the operation is gone; so goes its location.
                let _ = self.catalog().remove_location(&img.id, &target.name).await;
                return Err(e);
            }
        };
        tracing::info!(op = %op.id, image = %img.id, from = %source.name, to = %target.name, host = %host.name, "copy started");
        Ok(op)
    }

    /// Where a copy reads from: any complete copy. A site whose store is
    /// the target's under another name is the same store: nothing to copy.
    async fn copy_source(
        &self,
        img: &ImageRow,
        locations: &[LocationRow],
        target: &SiteRow,
    ) -> Result<SiteRow, DaemonError> {
        let mut source = None;
        for l in locations
            .iter()
            .filter(|l| l.state == LocationState::Available)
        {
            let site = self.catalog().site(&l.site).await?;
            let same = match (
                imprint_store::Location::parse(&site.store),
                imprint_store::Location::parse(&target.store),
            ) {
                (Ok(a), Ok(b)) => a.same_store(&b),
                _ => site.store == target.store,
            };
            if same {
                return Err(DaemonError::invalid(format!(
                    "sites {} and {} use the same store ({}); there is nothing to copy",
                    site.name, target.name, target.store
                )));
            }
            source.get_or_insert(site);
        }
        source.ok_or_else(|| {
            DaemonError::wrong_state(format!(
                "image {} has no complete copy to copy from",
                img.id
            ))
        })
    }

    /// Who runs a copy: any live host at the target site (it writes to its
    /// own store); else any live host that can reach both stores.
    async fn copy_host(&self, target: &SiteRow) -> Result<HostRow, DaemonError> {
        let hosts = self.catalog().hosts().await?;
        hosts
            .iter()
            .filter(|h| Dispatcher::alive(h))
            .find(|h| site_of_host(&h.site) == target.name)
            .or_else(|| hosts.iter().find(|h| Dispatcher::alive(h)))
            .cloned()
            .ok_or_else(|| DaemonError::unavailable("no live host to run the copy on"))
    }

    /// Remove the copy of an image of `who` at `site` (not its last one).
    pub async fn remove_location(
        &self,
        who: &Account,
        image_id: &str,
        site: &str,
    ) -> Result<(), DaemonError> {
        let img = self.catalog().owned_image(who, image_id).await?;
        if !self
            .catalog()
            .locations(&img.id)
            .await?
            .iter()
            .any(|l| l.site == site)
        {
            return Err(DaemonError::not_found(format!(
                "image {} is not stored at site {site:?}",
                img.id
            )));
        }
        // Open the store first: if it cannot be reached, nothing changes.
        let store = self.d.site_store(site).await?;
        // Forget it (deploys stop choosing it) with every check in one
        // transaction, then remove the manifest from that store; its chunks
        // go at that store's next gc.
        self.catalog().begin_remove_location(&img.id, site).await?;
        let id: imprint_store::ImageId = img.id.parse()?;
        let removed = tokio::task::spawn_blocking(move || {
            let r = match store.delete_image(&id) {
                Err(e) if e.kind() != imprint_store::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
            // Whether the copy is still whole (the manifest goes first).
            let intact = store.manifest(&id).is_ok();
            (r, intact)
        })
        .await
        .map_err(|e| DaemonError::internal("the removal task failed").with_source(e))?;
        if let (Err(e), intact) = removed {
            if intact {
                // Keep the catalog true to the store: the copy is still there.
                let _ = self
                    .catalog()
                    .add_location(&img.id, site, LocationState::Available, "")
                    .await;
            }
            let said = format!("site {site}: removing the copy failed: {e}");
            return Err(DaemonError::from(e).reworded(said));
        }
        tracing::info!(image = %img.id, %site, account = %who.name, "image location removed");
        self.d.usage_changed();
        Ok(())
    }
}
