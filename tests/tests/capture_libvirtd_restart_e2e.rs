//! libvirtd restarted while a capture reads a point-in-time view: QEMU
//! keeps exporting the view (the read goes to QEMU, not libvirtd), the
//! capture finishes, the guest keeps running, and no backup job or scratch
//! file is left. (Its own test binary: it stops the libvirtd every other
//! test uses.)

use imprint_proto::v1 as pb;
use imprint_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn capture_read_survives_a_libvirtd_restart() {
    let wd = Workdir::new("imprint-e2e-");
    let backup_dir = wd.path().join("backup");
    let f = Fixture::in_workdir(wd, &["--backup-dir", backup_dir.to_str().expect("utf8")]);
    // A read long enough to cause a fault in the middle of it.
    let disk = f.slow_disk_in_pool_a("r-vda.raw");
    let (d, name, _log) = f.boot_guest("r", &[(&disk, "raw")]);
    let _back = LibvirtdBack;
    let mut client = f.client().await;
    let op = client
        .capture(pb::CaptureRequest {
            guest: name.clone(),
            image_name: "restart-read".into(),
            shutdown_timeout_seconds: 60,
            ..Default::default()
        })
        .await
        .expect("capture")
        .into_inner();
    phase_reached(&mut client, &op.operation_id, "reading disks").await;
    let pkill = std::process::Command::new("pkill")
        .args(["-x", "libvirtd"])
        .status()
        .expect("pkill");
    assert!(pkill.success());
    start_libvirtd();
    let done = watch(&mut client, &op.operation_id).await;
    assert_succeeded(&done);
    let r = done.capture.expect("result");
    assert!(r.point_in_time, "{r:?}");
    assert_eq!(d.state(), "running");
    let job = virsh(&["domjobinfo", &name]);
    assert!(job.contains("None"), "no backup job left: {job}");
    assert!(
        !backup_dir.join(&op.operation_id).exists(),
        "scratch and socket removed"
    );
}
