//! Live captures of real guests: the Debian guest with qemu-guest-agent on
//! its virtio-serial channel is captured without ever stopping, its
//! filesystems frozen only while the point-in-time view is taken; a freeze
//! that hangs (the guest's freeze hook sleeps) fails at its bound and the
//! guest is thawed; guests without an agent are refused unless the caller
//! asks for a crash-consistent capture.

use std::{path::Path, time::Duration};

use imprint_proto::v1 as pb;
use imprint_tests::*;

const BOOT: Duration = Duration::from_secs(240);

fn live_req(guest: &str, image: &str, mode: pb::CaptureMode, freeze: u32) -> pb::CaptureRequest {
    pb::CaptureRequest {
        operation_id: uuid::Uuid::new_v4().to_string(),
        guest: guest.into(),
        image_name: image.into(),
        mode: mode as i32,
        freeze_timeout_seconds: freeze,
        ..Default::default()
    }
}

/// `cat PATH` inside the ext4 file system of `disk` (debugfs, read-only).
fn read_in_ext4(disk: &Path, path: &str) -> String {
    run(
        "debugfs",
        &["-R", &format!("cat {path}"), disk.to_str().expect("utf8")],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn live_capture_of_a_debian_guest_with_its_agent() {
    let deb = debian_guest();
    // Point-in-time views keep their scratch on a small filesystem that
    // runs out for real at the end.
    let scratch = Tmpfs::mount("48m");
    let backup_dir = scratch.path().to_str().expect("utf8");
    let f = Fixture::with_agent_args(&["--backup-dir", backup_dir]);
    let root = f.disk_in_pool_a(&deb.disk, "live-vda.raw");
    // A data disk of random bytes makes the read long enough to write in
    // the guest while it goes on.
    let data = f.pool_a.dir.join("live-vdb.raw");
    run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", data.display()),
            "bs=1M",
            "count=512",
            "status=none",
        ],
    );
    let name = format!("imp-{}-live", f.tag);
    let log = f.wd.path().join("live.log");
    let xml = with_guest_agent(&guest_xml(
        &name,
        (&deb.kernel, &deb.initrd),
        512,
        f.wd.path(),
        &[(&root, "raw"), (&data, "raw")],
        &log,
        free_udp_port(),
    ));
    let dom = Domain::define(&name, &xml, f.wd.path());
    dom.start();
    wait_for(&log, "IMPRINT-READY", 1, BOOT);
    wait_for_guest_agent(&name, Duration::from_secs(120));
    let mut client = f.client().await;

    // Bad input, refused before anything happens to the guest.
    virsh(&["suspend", &name]);
    let err = client
        .capture(live_req(&name, "paused", pb::CaptureMode::Live, 0))
        .await
        .expect_err("paused guest");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    virsh(&["resume", &name]);
    let err = client
        .capture(live_req(&name, "x", pb::CaptureMode::Live, 7200))
        .await
        .expect_err("freeze bound over an hour");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let err = client
        .capture(live_req(&name, "x", pb::CaptureMode::Offline, 5))
        .await
        .expect_err("a freeze bound without a freeze");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // Consistency: a marker written before the capture and never synced
    // by hand is in the image (the freeze flushed it); one written while
    // the disks are read is not.
    assert_eq!(
        guest_exec(
            &name,
            "echo live-first > /imprint/marker",
            Duration::from_secs(60)
        ),
        0
    );
    let op = client
        .capture(live_req(&name, "live", pb::CaptureMode::Live, 0))
        .await
        .expect("capture")
        .into_inner();
    phase_reached(&mut client, &op.operation_id, "reading disks").await;
    assert_eq!(
        guest_exec(
            &name,
            "echo live-second > /imprint/marker && sync",
            Duration::from_secs(60)
        ),
        0
    );
    let during = operation(&mut client, &op.operation_id).await;
    assert_eq!(
        during.state,
        pb::OperationState::Running as i32,
        "the second marker was written while the disks were read: {during:?}"
    );
    let done = watch(&mut client, &op.operation_id).await;
    assert_succeeded(&done);
    let r = done.capture.expect("result");
    eprintln!(
        "live capture: frozen {:.2} s, read {:.1} s",
        r.freeze_seconds, r.read_seconds
    );
    assert_eq!(r.mode, pb::CaptureMode::Live as i32, "{r:?}");
    assert!(r.point_in_time, "{r:?}");
    assert_eq!(
        (r.downtime_seconds, r.shutdown_seconds, r.boot_seconds),
        (0.0, 0.0, 0.0),
        "{r:?}"
    );
    assert!(r.freeze_seconds > 0.0 && r.freeze_seconds < 10.0, "{r:?}");
    assert_eq!(r.final_power_state, pb::PowerState::Running as i32);
    let console = std::fs::read_to_string(&log).expect("log");
    assert!(
        !console.contains("IMPRINT-POWEROFF") && !console.contains("IMPRINT-BOOT count=2"),
        "the guest never went down"
    );
    assert_eq!(dom.state(), "running");
    // Deploy it (no start) and read its root file system.
    let deployed = format!("imp-{}-livecopy", f.tag);
    let _copy = Domain::adopt(&deployed);
    let done = deploy(
        &mut client,
        pb::DeployRequest {
            keep_identity: true,
            operation_id: uuid::Uuid::new_v4().to_string(),
            image_id: r.image_id.clone(),
            guest_name: deployed,
            ..Default::default()
        },
    )
    .await;
    assert_succeeded(&done);
    let vols = done.deploy.expect("deploy result").volumes;
    assert_eq!(
        read_in_ext4(Path::new(&vols[0]), "/imprint/marker").trim(),
        "live-first",
        "the image holds the point in time of the freeze"
    );

    // A guest agent whose freeze hangs (its freeze hook sleeps 25 s): the
    // capture fails at its 3 s bound; the guest runs on and is thawed once
    // its agent answers again.
    assert_eq!(
        guest_exec(
            &name,
            "echo 25 > /run/imprint-hang-freeze",
            Duration::from_secs(60)
        ),
        0
    );
    let op = client
        .capture(live_req(&name, "hang", pb::CaptureMode::Live, 3))
        .await
        .expect("capture")
        .into_inner();
    let done = watch(&mut client, &op.operation_id).await;
    assert_eq!(done.state, pb::OperationState::Failed as i32, "{done:?}");
    assert_eq!(
        done.error_code,
        tonic::Code::DeadlineExceeded as i32,
        "{done:?}"
    );
    assert!(
        done.finished_unix - done.started_unix < 20,
        "failed at its bound, not when the hook ended: {done:?}"
    );
    wait_for(&log, "IMPRINT-FREEZE-HANG 25", 1, Duration::from_secs(10));
    assert_eq!(dom.state(), "running");
    assert!(
        virsh(&["domjobinfo", &name]).contains("None"),
        "no backup job left"
    );
    assert!(
        !scratch.path().join(&op.operation_id).exists(),
        "no scratch left"
    );
    // The hook ends after 25 s and the agent freezes then (it runs one
    // command at a time: any answer after the failed capture comes after
    // that freeze); the imprint agent's recovery pass sends the thaw that
    // gets through, and then drops its journal entry. Nobody else thaws.
    let entries = || f.journal_entries();
    let start = std::time::Instant::now();
    loop {
        let status = agent_command(&name, r#"{"execute":"guest-fsfreeze-status"}"#, 5);
        if status.as_ref().ok().and_then(|s| s.as_str()) == Some("thawed") && entries().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "still not thawed: {status:?}, journal {:?}",
            entries()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        guest_exec(
            &name,
            "echo after > /imprint/after-thaw && sync",
            Duration::from_secs(30)
        ),
        0,
        "the guest writes again"
    );

    // The scratch space runs out: the guest keeps overwriting its data
    // disk (random bytes, so QEMU must copy its old contents into the
    // 48 MiB scratch filesystem first) while the view is read. The backup
    // breaks, not the guest: all its writes succeed, no I/O error reaches
    // it.
    assert_eq!(
        guest_exec(
            &name,
            "nohup sh -c 'while [ ! -e /run/imprint-stop-writer ]; do \
               dd if=/dev/urandom of=/dev/vdb bs=1M count=512 oflag=direct 2>/dev/null \
                 || echo failed >>/run/imprint-writer-failed; \
               touch /run/imprint-writer-pass; done; \
               touch /run/imprint-writer-stopped' >/dev/null 2>&1 &",
            Duration::from_secs(60)
        ),
        0
    );
    // After one whole pass the data disk holds only new bytes: the read
    // has 512 MiB to compress, long after the scratch is full.
    assert_eq!(
        guest_exec(
            &name,
            "while [ ! -e /run/imprint-writer-pass ]; do sleep 0.2; done",
            Duration::from_secs(300)
        ),
        0
    );
    let op = client
        .capture(live_req(&name, "full", pb::CaptureMode::Live, 0))
        .await
        .expect("capture")
        .into_inner();
    let done = watch(&mut client, &op.operation_id).await;
    assert_eq!(done.state, pb::OperationState::Failed as i32, "{done:?}");
    assert_eq!(
        done.error_code,
        tonic::Code::ResourceExhausted as i32,
        "{done:?}"
    );
    assert_eq!(dom.state(), "running");
    assert!(
        virsh(&["domjobinfo", &name]).contains("None"),
        "no backup job left"
    );
    assert!(
        !scratch.path().join(&op.operation_id).exists(),
        "no scratch left"
    );
    assert_eq!(
        guest_exec(
            &name,
            "touch /run/imprint-stop-writer; \
             while [ ! -e /run/imprint-writer-stopped ]; do sleep 0.2; done; \
             [ ! -e /run/imprint-writer-failed ]",
            Duration::from_secs(120)
        ),
        0,
        "every write of the guest succeeded"
    );
    assert_eq!(
        guest_exec(
            &name,
            "! dmesg | grep -E 'I/O error|blk_update_request|EXT4-fs error|Remounting filesystem read-only' >/dev/console",
            Duration::from_secs(60)
        ),
        0,
        "the guest saw no I/O error"
    );

    let list = f.store_list();
    let names: Vec<_> = list["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| i["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["live"], "only the good capture is an image");
}

/// A guest without a guest agent: a live capture is refused before
/// anything happens; a crash-consistent one captures it without stopping
/// it.
#[tokio::test(flavor = "multi_thread")]
async fn guest_without_agent_is_refused_live_and_captured_crash_consistent() {
    let f = Fixture::new();
    let disk = f.disk_in_pool_a(&f.guest.disk, "n-vda.raw");
    let (d, name, log) = f.boot_guest("n", &[(&disk, "raw")]);
    let mut client = f.client().await;
    let err = client
        .capture(live_req(&name, "live", pb::CaptureMode::Live, 0))
        .await
        .expect_err("no agent");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("crash-consistent"), "{err}");
    let done = capture(
        &mut client,
        live_req(&name, "crash", pb::CaptureMode::CrashConsistent, 0),
    )
    .await;
    assert_succeeded(&done);
    let r = done.capture.expect("result");
    assert_eq!(r.mode, pb::CaptureMode::CrashConsistent as i32);
    assert_eq!((r.downtime_seconds, r.freeze_seconds), (0.0, 0.0));
    assert_eq!(d.state(), "running");
    let console = std::fs::read_to_string(&log).expect("log");
    assert!(
        !console.contains("IMPRINT-POWEROFF") && !console.contains("IMPRINT-BOOT count=2"),
        "never went down"
    );
    let list = f.store_list();
    assert_eq!(list["images"].as_array().map(Vec::len), Some(1), "{list}");
}
