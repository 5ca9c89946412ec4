//! The whole product on a real libvirtd: `imprintd` (embedded SQLite
//! catalog, directory store) and `imprint-agent` as separate processes, a
//! real QEMU guest, and users calling the daemon's API with their tokens.

use std::time::Duration;

use imprint_proto::v1 as pb;
use imprint_tests::{
    daemon_api::{Api, api, registered},
    *,
};

const BOOT: Duration = Duration::from_secs(120);
const HOST: &str = "kvm-e2e";

/// Capture a running guest through the daemon, crash the daemon (SIGKILL)
/// while the capture runs and start it again: the capture completes, the
/// image turns ACTIVE, and a deploy through the daemon boots a copy with
/// a static address. Then delete, with the bytes it frees reported first.
#[tokio::test(flavor = "multi_thread")]
async fn capture_survives_a_daemon_crash_then_deploy_and_delete() {
    let wd = Workdir::new("imprint-daemon-e2e-");
    let mut daemon = DaemonProcess::start(&wd.path().join("imprintd"), &wd.path().join("store"));
    let registration = daemon.agent_args(HOST);
    let registration: Vec<&str> = registration.iter().map(String::as_str).collect();
    let f = Fixture::in_workdir(wd, &registration);
    let alice = daemon.account("alice");
    let bob = daemon.account("bob");
    registered(&daemon.endpoint(), HOST, &alice).await;

    let disk = f.disk_in_pool_a(&f.guest.disk, "a-vda.raw");
    let (a, name_a, log_a) = f.boot_guest("a", &[(&disk, "raw")]);
    daemon.assign_guest(HOST, &name_a, "alice").await;
    let marker_a = last_value(
        &std::fs::read_to_string(&log_a).expect("log"),
        "IMPRINT-MARKER",
    )
    .expect("marker");

    let mut api_a = api(&daemon.endpoint(), &alice);
    let op = api_a
        .images
        .capture_image(pb::CaptureImageRequest {
            request_id: "capture-a".into(),
            host: HOST.into(),
            guest: name_a.clone(),
            name: "web-base".into(),
            notes: "busybox test guest".into(),
            tags: vec!["e2e".into()],
            shutdown_timeout_seconds: 90,
            ..Default::default()
        })
        .await
        .expect("capture")
        .into_inner();
    assert_eq!(op.state, pb::OperationState::Running as i32);
    assert!(!op.image_id.is_empty());
    let creating = api_a.image(&op.image_id).await.expect("image");
    assert_eq!(creating.state, pb::ImageState::Creating as i32);

    // Crash the daemon while the agent works (the guest is shutting down,
    // as the agent itself reports: the daemon's row may skip a short
    // phase); a new one on the same catalog picks the operation up again.
    phase_reached(&mut f.client().await, &op.id, "shutting down").await;
    daemon.crash_and_restart();
    let mut api_a = api(&daemon.endpoint(), &alice);
    let (done, phases) = api_a.wait(&op.id).await;
    eprintln!("capture phases seen through the daemon: {phases:?}");
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let c = done.capture.clone().expect("capture result");
    assert_eq!(c.image_id, op.image_id);
    assert_eq!(c.final_power_state, pb::PowerState::Running as i32);
    wait_for(&log_a, "IMPRINT-READY", 2, BOOT);
    assert_eq!(a.state(), "running", "A is back up");
    // The retried call (same request id) is the same operation.
    let again = api_a
        .capture(HOST, &name_a, "web-base", "capture-a")
        .await
        .expect("retry");
    assert_eq!(again.id, op.id);
    assert_eq!(again.state, pb::OperationState::Succeeded as i32);

    let img = api_a.image(&op.image_id).await.expect("image");
    assert_eq!(img.state, pb::ImageState::Active as i32);
    assert_eq!(img.owner, "alice");
    assert_eq!(img.source_host, HOST);
    assert_eq!(img.source_guest, name_a);
    assert_eq!(img.disks.len(), 1);
    assert_eq!(img.disks[0].size_bytes, 64 << 20);
    assert_eq!(img.tags, ["e2e"]);

    // Bob cannot see it until it is shared with him.
    let mut api_b = api(&daemon.endpoint(), &bob);
    let e = api_b.image(&img.id).await.expect_err("private");
    assert_eq!(e.code(), tonic::Code::NotFound);
    api_a
        .images
        .share_image(pb::ShareImageRequest {
            id: img.id.clone(),
            accounts: vec!["bob".into()],
        })
        .await
        .expect("share");

    // Bob deploys it into pool B with a static address and a bigger disk.
    let name_b = format!("imp-{}-b", f.tag);
    let _b = Domain::adopt(&name_b);
    let op = api_b
        .images
        .deploy_image(pb::DeployImageRequest {
            keep_identity: true,
            request_id: "deploy-b".into(),
            image_id: img.id.clone(),
            host: HOST.into(),
            guest_name: name_b.clone(),
            pool: f.pool_b.name.clone(),
            disk_sizes_bytes: vec![128 << 20],
            network: Some(pb::NetworkConfig {
                hostname: "imp-b".into(),
                interfaces: vec![pb::InterfaceConfig {
                    addresses: vec!["192.0.2.30/24".into()],
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
    let (done, phases) = api_b.wait(&op.id).await;
    eprintln!("deploy phases seen through the daemon: {phases:?}");
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let d = done.deploy.expect("deploy result");
    assert!(d.started);
    let log = wait_for(
        &f.consoles.join(format!("{name_b}.log")),
        "IMPRINT-READY",
        1,
        BOOT,
    );
    assert_eq!(
        last_value(&log, "IMPRINT-MARKER"),
        Some(marker_a),
        "B has A's data"
    );
    assert!(
        log.lines()
            .any(|l| l.trim() == "IMPRINT-ADDR 192.0.2.30/24"),
        "static address applied:\n{log}"
    );
    assert_eq!(
        last_value(&log, "IMPRINT-HOSTNAME").as_deref(),
        Some("imp-b")
    );

    // Alone in the store, the image holds every byte it references.
    let img = api_a.image(&img.id).await.expect("image");
    assert!(img.exclusive_bytes > 0, "{img:?}");
    let ops = api_b
        .ops
        .list_operations(pb::ListDaemonOperationsRequest::default())
        .await
        .expect("ops")
        .into_inner()
        .operations;
    assert_eq!(ops.len(), 1, "bob sees his own operation only");

    // Delete: the manifest goes, the image disappears for everyone.
    let del = api_a
        .images
        .delete_image(pb::DeleteImageRequest {
            id: img.id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(
        del.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        del.error
    );
    for api in [&mut api_a, &mut api_b] {
        let e = api.image(&img.id).await.expect_err("gone");
        assert_eq!(e.code(), tonic::Code::NotFound);
    }
    assert!(
        !daemon.store.join("images").join(&img.id).exists(),
        "manifest removed from the store"
    );
}

/// An image cannot be deleted while a deploy reads it: the deploy of an
/// image with 768 MiB of random bytes takes seconds, the delete asked right
/// after the deploy started is refused, and the deploy is still running
/// after the refusal (so the refusal came from it); once it is over, the
/// delete goes through.
#[tokio::test(flavor = "multi_thread")]
async fn delete_is_refused_while_a_deploy_reads_the_image() {
    let wd = Workdir::new("imprint-daemon-e2e-");
    let daemon = DaemonProcess::start(&wd.path().join("imprintd"), &wd.path().join("store"));
    let registration = daemon.agent_args(HOST);
    let registration: Vec<&str> = registration.iter().map(String::as_str).collect();
    let f = Fixture::in_workdir(wd, &registration);
    let alice = daemon.account("alice");
    registered(&daemon.endpoint(), HOST, &alice).await;
    // A shut-off guest on a slow disk: captured as it is, no boot needed.
    let disk = f.slow_disk_in_pool_a("slow-vda.raw");
    let name = format!("imp-{}-slow", f.tag);
    let _guest = Domain::define(
        &name,
        &busybox_xml(
            &name,
            &f.guest,
            f.wd.path(),
            &[(&disk, "raw")],
            &f.wd.path().join("slow.log"),
            free_udp_port(),
        ),
        f.wd.path(),
    );
    daemon.assign_guest(HOST, &name, "alice").await;
    let mut api_a = api(&daemon.endpoint(), &alice);
    let op = api_a
        .capture(HOST, &name, "slow", "")
        .await
        .expect("capture");
    let (done, _) = api_a.wait(&op.id).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let clone = format!("imp-{}-slowcopy", f.tag);
    let _c = Domain::adopt(&clone);
    let deploy = api_a
        .images
        .deploy_image(pb::DeployImageRequest {
            keep_identity: true,
            image_id: op.image_id.clone(),
            host: HOST.into(),
            guest_name: clone,
            ..Default::default()
        })
        .await
        .expect("deploy")
        .into_inner();
    let e = api_a
        .images
        .delete_image(pb::DeleteImageRequest {
            id: op.image_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("deleting an image a deploy reads");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    let during = api_a
        .ops
        .get_operation(pb::GetDaemonOperationRequest {
            id: deploy.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        during.state,
        pb::OperationState::Running as i32,
        "the deploy was still running when the delete was refused: {during:?}"
    );
    let (done, _) = api_a.wait(&deploy.id).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let del = api_a
        .images
        .delete_image(pb::DeleteImageRequest {
            id: op.image_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner();
    let (del, _) = api_a.wait(&del.id).await;
    assert_eq!(
        del.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        del.error
    );
}

/// A daemon and agent, and a capture of a guest that ignores ACPI (600 s
/// timeout, no force-off) waiting for its shutdown.
struct Deaf {
    daemon: DaemonProcess,
    f: Fixture,
    guest: Domain,
    api_a: Api,
    op: pb::Operation,
}

async fn deaf_capture_running() -> Deaf {
    let wd = Workdir::new("imprint-daemon-e2e-");
    let daemon = DaemonProcess::start(&wd.path().join("imprintd"), &wd.path().join("store"));
    let registration = daemon.agent_args(HOST);
    let registration: Vec<&str> = registration.iter().map(String::as_str).collect();
    let f = Fixture::in_workdir(wd, &registration);
    let alice = daemon.account("alice");
    registered(&daemon.endpoint(), HOST, &alice).await;
    let disk = f.disk_in_pool_a(&f.guest.disk_ignore_acpi, "deaf-vda.raw");
    let (guest, name_a, _log) = f.boot_guest("deaf", &[(&disk, "raw")]);
    daemon.assign_guest(HOST, &name_a, "alice").await;
    let mut api_a = api(&daemon.endpoint(), &alice);
    let op = api_a
        .images
        .capture_image(pb::CaptureImageRequest {
            host: HOST.into(),
            guest: name_a.clone(),
            name: "deaf".into(),
            shutdown_timeout_seconds: 600,
            ..Default::default()
        })
        .await
        .expect("capture")
        .into_inner();
    // The guest ignores ACPI: the capture waits for its shutdown.
    phase_reached(&mut f.client().await, &op.id, "shutting down").await;
    Deaf {
        daemon,
        f,
        guest,
        api_a,
        op,
    }
}

/// An agent that dies mid-capture and comes back without the operation:
/// the daemon fails it with that reason, the image is FAILED, and the
/// restarted agent returns the guest to its power state from its journal.
#[tokio::test(flavor = "multi_thread")]
async fn agent_lost_operation_fails_with_a_reason() {
    let Deaf {
        daemon: _daemon,
        mut f,
        guest: a,
        mut api_a,
        op,
    } = deaf_capture_running().await;
    f.restart_agent();
    let (done, _) = api_a.wait(&op.id).await;
    assert_eq!(done.state, pb::OperationState::Failed as i32);
    assert_eq!(
        done.error_code,
        tonic::Code::Aborted as i32,
        "{}",
        done.error
    );
    assert!(done.error.contains("no longer knows"), "{}", done.error);
    let img = api_a.image(&op.image_id).await.expect("image");
    assert_eq!(img.state, pb::ImageState::Failed as i32);
    assert!(
        img.failure_reason.contains("no longer knows"),
        "{}",
        img.failure_reason
    );
    assert_eq!(a.state(), "running", "the guest stayed up");
}

/// `systemctl stop` of the agent (SIGTERM) mid-capture: the capture is
/// cancelled, the guest stays up, the daemon records CANCELLED and the
/// image FAILED with the reason, and the agent exits cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn agent_sigterm_cancels_in_flight_capture_cleanly() {
    let Deaf {
        daemon: _daemon,
        mut f,
        guest: a,
        mut api_a,
        op,
    } = deaf_capture_running().await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(f.agent.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let (done, _) = api_a.wait(&op.id).await;
    assert_eq!(
        done.state,
        pb::OperationState::Cancelled as i32,
        "{}",
        done.error
    );
    let status = f.agent.child.wait().expect("agent exits");
    assert!(status.success(), "agent exit status {status}");
    let img = api_a.image(&op.image_id).await.expect("image");
    assert_eq!(img.state, pb::ImageState::Failed as i32);
    assert_eq!(a.state(), "running", "the guest stayed up");
    f.restart_agent();
}
