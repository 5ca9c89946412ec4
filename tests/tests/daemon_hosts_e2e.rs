//! Agents register with the control daemon and heartbeat; the daemon lists
//! them as alive (HostService), on its embedded SQLite catalog.

use std::time::{Duration, Instant};

use imprint_proto::v1::{self as pb, host_service_client::HostServiceClient};
use imprint_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn agent_registers_and_heartbeats() {
    let wd = Workdir::new("imprint-daemon-");
    let daemon = DaemonProcess::start(&wd.path().join("imprintd"), &wd.path().join("store"));
    let ops = daemon.account("ops");
    let outsider = daemon.admin(&["create", "outsider"]).trim().to_string();
    let _agent = AgentProcess::start_agent(
        &wd.path().join("store"),
        &wd.path().join("journal"),
        &["--daemon", &daemon.endpoint(), "--host-name", "kvm-01"],
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
    assert!(
        host.agent_endpoint.starts_with("http://127.0.0.1:"),
        "{host:?}"
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

    // Bad input gets a clear status.
    let err = client
        .register_host(pb::RegisterHostRequest {
            name: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("no name");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // A site nobody configured (imprintd --site NAME=LOCATION): refused.
    let err = client
        .register_host(pb::RegisterHostRequest {
            name: "lost".into(),
            agent_endpoint: "http://127.0.0.1:9".into(),
            site: "nowhere".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown site");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("nowhere"), "{err}");
    let err = client
        .heartbeat(pb::HeartbeatRequest {
            name: "never-registered".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown host");
    assert_eq!(err.code(), tonic::Code::NotFound);
}
