//! Capture and deploy against the fake hypervisor: the power-state and
//! clean-up rules, without libvirt. The real thing is proven in `tests/`.

use std::{
    collections::HashMap,
    fs,
    path::Path,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use imprint_agent::{
    error::Kind,
    hypervisor::{
        GuestRef, Hypervisor, PowerState,
        fake::{FakeGuest, FakeHypervisor},
    },
    journal::{Entry, Filling, FillingDisk, Journal},
    lazy::resume,
    work::{
        Busy, CaptureMode, CaptureSpec, Ctx, DeploySpec, InterfaceSpec, capture, check_capture,
        delete_guest, deploy, recover,
    },
};
use imprint_store::{Store, StoreConfig};

fn guest_xml(name: &str, disk: &Path) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><uuid>{name}-uuid</uuid><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type></os><features><acpi/></features><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <interface type='udp'><mac address='52:54:00:11:22:33'/><source address='127.0.0.1' port='5000'><local address='127.0.0.1' port='5001'/></source><model type='virtio'/></interface>\
         </devices></domain>",
        disk.display()
    )
}

struct Env {
    _tmp: tempfile::TempDir,
    hv: Arc<FakeHypervisor>,
    ctx: Ctx,
    store: Store,
    journal: Journal,
}

fn env(obeys_acpi: bool, state: PowerState) -> Env {
    let tmp = tempfile::tempdir().expect("tmp");
    let disk = tmp.path().join("a.raw");
    let f = fs::File::create(&disk).expect("disk");
    f.set_len(4 << 20).expect("len");
    std::os::unix::fs::FileExt::write_all_at(&f, b"hello from guest a", 1 << 20).expect("write");
    let pool = tmp.path().join("pool");
    fs::create_dir(&pool).expect("pool");
    let mut guests = HashMap::new();
    guests.insert(
        "a".to_string(),
        FakeGuest {
            obeys_acpi,
            ..FakeGuest::new(
                GuestRef {
                    name: "a".into(),
                    uuid: "a-uuid".into(),
                },
                guest_xml("a", &disk),
                state,
            )
        },
    );
    let hv = Arc::new(FakeHypervisor {
        guests: Mutex::new(guests),
        pools: HashMap::from([("p".to_string(), pool)]),
        ..Default::default()
    });
    let store = Store::open_or_create_dir(&tmp.path().join("store"), false, StoreConfig::default())
        .expect("store");
    let journal = Journal::open(&tmp.path().join("journal")).expect("journal");
    let ctx = Ctx {
        hv: hv.clone(),
        store: store.clone(),
        journal: journal.clone(),
        busy: Busy::default(),
    };
    Env {
        _tmp: tmp,
        hv,
        ctx,
        store,
        journal,
    }
}

fn spec(force: bool) -> CaptureSpec {
    CaptureSpec {
        operation_id: "op-1".into(),
        guest: "a".into(),
        image_name: "img-a".into(),
        exclude_disks: vec![],
        shutdown_timeout: Duration::from_millis(600),
        allow_force_off: force,
        labels: Default::default(),
        image_id: None,
        acpi_resend: Duration::from_millis(200),
        backup_dir: None,
        mode: CaptureMode::Offline,
        seal: None,
    }
}

fn state(e: &Env, name: &str) -> PowerState {
    e.hv.guests.lock().expect("lock")[name].state
}

fn no_report(_: &str, _: u64, _: u64) {}

#[test]
fn running_guest_is_captured_and_started_again() {
    let e = env(true, PowerState::Running);
    let cancel = Arc::new(AtomicBool::new(false));
    let o = capture(&e.ctx, &spec(false), &cancel, &no_report).expect("capture");
    assert_eq!(o.final_state, PowerState::Running);
    assert_eq!(state(&e, "a"), PowerState::Running);
    let m = e.store.manifest(&o.image_id).expect("manifest");
    assert_eq!(m.disks.len(), 1);
    assert_eq!(m.config["vcpus"], 1);
    assert_eq!(m.config["disks"][0]["size_bytes"], 4 << 20);
    assert!(e.journal.list().expect("journal").is_empty());
}

#[test]
fn running_guest_is_read_from_a_point_in_time_view_after_it_runs_again() {
    let e = env(true, PowerState::Running);
    let cancel = Arc::new(AtomicBool::new(false));
    let backup = e._tmp.path().join("backup");
    let phases = Mutex::new(Vec::new());
    let report = |phase: &str, _: u64, _: u64| {
        let mut p = phases.lock().expect("lock");
        if p.last().map(String::as_str) != Some(phase) {
            p.push(phase.to_string());
        }
        // The disks are read while the guest runs again.
        if phase == "reading disks" {
            assert_eq!(
                e.hv.guests.lock().expect("lock")["a"].state,
                PowerState::Running
            );
        }
    };
    let spec = CaptureSpec {
        backup_dir: Some(backup.clone()),
        ..spec(false)
    };
    let o = capture(&e.ctx, &spec, &cancel, &report).expect("capture");
    assert!(o.point_in_time);
    assert_eq!(o.final_state, PowerState::Running);
    assert!(
        (o.downtime_seconds - (o.shutdown_seconds + o.boot_seconds)).abs() < 1e-9,
        "{o:?}"
    );
    assert_eq!(
        phases.lock().expect("lock").as_slice(),
        [
            "inspecting guest",
            "shutting down",
            "taking a point-in-time view",
            "reading disks"
        ]
    );
    let m = e.store.manifest(&o.image_id).expect("manifest");
    assert_eq!(m.config["disks"][0]["size_bytes"], 4 << 20);
    assert!(e.hv.backups.lock().expect("lock").is_empty(), "job ended");
    assert!(!backup.join("op-1").exists(), "its directory removed");
    assert!(e.journal.list().expect("journal").is_empty());
}

