//! Mutual TLS between the daemon and its agents (and TLS for API clients),
//! from PEM files: one CA that signs every daemon and agent certificate.
//!
//! - The agent's server requires a client certificate signed by the CA:
//!   only daemons call it.
//! - The daemon's server accepts clients without a certificate (users
//!   authenticate with bearer tokens) but its `HostService` requires one,
//!   so only agents holding a certificate of the CA register and heartbeat.
//! - Each side's client presents its own certificate and checks the
//!   server's against the CA (and the name or address it dials).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The PEM files of one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate (chain).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signs the other side's certificates.
    pub ca: PathBuf,
}

fn read(what: &str, p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("read TLS {what} {}: {e}", p.display()))
}

impl TlsFiles {
    /// From three optional paths: all or none.
    pub fn from_parts(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Option<Self>, String> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(Self { cert, key, ca })),
            _ => Err("TLS needs all three of --tls-cert, --tls-key and --tls-ca".into()),
        }
    }

    fn identity(&self) -> Result<Identity, String> {
        Ok(Identity::from_pem(
            read("certificate", &self.cert)?,
            read("key", &self.key)?,
        ))
    }

    fn ca(&self) -> Result<Certificate, String> {
        Ok(Certificate::from_pem(read("CA", &self.ca)?))
    }

    /// Server side; `optional_client_cert` lets clients without a
    /// certificate in (their calls then carry no peer certificates).
    pub fn server(&self, optional_client_cert: bool) -> Result<ServerTlsConfig, String> {
        Ok(ServerTlsConfig::new()
            .identity(self.identity()?)
            .client_ca_root(self.ca()?)
            .client_auth_optional(optional_client_cert))
    }

    /// Client side.
    pub fn client(&self) -> Result<ClientTlsConfig, String> {
        Ok(ClientTlsConfig::new()
            .identity(self.identity()?)
            .ca_certificate(self.ca()?))
    }
}
