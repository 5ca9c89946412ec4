//! Agents register with the control daemon and heartbeat; the daemon lists
//! them as alive (HostService), on its embedded SQLite catalog. Nothing
//! reaches the agent or registers a host without a credential: the agent
//! serves plaintext on a 0660 UNIX socket only, and registering and
//! heartbeating need the host's token.

use std::time::{Duration, Instant};

use imprint_proto::v1::{self as pb, host_service_client::HostServiceClient};
use imprint_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn agent_registers_and_heartbeats() {
    let wd = Workdir::new("imprint-daemon-");
    let daemon = DaemonProcess::start(&wd.path().join("imprintd"), &wd.path().join("store"));
    let ops = daemon.account("ops");
    let outsider = daemon.admin(&["create", "outsider"]).trim().to_string();
    let registration = daemon.agent_args("kvm-01");
    let registration: Vec<&str> = registration.iter().map(String::as_str).collect();
    let agent_process = AgentProcess::start_agent(
        &wd.path().join("store"),
        &wd.path().join("journal"),
        &registration,
    );
    let mut client = HostServiceClient::connect(daemon.endpoint())
        .await
        .expect("connect");
    let start = Instant::now();
    let host = loop {
        let hosts = client
            .list_hosts(authed(&ops, pb::ListHostsRequest {}))
            .await
            .expect("list")
            .into_inner()
            .hosts;
        if let Some(h) = hosts.into_iter().find(|h| h.name == "kvm-01") {
            break h;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "agent never registered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(host.alive, "{host:?}");
    assert_eq!(host.libvirt_uri, "qemu:///system");
    assert_eq!(
        host.agent_endpoint.replace("unix://", "unix:"),
        agent_process.endpoint,
        "plaintext agents advertise their socket"
    );
    // The agent endpoint answers: it is the agent that registered.
    let mut agent =
        pb::agent_service_client::AgentServiceClient::connect(host.agent_endpoint.clone())
            .await
            .expect("agent");
    agent
        .list_operations(pb::ListOperationsRequest {})
        .await
        .expect("agent answers");

    // Accounts see the hosts they may use; no token, no list.
    let none = client
        .list_hosts(authed(&outsider, pb::ListHostsRequest {}))
        .await
        .expect("list")
        .into_inner()
        .hosts;
    assert!(none.is_empty(), "{none:?}");
    let err = client
        .list_hosts(pb::ListHostsRequest {})
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // Another local user (uid nobody) cannot connect to the agent, even
    // where the socket's directory is open to it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(wd.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = agent_process.endpoint.trim_start_matches("unix:");
    let mode = std::fs::metadata(socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "socket mode");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-c"])
        .arg("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1])\nexcept PermissionError:\n sys.exit(13)\nsys.exit(0)")
        .arg(socket)
        .output()
        .expect("run setpriv");
    assert_eq!(
        out.status.code(),
        Some(13),
        "nobody must get EACCES on the agent socket: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The agent never serves plaintext TCP, loopback included.
    let out = std::process::Command::new(binary("imprint-agent"))
        .args(["--listen", "127.0.0.1:0", "--store"])
        .arg(wd.path().join("store"))
        .arg("--journal-dir")
        .arg(wd.path().join("journal-tcp"))
        .output()
        .expect("run imprint-agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("UNIX socket"), "{err}");

    // Registering and heartbeating need the host's credential: none is
    // UNAUTHENTICATED, another host's token PERMISSION_DENIED, and the
    // host keeps the endpoint its own agent registered.
    let other = std::fs::read_to_string(daemon.host_token("kvm-02")).expect("token");
    let hijack = || pb::RegisterHostRequest {
        name: "kvm-01".into(),
        agent_endpoint: "unix:///tmp/attacker.sock".into(),
        ..Default::default()
    };
    let err = client
        .register_host(hijack())
        .await
        .expect_err("no credential");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = client
        .register_host(authed(&other, hijack()))
        .await
        .expect_err("another host's token");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let err = client
        .register_host(authed(&ops, hijack()))
        .await
        .expect_err("an account token is no host token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let beat = || pb::HeartbeatRequest {
        name: "kvm-01".into(),
        ..Default::default()
    };
    let err = client.heartbeat(beat()).await.expect_err("no credential");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = client
        .heartbeat(authed(&other, beat()))
        .await
        .expect_err("another host's token");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let after = client
        .list_hosts(authed(&ops, pb::ListHostsRequest {}))
        .await
        .expect("list")
        .into_inner()
        .hosts;
    let h = after.iter().find(|h| h.name == "kvm-01").expect("kvm-01");
    assert_eq!(h.agent_endpoint, host.agent_endpoint, "endpoint unchanged");
    assert!(!after.iter().any(|h| h.name == "kvm-02"), "{after:?}");
    // One agent is one host: kvm-02's credential cannot point kvm-02 at
    // kvm-01's agent (accounts granted only kvm-02 would work on kvm-01).
    let err = client
        .register_host(authed(
            &other,
            pb::RegisterHostRequest {
                name: "kvm-02".into(),
                agent_endpoint: host.agent_endpoint.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("endpoint of another host");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");

    // Bad input gets a clear status.
    let err = client
        .register_host(pb::RegisterHostRequest {
            name: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("no name");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Plaintext TCP endpoints are refused even with the credential.
    let err = client
        .register_host(authed(
            &other,
            pb::RegisterHostRequest {
                name: "kvm-02".into(),
                agent_endpoint: "http://127.0.0.1:9".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("plaintext endpoint");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // A site nobody configured (imprintd --site NAME=LOCATION): refused.
    let lost = std::fs::read_to_string(daemon.host_token("lost")).expect("token");
    let err = client
        .register_host(authed(
            &lost,
            pb::RegisterHostRequest {
                name: "lost".into(),
                agent_endpoint: "unix:///run/lost.sock".into(),
                site: "nowhere".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("unknown site");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("nowhere"), "{err}");
    // A host with a credential that never registered.
    let err = client
        .heartbeat(authed(
            &other,
            pb::HeartbeatRequest {
                name: "kvm-02".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("unknown host");
    assert_eq!(err.code(), tonic::Code::NotFound);
}