fn live_spec(e: &Env, mode: CaptureMode) -> CaptureSpec {
    CaptureSpec {
        backup_dir: Some(e._tmp.path().join("backup")),
        mode,
        ..spec(false)
    }
}

fn guest<T>(e: &Env, f: impl FnOnce(&mut FakeGuest) -> T) -> T {
    f(e.hv
        .guests
        .lock()
        .expect("lock")
        .get_mut("a")
        .expect("guest a"))
}

const LIVE: CaptureMode = CaptureMode::Live {
    freeze_timeout: Duration::from_millis(300),
};

#[test]
fn live_capture_freezes_takes_the_view_thaws_and_never_stops_the_guest() {
    let e = env(true, PowerState::Running);
    guest(&e, |g| g.has_agent = true);
    let cancel = Arc::new(AtomicBool::new(false));
    let phases = Mutex::new(Vec::new());
    let report = |phase: &str, _: u64, _: u64| {
        let mut p = phases.lock().expect("lock");
        if p.last().map(String::as_str) != Some(phase) {
            p.push(phase.to_string());
        }
        if phase == "reading disks" {
            assert!(!guest(&e, |g| g.frozen), "thawed before the read");
        }
    };
    let o = capture(&e.ctx, &live_spec(&e, LIVE), &cancel, &report).expect("capture");
    assert!(o.point_in_time);
    assert_eq!(o.mode, LIVE);
    assert_eq!(o.downtime_seconds, 0.0, "{o:?}");
    assert_eq!(o.shutdown_seconds, 0.0, "{o:?}");
    assert!(o.freeze_seconds > 0.0 && o.freeze_seconds < 0.3, "{o:?}");
    assert_eq!(o.final_state, PowerState::Running);
    guest(&e, |g| {
        assert_eq!(g.acpi_requests, 0, "never asked to shut down");
        assert_eq!(g.freezes, 1);
        assert!(!g.frozen);
    });
    assert_eq!(
        phases.lock().expect("lock").as_slice(),
        ["inspecting guest", "freezing filesystems", "reading disks"]
    );
    assert!(e.hv.backups.lock().expect("lock").is_empty(), "job ended");
    assert!(e.journal.list().expect("journal").is_empty());
}

#[test]
fn live_capture_of_a_guest_without_agent_is_refused_before_anything_happens() {
    let e = env(true, PowerState::Running);
    let err = check_capture(&*e.hv, &e.store, &live_spec(&e, LIVE)).expect_err("no agent");
    assert_eq!(err.kind, Kind::FailedPrecondition, "{err}");
    assert!(err.message.contains("crash-consistent"), "{err}");
    guest(&e, |g| assert_eq!((g.freezes, g.acpi_requests), (0, 0)));
    // Without --backup-dir (offline reads only) a live capture cannot work.
    guest(&e, |g| g.has_agent = true);
    let no_dir = CaptureSpec {
        backup_dir: None,
        ..live_spec(&e, LIVE)
    };
    let err = check_capture(&*e.hv, &e.store, &no_dir).expect_err("offline agent");
    assert_eq!(err.kind, Kind::FailedPrecondition, "{err}");
    // Paused guests are refused in every mode.
    guest(&e, |g| g.state = PowerState::Paused);
    let err = check_capture(&*e.hv, &e.store, &live_spec(&e, LIVE)).expect_err("paused");
    assert_eq!(err.kind, Kind::FailedPrecondition, "{err}");
}

#[test]
fn crash_consistent_capture_needs_no_agent_and_never_freezes() {
    let e = env(true, PowerState::Running);
    let cancel = Arc::new(AtomicBool::new(false));
    let spec = live_spec(&e, CaptureMode::CrashConsistent);
    let o = capture(&e.ctx, &spec, &cancel, &no_report).expect("capture");
    assert_eq!(o.mode, CaptureMode::CrashConsistent);
    assert_eq!((o.downtime_seconds, o.freeze_seconds), (0.0, 0.0));
    guest(&e, |g| assert_eq!((g.freezes, g.acpi_requests), (0, 0)));
    assert_eq!(state(&e, "a"), PowerState::Running);
}

#[test]
fn a_freeze_that_hangs_fails_at_its_bound_and_recovery_thaws() {
    let e = env(true, PowerState::Running);
    guest(&e, |g| {
        g.has_agent = true;
        g.freeze_hangs = true;
    });
    let cancel = Arc::new(AtomicBool::new(false));
    let err = capture(&e.ctx, &live_spec(&e, LIVE), &cancel, &no_report).expect_err("hang");
    assert_eq!(err.kind, Kind::DeadlineExceeded, "{err}");
    assert!(err.message.contains("did not freeze"), "{err}");
    assert!(e.store.list().expect("list").is_empty(), "no image");
    assert!(e.hv.backups.lock().expect("lock").is_empty(), "no job");
    assert_eq!(state(&e, "a"), PowerState::Running);
    guest(&e, |g| assert_eq!(g.acpi_requests, 0));
    // The fake's thaw always gets through: nothing is left to retry.
    assert!(e.journal.list().expect("journal").is_empty());
}

