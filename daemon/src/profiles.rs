//! Hardware profiles (flavors) and `ProfileService`.
//!
//! A profile is a named [`pb::HardwareProfile`] an admin defines; deploys
//! and imports name one. The catalog keeps the message itself (protobuf,
//! hex), so its fields are defined once, in the proto. Checking a profile
//! against an image (its minimums, UEFI without an EFI system partition)
//! happens where deploys are checked: minimums here, before any row is
//! written; the firmware on the agent, which knows the disk.

use imprint_proto::{hardware::Hardware, v1 as pb, v1::profile_service_server::ProfileService};
use prost::Message;
use sqlx::Row;
use tonic::{Request, Response, Status};

use crate::{
    auth,
    catalog::{Account, Catalog, CatalogError, ImageRow, Result, now},
    error::status,
};

/// Encode a profile for the catalog.
pub fn encode(p: &pb::HardwareProfile) -> String {
    hex::encode(p.encode_to_vec())
}

/// Decode what [`encode`] made ('' is none).
pub fn decode(s: &str) -> Result<Option<pb::HardwareProfile>> {
    if s.is_empty() {
        return Ok(None);
    }
    let bytes = hex::decode(s)
        .map_err(|e| CatalogError::InvalidArgument(format!("stored profile: {e}")))?;
    pb::HardwareProfile::decode(bytes.as_slice())
        .map(Some)
        .map_err(|e| CatalogError::InvalidArgument(format!("stored profile: {e}")))
}

impl Catalog {
    /// Define a profile (checked complete by the caller).
    pub async fn create_profile(&self, p: &pb::HardwareProfile) -> Result<pb::HardwareProfile> {
        let t = now();
        let stored = pb::HardwareProfile {
            created_unix: t,
            ..p.clone()
        };
        let r = sqlx::query("INSERT INTO profiles (name, spec, created_unix) VALUES ($1, $2, $3)")
            .bind(&p.name)
            .bind(encode(&stored))
            .bind(t)
            .execute(self.pool())
            .await;
        match r {
            Ok(_) => Ok(stored),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(
                CatalogError::Conflict(format!("profile {:?} exists already", p.name)),
            ),
            Err(e) => Err(e.into()),
        }
    }

