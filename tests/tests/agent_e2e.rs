//! The agent on a real libvirtd with real QEMU guests (TCG here, KVM where
//! hardware virtualisation works). Guests are the busybox test guest built
//! by `tests/guests/build-busybox-guest.sh`; their serial consoles prove
//! what happened inside them.

use std::time::Duration;

use imprint_proto::v1 as pb;
use imprint_tests::*;

const BOOT: Duration = Duration::from_secs(120);

fn capture_req(guest: &str, timeout: u32, force: bool) -> pb::CaptureRequest {
    pb::CaptureRequest {
        operation_id: uuid::Uuid::new_v4().to_string(),
        guest: guest.into(),
        image_name: format!("{guest}-image"),
        shutdown_timeout_seconds: timeout,
        allow_force_off: force,
        ..Default::default()
    }
}

/// Capture A (it must go down, be read, come back up), deploy it as B with a
/// static address and a bigger disk in another pool, and read B's console.
#[tokio::test(flavor = "multi_thread")]
async fn capture_running_guest_and_deploy_copy_with_static_ip() {
    let f = Fixture::new();
    let disk = f.disk_in_pool_a(&f.guest.disk, "a-vda.raw");
    let (a, name_a, log_a) = f.boot_guest("a", &[(&disk, "raw")]);
    let log = std::fs::read_to_string(&log_a).expect("log");
    let marker_a = last_value(&log, "IMPRINT-MARKER").expect("guest A prints its marker");
    let mut client = f.client().await;

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

    let req = capture_req(&name_a, 90, false);
    let op = client
        .capture(req.clone())
        .await
        .expect("capture")
        .into_inner();
    // A retried call with the same id does not start a second capture.
    let again = client.capture(req).await.expect("retry").into_inner();
    assert_eq!(again.operation_id, op.operation_id);
    let done = watch(&mut client, &op.operation_id).await;
    assert_succeeded(&done);
    let r = done.capture.expect("capture result");
    assert_eq!(r.final_power_state, pb::PowerState::Running as i32);
    assert!(
        r.shutdown_seconds > 0.0 && r.read_seconds > 0.0 && r.boot_seconds > 0.0,
        "{r:?}"
    );
    // The disks were read from a point-in-time view after A ran again:
    // the read is not in the downtime.
    assert!(r.point_in_time, "{r:?}");
    assert!(
        (r.downtime_seconds - (r.shutdown_seconds + r.boot_seconds)).abs() < 1e-6,
        "{r:?}"
    );
    assert_eq!(r.bytes_total, 64 << 20);
    assert!(r.zero_bytes_skipped > 0, "{r:?}");
    eprintln!(
        "downtime {:.1}s: shutdown {:.1}s + start {:.1}s; read {:.1}s while it ran",
        r.downtime_seconds, r.shutdown_seconds, r.boot_seconds, r.read_seconds
    );
    let log = wait_for(&log_a, "IMPRINT-READY", 2, BOOT);
    assert!(
        log.contains("IMPRINT-POWEROFF"),
        "A was shut down through ACPI"
    );
    assert_eq!(a.state(), "running");
    assert_eq!(last_value(&log, "IMPRINT-BOOT").as_deref(), Some("count=2"));

    let name_b = format!("imp-{}-b", f.tag);
    let _b = Domain::adopt(&name_b);
    // The busybox guest's disk holds no operating system: it cannot be
    // given a fresh identity (the default), and the failed deploy leaves
    // nothing (the same name deploys below).
    let op = client
        .deploy(pb::DeployRequest {
            image_id: r.image_id.clone(),
            guest_name: name_b.clone(),
            start: true,
            ..Default::default()
        })
        .await
        .expect("deploy accepted")
        .into_inner();
    let refused = watch(&mut client, &op.operation_id).await;
    assert_eq!(
        refused.state,
        pb::OperationState::Failed as i32,
        "{refused:?}"
    );
    assert_eq!(
        refused.error_code,
        tonic::Code::FailedPrecondition as i32,
        "{}",
        refused.error
    );
    assert!(
        refused.error.contains("no operating system") && refused.error.contains("--keep-identity"),
        "{}",
        refused.error
    );
    let left: Vec<String> = std::fs::read_dir(&f.pool_b.dir)
        .expect("pool")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&name_b))
        .collect();
    assert!(left.is_empty(), "no volume left: {left:?}");
    let done = deploy(
        &mut client,
        pb::DeployRequest {
            keep_identity: true,
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
        },
    )
    .await;
    assert_succeeded(&done);
    let d = done.deploy.expect("deploy result");
    assert!(d.started);
    assert!(
        d.volumes
            .iter()
            .all(|v| v.starts_with(f.pool_b.dir.to_str().expect("utf8"))),
        "{:?}",
        d.volumes
    );
    let log_b = f.consoles.join(format!("{name_b}.log"));
    let log = wait_for(&log_b, "IMPRINT-READY", 1, BOOT);
    assert_eq!(
        last_value(&log, "IMPRINT-MARKER"),
        Some(marker_a),
        "B has A's data"
    );
    // A's disk was captured after one boot; B's boot is the second. (A's
    // own second boot wrote count=2 while its disk was read: the image
    // holds the point in time before it.)
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
    let sectors = format!("IMPRINT-DISK vda sectors={}", (128u64 << 20) / 512);
    assert!(
        log.lines().any(|l| l.trim() == sectors),
        "disk resized:\n{log}"
    );
    let nic = log
        .lines()
        .find(|l| l.contains("IMPRINT-NIC"))
        .unwrap_or_default()
        .to_string();
    assert!(
        nic.contains(&d.mac_addresses[0]),
        "new MAC {} in {nic:?}",
        d.mac_addresses[0]
    );

    // Bad input is refused by the call itself and leaves nothing behind: an
    // invalid name, an invalid address, a name that is taken.
    let err = client
        .deploy(pb::DeployRequest {
            keep_identity: true,
            image_id: r.image_id.clone(),
            guest_name: "bad name!".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad name");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .deploy(pb::DeployRequest {
            keep_identity: true,
            image_id: r.image_id.clone(),
            guest_name: format!("imp-{}-c", f.tag),
            network: Some(pb::NetworkConfig {
                hostname: String::new(),
                interfaces: vec![pb::InterfaceConfig {
                    addresses: vec!["192.0.2.300/24".into()],
                    ..Default::default()
                }],
            }),
            ..Default::default()
        })
        .await
        .expect_err("bad address");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let err = client
        .deploy(pb::DeployRequest {
            keep_identity: true,
            image_id: r.image_id.clone(),
            guest_name: name_b.clone(),
            ..Default::default()
        })
        .await
        .expect_err("taken name");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    let vols = virsh(&["vol-list", &f.pool_b.name]);
    assert_eq!(
        vols.lines().filter(|l| l.contains("/pool-b/")).count(),
        2,
        "only B's disk and seed: {vols}"
    );
}