#[test]
fn a_thaw_that_does_not_get_through_is_retried_by_recovery() {
    let e = env(true, PowerState::Running);
    e.journal
        .write(&Entry::Capture {
            operation_id: "op-8".into(),
            guest_name: "a".into(),
            guest_uuid: "a-uuid".into(),
            was_running: false,
            backup_dir: None,
            thaw: true,
            seal_dir: None,
        })
        .expect("journal");
    // Its agent does not answer: the entry stays for the next pass.
    guest(&e, |g| g.frozen = true);
    let r = recover(&*e.hv, &e.journal);
    assert_eq!(
        r[0].1.as_ref().map_err(|e| e.kind),
        Err(Kind::FailedPrecondition)
    );
    assert!(guest(&e, |g| g.frozen));
    assert_eq!(e.journal.list().expect("journal").len(), 1);
    // It answers again: thawed, entry gone.
    guest(&e, |g| g.has_agent = true);
    let r = recover(&*e.hv, &e.journal);
    assert!(r[0].1.is_ok(), "{r:?}");
    assert!(!guest(&e, |g| g.frozen));
    assert!(e.journal.list().expect("journal").is_empty());
    assert_eq!(state(&e, "a"), PowerState::Running, "power state untouched");
}

/// The fake's disks are raw: no checkpoint, a full read that says so; a
/// checkpoint named after the new image already on the guest is refused
/// before anything happens.
#[test]
fn checkpoints_raw_disks_and_a_name_collision() {
    let e = env(true, PowerState::Running);
    let cancel = Arc::new(AtomicBool::new(false));
    let spec = live_spec(&e, CaptureMode::CrashConsistent);
    let o = capture(&e.ctx, &spec, &cancel, &no_report).expect("capture");
    assert!(o.incremental_parent.is_none());
    assert!(
        o.full_read_reason
            .as_deref()
            .is_some_and(|r| r.contains("raw disks")),
        "{o:?}"
    );
    assert!(e.hv.checkpoints.lock().expect("lock").is_empty());
    let id: imprint_store::ImageId = "6f1c2a4e-0b7d-4c1e-9a3b-2d5e8f7a6b10".parse().expect("id");
    e.hv.checkpoints
        .lock()
        .expect("lock")
        .push(format!("imprint-{id}"));
    let taken = CaptureSpec {
        image_id: Some(id),
        ..live_spec(&e, CaptureMode::Offline)
    };
    let err = check_capture(&*e.hv, &e.store, &taken).expect_err("collision");
    assert_eq!(err.kind, Kind::Conflict, "{err}");
    guest(&e, |g| assert_eq!(g.acpi_requests, 0));
}

/// The labels that say how an image was captured (sealed, its checkpoint,
/// its parent) are the agent's: a caller's are refused before anything.
#[test]
fn the_agents_own_labels_are_refused() {
    let e = env(true, PowerState::Running);
    for label in ["imprint.sealed", "imprint.checkpoint", "imprint.parent"] {
        let s = CaptureSpec {
            labels: [(label.to_string(), "x".to_string())].into(),
            ..spec(true)
        };
        let err = check_capture(&*e.hv, &e.store, &s).expect_err(label);
        assert_eq!(err.kind, Kind::InvalidArgument, "{err}");
        assert!(err.to_string().contains(label), "{err}");
    }
    let owner = CaptureSpec {
        labels: [("imprint.owner".to_string(), "alice".to_string())].into(),
        ..spec(true)
    };
    check_capture(&*e.hv, &e.store, &owner).expect("the daemon's owner label");
    guest(&e, |g| assert_eq!(g.acpi_requests, 0));
}

#[test]
fn guest_ignoring_acpi_without_force_is_left_running() {
    let e = env(false, PowerState::Running);
    let cancel = Arc::new(AtomicBool::new(false));
    let err = capture(&e.ctx, &spec(false), &cancel, &no_report).expect_err("timeout");
    assert_eq!(err.kind, Kind::DeadlineExceeded, "{err}");
    assert!(err.message.contains("left running"), "{err}");
    assert_eq!(state(&e, "a"), PowerState::Running);
    assert!(
        e.hv.guests.lock().expect("lock")["a"].acpi_requests >= 2,
        "ACPI request is resent"
    );
    assert!(e.store.list().expect("list").is_empty());
}

#[test]
fn guest_ignoring_acpi_with_force_is_captured() {
    let e = env(false, PowerState::Running);
    let cancel = Arc::new(AtomicBool::new(false));
    let o = capture(&e.ctx, &spec(true), &cancel, &no_report).expect("capture");
    assert_eq!(o.final_state, PowerState::Running);
    assert_eq!(state(&e, "a"), PowerState::Running);
}