    /// One profile.
    pub async fn profile(&self, name: &str) -> Result<pb::HardwareProfile> {
        let row = sqlx::query("SELECT spec FROM profiles WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("no profile named {name:?}")))?;
        decode(&row.try_get::<String, _>("spec")?)?
            .ok_or_else(|| CatalogError::NotFound(format!("no profile named {name:?}")))
    }

    /// Every profile, by name.
    pub async fn profiles(&self) -> Result<Vec<pb::HardwareProfile>> {
        let rows = sqlx::query("SELECT spec FROM profiles ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .filter_map(|r| decode(&r.try_get::<String, _>("spec").ok()?).transpose())
            .collect()
    }

    /// Remove a profile; returns it.
    pub async fn delete_profile(&self, name: &str) -> Result<pb::HardwareProfile> {
        let p = self.profile(name).await?;
        sqlx::query("DELETE FROM profiles WHERE name = $1")
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(p)
    }

    /// Set an owned image's hardware fields (each `Some` changes).
    pub async fn update_image_hardware(
        &self,
        owner: &Account,
        id: &str,
        recommended: Option<&[String]>,
        min_vcpus: Option<u32>,
        min_memory_mib: Option<u64>,
        hardware: Option<&pb::HardwareProfile>,
    ) -> Result<()> {
        let img = self.owned_image(owner, id).await?;
        let mut tx = self.pool().begin().await?;
        if let Some(names) = recommended {
            for n in names {
                imprint_proto::hardware::check_profile_name(n)
                    .map_err(CatalogError::InvalidArgument)?;
            }
            sqlx::query("UPDATE images SET recommended_profiles = $1 WHERE id = $2")
                .bind(names.join(","))
                .bind(&img.id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(v) = min_vcpus {
            sqlx::query("UPDATE images SET min_vcpus = $1 WHERE id = $2")
                .bind(i32::try_from(v).map_err(|_| {
                    CatalogError::InvalidArgument("min_vcpus is out of range".into())
                })?)
                .bind(&img.id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(m) = min_memory_mib {
            sqlx::query("UPDATE images SET min_memory_mib = $1 WHERE id = $2")
                .bind(i64::try_from(m).map_err(|_| {
                    CatalogError::InvalidArgument("min_memory_mib is out of range".into())
                })?)
                .bind(&img.id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(h) = hardware {
            let empty = *h == pb::HardwareProfile::default();
            sqlx::query("UPDATE images SET hardware = $1 WHERE id = $2")
                .bind(if empty { String::new() } else { encode(h) })
                .bind(&img.id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE images SET updated_unix = $1 WHERE id = $2")
            .bind(now())
            .bind(&img.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The hardware a deploy of `img` gets: the named profile (NOT_FOUND when
/// unknown), else the image's own hardware; then the request's vCPUs and
/// memory. Refused with FAILED_PRECONDITION, naming the requirement, when
/// the result is below the image's minimums.
pub async fn deploy_hardware(
    catalog: &Catalog,
    img: &ImageRow,
    profile: &str,
    vcpus: u32,
    memory_mib: u64,
) -> std::result::Result<Option<pb::HardwareProfile>, Status> {
    let chosen = if profile.is_empty() {
        decode(&img.hardware).map_err(status)?
    } else {
        Some(catalog.profile(profile).await.map_err(status)?)
    };
    let hw = chosen
        .as_ref()
        .map(Hardware::try_from)
        .transpose()
        .map_err(Status::failed_precondition)?
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
    if img.min_vcpus > 0 && eff_vcpus < img.min_vcpus as u64 {
        return Err(Status::failed_precondition(format!(
            "image {} needs at least {} vCPUs; this deploy gives {eff_vcpus}{from}",
            img.id, img.min_vcpus
        )));
    }
    if img.min_memory_mib > 0 && eff_memory < img.min_memory_mib as u64 {
        return Err(Status::failed_precondition(format!(
            "image {} needs at least {} MiB of memory; this deploy gives {eff_memory} MiB{from}",
            img.id, img.min_memory_mib
        )));
    }
    Ok(chosen)
}

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

    async fn admin<T>(&self, req: &Request<T>) -> std::result::Result<Account, Status> {
        let who = auth::account(&self.catalog, req).await?;
        if !who.is_admin {
            return Err(Status::permission_denied(format!(
                "account {} is not an admin; only admins define profiles",
                who.name
            )));
        }
        Ok(who)
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
        let h = Hardware::complete(&p).map_err(Status::invalid_argument)?;
        let stored = pb::HardwareProfile {
            description: p.description.clone(),
            serial_console: Some(h.serial_console.unwrap_or(true)),
            ..h.to_pb()
        };
        let created = self.catalog.create_profile(&stored).await.map_err(status)?;
        tracing::info!(profile = %p.name, by = %who.name, "profile created");
        Ok(Response::new(created))
    }

    async fn get_profile(
        &self,
        req: Request<pb::GetProfileRequest>,
    ) -> std::result::Result<Response<pb::HardwareProfile>, Status> {
        auth::account(&self.catalog, &req).await?;
        let p = self
            .catalog
            .profile(&req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(p))
    }

    async fn list_profiles(
        &self,
        req: Request<pb::ListProfilesRequest>,
    ) -> std::result::Result<Response<pb::ListProfilesResponse>, Status> {
        auth::account(&self.catalog, &req).await?;
        let profiles = self.catalog.profiles().await.map_err(status)?;
        Ok(Response::new(pb::ListProfilesResponse { profiles }))
    }

    async fn delete_profile(
        &self,
        req: Request<pb::GetProfileRequest>,
    ) -> std::result::Result<Response<pb::HardwareProfile>, Status> {
        let who = self.admin(&req).await?;
        let name = req.into_inner().name;
        let p = self.catalog.delete_profile(&name).await.map_err(status)?;
        tracing::info!(profile = %name, by = %who.name, "profile deleted");
        Ok(Response::new(p))
    }
}
