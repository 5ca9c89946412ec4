//! `imprint-agent`: serve the agent API on this host.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Parser;
use imprint_agent::{
    hypervisor::Hypervisor,
    journal::Journal,
    libvirt::Libvirt,
    listen::{self, Listen},
    service::{Agent, Settings},
    work,
};
use serde::Deserialize;

/// The per-host agent of imprint: captures and deploys libvirt guests.
#[derive(Debug, Parser)]
#[command(name = "imprint-agent", version)]
struct Args {
    /// TOML configuration file (flags override it).
    #[arg(long, short, env = "IMPRINT_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// libvirt URI.
    #[arg(long)]
    libvirt_uri: Option<String>,
    /// Image store: a directory (the SAN mount) or `s3://bucket/prefix`
    /// (endpoint and keys from `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`).
    #[arg(long)]
    store: Option<String>,
    /// Where to serve gRPC: `unix:/PATH` (default without TLS:
    /// `unix:/run/imprint-agent/agent.sock`, mode 0660) or `HOST:PORT`
    /// (TLS only: plaintext is never served on TCP, loopback included).
    #[arg(long)]
    listen: Option<String>,
    /// Group of the UNIX socket (the group the daemon runs as, `imprint`
    /// with the packaged units): its members may call the agent.
    #[arg(long)]
    socket_group: Option<String>,
    /// URL the daemon reaches this agent at (default: `unix://PATH` or
    /// `https://` and the listen address). Needed when listening on 0.0.0.0.
    #[arg(long)]
    advertise: Option<String>,
    /// File holding this host's token (`imprintd host add NAME` prints it):
    /// the agent's credential when it registers and heartbeats. Not needed
    /// with a TLS certificate whose subjectAltName is the host name.
    #[arg(long, env = "IMPRINT_HOST_TOKEN_FILE")]
    host_token_file: Option<PathBuf>,
    /// Exported files are mode 0600 (root only); with a group, 0640 and
    /// readable by that group.
    #[arg(long)]
    export_group: Option<String>,
    /// Where captures of running guests keep the NBD socket and scratch
    /// files of their point-in-time view (the guest runs again before its
    /// disks are read). Default /var/lib/imprint-agent/backup.
    #[arg(long)]
    backup_dir: Option<PathBuf>,
    /// Where lazy deploys' NBD exports put their sockets (QEMU connects to
    /// them). Default /var/lib/imprint-agent/nbd.
    #[arg(long)]
    nbd_dir: Option<PathBuf>,
    /// Lazy deploys filling at once on this host, at most (default 4).
    #[arg(long)]
    max_lazy_fills: Option<usize>,
    /// Cap a lazy deploy's fill at this many MiB/s per disk (default: no
    /// cap).
    #[arg(long)]
    lazy_fill_mib_s: Option<u64>,
    /// Read captured disks with the guest off instead (downtime grows with
    /// the disks; for libvirt without the backup API).
    #[arg(long)]
    offline_read: bool,
    /// Where NICs without an attachment of their own (imported images, NICs
    /// a profile adds) go: `network:NAME` (default `network:default`),
    /// `bridge:NAME`, or `udp` (a loopback tunnel, for tests).
    #[arg(long)]
    default_nic: Option<String>,
    /// This agent's certificate (PEM). With --tls-key and --tls-ca: serve
    /// TLS, require daemons to present a certificate signed by the CA, and
    /// present this one to the daemon.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// This agent's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// CA certificate (PEM) that signs daemon and agent certificates.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Imports read and exports write files only below this directory
    /// (default /var/lib/imprint-agent/transfer).
    #[arg(long)]
    transfer_dir: Option<PathBuf>,
    /// URL prefixes imports may be downloaded from (`s3://bucket/imports/`,
    /// `https://images.example.com/`); repeatable. None: no URL imports.
    /// Downloads use this agent's network and S3 keys, so list only what
    /// every account that may use this host may read.
    #[arg(long = "import-url-prefix")]
    import_url_prefixes: Vec<String>,
    /// At SIGTERM, how long in-flight operations get to finish cancelling
    /// (guests back to their power state) before the agent exits anyway;
    /// its journal covers the rest at the next start.
    #[arg(long, default_value_t = 120)]
    stop_timeout_seconds: u64,
    /// Journal of in-flight work.
    #[arg(long)]
    journal_dir: Option<PathBuf>,
    /// Storage pool for deploys that name none.
    #[arg(long)]
    default_pool: Option<String>,
    /// Domain type of deployed guests: kvm, qemu, or auto.
    #[arg(long)]
    domain_type: Option<String>,
    /// Directory for deployed guests' serial console logs.
    #[arg(long)]
    console_log_dir: Option<PathBuf>,
    /// Control daemon(s) to register with and heartbeat to
    /// (`http://HOST:PORT`; several, comma-separated or repeated, for
    /// daemons sharing one catalog: the agent fails over between them).
    #[arg(long, value_delimiter = ',')]
    daemon: Vec<String>,
    /// This host's name at the daemon (default: the system host name).
    #[arg(long)]
    host_name: Option<String>,
    /// The site (datacenter) this host is in; its --store is that site's
    /// store. Deploys read from the store of the host's site when the image
    /// is there.
    #[arg(long)]
    site: Option<String>,
    /// Print the man page (roff; the Debian package installs it) and exit.
    #[arg(long, hide = true)]
    man: bool,
}

