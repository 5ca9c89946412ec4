//! Two `imprintd` on one PostgreSQL catalog (a private server started by
//! the test), one agent that knows both, a real QEMU guest. A capture
//! begun through daemon 1 survives `kill -9` of daemon 1: daemon 2 takes
//! the operation's lease over once it expires, follows the agent to the
//! end, and serves the result; the agent moves its heartbeats to daemon 2.

use std::time::{Duration, Instant};

use imprint_proto::v1 as pb;
use imprint_tests::{
    daemon_api::{api, registered},
    pg::TestPostgres,
    *,
};

const BOOT: Duration = Duration::from_secs(120);
const HOST: &str = "kvm-multi";

#[tokio::test(flavor = "multi_thread")]
async fn capture_survives_the_death_of_its_daemon() {
    let pg = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .expect("postgres");
    let wd = Workdir::new("imprint-multi-e2e-");
    let store = wd.path().join("store");
    let shared = ["--catalog", pg.url.as_str()];
    let mut d1 = DaemonProcess::start_with(&wd.path().join("d1"), &store, &shared);
    let d2 = DaemonProcess::start_with(&wd.path().join("d2"), &store, &shared);
    let daemons = format!("{},{}", d1.endpoint(), d2.endpoint());
    let token = d1.host_token(HOST);
    let f = Fixture::in_workdir(
        wd,
        &[
            "--daemon",
            &daemons,
            "--host-name",
            HOST,
            "--host-token-file",
            token.to_str().expect("utf8"),
        ],
    );
    let alice = d1.account("alice");
    // One catalog: the host and the account are known to both daemons.
    registered(&d1.endpoint(), HOST, &alice).await;
    registered(&d2.endpoint(), HOST, &alice).await;

    let disk = f.disk_in_pool_a(&f.guest.disk, "a-vda.raw");
    let (a, name_a, log_a) = f.boot_guest("a", &[(&disk, "raw")]);
    d1.assign_guest(HOST, &name_a, "alice").await;
    let mut api1 = api(&d1.endpoint(), &alice);
    let op = api1
        .capture(HOST, &name_a, "multi", "capture-multi")
        .await
        .expect("capture through daemon 1");
    assert_eq!(op.state, pb::OperationState::Running as i32);

    // Daemon 1 dies while the agent works.
    let lease_owner = || {
        pg.query(&format!(
            "SELECT lease_owner FROM operations WHERE id = '{}'",
            op.id
        ))
    };
    let owner_1 = lease_owner();
    assert!(!owner_1.is_empty());
    d1.server.kill();
    let killed = Instant::now();
    // Daemon 2 sees daemon 1's liveness lock go with its connection and
    // takes the operation over without waiting for the 15 s lease.
    loop {
        let owner = lease_owner();
        if owner != owner_1 {
            eprintln!(
                "daemon 2 ({owner}) took the operation over {:.1} s after daemon 1 ({owner_1}) was killed",
                killed.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "nobody took the operation over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Daemon 2 answers at once (the row is in the shared catalog) and the
    // operation ends there once it has taken the lease over.
    let mut api2 = api(&d2.endpoint(), &alice);
    let seen = api2
        .ops
        .get_operation(pb::GetDaemonOperationRequest { id: op.id.clone() })
        .await
        .expect("daemon 2 knows the operation")
        .into_inner();
    assert_eq!(seen.id, op.id);
    let (done, phases) = api2.wait(&op.id).await;
    eprintln!(
        "capture ended through daemon 2 {:.1} s after daemon 1 was killed; phases {phases:?}",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let c = done.capture.clone().expect("capture result");
    assert_eq!(c.final_power_state, pb::PowerState::Running as i32);
    wait_for(&log_a, "IMPRINT-READY", 2, BOOT);
    assert_eq!(a.state(), "running", "the guest is back up");
    let img = api2
        .image(&op.image_id)
        .await
        .expect("image through daemon 2");
    assert_eq!(img.state, pb::ImageState::Active as i32);
    // The same request id through daemon 2 is the same operation.
    let again = api2
        .capture(HOST, &name_a, "multi", "capture-multi")
        .await
        .expect("retry through daemon 2");
    assert_eq!(again.id, op.id);

    // The agent now heartbeats to daemon 2: the host stays alive there
    // well past the silence limit (30 s after daemon 1 died).
    let until = killed + Duration::from_secs(35);
    if let Some(wait) = until.checked_duration_since(Instant::now()) {
        tokio::time::sleep(wait).await;
    }
    let mut hosts = pb::host_service_client::HostServiceClient::connect(d2.endpoint())
        .await
        .expect("connect");
    let list = hosts
        .list_hosts(authed(&alice, pb::ListHostsRequest {}))
        .await
        .expect("hosts")
        .into_inner()
        .hosts;
    assert!(
        list.iter().any(|h| h.name == HOST && h.alive),
        "the agent failed over to daemon 2: {list:?}"
    );
}