#[test]
fn shut_off_guest_stays_off_and_bad_requests_cost_no_downtime() {
    let e = env(true, PowerState::ShutOff);
    let cancel = Arc::new(AtomicBool::new(false));
    let o = capture(&e.ctx, &spec(false), &cancel, &no_report).expect("capture");
    assert_eq!(o.final_state, PowerState::ShutOff);
    assert_eq!(o.shutdown_seconds, 0.0);

    let e = env(true, PowerState::Running);
    let mut s = spec(false);
    s.exclude_disks = vec!["vdz".into()];
    let err = capture(&e.ctx, &s, &cancel, &no_report).expect_err("bad exclude");
    assert_eq!(err.kind, Kind::InvalidArgument);
    s.exclude_disks = vec!["vda".into()];
    let err = capture(&e.ctx, &s, &cancel, &no_report).expect_err("nothing left");
    assert_eq!(err.kind, Kind::InvalidArgument);
    let mut s = spec(false);
    s.guest = "nope".into();
    let err = capture(&e.ctx, &s, &cancel, &no_report).expect_err("unknown");
    assert_eq!(err.kind, Kind::NotFound);
    assert_eq!(
        e.hv.guests.lock().expect("lock")["a"].acpi_requests,
        0,
        "never shut down"
    );
    // The id of an image that exists already is refused up front.
    let first = capture(
        &e.ctx,
        &CaptureSpec {
            image_id: Some("5d1e8f7a-0c1b-4a52-9d3e-6f2a1b0c9d8e".parse().expect("id")),
            ..spec(false)
        },
        &cancel,
        &no_report,
    )
    .expect("capture under a chosen id");
    assert_eq!(
        first.image_id.to_string(),
        "5d1e8f7a-0c1b-4a52-9d3e-6f2a1b0c9d8e"
    );
    let before = e.hv.guests.lock().expect("lock")["a"].acpi_requests;
    let err = capture(
        &e.ctx,
        &CaptureSpec {
            image_id: Some(first.image_id.clone()),
            ..spec(false)
        },
        &cancel,
        &no_report,
    )
    .expect_err("id in use");
    assert_eq!(err.kind, Kind::Conflict, "{err}");
    assert_eq!(
        e.hv.guests.lock().expect("lock")["a"].acpi_requests,
        before,
        "refused before the shutdown"
    );
    assert_eq!(state(&e, "a"), PowerState::Running);
}

#[test]
fn second_capture_of_the_same_guest_is_a_conflict() {
    let e = env(true, PowerState::Running);
    let busy = Busy::default();
    let _held = busy.claim("a-uuid", "guest a").expect("claim");
    let cancel = Arc::new(AtomicBool::new(false));
    let err = capture(
        &Ctx {
            busy: busy.clone(),
            ..e.ctx.clone()
        },
        &spec(false),
        &cancel,
        &no_report,
    )
    .expect_err("busy");
    assert_eq!(err.kind, Kind::Conflict);
}

#[test]
fn cancelled_capture_still_restarts_the_guest() {
    let e = env(true, PowerState::Running);
    let cancel = Arc::new(AtomicBool::new(true));
    let err = capture(&e.ctx, &spec(false), &cancel, &no_report).expect_err("cancelled");
    assert_eq!(err.kind, Kind::Cancelled);
    assert_eq!(state(&e, "a"), PowerState::Running);
    assert!(e.store.list().expect("list").is_empty());
    assert!(e.journal.list().expect("journal").is_empty());
}

#[test]
fn restart_failure_is_reported_and_journal_kept() {
    let e = env(true, PowerState::Running);
    *e.hv.fail_start.lock().expect("lock") = true;
    let cancel = Arc::new(AtomicBool::new(false));
    let err = capture(&e.ctx, &spec(false), &cancel, &no_report).expect_err("no restart");
    assert!(err.message.contains("could not be started again"), "{err}");
    assert!(
        e.store.list().expect("list").is_empty(),
        "no usable image when the guest is left off"
    );
    assert_eq!(
        e.journal.list().expect("journal").len(),
        1,
        "kept for recovery"
    );
    *e.hv.fail_start.lock().expect("lock") = false;
    let r = recover(&*e.hv, &e.journal);
    assert!(r[0].1.is_ok());
    assert_eq!(state(&e, "a"), PowerState::Running);
}

#[test]
fn recovery_restarts_a_guest_left_off_by_a_dead_agent() {
    let e = env(true, PowerState::ShutOff);
    e.journal
        .write(&Entry::Capture {
            operation_id: "op-9".into(),
            guest_name: "a".into(),
            guest_uuid: "a-uuid".into(),
            was_running: true,
            backup_dir: None,
            thaw: false,
            seal_dir: None,
        })
        .expect("journal");
    let r = recover(&*e.hv, &e.journal);
    assert_eq!(r.len(), 1);
    assert!(r[0].1.is_ok());
    assert_eq!(state(&e, "a"), PowerState::Running);
    assert!(e.journal.list().expect("journal").is_empty());
}

