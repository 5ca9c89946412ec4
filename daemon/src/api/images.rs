//! `ImageService`: the image API users and fleet automation call.
//!
//! Every call authenticates first (UNAUTHENTICATED otherwise), then turns
//! its message into a checked spec ([`crate::spec`]) and hands it to
//! [`Ops`] or the catalog. Images the caller cannot see answer NOT_FOUND
//! whatever the call, so ids do not leak; images it sees but does not own
//! answer PERMISSION_DENIED to changes. Mutating calls that take time
//! return an operation at once and accept a request id: a retry with the
//! same id returns the same operation and runs nothing twice.

use std::sync::Arc;

use imprint_proto::v1::{self as pb, image_service_server::ImageService};
use tonic::{Request, Response, Status};

use crate::{
    api::operations::op_to_pb,
    auth,
    catalog::{Account, Catalog, ImageRow, ListQuery, LocationRow, site_of_host, unsigned},
    dispatch::Dispatcher,
    error::DaemonError,
    ops::Ops,
    spec::{
        CaptureSpec, CopySpec, DeleteSpec, DeploySpec, ExportSpec, ImportSpec, LintSpec,
        MembersSpec, UpdateSpec,
    },
};

/// The service.
#[derive(Debug, Clone)]
pub struct Images {
    d: Arc<Dispatcher>,
    ops: Ops,
}

type Answer<T> = Result<Response<T>, Status>;

impl Images {
    /// Over the dispatcher (and its catalog).
    pub fn new(d: Arc<Dispatcher>) -> Self {
        let ops = Ops::new(d.clone());
        Self { d, ops }
    }

    fn catalog(&self) -> &Catalog {
        self.d.catalog()
    }

    async fn image_pb(&self, viewer: &Account, row: ImageRow) -> Result<pb::Image, DaemonError> {
        let members = if row.owner_id == viewer.id {
            self.catalog().members(&row.id).await?
        } else {
            Vec::new()
        };
        let locations = self.catalog().locations(&row.id).await?;
        Ok(image_to_pb(row, members, locations))
    }

    /// The image as `who` sees it after a change.
    async fn get_owned(&self, who: &Account, id: &str) -> Answer<pb::Image> {
        let row = self.catalog().get_image(who, id).await?;
        Ok(Response::new(self.image_pb(who, row).await?))
    }

    /// Share with (or unshare from) named accounts.
    async fn members(&self, req: Request<pb::ShareImageRequest>, share: bool) -> Answer<pb::Image> {
        let who = auth::account(self.catalog(), &req).await?;
        let s = MembersSpec::new(req.into_inner(), share)?;
        if share {
            self.catalog().share(&who, &s.id, &s.accounts).await?;
        } else {
            self.catalog().unshare(&who, &s.id, &s.accounts).await?;
        }
        self.get_owned(&who, &s.id).await
    }

    async fn decide(
        &self,
        req: Request<pb::ShareDecisionRequest>,
        accept: bool,
    ) -> Answer<pb::Image> {
        let who = auth::account(self.catalog(), &req).await?;
        let id = req.into_inner().id;
        self.catalog().decide(&who, &id, accept).await?;
        self.get_owned(&who, &id).await
    }

    async fn publish(
        &self,
        req: Request<pb::PublishImageRequest>,
        public: bool,
    ) -> Answer<pb::Image> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        let id = r.id;
        if public && !r.force {
            let img = self.catalog().owned_image(&who, &id).await?;
            let errors = lint_errors(&img);
            if !errors.is_empty() {
                return Err(DaemonError::wrong_state(format!(
                    "image {id}'s lint found errors ({}): fix them and lint it again, or publish with force",
                    errors.join(", ")
                ))
                .into());
            }
        }
        self.catalog().set_public(&who, &id, public).await?;
        self.get_owned(&who, &id).await
    }

    async fn update(&self, who: &Account, s: UpdateSpec) -> Result<(), DaemonError> {
        if s.changes_hardware() {
            self.catalog()
                .update_image_hardware(
                    who,
                    &s.id,
                    &crate::catalog::HardwareChange {
                        recommended: s.recommended_profiles.as_deref(),
                        min_vcpus: s.min_vcpus,
                        min_memory_mib: s.min_memory_mib,
                        min_disk_bytes: s.min_disk_bytes,
                        hardware: s.hardware.as_ref(),
                    },
                )
                .await?;
        }
        if s.changes_meta() {
            self.catalog()
                .update_image(
                    who,
                    &s.id,
                    s.name.as_deref(),
                    s.notes.as_deref(),
                    s.tags.as_deref(),
                )
                .await?;
        }
        Ok(())
    }
}