/// A guest that ignores ACPI: without force the capture fails and the guest
/// keeps running; with force it is powered off, captured and started again.
#[tokio::test(flavor = "multi_thread")]
async fn guest_ignoring_acpi() {
    let f = Fixture::new();
    let disk = f.disk_in_pool_a(&f.guest.disk_ignore_acpi, "deaf-vda.raw");
    let (d, name, log) = f.boot_guest("deaf", &[(&disk, "raw")]);
    let mut client = f.client().await;

    let done = capture(&mut client, capture_req(&name, 12, false)).await;
    assert_eq!(done.state, pb::OperationState::Failed as i32);
    assert_eq!(
        done.error_code,
        tonic::Code::DeadlineExceeded as i32,
        "{}",
        done.error
    );
    assert!(done.error.contains("left running"), "{}", done.error);
    assert_eq!(d.state(), "running");
    assert_eq!(
        std::fs::read_to_string(&log)
            .expect("log")
            .matches("IMPRINT-READY")
            .count(),
        1,
        "never rebooted"
    );

    let done = capture(&mut client, capture_req(&name, 8, true)).await;
    assert_succeeded(&done);
    let r = done.capture.expect("result");
    assert!(
        r.shutdown_seconds >= 8.0,
        "waited for the timeout first: {r:?}"
    );
    assert_eq!(d.state(), "running");
    wait_for(&log, "IMPRINT-READY", 2, BOOT);
}

