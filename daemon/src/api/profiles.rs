//! Hardware profiles (flavors) and `ProfileService`.
//!
//! A profile is a named [`pb::HardwareProfile`] an admin defines; deploys
//! and imports name one. The catalog keeps the message itself (protobuf,
//! hex), so its fields are defined once, in the proto. Checking a profile
//! against an image (its minimums, UEFI without an EFI system partition)
//! happens where deploys are checked: minimums here, before any row is
//! written; the firmware on the agent, which knows the disk.

use imprint_proto::{hardware::Hardware, v1 as pb, v1::profile_service_server::ProfileService};
use tonic::{Request, Response, Status};

use crate::{
    auth,
    catalog::{Account, Catalog},
    error::DaemonError,
};

/// The service.
#[derive(Debug, Clone)]
pub struct Profiles {
    catalog: Catalog,
}

impl Profiles {
    /// Over `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        Self { catalog }
    }

    async fn admin<T>(&self, req: &Request<T>) -> std::result::Result<Account, DaemonError> {
        auth::admin(&self.catalog, req, "define profiles").await
    }
}

#[tonic::async_trait]
impl ProfileService for Profiles {
    async fn create_profile(
        &self,
        req: Request<pb::HardwareProfile>,
    ) -> std::result::Result<Response<pb::HardwareProfile>, Status> {
        let who = self.admin(&req).await?;
        let p = req.into_inner();
        let h = Hardware::complete(&p).map_err(DaemonError::invalid)?;
        let stored = pb::HardwareProfile {
            description: p.description.clone(),
            serial_console: Some(h.serial_console.unwrap_or(true)),
            ..h.to_pb()
        };
        let created = self.catalog.create_profile(&stored).await?;
        tracing::info!(profile = %p.name, by = %who.name, "profile created");
        Ok(Response::new(created))
    }

    async fn get_profile(
        &self,
        req: Request<pb::GetProfileRequest>,
    ) -> std::result::Result<Response<pb::HardwareProfile>, Status> {
        auth::account(&self.catalog, &req).await?;
        let p = self.catalog.profile(&req.into_inner().name).await?;
        Ok(Response::new(p))
    }

    async fn list_profiles(
        &self,
        req: Request<pb::ListProfilesRequest>,
    ) -> std::result::Result<Response<pb::ListProfilesResponse>, Status> {
        auth::account(&self.catalog, &req).await?;
        let profiles = self.catalog.profiles().await?;
        Ok(Response::new(pb::ListProfilesResponse { profiles }))
    }

    async fn delete_profile(
        &self,
        req: Request<pb::GetProfileRequest>,
    ) -> std::result::Result<Response<pb::HardwareProfile>, Status> {
        let who = self.admin(&req).await?;
        let name = req.into_inner().name;
        let p = self.catalog.delete_profile(&name).await?;
        tracing::info!(profile = %name, by = %who.name, "profile deleted");
        Ok(Response::new(p))
    }
}
