//! Registered hosts: their agents' endpoints, capacity, site and last
//! heartbeat.

use sqlx::Row;

use super::{Catalog, CatalogError, Result, now};

/// A registered host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    /// Unique name.
    pub name: String,
    /// Where the daemon reaches its agent.
    pub agent_endpoint: String,
    /// libvirt URI.
    pub libvirt_uri: String,
    /// Agent version.
    pub version: String,
    /// Capacity.
    pub cpus: i32,
    /// Capacity.
    pub memory_bytes: i64,
    /// Site.
    pub site: String,
    /// Last heartbeat.
    pub last_heartbeat_unix: i64,
}

impl Catalog {
    /// Register (or re-register) a host.
    pub async fn register_host(&self, h: &HostRow) -> Result<()> {
        if h.name.is_empty() || h.agent_endpoint.is_empty() {
            return Err(CatalogError::Invalid(
                "a host needs a name and an agent endpoint".into(),
            ));
        }
        // One agent is one host: an endpoint another host registered cannot
        // be taken over (a host credential must not redirect another
        // host's work).
        if let Some(other) =
            sqlx::query("SELECT name FROM hosts WHERE agent_endpoint = $1 AND name <> $2")
                .bind(&h.agent_endpoint)
                .bind(&h.name)
                .fetch_optional(self.pool())
                .await?
        {
            let other: String = other.try_get("name")?;
            return Err(CatalogError::Exists(format!(
                "agent endpoint {} is registered by host {other}; remove that host first (imprintd host remove {other})",
                h.agent_endpoint
            )));
        }
        let t = now();
        sqlx::query(
            "INSERT INTO hosts (name, agent_endpoint, libvirt_uri, version, cpus, memory_bytes, site, registered_unix, last_heartbeat_unix) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             ON CONFLICT (name) DO UPDATE SET agent_endpoint = $2, libvirt_uri = $3, version = $4, cpus = $5, memory_bytes = $6, site = $7, last_heartbeat_unix = $8",
        )
        .bind(&h.name)
        .bind(&h.agent_endpoint)
        .bind(&h.libvirt_uri)
        .bind(&h.version)
        .bind(h.cpus)
        .bind(h.memory_bytes)
        .bind(&h.site)
        .bind(t)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A heartbeat from a registered host.
    pub async fn heartbeat(&self, name: &str) -> Result<()> {
        let r = sqlx::query("UPDATE hosts SET last_heartbeat_unix = $1 WHERE name = $2")
            .bind(now())
            .bind(name)
            .execute(self.pool())
            .await?;
        if r.rows_affected() == 0 {
            return Err(CatalogError::NotFound(format!(
                "host {name:?} is not registered"
            )));
        }
        Ok(())
    }

    /// One registered host.
    pub async fn host(&self, name: &str) -> Result<HostRow> {
        self.hosts()
            .await?
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| CatalogError::NotFound(format!("host {name:?} is not registered")))
    }

    /// Every registered host.
    pub async fn hosts(&self) -> Result<Vec<HostRow>> {
        sqlx::query("SELECT name, agent_endpoint, libvirt_uri, version, cpus, memory_bytes, site, last_heartbeat_unix FROM hosts ORDER BY name")
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| {
                Ok(HostRow {
                    name: r.try_get("name")?,
                    agent_endpoint: r.try_get("agent_endpoint")?,
                    libvirt_uri: r.try_get("libvirt_uri")?,
                    version: r.try_get("version")?,
                    cpus: r.try_get("cpus")?,
                    memory_bytes: r.try_get("memory_bytes")?,
                    site: r.try_get("site")?,
                    last_heartbeat_unix: r.try_get("last_heartbeat_unix")?,
                })
            })
            .collect()
    }
}
