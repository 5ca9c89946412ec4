//! Sites (named stores) and where each image is stored, on the [`Catalog`].
//!
//! Hosts belong to a site (what their agent registered, `''` meaning
//! [`DEFAULT_SITE`]). A capture or import stores its image at the site of
//! its host; `CopyImage` adds a location, `RemoveImageLocation` drops one;
//! deploys read from the location at the host's site when there is one.

use std::collections::HashMap;

use sqlx::Row;

use crate::{
    catalog::{Catalog, CatalogError, Result, now, text},
    domain::LocationState,
};

/// The site of hosts that name none, and of the daemon's `--store`.
pub const DEFAULT_SITE: &str = "default";

/// A site and its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRow {
    /// Name.
    pub name: String,
    /// Store location (directory or `s3://` URL), as agents open it.
    pub store: String,
}

/// One stored copy of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationRow {
    /// Site.
    pub site: String,
    /// Complete or being copied.
    pub state: LocationState,
    /// The copy operation that made it, if any.
    pub operation_id: String,
}

/// The site a host's registration names.
pub fn site_of_host(site: &str) -> &str {
    if site.is_empty() { DEFAULT_SITE } else { site }
}

/// Site names: 1–63 of `a-z`, `0-9`, `-`, `_`.
pub fn validate_site_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(CatalogError::Invalid(format!(
            "site name {name:?} must be 1-63 characters of a-z, 0-9, '-' and '_'"
        )));
    }
    Ok(())
}

impl Catalog {
    /// Add a site or change its store.
    pub async fn upsert_site(&self, name: &str, store: &str) -> Result<()> {
        validate_site_name(name)?;
        if store.is_empty() {
            return Err(CatalogError::Invalid(format!(
                "site {name}: the store location is empty"
            )));
        }
        sqlx::query(
            "INSERT INTO sites (name, store, created_unix) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET store = $2",
        )
        .bind(name)
        .bind(store)
        .bind(now())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every site, by name.
    pub async fn sites(&self) -> Result<Vec<SiteRow>> {
        sqlx::query("SELECT name, store FROM sites ORDER BY name")
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| {
                Ok(SiteRow {
                    name: r.try_get("name")?,
                    store: r.try_get("store")?,
                })
            })
            .collect()
    }

    /// One site.
    pub async fn site(&self, name: &str) -> Result<SiteRow> {
        self.sites()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| CatalogError::NotFound(format!("there is no site {name:?}")))
    }

    /// Where image `id` is stored, by site name.
    pub async fn locations(&self, id: &str) -> Result<Vec<LocationRow>> {
        Ok(self
            .locations_of(&[id.to_string()])
            .await?
            .remove(id)
            .unwrap_or_default())
    }

    /// Where each of `ids` is stored (one query for a page of images).
    pub async fn locations_of(&self, ids: &[String]) -> Result<HashMap<String, Vec<LocationRow>>> {
        let mut out: HashMap<String, Vec<LocationRow>> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let marks: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        // Placeholders only; the ids are bound.
        let sql = format!(
            "SELECT image_id, site, state, operation_id FROM image_locations WHERE image_id IN ({}) ORDER BY site",
            marks.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in ids {
            q = q.bind(id.clone());
        }
        for r in q.fetch_all(self.pool()).await? {
            out.entry(r.try_get("image_id")?)
                .or_default()
                .push(LocationRow {
                    site: r.try_get("site")?,
                    state: text(r.try_get::<String, _>("state")?)?,
                    operation_id: r.try_get("operation_id")?,
                });
        }
        Ok(out)
    }

    /// Record a location (`available` after a capture; `copying` when a
    /// copy starts). A location that exists is an error: one copy per site.
    pub async fn add_location(
        &self,
        id: &str,
        site: &str,
        state: LocationState,
        op: &str,
    ) -> Result<()> {
        match sqlx::query(
            "INSERT INTO image_locations (image_id, site, state, operation_id, updated_unix) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(site)
        .bind(state.as_str())
        .bind(op)
        .bind(now())
        .execute(self.pool())
        .await
        {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(CatalogError::Exists(format!("image {id} is at site {site} already")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Settle the locations of copies that ended: `available` when their
    /// operation succeeded, gone when it failed or was cancelled (by its
    /// agent, by the daemon, or by the silent-host reaper). Idempotent.
    pub async fn settle_locations(&self) -> Result<()> {
        sqlx::query(
            "UPDATE image_locations SET state = 'available', updated_unix = $1 WHERE state = 'copying' \
             AND operation_id IN (SELECT id FROM operations WHERE state = 'succeeded')",
        )
        .bind(now())
        .execute(self.pool())
        .await?;
        sqlx::query(
            "DELETE FROM image_locations WHERE state = 'copying' \
             AND operation_id IN (SELECT id FROM operations WHERE state IN ('failed', 'cancelled'))",
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Forget the copy of image `id` at `site`, in one transaction with the
    /// checks that make it safe: the image row is locked (as deploys,
    /// exports, copies and deletes lock it), nothing reads the image, the
    /// copy is complete, and another complete copy remains.
    pub async fn begin_remove_location(&self, id: &str, site: &str) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let r = sqlx::query(
            "UPDATE images SET updated_unix = updated_unix WHERE id = $1 AND state IN ('active', 'deprecated')",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(CatalogError::WrongState(format!(
                "image {id} is not active or deprecated"
            )));
        }
        let readers: Vec<String> = sqlx::query(
            "SELECT id FROM operations WHERE kind IN ('deploy', 'export', 'copy') AND state = 'running' AND image_id = $1",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<std::result::Result<_, _>>()?;
        if !readers.is_empty() {
            return Err(CatalogError::WrongState(format!(
                "image {id} is being read by operation(s) {}; try again when they end",
                readers.join(", ")
            )));
        }
        let rows: Vec<(String, LocationState)> =
            sqlx::query("SELECT site, state FROM image_locations WHERE image_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("site")?, text(r.try_get::<String, _>("state")?)?)))
                .collect::<Result<_>>()?;
        match rows.iter().find(|(s, _)| s == site) {
            None => {
                return Err(CatalogError::NotFound(format!(
                    "image {id} is not stored at site {site:?}"
                )));
            }
            Some((_, state)) if *state != LocationState::Available => {
                return Err(CatalogError::WrongState(format!(
                    "the copy of image {id} at site {site} is still being made; cancel its copy instead"
                )));
            }
            Some(_) => {}
        }
        if !rows
            .iter()
            .any(|(s, st)| s != site && *st == LocationState::Available)
        {
            return Err(CatalogError::WrongState(format!(
                "site {site} holds the only copy of image {id}; delete the image instead"
            )));
        }
        sqlx::query("DELETE FROM image_locations WHERE image_id = $1 AND site = $2")
            .bind(id)
            .bind(site)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forget a location.
    pub async fn remove_location(&self, id: &str, site: &str) -> Result<()> {
        sqlx::query("DELETE FROM image_locations WHERE image_id = $1 AND site = $2")
            .bind(id)
            .bind(site)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
