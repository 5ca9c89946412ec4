//! Host tokens: made by an admin (`imprintd host add NAME`), kept as their
//! SHA-256 only; the check of a caller's credential is
//! [`crate::credentials`].

use std::time::Instant;

use sqlx::Row;

use super::{Catalog, CatalogError, Result, TOKEN_CACHE_TTL, now, token_hash};

impl Catalog {
    /// Make (or replace) the token of host `name`; returns it (shown once).
    /// The host registers with it when its agent starts.
    pub async fn add_host_token(&self, name: &str) -> Result<String> {
        validate_host_name(name)?;
        let token = format!("imh_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(
            "INSERT INTO host_credentials (host, token_sha256, created_unix) VALUES ($1, $2, $3) \
             ON CONFLICT (host) DO UPDATE SET token_sha256 = $2, created_unix = $3",
        )
        .bind(name)
        .bind(token_hash(&token))
        .bind(now())
        .execute(self.pool())
        .await?;
        self.forget_host_tokens();
        Ok(token)
    }

    /// Remove host `name`'s token (its agent can no longer register or
    /// heartbeat) and its host row.
    pub async fn remove_host(&self, name: &str) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let a = sqlx::query("DELETE FROM host_credentials WHERE host = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let b = sqlx::query("DELETE FROM hosts WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if a.rows_affected() + b.rows_affected() == 0 {
            return Err(CatalogError::NotFound(format!("no host named {name:?}")));
        }
        tx.commit().await?;
        self.forget_host_tokens();
        Ok(())
    }

    /// The host a host token belongs to.
    pub async fn host_by_token(&self, token: &str) -> Result<String> {
        let hash = token_hash(token);
        if let Some((host, at)) = self.host_token_cache().get(&hash)
            && at.elapsed() < TOKEN_CACHE_TTL
        {
            return Ok(host.clone());
        }
        let host: String = sqlx::query("SELECT host FROM host_credentials WHERE token_sha256 = $1")
            .bind(&hash)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| CatalogError::NotFound("unknown host token".into()))?
            .try_get("host")?;
        let mut cache = self.host_token_cache();
        if cache.len() > 10_000 {
            cache.retain(|_, (_, at)| at.elapsed() < TOKEN_CACHE_TTL);
        }
        cache.insert(hash, (host.clone(), Instant::now()));
        Ok(host)
    }
}

/// Host names: DNS names (they may be bound to certificates).
pub fn validate_host_name(name: &str) -> Result<()> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!(
            "host name {name:?} must be a lower-case DNS name: labels of 1-63 letters, digits or '-' (not at either end), joined by '.'"
        )))
    }
}
