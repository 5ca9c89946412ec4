//! The host registry, and operations of hosts whose agents fell silent.

use crate::catalog::*;
use crate::domain::{OpKind, OpState};
use crate::testpg::catalogs;

#[tokio::test]
async fn hosts_and_silent_agents() {
    for (_b, c) in catalogs().await {
        hosts_register_and_beat(&c).await;
        silent_hosts_fail_their_operations(&c).await;
    }
}

/// h1 registers, registers again with a new version, and beats; unknown
/// and unnamed hosts are refused.
async fn hosts_register_and_beat(c: &Catalog) {
    let h = HostRow {
        name: "h1".into(),
        agent_endpoint: "http://127.0.0.1:7341".into(),
        libvirt_uri: "qemu:///system".into(),
        version: "0.1.0".into(),
        cpus: 2,
        memory_bytes: 1 << 34,
        site: "dc1".into(),
        last_heartbeat_unix: 0,
    };
    c.register_host(&h).await.expect("register");
    c.register_host(&HostRow {
        version: "0.2.0".into(),
        ..h.clone()
    })
    .await
    .expect("re-register");
    let hosts = c.hosts().await.expect("hosts");
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].version, "0.2.0");
    c.heartbeat("h1").await.expect("beat");
    assert!(matches!(
        c.heartbeat("h9").await,
        Err(CatalogError::NotFound(_))
    ));
    assert!(matches!(
        c.register_host(&HostRow {
            name: String::new(),
            ..h.clone()
        })
        .await,
        Err(CatalogError::Invalid(_))
    ));
}

/// Operations on a host silent past the cut-off fail with a reason, and
/// so does the image a capture among them was making.
async fn silent_hosts_fail_their_operations(c: &Catalog) {
    let (alice, _) = c.create_account("alice", false, false).await.expect("a");
    let img = uuid::Uuid::new_v4().to_string();
    let n = NewOperation {
        account_id: &alice.id,
        request_id: None,
        kind: OpKind::Capture,
        image_id: None,
        host: "h1",
        guest: "g1",
        agent_request: "",
        new_image: Some(NewImage {
            id: &img,
            name: "web",
            notes: "",
            tags: &[],
            source_host: "h1",
            source_guest: "g1",
        }),
    };
    let (op, _) = c.begin_operation(&n).await.expect("begin");
    assert_eq!(op.image_id.as_deref(), Some(img.as_str()));
    assert_eq!(
        c.get_image(&alice, &img).await.expect("image").state,
        ImageState::Creating
    );
    let beat = c.hosts().await.expect("hosts")[0].last_heartbeat_unix;
    // Heard from recently: nothing fails.
    assert_eq!(
        c.fail_operations_of_silent_hosts(beat - 60)
            .await
            .expect("sweep"),
        0
    );
    // Silent past the cut-off: its operations fail with a reason.
    assert_eq!(
        c.fail_operations_of_silent_hosts(beat + 1)
            .await
            .expect("sweep"),
        1
    );
    let failed = c.operation(&op.id).await.expect("get");
    assert_eq!(failed.state, OpState::Failed);
    assert_eq!(failed.error_code, 14);
    assert!(
        failed.error.contains("h1") && failed.error.contains("heartbeats"),
        "{}",
        failed.error
    );
    // Its image fails with the same reason: nothing stays CREATING.
    let image = c.get_image(&alice, &img).await.expect("image");
    assert_eq!(image.state, ImageState::Failed);
    assert_eq!(image.failure_reason, failed.error);
}
