//! Bad input is refused with a code and a message, and changes nothing:
//! captures and deploys, list pages, changes to images, retried requests,
//! and a guest that ignores ACPI.

use imprint_agent::hypervisor::PowerState;
use imprint_proto::v1 as pb;
use tonic::Code;

use super::world::{Caller::As, World, on_each_backend};

/// A capture of `guest` on `host` as image `name`.
fn capture(name: &str, guest: &str, host: &str) -> pb::CaptureImageRequest {
    pb::CaptureImageRequest {
        host: host.into(),
        guest: guest.into(),
        name: name.into(),
        ..Default::default()
    }
}

/// Captures refused for what they name: (what, code, caller, request).
fn captures_of_bad_targets() -> Vec<(&'static str, Code, &'static str, pb::CaptureImageRequest)> {
    vec![
        (
            "empty name",
            Code::InvalidArgument,
            "alice",
            capture("", "a", "h1"),
        ),
        (
            "over-long name",
            Code::InvalidArgument,
            "alice",
            capture(&"n".repeat(300), "a", "h1"),
        ),
        (
            "unknown guest",
            Code::NotFound,
            "alice",
            capture("x", "nope", "h1"),
        ),
        (
            "unknown host",
            Code::NotFound,
            "alice",
            capture("x", "a", "h9"),
        ),
        (
            "host not granted",
            Code::NotFound,
            "dave",
            capture("x", "a", "h1"),
        ),
    ]
}

/// Captures refused for how they ask: (what, code, caller, request).
fn captures_of_bad_modes() -> Vec<(&'static str, Code, &'static str, pb::CaptureImageRequest)> {
    vec![
        (
            "unknown capture mode",
            Code::InvalidArgument,
            "alice",
            pb::CaptureImageRequest {
                mode: 99,
                ..capture("x", "a", "h1")
            },
        ),
        (
            "a freeze bound without a live capture",
            Code::InvalidArgument,
            "alice",
            pb::CaptureImageRequest {
                freeze_timeout_seconds: 5,
                ..capture("x", "a", "h1")
            },
        ),
        (
            "a freeze bound over an hour",
            Code::InvalidArgument,
            "alice",
            pb::CaptureImageRequest {
                mode: pb::CaptureMode::Live as i32,
                freeze_timeout_seconds: 7200,
                ..capture("x", "a", "h1")
            },
        ),
        (
            "live capture of a guest without a guest agent (the agent refuses)",
            Code::FailedPrecondition,
            "alice",
            pb::CaptureImageRequest {
                mode: pb::CaptureMode::Live as i32,
                ..capture("x", "a", "h1")
            },
        ),
    ]
}

/// Deploys of `img` refused for their image or disks: (what, code,
/// request).
fn deploys_of_bad_disks(img: &pb::Image) -> Vec<(&'static str, Code, pb::DeployImageRequest)> {
    let base = deploy_of(img);
    vec![
        (
            "unknown image",
            Code::NotFound,
            pb::DeployImageRequest {
                keep_identity: true,
                image_id: uuid::Uuid::new_v4().to_string(),
                ..base.clone()
            },
        ),
        (
            "disk smaller than the image",
            Code::InvalidArgument,
            pb::DeployImageRequest {
                keep_identity: true,
                disk_sizes_bytes: vec![1 << 20],
                ..base.clone()
            },
        ),
        (
            "more sizes than disks",
            Code::InvalidArgument,
            pb::DeployImageRequest {
                keep_identity: true,
                disk_sizes_bytes: vec![0, 1 << 30],
                ..base.clone()
            },
        ),
    ]
}

/// Deploys of `img` refused for the guest they describe: (what, code,
/// request).
fn deploys_of_bad_guests(img: &pb::Image) -> Vec<(&'static str, Code, pb::DeployImageRequest)> {
    let base = deploy_of(img);
    vec![
        (
            "bad guest name",
            Code::InvalidArgument,
            pb::DeployImageRequest {
                keep_identity: true,
                guest_name: "-rf /".into(),
                ..base.clone()
            },
        ),
        (
            "existing guest name (the agent refuses)",
            Code::AlreadyExists,
            pb::DeployImageRequest {
                keep_identity: true,
                guest_name: "a".into(),
                ..base.clone()
            },
        ),
        (
            "bad static address (the agent refuses)",
            Code::InvalidArgument,
            pb::DeployImageRequest {
                keep_identity: true,
                network: Some(pb::NetworkConfig {
                    hostname: String::new(),
                    interfaces: vec![pb::InterfaceConfig {
                        addresses: vec!["300.1.1.1/24".into()],
                        ..Default::default()
                    }],
                }),
                ..base.clone()
            },
        ),
        (
            "too much memory",
            Code::InvalidArgument,
            pb::DeployImageRequest {
                keep_identity: true,
                memory_mib: u64::MAX,
                ..base.clone()
            },
        ),
    ]
}

