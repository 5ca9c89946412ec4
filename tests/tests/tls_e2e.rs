//! Mutual TLS between `imprintd` and `imprint-agent` (certificates made by
//! the test with `openssl`): agents register only with a certificate of the
//! daemon's CA that names their host, the agent accepts only callers with
//! one, users reach the daemon over TLS with their tokens, and plaintext is
//! refused.

use std::time::Duration;

use imprint_proto::v1::{
    self as pb, agent_service_client::AgentServiceClient, host_service_client::HostServiceClient,
    image_service_client::ImageServiceClient,
};
use imprint_tests::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const HOST: &str = "kvm-tls";

async fn channel(
    url: &str,
    ca: &std::path::Path,
    id: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("ca")));
    if let Some((cert, key)) = id {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).expect("cert"),
            std::fs::read(key).expect("key"),
        ));
    }
    Endpoint::from_shared(url.to_string())
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_and_agent_talk_mutual_tls_only() {
    let wd = Workdir::new("imprint-tls-");
    let pki = TestPki::new(&wd.path().join("pki"));
    let s = |p: &std::path::Path| p.to_str().expect("utf8").to_string();
    let daemon = DaemonProcess::start_with(
        &wd.path().join("imprintd"),
        &wd.path().join("store"),
        &[
            "--tls-cert",
            &s(&pki.daemon.0),
            "--tls-key",
            &s(&pki.daemon.1),
            "--tls-ca",
            &s(&pki.ca),
        ],
    );
    let daemon_url = format!("https://{}", daemon.listen);
    let token = daemon.account("alice");
    let agent_cert = pki.agent_for(HOST);
    let agent = AgentProcess::start_agent(
        &wd.path().join("store"),
        &wd.path().join("journal"),
        &[
            "--daemon",
            &daemon_url,
            "--host-name",
            HOST,
            "--tls-cert",
            &s(&agent_cert.0),
            "--tls-key",
            &s(&agent_cert.1),
            "--tls-ca",
            &s(&pki.ca),
        ],
    );
    let agent_url = agent.endpoint.replace("http://", "https://");

    // A user's client: TLS with the CA, no certificate.
    let user = channel(&daemon_url, &pki.ca, None).await.expect("user TLS");
    let mut hosts = HostServiceClient::new(user.clone());
    let mut alive = false;
    for _ in 0..100 {
        let list = hosts
            .list_hosts(authed(&token, pb::ListHostsRequest {}))
            .await
            .expect("list hosts")
            .into_inner()
            .hosts;
        if let Some(h) = list.iter().find(|h| h.name == HOST) {
            assert_eq!(h.agent_endpoint, agent_url, "advertised over https");
            if h.alive {
                alive = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(alive, "the agent registered over mutual TLS");
    // Without a client certificate nobody registers or heartbeats.
    let e = hosts
        .heartbeat(pb::HeartbeatRequest {
            name: HOST.into(),
            ..Default::default()
        })
        .await
        .expect_err("no client certificate");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    // A certificate of the CA that does not name the host: refused, and
    // the host keeps its endpoint.
    let other_agent = channel(&daemon_url, &pki.ca, Some(&pki.agent))
        .await
        .expect("TLS with the unbound agent certificate");
    let mut other = HostServiceClient::new(other_agent);
    let e = other
        .register_host(pb::RegisterHostRequest {
            name: HOST.into(),
            agent_endpoint: "https://127.0.0.1:9".into(),
            ..Default::default()
        })
        .await
        .expect_err("certificate not bound to the host");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    let e = other
        .heartbeat(pb::HeartbeatRequest {
            name: HOST.into(),
            ..Default::default()
        })
        .await
        .expect_err("certificate not bound to the host");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    let now = hosts
        .list_hosts(authed(&token, pb::ListHostsRequest {}))
        .await
        .expect("list hosts")
        .into_inner()
        .hosts;
    assert_eq!(
        now.iter()
            .find(|h| h.name == HOST)
            .expect("host")
            .agent_endpoint,
        agent_url
    );

    // The daemon reaches the agent over mutual TLS: the agent's answer
    // about an unknown guest comes back through it.
    let mut images = ImageServiceClient::new(user);
    let mut req = tonic::Request::new(pb::CaptureImageRequest {
        host: HOST.into(),
        guest: "no-such-guest".into(),
        name: "x".into(),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    let e = images.capture_image(req).await.expect_err("unknown guest");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(e.message().contains(HOST), "{e}");

    // The agent: the daemon's certificate gets in; none, or one of another
    // CA, does not.
    let mut ok = AgentServiceClient::new(
        channel(&agent_url, &pki.ca, Some(&pki.daemon))
            .await
            .expect("daemon certificate"),
    );
    ok.list_operations(pb::ListOperationsRequest {})
        .await
        .expect("agent answers a CA certificate");
    for (what, id) in [
        ("no certificate", None),
        ("another CA", Some(&pki.outsider)),
    ] {
        match channel(&agent_url, &pki.ca, id).await {
            // Refused in the handshake.
            Err(e) => assert!(
                format!("{e:?}").contains("ransport"),
                "agent refused a caller with {what} otherwise: {e:?}"
            ),
            // Or right after it: the server closes the connection before
            // any gRPC answer (an answer would be the application, not
            // TLS, saying no).
            Ok(ch) => {
                let e = AgentServiceClient::new(ch)
                    .list_operations(pb::ListOperationsRequest {})
                    .await
                    .expect_err(&format!("agent accepted a caller with {what}"));
                assert!(
                    refused_by_transport(&e),
                    "agent refused a caller with {what} otherwise: {e:?}"
                );
            }
        }
    }
    // Plaintext to a TLS port fails.
    let plain = Endpoint::from_shared(format!("http://{}", daemon.listen))
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let e = HostServiceClient::new(ch)
            .list_hosts(pb::ListHostsRequest {})
            .await
            .expect_err("plaintext call answered");
        assert!(
            refused_by_transport(&e),
            "plaintext refused otherwise: {e:?}"
        );
    }

    // Without TLS, only loopback.
    let out = std::process::Command::new(binary("imprintd"))
        .args(["--listen", "0.0.0.0:0", "--state-dir"])
        .arg(wd.path().join("other"))
        .output()
        .expect("run imprintd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback only"), "{err}");
}

/// A call that failed below gRPC: the connection was closed or spoke
/// something else (TLS records to a plaintext client), so no server
/// handler answered it.
fn refused_by_transport(e: &tonic::Status) -> bool {
    let mut text = e.message().to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(x) = src {
        text.push_str(&format!(" <- {x}"));
        src = x.source();
    }
    matches!(
        e.code(),
        tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Unavailable
            | tonic::Code::Internal
    ) && (text.contains("transport error") || text.contains("h2 protocol error"))
}
