//! `imprintd`: the control daemon.
//!
//! Serves today: `HostService` (agents register and heartbeat), health and
//! reflection, on the catalog (SQLite by default, PostgreSQL by URL). The
//! image and operation services follow (issue 4).

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use imprint_daemon::{catalog::Catalog, hosts::Hosts};
use imprint_proto::v1::host_service_server::HostServiceServer;

/// The control daemon of imprint.
#[derive(Debug, Parser)]
#[command(name = "imprintd", version)]
struct Args {
    /// Catalog database: `sqlite:///path/catalog.db` or `postgres://...`.
    /// Default: `<state-dir>/catalog.db`.
    #[arg(long, env = "IMPRINTD_CATALOG")]
    catalog: Option<String>,
    /// Directory for the embedded catalog.
    #[arg(long, default_value = "/var/lib/imprintd")]
    state_dir: PathBuf,
    /// gRPC address (loopback only until TLS lands).
    #[arg(long, default_value = "127.0.0.1:7340")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        bail!(
            "refusing to serve on {}: without TLS imprintd listens on loopback only",
            args.listen
        );
    }
    let url = match args.catalog {
        Some(u) => u,
        None => {
            std::fs::create_dir_all(&args.state_dir)
                .with_context(|| format!("create {}", args.state_dir.display()))?;
            format!(
                "sqlite://{}?mode=rwc",
                args.state_dir.join("catalog.db").display()
            )
        }
    };
    let catalog = Catalog::open(&url).await.context("open the catalog")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<HostServiceServer<Hosts>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(imprint_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    tracing::info!(%local, "imprintd serving");
    println!("listening on {local}");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(HostServiceServer::new(Hosts::new(catalog)))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await?;
    Ok(())
}
