//! Deploy (an image as a new guest) and export (one disk of an image to a
//! file): the operations that read an image.

use imprint_proto::{hardware::Hardware, v1 as pb};

use super::{Ops, new_id};
use crate::{
    catalog::{Account, Catalog, ImageRow, NewOperation, OperationRow},
    dispatch::AgentRequest,
    domain::OpKind,
    error::DaemonError,
    spec::{DeploySpec, ExportSpec},
};

/// Requested disk sizes: at most one per disk of the image, none smaller;
/// the first at least the image's requirement, which a deploy that gives
/// no size for it gets (so a user types only what changes).
fn disk_sizes(img: &ImageRow, mut sizes: Vec<u64>) -> Result<Vec<u64>, DaemonError> {
    let disks = img.disks();
    if sizes.len() > disks.len() {
        return Err(DaemonError::invalid(format!(
            "{} disk sizes given; image {} has {} disk(s)",
            sizes.len(),
            img.id,
            disks.len()
        )));
    }
    for (i, (want, d)) in sizes.iter().zip(&disks).enumerate() {
        if *want != 0 && *want < d.size_bytes {
            return Err(DaemonError::invalid(format!(
                "disk {i} ({}) size {want} bytes is smaller than the image's {} bytes",
                d.name, d.size_bytes
            )));
        }
    }
    let min = crate::catalog::unsigned(img.min_disk_bytes);
    if min > 0 && !disks.is_empty() {
        match sizes.first().copied() {
            None => sizes.push(min),
            Some(0) => sizes[0] = min,
            Some(want) if want < min => {
                return Err(DaemonError::wrong_state(format!(
                    "image {} needs a first disk of at least {min} bytes (min_disk_bytes); this deploy gives {want}",
                    img.id
                )));
            }
            Some(_) => {}
        }
    }
    Ok(sizes)
}

/// The hardware a deploy of `img` gets: the named profile (NOT_FOUND when
/// unknown), else the image's own hardware; then the request's vCPUs and
/// memory. Refused with FAILED_PRECONDITION, naming the requirement, when
/// the result is below the image's minimums.
async fn deploy_hardware(
    catalog: &Catalog,
    img: &ImageRow,
    profile: &str,
    vcpus: u32,
    memory_mib: u64,
) -> std::result::Result<Option<pb::HardwareProfile>, DaemonError> {
    let chosen = if profile.is_empty() {
        crate::catalog::decode_profile(&img.hardware)?
    } else {
        Some(catalog.profile(profile).await?)
    };
    let hw = chosen
        .as_ref()
        .map(Hardware::try_from)
        .transpose()
        .map_err(DaemonError::wrong_state)?
        .unwrap_or_default();
    // What the guest will have: request, else hardware, else recorded.
    let recorded: serde_json::Value = serde_json::from_str(&img.config_json).unwrap_or_default();
    let eff_vcpus = if vcpus > 0 {
        u64::from(vcpus)
    } else {
        hw.vcpus
            .map(u64::from)
            .or_else(|| recorded["vcpus"].as_u64())
            .unwrap_or(0)
    };
    let eff_memory = if memory_mib > 0 {
        memory_mib
    } else {
        hw.memory_mib
            .or_else(|| recorded["memory_kib"].as_u64().map(|k| k / 1024))
            .unwrap_or(0)
    };
    let from = if profile.is_empty() {
        String::new()
    } else {
        format!(" (profile {profile})")
    };
    if img.min_vcpus > 0 && eff_vcpus < u64::try_from(img.min_vcpus).unwrap_or(0) {
        return Err(DaemonError::wrong_state(format!(
            "image {} needs at least {} vCPUs; this deploy gives {eff_vcpus}{from}",
            img.id, img.min_vcpus
        )));
    }
    if img.min_memory_mib > 0 && eff_memory < crate::catalog::unsigned(img.min_memory_mib) {
        return Err(DaemonError::wrong_state(format!(
            "image {} needs at least {} MiB of memory; this deploy gives {eff_memory} MiB{from}",
            img.id, img.min_memory_mib
        )));
    }
    Ok(chosen)
}

