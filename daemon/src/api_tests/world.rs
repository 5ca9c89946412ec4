//! The world every scenario runs in: a daemon, an agent with a fake
//! hypervisor and one guest "a", a store, and accounts with their tokens;
//! and the calls scenarios make on it.

use std::{collections::HashMap, future::Future, path::Path, sync::Arc, time::Duration};

use imprint_agent::{
    hypervisor::{
        GuestRef, PowerState,
        fake::{FakeGuest, FakeHypervisor},
    },
    journal::Journal,
    service::{Agent, Settings},
};
use imprint_proto::v1::{
    self as pb, image_service_client::ImageServiceClient,
    operation_service_client::OperationServiceClient,
};
use imprint_store::{Store, StoreConfig};
use tonic::{Code, Request, transport::Channel};

use crate::{catalog::Catalog, catalog::HostRow, dispatch::Dispatcher, testpg::catalogs};

fn guest_xml(name: &str, disk: &Path) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><uuid>{name}-uuid</uuid><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type></os><features><acpi/></features><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         </devices></domain>",
        disk.display()
    )
}

/// A daemon, an agent with a fake hypervisor and one guest "a", a store,
/// and accounts alice (may publish), bob, carol, dave with their tokens.
pub(super) struct World {
    /// Holds the guest's disk, the store, the agent's folders.
    pub(super) tmp: tempfile::TempDir,
    /// The store the agent and the daemon use (site `default`).
    pub(super) store_dir: std::path::PathBuf,
    pub(super) hv: Arc<FakeHypervisor>,
    pub(super) images: ImageServiceClient<Channel>,
    pub(super) ops: OperationServiceClient<Channel>,
    tokens: HashMap<&'static str, String>,
    pub(super) catalog: Catalog,
    pub(super) channel: Channel,
    /// The daemon's dispatcher (its settings).
    pub(super) dispatcher: Arc<Dispatcher>,
    /// h1's heartbeats while the world lives.
    _heartbeats: Heartbeats,
}

/// A host's heartbeats every few seconds, as its agent sends them (a
/// scenario longer than the daemon's 30 s of patience would find h1 down
/// otherwise); they stop with the world.
struct Heartbeats(tokio::task::JoinHandle<()>);

impl Heartbeats {
    fn start(catalog: Catalog, host: &'static str) -> Self {
        Self(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                if let Err(e) = catalog.heartbeat(host).await {
                    eprintln!("heartbeat of {host}: {e}");
                }
            }
        }))
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run `scenario` in a fresh world on each catalog backend.
pub(super) async fn on_each_backend<F, Fut>(scenario: F)
where
    F: Fn(World) -> Fut,
    Fut: Future<Output = ()>,
{
    for (backend, c) in catalogs().await {
        eprintln!("--- {backend:?}");
        scenario(world(c).await).await;
    }
}

/// The agent on a UNIX socket in `dir`, as a real one serves in plaintext;
/// its endpoint.
async fn serve_agent(
    hv: Arc<FakeHypervisor>,
    store: Store,
    journal: Journal,
    dir: &Path,
) -> String {
    // As the agent's start-up makes it.
    std::fs::create_dir_all(dir.join("nbd")).expect("nbd dir");
    let agent = Agent::new(
        hv,
        store,
        journal,
        Settings {
            default_pool: "p".into(),
            domain_type: "qemu".into(),
            console_log_dir: None,
            default_shutdown_timeout: Duration::from_secs(5),
            transfer_dir: Some(dir.join("transfer")),
            import_url_prefixes: Vec::new(),
            export_group: None,
            default_nic: imprint_agent::domain::NicAttachment::Udp,
            backup_dir: Some(dir.join("backup")),
            nbd_dir: dir.join("nbd"),
            max_lazy_fills: 4,
            lazy_fill_mib_s: 0,
        },
    );
    std::fs::create_dir_all(dir.join("transfer")).expect("transfer dir");
    let path = dir.join("agent.sock");
    let l = imprint_agent::listen::bind_unix(&path, None).expect("bind");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(agent.into_server())
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l)),
    );
    format!("unix://{}", path.display())
}

/// A fake hypervisor with pool "p" and guest "a", running, whose 8 MiB
/// raw disk holds a few bytes at 3 MiB; all in `dir`.
fn fake_hypervisor(dir: &Path) -> Arc<FakeHypervisor> {
    let disk = dir.join("a.raw");
    let f = std::fs::File::create(&disk).expect("disk");
    f.set_len(8 << 20).expect("len");
    std::os::unix::fs::FileExt::write_all_at(&f, b"data of guest a", 3 << 20).expect("write");
    let pool = dir.join("pool");
    std::fs::create_dir(&pool).expect("pool");
    Arc::new(FakeHypervisor {
        guests: std::sync::Mutex::new(HashMap::from([(
            "a".to_string(),
            FakeGuest::new(
                GuestRef {
                    name: "a".into(),
                    uuid: "a-uuid".into(),
                },
                guest_xml("a", &disk),
                PowerState::Running,
            ),
        )])),
        pools: HashMap::from([("p".to_string(), pool)]),
        ..Default::default()
    })
}

/// Accounts alice (may publish), bob, carol, dave (no host granted) and
/// root (admin); their tokens. Guest a on h1 is alice's.
async fn accounts(catalog: &Catalog) -> HashMap<&'static str, String> {
    let mut tokens = HashMap::new();
    for (name, publish, admin) in [
        ("alice", true, false),
        ("bob", false, false),
        ("carol", false, false),
        ("dave", false, false),
        ("root", false, true),
    ] {
        let (a, t) = catalog
            .create_account(name, publish, admin)
            .await
            .expect("account");
        tokens.insert(name, t);
        if name != "dave" && !admin {
            catalog.allow_host(name, "*").await.expect("grant");
        }
        // Guest a is alice's (an admin assigned it).
        if name == "alice" {
            catalog
                .assign_guests("h1", &[("a-uuid".into(), "a".into())], &a.id, true)
                .await
                .expect("assign");
        }
    }
    tokens
}