/// A sealing capture whose agent died leaves its overlays and a server
/// per disk (pid files in its directory): recovery stops the servers and
/// removes the directory, and never signals a process that merely has a
/// pid written there (after a reboot the number may be anyone's).
#[test]
fn recovery_stops_what_a_dead_seal_left() {
    let e = env(true, PowerState::Running);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("op-10-seal");
    std::fs::create_dir(&dir).expect("dir");
    let overlay = dir.join("disk0.qcow2");
    std::fs::File::create(&overlay)
        .and_then(|f| f.set_len(1 << 20))
        .expect("overlay");
    // qemu-nbd --fork returns once it serves (socket and pid file made);
    // the server, orphaned, becomes this process's child to wait for.
    nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
    let pid_file = dir.join("seal-0.pid");
    let forked = std::process::Command::new("qemu-nbd")
        .args(["--read-only", "--format=raw", "--fork", "--socket"])
        .arg(dir.join("seal-0.sock"))
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&overlay)
        .status()
        .expect("qemu-nbd");
    assert!(forked.success(), "{forked:?}");
    let server_pid = nix::unistd::Pid::from_raw(
        std::fs::read_to_string(&pid_file)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid"),
    );
    let mut server = Adopted(Some(server_pid));
    // Alive until its stdin closes (when the test ends).
    let mut bystander = Exits(
        std::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("cat"),
    );
    std::fs::write(dir.join("seal-1.pid"), format!("{}\n", bystander.0.id())).expect("pid");
    e.journal
        .write(&Entry::Capture {
            operation_id: "op-10".into(),
            guest_name: "a".into(),
            guest_uuid: "a-uuid".into(),
            was_running: false,
            backup_dir: None,
            thaw: false,
            seal_dir: Some(dir.display().to_string()),
        })
        .expect("journal");
    let r = recover(&*e.hv, &e.journal);
    assert!(r[0].1.is_ok(), "{r:?}");
    // qemu-nbd, with no client, serves until signalled (and exits 0 on
    // SIGTERM).
    let status = server.ended_within(Duration::from_secs(30));
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Exited(server_pid, 0),
        "{status:?}"
    );
    assert!(
        bystander.0.try_wait().expect("try_wait").is_none(),
        "a process that is no server of the seal is left alone"
    );
    assert!(!dir.exists());
    assert!(e.journal.list().expect("journal").is_empty());
    assert_eq!(state(&e, "a"), PowerState::Running);
}

/// A child killed when the test ends, however it ends.
struct Exits(std::process::Child);