/// The configuration file; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    libvirt_uri: Option<String>,
    store: Option<String>,
    listen: Option<String>,
    socket_group: Option<String>,
    host_token_file: Option<PathBuf>,
    export_group: Option<String>,
    default_nic: Option<String>,
    backup_dir: Option<PathBuf>,
    nbd_dir: Option<PathBuf>,
    max_lazy_fills: Option<usize>,
    lazy_fill_mib_s: Option<u64>,
    offline_read: Option<bool>,
    journal_dir: Option<PathBuf>,
    default_pool: Option<String>,
    domain_type: Option<String>,
    console_log_dir: Option<PathBuf>,
    shutdown_timeout_seconds: Option<u64>,
    daemon: Option<String>,
    host_name: Option<String>,
    site: Option<String>,
    advertise: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    metrics_listen: Option<SocketAddr>,
    transfer_dir: Option<PathBuf>,
    import_url_prefixes: Option<Vec<String>>,
}

fn detect_domain_type() -> String {
    // Hardware KVM needs vmx/svm; PVM-style /dev/kvm without them hangs
    // stock guest kernels.
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpu.split_whitespace().any(|w| w == "vmx" || w == "svm");
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    if hw && !pvm && std::path::Path::new("/dev/kvm").exists() {
        "kvm".into()
    } else {
        "qemu".into()
    }
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    let r = rt.block_on(run());
    // Work still running once the server stopped (past the stop timeout,
    // or a lazy fill left to the next start) holds no exit: the journal
    // finishes or resumes it at the next start.
    rt.shutdown_timeout(Duration::from_millis(500));
    r
}