/// A deploy of `img` on h1 as guest x.
fn deploy_of(img: &pb::Image) -> pb::DeployImageRequest {
    pb::DeployImageRequest {
        keep_identity: true,
        image_id: img.id.clone(),
        host: "h1".into(),
        guest_name: "x".into(),
        ..Default::default()
    }
}

/// `got` is a refusal with code `want` and a message.
fn refused(what: &str, want: Code, got: Result<tonic::Response<pb::Operation>, tonic::Status>) {
    match got {
        Ok(op) => panic!("{what}: accepted as operation {}", op.get_ref().id),
        Err(s) => {
            assert_eq!(s.code(), want, "{what}: {}", s.message());
            assert!(!s.message().is_empty(), "{what}: a message");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_and_changes_nothing() {
    on_each_backend(bad_captures_and_deploys_on).await;
}

async fn bad_captures_and_deploys_on(w: World) {
    let img = w.capture("alice", "base").await;
    let mut c = w.images.clone();
    let before = w.listed(As("alice"), &img.id).await.expect("list");
    assert!(before);
    for (what, want, who, r) in captures_of_bad_targets()
        .into_iter()
        .chain(captures_of_bad_modes())
    {
        refused(what, want, c.capture_image(w.req(As(who), r)).await);
    }
    for (what, want, r) in deploys_of_bad_disks(&img)
        .into_iter()
        .chain(deploys_of_bad_guests(&img))
    {
        refused(what, want, c.deploy_image(w.req(As("alice"), r)).await);
    }
    let ops_after = w
        .catalog
        .operations_of(
            &w.catalog.account_by_name("alice").await.expect("a").id,
            false,
            100,
            None,
        )
        .await
        .expect("ops")
        .0;
    assert_eq!(
        ops_after.len(),
        1,
        "refused calls leave no operation behind"
    );
    assert!(w.hv.guests.lock().expect("lock").len() == 1, "and no guest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lists_refuse_bad_tokens_orders_and_sizes() {
    on_each_backend(lists_on).await;
}

/// Lists: malformed tokens, tokens of another order, bad sizes.
async fn lists_on(w: World) {
    w.capture("alice", "base").await;
    let mut c = w.images.clone();
    let list = |token: &str, order: &str, size: u32| pb::ListImagesRequest {
        page_token: token.into(),
        order_by: order.into(),
        page_size: size,
        ..Default::default()
    };
    for (what, r) in [
        ("garbage token", list("zz", "", 0)),
        ("unknown order", list("", "size_desc", 0)),
        ("page too big", list("", "", 5000)),
    ] {
        let e = c.list_images(w.req(As("alice"), r)).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}");
    }
    for _ in 0..2 {
        w.capture("alice", "more").await;
    }
    let page = c
        .list_images(w.req(As("alice"), list("", "name_asc", 2)))
        .await
        .expect("page")
        .into_inner();
    assert_eq!(
        page.images
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        ["base", "more"]
    );
    let e = c
        .list_images(w.req(As("alice"), list(&page.next_page_token, "created_desc", 2)))
        .await
        .expect_err("token of another order");
    assert_eq!(e.code(), Code::InvalidArgument);
    let rest = c
        .list_images(w.req(As("alice"), list(&page.next_page_token, "name_asc", 2)))
        .await
        .expect("next page")
        .into_inner();
    assert_eq!(rest.images.len(), 1);
    assert_eq!(rest.images[0].name, "more");
    assert!(rest.next_page_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_changes_leave_the_image_as_it_was() {
    on_each_backend(refused_changes_on).await;
}

async fn refused_changes_on(w: World) {
    let img = w.capture("alice", "base").await;
    refused_sharing_and_updates(&w, &img).await;
    protected_images_are_not_deleted(&w, &img).await;
}

/// Sharing with an unknown account, publishing without the right, unknown
/// update fields: refused, image unchanged.
async fn refused_sharing_and_updates(w: &World, img: &pb::Image) {
    let mut c = w.images.clone();
    let e = c
        .share_image(w.req(
            As("alice"),
            pb::ShareImageRequest {
                id: img.id.clone(),
                accounts: vec!["bob".into(), "nobody".into()],
            },
        ))
        .await
        .expect_err("unknown account");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("nobody"), "{}", e.message());
    assert!(
        w.get("alice", &img.id)
            .await
            .expect("get")
            .members
            .is_empty()
    );
    c.share_image(w.req(
        As("alice"),
        pb::ShareImageRequest {
            id: img.id.clone(),
            accounts: vec!["bob".into()],
        },
    ))
    .await
    .expect("share");
    let e = c
        .publish_image(w.req(
            As("bob"),
            pb::PublishImageRequest {
                id: img.id.clone(),
                force: false,
            },
        ))
        .await
        .expect_err("not the owner");
    assert_eq!(e.code(), Code::PermissionDenied);
    let update = |mask: &str, tags: Vec<String>| pb::UpdateImageRequest {
        id: img.id.clone(),
        update_mask: vec![mask.into()],
        tags,
        ..Default::default()
    };
    let e = c
        .update_image(w.req(As("alice"), update("owner", vec![])))
        .await
        .expect_err("unknown field");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .update_image(w.req(As("alice"), update("tags", vec!["has space".into()])))
        .await
        .expect_err("bad tag");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(w.get("alice", &img.id).await.expect("get").tags, ["base"]);
}

/// Protected images are not deleted.
async fn protected_images_are_not_deleted(w: &World, img: &pb::Image) {
    let mut c = w.images.clone();
    c.set_protected(w.req(
        As("alice"),
        pb::SetProtectedRequest {
            id: img.id.clone(),
            protected: true,
        },
    ))
    .await
    .expect("protect");
    let e = c
        .delete_image(w.req(
            As("alice"),
            pb::DeleteImageRequest {
                id: img.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("protected");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        w.get("alice", &img.id).await.expect("still there").state,
        pb::ImageState::Active as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_captures_run_once() {
    on_each_backend(retried_captures_on).await;
}

/// A retried capture with the same request id runs once; the id cannot
/// name another call.
async fn retried_captures_on(w: World) {
    let img = w.capture("alice", "base").await;
    let mut c = w.images.clone();
    let nightly = || pb::CaptureImageRequest {
        request_id: "nightly-2026-11-27".into(),
        ..capture("nightly", "a", "h1")
    };
    let first = c
        .capture_image(w.req(As("alice"), nightly()))
        .await
        .expect("capture")
        .into_inner();
    let again = c
        .capture_image(w.req(As("alice"), nightly()))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(again.id, first.id, "same operation");
    assert_eq!(again.image_id, first.image_id, "same image");
    let done = w.wait(As("alice"), &first).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let e = c
        .deploy_image(w.req(
            As("alice"),
            pb::DeployImageRequest {
                keep_identity: true,
                request_id: "nightly-2026-11-27".into(),
                ..deploy_of(&img)
            },
        ))
        .await
        .expect_err("request id reused for another call");
    assert_eq!(e.code(), Code::AlreadyExists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guest_ignoring_acpi_fails_its_capture_and_keeps_running() {
    on_each_backend(stubborn_guest_on).await;
}

/// A guest that ignores ACPI: while its capture waits, a second capture of
/// it is refused; then the first fails (no force-off), the guest stays up
/// and the image is FAILED with the reason, and cannot be deployed.
async fn stubborn_guest_on(w: World) {
    let mut c = w.images.clone();
    w.hv.guests
        .lock()
        .expect("lock")
        .get_mut("a")
        .expect("a")
        .obeys_acpi = false;
    let slow = c
        .capture_image(w.req(
            As("alice"),
            pb::CaptureImageRequest {
                shutdown_timeout_seconds: 2,
                ..capture("stubborn", "a", "h1")
            },
        ))
        .await
        .expect("capture")
        .into_inner();
    let e = c
        .capture_image(w.req(As("root"), capture("second", "a-uuid", "h1")))
        .await
        .expect_err("one capture per guest");
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains(&slow.id), "{}", e.message());
    let done = w.wait(As("alice"), &slow).await;
    assert_eq!(done.state, pb::OperationState::Failed as i32);
    assert_eq!(
        done.error_code,
        Code::DeadlineExceeded as i32,
        "{}",
        done.error
    );
    let failed = w.get("alice", &slow.image_id).await.expect("image");
    assert_eq!(failed.state, pb::ImageState::Failed as i32);
    assert!(
        failed.failure_reason.contains("left running"),
        "{}",
        failed.failure_reason
    );
    assert_eq!(
        w.hv.guests.lock().expect("lock")["a"].state,
        PowerState::Running
    );
    let e = c
        .deploy_image(w.req(
            As("alice"),
            pb::DeployImageRequest {
                keep_identity: true,
                image_id: slow.image_id.clone(),
                host: "h1".into(),
                guest_name: "x".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("failed image");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("failed"), "{}", e.message());
}
