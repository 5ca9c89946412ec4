//! What the agent reports reaches the operation's row: a phase that comes
//! right after another (within the interval byte counts are written at) is
//! recorded, not lost until the next report.

use std::time::Duration;

use imprint_proto::v1 as pb;

use super::world::{Caller, on_each_backend, until};

#[tokio::test(flavor = "multi_thread")]
async fn a_phase_reported_right_after_another_reaches_the_row() {
    on_each_backend(|w| async move {
        // Guest a ignores ACPI: the capture waits in "shutting down", which
        // the agent reports within milliseconds of its first phase.
        w.hv.guests
            .lock()
            .expect("guests")
            .get_mut("a")
            .expect("guest a")
            .obeys_acpi = false;
        let op = w
            .images
            .clone()
            .capture_image(w.req(
                Caller::As("alice"),
                pb::CaptureImageRequest {
                    host: "h1".into(),
                    guest: "a".into(),
                    name: "slow-shutdown".into(),
                    shutdown_timeout_seconds: 60,
                    ..Default::default()
                },
            ))
            .await
            .expect("capture")
            .into_inner();
        let get = || {
            let mut ops = w.ops.clone();
            let req = w.req(
                Caller::As("alice"),
                pb::GetDaemonOperationRequest { id: op.id.clone() },
            );
            async move { ops.get_operation(req).await.expect("get").into_inner() }
        };
        until(
            "the row at phase \"shutting down\" while the agent waits for the shutdown",
            Duration::from_secs(10),
            || async {
                let seen = get().await;
                assert_eq!(seen.state, pb::OperationState::Running as i32, "{seen:?}");
                (seen.phase == "shutting down").then_some(())
            },
        )
        .await;
        // Done with it: cancelled, the guest keeps running.
        w.ops
            .clone()
            .cancel_operation(w.req(
                Caller::As("alice"),
                pb::GetDaemonOperationRequest { id: op.id.clone() },
            ))
            .await
            .expect("cancel");
        let done = w.wait(Caller::As("alice"), &op).await;
        assert_eq!(done.state, pb::OperationState::Cancelled as i32, "{done:?}");
    })
    .await;
}