/// A qcow2 disk on a backing file is read as the guest sees it, a second
/// (scratch) disk can be left out, and deploy writes qcow2 volumes.
#[tokio::test(flavor = "multi_thread")]
async fn qcow2_overlay_and_excluded_scratch_disk() {
    let f = Fixture::new();
    let base = f.wd.copy_in(&f.guest.disk, "base.raw");
    let overlay = f.pool_a.dir.join("q-vda.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            base.to_str().expect("utf8"),
            "-F",
            "raw",
            overlay.to_str().expect("utf8"),
        ],
    );
    let scratch = f.pool_a.dir.join("q-vdb.raw");
    run("truncate", &["-s", "32M", scratch.to_str().expect("utf8")]);
    run("chmod", &["0644", base.to_str().expect("utf8")]);
    virsh(&["pool-refresh", &f.pool_a.name]);
    let (_d, name, log) = f.boot_guest("q", &[(&overlay, "qcow2"), (&scratch, "raw")]);
    let text = std::fs::read_to_string(&log).expect("log");
    let marker = last_value(&text, "IMPRINT-MARKER").expect("marker");
    assert!(
        text.contains("IMPRINT-DISK vdb"),
        "guest sees its scratch disk:\n{text}"
    );
    let mut client = f.client().await;

    let mut req = capture_req(&name, 60, false);
    req.exclude_disks = vec!["vdb".into()];
    let done = capture(&mut client, req).await;
    assert_succeeded(&done);
    let r = done.capture.expect("result");
    assert_eq!(r.bytes_total, 64 << 20, "only the qcow2 disk: {r:?}");

    let name_b = format!("imp-{}-qb", f.tag);
    let _b = Domain::adopt(&name_b);
    let done = deploy(
        &mut client,
        pb::DeployRequest {
            keep_identity: true,
            image_id: r.image_id,
            guest_name: name_b.clone(),
            disk_format: pb::DiskFormat::Qcow2 as i32,
            disk_sizes_bytes: vec![96 << 20],
            start: true,
            ..Default::default()
        },
    )
    .await;
    assert_succeeded(&done);
    // The new volume is a qcow2 that qemu-img accepts.
    let vol = done.deploy.expect("result").volumes[0].clone();
    assert!(vol.ends_with(".qcow2"), "{vol}");
    let info = run("qemu-img", &["info", "--output=json", "-U", &vol]);
    assert!(info.contains("\"format\": \"qcow2\""), "{info}");
    assert!(
        info.contains(&format!("\"virtual-size\": {}", 96u64 << 20)),
        "{info}"
    );
    let log = wait_for(
        &f.consoles.join(format!("{name_b}.log")),
        "IMPRINT-READY",
        1,
        BOOT,
    );
    assert_eq!(
        last_value(&log, "IMPRINT-MARKER"),
        Some(marker),
        "data from the overlay's backing file"
    );
    assert!(
        !log.contains("IMPRINT-DISK vdb sectors=65536"),
        "the scratch disk was left out:\n{log}"
    );
    let sectors = format!("IMPRINT-DISK vda sectors={}", (96u64 << 20) / 512);
    assert!(log.contains(&sectors), "{log}");
}