/// A fresh identity needs an operating system to generalize: an image
/// whose last lint read none is refused at once (not after its volumes
/// were written) unless the deploy keeps the image's identity.
fn check_identity(img: &ImageRow, keep_identity: bool) -> Result<(), DaemonError> {
    let unknown = img
        .lint_report()
        .is_some_and(|r| r.findings.iter().any(|f| f.code == "os-unknown"));
    if unknown && !keep_identity {
        return Err(DaemonError::wrong_state(format!(
            "image {}'s lint found no operating system: a deploy cannot give the new guest a fresh identity; deploy with keep_identity (--keep-identity)",
            img.id
        )));
    }
    Ok(())
}

impl Ops {
    /// Deploy the image `s` names as a new guest of `who`.
    pub async fn deploy(&self, who: &Account, s: DeploySpec) -> Result<OperationRow, DaemonError> {
        if let Some(op) = self
            .replay(who, s.request_id.as_deref(), OpKind::Deploy)
            .await?
        {
            return Ok(op);
        }
        let r = s.req;
        let img = self.readable(who, &r.image_id, "deployed").await?;
        let disk_sizes_bytes = disk_sizes(&img, r.disk_sizes_bytes)?;
        check_identity(&img, r.keep_identity)?;
        let hardware =
            deploy_hardware(self.catalog(), &img, &r.profile, r.vcpus, r.memory_mib).await?;
        let host = super::usable_host(self.catalog(), who, &r.host).await?;
        let op_id = new_id();
        let agent_req = AgentRequest::Deploy(pb::DeployRequest {
            operation_id: op_id.clone(),
            image_id: img.id.clone(),
            guest_name: r.guest_name.clone(),
            pool: r.pool,
            disk_format: r.disk_format,
            disk_sizes_bytes,
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            network: r.network,
            hardware,
            user_data: r.user_data,
            start: r.start,
            store: self.d.source_store(&img.id, &host).await?,
            // Unset: the daemon's default, which the agent applies where
            // a lazy deploy can be.
            lazy: r.lazy == Some(true),
            lazy_if_possible: r.lazy.is_none() && self.d.lazy_deploys(),
            keep_identity: r.keep_identity,
        });
        let encoded = agent_req.encode();
        let n = NewOperation {
            account_id: &who.id,
            request_id: s.request_id.as_deref(),
            kind: OpKind::Deploy,
            image_id: Some(&img.id),
            host: &host.name,
            guest: &r.guest_name,
            agent_request: &encoded,
            new_image: None,
        };
        self.start(&op_id, &n, &agent_req).await
    }

    /// Export one disk of the image `s` names to a file on a host.
    pub async fn export(&self, who: &Account, s: ExportSpec) -> Result<OperationRow, DaemonError> {
        if let Some(op) = self
            .replay(who, s.request_id.as_deref(), OpKind::Export)
            .await?
        {
            return Ok(op);
        }
        let img = self.readable(who, &s.image_id, "exported").await?;
        if s.disk as usize >= img.disks().len() {
            return Err(DaemonError::invalid(format!(
                "image {} has {} disk(s); there is no disk {}",
                img.id,
                img.disks().len(),
                s.disk
            )));
        }
        s.check_path()?;
        let host = super::usable_host(self.catalog(), who, &s.host).await?;
        let op_id = new_id();
        let agent_req = AgentRequest::Export(pb::ExportRequest {
            operation_id: op_id.clone(),
            image_id: img.id.clone(),
            disk: s.disk,
            path: s.path.clone(),
            format: s.format,
            store: self.d.source_store(&img.id, &host).await?,
        });
        let encoded = agent_req.encode();
        let n = NewOperation {
            account_id: &who.id,
            request_id: s.request_id.as_deref(),
            kind: OpKind::Export,
            image_id: Some(&img.id),
            host: &host.name,
            guest: "",
            agent_request: &encoded,
            new_image: None,
        };
        self.start(&op_id, &n, &agent_req).await
    }
}
