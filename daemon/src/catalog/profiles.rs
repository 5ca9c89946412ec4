//! Hardware profiles (flavors) in the catalog: the message itself
//! (protobuf, hex), so its fields are defined once, in the proto.

use imprint_proto::v1 as pb;
use prost::Message;
use sqlx::Row;

use super::{Account, Catalog, CatalogError, Result, now};

/// Encode a profile for the catalog.
pub fn encode(p: &pb::HardwareProfile) -> String {
    hex::encode(p.encode_to_vec())
}

/// Decode what [`encode`] made ('' is none).
pub fn decode(s: &str) -> Result<Option<pb::HardwareProfile>> {
    if s.is_empty() {
        return Ok(None);
    }
    let bytes =
        hex::decode(s).map_err(|e| CatalogError::Invalid(format!("stored profile: {e}")))?;
    pb::HardwareProfile::decode(bytes.as_slice())
        .map(Some)
        .map_err(|e| CatalogError::Invalid(format!("stored profile: {e}")))
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
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(CatalogError::Exists(
                format!("profile {:?} exists already", p.name),
            )),
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

    /// Set an owned image's hardware fields and requirements (each `Some`
    /// changes).
    pub async fn update_image_hardware(
        &self,
        owner: &Account,
        id: &str,
        change: &HardwareChange<'_>,
    ) -> Result<()> {
        let HardwareChange {
            recommended,
            min_vcpus,
            min_memory_mib,
            min_disk_bytes,
            hardware,
        } = *change;
        let img = self.owned_image(owner, id).await?;
        // Every deploy needs the captured size: a smaller requirement would
        // promise deploys that cannot be.
        let captured = img.disks().first().map_or(0, |d| d.size_bytes);
        if let Some(d) = min_disk_bytes
            && d != 0
            && d < captured
        {
            return Err(CatalogError::WrongState(format!(
                "min_disk_bytes {d} is below image {}'s first disk as captured ({captured} bytes)",
                img.id
            )));
        }
        let mut tx = self.pool().begin().await?;
        if let Some(names) = recommended {
            for n in names {
                imprint_proto::hardware::check_profile_name(n).map_err(CatalogError::Invalid)?;
            }
            sqlx::query("UPDATE images SET recommended_profiles = $1 WHERE id = $2")
                .bind(names.join(","))
                .bind(&img.id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(v) = min_vcpus {
            sqlx::query("UPDATE images SET min_vcpus = $1 WHERE id = $2")
                .bind(
                    i32::try_from(v)
                        .map_err(|_| CatalogError::Invalid("min_vcpus is out of range".into()))?,
                )
                .bind(&img.id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(m) = min_memory_mib {
            sqlx::query("UPDATE images SET min_memory_mib = $1 WHERE id = $2")
                .bind(
                    i64::try_from(m).map_err(|_| {
                        CatalogError::Invalid("min_memory_mib is out of range".into())
                    })?,
                )
                .bind(&img.id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(d) = min_disk_bytes {
            sqlx::query("UPDATE images SET min_disk_bytes = $1 WHERE id = $2")
                .bind(
                    i64::try_from(d).map_err(|_| {
                        CatalogError::Invalid("min_disk_bytes is out of range".into())
                    })?,
                )
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

/// The hardware fields and requirements of an image an update changes
/// (`None`: unchanged).
#[derive(Debug, Default, Clone, Copy)]
pub struct HardwareChange<'a> {
    /// Recommended profiles' names.
    pub recommended: Option<&'a [String]>,
    /// Least vCPUs of a deploy.
    pub min_vcpus: Option<u32>,
    /// Least memory of a deploy.
    pub min_memory_mib: Option<u64>,
    /// Least size of a deploy's first disk (0: the captured size).
    pub min_disk_bytes: Option<u64>,
    /// Hardware of deploys that name no profile.
    pub hardware: Option<&'a pb::HardwareProfile>,
}
