//! libvirtd goes away in the middle of a deploy, after its volume was
//! written: the deploy fails with UNAVAILABLE and leaves nothing behind
//! once libvirtd is back (the agent keeps retrying its cleanup, journaled
//! before anything was created), and a retry under the same name works.
//! (Its own test binary: it stops the libvirtd every other test uses.)

use imprint_proto::v1 as pb;
use imprint_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn deploy_failing_in_a_libvirtd_restart_leaves_nothing() {
    let f = Fixture::new();
    // 768 MiB of incompressible data: its deploy writes (with fsync) long
    // enough to stop libvirtd in the middle.
    let image_id = f.capture_random_disk("big", 768).await;
    let mut client = f.client().await;

    let copy = format!("imp-{}-copy", f.tag);
    let _copy = Domain::adopt(&copy);
    let _back = LibvirtdBack;
    let deploy = || pb::DeployRequest {
        keep_identity: true,
        image_id: image_id.clone(),
        guest_name: copy.clone(),
        ..Default::default()
    };
    let op = client
        .deploy(deploy())
        .await
        .expect("deploy accepted")
        .into_inner();
    // While the volume is written, libvirtd goes away; the deploy's next
    // libvirt call (the seed volume) fails.
    phase_reached(&mut client, &op.operation_id, "writing volumes").await;
    let pkill = std::process::Command::new("pkill")
        .args(["-x", "libvirtd"])
        .status()
        .expect("pkill");
    assert!(pkill.success());
    // The agent tries to remove what it made, and keeps trying while
    // libvirtd is down: the operation is still running.
    let cleaning = phase_reached(
        &mut client,
        &op.operation_id,
        "removing what the deploy made",
    )
    .await;
    assert_eq!(cleaning.state, pb::OperationState::Running as i32);
    let volumes: Vec<String> = std::fs::read_dir(&f.pool_b.dir)
        .expect("ls pool")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&copy))
        .collect();
    assert!(
        !volumes.is_empty(),
        "the volume was written before the fault"
    );
    start_libvirtd();
    let done = watch(&mut client, &op.operation_id).await;
    assert_eq!(done.state, pb::OperationState::Failed as i32, "{done:?}");
    assert_eq!(
        done.error_code,
        tonic::Code::Unavailable as i32,
        "{}",
        done.error
    );
    // Nothing is left: no volume in the pool, no domain, no journal entry.
    let left: Vec<String> = std::fs::read_dir(&f.pool_b.dir)
        .expect("ls pool")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&copy))
        .collect();
    assert!(left.is_empty(), "left in the pool: {left:?}");
    assert!(
        !virsh(&["list", "--all", "--name"])
            .lines()
            .any(|n| n == copy),
        "no domain left"
    );
    assert_eq!(f.journal_entries().len(), 0, "journal entry removed");
    // The same name deploys now.
    let again = client
        .deploy(deploy())
        .await
        .expect("retry accepted")
        .into_inner();
    let again = watch(&mut client, &again.operation_id).await;
    assert_succeeded(&again);
}
