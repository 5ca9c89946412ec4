//! Catalog rows against store manifests: no invisible bytes.
//!
//! A manifest can outlive the row that should show it: the silent-host
//! reaper failed a capture whose agent finished after all (the image is
//! FAILED, its manifest committed), a delete lost its store, a copy
//! failed after its manifest was committed at the target site. Each pass
//! looks at every site's store and
//! - deletes the manifest of an image the catalog records as FAILED or
//!   DELETED (the user was told it failed or is gone; GC then frees its
//!   chunks), and a site's copy the catalog has no location for;
//! - counts manifests the catalog does not know at all (an offline
//!   `imprint store put` into the daemon's store, another installation's
//!   images): they are reported (log, `imprint_store_unknown_images`),
//!   never deleted, since imprint did not make them.
//!
//! Manifests younger than [`GRACE_SECONDS`] are left alone: their capture
//! or copy may still be recording its end.

use std::collections::HashMap;

use sqlx::Row;

use crate::{
    catalog::{Catalog, Result, now},
    domain::ImageState,
};

/// Manifests younger than this are never touched.
pub const GRACE_SECONDS: i64 = 3600;

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Manifests deleted (image id, site).
    pub deleted: Vec<(String, String)>,
    /// Manifests the catalog does not know (image id, site).
    pub unknown: Vec<(String, String)>,
}

/// What the catalog says of one image.
#[derive(Debug, Clone)]
struct Known {
    state: ImageState,
    /// Sites with a location row (any state).
    sites: Vec<String>,
}

impl Catalog {
    async fn known_images(&self) -> Result<HashMap<String, Known>> {
        let mut out: HashMap<String, Known> = HashMap::new();
        for r in sqlx::query("SELECT id, state FROM images")
            .fetch_all(self.pool())
            .await?
        {
            out.insert(
                r.try_get("id")?,
                Known {
                    state: crate::catalog::text(r.try_get::<String, _>("state")?)?,
                    sites: Vec::new(),
                },
            );
        }
        for r in sqlx::query("SELECT image_id, site FROM image_locations")
            .fetch_all(self.pool())
            .await?
        {
            let id: String = r.try_get("image_id")?;
            if let Some(k) = out.get_mut(&id) {
                k.sites.push(r.try_get("site")?);
            }
        }
        Ok(out)
    }
}

/// What to do with a manifest at `site`, committed at `created_unix`.
fn verdict(known: Option<&Known>, site: &str, created_unix: i64, now: i64, grace: i64) -> Verdict {
    if now - created_unix < grace {
        return Verdict::Keep;
    }
    match known {
        None => Verdict::Unknown,
        Some(k) if matches!(k.state, ImageState::Failed | ImageState::Deleted) => Verdict::Delete,
        // A copy that failed after its manifest was committed.
        Some(k) if k.state.deployable() && !k.sites.iter().any(|s| s == site) => Verdict::Delete,
        Some(_) => Verdict::Keep,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Keep,
    Delete,
    Unknown,
}

/// One pass over `stores` (site name, store; each store once), leaving
/// manifests younger than `grace` seconds alone.
pub async fn reconcile(
    catalog: &Catalog,
    stores: Vec<(String, imprint_store::Store)>,
    grace: i64,
) -> Result<Reconciled> {
    let known = catalog.known_images().await?;
    let mut out = Reconciled::default();
    let t = now();
    for (site, store) in stores {
        let s = store.clone();
        let listed = match tokio::task::spawn_blocking(move || s.list()).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::warn!(%site, error = %e, "cannot list the store to reconcile it");
                continue;
            }
            Err(e) => {
                tracing::warn!(%site, error = %e, "store listing panicked");
                continue;
            }
        };
        for (id, m) in listed {
            // An unreadable manifest is verify's business, not ours.
            let Ok(m) = m else { continue };
            let created = i64::try_from(m.created_unix).unwrap_or(i64::MAX);
            match verdict(known.get(&id.to_string()), &site, created, t, grace) {
                Verdict::Keep => {}
                Verdict::Unknown => out.unknown.push((id.to_string(), site.clone())),
                Verdict::Delete => {
                    let (s, i) = (store.clone(), id.clone());
                    match tokio::task::spawn_blocking(move || s.delete_image(&i)).await {
                        Ok(Ok(())) => {
                            tracing::warn!(image = %id, %site, "deleted a manifest the catalog shows as failed, deleted or not at this site");
                            out.deleted.push((id.to_string(), site.clone()));
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(image = %id, %site, error = %e, "cannot delete an orphaned manifest")
                        }
                        Err(e) => tracing::warn!(image = %id, error = %e, "delete panicked"),
                    }
                }
            }
        }
    }
    for (id, site) in &out.unknown {
        tracing::warn!(image = %id, %site, "the store holds an image the catalog does not know; left alone (delete it with imprint store delete if it is not needed)");
    }
    imprint_service::metrics::daemon()
        .store_unknown_images
        .set(crate::catalog::count(out.unknown.len()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(state: &str, sites: &[&str]) -> Known {
        Known {
            state: state.parse().expect("state"),
            sites: sites.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn verdicts() {
        let old = 0;
        let now = 10 * GRACE_SECONDS;
        let v = |known: Option<Known>, site: &str, created| {
            verdict(known.as_ref(), site, created, now, GRACE_SECONDS)
        };
        assert_eq!(v(Some(k("failed", &[])), "default", old), Verdict::Delete);
        assert_eq!(v(Some(k("deleted", &[])), "default", old), Verdict::Delete);
        assert_eq!(
            v(Some(k("active", &["default"])), "default", old),
            Verdict::Keep
        );
        assert_eq!(
            v(Some(k("active", &["default"])), "dc2", old),
            Verdict::Delete,
            "failed copy"
        );
        assert_eq!(v(Some(k("creating", &[])), "default", old), Verdict::Keep);
        assert_eq!(
            v(Some(k("deleting", &["default"])), "default", old),
            Verdict::Keep
        );
        assert_eq!(v(None, "default", old), Verdict::Unknown);
        assert_eq!(
            v(Some(k("failed", &[])), "default", now - 5),
            Verdict::Keep,
            "grace"
        );
    }
}
