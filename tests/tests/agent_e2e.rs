//! The agent on a real libvirtd with real QEMU guests (TCG here, KVM where
//! hardware virtualisation works): capture a running guest, deploy it as a
//! new guest with a static address, and prove from the new guest's serial
//! console that it has the old guest's data and the injected settings.

use std::time::Duration;

use imprint_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use imprint_tests::*;

const BOOT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn capture_running_guest_and_deploy_copy_with_static_ip() {
    let g = busybox_guest();
    let wd = Workdir::new("imprint-e2e-");
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let pool_a = Pool::new(&format!("imp-{tag}-a"), &wd.path().join("pool-a"));
    let pool_b = Pool::new(&format!("imp-{tag}-b"), &wd.path().join("pool-b"));
    let disk_a = pool_a.dir.join("imp-a-vda.raw");
    run(
        "cp",
        &[
            "--sparse=always",
            g.disk.to_str().expect("utf8"),
            disk_a.to_str().expect("utf8"),
        ],
    );
    virsh(&["pool-refresh", &pool_a.name]);
    let log_a = wd.path().join("a.log");
    let consoles = wd.path().join("consoles");
    std::fs::create_dir(&consoles).expect("consoles");
    let name_a = format!("imp-{tag}-a");
    let xml = busybox_xml(
        &name_a,
        &g,
        wd.path(),
        &[(&disk_a, "raw")],
        &log_a,
        free_udp_port(),
    );
    let a = Domain::define(&name_a, &xml, wd.path());
    a.start();
    let log = wait_for(&log_a, "IMPRINT-READY", 1, BOOT);
    let marker_a = last_value(&log, "IMPRINT-MARKER").expect("guest A prints its marker");
    assert_eq!(last_value(&log, "IMPRINT-BOOT").as_deref(), Some("count=1"));

    let store = wd.path().join("store");
    let agent = AgentProcess::start(
        &store,
        &wd.path().join("journal"),
        &[
            "--domain-type",
            domain_type(),
            "--console-log-dir",
            consoles.to_str().expect("utf8"),
            "--default-pool",
            &pool_b.name,
        ],
    );
    let mut client = AgentServiceClient::connect(agent.endpoint.clone())
        .await
        .expect("connect");

    // Unknown guests are refused at once.
    let err = client
        .capture(pb::CaptureRequest {
            guest: "no-such-guest".into(),
            image_name: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown guest");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");

    // Capture A: it must go down, be read, and come back up.
    let op = client
        .capture(pb::CaptureRequest {
            operation_id: uuid::Uuid::new_v4().to_string(),
            guest: name_a.clone(),
            image_name: "busybox-a".into(),
            shutdown_timeout_seconds: 90,
            allow_force_off: false,
            ..Default::default()
        })
        .await
        .expect("capture")
        .into_inner();
    // A retried call with the same id does not start a second capture.
    let again = client
        .capture(pb::CaptureRequest {
            operation_id: op.operation_id.clone(),
            guest: name_a.clone(),
            image_name: "busybox-a".into(),
            ..Default::default()
        })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(again.operation_id, op.operation_id);
    let done = watch(&mut client, &op.operation_id).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "capture failed: {}",
        done.error
    );
    let r = done.capture.expect("capture result");
    assert_eq!(r.final_power_state, pb::PowerState::Running as i32);
    assert!(
        r.shutdown_seconds > 0.0 && r.read_seconds > 0.0 && r.boot_seconds > 0.0,
        "{r:?}"
    );
    assert_eq!(r.bytes_total, 64 << 20);
    assert!(r.zero_bytes_skipped > 0, "{r:?}");
    eprintln!(
        "downtime: shutdown {:.1}s + read {:.1}s + boot {:.1}s",
        r.shutdown_seconds, r.read_seconds, r.boot_seconds
    );
    let log = wait_for(&log_a, "IMPRINT-READY", 2, BOOT);
    assert!(
        log.contains("IMPRINT-POWEROFF"),
        "A was shut down through ACPI"
    );
    assert_eq!(a.state(), "running");
    assert_eq!(last_value(&log, "IMPRINT-BOOT").as_deref(), Some("count=2"));

    // Deploy it as B with a static address, a bigger disk, into pool B.
    let name_b = format!("imp-{tag}-b");
    let _b = Domain::adopt(&name_b);
    let op = client
        .deploy(pb::DeployRequest {
            operation_id: uuid::Uuid::new_v4().to_string(),
            image_id: r.image_id.clone(),
            guest_name: name_b.clone(),
            disk_sizes_bytes: vec![128 << 20],
            network: Some(pb::NetworkConfig {
                hostname: "imp-b".into(),
                interfaces: vec![pb::InterfaceConfig {
                    addresses: vec!["192.0.2.20/24".into()],
                    gateway4: "192.0.2.1".into(),
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
        "deploy failed: {}",
        done.error
    );
    let d = done.deploy.expect("deploy result");
    assert!(d.started);
    assert!(
        d.volumes
            .iter()
            .all(|v| v.starts_with(pool_b.dir.to_str().expect("utf8"))),
        "{:?}",
        d.volumes
    );
    let log_b = consoles.join(format!("{name_b}.log"));
    let log = wait_for(&log_b, "IMPRINT-READY", 1, BOOT);
    assert_eq!(
        last_value(&log, "IMPRINT-MARKER"),
        Some(marker_a),
        "B has A's data"
    );
    // A's disk was captured after one boot; B's boot is the second.
    assert_eq!(last_value(&log, "IMPRINT-BOOT").as_deref(), Some("count=2"));
    assert_eq!(
        last_value(&log, "IMPRINT-HOSTNAME").as_deref(),
        Some("imp-b")
    );
    assert!(
        log.lines()
            .any(|l| l.trim() == "IMPRINT-ADDR 192.0.2.20/24"),
        "static address applied:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.trim() == format!("IMPRINT-DISK vda sectors={}", (128u64 << 20) / 512)),
        "disk resized:\n{log}"
    );
    let mac_line = log
        .lines()
        .find(|l| l.contains("IMPRINT-NIC"))
        .unwrap_or_default()
        .to_string();
    assert!(
        mac_line.contains(&d.mac_addresses[0]),
        "new MAC {} in {mac_line:?}",
        d.mac_addresses[0]
    );

    // Bad input: a second deploy with the same name, a too-small disk.
    let err = client
        .deploy(pb::DeployRequest {
            image_id: r.image_id.clone(),
            guest_name: "bad name!".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad name");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let op = client
        .deploy(pb::DeployRequest {
            image_id: r.image_id.clone(),
            guest_name: name_b.clone(),
            ..Default::default()
        })
        .await
        .expect("accepted")
        .into_inner();
    let done = watch(&mut client, &op.operation_id).await;
    assert_eq!(done.state, pb::OperationState::Failed as i32);
    assert_eq!(
        done.error_code,
        tonic::Code::AlreadyExists as i32,
        "{}",
        done.error
    );
    drop(a);
}