async fn run() -> Result<()> {
    imprint_service::logging::init();
    let args = Args::parse();
    if args.man {
        return clap_mangen::Man::new(<Args as clap::CommandFactory>::command())
            .section("8")
            .render(&mut std::io::stdout())
            .context("write the man page");
    }
    let file: FileConfig = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("read config {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parse config {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let uri = args
        .libvirt_uri
        .or(file.libvirt_uri)
        .unwrap_or_else(|| "qemu:///system".into());
    let store_dir = args
        .store
        .or(file.store)
        .context("no store: pass --store or set store in the config")?;
    let store_location = imprint_store::Location::parse(&store_dir)?;
    let tls = imprint_proto::tls::TlsFiles::from_parts(
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
        args.tls_ca.or(file.tls_ca),
    )
    .map_err(anyhow::Error::msg)?;
    let listen: Listen = match args.listen.or(file.listen) {
        Some(l) => l.parse().map_err(anyhow::Error::msg)?,
        None => Listen::default_for(tls.is_some()),
    };
    listen.check(tls.is_some())?;
    let socket_gid = args
        .socket_group
        .or(file.socket_group)
        .map(|g| listen::group_id(&g))
        .transpose()?;
    let export_gid = args
        .export_group
        .or(file.export_group)
        .map(|g| listen::group_id(&g))
        .transpose()?;
    let host_token = args
        .host_token_file
        .or(file.host_token_file)
        .map(|p| {
            std::fs::read_to_string(&p)
                .map(|t| t.trim().to_string())
                .with_context(|| format!("read host token {}", p.display()))
        })
        .transpose()?;
    let journal_dir = args
        .journal_dir
        .or(file.journal_dir)
        .unwrap_or_else(|| PathBuf::from("/var/lib/imprint-agent/journal"));
    let domain_type = match args.domain_type.or(file.domain_type).as_deref() {
        None | Some("auto") => detect_domain_type(),
        Some(t @ ("kvm" | "qemu")) => t.to_string(),
        Some(other) => bail!("domain type {other:?} must be kvm, qemu or auto"),
    };
    let settings = Settings {
        default_pool: args
            .default_pool
            .or(file.default_pool)
            .unwrap_or_else(|| "default".into()),
        domain_type,
        console_log_dir: args.console_log_dir.or(file.console_log_dir),
        default_shutdown_timeout: Duration::from_secs(file.shutdown_timeout_seconds.unwrap_or(300)),
        transfer_dir: Some(
            args.transfer_dir
                .or(file.transfer_dir)
                .unwrap_or_else(|| PathBuf::from("/var/lib/imprint-agent/transfer")),
        ),
        import_url_prefixes: if args.import_url_prefixes.is_empty() {
            file.import_url_prefixes.unwrap_or_default()
        } else {
            args.import_url_prefixes
        },
        export_group: export_gid,
        default_nic: args
            .default_nic
            .or(file.default_nic)
            .map(|n| n.parse())
            .transpose()
            .map_err(anyhow::Error::msg)?
            .unwrap_or_default(),
        backup_dir: if args.offline_read || file.offline_read == Some(true) {
            None
        } else {
            Some(
                args.backup_dir
                    .or(file.backup_dir)
                    .unwrap_or_else(|| PathBuf::from("/var/lib/imprint-agent/backup")),
            )
        },
        nbd_dir: args
            .nbd_dir
            .or(file.nbd_dir)
            .unwrap_or_else(|| PathBuf::from("/var/lib/imprint-agent/nbd")),
        max_lazy_fills: args.max_lazy_fills.or(file.max_lazy_fills).unwrap_or(4),
        lazy_fill_mib_s: args.lazy_fill_mib_s.or(file.lazy_fill_mib_s).unwrap_or(0),
    };
    // QEMU (another user) reaches the export sockets by name only.
    std::fs::create_dir_all(&settings.nbd_dir)
        .and_then(|()| {
            std::fs::set_permissions(
                &settings.nbd_dir,
                std::os::unix::fs::PermissionsExt::from_mode(0o711),
            )
        })
        .with_context(|| format!("create NBD directory {}", settings.nbd_dir.display()))?;
    if let Some(dir) = &settings.transfer_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create transfer directory {}", dir.display()))?;
    }
    let store = imprint_store::Store::open_or_create_at(&store_location, false, Default::default())
        .with_context(|| format!("open store {store_location}"))?;
    // Captures of a killed agent never unregistered: their registrations
    // would keep GC from freeing their orphan chunks for the writer
    // timeout. This host's dead ones go now.
    if let Some(host) = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
    {
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.retire_dead_writers(&host)).await? {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                retired = n,
                "retired the store writer registrations of dead captures"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot retire dead writer registrations"),
        }
    }
    let journal = Journal::open(&journal_dir)?;
    let hv: Arc<dyn Hypervisor> = Arc::new(Libvirt::new(&uri));

    // Finish or undo what a previous run left half-done, before serving;
    // what cannot be finished now (libvirtd down) is retried every 15 s
    // while serving (with what failed deploys of this run leave).
    let (hv2, j2) = (hv.clone(), journal.clone());
    for (id, r) in tokio::task::spawn_blocking(move || work::recover(&*hv2, &j2)).await? {
        match r {
            Ok(()) => tracing::info!(operation = %id, "recovered operation left by a previous run"),
            Err(e) => {
                tracing::error!(operation = %id, error = %e, "could not recover operation; retrying in the background")
            }
        }
    }

    let (incoming, local) = match &listen {
        Listen::Unix(path) => {
            let l = listen::bind_unix(path, socket_gid)?;
            (Incoming::Unix(l), listen.clone())
        }
        Listen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen on {addr}"))?;
            let local = Listen::Tcp(l.local_addr()?);
            (Incoming::Tcp(l), local)
        }
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<imprint_proto::v1::agent_service_server::AgentServiceServer<Agent>>()
        .await;
    // Reflection v1 and v1alpha: grpcurl and older clients ask the latter.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(imprint_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(imprint_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    tracing::info!(%local, %uri, store = %store_location, settings = ?settings, "imprint-agent serving");
    // Tests and scripts read this line to find a port chosen by the kernel.
    println!("listening on {local}");
    let daemons: Vec<String> = if args.daemon.is_empty() {
        file.daemon
            .map(|d| {
                d.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        args.daemon
    };
    let agent =
        Agent::new(hv, store, journal, settings).with_store_location(store_location.clone());
    // A lazy deploy whose guest ran on this agent's exports goes on: the
    // exports are served again (QEMU reconnects) and its fill resumes, as
    // an operation under its id before anyone can ask for it.
    let resumed = agent.resume_fills().await;
    if resumed > 0 {
        tracing::info!(operations = resumed, "resumed lazy deploys' fills");
    }
    tokio::spawn(
        agent
            .clone()
            .recover_leftovers_every(Duration::from_secs(15)),
    );
    if !daemons.is_empty() {
        let name = args
            .host_name
            .or(file.host_name)
            .or_else(|| {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
            })
            .context("no host name: pass --host-name")?;
        let endpoint = args
            .advertise
            .or(file.advertise)
            .unwrap_or_else(|| match &local {
                Listen::Unix(p) => format!("unix://{}", p.display()),
                Listen::Tcp(a) => format!("https://{a}"),
            });
        if tls.is_none() && host_token.is_none() {
            bail!(
                "--daemon needs this host's credential: --host-token-file (from `imprintd host add {name}`) or a TLS certificate naming the host"
            );
        }
        let client_tls = tls
            .as_ref()
            .map(imprint_proto::tls::TlsFiles::client)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let site = args.site.or(file.site).unwrap_or_default();
        tokio::spawn(register_and_heartbeat(
            daemons,
            site,
            client_tls,
            Registration {
                name,
                endpoint,
                libvirt_uri: uri.clone(),
                token: host_token,
                agent: agent.clone(),
            },
        ));
    }
    if let Some(addr) = args.metrics_listen.or(file.metrics_listen) {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen for metrics on {addr}"))?;
        tokio::spawn(imprint_service::metrics::serve(
            l,
            imprint_service::shutdown::terminated(),
        ));
    }
    let on_stop = agent.clone();
    let stop_timeout = Duration::from_secs(args.stop_timeout_seconds);
    imprint_service::notify::ready(&format!("serving on {local}, libvirt {uri}"));
    // The watchdog proves the event loop turns; libvirtd being down is
    // not a reason to restart the agent (it waits libvirtd out).
    imprint_service::notify::spawn_watchdog(|| async { true });
    let mut server = tonic::transport::Server::builder();
    if let Some(t) = &tls {
        // Only daemons (certificates of the CA) may call the agent.
        server = server
            .tls_config(t.server(false).map_err(anyhow::Error::msg)?)
            .context("TLS configuration")?;
    }
    let router = server
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(agent.into_server());
    let stopped = async move {
        imprint_service::shutdown::terminated().await;
        let n = on_stop.cancel_all();
        imprint_service::notify::stopping(&format!(
            "stopping; cancelling {n} operation(s): guests go back to their power state"
        ));
        tracing::info!(operations = n, "stopping: cancelling in-flight operations");
        let deadline = std::time::Instant::now() + stop_timeout;
        while on_stop.running() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if on_stop.running() > 0 {
            tracing::warn!(
                "operations still running at exit; the journal recovers them at the next start"
            );
        }
    };
    match incoming {
        Incoming::Unix(l) => {
            router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(l),
                    stopped,
                )
                .await?
        }
        Incoming::Tcp(l) => {
            router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(l),
                    stopped,
                )
                .await?
        }
    }
    if let Listen::Unix(p) = &local {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("imprint-agent stopped");
    Ok(())
}