impl Drop for Exits {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A daemon this process adopted (child subreaper), killed when the test
/// ends, however it ends, unless it was seen to end.
struct Adopted(Option<nix::unistd::Pid>);

impl Adopted {
    /// How it ended, within `limit` (a test failure otherwise).
    fn ended_within(&mut self, limit: Duration) -> nix::sys::wait::WaitStatus {
        let (tx, rx) = std::sync::mpsc::channel();
        let pid = self.0.expect("not waited for yet");
        std::thread::spawn(move || {
            let _ = tx.send(nix::sys::wait::waitpid(pid, None));
        });
        let status = rx
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("still running after {limit:?}"))
            .expect("waitpid");
        // Reaped: its number may be anyone's from now on.
        self.0 = None;
        status
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

fn deploy_spec(image: &str) -> DeploySpec {
    DeploySpec {
        // The fake's volumes hold no OS to generalize.
        keep_identity: true,
        operation_id: "op-d".into(),
        image_id: image.into(),
        guest_name: "b".into(),
        pool: "p".into(),
        disk_sizes_bytes: vec![8 << 20],
        hostname: "web-b".into(),
        interfaces: vec![InterfaceSpec {
            addresses: vec!["192.0.2.20/24".into()],
            gateway4: "192.0.2.1".into(),
            ..Default::default()
        }],
        start: true,
        domain_type: "qemu".into(),
        ..Default::default()
    }
}

#[test]
fn deploy_creates_volumes_seed_and_guest() {
    let e = env(true, PowerState::ShutOff);
    let cancel = Arc::new(AtomicBool::new(false));
    let img = capture(&e.ctx, &spec(false), &cancel, &no_report).expect("capture");
    let o = deploy(
        &e.ctx,
        &deploy_spec(&img.image_id.to_string()),
        &cancel,
        &no_report,
    )
    .expect("deploy");
    assert!(o.started);
    assert_eq!(state(&e, "b"), PowerState::Running);
    assert_eq!(o.volumes.len(), 2);
    let disk = fs::read(&o.volumes[0]).expect("volume");
    assert_eq!(disk.len(), 8 << 20, "sized as requested");
    assert_eq!(&disk[1 << 20..(1 << 20) + 18], b"hello from guest a");
    assert_ne!(o.macs[0], "52:54:00:11:22:33", "MACs are never reused");
    let xml = e.hv.lookup("b").expect("b").1;
    assert!(xml.contains(&o.macs[0]));
    assert!(xml.contains("cidata.img"));
}

#[test]
fn delete_guest_removes_what_is_its_own_and_is_idempotent() {
    let e = env(true, PowerState::ShutOff);
    let cancel = Arc::new(AtomicBool::new(false));
    let img = capture(&e.ctx, &spec(false), &cancel, &no_report).expect("capture");
    let o = deploy(
        &e.ctx,
        &deploy_spec(&img.image_id.to_string()),
        &cancel,
        &no_report,
    )
    .expect("deploy");
    assert_eq!(state(&e, "b"), PowerState::Running);
    let (disk, seed) = (&o.volumes[0], &o.volumes[1]);
    // Guest c shares b's seed volume: it stays.
    e.hv.guests.lock().expect("lock").insert(
        "c".into(),
        FakeGuest::new(
            GuestRef {
                name: "c".into(),
                uuid: "c-uuid".into(),
            },
            guest_xml("c", Path::new(seed)),
            PowerState::ShutOff,
        ),
    );
    // Another operation on b: refused, nothing touched.
    let claim = e.ctx.busy.claim(&o.guest.uuid, "b").expect("claim");
    let err = delete_guest(&e.ctx, "b", &cancel, &no_report).expect_err("busy");
    assert_eq!(err.kind, Kind::Conflict);
    assert_eq!(state(&e, "b"), PowerState::Running);
    drop(claim);
    // An earlier run died after deleting the disk's volume.
    let name = Path::new(disk).file_name().expect("name").to_string_lossy();
    e.hv.delete_volume("p", &name).expect("delete");
    let phases = Mutex::new(Vec::<String>::new());
    let report = |p: &str, _: u64, _: u64| phases.lock().expect("lock").push(p.into());
    let d = delete_guest(&e.ctx, &o.guest.uuid, &cancel, &report).expect("delete");
    assert!(d.forced_off && !d.already_gone, "{d:?}");
    assert_eq!(d.guest, o.guest);
    assert!(d.deleted_volumes.is_empty(), "{d:?}");
    assert_eq!(d.left_disks, [format!("{seed}: another guest uses it")]);
    assert!(e.hv.lookup("b").is_err(), "undefined");
    assert!(Path::new(seed).exists(), "c's seed stays");
    assert_eq!(
        *phases.lock().expect("lock"),
        [
            "looking up the guest",
            "powering off",
            "deleting volumes",
            "undefining"
        ]
    );
    // Again (a retry after a crash): gone already, which is success.
    let again = delete_guest(&e.ctx, &o.guest.uuid, &cancel, &no_report).expect("again");
    assert!(again.already_gone);
    // c's only disk is its pool volume (the seed, no longer shared).
    let c = delete_guest(&e.ctx, "c", &cancel, &no_report).expect("c");
    assert_eq!(c.deleted_volumes, std::slice::from_ref(seed));
    assert!(!Path::new(seed).exists());
    // a's disk is no pool volume: left and named.
    let a = delete_guest(&e.ctx, "a", &cancel, &no_report).expect("a");
    assert_eq!(a.left_disks.len(), 1, "{a:?}");
    assert!(a.left_disks[0].ends_with("a.raw: not a volume of a storage pool"));
    assert!(e.hv.guests.lock().expect("lock").is_empty());
}

#[test]
fn bad_deploys_leave_nothing_behind() {
    let e = env(true, PowerState::ShutOff);
    let cancel = Arc::new(AtomicBool::new(false));
    let img = capture(&e.ctx, &spec(false), &cancel, &no_report).expect("capture");
    let id = img.image_id.to_string();
    type Mutate = Box<dyn Fn(&mut DeploySpec)>;
    let cases: Vec<(Mutate, Kind)> = vec![
        (
            Box::new(|s| s.disk_sizes_bytes = vec![1 << 20]),
            Kind::InvalidArgument,
        ),
        (
            Box::new(|s| s.interfaces[0].addresses = vec!["192.0.2.300/24".into()]),
            Kind::InvalidArgument,
        ),
        (
            Box::new(|s| s.interfaces[0].addresses = vec!["192.0.2.3/40".into()]),
            Kind::InvalidArgument,
        ),
        (
            Box::new(|s| s.interfaces[0].mac_address = "01:00:5e:00:00:01".into()),
            Kind::InvalidArgument,
        ),
        (
            Box::new(|s| s.hostname = "bad_host".into()),
            Kind::InvalidArgument,
        ),
        (
            Box::new(|s| s.guest_name = "bad name".into()),
            Kind::InvalidArgument,
        ),
        (Box::new(|s| s.pool = "missing".into()), Kind::NotFound),
        (Box::new(|s| s.guest_name = "a".into()), Kind::Conflict),
        (
            Box::new(|s| s.image_id = "00000000-0000-4000-8000-000000000000".into()),
            Kind::NotFound,
        ),
    ];
    for (i, (mutate, kind)) in cases.into_iter().enumerate() {
        let mut s = deploy_spec(&id);
        mutate(&mut s);
        let err = deploy(&e.ctx, &s, &cancel, &no_report).expect_err("bad");
        assert_eq!(err.kind, kind, "case {i}: {err}");
    }
    // Fails late (define): the volumes go again.
    *e.hv.fail_define.lock().expect("lock") = true;
    let err = deploy(&e.ctx, &deploy_spec(&id), &cancel, &no_report).expect_err("define");
    assert_eq!(err.kind, Kind::Internal);
    let pool = e.hv.pools["p"].clone();
    assert_eq!(
        fs::read_dir(&pool).expect("ls").count(),
        0,
        "volumes removed"
    );
    assert!(e.hv.lookup("b").is_err());
    assert!(e.journal.list().expect("journal").is_empty());
}

fn lazy_spec(image: &str, dir: &Path) -> DeploySpec {
    DeploySpec {
        lazy: true,
        disk_format: "qcow2".into(),
        nbd_dir: dir.to_path_buf(),
        max_lazy_fills: 1,
        ..deploy_spec(image)
    }
}

/// A raw lazy volume is written by the agent from the store, then QEMU
/// copies only what the guest wrote (shallow); a qcow2 one is copied
/// whole through the export.
#[test]
fn raw_lazy_volumes_are_written_then_copied_shallow() {
    let e = env(true, PowerState::ShutOff);
    let cancel = Arc::new(AtomicBool::new(false));
    let img = capture(&e.ctx, &spec(false), &cancel, &no_report).expect("capture");
    let nbd = e._tmp.path().join("nbd");
    fs::create_dir(&nbd).expect("nbd dir");
    let raw = DeploySpec {
        disk_format: "raw".into(),
        ..lazy_spec(&img.image_id.to_string(), &nbd)
    };
    let o = deploy(&e.ctx, &raw, &cancel, &no_report).expect("lazy deploy");
    let volume = fs::read(&o.volumes[0]).expect("volume");
    let source = fs::read(e._tmp.path().join("a.raw")).expect("source");
    // The image, then (a volume rounded up) zeros.
    assert!(volume.len() >= source.len(), "{}", o.volumes[0]);
    let first = volume.iter().zip(&source).position(|(a, b)| a != b);
    assert_eq!(first, None, "the volume holds the image");
    assert!(volume[source.len()..].iter().all(|b| *b == 0));
    let started = e.hv.copies_started.lock().expect("lock").clone();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].1.format, "raw");
    assert!(started[0].2, "shallow: {started:?}");
}