/// The daemon's API on a free loopback port; a channel to it.
async fn serve_daemon(catalog: Catalog, store: Store) -> (Channel, Arc<Dispatcher>) {
    let d = Dispatcher::new(catalog, Some(store));
    d.start().await.expect("start");
    let router = crate::server::router(d.clone(), None)
        .await
        .expect("router");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)));
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy();
    (ch, d)
}

pub(super) async fn world(catalog: Catalog) -> World {
    let tmp = tempfile::tempdir().expect("tmp");
    let hv = fake_hypervisor(tmp.path());
    let store = Store::open_or_create_dir(&tmp.path().join("store"), false, StoreConfig::default())
        .expect("store");
    let journal = Journal::open(&tmp.path().join("journal")).expect("journal");
    let agent = serve_agent(hv.clone(), store.clone(), journal, tmp.path()).await;
    catalog
        .register_host(&HostRow {
            name: "h1".into(),
            agent_endpoint: agent,
            libvirt_uri: "test:///fake".into(),
            version: "test".into(),
            cpus: 2,
            memory_bytes: 1 << 30,
            site: String::new(),
            last_heartbeat_unix: 0,
        })
        .await
        .expect("host");
    let heartbeats = Heartbeats::start(catalog.clone(), "h1");
    let tokens = accounts(&catalog).await;
    let (ch, dispatcher) = serve_daemon(catalog.clone(), store).await;
    World {
        store_dir: tmp.path().join("store"),
        tmp,
        hv,
        images: ImageServiceClient::new(ch.clone()),
        ops: OperationServiceClient::new(ch.clone()),
        tokens,
        catalog,
        channel: ch,
        dispatcher,
        _heartbeats: heartbeats,
    }
}

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Caller {
    As(&'static str),
    NoToken,
    BadToken,
}

impl World {
    pub(super) fn req<T>(&self, who: Caller, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        let token = match who {
            Caller::As(n) => Some(self.tokens[n].clone()),
            Caller::NoToken => None,
            Caller::BadToken => Some("imp_not_a_real_token".into()),
        };
        if let Some(t) = token {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        r
    }

    pub(super) async fn wait(&self, who: Caller, op: &pb::Operation) -> pb::Operation {
        let mut s = self
            .ops
            .clone()
            .watch_operation(self.req(who, pb::GetDaemonOperationRequest { id: op.id.clone() }))
            .await
            .expect("watch")
            .into_inner();
        let mut last = None;
        while let Some(o) = tokio::time::timeout(Duration::from_secs(60), s.message())
            .await
            .expect("progress within a minute")
            .expect("stream")
        {
            last = Some(o);
        }
        let last = last.expect("at least one message");
        assert_ne!(last.state, pb::OperationState::Running as i32, "ends final");
        last
    }

    pub(super) async fn capture(&self, who: &'static str, name: &str) -> pb::Image {
        let op = self
            .images
            .clone()
            .capture_image(self.req(
                Caller::As(who),
                pb::CaptureImageRequest {
                    host: "h1".into(),
                    guest: "a".into(),
                    name: name.into(),
                    tags: vec!["base".into()],
                    ..Default::default()
                },
            ))
            .await
            .expect("capture")
            .into_inner();
        assert_eq!(op.kind, "capture");
        let done = self.wait(Caller::As(who), &op).await;
        assert_eq!(
            done.state,
            pb::OperationState::Succeeded as i32,
            "{}",
            done.error
        );
        assert!(done.bytes_total > 0, "{done:?}");
        assert_eq!(done.bytes_done, done.bytes_total, "final figures recorded");
        let c = done.capture.expect("capture result");
        assert_eq!(c.image_id, op.image_id);
        self.get(who, &op.image_id).await.expect("image")
    }

    pub(super) async fn get(
        &self,
        who: &'static str,
        id: &str,
    ) -> Result<pb::Image, tonic::Status> {
        self.images
            .clone()
            .get_image(self.req(Caller::As(who), pb::GetImageRequest { id: id.into() }))
            .await
            .map(tonic::Response::into_inner)
    }

    pub(super) async fn listed(&self, who: Caller, id: &str) -> Result<bool, tonic::Status> {
        let r = self
            .images
            .clone()
            .list_images(self.req(
                who,
                pb::ListImagesRequest {
                    page_size: 1000,
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        Ok(r.images.iter().any(|i| i.id == id))
    }

    /// Deploy as alice and wait for the end; the call's error if refused.
    pub(super) async fn deploy_as_alice(
        &self,
        req: pb::DeployImageRequest,
    ) -> Result<pb::Operation, tonic::Status> {
        let op = self
            .images
            .clone()
            .deploy_image(self.req(Caller::As("alice"), req))
            .await?
            .into_inner();
        Ok(self.wait(Caller::As("alice"), &op).await)
    }

    pub(super) fn guests_client(&self) -> pb::guest_service_client::GuestServiceClient<Channel> {
        pb::guest_service_client::GuestServiceClient::new(self.channel.clone())
    }
}

/// Ask `probe` until it answers `Some` (an observable state: a row, a
/// report); fail naming `what` after `timeout`.
pub(super) async fn until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(t) = probe().await {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not within {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}
