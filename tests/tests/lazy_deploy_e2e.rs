//! Lazy deploys on a real libvirtd and QEMU: the guest runs before its
//! volume is written, reading from the agent's NBD export of the stored
//! image; the fill completes while it runs; the volume ends complete and
//! independent of the store (no backing, export gone) and holds the
//! image's bytes. A damaged chunk fails the fill naming it, and nothing
//! of the deploy stays.

use std::time::Duration;

use imprint_proto::v1 as pb;
use imprint_tests::*;

const BOOT: Duration = Duration::from_secs(180);
/// A lazy deploy's first milestone.
const RUNNING: &str = "guest running; filling volumes";

/// The image of a 1 GiB disk: the busybox guest, then 768 MiB of random
/// bytes from 128 MiB on (which the guest never touches).
async fn slow_image(f: &Fixture, suffix: &str) -> (String, std::path::PathBuf) {
    let disk = f.slow_disk_in_pool_a(&format!("{suffix}-vda.raw"));
    (f.capture_disk(suffix, &disk).await, disk)
}

fn lazy_request(image_id: &str, guest: &str, format: pb::DiskFormat) -> pb::DeployRequest {
    pb::DeployRequest {
        keep_identity: true,
        operation_id: uuid::Uuid::new_v4().to_string(),
        image_id: image_id.into(),
        guest_name: guest.into(),
        disk_format: format as i32,
        start: true,
        lazy: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lazy_deploy_runs_before_its_volume_is_written_and_ends_complete() {
    // The fill is capped (830 MiB at 24 MiB/s: ~35 s) so that the guest
    // boots while it runs, whatever the machine's speed.
    let f = Fixture::with_agent_args(&["--lazy-fill-mib-s", "24"]);
    let (image_id, source) = slow_image(&f, "src").await;
    let mut client = f.client().await;
    let guest = format!("imp-{}-lazy", f.tag);
    let _dom = Domain::adopt(&guest);
    let op = client
        .deploy(lazy_request(&image_id, &guest, pb::DiskFormat::Raw))
        .await
        .expect("lazy deploy accepted")
        .into_inner();

    // Milestone one: the guest runs while the volume is still being
    // filled (its live XML still names the export as the backing).
    let running = phase_reached(&mut client, &op.operation_id, RUNNING).await;
    assert!(running.bytes_done < running.bytes_total, "{running:?}");
    assert_eq!(virsh(&["domstate", &guest]).trim(), "running");
    let live = virsh(&["dumpxml", &guest]);
    assert!(live.contains("protocol='nbd'"), "{live}");
    let log = f.consoles.join(format!("{guest}.log"));
    wait_for(&log, "IMPRINT-READY", 1, BOOT);
    let booted = operation(&mut client, &op.operation_id).await;
    assert_eq!(
        booted.state,
        pb::OperationState::Running as i32,
        "the guest booted before its volume was complete: {booted:?}"
    );
    assert!(booted.bytes_done < booted.bytes_total, "{booted:?}");

    // Milestone two: the operation succeeds once the volume is complete.
    let done = watch(&mut client, &op.operation_id).await;
    assert_succeeded(&done);
    let d = done.deploy.expect("deploy result");
    let live = virsh(&["dumpxml", &guest]);
    assert!(!live.contains("protocol='nbd'"), "no backing left:\n{live}");
    let volume = &d.volumes[0];
    assert!(volume.ends_with(".raw"), "{volume}");
    assert!(
        live.contains(volume.as_str()),
        "runs on its volume:\n{live}"
    );
    let mut left: Vec<String> = std::fs::read_dir(&f.pool_b.dir)
        .expect("pool")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&guest))
        .collect();
    left.sort();
    assert_eq!(
        left,
        [format!("{guest}-cidata.img"), format!("{guest}-vda.raw")],
        "the overlay the guest started on is gone"
    );
    assert!(
        !exports_of(&op.operation_id),
        "the export is closed and its socket gone"
    );

    let inactive = virsh(&["dumpxml", "--inactive", &guest]);
    assert!(
        !inactive.contains("protocol='nbd'"),
        "the next boot needs no export either:\n{inactive}"
    );
    holds_the_image(&f, &guest, volume, &source);
}

