//! `ImageService`: the image API users and fleet automation call.
//!
//! Every call authenticates first (UNAUTHENTICATED otherwise). Images the
//! caller cannot see answer NOT_FOUND whatever the call, so ids do not
//! leak; images it sees but does not own answer PERMISSION_DENIED to
//! changes. Mutating calls that take time return an operation at once and
//! accept a request id: a retry with the same id returns the same
//! operation and runs nothing twice.

use std::sync::Arc;

use imprint_proto::v1::{self as pb, image_service_server::ImageService};
use tonic::{Request, Response, Status};

use crate::{
    auth,
    catalog::{
        Account, Catalog, ImageRow, ListQuery, validate_image_name, validate_notes, validate_tags,
    },
    catalog::{LocationRow, site_of_host},
    catalog::{NewImage, NewOperation, OperationRow},
    dispatch::{AgentRequest, Dispatcher},
    domain::{ImageState, LocationState, OpKind},
    error::status,
    operations::op_to_pb,
};

/// The service.
#[derive(Debug, Clone)]
pub struct Images {
    d: Arc<Dispatcher>,
}

impl Images {
    /// Over the dispatcher (and its catalog).
    pub fn new(d: Arc<Dispatcher>) -> Self {
        Self { d }
    }

    fn catalog(&self) -> &Catalog {
        self.d.catalog()
    }

    async fn image_pb(&self, viewer: &Account, row: ImageRow) -> Result<pb::Image, Status> {
        let members = if row.owner_id == viewer.id {
            self.catalog().members(&row.id).await.map_err(status)?
        } else {
            Vec::new()
        };
        let locations = self.catalog().locations(&row.id).await.map_err(status)?;
        Ok(image_to_pb(row, members, locations))
    }

    /// The operation an earlier call with this request id started.
    async fn replay(
        &self,
        who: &Account,
        request_id: &str,
        kind: OpKind,
    ) -> Result<Option<pb::Operation>, Status> {
        if request_id.is_empty() {
            return Ok(None);
        }
        if request_id.len() > 128 {
            return Err(Status::invalid_argument(
                "request_id is longer than 128 characters",
            ));
        }
        match self
            .catalog()
            .operation_for_request(&who.id, request_id)
            .await
            .map_err(status)?
        {
            Some(op) if op.kind == kind => Ok(Some(op_to_pb(&op))),
            Some(op) => Err(Status::already_exists(format!(
                "request id {request_id:?} was already used for a {} operation",
                op.kind
            ))),
            None => Ok(None),
        }
    }
}

