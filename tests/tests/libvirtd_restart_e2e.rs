//! libvirtd restarted in the middle of a capture: the agent reports
//! UNAVAILABLE while it is gone, reconnects by itself, and the capture
//! still ends with the guest running. (Its own test binary: it stops the
//! libvirtd every other test uses.)

use std::time::{Duration, Instant};

use imprint_proto::v1 as pb;
use imprint_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn capture_survives_libvirtd_restart() {
    let f = Fixture::new();
    let disk = f.disk_in_pool_a(&f.guest.disk_ignore_acpi, "r-vda.raw");
    let (d, name, log) = f.boot_guest("r", &[(&disk, "raw")]);
    let _back = LibvirtdBack;
    let mut client = f.client().await;
    let op = client
        .capture(pb::CaptureRequest {
            guest: name.clone(),
            image_name: "restart".into(),
            shutdown_timeout_seconds: 20,
            allow_force_off: true,
            ..Default::default()
        })
        .await
        .expect("capture")
        .into_inner();
    // While the agent waits for the (deaf) guest to power off...
    let start = Instant::now();
    loop {
        let cur = operation(&mut client, &op.operation_id).await;
        if cur.phase == "shutting down" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no shutdown phase: {cur:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...libvirtd goes away.
    let _ = std::process::Command::new("pkill")
        .args(["-x", "libvirtd"])
        .status();
    let start = Instant::now();
    while libvirtd_answers() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "libvirtd did not stop"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let err = client
        .get_guest(pb::GetGuestRequest {
            guest: name.clone(),
        })
        .await
        .expect_err("libvirtd is down");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.message().contains("libvirt"), "{err}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    run("libvirtd", &["-d"]);
    let start = Instant::now();
    while !libvirtd_answers() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "libvirtd did not come back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done = watch(&mut client, &op.operation_id).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    assert_eq!(d.state(), "running");
    wait_for(&log, "IMPRINT-READY", 2, Duration::from_secs(120));
    let g = client
        .get_guest(pb::GetGuestRequest { guest: name })
        .await
        .expect("reconnected")
        .into_inner();
    assert_eq!(g.power_state, pb::PowerState::Running as i32);
}