/// The agent dies (SIGKILL) while it reads a running guest's disks from
/// the point-in-time view: the guest keeps running, the restarted agent
/// ends the backup job and removes its scratch from the journal, no image
/// is left, and GC frees the dead capture's chunks at once.
#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_during_the_background_read_leaves_no_job_or_scratch() {
    let wd = Workdir::new("imprint-e2e-");
    let backup_dir = wd.path().join("backup");
    let mut f = Fixture::in_workdir(wd, &["--backup-dir", backup_dir.to_str().expect("utf8")]);
    // A read long enough to cause a fault in the middle of it.
    let disk = f.slow_disk_in_pool_a("k-vda.raw");
    let (d, name, log) = f.boot_guest("k", &[(&disk, "raw")]);
    let mut client = f.client().await;
    let req = capture_req(&name, 60, false);
    let op = client
        .capture(req.clone())
        .await
        .expect("capture")
        .into_inner();
    // The guest runs again while its disks are read from the backup job.
    phase_reached(&mut client, &op.operation_id, "reading disks").await;
    assert_eq!(d.state(), "running", "running while its disks are read");
    let job_dir = backup_dir.join(&op.operation_id);
    assert!(job_dir.exists(), "the job's socket and scratch files");
    // Killed once the read has stored chunks (what GC must free below).
    let chunks = f.wd.path().join("store").join("chunks");
    wait_until("the read stores a chunk", BOOT, || count_files(&chunks) > 0).await;
    f.agent.kill();
    assert_eq!(
        d.state(),
        "running",
        "the killed agent leaves the guest running"
    );
    f.restart_agent();
    // Recovery runs before the new agent serves: job ended, scratch gone.
    assert!(!job_dir.exists(), "scratch and socket removed");
    let job = virsh(&["domjobinfo", &name]);
    assert!(job.contains("None"), "no backup job left: {job}");
    assert_eq!(d.state(), "running");
    wait_for(&log, "IMPRINT-READY", 2, BOOT);
    let mut client = f.client().await;
    // The same request again (as a daemon re-sends one it never saw
    // acknowledged) is refused: recovery undid it, it does not run afresh.
    let again = client.capture(req).await.expect_err("undone");
    assert_eq!(again.code(), tonic::Code::Aborted, "{again}");
    assert!(
        again.message().contains("interrupted by a restart"),
        "{again}"
    );
    let ops = client
        .list_operations(pb::ListOperationsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(
        ops.operations.is_empty(),
        "a new agent has no running operations"
    );
    // No image was committed by the dead capture.
    let list = f.store_list();
    assert_eq!(list["images"].as_array().map(Vec::len), Some(0), "{list}");
    // The restarted agent retired the dead capture's writer registration:
    // GC with no grace frees its orphan chunks now, not 15 minutes later.
    let gc = |dry: bool| {
        let mut c = std::process::Command::new(binary("imprint"));
        c.args(["-o", "json", "store", "gc", "--grace", "0", "--store"])
            .arg(f.wd.path().join("store"));
        if dry {
            c.arg("--dry-run");
        }
        let out = c.output().expect("imprint");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let first = gc(false);
    assert_eq!(first["live_writers"], 0, "{first}");
    assert!(
        first["chunks_removed"].as_u64().expect("removed") > 0,
        "{first}"
    );
    let again = gc(true);
    assert_eq!(again["chunks_removed"], 0, "{again}");
    assert_eq!(again["chunks_kept_recent"], 0, "{again}");
}

/// The agent dies (SIGKILL) while it seals a running guest's capture
/// (virt-sysprep on the overlays over the point-in-time view): the guest
/// keeps running, and the restarted agent removes the seal's directory
/// and ends the backup job from the journal; no image is left. (Its
/// qemu-nbd servers, which run only during the read, are stopped the same
/// way: agent/tests/work.rs.)
#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_while_sealing_leaves_no_overlay_or_job() {
    let wd = Workdir::new("imprint-e2e-");
    let backup_dir = wd.path().join("backup");
    let mut f = Fixture::in_workdir(wd, &["--backup-dir", backup_dir.to_str().expect("utf8")]);
    let disk = f.disk_in_pool_a(&f.guest.disk, "s-vda.raw");
    let (d, name, _log) = f.boot_guest("s", &[(&disk, "raw")]);
    let mut client = f.client().await;
    let op = client
        .capture(pb::CaptureRequest {
            guest: name.clone(),
            image_name: "sealed".into(),
            mode: pb::CaptureMode::CrashConsistent as i32,
            seal: true,
            ..Default::default()
        })
        .await
        .expect("capture")
        .into_inner();
    phase_reached(&mut client, &op.operation_id, "sealing the image").await;
    let seal_dir = backup_dir.join(format!("{}-seal", op.operation_id));
    let agent_pid = i32::try_from(f.agent.child.id()).expect("pid");
    let sysprep = || {
        processes_mentioning(&seal_dir)
            .into_iter()
            .find(|p| p.comm == "virt-sysprep" && p.ppid == agent_pid)
    };
    wait_until("virt-sysprep works on the overlay", BOOT, || {
        sysprep().is_some()
    })
    .await;
    let sysprep = sysprep().expect("virt-sysprep").pid;
    // Stopped, it could not end on its own (nor fail when recovery takes
    // the view from under it); only a signal the kernel sends ends it.
    let sysprep_pid = nix::unistd::Pid::from_raw(sysprep);
    nix::sys::signal::kill(sysprep_pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let reap = KillOnDrop(sysprep_pid);
    f.agent.kill();
    // virt-sysprep dies with the agent (its parent-death signal, SIGKILL),
    // before any recovery.
    wait_until("virt-sysprep dies with the agent", BOOT, || {
        !processes_mentioning(&seal_dir)
            .iter()
            .any(|p| p.pid == sysprep)
    })
    .await;
    // Dead: its pid is no longer one to signal.
    std::mem::forget(reap);
    // Killed mid-seal: what it made is still there for recovery to remove.
    assert!(seal_dir.exists(), "the agent died before it ended the seal");
    assert_eq!(d.state(), "running");
    f.restart_agent();
    // Recovery runs before the new agent serves.
    assert!(!seal_dir.exists(), "the seal's overlays removed");
    assert!(
        !backup_dir.join(&op.operation_id).exists(),
        "the view's scratch removed"
    );
    let job = virsh(&["domjobinfo", &name]);
    assert!(job.contains("None"), "no backup job left: {job}");
    assert_eq!(d.state(), "running");
    // libguestfs's recovery process (a fork of virt-sysprep) stops the
    // appliance's QEMU at its next check, every 2 s.
    wait_until("no process works on the seal's overlays", BOOT, || {
        processes_mentioning(&seal_dir).is_empty()
    })
    .await;
    let list = f.store_list();
    assert_eq!(list["images"].as_array().map(Vec::len), Some(0), "{list}");
}

/// SIGKILL for a process this test stopped, should it fail before the
/// process ended.
struct KillOnDrop(nix::unistd::Pid);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
    }
}

