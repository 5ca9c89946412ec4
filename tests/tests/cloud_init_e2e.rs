//! A real Debian guest with systemd and cloud-init: the deployed copy gets
//! its address and host name from our NoCloud seed (vfat `cidata`,
//! network-config v2 matched by MAC) through cloud-init itself.

use std::time::Duration;

use imprint_proto::v1 as pb;
use imprint_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn debian_guest_gets_network_from_cloud_init() {
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
    let _b = Domain::adopt(&name_b);
    let op = client
        .deploy(pb::DeployRequest {
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
        })
        .await
        .expect("deploy")
        .into_inner();
    let done = watch(&mut client, &op.operation_id).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let d = done.deploy.expect("result");
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
}
