//! libvirtd goes away in the middle of a lazy fill: the fill runs on in
//! QEMU while it is away (the volume keeps growing), the agent waits for
//! libvirtd to answer again and the deploy succeeds with its volume
//! complete; the guest never stops. (Its own test binary: it stops the
//! libvirtd every other test uses.)

use std::time::Duration;

use imprint_proto::v1 as pb;
use imprint_tests::*;

/// Bytes of `path` on disk (what the fill has written of a qcow2 volume).
fn allocated(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("volume").blocks() * 512
}

#[tokio::test(flavor = "multi_thread")]
async fn lazy_fill_outlives_a_libvirtd_restart() {
    // The fill is capped (~35 s of it) so libvirtd can go in the middle.
    let f = Fixture::with_agent_args(&["--lazy-fill-mib-s", "24"]);
    let disk = f.slow_disk_in_pool_a("lr-vda.raw");
    let image_id = f.capture_disk("lr", &disk).await;
    let mut client = f.client().await;
    let guest = format!("imp-{}-lazyrestart", f.tag);
    let _dom = Domain::adopt(&guest);
    let _back = LibvirtdBack;
    let op = client
        .deploy(pb::DeployRequest {
            keep_identity: true,
            operation_id: uuid::Uuid::new_v4().to_string(),
            image_id,
            guest_name: guest.clone(),
            disk_format: pb::DiskFormat::Qcow2 as i32,
            start: true,
            lazy: true,
            ..Default::default()
        })
        .await
        .expect("lazy deploy accepted")
        .into_inner();
    operation_until(&mut client, &op.operation_id, "32 MiB filled", |o| {
        o.phase == "guest running; filling volumes" && o.bytes_done >= 32 << 20
    })
    .await;
    let volume = f
        .pool_b
        .dir
        .join(format!("{guest}-vda.qcow2"))
        .display()
        .to_string();

    let pkill = std::process::Command::new("pkill")
        .args(["-x", "libvirtd"])
        .status()
        .expect("pkill");
    assert!(pkill.success());
    wait_until("libvirtd is gone", Duration::from_secs(30), || {
        !libvirtd_answers()
    })
    .await;
    // QEMU fills on without libvirtd: 32 MiB more land in the volume.
    let gone_at = allocated(&volume);
    wait_until(
        "the fill goes on without libvirtd (32 MiB more in the volume)",
        Duration::from_secs(60),
        || allocated(&volume) >= gone_at + (32 << 20),
    )
    .await;
    let during = operation(&mut client, &op.operation_id).await;
    assert_eq!(
        during.state,
        pb::OperationState::Running as i32,
        "{during:?}"
    );
    start_libvirtd();

    let done = watch(&mut client, &op.operation_id).await;
    assert_succeeded(&done);
    assert_eq!(
        virsh(&["domstate", "--reason", &guest]).trim(),
        "running (booted)",
        "the guest never stopped"
    );
    let live = virsh(&["dumpxml", &guest]);
    assert!(!live.contains("protocol='nbd'"), "no backing left:\n{live}");
    let inactive = virsh(&["dumpxml", "--inactive", &guest]);
    assert!(!inactive.contains("protocol='nbd'"), "{inactive}");
    let info = run("qemu-img", &["info", "-U", "--output=json", &volume]);
    assert!(!info.contains("backing-filename"), "{info}");
}