/// A process, as /proc shows it.
struct Process {
    pid: i32,
    ppid: i32,
    comm: String,
}

/// The processes whose command line names a path under `dir` (a dead one
/// not yet reaped has none).
fn processes_mentioning(dir: &std::path::Path) -> Vec<Process> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            if !String::from_utf8_lossy(&cmdline).contains(&needle) {
                return None;
            }
            // "pid (comm) state ppid ...": comm may hold spaces.
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some(Process { pid, ppid, comm })
        })
        .collect()
}

/// The guest's user shuts it down while its disks are read from the
/// point-in-time view: the job ends with the guest, the capture fails with
/// a reason and keeps no image, and the guest stays off (its power state
/// is the user's once it ran again).
#[tokio::test(flavor = "multi_thread")]
async fn guest_shut_down_by_its_user_during_the_read() {
    let f = Fixture::new();
    // A read long enough to cause a fault in the middle of it.
    let disk = f.slow_disk_in_pool_a("u-vda.raw");
    let (d, name, _log) = f.boot_guest("u", &[(&disk, "raw")]);
    let mut client = f.client().await;
    let op = client
        .capture(capture_req(&name, 60, false))
        .await
        .expect("capture")
        .into_inner();
    phase_reached(&mut client, &op.operation_id, "reading disks").await;
    // The guest runs again; its user powers it off at once, while 768 MiB
    // are still to be read: the view goes with the guest's QEMU.
    virsh(&["destroy", &name]);
    let done = watch(&mut client, &op.operation_id).await;
    assert_eq!(done.state, pb::OperationState::Failed as i32, "{done:?}");
    assert!(!done.error.is_empty());
    let list = f.store_list();
    assert_eq!(
        list["images"].as_array().map(Vec::len),
        Some(0),
        "no torn image: {list}"
    );
    assert_eq!(d.state(), "shut off", "the user's power state stands");
    // A job cannot outlive its domain's QEMU; its directory went too.
    assert!(
        !std::path::Path::new("/var/lib/imprint-agent/backup")
            .join(&op.operation_id)
            .exists(),
        "scratch and socket removed"
    );
}

/// The guest is reset (rebooted) by its user while its disks are read from
/// the point-in-time view: a reset keeps the guest's QEMU and with it the
/// backup job, so the capture completes, with the bytes of its point in
/// time (the boot counter before the reset's boot).
#[tokio::test(flavor = "multi_thread")]
async fn guest_reset_by_its_user_during_the_read() {
    let f = Fixture::new();
    let disk = f.slow_disk_in_pool_a("r-vda.raw");
    let (d, name, log) = f.boot_guest("r", &[(&disk, "raw")]);
    let mut client = f.client().await;
    let op = client
        .capture(capture_req(&name, 60, false))
        .await
        .expect("capture")
        .into_inner();
    phase_reached(&mut client, &op.operation_id, "reading disks").await;
    virsh(&["reset", &name]);
    let during = operation(&mut client, &op.operation_id).await;
    assert_eq!(
        during.state,
        pb::OperationState::Running as i32,
        "the reset came while 768 MiB were still to be read: {during:?}"
    );
    let done = watch(&mut client, &op.operation_id).await;
    assert_succeeded(&done);
    let r = done.capture.expect("result");
    assert!(r.point_in_time, "{r:?}");
    wait_for(&log, "IMPRINT-READY", 2, BOOT);
    assert_eq!(d.state(), "running");
    // Deploy it: the clone's boot is the second of the image's disk.
    let clone = format!("imp-{}-rcopy", f.tag);
    let _c = Domain::adopt(&clone);
    let op = client
        .deploy(pb::DeployRequest {
            keep_identity: true,
            operation_id: uuid::Uuid::new_v4().to_string(),
            image_id: r.image_id,
            guest_name: clone.clone(),
            start: true,
            ..Default::default()
        })
        .await
        .expect("deploy")
        .into_inner();
    assert_succeeded(&watch(&mut client, &op.operation_id).await);
    let clone_log = wait_for(
        &f.consoles.join(format!("{clone}.log")),
        "IMPRINT-READY",
        1,
        BOOT,
    );
    assert_eq!(
        last_value(&clone_log, "IMPRINT-BOOT").as_deref(),
        Some("count=2"),
        "the image holds the point in time, not the reset's boot"
    );
}

/// Files under `dir`, at any depth (0 when it does not exist).
fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .map(|e| {
                if e.path().is_dir() {
                    count_files(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}