/// The bound listener.
enum Incoming {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

/// What the agent tells the daemon about itself, and its credential.
struct Registration {
    name: String,
    endpoint: String,
    libvirt_uri: String,
    /// The host token (`authorization: Bearer`); none with a certificate
    /// bound to the host name.
    token: Option<String>,
    /// The agent: heartbeats report its running operations and cancel
    /// those the daemon ended.
    agent: Agent,
}

impl Registration {
    fn request<T>(&self, msg: T) -> Result<tonic::Request<T>> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}")
                    .parse()
                    .context("the host token is not printable ASCII")?,
            );
        }
        Ok(r)
    }
}

/// Register with a daemon, then heartbeat at the interval it asks for;
/// retried forever (a daemon may start later or restart). With several
/// daemons (one catalog), a failed call moves on to the next one at once.
async fn register_and_heartbeat(
    daemons: Vec<String>,
    site: String,
    tls: Option<tonic::transport::ClientTlsConfig>,
    me: Registration,
) {
    let Registration {
        name,
        endpoint,
        libvirt_uri,
        ..
    } = &me;
    use imprint_proto::v1::{
        HeartbeatRequest, RegisterHostRequest, host_service_client::HostServiceClient,
    };
    let mut registered = false;
    let mut interval = Duration::from_secs(10);
    let mut current = 0;
    let mut failures_in_a_row = 0;
    loop {
        let daemon = daemons[current % daemons.len()].clone();
        let result = async {
            let mut ep = tonic::transport::Endpoint::from_shared(daemon.clone())?
                .connect_timeout(Duration::from_secs(5));
            if let Some(t) = &tls {
                ep = ep.tls_config(t.clone())?;
            }
            let mut client = HostServiceClient::new(ep.connect().await?);
            if !registered {
                client
                    .register_host(me.request(RegisterHostRequest {
                        name: name.clone(),
                        agent_endpoint: endpoint.clone(),
                        libvirt_uri: libvirt_uri.clone(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        cpus: std::thread::available_parallelism()
                            .map_or(0, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
                        site: site.clone(),
                        ..Default::default()
                    })?)
                    .await?;
                tracing::info!(%daemon, host = %name, "registered with the daemon");
            }
            let r = client
                .heartbeat(me.request(HeartbeatRequest {
                    name: name.clone(),
                    running_operation_ids: me.agent.running_ids(),
                })?)
                .await?
                .into_inner();
            for id in &r.cancel_operation_ids {
                if me.agent.cancel_one(id) {
                    tracing::warn!(operation = %id, "the daemon ended this operation; cancelling it");
                }
            }
            anyhow::Ok(r.interval_seconds)
        }
        .await;
        match result {
            Ok(secs) => {
                registered = true;
                failures_in_a_row = 0;
                interval = Duration::from_secs(u64::from(secs.max(1)));
            }
            Err(e) => {
                // A daemon that forgot us (new catalog) answers NOT_FOUND.
                registered = false;
                failures_in_a_row += 1;
                current += 1;
                if daemons.len() > 1 {
                    tracing::warn!(%daemon, next = %daemons[current % daemons.len()], error = %e, "cannot reach the daemon; trying the next one");
                } else {
                    tracing::warn!(%daemon, error = %e, "cannot reach the daemon; retrying");
                }
                // Straight on to the next daemon until each was tried once.
                if failures_in_a_row % daemons.len() != 0 {
                    continue;
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}