#[test]
fn lazy_deploy_runs_the_guest_on_the_export_then_fills_it() {
    let e = env(true, PowerState::ShutOff);
    let cancel = Arc::new(AtomicBool::new(false));
    let img = capture(&e.ctx, &spec(false), &cancel, &no_report).expect("capture");
    let nbd = e._tmp.path().join("nbd");
    fs::create_dir(&nbd).expect("nbd dir");
    let phases = Mutex::new(Vec::new());
    let report = |phase: &str, _: u64, _: u64| {
        phases.lock().expect("lock").push(phase.to_string());
    };
    let o = deploy(
        &e.ctx,
        &lazy_spec(&img.image_id.to_string(), &nbd),
        &cancel,
        &report,
    )
    .expect("lazy deploy");
    assert!(o.started);
    assert_eq!(
        o.volumes[0],
        e.hv.pools["p"].join("b-vda.qcow2").display().to_string()
    );
    assert_eq!(state(&e, "b"), PowerState::Running);
    let phases = phases.into_inner().expect("phases");
    let running = phases
        .iter()
        .position(|p| p == imprint_agent::lazy::RUNNING_PHASE)
        .expect("the running milestone");
    let started = phases
        .iter()
        .position(|p| p == "starting guest")
        .expect("started");
    assert!(started < running, "{phases:?}");
    assert!(
        !phases[running..].iter().any(|p| p == "writing volumes"),
        "nothing is written before the guest runs: {phases:?}"
    );
    let g = e.hv.guests.lock().expect("lock")["b"].clone();
    assert!(g.xml.contains("protocol='nbd'"), "{}", g.xml);
    assert!(g.xml.contains("rerror_policy='stop'"), "{}", g.xml);
    assert!(
        g.xml.contains("b-vda.fill.qcow2"),
        "the guest starts on the overlay: {}",
        g.xml
    );
    assert!(g.backed.is_empty(), "every disk was filled");
    assert!(g.copies.is_empty(), "and switched to its volume");
    let started = e.hv.copies_started.lock().expect("lock").clone();
    assert!(
        started.iter().all(|(_, _, shallow)| !shallow),
        "a qcow2 volume is copied whole: {started:?}"
    );
    let mut left: Vec<String> = fs::read_dir(&e.hv.pools["p"])
        .expect("pool")
        .flatten()
        .map(|v| v.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["b-cidata.img", "b-vda.qcow2"],
        "the overlay is gone, the volume stays"
    );
    assert_eq!(
        fs::read_dir(&nbd).expect("nbd dir").count(),
        0,
        "the exports are closed and their sockets gone"
    );
}

#[test]
fn lazy_deploys_refuse_what_cannot_work_and_a_failed_fill_leaves_nothing() {
    let e = env(true, PowerState::ShutOff);
    let cancel = Arc::new(AtomicBool::new(false));
    let img = capture(&e.ctx, &spec(false), &cancel, &no_report).expect("capture");
    let id = img.image_id.to_string();
    let nbd = e._tmp.path().join("nbd");
    fs::create_dir(&nbd).expect("nbd dir");
    let stopped = DeploySpec {
        start: false,
        ..lazy_spec(&id, &nbd)
    };
    let err = deploy(&e.ctx, &stopped, &cancel, &no_report).expect_err("refused");
    assert_eq!(err.kind, Kind::InvalidArgument, "{err}");
    assert!(e.hv.lookup("b").is_err(), "no guest defined");
    // The host's fills are all in use: refused before anything is made.
    let slot = e
        .ctx
        .busy
        .claim_slot(imprint_agent::work::LAZY_FILL, 1, "fills")
        .expect("slot");
    let err = deploy(&e.ctx, &lazy_spec(&id, &nbd), &cancel, &no_report).expect_err("full");
    assert_eq!(err.kind, Kind::ResourceExhausted, "{err}");
    assert!(e.hv.lookup("b").is_err(), "no guest defined");
    drop(slot);
    *e.hv.fail_fill.lock().expect("lock") = true;
    let err = deploy(&e.ctx, &lazy_spec(&id, &nbd), &cancel, &no_report).expect_err("fill fails");
    assert_eq!(err.kind, Kind::Unavailable, "{err}");
    assert!(err.to_string().contains("vda"), "{err}");
    assert!(e.hv.lookup("b").is_err(), "the half-made guest is gone");
    let pool = e._tmp.path().join("pool");
    assert_eq!(
        fs::read_dir(&pool).expect("pool").count(),
        0,
        "no volume left"
    );
    assert_eq!(
        fs::read_dir(&nbd).expect("nbd").count(),
        0,
        "no export left"
    );
}