/// Uncapped, a raw volume is written by the agent itself (as a full
/// deploy writes it) while the guest boots on the export, then QEMU copies
/// only what the guest wrote meanwhile (a shallow copy) and keeps the
/// volume in step until the pivot. What the guest wrote survives: its
/// boot counter, read at the next boot from the volume alone.
#[tokio::test(flavor = "multi_thread")]
async fn an_uncapped_raw_fill_keeps_what_the_guest_wrote_while_it_ran() {
    let f = Fixture::new();
    let (image_id, source) = slow_image(&f, "pre").await;
    let mut client = f.client().await;
    let guest = format!("imp-{}-pre", f.tag);
    let dom = Domain::adopt(&guest);
    let op = client
        .deploy(lazy_request(&image_id, &guest, pb::DiskFormat::Raw))
        .await
        .expect("lazy deploy accepted")
        .into_inner();
    let log = f.consoles.join(format!("{guest}.log"));
    let first = wait_for(&log, "IMPRINT-BOOT count=", 1, BOOT);
    let count: u32 = last_value(&first, "IMPRINT-BOOT count=")
        .expect("count")
        .parse()
        .expect("a number");
    wait_for(&log, "IMPRINT-READY", 1, BOOT);
    let done = watch(&mut client, &op.operation_id).await;
    assert_succeeded(&done);
    let volume = done.deploy.expect("deploy result").volumes[0].clone();
    let live = virsh(&["dumpxml", &guest]);
    assert!(!live.contains("protocol='nbd'"), "no backing left:\n{live}");

    // The next boot reads the counter the first one wrote.
    virsh(&["destroy", &guest]);
    dom.start();
    wait_for(&log, &format!("IMPRINT-BOOT count={}", count + 1), 1, BOOT);
    holds_the_image(&f, &guest, &volume, &source);
}

