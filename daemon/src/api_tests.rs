//! The daemon's API end to end in one process: the real services over gRPC
//! on loopback, the real catalog (SQLite and PostgreSQL), the real store,
//! and a real agent whose hypervisor is the fake one (libvirt itself is
//! exercised by the end-to-end tests in `tests/`).

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

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
struct World {
    _tmp: tempfile::TempDir,
    /// The store the agent and the daemon use (site `default`).
    store_dir: std::path::PathBuf,
    hv: Arc<FakeHypervisor>,
    images: ImageServiceClient<Channel>,
    ops: OperationServiceClient<Channel>,
    tokens: HashMap<&'static str, String>,
    catalog: Catalog,
    channel: Channel,
}

/// The agent on a UNIX socket in `dir`, as a real one serves in plaintext;
/// its endpoint.
async fn serve_agent(
    hv: Arc<FakeHypervisor>,
    store: Store,
    journal: Journal,
    dir: &Path,
) -> String {
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

async fn world(catalog: Catalog) -> World {
    let tmp = tempfile::tempdir().expect("tmp");
    let disk = tmp.path().join("a.raw");
    let f = std::fs::File::create(&disk).expect("disk");
    f.set_len(8 << 20).expect("len");
    std::os::unix::fs::FileExt::write_all_at(&f, b"data of guest a", 3 << 20).expect("write");
    let pool = tmp.path().join("pool");
    std::fs::create_dir(&pool).expect("pool");
    let hv = Arc::new(FakeHypervisor {
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
    });
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
    let d = Dispatcher::new(catalog.clone(), Some(store));
    d.start().await.expect("start");
    let router = crate::server::router(d, None).await.expect("router");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)));
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy();
    World {
        store_dir: tmp.path().join("store"),
        _tmp: tmp,
        hv,
        images: ImageServiceClient::new(ch.clone()),
        ops: OperationServiceClient::new(ch.clone()),
        tokens,
        catalog,
        channel: ch,
    }
}

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    As(&'static str),
    NoToken,
    BadToken,
}