/// An operation as the API shows it.
fn operation(op: &crate::catalog::OperationRow) -> Response<pb::Operation> {
    Response::new(op_to_pb(op))
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn capture_image(&self, req: Request<pb::CaptureImageRequest>) -> Answer<pb::Operation> {
        let who = auth::account(self.catalog(), &req).await?;
        let spec = CaptureSpec::try_from(req.into_inner())?;
        Ok(operation(&self.ops.capture(&who, spec).await?))
    }

    async fn deploy_image(&self, req: Request<pb::DeployImageRequest>) -> Answer<pb::Operation> {
        let who = auth::account(self.catalog(), &req).await?;
        let spec = DeploySpec::try_from(req.into_inner())?;
        Ok(operation(&self.ops.deploy(&who, spec).await?))
    }

    async fn import_image(&self, req: Request<pb::ImportImageRequest>) -> Answer<pb::Operation> {
        let who = auth::account(self.catalog(), &req).await?;
        let spec = ImportSpec::try_from(req.into_inner())?;
        Ok(operation(&self.ops.import(&who, spec).await?))
    }

    async fn export_image(&self, req: Request<pb::ExportImageRequest>) -> Answer<pb::Operation> {
        let who = auth::account(self.catalog(), &req).await?;
        let spec = ExportSpec::try_from(req.into_inner())?;
        Ok(operation(&self.ops.export(&who, spec).await?))
    }

    async fn lint_image(&self, req: Request<pb::ImageLintRequest>) -> Answer<pb::Operation> {
        let who = auth::account(self.catalog(), &req).await?;
        let spec = LintSpec::try_from(req.into_inner())?;
        Ok(operation(&self.ops.lint(&who, spec).await?))
    }

    async fn copy_image(&self, req: Request<pb::CopyImageRequest>) -> Answer<pb::Operation> {
        let who = auth::account(self.catalog(), &req).await?;
        let spec = CopySpec::try_from(req.into_inner())?;
        Ok(operation(&self.ops.copy(&who, spec).await?))
    }

    async fn delete_image(&self, req: Request<pb::DeleteImageRequest>) -> Answer<pb::Operation> {
        let who = auth::account(self.catalog(), &req).await?;
        let spec = DeleteSpec::try_from(req.into_inner())?;
        Ok(operation(&self.ops.delete(&who, spec).await?))
    }

    async fn remove_image_location(
        &self,
        req: Request<pb::RemoveImageLocationRequest>,
    ) -> Answer<pb::Image> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        self.ops.remove_location(&who, &r.image_id, &r.site).await?;
        self.get_owned(&who, &r.image_id).await
    }

    async fn list_sites(
        &self,
        req: Request<pb::ListSitesRequest>,
    ) -> Answer<pb::ListSitesResponse> {
        auth::account(self.catalog(), &req).await?;
        let hosts = self.catalog().hosts().await?;
        let sites = self
            .catalog()
            .sites()
            .await?
            .into_iter()
            .map(|s| pb::Site {
                hosts: u32::try_from(
                    hosts
                        .iter()
                        .filter(|h| site_of_host(&h.site) == s.name)
                        .count(),
                )
                .unwrap_or(u32::MAX),
                name: s.name,
                store: s.store,
            })
            .collect();
        Ok(Response::new(pb::ListSitesResponse { sites }))
    }

    async fn get_image(&self, req: Request<pb::GetImageRequest>) -> Answer<pb::Image> {
        let who = auth::account(self.catalog(), &req).await?;
        self.get_owned(&who, &req.into_inner().id).await
    }

    async fn list_images(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Answer<pb::ListImagesResponse> {
        let who = auth::account(self.catalog(), &req).await?;
        let q = ListQuery::try_from(req.into_inner())?;
        let (rows, next) = self.catalog().list_images(&who, &q).await?;
        // Members of the caller's own images, one query for the page.
        let own: Vec<String> = rows
            .iter()
            .filter(|r| r.owner_id == who.id)
            .map(|r| r.id.clone())
            .collect();
        let mut members = self.catalog().members_of(&own).await?;
        let all: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let mut locations = self.catalog().locations_of(&all).await?;
        let images = rows
            .into_iter()
            .map(|row| {
                let m = members.remove(&row.id).unwrap_or_default();
                let l = locations.remove(&row.id).unwrap_or_default();
                image_to_pb(row, m, l)
            })
            .collect();
        Ok(Response::new(pb::ListImagesResponse {
            images,
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn update_image(&self, req: Request<pb::UpdateImageRequest>) -> Answer<pb::Image> {
        let who = auth::account(self.catalog(), &req).await?;
        let spec = UpdateSpec::try_from(req.into_inner())?;
        self.update(&who, spec.clone()).await?;
        self.get_owned(&who, &spec.id).await
    }

    async fn set_protected(&self, req: Request<pb::SetProtectedRequest>) -> Answer<pb::Image> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        self.catalog()
            .set_protected(&who, &r.id, r.protected)
            .await?;
        self.get_owned(&who, &r.id).await
    }

    async fn deprecate_image(&self, req: Request<pb::DeprecateImageRequest>) -> Answer<pb::Image> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        self.catalog()
            .set_deprecated(&who, &r.id, r.deprecated)
            .await?;
        self.get_owned(&who, &r.id).await
    }

    async fn share_image(&self, req: Request<pb::ShareImageRequest>) -> Answer<pb::Image> {
        self.members(req, true).await
    }

    async fn unshare_image(&self, req: Request<pb::ShareImageRequest>) -> Answer<pb::Image> {
        self.members(req, false).await
    }

    async fn accept_share(&self, req: Request<pb::ShareDecisionRequest>) -> Answer<pb::Image> {
        self.decide(req, true).await
    }

    async fn reject_share(&self, req: Request<pb::ShareDecisionRequest>) -> Answer<pb::Image> {
        self.decide(req, false).await
    }

    async fn publish_image(&self, req: Request<pb::PublishImageRequest>) -> Answer<pb::Image> {
        self.publish(req, true).await
    }

    async fn unpublish_image(&self, req: Request<pb::PublishImageRequest>) -> Answer<pb::Image> {
        self.publish(req, false).await
    }
}

/// The codes of the errors an image's kept lint report found.
fn lint_errors(img: &ImageRow) -> Vec<String> {
    img.lint_report()
        .map(|r| {
            r.findings
                .into_iter()
                .filter(|f| f.severity == pb::LintSeverity::Error as i32)
                .map(|f| f.code)
                .collect()
        })
        .unwrap_or_default()
}

/// The API's view of a catalog row.
pub fn image_to_pb(
    row: ImageRow,
    members: Vec<(String, String)>,
    locations: Vec<LocationRow>,
) -> pb::Image {
    let disks = row
        .disks()
        .into_iter()
        .map(|d| pb::ImageDisk {
            name: d.name,
            size_bytes: d.size_bytes,
            sha256: d.sha256,
        })
        .collect();
    let lint = row.lint_report();
    pb::Image {
        state: pb::ImageState::from(row.state) as i32,
        visibility: pb::Visibility::from(row.visibility) as i32,
        id: row.id,
        name: row.name,
        notes: row.notes,
        tags: row.tags,
        owner: row.owner,
        protected: row.protected,
        failure_reason: row.failure_reason,
        source_host: row.source_host,
        source_guest: row.source_guest,
        disks,
        size_bytes: unsigned(row.size_bytes),
        exclusive_bytes: unsigned(row.exclusive_bytes),
        config_json: row.config_json,
        damage: row.damage,
        recommended_profiles: row
            .recommended_profiles
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        min_vcpus: u32::try_from(row.min_vcpus).unwrap_or(0),
        min_memory_mib: unsigned(row.min_memory_mib),
        min_disk_bytes: unsigned(row.min_disk_bytes),
        sealed: row.sealed,
        hardware: crate::catalog::decode_profile(&row.hardware).ok().flatten(),
        lint,
        linted_unix: row.linted_unix,
        members: members
            .into_iter()
            .map(|(account, status)| pb::ShareMember { account, status })
            .collect(),
        created_unix: row.created_unix,
        updated_unix: row.updated_unix,
        locations: locations
            .into_iter()
            .map(|l| pb::ImageLocation {
                state: pb::LocationState::from(l.state) as i32,
                site: l.site,
            })
            .collect(),
    }
}