/// A listing's state filter: none, or an image state.
fn state_filter(s: i32) -> Result<Option<ImageState>, Status> {
    match pb::ImageState::try_from(s) {
        Ok(pb::ImageState::Unspecified) => Ok(None),
        Ok(pb) => ImageState::try_from(pb)
            .map(Some)
            .map_err(|e| Status::invalid_argument(e.to_string())),
        Err(_) => Err(Status::invalid_argument(format!("unknown image state {s}"))),
    }
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
        size_bytes: row.size_bytes.max(0) as u64,
        exclusive_bytes: row.exclusive_bytes.max(0) as u64,
        config_json: row.config_json,
        damage: row.damage,
        recommended_profiles: row
            .recommended_profiles
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        min_vcpus: row.min_vcpus.max(0) as u32,
        min_memory_mib: row.min_memory_mib.max(0) as u64,
        hardware: crate::profiles::decode(&row.hardware).ok().flatten(),
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

/// libvirt domain names we accept for new guests.
fn validate_guest_name(name: &str) -> Result<(), Status> {
    imprint_proto::limits::check_guest_name(name).map_err(Status::invalid_argument)
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn capture_image(
        &self,
        req: Request<pb::CaptureImageRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        if let Some(op) = self.replay(&who, &r.request_id, OpKind::Capture).await? {
            return Ok(Response::new(op));
        }
        validate_image_name(&r.name).map_err(status)?;
        validate_notes(&r.notes).map_err(status)?;
        validate_tags(&r.tags).map_err(status)?;
        if r.guest.is_empty() {
            return Err(Status::invalid_argument("guest is required"));
        }
        if r.shutdown_timeout_seconds > 86_400 {
            return Err(Status::invalid_argument(
                "shutdown_timeout_seconds is more than a day",
            ));
        }
        let mode = pb::CaptureMode::try_from(r.mode).map_err(|_| {
            Status::invalid_argument(format!("capture mode {} is not a CaptureMode", r.mode))
        })?;
        if r.freeze_timeout_seconds > 3_600 {
            return Err(Status::invalid_argument(
                "freeze_timeout_seconds is more than an hour",
            ));
        }
        if r.freeze_timeout_seconds != 0 && mode != pb::CaptureMode::Live {
            return Err(Status::invalid_argument(
                "freeze_timeout_seconds is for live captures (mode LIVE)",
            ));
        }
        let host = crate::hosts::usable_host(self.catalog(), &who, &r.host).await?;
        // The guest must exist now; it is named by its UUID from here on, so
        // two captures of it conflict however it was named.
        let mut agent = self.d.agent(&host)?;
        let guest = agent
            .get_guest(pb::GetGuestRequest {
                guest: r.guest.clone(),
            })
            .await
            .map_err(|e| match e.code() {
                tonic::Code::NotFound => crate::guests::guest_not_found(&host.name, &r.guest),
                _ => Status::new(e.code(), format!("host {}: {}", host.name, e.message())),
            })?
            .into_inner();
        crate::guests::check_owner(self.catalog(), &who, &host.name, &guest, &r.guest).await?;
        let image_id = uuid::Uuid::new_v4().to_string();
        let op_id = uuid::Uuid::new_v4().to_string();
        let agent_req = AgentRequest::Capture(pb::CaptureRequest {
            operation_id: op_id.clone(),
            guest: guest.uuid.clone(),
            image_name: r.name.clone(),
            exclude_disks: r.exclude_disks.clone(),
            shutdown_timeout_seconds: r.shutdown_timeout_seconds,
            allow_force_off: r.allow_force_off,
            labels: [("imprint.owner".to_string(), who.name.clone())].into(),
            image_id: image_id.clone(),
            mode: mode.into(),
            freeze_timeout_seconds: r.freeze_timeout_seconds,
        });
        let encoded = agent_req.encode();
        let n = NewOperation {
            account_id: &who.id,
            request_id: Some(r.request_id.as_str()).filter(|s| !s.is_empty()),
            kind: OpKind::Capture,
            image_id: None,
            host: &host.name,
            guest: &guest.uuid,
            agent_request: &encoded,
            new_image: Some(NewImage {
                id: &image_id,
                name: &r.name,
                notes: &r.notes,
                tags: &r.tags,
                source_host: &host.name,
                source_guest: &guest.name,
            }),
        };
        self.start(&op_id, &n, &agent_req).await
    }

    async fn deploy_image(
        &self,
        req: Request<pb::DeployImageRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        if let Some(op) = self.replay(&who, &r.request_id, OpKind::Deploy).await? {
            return Ok(Response::new(op));
        }
        let img = self.readable(&who, &r.image_id, "deployed").await?;
        validate_guest_name(&r.guest_name)?;
        let disks = img.disks();
        if r.disk_sizes_bytes.len() > disks.len() {
            return Err(Status::invalid_argument(format!(
                "{} disk sizes given; image {} has {} disk(s)",
                r.disk_sizes_bytes.len(),
                img.id,
                disks.len()
            )));
        }
        for (i, (want, d)) in r.disk_sizes_bytes.iter().zip(&disks).enumerate() {
            if *want != 0 && *want < d.size_bytes {
                return Err(Status::invalid_argument(format!(
                    "disk {i} ({}) size {want} bytes is smaller than the image's {} bytes",
                    d.name, d.size_bytes
                )));
            }
        }
        if r.vcpus > 1024 {
            return Err(Status::invalid_argument(format!(
                "{} vCPUs is more than 1024",
                r.vcpus
            )));
        }
        if r.memory_mib != 0 && !(16..=16 << 20).contains(&r.memory_mib) {
            return Err(Status::invalid_argument(format!(
                "memory_mib {} must be between 16 MiB and 16 TiB",
                r.memory_mib
            )));
        }
        imprint_proto::limits::check_user_data(&r.user_data).map_err(Status::invalid_argument)?;
        let hardware = crate::profiles::deploy_hardware(
            self.catalog(),
            &img,
            &r.profile,
            r.vcpus,
            r.memory_mib,
        )
        .await?;
        let host = crate::hosts::usable_host(self.catalog(), &who, &r.host).await?;
        let op_id = uuid::Uuid::new_v4().to_string();
        let agent_req = AgentRequest::Deploy(pb::DeployRequest {
            operation_id: op_id.clone(),
            image_id: img.id.clone(),
            guest_name: r.guest_name.clone(),
            pool: r.pool,
            disk_format: r.disk_format,
            disk_sizes_bytes: r.disk_sizes_bytes,
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            network: r.network,
            hardware,
            user_data: r.user_data,
            start: r.start,
            store: self.d.source_store(&img.id, &host).await?,
        });
        let encoded = agent_req.encode();
        let n = NewOperation {
            account_id: &who.id,
            request_id: Some(r.request_id.as_str()).filter(|s| !s.is_empty()),
            kind: OpKind::Deploy,
            image_id: Some(&img.id),
            host: &host.name,
            guest: &r.guest_name,
            agent_request: &encoded,
            new_image: None,
        };
        self.start(&op_id, &n, &agent_req).await
    }

    async fn import_image(
        &self,
        req: Request<pb::ImportImageRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        if let Some(op) = self.replay(&who, &r.request_id, OpKind::Import).await? {
            return Ok(Response::new(op));
        }
        validate_image_name(&r.name).map_err(status)?;
        validate_notes(&r.notes).map_err(status)?;
        validate_tags(&r.tags).map_err(status)?;
        if r.path.is_empty() {
            return Err(Status::invalid_argument("path is required"));
        }
        // The imported image's hardware: the profile, then inline fields.
        let inline = r
            .hardware
            .as_ref()
            .map(imprint_proto::hardware::Hardware::try_from)
            .transpose()
            .map_err(Status::invalid_argument)?
            .unwrap_or_default();
        let base = if r.profile.is_empty() {
            imprint_proto::hardware::Hardware::default()
        } else {
            let p = self.catalog().profile(&r.profile).await.map_err(status)?;
            imprint_proto::hardware::Hardware::try_from(&p).map_err(Status::failed_precondition)?
        };
        let hardware = base.overlaid(&inline).to_pb();
        let host = crate::hosts::usable_host(self.catalog(), &who, &r.host).await?;
        let image_id = uuid::Uuid::new_v4().to_string();
        let op_id = uuid::Uuid::new_v4().to_string();
        let agent_req = AgentRequest::Import(pb::ImportRequest {
            operation_id: op_id.clone(),
            path: r.path.clone(),
            format: r.format,
            image_name: r.name.clone(),
            image_id: image_id.clone(),
            hardware: Some(hardware),
            refused_paths: self
                .catalog()
                .exported_paths_of_others(&host.name, &who.id)
                .await
                .map_err(status)?,
        });
        let encoded = agent_req.encode();
        let n = NewOperation {
            account_id: &who.id,
            request_id: Some(r.request_id.as_str()).filter(|s| !s.is_empty()),
            kind: OpKind::Import,
            image_id: None,
            host: &host.name,
            guest: "",
            agent_request: &encoded,
            new_image: Some(NewImage {
                id: &image_id,
                name: &r.name,
                notes: &r.notes,
                tags: &r.tags,
                source_host: &host.name,
                source_guest: &r.path,
            }),
        };
        self.start(&op_id, &n, &agent_req).await
    }

    async fn export_image(
        &self,
        req: Request<pb::ExportImageRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        if let Some(op) = self.replay(&who, &r.request_id, OpKind::Export).await? {
            return Ok(Response::new(op));
        }
        let img = self.readable(&who, &r.image_id, "exported").await?;
        if r.disk as usize >= img.disks().len() {
            return Err(Status::invalid_argument(format!(
                "image {} has {} disk(s); there is no disk {}",
                img.id,
                img.disks().len(),
                r.disk
            )));
        }
        if r.path.is_empty() {
            return Err(Status::invalid_argument("path is required"));
        }
        let host = crate::hosts::usable_host(self.catalog(), &who, &r.host).await?;
        let op_id = uuid::Uuid::new_v4().to_string();
        let agent_req = AgentRequest::Export(pb::ExportRequest {
            operation_id: op_id.clone(),
            image_id: img.id.clone(),
            disk: r.disk,
            path: r.path.clone(),
            format: r.format,
            store: self.d.source_store(&img.id, &host).await?,
        });
        let encoded = agent_req.encode();
        let n = NewOperation {
            account_id: &who.id,
            request_id: Some(r.request_id.as_str()).filter(|s| !s.is_empty()),
            kind: OpKind::Export,
            image_id: Some(&img.id),
            host: &host.name,
            guest: "",
            agent_request: &encoded,
            new_image: None,
        };
        self.start(&op_id, &n, &agent_req).await
    }

    async fn copy_image(
        &self,
        req: Request<pb::CopyImageRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        if let Some(op) = self.replay(&who, &r.request_id, OpKind::Copy).await? {
            return Ok(Response::new(op));
        }
        let img = self
            .catalog()
            .owned_image(&who, &r.image_id)
            .await
            .map_err(status)?;
        if !img.state.deployable() {
            return Err(Status::failed_precondition(format!(
                "image {} is {}; only active or deprecated images can be copied",
                img.id, img.state
            )));
        }
        crate::catalog::validate_site_name(&r.site).map_err(status)?;
        let target = self.catalog().site(&r.site).await.map_err(status)?;
        let locations = self.catalog().locations(&img.id).await.map_err(status)?;
        if let Some(l) = locations.iter().find(|l| l.site == target.name) {
            return Err(Status::already_exists(format!(
                "image {} is at site {} already ({})",
                img.id, l.site, l.state
            )));
        }
        // The source: any complete copy; a site whose store is the target's
        // store under another name is the same store.
        let mut source = None;
        for l in locations
            .iter()
            .filter(|l| l.state == LocationState::Available)
        {
            let site = self.catalog().site(&l.site).await.map_err(status)?;
            let same = match (
                imprint_store::Location::parse(&site.store),
                imprint_store::Location::parse(&target.store),
            ) {
                (Ok(a), Ok(b)) => a.same_store(&b),
                _ => site.store == target.store,
            };
            if same {
                return Err(Status::invalid_argument(format!(
                    "sites {} and {} use the same store ({}); there is nothing to copy",
                    site.name, target.name, target.store
                )));
            }
            source.get_or_insert(site);
        }
        let source = source.ok_or_else(|| {
            Status::failed_precondition(format!(
                "image {} has no complete copy to copy from",
                img.id
            ))
        })?;
        // Any live host at the target site does it (it writes to its own
        // store); else any live host that can reach both stores.
        let hosts = self.catalog().hosts().await.map_err(status)?;
        let host = hosts
            .iter()
            .filter(|h| Dispatcher::alive(h))
            .find(|h| site_of_host(&h.site) == target.name)
            .or_else(|| hosts.iter().find(|h| Dispatcher::alive(h)))
            .cloned()
            .ok_or_else(|| Status::unavailable("no live host to run the copy on"))?;
        let op_id = uuid::Uuid::new_v4().to_string();
        let agent_req = AgentRequest::Copy(pb::CopyRequest {
            operation_id: op_id.clone(),
            image_id: img.id.clone(),
            source_store: source.store.clone(),
            target_store: target.store.clone(),
        });
        let encoded = agent_req.encode();
        let n = NewOperation {
            account_id: &who.id,
            request_id: Some(r.request_id.as_str()).filter(|s| !s.is_empty()),
            kind: OpKind::Copy,
            image_id: Some(&img.id),
            host: &host.name,
            // The target site, for the operation's readers.
            guest: &target.name,
            agent_request: &encoded,
            new_image: None,
        };
        let (op, new) = self
            .catalog()
            .begin_operation_with_id(&op_id, &n)
            .await
            .map_err(status)?;
        if !new {
            return Ok(Response::new(op_to_pb(&op)));
        }
        if let Err(e) = self
            .catalog()
            .add_location(&img.id, &target.name, LocationState::Copying, &op.id)
            .await
        {
            let _ = self.catalog().undo_operation(&op.id).await;
            return Err(status(e));
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
        Ok(Response::new(op_to_pb(&op)))
    }

    async fn remove_image_location(
        &self,
        req: Request<pb::RemoveImageLocationRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        let img = self
            .catalog()
            .owned_image(&who, &r.image_id)
            .await
            .map_err(status)?;
        // Open the store first: if it cannot be reached, nothing changes.
        if !self
            .catalog()
            .locations(&img.id)
            .await
            .map_err(status)?
            .iter()
            .any(|l| l.site == r.site)
        {
            return Err(Status::not_found(format!(
                "image {} is not stored at site {:?}",
                img.id, r.site
            )));
        }
        let store = self.d.site_store(&r.site).await?;
        // Forget it (deploys stop choosing it) with every check in one
        // transaction, then remove the manifest from that store; its chunks
        // go at that store's next gc.
        self.catalog()
            .begin_remove_location(&img.id, &r.site)
            .await
            .map_err(status)?;
        let id: imprint_store::ImageId = img
            .id
            .parse()
            .map_err(|e: imprint_store::Error| Status::internal(e.to_string()))?;
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
        .map_err(|e| Status::internal(e.to_string()))?;
        if let (Err(e), intact) = removed {
            if intact {
                // Keep the catalog true to the store: the copy is still there.
                let _ = self
                    .catalog()
                    .add_location(&img.id, &r.site, LocationState::Available, "")
                    .await;
            }
            return Err(Status::unavailable(format!(
                "site {}: removing the copy failed: {e}",
                r.site
            )));
        }
        tracing::info!(image = %img.id, site = %r.site, account = %who.name, "image location removed");
        self.d.usage_changed();
        self.get_owned(&who, &img.id).await
    }

    async fn list_sites(
        &self,
        req: Request<pb::ListSitesRequest>,
    ) -> Result<Response<pb::ListSitesResponse>, Status> {
        auth::account(self.catalog(), &req).await?;
        let hosts = self.catalog().hosts().await.map_err(status)?;
        let sites = self
            .catalog()
            .sites()
            .await
            .map_err(status)?
            .into_iter()
            .map(|s| pb::Site {
                hosts: hosts
                    .iter()
                    .filter(|h| site_of_host(&h.site) == s.name)
                    .count() as u32,
                name: s.name,
                store: s.store,
            })
            .collect();
        Ok(Response::new(pb::ListSitesResponse { sites }))
    }

    async fn get_image(
        &self,
        req: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let id = req.into_inner().id;
        let row = self.catalog().get_image(&who, &id).await.map_err(status)?;
        Ok(Response::new(self.image_pb(&who, row).await?))
    }

    async fn list_images(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        let state = state_filter(r.state)?;
        let q = ListQuery {
            owner: Some(r.owner).filter(|s| !s.is_empty()),
            visibility: crate::domain::visibility_filter(r.visibility)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
            name_prefix: Some(r.name_prefix).filter(|s| !s.is_empty()),
            tag: Some(r.tag).filter(|s| !s.is_empty()),
            hide_deprecated: state.is_none(),
            state,
            page_size: r.page_size,
            page_token: Some(r.page_token).filter(|s| !s.is_empty()),
            order: r.order_by.parse().map_err(status)?,
        };
        let (rows, next) = self.catalog().list_images(&who, &q).await.map_err(status)?;
        // Members of the caller's own images, one query for the page.
        let own: Vec<String> = rows
            .iter()
            .filter(|r| r.owner_id == who.id)
            .map(|r| r.id.clone())
            .collect();
        let mut members = self.catalog().members_of(&own).await.map_err(status)?;
        let all: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let mut locations = self.catalog().locations_of(&all).await.map_err(status)?;
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

    async fn update_image(
        &self,
        req: Request<pb::UpdateImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        if r.update_mask.is_empty() {
            return Err(Status::invalid_argument(
                "update_mask is empty; name the fields to change: name, notes, tags",
            ));
        }
        const FIELDS: &str =
            "name, notes, tags, recommended_profiles, min_vcpus, min_memory_mib, hardware";
        for f in &r.update_mask {
            if !matches!(
                f.as_str(),
                "name"
                    | "notes"
                    | "tags"
                    | "recommended_profiles"
                    | "min_vcpus"
                    | "min_memory_mib"
                    | "hardware"
            ) {
                return Err(Status::invalid_argument(format!(
                    "cannot update {f:?}; update_mask takes {FIELDS}"
                )));
            }
        }
        let has = |f: &str| r.update_mask.iter().any(|m| m == f);
        if has("hardware")
            && let Some(h) = &r.hardware
        {
            imprint_proto::hardware::Hardware::try_from(h).map_err(Status::invalid_argument)?;
        }
        if has("min_memory_mib") && r.min_memory_mib > 16 << 20 {
            return Err(Status::invalid_argument(
                "min_memory_mib is more than 16 TiB",
            ));
        }
        if has("min_vcpus") && r.min_vcpus > imprint_proto::hardware::MAX_VCPUS {
            return Err(Status::invalid_argument("min_vcpus is more than 1024"));
        }
        if [
            "recommended_profiles",
            "min_vcpus",
            "min_memory_mib",
            "hardware",
        ]
        .iter()
        .any(|f| has(f))
        {
            self.catalog()
                .update_image_hardware(
                    &who,
                    &r.id,
                    has("recommended_profiles").then_some(r.recommended_profiles.as_slice()),
                    has("min_vcpus").then_some(r.min_vcpus),
                    has("min_memory_mib").then_some(r.min_memory_mib),
                    has("hardware")
                        .then(|| r.hardware.clone().unwrap_or_default())
                        .as_ref(),
                )
                .await
                .map_err(status)?;
        }
        if !["name", "notes", "tags"].iter().any(|f| has(f)) {
            return self.get_owned(&who, &r.id).await;
        }
        self.catalog()
            .update_image(
                &who,
                &r.id,
                has("name").then_some(r.name.as_str()),
                has("notes").then_some(r.notes.as_str()),
                has("tags").then_some(r.tags.as_slice()),
            )
            .await
            .map_err(status)?;
        self.get_owned(&who, &r.id).await
    }

    async fn delete_image(
        &self,
        req: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        if let Some(op) = self.replay(&who, &r.request_id, OpKind::Delete).await? {
            return Ok(Response::new(op));
        }
        if self.d.store().is_none() {
            // Checked after visibility so it leaks nothing.
            self.catalog()
                .owned_image(&who, &r.id)
                .await
                .map_err(status)?;
            return Err(Status::failed_precondition(
                "this daemon was started without --store, so it cannot remove images from the store",
            ));
        }
        let prior = self
            .catalog()
            .begin_delete(&who, &r.id)
            .await
            .map_err(status)?;
        let marker = format!("prior:{prior}");
        let n = NewOperation {
            account_id: &who.id,
            request_id: Some(r.request_id.as_str()).filter(|s| !s.is_empty()),
            kind: OpKind::Delete,
            image_id: Some(&r.id),
            host: "",
            guest: "",
            agent_request: &marker,
            new_image: None,
        };
        let op_id = uuid::Uuid::new_v4().to_string();
        let op: OperationRow = match self.catalog().begin_operation_with_id(&op_id, &n).await {
            Ok((op, _)) => op,
            Err(e) => {
                let _ = self.catalog().revert_deleting(&r.id, prior).await;
                return Err(status(e));
            }
        };
        // In its own task: a client that hangs up does not stop it halfway.
        if let Some(task) = self.d.spawn_follower(op.clone()) {
            task.await
                .map_err(|e| Status::internal(format!("delete task failed: {e}")))?;
        }
        tracing::info!(op = %op.id, image = %r.id, account = %who.name, "image deleted");
        let op = self.catalog().operation(&op.id).await.map_err(status)?;
        Ok(Response::new(op_to_pb(&op)))
    }

    async fn set_protected(
        &self,
        req: Request<pb::SetProtectedRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        self.catalog()
            .set_protected(&who, &r.id, r.protected)
            .await
            .map_err(status)?;
        self.get_owned(&who, &r.id).await
    }

    async fn deprecate_image(
        &self,
        req: Request<pb::DeprecateImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        self.catalog()
            .set_deprecated(&who, &r.id, r.deprecated)
            .await
            .map_err(status)?;
        self.get_owned(&who, &r.id).await
    }

    async fn share_image(
        &self,
        req: Request<pb::ShareImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        self.members(req, true).await
    }

    async fn unshare_image(
        &self,
        req: Request<pb::ShareImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        self.members(req, false).await
    }

    async fn accept_share(
        &self,
        req: Request<pb::ShareDecisionRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        self.decide(req, true).await
    }

    async fn reject_share(
        &self,
        req: Request<pb::ShareDecisionRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        self.decide(req, false).await
    }

    async fn publish_image(
        &self,
        req: Request<pb::PublishImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        self.publish(req, true).await
    }

    async fn unpublish_image(
        &self,
        req: Request<pb::PublishImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        self.publish(req, false).await
    }
}

impl Images {
    /// An image `who` sees and whose data may be read (active or
    /// deprecated), to be `what` ("deployed", "exported").
    async fn readable(&self, who: &Account, id: &str, what: &str) -> Result<ImageRow, Status> {
        let img = self.catalog().get_image(who, id).await.map_err(status)?;
        if !img.deployable() {
            return Err(Status::failed_precondition(format!(
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
    ) -> Result<Response<pb::Operation>, Status> {
        let (op, new) = self
            .catalog()
            .begin_operation_with_id(op_id, n)
            .await
            .map_err(status)?;
        if !new {
            return Ok(Response::new(op_to_pb(&op)));
        }
        let op = self.d.dispatch(op, agent_req).await?;
        tracing::info!(op = %op.id, kind = %op.kind, image = ?op.image_id, host = %op.host, "operation started");
        Ok(Response::new(op_to_pb(&op)))
    }

    /// Share with (or unshare from) named accounts.
    async fn members(
        &self,
        req: Request<pb::ShareImageRequest>,
        share: bool,
    ) -> Result<Response<pb::Image>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        if r.accounts.is_empty() {
            return Err(Status::invalid_argument(format!(
                "name at least one account to {} with",
                if share { "share" } else { "unshare" }
            )));
        }
        if share {
            self.catalog().share(&who, &r.id, &r.accounts).await
        } else {
            self.catalog().unshare(&who, &r.id, &r.accounts).await
        }
        .map_err(status)?;
        self.get_owned(&who, &r.id).await
    }

    async fn get_owned(&self, who: &Account, id: &str) -> Result<Response<pb::Image>, Status> {
        let row = self.catalog().get_image(who, id).await.map_err(status)?;
        Ok(Response::new(self.image_pb(who, row).await?))
    }

    async fn decide(
        &self,
        req: Request<pb::ShareDecisionRequest>,
        accept: bool,
    ) -> Result<Response<pb::Image>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let id = req.into_inner().id;
        self.catalog()
            .decide(&who, &id, accept)
            .await
            .map_err(status)?;
        self.get_owned(&who, &id).await
    }

    async fn publish(
        &self,
        req: Request<pb::PublishImageRequest>,
        public: bool,
    ) -> Result<Response<pb::Image>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let id = req.into_inner().id;
        self.catalog()
            .set_public(&who, &id, public)
            .await
            .map_err(status)?;
        self.get_owned(&who, &id).await
    }
}
