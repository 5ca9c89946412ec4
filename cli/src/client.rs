//! Connecting to the daemon: endpoint, token and TLS from flags, then the
//! environment (`IMPRINT_ENDPOINT`, `IMPRINT_TOKEN`, `IMPRINT_CA`), then
//! the config file (`--config`, `IMPRINT_CONFIG`, or
//! `~/.config/imprint/config.toml`), in that order.

use std::path::PathBuf;

use anyhow::{Context, Result};
use imprint_proto::v1::{
    account_service_client::AccountServiceClient, guest_service_client::GuestServiceClient,
    host_service_client::HostServiceClient, image_service_client::ImageServiceClient,
    operation_service_client::OperationServiceClient, profile_service_client::ProfileServiceClient,
};
use serde::Deserialize;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

/// Where and who.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// Daemon URL (`http://127.0.0.1:7340`; `https://` for TLS).
    #[arg(long, env = "IMPRINT_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// API token.
    #[arg(long, env = "IMPRINT_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed the daemon's certificate.
    #[arg(long, env = "IMPRINT_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Config file (TOML: endpoint, token, ca).
    #[arg(long, env = "IMPRINT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    endpoint: Option<String>,
    token: Option<String>,
    ca: Option<PathBuf>,
}

/// Adds the bearer token to every call.
#[derive(Debug, Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut r: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

type Svc = InterceptedService<Channel, Auth>;

/// Clients of the daemon's services.
#[derive(Debug, Clone)]
pub struct Api {
    pub images: ImageServiceClient<Svc>,
    pub ops: OperationServiceClient<Svc>,
    pub hosts: HostServiceClient<Svc>,
    pub accounts: AccountServiceClient<Svc>,
    pub guests: GuestServiceClient<Svc>,
    pub profiles: ProfileServiceClient<Svc>,
    pub endpoint: String,
}

impl Conn {
    fn file(&self) -> Result<FileConfig> {
        let (path, explicit) = match &self.config {
            Some(p) => (p.clone(), true),
            None => match std::env::var_os("HOME") {
                Some(h) => (PathBuf::from(h).join(".config/imprint/config.toml"), false),
                None => return Ok(FileConfig::default()),
            },
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("parse config {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(FileConfig::default())
            }
            Err(e) => Err(e).with_context(|| format!("read config {}", path.display())),
        }
    }

    /// Connect (lazily: the first call reports an unreachable daemon).
    pub fn connect(&self) -> Result<Api> {
        let file = self.file()?;
        let endpoint = self
            .endpoint
            .clone()
            .or(file.endpoint)
            .unwrap_or_else(|| "http://127.0.0.1:7340".into());
        let token = self.token.clone().or(file.token);
        let ca = self.ca.clone().or(file.ca);
        let mut ep = Endpoint::from_shared(endpoint.clone())
            .with_context(|| format!("endpoint {endpoint:?} is not a URL"))?
            .connect_timeout(std::time::Duration::from_secs(10));
        if endpoint.starts_with("https://") {
            // Only the deployment's own CA is trusted.
            let ca = ca.context(
                "an https:// endpoint needs --ca (the CA that signed the daemon's certificate)",
            )?;
            let pem = std::fs::read(&ca).with_context(|| format!("read CA {}", ca.display()))?;
            ep =
                ep.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
        }
        let auth = Auth(
            token
                .map(|t| format!("Bearer {t}").parse())
                .transpose()
                .context("the token must be printable ASCII")?,
        );
        let ch = ep.connect_lazy();
        Ok(Api {
            images: ImageServiceClient::with_interceptor(ch.clone(), auth.clone()),
            ops: OperationServiceClient::with_interceptor(ch.clone(), auth.clone()),
            hosts: HostServiceClient::with_interceptor(ch.clone(), auth.clone()),
            accounts: AccountServiceClient::with_interceptor(ch.clone(), auth.clone()),
            guests: GuestServiceClient::with_interceptor(ch.clone(), auth.clone()),
            profiles: ProfileServiceClient::with_interceptor(ch, auth),
            endpoint,
        })
    }

    /// Connect and run `f` with the clients (an API command); a daemon
    /// that cannot be reached is named in the error.
    pub async fn call(&self, f: impl AsyncFnOnce(&mut Api) -> Result<u8>) -> Result<u8> {
        let mut api = self.connect()?;
        let endpoint = api.endpoint.clone();
        f(&mut api)
            .await
            .map_err(|e| unreachable_names_endpoint(e, &endpoint))
    }
}

/// A connection failure names the daemon's endpoint. UNAVAILABLE answered
/// by the daemon itself (an agent down, a store unreachable) is passed on
/// as it is: it is not about reaching the daemon.
fn unreachable_names_endpoint(e: anyhow::Error, endpoint: &str) -> anyhow::Error {
    use std::error::Error as _;
    let transport = |s: &tonic::Status| {
        s.source()
            .is_some_and(|src| src.downcast_ref::<tonic::transport::Error>().is_some())
    };
    match e.downcast_ref::<tonic::Status>() {
        Some(s) if s.code() == tonic::Code::Unavailable && transport(s) => {
            anyhow::Error::new(tonic::Status::unavailable(format!(
                "cannot reach the daemon at {endpoint}: {}",
                s.message()
            )))
        }
        _ => e,
    }
}