/// The guest never writes past 128 MiB: there its volume holds exactly
/// the source disk's bytes (checked with the guest off).
fn holds_the_image(f: &Fixture, guest: &str, volume: &str, source: &std::path::Path) {
    virsh(&["destroy", guest]);
    let raw = f.wd.path().join(format!("{guest}.raw"));
    run(
        "qemu-img",
        &["convert", "-O", "raw", volume, raw.to_str().expect("utf8")],
    );
    let offset = (128u64 << 20).to_string();
    let out = std::process::Command::new("cmp")
        .args(["-i", &format!("{offset}:{offset}")])
        .arg(&raw)
        .arg(source)
        .output()
        .expect("cmp");
    assert!(
        out.status.success(),
        "the filled volume differs from the source: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The agent is stopped (SIGTERM, an upgrade) and later dies (SIGKILL)
/// in the middle of a lazy fill: stopping neither undoes the deploy nor
/// waits for the fill; the guest runs on (QEMU waits for its export to
/// come back); each new agent serves the export again from its journal
/// and goes on with the fill under the same operation; the guest never
/// saw a failed read (it would have been stopped: the disk's read error
/// policy is `stop`).
#[tokio::test(flavor = "multi_thread")]
async fn agent_stopped_or_killed_during_a_lazy_fill_serves_again_and_finishes_it() {
    let mut f = Fixture::with_agent_args(&["--lazy-fill-mib-s", "24"]);
    let (image_id, source) = slow_image(&f, "kill").await;
    let mut client = f.client().await;
    let guest = format!("imp-{}-killed", f.tag);
    let _dom = Domain::adopt(&guest);
    let op = client
        .deploy(lazy_request(&image_id, &guest, pb::DiskFormat::Qcow2))
        .await
        .expect("lazy deploy accepted")
        .into_inner();
    // Into the fill (the cap leaves ~35 s of it).
    let first = operation_until(&mut client, &op.operation_id, "32 MiB filled", |o| {
        o.phase == RUNNING && o.bytes_done >= 32 << 20
    })
    .await;
    let stopped = f.agent.terminate();
    assert!(stopped.success(), "{stopped:?}");
    assert_eq!(virsh(&["domstate", &guest]).trim(), "running");
    assert_eq!(
        f.journal_entries().len(),
        1,
        "the journal keeps the fill for the next start"
    );
    f.restart_agent();
    let mut client = f.client().await;
    let before = operation_until(&mut client, &op.operation_id, "32 MiB more", |o| {
        o.phase == RUNNING && o.bytes_done >= first.bytes_done + (32 << 20)
    })
    .await;
    f.agent.kill();
    assert_eq!(virsh(&["domstate", &guest]).trim(), "running");
    f.restart_agent();

    // The new agent knows the operation from its first answer on.
    let mut client = f.client().await;
    let resumed = operation(&mut client, &op.operation_id).await;
    assert_eq!(
        resumed.state,
        pb::OperationState::Running as i32,
        "{resumed:?}"
    );
    assert_eq!(resumed.phase, RUNNING, "{resumed:?}");
    let done = watch(&mut client, &op.operation_id).await;
    assert_succeeded(&done);
    assert!(done.bytes_done > before.bytes_done, "{done:?}");
    let d = done.deploy.expect("deploy result");
    assert_eq!(d.guest_name, guest);
    assert_eq!(
        virsh(&["domstate", "--reason", &guest]).trim(),
        "running (booted)",
        "never stopped on a failed read"
    );
    let errors = virsh(&["domblkerror", &guest]);
    assert!(errors.contains("No errors found"), "{errors}");
    let live = virsh(&["dumpxml", &guest]);
    assert!(!live.contains("protocol='nbd'"), "no backing left:\n{live}");
    assert!(!exports_of(&op.operation_id), "export closed");
    assert_eq!(f.journal_entries().len(), 0, "journal entry removed");
    holds_the_image(&f, &guest, &d.volumes[0], &source);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_chunk_fails_the_fill_naming_it_and_nothing_stays() {
    let f = Fixture::new();
    let (image_id, _) = slow_image(&f, "dmg").await;
    // Damage one chunk of the random region (never read at boot): the
    // fill reads it.
    let chunks = f.wd.path().join("store").join("chunks");
    let mut files = Vec::new();
    let mut stack = vec![chunks];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("chunks").flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    files.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    // Random chunks do not compress: the largest files are theirs.
    let victim = files.last().expect("a chunk").clone();
    let mut bytes = std::fs::read(&victim).expect("read chunk");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&victim, bytes).expect("damage chunk");

    let mut client = f.client().await;
    let guest = format!("imp-{}-dmg", f.tag);
    let _dom = Domain::adopt(&guest);
    let op = client
        .deploy(lazy_request(&image_id, &guest, pb::DiskFormat::Qcow2))
        .await
        .expect("accepted")
        .into_inner();
    let done = watch(&mut client, &op.operation_id).await;
    assert_eq!(done.state, pb::OperationState::Failed as i32, "{done:?}");
    assert_eq!(
        done.error_code,
        tonic::Code::DataLoss as i32,
        "{}",
        done.error
    );
    assert!(
        done.error.contains("chunk"),
        "names the chunk: {}",
        done.error
    );
    assert!(
        !virsh_quiet_ok(&["dominfo", &guest]),
        "the half-made guest is gone"
    );
    assert!(!exports_of(&op.operation_id), "no export stays");
    let left: Vec<_> = std::fs::read_dir(&f.pool_b.dir)
        .expect("pool")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "no volume stays: {left:?}");
}

/// Whether an export socket of operation `op` is in the agent's NBD
/// directory (the default: QEMU must be able to reach it).
fn exports_of(op: &str) -> bool {
    std::fs::read_dir("/var/lib/imprint-agent/nbd")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(op))
        })
        .unwrap_or(false)
}

/// Whether `virsh ARGS` succeeds.
fn virsh_quiet_ok(args: &[&str]) -> bool {
    std::process::Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}
