//! Image lint through the daemon: the report is kept with the image and
//! shown with it, and an image whose lint found errors is not published
//! unless forced. The world's fake guest holds no operating system, so
//! its report says "unknown" (libguestfs really reads it, through the
//! agent's NBD export).

use imprint_proto::v1 as pb;
use tonic::Code;

use std::time::Duration;

use super::world::{Caller::As, code, on_each_backend, until};

#[tokio::test(flavor = "multi_thread")]
async fn lint_reports_are_kept_with_the_image_and_gate_publishing() {
    on_each_backend(|w| async move {
        let img = w.capture("alice", "no-os").await;
        let lint = |who, id: &str| {
            let (mut images, req) = (
                w.images.clone(),
                w.req(
                    As(who),
                    pb::ImageLintRequest {
                        image_id: id.into(),
                        host: "h1".into(),
                        ..Default::default()
                    },
                ),
            );
            async move { images.lint_image(req).await }
        };
        // An image another account cannot see is not found.
        assert_eq!(code(lint("bob", &img.id).await), Code::NotFound);
        let never = w.get("alice", &img.id).await.expect("image");
        assert!(never.lint.is_none() && never.linted_unix == 0, "{never:?}");

        let op = lint("alice", &img.id).await.expect("lint").into_inner();
        let done = w.wait(As("alice"), &op).await;
        assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
        let shown = w.get("alice", &img.id).await.expect("image");
        let report = shown.lint.expect("the report is kept");
        assert!(shown.linted_unix > 0);
        assert!(report.os.is_none(), "{report:?}");
        assert_eq!(report.findings[0].code, "os-unknown", "{report:?}");
        assert_eq!(report.findings[0].severity, pb::LintSeverity::Error as i32);

        // A deploy that would give it a fresh identity is refused at once.
        let deploy = |keep_identity| {
            let (mut images, req) = (
                w.images.clone(),
                w.req(
                    As("alice"),
                    pb::DeployImageRequest {
                        image_id: img.id.clone(),
                        host: "h1".into(),
                        guest_name: "fresh".into(),
                        keep_identity,
                        ..Default::default()
                    },
                ),
            );
            async move { images.deploy_image(req).await }
        };
        let refused = deploy(false).await.expect_err("no OS to generalize");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(refused.message().contains("--keep-identity"), "{refused:?}");
        let kept = deploy(true).await.expect("deploy").into_inner();
        let kept = w.wait(As("alice"), &kept).await;
        assert_eq!(kept.state, pb::OperationState::Succeeded as i32, "{kept:?}");

        let publish = |force| {
            let (mut images, req) = (
                w.images.clone(),
                w.req(
                    As("alice"),
                    pb::PublishImageRequest {
                        id: img.id.clone(),
                        force,
                    },
                ),
            );
            async move { images.publish_image(req).await }
        };
        let refused = publish(false).await.expect_err("lint errors");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(refused.message().contains("os-unknown"), "{refused:?}");
        let still = w.get("alice", &img.id).await.expect("image");
        assert_eq!(still.visibility, pb::Visibility::Private as i32);
        let forced = publish(true).await.expect("forced").into_inner();
        assert_eq!(forced.visibility, pb::Visibility::Public as i32);
    })
    .await;
}

/// With `--auto-lint`, a capture's image is linted on its host without
/// being asked: the report arrives on its own, from a lint operation of
/// the capturing account.
#[tokio::test(flavor = "multi_thread")]
async fn new_images_are_linted_when_the_daemon_lints_them() {
    on_each_backend(|w| async move {
        w.dispatcher.set_auto_lint(true);
        let img = w.capture("alice", "auto-linted").await;
        let report = until(
            "the new image's lint report",
            Duration::from_secs(120),
            || async { w.get("alice", &img.id).await.expect("image").lint },
        )
        .await;
        assert_eq!(report.findings[0].code, "os-unknown", "{report:?}");
        let ops = w
            .ops
            .clone()
            .list_operations(w.req(As("alice"), pb::ListDaemonOperationsRequest::default()))
            .await
            .expect("list")
            .into_inner()
            .operations;
        let lints: Vec<_> = ops
            .iter()
            .filter(|o| o.kind == "lint" && o.image_id == img.id)
            .collect();
        assert_eq!(lints.len(), 1, "{ops:?}");
        assert_eq!(lints[0].state, pb::OperationState::Succeeded as i32);
    })
    .await;
}
