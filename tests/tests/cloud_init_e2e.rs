//! A real Debian guest with systemd and cloud-init: the deployed copy gets
//! its address and host name from our NoCloud seed (vfat `cidata`,
//! network-config v2 matched by MAC) through cloud-init itself; and every
//! copy gets a fresh identity (machine-id, SSH host keys: virt-sysprep on
//! its new volume before it first boots), while the source keeps its own.
//! A sealed capture of the running source stores the image generalized:
//! a copy that keeps the image's identity gets a fresh one all the same,
//! with no generalization at deploy.

use std::time::Duration;

use imprint_proto::v1 as pb;
use imprint_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn debian_clones_get_network_from_cloud_init_and_fresh_identities() {
    let deb = debian_guest();
    let f = Fixture::new();
    let disk = f.disk_in_pool_a(&deb.disk, "deb-vda.raw");
    let name_a = format!("imp-{}-deb", f.tag);
    let log_a = f.wd.path().join("deb.log");
    let xml = guest_xml(
        &name_a,
        (&deb.kernel, &deb.initrd),
        1024,
        f.wd.path(),
        &[(&disk, "raw")],
        &log_a,
        free_udp_port(),
    );
    let a = Domain::define(&name_a, &xml, f.wd.path());
    a.start();
    let log = wait_for(&log_a, "IMPRINT-READY", 1, Duration::from_secs(240));
    let marker = last_value(&log, "IMPRINT-MARKER").expect("marker");
    let source_identity = identity(&log);
    let mut client = f.client().await;

    let done = capture(
        &mut client,
        pb::CaptureRequest {
            guest: name_a.clone(),
            image_name: "debian".into(),
            shutdown_timeout_seconds: 120,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let r = done.capture.expect("result");
    assert_eq!(a.state(), "running");
    // The captured guest had no seed: this is its first cloud-init run.
    let name_b = format!("imp-{}-deb2", f.tag);
    let b_guest = Domain::adopt(&name_b);
    // A second copy, deployed at the same time and lazily (its fresh
    // identity is written into the overlay it starts on, read through the
    // export): identities must differ between clones, not only from the
    // source.
    let name_c = format!("imp-{}-deb3", f.tag);
    let c_guest = Domain::adopt(&name_c);
    let op_c = client
        .deploy(pb::DeployRequest {
            image_id: r.image_id.clone(),
            guest_name: name_c.clone(),
            lazy: true,
            network: one_address("web-8", "198.51.100.8/24"),
            start: true,
            ..Default::default()
        })
        .await
        .expect("deploy")
        .into_inner();
    let done = deploy(
        &mut client,
        pb::DeployRequest {
            image_id: r.image_id,
            guest_name: name_b.clone(),
            network: Some(pb::NetworkConfig {
                hostname: "web-7".into(),
                interfaces: vec![pb::InterfaceConfig {
                    addresses: vec!["198.51.100.7/24".into(), "2001:db8:7::7/64".into()],
                    gateway4: "198.51.100.1".into(),
                    nameservers: vec!["198.51.100.53".into()],
                    ..Default::default()
                }],
            }),
            start: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let d = done.deploy.expect("result");
    let done_c = watch(&mut client, &op_c.operation_id).await;
    assert_succeeded(&done_c);
    let log = wait_for(
        &f.consoles.join(format!("{name_b}.log")),
        "IMPRINT-READY",
        1,
        Duration::from_secs(300),
    );
    assert_eq!(last_value(&log, "IMPRINT-MARKER"), Some(marker));
    assert_eq!(
        last_value(&log, "IMPRINT-CLOUD-INIT").as_deref(),
        Some("done"),
        "cloud-init finished cleanly:\n{log}"
    );
    assert_eq!(
        last_value(&log, "IMPRINT-HOSTNAME").as_deref(),
        Some("web-7")
    );
    for addr in ["198.51.100.7/24", "2001:db8:7::7/64"] {
        assert!(
            log.lines()
                .any(|l| l.trim() == format!("IMPRINT-ADDR {addr}")),
            "{addr} configured by cloud-init:\n{log}"
        );
    }
    let nic = log
        .lines()
        .find(|l| l.contains("IMPRINT-NIC"))
        .unwrap_or_default()
        .to_string();
    assert!(nic.contains(&d.mac_addresses[0]), "{nic}");

    // Fresh identities: both copies differ from the source and from each
    // other; the source (started again after the capture) kept its own.
    let log_c = wait_for(
        &f.consoles.join(format!("{name_c}.log")),
        "IMPRINT-READY",
        1,
        Duration::from_secs(300),
    );
    let (b, c) = (identity(&log), identity(&log_c));
    for (what, x, y) in [
        ("source and copy", &source_identity, &b),
        ("source and copy", &source_identity, &c),
        ("the two copies", &b, &c),
    ] {
        assert_ne!(x.0, y.0, "{what} share a machine-id");
        assert_ne!(x.1, y.1, "{what} share an SSH host key");
    }
    let again = wait_for(&log_a, "IMPRINT-READY", 2, Duration::from_secs(240));
    assert_eq!(
        identity(&again),
        source_identity,
        "the source keeps its identity"
    );
    drop((b_guest, c_guest));

    // Sealed, from the running source (crash-consistent: no shutdown; what
    // is sealed is an overlay over the view's export).
    let done = capture(
        &mut client,
        pb::CaptureRequest {
            guest: name_a.clone(),
            image_name: "debian-sealed".into(),
            mode: pb::CaptureMode::CrashConsistent as i32,
            seal: true,
            ..Default::default()
        },
    )
    .await;
    assert_succeeded(&done);
    let sealed = done.capture.expect("result");
    assert!(sealed.sealed && sealed.point_in_time, "{sealed:?}");
    assert_eq!(a.state(), "running");
    let name_d = format!("imp-{}-deb4", f.tag);
    let _d = Domain::adopt(&name_d);
    let done = deploy(
        &mut client,
        pb::DeployRequest {
            image_id: sealed.image_id,
            guest_name: name_d.clone(),
            keep_identity: true,
            network: one_address("web-9", "198.51.100.9/24"),
            start: true,
            ..Default::default()
        },
    )
    .await;
    assert_succeeded(&done);
    assert_eq!(
        done.deploy.expect("result").generalize_seconds,
        0.0,
        "a sealed image is not generalized again"
    );
    let log_d = wait_for(
        &f.consoles.join(format!("{name_d}.log")),
        "IMPRINT-READY",
        1,
        Duration::from_secs(300),
    );
    let d = identity(&log_d);
    for (what, x) in [
        ("the source", &source_identity),
        ("a copy", &b),
        ("a copy", &c),
    ] {
        assert_ne!(
            x.0, d.0,
            "the sealed image's copy and {what} share a machine-id"
        );
        assert_ne!(
            x.1, d.1,
            "the sealed image's copy and {what} share an SSH host key"
        );
    }
}

/// A network configuration: a host name and one address on one NIC.
fn one_address(hostname: &str, address: &str) -> Option<pb::NetworkConfig> {
    Some(pb::NetworkConfig {
        hostname: hostname.into(),
        interfaces: vec![pb::InterfaceConfig {
            addresses: vec![address.into()],
            ..Default::default()
        }],
    })
}

/// A guest's machine-id and SSH host key fingerprint, from the last boot
/// on its console (none of them missing).
fn identity(log: &str) -> (String, String) {
    let id = last_value(log, "IMPRINT-MACHINE-ID").expect("machine-id line");
    let key = last_value(log, "IMPRINT-SSH-HOSTKEY").expect("host key line");
    assert_eq!(id.len(), 32, "a machine-id: {id:?}\n{log}");
    assert!(key.starts_with("SHA256:"), "a host key: {key:?}\n{log}");
    (id, key)
}