impl World {
    fn req<T>(&self, who: Caller, msg: T) -> Request<T> {
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

    async fn wait(&self, who: Caller, op: &pb::Operation) -> pb::Operation {
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

    async fn capture(&self, who: &'static str, name: &str) -> pb::Image {
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

    async fn get(&self, who: &'static str, id: &str) -> Result<pb::Image, tonic::Status> {
        self.images
            .clone()
            .get_image(self.req(Caller::As(who), pb::GetImageRequest { id: id.into() }))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn listed(&self, who: Caller, id: &str) -> Result<bool, tonic::Status> {
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
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capture_deploy_and_the_access_matrix() {
    for (backend, c) in catalogs().await {
        eprintln!("--- {backend:?}");
        access_matrix_on(world(c).await).await;
    }
}

async fn access_matrix_on(w: World) {
    // Alice captures the guest twice: S (to be shared with bob) and PUB.
    let s = w.capture("alice", "shared-img").await;
    assert_eq!(s.state, pb::ImageState::Active as i32);
    assert_eq!(s.disks.len(), 1);
    assert_eq!(s.disks[0].size_bytes, 8 << 20);
    assert_eq!(s.disks[0].sha256.len(), 64);
    assert_eq!(s.size_bytes, 8 << 20);
    assert_eq!(s.source_host, "h1");
    assert_eq!(s.source_guest, "a");
    assert!(s.config_json.contains("vcpus"), "{}", s.config_json);
    assert_eq!(
        w.hv.guests.lock().expect("lock")["a"].state,
        PowerState::Running
    );
    let public = w.capture("alice", "public-img").await;
    let mut images = w.images.clone();
    images
        .publish_image(w.req(
            Caller::As("alice"),
            pb::PublishImageRequest {
                id: public.id.clone(),
            },
        ))
        .await
        .expect("publish");
    images
        .share_image(w.req(
            Caller::As("alice"),
            pb::ShareImageRequest {
                id: s.id.clone(),
                accounts: vec!["bob".into()],
            },
        ))
        .await
        .expect("share");
    images
        .accept_share(w.req(
            Caller::As("bob"),
            pb::ShareDecisionRequest { id: s.id.clone() },
        ))
        .await
        .expect("accept");

    // Both images hold the same chunks: nothing is exclusive to either.
    let mut freed = None;
    for _ in 0..50 {
        let img = w.get("alice", &s.id).await.expect("get");
        freed = Some(img.exclusive_bytes);
        if img.exclusive_bytes == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(freed, Some(0), "identical captures share every chunk");

    use Caller::{As, BadToken, NoToken};
    // (caller, image) for each role of the matrix.
    let roles: [(&str, Caller, &str); 6] = [
        ("owner", As("alice"), &s.id),
        ("shared-with", As("bob"), &s.id),
        ("public viewer", As("carol"), &public.id),
        ("other account", As("carol"), &s.id),
        ("no token", NoToken, &s.id),
        ("bad token", BadToken, &s.id),
    ];
    let ok = Code::Ok;
    let (nf, pd, ua, fp) = (
        Code::NotFound,
        Code::PermissionDenied,
        Code::Unauthenticated,
        Code::FailedPrecondition,
    );
    let mut deployed = 0;
    let rpcs: &[(&str, [Code; 6])] = &[
        ("GetImage", [ok, ok, ok, nf, ua, ua]),
        ("ListImages", [ok, ok, ok, ok, ua, ua]),
        ("DeployImage", [ok, ok, ok, nf, ua, ua]),
        ("UpdateImage", [ok, pd, pd, nf, ua, ua]),
        ("SetProtected", [ok, pd, pd, nf, ua, ua]),
        ("DeprecateImage", [ok, pd, pd, nf, ua, ua]),
        ("ShareImage", [ok, pd, pd, nf, ua, ua]),
        ("UnshareImage", [ok, pd, pd, nf, ua, ua]),
        ("AcceptShare", [fp, ok, fp, nf, ua, ua]),
        ("RejectShare", [fp, ok, fp, nf, ua, ua]),
        ("PublishImage", [ok, pd, pd, nf, ua, ua]),
        ("UnpublishImage", [ok, pd, pd, nf, ua, ua]),
        ("DeleteImage", [ok, pd, pd, nf, ua, ua]),
    ];
    let mut failures = Vec::new();
    for (rpc, expect) in rpcs {
        // The owner goes last: its calls change the images.
        for i in [1, 2, 3, 4, 5, 0] {
            let (role, who, id) = roles[i];
            let id = id.to_string();
            let mut c = w.images.clone();
            let got = match *rpc {
                "GetImage" => code(c.get_image(w.req(who, pb::GetImageRequest { id })).await),
                "ListImages" => {
                    let r = w.listed(who, &id).await;
                    // Listed exactly when visible in lists.
                    if let Ok(seen) = r {
                        assert_eq!(seen, role != "other account", "{role} lists {id}");
                    }
                    code(r)
                }
                "DeployImage" => {
                    deployed += 1;
                    let r = c
                        .deploy_image(w.req(
                            who,
                            pb::DeployImageRequest {
                                image_id: id,
                                host: "h1".into(),
                                guest_name: format!("copy-{deployed}"),
                                disk_sizes_bytes: vec![16 << 20],
                                ..Default::default()
                            },
                        ))
                        .await;
                    if let Ok(op) = &r {
                        let done = w.wait(who, op.get_ref()).await;
                        assert_eq!(
                            done.state,
                            pb::OperationState::Succeeded as i32,
                            "{role}: {}",
                            done.error
                        );
                        assert_eq!(
                            done.deploy.expect("result").guest_name,
                            format!("copy-{deployed}")
                        );
                    }
                    code(r)
                }
                "UpdateImage" => code(
                    c.update_image(w.req(
                        who,
                        pb::UpdateImageRequest {
                            id,
                            update_mask: vec!["notes".into()],
                            notes: "checked".into(),
                            ..Default::default()
                        },
                    ))
                    .await,
                ),
                "SetProtected" => code(
                    c.set_protected(w.req(
                        who,
                        pb::SetProtectedRequest {
                            id,
                            protected: false,
                        },
                    ))
                    .await,
                ),
                "DeprecateImage" => code(
                    c.deprecate_image(w.req(
                        who,
                        pb::DeprecateImageRequest {
                            id,
                            deprecated: false,
                        },
                    ))
                    .await,
                ),
                "ShareImage" => code(
                    c.share_image(w.req(
                        who,
                        pb::ShareImageRequest {
                            id,
                            accounts: vec!["dave".into()],
                        },
                    ))
                    .await,
                ),
                "UnshareImage" => code(
                    c.unshare_image(w.req(
                        who,
                        pb::ShareImageRequest {
                            id,
                            accounts: vec!["dave".into()],
                        },
                    ))
                    .await,
                ),
                "AcceptShare" => code(
                    c.accept_share(w.req(who, pb::ShareDecisionRequest { id }))
                        .await,
                ),
                "RejectShare" => {
                    let r = c
                        .reject_share(w.req(who, pb::ShareDecisionRequest { id: id.clone() }))
                        .await;
                    if r.is_ok() {
                        // Back to accepted for the rows that follow.
                        c.accept_share(w.req(who, pb::ShareDecisionRequest { id }))
                            .await
                            .expect("accept again");
                    }
                    code(r)
                }
                "PublishImage" => {
                    let r = c
                        .publish_image(w.req(who, pb::PublishImageRequest { id: id.clone() }))
                        .await;
                    if r.is_ok() {
                        c.unpublish_image(w.req(who, pb::PublishImageRequest { id }))
                            .await
                            .expect("unpublish again");
                    }
                    code(r)
                }
                "UnpublishImage" => code(
                    c.unpublish_image(w.req(who, pb::PublishImageRequest { id }))
                        .await,
                ),
                "DeleteImage" => code(
                    c.delete_image(w.req(
                        who,
                        pb::DeleteImageRequest {
                            id,
                            ..Default::default()
                        },
                    ))
                    .await,
                ),
                other => unreachable!("{other}"),
            };
            if got != expect[i] {
                failures.push(format!(
                    "{rpc} as {role}: got {got:?}, want {:?}",
                    expect[i]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "access matrix:\n{}",
        failures.join("\n")
    );
    // The owner's delete went through: gone for everyone, members included.
    assert_eq!(code(w.get("alice", &s.id).await), Code::NotFound);
    assert_eq!(code(w.get("bob", &s.id).await), Code::NotFound);
    // Operations belong to who started them.
    let (mine, _) = w
        .catalog
        .operations_of(
            &w.catalog.account_by_name("bob").await.expect("bob").id,
            false,
            10,
            None,
        )
        .await
        .expect("ops");
    let bobs = mine.first().expect("bob deployed").id.clone();
    let mut ops = w.ops.clone();
    assert_eq!(
        code(
            ops.get_operation(w.req(
                As("bob"),
                pb::GetDaemonOperationRequest { id: bobs.clone() }
            ))
            .await
        ),
        Code::Ok
    );
    for who in [As("carol"), NoToken, BadToken] {
        let want = if who == As("carol") { nf } else { ua };
        assert_eq!(
            code(
                ops.get_operation(w.req(who, pb::GetDaemonOperationRequest { id: bobs.clone() }))
                    .await
            ),
            want,
            "{who:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guests_belong_to_accounts() {
    for (backend, c) in catalogs().await {
        eprintln!("--- {backend:?}");
        guests_on(world(c).await).await;
    }
}

async fn guests_on(w: World) {
    use Caller::{As, BadToken, NoToken};
    let guests = guests_client(&w);
    let capture_a = |name: &str| pb::CaptureImageRequest {
        host: "h1".into(),
        guest: "a".into(),
        name: name.into(),
        ..Default::default()
    };
    let ops_of = |name: &'static str| {
        let catalog = w.catalog.clone();
        async move {
            let id = catalog.account_by_name(name).await.expect("account").id;
            catalog
                .operations_of(&id, false, 100, None)
                .await
                .expect("ops")
                .0
                .len()
        }
    };
    // Capture of guest a (alice's): bob and carol are allowed on the host
    // but do not own it, dave is not allowed there; all see NOT_FOUND,
    // with the same words as for a guest that does not exist.
    let mut c = w.images.clone();
    for who in ["bob", "carol", "dave"] {
        let e = c
            .capture_image(w.req(As(who), capture_a("stolen")))
            .await
            .expect_err("not theirs");
        assert_eq!(e.code(), Code::NotFound, "{who}: {}", e.message());
    }
    let missing = c
        .capture_image(w.req(
            As("bob"),
            pb::CaptureImageRequest {
                guest: "zz".into(),
                ..capture_a("x")
            },
        ))
        .await
        .expect_err("missing");
    let foreign = c
        .capture_image(w.req(As("bob"), capture_a("x")))
        .await
        .expect_err("foreign");
    assert_eq!(
        missing
            .message()
            .replace("\"zz\"", "G")
            .replace(" zz ", " G "),
        foreign
            .message()
            .replace("\"a\"", "G")
            .replace(" a ", " G "),
        "a foreign guest looks like a missing one"
    );
    // Refused calls changed nothing (an image comes with its operation).
    for who in ["bob", "carol", "dave"] {
        assert_eq!(ops_of(who).await, 0, "{who}: refused captures leave no row");
    }

    // The owner and an admin may capture it.
    w.capture("alice", "mine").await;
    let op = c
        .capture_image(w.req(As("root"), capture_a("by-admin")))
        .await
        .expect("admin captures any guest")
        .into_inner();
    let done = w.wait(As("root"), &op).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );

    // A deployed guest belongs to the account that deployed it.
    let img = w.capture("alice", "base").await;
    c.publish_image(w.req(As("alice"), pb::PublishImageRequest { id: img.id.clone() }))
        .await
        .expect("publish");
    let op = c
        .deploy_image(w.req(
            As("bob"),
            pb::DeployImageRequest {
                image_id: img.id.clone(),
                host: "h1".into(),
                guest_name: "bobs".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("deploy")
        .into_inner();
    let done = w.wait(As("bob"), &op).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let list = |who| {
        let mut g = guests.clone();
        let r = w.req(who, pb::ListHostGuestsRequest { host: "h1".into() });
        async move { g.list_guests(r).await.map(|r| r.into_inner().guests) }
    };
    let names = |gs: Vec<pb::HostGuest>| {
        let mut v: Vec<(String, String)> = gs.into_iter().map(|g| (g.name, g.owner)).collect();
        v.sort();
        v
    };
    assert_eq!(
        names(list(As("alice")).await.expect("alice")),
        [("a".into(), "alice".into())]
    );
    assert_eq!(
        names(list(As("bob")).await.expect("bob")),
        [("bobs".into(), "bob".into())]
    );
    assert_eq!(list(As("carol")).await.expect("carol"), []);
    assert_eq!(
        names(list(As("root")).await.expect("root")),
        [("a".into(), "alice".into()), ("bobs".into(), "bob".into())]
    );
    assert_eq!(
        code(list(As("dave")).await),
        Code::NotFound,
        "host not granted"
    );
    assert_eq!(code(list(NoToken).await), Code::Unauthenticated);
    assert_eq!(code(list(BadToken).await), Code::Unauthenticated);
    // Bob may capture his guest; alice may not.
    let e = c
        .capture_image(w.req(
            As("alice"),
            pb::CaptureImageRequest {
                guest: "bobs".into(),
                ..capture_a("x")
            },
        ))
        .await
        .expect_err("bob's");
    assert_eq!(e.code(), Code::NotFound);

    // Assigning: admins only; every name must resolve or nothing changes.
    let assign = |who, guests: &[&str], account: &str, all| {
        let mut g = guests_client(&w);
        let r = w.req(
            who,
            pb::AssignGuestsRequest {
                host: "h1".into(),
                guests: guests.iter().map(|s| s.to_string()).collect(),
                account: account.into(),
                all_unowned: all,
            },
        );
        async move { g.assign_guests(r).await.map(|r| r.into_inner().guests) }
    };
    assert_eq!(
        code(assign(As("alice"), &["a"], "bob", false).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(assign(NoToken, &["a"], "bob", false).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(assign(As("root"), &["a", "nope"], "bob", false).await),
        Code::NotFound
    );
    assert_eq!(
        code(assign(As("root"), &["a"], "nobody", false).await),
        Code::NotFound
    );
    assert_eq!(
        code(assign(As("root"), &[], "bob", false).await),
        Code::InvalidArgument
    );
    assert_eq!(
        names(list(As("alice")).await.expect("unchanged")),
        [("a".into(), "alice".into())]
    );
    let moved = assign(As("root"), &["a"], "carol", false)
        .await
        .expect("assign");
    assert_eq!(names(moved), [("a".into(), "carol".into())]);
    assert_eq!(list(As("alice")).await.expect("alice"), []);
    let e = c
        .capture_image(w.req(As("alice"), capture_a("x")))
        .await
        .expect_err("no longer alice's");
    assert_eq!(e.code(), Code::NotFound);
    // Unassign: nobody's; the bulk form adopts every guest nobody owns.
    let mut g = guests.clone();
    let e = g
        .unassign_guest(w.req(
            As("carol"),
            pb::UnassignGuestRequest {
                host: "h1".into(),
                guest: "a".into(),
            },
        ))
        .await
        .expect_err("admins only");
    assert_eq!(e.code(), Code::PermissionDenied);
    g.unassign_guest(w.req(
        As("root"),
        pb::UnassignGuestRequest {
            host: "h1".into(),
            guest: "a".into(),
        },
    ))
    .await
    .expect("unassign");
    assert_eq!(list(As("carol")).await.expect("carol"), []);
    let adopted = assign(As("root"), &[], "dave", true).await.expect("bulk");
    assert_eq!(
        names(adopted),
        [("a".into(), "dave".into())],
        "only the unowned guest"
    );
    assert_eq!(
        names(list(As("root")).await.expect("root")),
        [("a".into(), "dave".into()), ("bobs".into(), "bob".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_chunks_fail_deploys_with_data_loss_and_mark_the_image() {
    for (backend, c) in catalogs().await {
        eprintln!("--- {backend:?}");
        damaged_on(world(c).await).await;
    }
}

async fn damaged_on(w: World) {
    use Caller::As;
    let img = w.capture("alice", "to-damage").await;
    assert_eq!(img.damage, "");
    // Flip the last byte of every stored chunk, as a failing disk would.
    let mut chunks = Vec::new();
    let mut dirs = vec![w.store_dir.join("chunks")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("ls") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                chunks.push((p.clone(), std::fs::read(&p).expect("read")));
            }
        }
    }
    assert!(!chunks.is_empty());
    for (p, bytes) in &chunks {
        let mut b = bytes.clone();
        let n = b.len() - 1;
        b[n] ^= 0xff;
        std::fs::write(p, b).expect("damage");
    }
    let deploy = |name: &str| pb::DeployImageRequest {
        image_id: img.id.clone(),
        host: "h1".into(),
        guest_name: name.into(),
        ..Default::default()
    };
    let mut c = w.images.clone();
    let op = c
        .deploy_image(w.req(As("alice"), deploy("from-damaged")))
        .await
        .expect("deploy accepted")
        .into_inner();
    let done = w.wait(As("alice"), &op).await;
    assert_eq!(done.state, pb::OperationState::Failed as i32);
    assert_eq!(done.error_code, Code::DataLoss as i32, "{}", done.error);
    let marked = w.get("alice", &img.id).await.expect("image");
    assert!(marked.damage.contains(&op.id), "{}", marked.damage);
    assert_eq!(marked.state, pb::ImageState::Active as i32, "still listed");
    assert!(
        !w.hv
            .guests
            .lock()
            .expect("lock")
            .contains_key("from-damaged"),
        "no half-made guest"
    );
    // Repaired (say, copied back from another site): a full read finds it
    // whole and clears the mark.
    for (p, bytes) in &chunks {
        std::fs::write(p, bytes).expect("repair");
    }
    let op = c
        .deploy_image(w.req(As("alice"), deploy("from-repaired")))
        .await
        .expect("deploy accepted")
        .into_inner();
    let done = w.wait(As("alice"), &op).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    assert_eq!(w.get("alice", &img.id).await.expect("image").damage, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn imported_images_deploy_with_profiles() {
    for (backend, c) in catalogs().await {
        eprintln!("--- {backend:?}");
        profiles_on(world(c).await).await;
    }
}

fn profile(name: &str, firmware: &str) -> pb::HardwareProfile {
    pb::HardwareProfile {
        name: name.into(),
        vcpus: 2,
        memory_mib: 2048,
        firmware: firmware.into(),
        machine: "q35".into(),
        disk_bus: "virtio".into(),
        nic_count: 1,
        nic_model: "virtio".into(),
        ..Default::default()
    }
}

/// The configuration the fake hypervisor was given for guest `name`.
fn defined(w: &World, name: &str) -> imprint_agent::domain::GuestConfig {
    let xml = w.hv.guests.lock().expect("lock")[name].xml.clone();
    imprint_agent::domain::GuestConfig::from_domain_xml(&xml).expect("xml")
}

async fn profiles_on(w: World) {
    use Caller::{As, NoToken};
    let mut profiles = pb::profile_service_client::ProfileServiceClient::new(w.channel.clone());
    let mut c = w.images.clone();
    // Admins define profiles; everyone reads them.
    let small = profiles
        .create_profile(w.req(As("root"), profile("m1.small", "bios")))
        .await
        .expect("create")
        .into_inner();
    assert!(small.created_unix > 0);
    assert_eq!(
        small.serial_console,
        Some(true),
        "serial console by default"
    );
    profiles
        .create_profile(w.req(As("root"), profile("m1.uefi", "uefi")))
        .await
        .expect("create uefi");
    for (what, who, p, want) in [
        (
            "not an admin",
            As("alice"),
            profile("x", "bios"),
            Code::PermissionDenied,
        ),
        (
            "no token",
            NoToken,
            profile("x", "bios"),
            Code::Unauthenticated,
        ),
        (
            "taken",
            As("root"),
            profile("m1.small", "bios"),
            Code::AlreadyExists,
        ),
        (
            "firmware",
            As("root"),
            profile("x", "coreboot"),
            Code::InvalidArgument,
        ),
        (
            "machine",
            As("root"),
            pb::HardwareProfile {
                machine: "isapc".into(),
                ..profile("x", "bios")
            },
            Code::InvalidArgument,
        ),
        (
            "incomplete",
            As("root"),
            pb::HardwareProfile {
                vcpus: 0,
                ..profile("x", "bios")
            },
            Code::InvalidArgument,
        ),
    ] {
        let got = code(profiles.create_profile(w.req(who, p)).await);
        assert_eq!(got, want, "{what}");
    }
    let listed = profiles
        .list_profiles(w.req(As("bob"), pb::ListProfilesRequest {}))
        .await
        .expect("list")
        .into_inner()
        .profiles;
    let names: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["m1.small", "m1.uefi"],
        "bad profiles changed nothing"
    );

    // A disk made elsewhere: an MBR with one Linux partition, no ESP.
    let transfer = w._tmp.path().join("transfer");
    let disk = transfer.join("vendor.raw");
    let mut bytes = vec![0u8; 8 << 20];
    bytes[446 + 4] = 0x83;
    bytes[510] = 0x55;
    bytes[511] = 0xaa;
    bytes[3 << 20..(3 << 20) + 11].copy_from_slice(b"vendor data");
    std::fs::write(&disk, &bytes).expect("disk");
    let import = |name: &str, profile: &str, hardware: Option<pb::HardwareProfile>, path: &Path| {
        pb::ImportImageRequest {
            host: "h1".into(),
            path: path.display().to_string(),
            name: name.into(),
            profile: profile.into(),
            hardware,
            ..Default::default()
        }
    };
    let op = c
        .import_image(w.req(As("alice"), import("vendor", "m1.small", None, &disk)))
        .await
        .expect("import")
        .into_inner();
    let done = w.wait(As("alice"), &op).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    assert!(
        done.capture.expect("result").warnings.is_empty(),
        "a partitioned disk"
    );
    let img = w.get("alice", &op.image_id).await.expect("image");
    let config: serde_json::Value = serde_json::from_str(&img.config_json).expect("config");
    assert_eq!(config["vcpus"], 2, "{config}");
    assert_eq!(config["machine"], "q35");
    assert_eq!(config["esp"], false);

    // It deploys like a captured image: with the recorded configuration...
    let deploy = |name: &str, profile: &str| pb::DeployImageRequest {
        image_id: img.id.clone(),
        host: "h1".into(),
        guest_name: name.into(),
        profile: profile.into(),
        ..Default::default()
    };
    let d = deploy_as_alice(&w, deploy("imported-1", ""))
        .await
        .expect("deploy");
    assert_eq!(d.state, pb::OperationState::Succeeded as i32, "{}", d.error);
    let g = defined(&w, "imported-1");
    assert_eq!(
        (g.vcpus, g.memory_kib, g.machine.as_str()),
        (2, 2 << 20, "q35")
    );
    assert_eq!(g.nics.len(), 1);
    assert_eq!(g.firmware.kind, "bios");
    // ... UEFI for a disk without an EFI system partition is refused
    // before anything is made ...
    let e = deploy_as_alice(&w, deploy("imported-uefi", "m1.uefi"))
        .await
        .expect_err("no ESP");
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(
        e.message().contains("EFI system partition"),
        "{}",
        e.message()
    );
    assert!(
        !w.hv
            .guests
            .lock()
            .expect("lock")
            .contains_key("imported-uefi")
    );
    assert_eq!(
        code(deploy_as_alice(&w, deploy("x", "no-such")).await),
        Code::NotFound
    );
    // ... and minimums, set by the owner, refuse smaller deploys.
    c.update_image(w.req(
        As("alice"),
        pb::UpdateImageRequest {
            id: img.id.clone(),
            update_mask: vec!["min_memory_mib".into(), "recommended_profiles".into()],
            min_memory_mib: 4096,
            recommended_profiles: vec!["m1.small".into()],
            ..Default::default()
        },
    ))
    .await
    .expect("update");
    let e = deploy_as_alice(&w, deploy("too-small", "m1.small"))
        .await
        .expect_err("below minimum");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("4096 MiB"), "{}", e.message());
    let big = deploy_as_alice(
        &w,
        pb::DeployImageRequest {
            memory_mib: 4096,
            ..deploy("big-enough", "m1.small")
        },
    )
    .await
    .expect("deploy");
    assert_eq!(
        big.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        big.error
    );
    assert_eq!(defined(&w, "big-enough").memory_kib, 4096 * 1024);
    let shown = w.get("alice", &img.id).await.expect("image");
    assert_eq!(shown.recommended_profiles, ["m1.small"]);
    assert_eq!(shown.min_memory_mib, 4096);

    // A captured image and an imported image of the same disk deploy to
    // equivalent domains with one profile: one configuration code path.
    let captured = w.capture("alice", "captured-a").await;
    let a_disk = transfer.join("a.raw");
    let src = w.hv.guests.lock().expect("lock")["a"].xml.clone();
    let src = imprint_agent::domain::GuestConfig::from_domain_xml(&src).expect("xml");
    std::fs::copy(src.disks[0].source_path.as_deref().expect("path"), &a_disk).expect("copy");
    let op = c
        .import_image(w.req(As("alice"), import("imported-a", "", None, &a_disk)))
        .await
        .expect("import")
        .into_inner();
    let done = w.wait(As("alice"), &op).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    // No partition table, no filesystem: imported with a warning.
    let warnings = done.capture.expect("result").warnings;
    assert!(
        warnings.iter().any(|w| w.contains("may not boot")),
        "{warnings:?}"
    );
    let imported = w.get("alice", &op.image_id).await.expect("image");
    let defaults: serde_json::Value = serde_json::from_str(&imported.config_json).expect("json");
    assert_eq!(
        (defaults["vcpus"].as_u64(), defaults["memory_kib"].as_u64()),
        (Some(1), Some(1 << 20)),
        "the documented default"
    );
    for (id, name) in [
        (&captured.id, "from-captured"),
        (&imported.id, "from-imported"),
    ] {
        let d = deploy_as_alice(
            &w,
            pb::DeployImageRequest {
                image_id: id.clone(),
                ..deploy(name, "m1.small")
            },
        )
        .await
        .expect("deploy");
        assert_eq!(d.state, pb::OperationState::Succeeded as i32, "{}", d.error);
    }
    let (a, b) = (defined(&w, "from-captured"), defined(&w, "from-imported"));
    let shape = |g: &imprint_agent::domain::GuestConfig| {
        (
            g.vcpus,
            g.memory_kib,
            g.machine.clone(),
            g.firmware.kind.clone(),
            g.disks
                .iter()
                .map(|d| (d.target_dev.clone(), d.bus.clone()))
                .collect::<Vec<_>>(),
            g.nics
                .iter()
                .map(|n| (n.kind.clone(), n.model.clone()))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(shape(&a), shape(&b), "equivalent domains");
}

/// Deploy as alice and wait for the end; the call's error if refused.
async fn deploy_as_alice(
    w: &World,
    req: pb::DeployImageRequest,
) -> Result<pb::Operation, tonic::Status> {
    let op = w
        .images
        .clone()
        .deploy_image(w.req(Caller::As("alice"), req))
        .await?
        .into_inner();
    Ok(w.wait(Caller::As("alice"), &op).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphaned_manifests_are_reconciled() {
    for (backend, c) in catalogs().await {
        eprintln!("--- {backend:?}");
        let w = world(c).await;
        // A capture whose operation the reaper failed although the agent
        // finished: the image row is FAILED, its manifest committed.
        let img = w.capture("alice", "reaped").await;
        let kept = w.capture("alice", "kept").await;
        sqlx::query("UPDATE images SET state = 'failed' WHERE id = $1")
            .bind(&img.id)
            .execute(w.catalog.pool())
            .await
            .expect("fail the row");
        // An image the catalog never knew (an offline `store put`).
        let store =
            Store::open_or_create_dir(&w.store_dir, false, StoreConfig::default()).expect("store");
        let disk = w._tmp.path().join("offline.raw");
        std::fs::write(&disk, vec![7u8; 1 << 20]).expect("disk");
        let offline = imprint_store::capture::capture(
            &store,
            "offline",
            vec![imprint_store::capture::DiskInput {
                name: "vda".into(),
                source: Box::new(imprint_store::source::FileSource::open(&disk).expect("open")),
                base: None,
            }],
            &Default::default(),
            &mut |_| {},
        )
        .expect("put")
        .manifest
        .image_id;
        let stores = vec![("default".to_string(), store.clone())];
        // Within the grace period nothing is touched.
        let r = crate::reconcile::reconcile(&w.catalog, stores.clone(), 3600)
            .await
            .expect("pass");
        assert_eq!(r, crate::reconcile::Reconciled::default());
        let r = crate::reconcile::reconcile(&w.catalog, stores, 0)
            .await
            .expect("pass");
        assert_eq!(r.deleted, [(img.id.clone(), "default".to_string())]);
        assert_eq!(r.unknown, [(offline.to_string(), "default".to_string())]);
        let left: Vec<String> = store
            .list()
            .expect("list")
            .into_iter()
            .map(|(id, _)| id.to_string())
            .collect();
        assert!(
            !left.contains(&img.id),
            "the failed image's manifest is gone"
        );
        assert!(left.contains(&kept.id), "the active image stays");
        assert!(
            left.contains(&offline.to_string()),
            "unknown images are never deleted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heartbeats_cancel_what_the_catalog_ended() {
    for (backend, c) in catalogs().await {
        eprintln!("--- {backend:?}");
        let w = world(c).await;
        let token = w.catalog.add_host_token("h1").await.expect("token");
        let alice = w.catalog.account_by_name("alice").await.expect("alice");
        let new_op = |host: &'static str| crate::catalog::NewOperation {
            account_id: &alice.id,
            request_id: None,
            kind: crate::domain::OpKind::Deploy,
            image_id: None,
            host,
            guest: "g",
            agent_request: "",
            new_image: None,
        };
        // The reaper failed this one while h1 was silent; it still runs there.
        let (reaped, _) = w.catalog.begin_operation(&new_op("h1")).await.expect("op");
        w.catalog
            .finish_operation(
                &reaped.id,
                crate::domain::OpState::Failed,
                "host h1 stopped heartbeating",
                Code::Unavailable as i32,
                "",
                &crate::catalog::ImageOutcome::None,
            )
            .await
            .expect("fail");
        let (running, _) = w.catalog.begin_operation(&new_op("h1")).await.expect("op");
        let (elsewhere, _) = w.catalog.begin_operation(&new_op("h2")).await.expect("op");
        w.catalog
            .finish_operation(
                &elsewhere.id,
                crate::domain::OpState::Failed,
                "x",
                Code::Unavailable as i32,
                "",
                &crate::catalog::ImageOutcome::None,
            )
            .await
            .expect("fail");
        let mut hosts = pb::host_service_client::HostServiceClient::new(w.channel.clone());
        let mut req = Request::new(pb::HeartbeatRequest {
            name: "h1".into(),
            running_operation_ids: vec![
                reaped.id.clone(),
                running.id.clone(),
                elsewhere.id.clone(),
                "not-an-operation".into(),
            ],
        });
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        let r = hosts.heartbeat(req).await.expect("heartbeat").into_inner();
        assert_eq!(r.cancel_operation_ids, [reaped.id], "only h1's ended one");
    }
}

fn guests_client(w: &World) -> pb::guest_service_client::GuestServiceClient<Channel> {
    pb::guest_service_client::GuestServiceClient::new(w.channel.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_between_sites() {
    for (_b, c) in catalogs().await {
        copies_between_sites_on(world(c).await).await;
    }
}

async fn copies_between_sites_on(w: World) {
    let other = tempfile::tempdir().expect("tmp");
    let dc2 = other.path().join("dc2");
    // A site's directory store exists before copies go there (agents
    // create only S3 prefixes).
    Store::open_or_create_dir(&dc2, false, StoreConfig::default()).expect("dc2 store");
    let default_store = w.store_dir.to_str().expect("utf8");
    w.catalog
        .upsert_site(crate::catalog::DEFAULT_SITE, default_store)
        .await
        .expect("default");
    w.catalog
        .upsert_site("dc2", dc2.to_str().expect("utf8"))
        .await
        .expect("dc2");
    // The default store under another name.
    w.catalog
        .upsert_site("alias", &format!("{default_store}/"))
        .await
        .expect("alias");
    let img = w.capture("alice", "web").await;
    assert_eq!(img.locations.len(), 1);
    assert_eq!(img.locations[0].site, "default");
    // What deleting frees at one site, once the accounting ran.
    let mut at_one_site = 0;
    for _ in 0..100 {
        at_one_site = w.get("alice", &img.id).await.expect("get").exclusive_bytes;
        if at_one_site > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(at_one_site > 0, "the only image holds its chunks alone");
    let copy = |who: &'static str, site: &str| {
        let mut images = w.images.clone();
        let req = w.req(
            Caller::As(who),
            pb::CopyImageRequest {
                image_id: img.id.clone(),
                site: site.into(),
                ..Default::default()
            },
        );
        async move {
            images
                .copy_image(req)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let remove = |who: &'static str, site: &str| {
        let mut images = w.images.clone();
        let req = w.req(
            Caller::As(who),
            pb::RemoveImageLocationRequest {
                image_id: img.id.clone(),
                site: site.into(),
            },
        );
        async move {
            images
                .remove_image_location(req)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    // Bad copies change nothing.
    assert_eq!(code(copy("alice", "nowhere").await), Code::NotFound);
    assert_eq!(code(copy("alice", "default").await), Code::AlreadyExists);
    assert_eq!(code(copy("alice", "alias").await), Code::InvalidArgument);
    assert_eq!(code(copy("alice", "").await), Code::InvalidArgument);
    assert_eq!(code(copy("bob", "dc2").await), Code::NotFound, "not bob's");
    assert_eq!(code(copy("dave", "dc2").await), Code::NotFound);
    assert_eq!(
        w.get("alice", &img.id).await.expect("img").locations.len(),
        1
    );
    assert!(
        !dc2.join("images").join(&img.id).exists(),
        "no copy started"
    );

    let op = copy("alice", "dc2").await.expect("copy");
    assert_eq!(op.kind, "copy");
    let done = w.wait(Caller::As("alice"), &op).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let r = done.copy.expect("copy result");
    assert!(
        r.chunks_total > 0 && r.chunks_sent == r.chunks_total,
        "{r:?}"
    );
    assert_eq!(r.bytes_verified, r.bytes_sent, "all of it read back");
    // "Freed if deleted" counts the bytes at every site that holds it (the
    // alias of the default store counts once).
    let mut freed = 0;
    for _ in 0..100 {
        freed = w.get("alice", &img.id).await.expect("get").exclusive_bytes;
        if freed == 2 * at_one_site {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(freed, 2 * at_one_site, "both sites' bytes");
    let sites: Vec<(String, i32)> = w
        .get("alice", &img.id)
        .await
        .expect("img")
        .locations
        .into_iter()
        .map(|l| (l.site, l.state))
        .collect();
    let available = pb::LocationState::Available as i32;
    assert_eq!(
        sites,
        [
            ("dc2".to_string(), available),
            ("default".to_string(), available)
        ]
    );
    assert!(dc2.join("images").join(&img.id).join("manifest").exists());
    // A second copy to a site that has it is refused.
    assert_eq!(code(copy("alice", "dc2").await), Code::AlreadyExists);

    assert_eq!(code(remove("bob", "dc2").await), Code::NotFound);
    assert_eq!(code(remove("alice", "nowhere").await), Code::NotFound);
    let after = remove("alice", "default").await.expect("remove default");
    assert_eq!(after.locations.len(), 1);
    assert!(
        !w.store_dir
            .join("images")
            .join(&img.id)
            .join("manifest")
            .exists()
    );
    assert_eq!(
        code(remove("alice", "dc2").await),
        Code::FailedPrecondition,
        "the last copy"
    );
    // Deleting the image removes it from the site that has it.
    let mut images = w.images.clone();
    let del = images
        .delete_image(w.req(
            Caller::As("alice"),
            pb::DeleteImageRequest {
                id: img.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(
        del.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        del.error
    );
    assert!(!dc2.join("images").join(&img.id).join("manifest").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_and_changes_nothing() {
    for (backend, c) in catalogs().await {
        eprintln!("--- {backend:?}");
        bad_input_on(world(c).await).await;
    }
}

async fn bad_input_on(w: World) {
    use Caller::As;
    let img = w.capture("alice", "base").await;
    let mut c = w.images.clone();
    let before = w.listed(As("alice"), &img.id).await.expect("list");
    assert!(before);
    let capture = |name: &str, guest: &str, host: &str| pb::CaptureImageRequest {
        host: host.into(),
        guest: guest.into(),
        name: name.into(),
        ..Default::default()
    };
    let captures = [
        (
            "empty name",
            Code::InvalidArgument,
            "alice",
            capture("", "a", "h1"),
        ),
        (
            "over-long name",
            Code::InvalidArgument,
            "alice",
            capture(&"n".repeat(300), "a", "h1"),
        ),
        (
            "unknown guest",
            Code::NotFound,
            "alice",
            capture("x", "nope", "h1"),
        ),
        (
            "unknown host",
            Code::NotFound,
            "alice",
            capture("x", "a", "h9"),
        ),
        (
            "host not granted",
            Code::NotFound,
            "dave",
            capture("x", "a", "h1"),
        ),
        (
            "unknown capture mode",
            Code::InvalidArgument,
            "alice",
            pb::CaptureImageRequest {
                mode: 99,
                ..capture("x", "a", "h1")
            },
        ),
        (
            "a freeze bound without a live capture",
            Code::InvalidArgument,
            "alice",
            pb::CaptureImageRequest {
                freeze_timeout_seconds: 5,
                ..capture("x", "a", "h1")
            },
        ),
        (
            "a freeze bound over an hour",
            Code::InvalidArgument,
            "alice",
            pb::CaptureImageRequest {
                mode: pb::CaptureMode::Live as i32,
                freeze_timeout_seconds: 7200,
                ..capture("x", "a", "h1")
            },
        ),
        (
            "live capture of a guest without a guest agent (the agent refuses)",
            Code::FailedPrecondition,
            "alice",
            pb::CaptureImageRequest {
                mode: pb::CaptureMode::Live as i32,
                ..capture("x", "a", "h1")
            },
        ),
    ];
    let base = pb::DeployImageRequest {
        image_id: img.id.clone(),
        host: "h1".into(),
        guest_name: "x".into(),
        ..Default::default()
    };
    let deploys = [
        (
            "unknown image",
            Code::NotFound,
            pb::DeployImageRequest {
                image_id: uuid::Uuid::new_v4().to_string(),
                ..base.clone()
            },
        ),
        (
            "disk smaller than the image",
            Code::InvalidArgument,
            pb::DeployImageRequest {
                disk_sizes_bytes: vec![1 << 20],
                ..base.clone()
            },
        ),
        (
            "more sizes than disks",
            Code::InvalidArgument,
            pb::DeployImageRequest {
                disk_sizes_bytes: vec![0, 1 << 30],
                ..base.clone()
            },
        ),
        (
            "bad guest name",
            Code::InvalidArgument,
            pb::DeployImageRequest {
                guest_name: "-rf /".into(),
                ..base.clone()
            },
        ),
        (
            "existing guest name (the agent refuses)",
            Code::AlreadyExists,
            pb::DeployImageRequest {
                guest_name: "a".into(),
                ..base.clone()
            },
        ),
        (
            "bad static address (the agent refuses)",
            Code::InvalidArgument,
            pb::DeployImageRequest {
                network: Some(pb::NetworkConfig {
                    hostname: String::new(),
                    interfaces: vec![pb::InterfaceConfig {
                        addresses: vec!["300.1.1.1/24".into()],
                        ..Default::default()
                    }],
                }),
                ..base.clone()
            },
        ),
        (
            "too much memory",
            Code::InvalidArgument,
            pb::DeployImageRequest {
                memory_mib: u64::MAX,
                ..base.clone()
            },
        ),
    ];
    let refused =
        |what: &str, want: Code, got: Result<tonic::Response<pb::Operation>, tonic::Status>| {
            match got {
                Ok(op) => panic!("{what}: accepted as operation {}", op.get_ref().id),
                Err(s) => {
                    assert_eq!(s.code(), want, "{what}: {}", s.message());
                    assert!(!s.message().is_empty(), "{what}: a message");
                }
            }
        };
    for (what, want, who, r) in captures {
        refused(what, want, c.capture_image(w.req(As(who), r)).await);
    }
    for (what, want, r) in deploys {
        refused(what, want, c.deploy_image(w.req(As("alice"), r)).await);
    }
    let ops_after = w
        .catalog
        .operations_of(
            &w.catalog.account_by_name("alice").await.expect("a").id,
            false,
            100,
            None,
        )
        .await
        .expect("ops")
        .0;
    assert_eq!(
        ops_after.len(),
        1,
        "refused calls leave no operation behind"
    );
    assert!(w.hv.guests.lock().expect("lock").len() == 1, "and no guest");

    // Lists: malformed tokens, tokens of another order, bad sizes.
    let list = |token: &str, order: &str, size: u32| pb::ListImagesRequest {
        page_token: token.into(),
        order_by: order.into(),
        page_size: size,
        ..Default::default()
    };
    for (what, r) in [
        ("garbage token", list("zz", "", 0)),
        ("unknown order", list("", "size_desc", 0)),
        ("page too big", list("", "", 5000)),
    ] {
        let e = c.list_images(w.req(As("alice"), r)).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}");
    }
    for _ in 0..2 {
        w.capture("alice", "more").await;
    }
    let page = c
        .list_images(w.req(As("alice"), list("", "name_asc", 2)))
        .await
        .expect("page")
        .into_inner();
    assert_eq!(
        page.images
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        ["base", "more"]
    );
    let e = c
        .list_images(w.req(As("alice"), list(&page.next_page_token, "created_desc", 2)))
        .await
        .expect_err("token of another order");
    assert_eq!(e.code(), Code::InvalidArgument);
    let rest = c
        .list_images(w.req(As("alice"), list(&page.next_page_token, "name_asc", 2)))
        .await
        .expect("next page")
        .into_inner();
    assert_eq!(rest.images.len(), 1);
    assert_eq!(rest.images[0].name, "more");
    assert!(rest.next_page_token.is_empty());

    // Sharing with an unknown account, publishing without the right,
    // unknown update fields: refused, image unchanged.
    let e = c
        .share_image(w.req(
            As("alice"),
            pb::ShareImageRequest {
                id: img.id.clone(),
                accounts: vec!["bob".into(), "nobody".into()],
            },
        ))
        .await
        .expect_err("unknown account");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("nobody"), "{}", e.message());
    assert!(
        w.get("alice", &img.id)
            .await
            .expect("get")
            .members
            .is_empty()
    );
    c.share_image(w.req(
        As("alice"),
        pb::ShareImageRequest {
            id: img.id.clone(),
            accounts: vec!["bob".into()],
        },
    ))
    .await
    .expect("share");
    let e = c
        .publish_image(w.req(As("bob"), pb::PublishImageRequest { id: img.id.clone() }))
        .await
        .expect_err("not the owner");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = c
        .update_image(w.req(
            As("alice"),
            pb::UpdateImageRequest {
                id: img.id.clone(),
                update_mask: vec!["owner".into()],
                ..Default::default()
            },
        ))
        .await
        .expect_err("unknown field");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .update_image(w.req(
            As("alice"),
            pb::UpdateImageRequest {
                id: img.id.clone(),
                update_mask: vec!["tags".into()],
                tags: vec!["has space".into()],
                ..Default::default()
            },
        ))
        .await
        .expect_err("bad tag");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(w.get("alice", &img.id).await.expect("get").tags, ["base"]);

    // Protected images are not deleted.
    c.set_protected(w.req(
        As("alice"),
        pb::SetProtectedRequest {
            id: img.id.clone(),
            protected: true,
        },
    ))
    .await
    .expect("protect");
    let e = c
        .delete_image(w.req(
            As("alice"),
            pb::DeleteImageRequest {
                id: img.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("protected");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        w.get("alice", &img.id).await.expect("still there").state,
        pb::ImageState::Active as i32
    );

    // A retried capture with the same request id runs once.
    let first = c
        .capture_image(w.req(
            As("alice"),
            pb::CaptureImageRequest {
                request_id: "nightly-2026-11-27".into(),
                ..capture("nightly", "a", "h1")
            },
        ))
        .await
        .expect("capture")
        .into_inner();
    let again = c
        .capture_image(w.req(
            As("alice"),
            pb::CaptureImageRequest {
                request_id: "nightly-2026-11-27".into(),
                ..capture("nightly", "a", "h1")
            },
        ))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(again.id, first.id, "same operation");
    assert_eq!(again.image_id, first.image_id, "same image");
    let done = w.wait(As("alice"), &first).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let e = c
        .deploy_image(w.req(
            As("alice"),
            pb::DeployImageRequest {
                request_id: "nightly-2026-11-27".into(),
                image_id: img.id.clone(),
                host: "h1".into(),
                guest_name: "x".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("request id reused for another call");
    assert_eq!(e.code(), Code::AlreadyExists);

    // A guest that ignores ACPI: while its capture waits, a second capture
    // of it is refused; then the first fails (no force-off), the guest
    // stays up and the image is FAILED with the reason, and cannot be
    // deployed.
    w.hv.guests
        .lock()
        .expect("lock")
        .get_mut("a")
        .expect("a")
        .obeys_acpi = false;
    let slow = c
        .capture_image(w.req(
            As("alice"),
            pb::CaptureImageRequest {
                shutdown_timeout_seconds: 2,
                ..capture("stubborn", "a", "h1")
            },
        ))
        .await
        .expect("capture")
        .into_inner();
    let e = c
        .capture_image(w.req(As("root"), capture("second", "a-uuid", "h1")))
        .await
        .expect_err("one capture per guest");
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains(&slow.id), "{}", e.message());
    let done = w.wait(As("alice"), &slow).await;
    assert_eq!(done.state, pb::OperationState::Failed as i32);
    assert_eq!(
        done.error_code,
        Code::DeadlineExceeded as i32,
        "{}",
        done.error
    );
    let failed = w.get("alice", &slow.image_id).await.expect("image");
    assert_eq!(failed.state, pb::ImageState::Failed as i32);
    assert!(
        failed.failure_reason.contains("left running"),
        "{}",
        failed.failure_reason
    );
    assert_eq!(
        w.hv.guests.lock().expect("lock")["a"].state,
        PowerState::Running
    );
    let e = c
        .deploy_image(w.req(
            As("alice"),
            pb::DeployImageRequest {
                image_id: slow.image_id.clone(),
                host: "h1".into(),
                guest_name: "x".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("failed image");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("failed"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::{v1, v1alpha};
    let (_b, c) = catalogs().await.into_iter().next().expect("sqlite");
    let w = world(c).await;
    let ch = w.channel.clone();
    let mut seen = Vec::new();
    // v1 (current clients) ...
    let mut r1 = v1::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut s = r1
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection v1")
        .into_inner();
    if let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) = s
        .message()
        .await
        .expect("answer")
        .and_then(|m| m.message_response)
    {
        seen.push(l.service.into_iter().map(|s| s.name).collect::<Vec<_>>());
    }
    // ... and v1alpha (grpcurl, older clients).
    let mut ra = v1alpha::server_reflection_client::ServerReflectionClient::new(ch);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut s = ra
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    if let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) = s
        .message()
        .await
        .expect("answer")
        .and_then(|m| m.message_response)
    {
        seen.push(l.service.into_iter().map(|s| s.name).collect::<Vec<_>>());
    }
    assert_eq!(seen.len(), 2, "both versions answer");
    for mut names in seen {
        names.sort();
        // Exactly what the daemon serves: not the agent's API, whose
        // messages share the descriptor set.
        let mut want: Vec<&str> = crate::server::SERVED.to_vec();
        want.sort();
        names.retain(|n| !n.starts_with("grpc.reflection."));
        assert_eq!(names, want);
        assert!(!names.iter().any(|n| n == "imprint.v1.AgentService"));
    }
}
