//! Host credentials: who may register as a host and heartbeat for it.
//!
//! Registering names the endpoint the daemon sends deploys (user-data
//! included) and captures to, so it needs the host's credential in every
//! mode, plaintext included:
//! - a host token, made by an admin (`imprintd host add NAME`), sent as
//!   `authorization: Bearer imh_…`; the catalog keeps its SHA-256 only;
//! - or, over TLS, a client certificate of the daemon's CA whose
//!   subjectAltName holds the host name as a DNS name (checked by webpki,
//!   the rules a TLS client applies to a server name; the CN is not used).
//!
//! A credential of another host is PERMISSION_DENIED; none at all is
//! UNAUTHENTICATED.

use std::time::Instant;

use sqlx::Row;
use tonic::{Request, Status};

use crate::catalog::{Catalog, CatalogError, Result, TOKEN_CACHE_TTL, now, token_hash};

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
        Err(CatalogError::InvalidArgument(format!(
            "host name {name:?} must be a lower-case DNS name: labels of 1-63 letters, digits or '-' (not at either end), joined by '.'"
        )))
    }
}

/// Check that the caller holds the credential of host `name`.
pub async fn authenticate_host<T>(
    catalog: &Catalog,
    req: &Request<T>,
    name: &str,
) -> Result<(), Status> {
    let cert = req.peer_certs().and_then(|c| c.first().cloned());
    if let Some(cert) = &cert
        && cert_names_host(cert, name)
    {
        return Ok(());
    }
    if req.metadata().get("authorization").is_some() {
        let token = crate::auth::bearer(req)?;
        return match catalog.host_by_token(token).await {
            Ok(host) if host == name => Ok(()),
            Ok(host) => Err(Status::permission_denied(format!(
                "this token belongs to host {host:?}, not {name:?}"
            ))),
            Err(CatalogError::NotFound(_)) => Err(Status::unauthenticated(
                "invalid host token (imprintd host add NAME makes one)",
            )),
            Err(e) => Err(crate::error::status(e)),
        };
    }
    if cert.is_some() {
        return Err(Status::permission_denied(format!(
            "the client certificate does not name host {name:?} in its subjectAltName, and no host token was sent"
        )));
    }
    Err(Status::unauthenticated(format!(
        "registering and heartbeating as host {name:?} needs its credential: 'authorization: Bearer <host token>' (imprintd host add {name}) or a TLS certificate naming the host"
    )))
}

/// Whether the certificate's subjectAltName holds `name` as a DNS name.
fn cert_names_host(cert: &rustls::pki_types::CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = rustls::pki_types::ServerName::try_from(name) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .and_then(|c| c.verify_is_valid_for_subject_name(&server_name))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testpg::catalogs;

    #[tokio::test]
    async fn host_tokens_name_one_host() {
        for (_b, c) in catalogs().await {
            let t1 = c.add_host_token("kvm-01").await.expect("add");
            assert_eq!(c.host_by_token(&t1).await.expect("known"), "kvm-01");
            // A new token replaces the old one at once on this daemon.
            let t2 = c.add_host_token("kvm-01").await.expect("rotate");
            assert!(matches!(
                c.host_by_token(&t1).await,
                Err(CatalogError::NotFound(_))
            ));
            let with = |t: &str| {
                let mut r = Request::new(());
                r.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {t}").parse().expect("ascii"),
                );
                r
            };
            authenticate_host(&c, &with(&t2), "kvm-01")
                .await
                .expect("own token");
            let code = |r: Result<(), Status>| r.expect_err("refused").code();
            assert_eq!(
                code(authenticate_host(&c, &with(&t2), "kvm-02").await),
                tonic::Code::PermissionDenied
            );
            assert_eq!(
                code(authenticate_host(&c, &with("imh_nope"), "kvm-01").await),
                tonic::Code::Unauthenticated
            );
            assert_eq!(
                code(authenticate_host(&c, &Request::new(()), "kvm-01").await),
                tonic::Code::Unauthenticated
            );
            c.remove_host("kvm-01").await.expect("remove");
            assert_eq!(
                code(authenticate_host(&c, &with(&t2), "kvm-01").await),
                tonic::Code::Unauthenticated
            );
            c.add_host_token("kvm01.example.net").await.expect("fqdn");
            for bad in ["", "a_b", "-a", "a..b", "a.", "KVM-01", &"a".repeat(64)] {
                assert!(c.add_host_token(bad).await.is_err(), "{bad}");
            }
        }
    }
}
