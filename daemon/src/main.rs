//! `imprintd`: the control daemon.
//!
//! `imprintd serve` (the default) serves the image, operation and host
//! APIs with health and reflection on the catalog (SQLite by default,
//! PostgreSQL by URL). `imprintd account ...` administers accounts directly
//! in the catalog (run it where the daemon's catalog is reachable).

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use imprint_daemon::{catalog::Catalog, dispatch::Dispatcher};

/// The control daemon of imprint.
#[derive(Debug, Parser)]
#[command(name = "imprintd", version)]
struct Args {
    /// Catalog database: `sqlite:///path/catalog.db` or `postgres://...`.
    /// Default: `<state-dir>/catalog.db`.
    #[arg(long, env = "IMPRINTD_CATALOG", global = true)]
    catalog: Option<String>,
    /// Directory for the embedded catalog.
    #[arg(long, default_value = "/var/lib/imprintd", global = true)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Serve,
}

#[derive(Debug, clap::Args)]
struct Serve {
    /// gRPC address. Without TLS only loopback is allowed.
    #[arg(long, default_value = "127.0.0.1:7340")]
    listen: SocketAddr,
    /// The daemon's certificate (PEM). With --tls-key and --tls-ca: serve
    /// TLS (agents must show a certificate of the CA to register), and call
    /// agents over mutual TLS with this certificate.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The daemon's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// CA certificate (PEM) that signs daemon and agent certificates.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// The image store the agents use: a directory (the SAN mount) or
    /// `s3://bucket/prefix` (keys from the `AWS_*` environment). Needed to
    /// delete images and to report the bytes each holds alone.
    #[arg(long, env = "IMPRINTD_STORE")]
    store: Option<String>,
    /// Another site (datacenter) and its store, `NAME=LOCATION` (a
    /// directory or `s3://bucket/prefix`); repeatable. `--store` is the
    /// site `default`. Sites are kept in the catalog, so every daemon on a
    /// shared catalog knows them.
    #[arg(long = "site", value_name = "NAME=LOCATION")]
    sites: Vec<String>,
    /// This daemon's name in operation leases, unique among the daemons
    /// sharing a catalog and kept across restarts (default: host name and
    /// port, `HOST:PORT`).
    #[arg(long, env = "IMPRINTD_DAEMON_ID")]
    daemon_id: Option<String>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address.
    #[arg(long, env = "IMPRINTD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Lint every image a capture or import makes, on the host that made
    /// it (needs libguestfs there): its report is kept before anyone
    /// deploys or publishes it. `false`: only `image lint` lints.
    #[arg(long, env = "IMPRINTD_AUTO_LINT", default_value_t = true, action = clap::ArgAction::Set)]
    auto_lint: bool,
    /// Deploys that do not say (`lazy` unset) start their guest before
    /// its volumes are written wherever that can be (a started guest, a
    /// pool of files, room in the host's fill limit); elsewhere they are
    /// written first. `false`: only deploys asking for it are lazy.
    #[arg(long, env = "IMPRINTD_LAZY_DEPLOYS", default_value_t = true, action = clap::ArgAction::Set)]
    lazy_deploys: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Administer accounts.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Administer host credentials.
    #[command(subcommand)]
    Host(HostCmd),
    /// Print the man page (roff; the Debian package installs it).
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Subcommand)]
enum HostCmd {
    /// Make host NAME's token and print it (shown once; again: replace it).
    /// Its agent registers and heartbeats with it (--host-token-file).
    Add { name: String },
    /// Remove host NAME: its token and its registration.
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
enum AccountCmd {
    /// Create an account and print its API token (shown once).
    Create {
        name: String,
        /// May make images public.
        #[arg(long)]
        can_publish: bool,
        /// May use every host and see every operation.
        #[arg(long)]
        admin: bool,
    },
    /// Replace an account's API token and print the new one.
    Token { name: String },
    /// Let an account capture from and deploy to a host (`*`: every host).
    AllowHost { name: String, host: String },
    /// Take a host away from an account.
    DisallowHost { name: String, host: String },
}

fn catalog_url(args: &Args) -> Result<String> {
    Ok(match &args.catalog {
        Some(u) => u.clone(),
        None => {
            std::fs::create_dir_all(&args.state_dir)
                .with_context(|| format!("create {}", args.state_dir.display()))?;
            format!(
                "sqlite://{}?mode=rwc",
                args.state_dir.join("catalog.db").display()
            )
        }
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    imprint_service::logging::init();
    let args = Args::parse();
    if matches!(args.command, Some(Command::Man)) {
        return clap_mangen::Man::new(<Args as clap::CommandFactory>::command())
            .section("8")
            .render(&mut std::io::stdout())
            .context("write the man page");
    }
    let catalog = Catalog::open(&catalog_url(&args)?)
        .await
        .context("open the catalog")?;
    match args.command {
        None | Some(Command::Serve) => serve(catalog, args.serve).await,
        Some(Command::Account(cmd)) => account(&catalog, cmd).await,
        Some(Command::Host(cmd)) => host(&catalog, cmd).await,
        Some(Command::Man) => Ok(()),
    }
}

async fn host(catalog: &Catalog, cmd: HostCmd) -> Result<()> {
    match cmd {
        HostCmd::Add { name } => {
            let token = catalog.add_host_token(&name).await?;
            eprintln!("host {name}: give this token to its agent (--host-token-file, mode 0600)");
            println!("{token}");
        }
        HostCmd::Remove { name } => catalog.remove_host(&name).await?,
    }
    Ok(())
}

async fn account(catalog: &Catalog, cmd: AccountCmd) -> Result<()> {
    match cmd {
        AccountCmd::Create {
            name,
            can_publish,
            admin,
        } => {
            let (a, token) = catalog.create_account(&name, can_publish, admin).await?;
            eprintln!("created account {} ({})", a.name, a.id);
            println!("{token}");
        }
        AccountCmd::Token { name } => println!("{}", catalog.rotate_token(&name).await?),
        AccountCmd::AllowHost { name, host } => catalog.allow_host(&name, &host).await?,
        AccountCmd::DisallowHost { name, host } => catalog.disallow_host(&name, &host).await?,
    }
    Ok(())
}

/// The daemon's own image store (`--store`).
fn open_store(s: &str) -> Result<imprint_store::Store> {
    let location = imprint_store::Location::parse(s)?;
    imprint_store::Store::open_or_create_at(&location, true, Default::default())
        .with_context(|| format!("open the image store {location}"))
}

/// The sites of `--store` (the default site) and `--site NAME=LOCATION`.
async fn record_sites(catalog: &Catalog, store: Option<&str>, sites: &[String]) -> Result<()> {
    if let Some(s) = store {
        catalog
            .upsert_site(imprint_daemon::catalog::DEFAULT_SITE, s)
            .await
            .context("record the default site")?;
    }
    for spec in sites {
        let (name, location) = spec
            .split_once('=')
            .with_context(|| format!("--site {spec:?}: write NAME=LOCATION"))?;
        imprint_store::Location::parse(location).with_context(|| format!("--site {spec}"))?;
        catalog
            .upsert_site(name, location)
            .await
            .with_context(|| format!("--site {spec}"))?;
    }
    Ok(())
}

async fn serve(catalog: Catalog, args: Serve) -> Result<()> {
    let tls = imprint_proto::tls::TlsFiles::from_parts(args.tls_cert, args.tls_key, args.tls_ca)
        .map_err(anyhow::Error::msg)?;
    if tls.is_none() && !args.listen.ip().is_loopback() {
        bail!(
            "refusing to serve on {}: without TLS (--tls-cert, --tls-key, --tls-ca) imprintd listens on loopback only",
            args.listen
        );
    }
    let agent_tls = tls
        .as_ref()
        .map(imprint_proto::tls::TlsFiles::client)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let store = args.store.as_deref().map(open_store).transpose()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let daemon_id = args.daemon_id.clone().unwrap_or_else(|| {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "imprintd".into());
        format!("{host}:{}", local.port())
    });
    let catalog = catalog.with_daemon_id(&daemon_id);
    if let Some(addr) = args.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen for metrics on {addr}"))?;
        tracing::info!(addr = %l.local_addr()?, "metrics on /metrics");
        tokio::spawn(imprint_service::metrics::serve(
            l,
            imprint_service::shutdown::terminated(),
        ));
    }
    record_sites(&catalog, args.store.as_deref(), &args.sites).await?;
    let dispatcher = Dispatcher::with_agent_tls(catalog.clone(), store, agent_tls);
    dispatcher.set_auto_lint(args.auto_lint);
    dispatcher.set_lazy_deploys(args.lazy_deploys);
    dispatcher.start().await?;
    let router = imprint_daemon::server::router(dispatcher.clone(), tls.as_ref()).await?;
    tracing::info!(%local, store = ?args.store, %daemon_id, "imprintd serving");
    println!("listening on {local}");
    imprint_service::notify::ready(&format!("serving on {local}"));
    // The watchdog is petted while the catalog answers.
    imprint_service::notify::spawn_watchdog(move || {
        let c = catalog.clone();
        async move { c.ping().await.is_ok() }
    });
    router
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                imprint_service::shutdown::terminated().await;
                // Operations are rows: the next start resumes them.
                imprint_service::notify::stopping(
                    "stopping; running operations resume at the next start",
                );
            },
        )
        .await?;
    dispatcher.stop().await;
    tracing::info!("imprintd stopped");
    Ok(())
}