/// What a lazy deploy's agent leaves when it dies during the fill: the
/// guest running on its exports, the journal entry saying so. Made from a
/// finished lazy deploy of guest `b`, its disk marked unfilled again.
fn killed_during_the_fill(e: &Env, nbd: &Path, state: PowerState) -> Entry {
    let cancel = Arc::new(AtomicBool::new(false));
    let img = capture(&e.ctx, &spec(false), &cancel, &no_report).expect("capture");
    let o = deploy(
        &e.ctx,
        &lazy_spec(&img.image_id.to_string(), nbd),
        &cancel,
        &no_report,
    )
    .expect("lazy deploy");
    {
        let mut gs = e.hv.guests.lock().expect("lock");
        let g = gs.get_mut("b").expect("guest b");
        g.backed = vec!["vda".into()];
        g.state = state;
    }
    let entry = Entry::Deploy {
        operation_id: "op-lazy".into(),
        guest_name: "b".into(),
        pool: "p".into(),
        volumes: vec![
            "b-vda.qcow2".into(),
            "b-vda.fill.qcow2".into(),
            "b-cidata.img".into(),
        ],
        defined_uuid: Some(o.guest.uuid.clone()),
        nvram: None,
        filling: Some(Box::new(Filling {
            store: String::new(),
            image_id: img.image_id.to_string(),
            guest_uuid: o.guest.uuid.clone(),
            disks: vec![FillingDisk {
                index: 0,
                dev: "vda".into(),
                socket: nbd.join("op-lazy-0.sock").display().to_string(),
                target: o.volumes[0].clone(),
                format: "qcow2".into(),
                overlay: "b-vda.fill.qcow2".into(),
            }],
            fill_mib_s: 0,
            volume_paths: o.volumes.clone(),
            macs: o.macs.clone(),
            bytes_written: o.bytes_written,
        })),
    };
    e.journal.write(&entry).expect("journal");
    entry
}

#[test]
fn a_restarted_agent_resumes_a_lazy_fill_instead_of_undoing_the_deploy() {
    let e = env(true, PowerState::ShutOff);
    let nbd = e._tmp.path().join("nbd");
    fs::create_dir(&nbd).expect("nbd dir");
    let entry = killed_during_the_fill(&e, &nbd, PowerState::Running);
    // Start-up recovery leaves it to the resume: the guest stays.
    let recovered = recover(&*e.hv, &e.journal);
    assert!(recovered.is_empty(), "{recovered:?}");
    assert_eq!(state(&e, "b"), PowerState::Running);

    let phases = Mutex::new(Vec::new());
    let report = |phase: &str, _: u64, _: u64| {
        phases.lock().expect("lock").push(phase.to_string());
    };
    let cancel = std::sync::Arc::new(AtomicBool::new(false));
    let o = resume(&e.ctx, Ok(e.store.clone()), entry, &cancel, &report).expect("resumed");
    assert_eq!(o.guest.name, "b");
    assert!(o.started);
    assert_eq!(o.volumes.len(), 2, "{o:?}");
    assert_eq!(state(&e, "b"), PowerState::Running);
    assert!(e.hv.guests.lock().expect("lock")["b"].backed.is_empty());
    assert!(
        phases
            .into_inner()
            .expect("phases")
            .iter()
            .all(|p| p == imprint_agent::lazy::RUNNING_PHASE),
        "a resumed fill reports its milestone only"
    );
    assert!(e.journal.list().expect("journal").is_empty());
    assert_eq!(
        fs::read_dir(&nbd).expect("nbd").count(),
        0,
        "exports closed"
    );
}

#[test]
fn a_lazy_guest_found_off_after_a_restart_is_undone() {
    let e = env(true, PowerState::ShutOff);
    let nbd = e._tmp.path().join("nbd");
    fs::create_dir(&nbd).expect("nbd dir");
    let entry = killed_during_the_fill(&e, &nbd, PowerState::ShutOff);
    let cancel = std::sync::Arc::new(AtomicBool::new(false));
    let err = resume(&e.ctx, Ok(e.store.clone()), entry, &cancel, &no_report)
        .expect_err("cannot fill a guest that is off");
    assert_eq!(err.kind, Kind::FailedPrecondition, "{err}");
    assert!(e.hv.lookup("b").is_err(), "the half-made guest is gone");
    let pool = e._tmp.path().join("pool");
    assert_eq!(fs::read_dir(&pool).expect("pool").count(), 0, "no volume");
    assert!(e.journal.list().expect("journal").is_empty());
}

#[test]
fn a_lazy_fill_whose_store_is_gone_after_a_restart_is_undone() {
    let e = env(true, PowerState::ShutOff);
    let nbd = e._tmp.path().join("nbd");
    fs::create_dir(&nbd).expect("nbd dir");
    let entry = killed_during_the_fill(&e, &nbd, PowerState::Running);
    let cancel = std::sync::Arc::new(AtomicBool::new(false));
    let gone = imprint_agent::error::AgentError::new(Kind::NotFound, "no store there");
    let err =
        resume(&e.ctx, Err(gone), entry, &cancel, &no_report).expect_err("no store to fill from");
    assert_eq!(err.kind, Kind::NotFound, "{err}");
    assert!(e.hv.lookup("b").is_err(), "the half-made guest is gone");
    assert!(e.journal.list().expect("journal").is_empty());
}
