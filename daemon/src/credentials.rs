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

use tonic::Request;

use crate::{
    catalog::{Catalog, CatalogError},
    error::DaemonError,
};

/// Check that the caller holds the credential of host `name`.
pub async fn authenticate_host<T>(
    catalog: &Catalog,
    req: &Request<T>,
    name: &str,
) -> Result<(), DaemonError> {
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
            Ok(host) => Err(DaemonError::denied(format!(
                "this token belongs to host {host:?}, not {name:?}"
            ))),
            Err(CatalogError::NotFound(_)) => Err(DaemonError::unauthenticated(
                "invalid host token (imprintd host add NAME makes one)",
            )),
            Err(e) => Err(e.into()),
        };
    }
    if cert.is_some() {
        return Err(DaemonError::denied(format!(
            "the client certificate does not name host {name:?} in its subjectAltName, and no host token was sent"
        )));
    }
    Err(DaemonError::unauthenticated(format!(
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
            let code = |r: Result<(), DaemonError>| r.expect_err("refused").kind().code();
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
