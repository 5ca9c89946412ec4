//! Guests belong to accounts: who may capture a guest, whose a deployed
//! guest is, what each account lists, and how admins assign guests.

use imprint_proto::v1 as pb;
use tonic::Code;

use super::world::{
    Caller::{self, As, BadToken, NoToken},
    World, code, on_each_backend,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guests_belong_to_accounts() {
    on_each_backend(guests_on).await;
}

async fn guests_on(w: World) {
    foreign_guests_look_missing(&w).await;
    owners_and_admins_capture(&w).await;
    deployed_guests_are_the_deployers(&w).await;
    admins_assign_guests(&w).await;
    unassigned_guests_are_adopted(&w).await;
}

/// A capture of guest a on h1 as `name`.
fn capture_a(name: &str) -> pb::CaptureImageRequest {
    pb::CaptureImageRequest {
        host: "h1".into(),
        guest: "a".into(),
        name: name.into(),
        ..Default::default()
    }
}

/// How many operations account `name` started.
async fn ops_of(w: &World, name: &'static str) -> usize {
    let id = w.catalog.account_by_name(name).await.expect("account").id;
    w.catalog
        .operations_of(&id, false, 100, None)
        .await
        .expect("ops")
        .0
        .len()
}

/// The guests on h1 `who` sees.
async fn list(w: &World, who: Caller) -> Result<Vec<pb::HostGuest>, tonic::Status> {
    let r = w.req(who, pb::ListHostGuestsRequest { host: "h1".into() });
    w.guests_client()
        .list_guests(r)
        .await
        .map(|r| r.into_inner().guests)
}

/// (name, owner) of `gs`, sorted.
fn names(gs: Vec<pb::HostGuest>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = gs.into_iter().map(|g| (g.name, g.owner)).collect();
    v.sort();
    v
}

/// `who` assigns `guests` on h1 (or, with `all`, every unowned one) to
/// `account`; the guests assigned.
async fn assign(
    w: &World,
    who: Caller,
    guests: &[&str],
    account: &str,
    all: bool,
) -> Result<Vec<pb::HostGuest>, tonic::Status> {
    let r = w.req(
        who,
        pb::AssignGuestsRequest {
            host: "h1".into(),
            guests: guests.iter().map(|s| s.to_string()).collect(),
            account: account.into(),
            all_unowned: all,
        },
    );
    w.guests_client()
        .assign_guests(r)
        .await
        .map(|r| r.into_inner().guests)
}

/// Capture of guest a (alice's): bob and carol are allowed on the host but
/// do not own it, dave is not allowed there; all see NOT_FOUND, with the
/// same words as for a guest that does not exist.
async fn foreign_guests_look_missing(w: &World) {
    let mut c = w.images.clone();
    for who in ["bob", "carol", "dave"] {
        let e = c
            .capture_image(w.req(As(who), capture_a("stolen")))
            .await
            .expect_err("not theirs");
        assert_eq!(e.code(), Code::NotFound, "{who}: {}", e.message());
    }
    let missing = c
        .capture_image(w.req(
            As("bob"),
            pb::CaptureImageRequest {
                guest: "zz".into(),
                ..capture_a("x")
            },
        ))
        .await
        .expect_err("missing");
    let foreign = c
        .capture_image(w.req(As("bob"), capture_a("x")))
        .await
        .expect_err("foreign");
    assert_eq!(
        missing
            .message()
            .replace("\"zz\"", "G")
            .replace(" zz ", " G "),
        foreign
            .message()
            .replace("\"a\"", "G")
            .replace(" a ", " G "),
        "a foreign guest looks like a missing one"
    );
    // Refused calls changed nothing (an image comes with its operation).
    for who in ["bob", "carol", "dave"] {
        assert_eq!(
            ops_of(w, who).await,
            0,
            "{who}: refused captures leave no row"
        );
    }
}

/// The owner and an admin may capture it.
async fn owners_and_admins_capture(w: &World) {
    w.capture("alice", "mine").await;
    let op = w
        .images
        .clone()
        .capture_image(w.req(As("root"), capture_a("by-admin")))
        .await
        .expect("admin captures any guest")
        .into_inner();
    let done = w.wait(As("root"), &op).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
}

/// A deployed guest belongs to the account that deployed it.
async fn deployed_guests_are_the_deployers(w: &World) {
    let mut c = w.images.clone();
    let img = w.capture("alice", "base").await;
    c.publish_image(w.req(
        As("alice"),
        pb::PublishImageRequest {
            id: img.id.clone(),
            force: false,
        },
    ))
    .await
    .expect("publish");
    let op = c
        .deploy_image(w.req(
            As("bob"),
            pb::DeployImageRequest {
                keep_identity: true,
                image_id: img.id.clone(),
                host: "h1".into(),
                guest_name: "bobs".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("deploy")
        .into_inner();
    let done = w.wait(As("bob"), &op).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    each_lists_its_own(w).await;
    // Bob may capture his guest; alice may not.
    let e = c
        .capture_image(w.req(
            As("alice"),
            pb::CaptureImageRequest {
                guest: "bobs".into(),
                ..capture_a("x")
            },
        ))
        .await
        .expect_err("bob's");
    assert_eq!(e.code(), Code::NotFound);
}

/// Each account lists its guests on h1, an admin all of them.
async fn each_lists_its_own(w: &World) {
    assert_eq!(
        names(list(w, As("alice")).await.expect("alice")),
        [("a".into(), "alice".into())]
    );
    assert_eq!(
        names(list(w, As("bob")).await.expect("bob")),
        [("bobs".into(), "bob".into())]
    );
    assert_eq!(list(w, As("carol")).await.expect("carol"), []);
    assert_eq!(
        names(list(w, As("root")).await.expect("root")),
        [("a".into(), "alice".into()), ("bobs".into(), "bob".into())]
    );
    assert_eq!(
        code(list(w, As("dave")).await),
        Code::NotFound,
        "host not granted"
    );
    assert_eq!(code(list(w, NoToken).await), Code::Unauthenticated);
    assert_eq!(code(list(w, BadToken).await), Code::Unauthenticated);
}

/// Assigning: admins only; every name must resolve or nothing changes.
async fn admins_assign_guests(w: &World) {
    assert_eq!(
        code(assign(w, As("alice"), &["a"], "bob", false).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(assign(w, NoToken, &["a"], "bob", false).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(assign(w, As("root"), &["a", "nope"], "bob", false).await),
        Code::NotFound
    );
    assert_eq!(
        code(assign(w, As("root"), &["a"], "nobody", false).await),
        Code::NotFound
    );
    assert_eq!(
        code(assign(w, As("root"), &[], "bob", false).await),
        Code::InvalidArgument
    );
    assert_eq!(
        names(list(w, As("alice")).await.expect("unchanged")),
        [("a".into(), "alice".into())]
    );
    let moved = assign(w, As("root"), &["a"], "carol", false)
        .await
        .expect("assign");
    assert_eq!(names(moved), [("a".into(), "carol".into())]);
    assert_eq!(list(w, As("alice")).await.expect("alice"), []);
    let e = w
        .images
        .clone()
        .capture_image(w.req(As("alice"), capture_a("x")))
        .await
        .expect_err("no longer alice's");
    assert_eq!(e.code(), Code::NotFound);
}

/// Unassign: nobody's; the bulk form adopts every guest nobody owns.
async fn unassigned_guests_are_adopted(w: &World) {
    let mut g = w.guests_client();
    let e = g
        .unassign_guest(w.req(
            As("carol"),
            pb::UnassignGuestRequest {
                host: "h1".into(),
                guest: "a".into(),
            },
        ))
        .await
        .expect_err("admins only");
    assert_eq!(e.code(), Code::PermissionDenied);
    g.unassign_guest(w.req(
        As("root"),
        pb::UnassignGuestRequest {
            host: "h1".into(),
            guest: "a".into(),
        },
    ))
    .await
    .expect("unassign");
    assert_eq!(list(w, As("carol")).await.expect("carol"), []);
    let adopted = assign(w, As("root"), &[], "dave", true)
        .await
        .expect("bulk");
    assert_eq!(
        names(adopted),
        [("a".into(), "dave".into())],
        "only the unowned guest"
    );
    assert_eq!(
        names(list(w, As("root")).await.expect("root")),
        [("a".into(), "dave".into()), ("bobs".into(), "bob".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guests_are_deleted_by_their_owners() {
    on_each_backend(delete_on).await;
}

/// `who` deletes guest `guest` of `host`, with `request_id`.
async fn delete(
    w: &World,
    who: Caller,
    host: &str,
    guest: &str,
    request_id: &str,
) -> Result<pb::Operation, tonic::Status> {
    let r = w.req(
        who,
        pb::DeleteGuestRequest {
            request_id: request_id.into(),
            host: host.into(),
            guest: guest.into(),
        },
    );
    w.guests_client()
        .delete_guest(r)
        .await
        .map(tonic::Response::into_inner)
}

async fn delete_on(w: World) {
    use crate::{catalog::NewOperation, domain::OpKind};

    let img = w.capture("alice", "base").await;
    let deployed = w
        .deploy_as_alice(pb::DeployImageRequest {
            keep_identity: true,
            image_id: img.id.clone(),
            host: "h1".into(),
            guest_name: "web".into(),
            ..Default::default()
        })
        .await
        .expect("deploy");
    let d = deployed.deploy.expect("deploy result");
    assert_eq!(d.volumes.len(), 2, "disk and seed: {d:?}");
    let ops_before = ops_of(&w, "alice").await;

    // Refused, nothing changed: bad input, unknown host, a guest the
    // caller cannot see (the same words as a missing one).
    for (host, guest) in [("", "web"), ("h1", ""), ("h1", "a/b"), ("h1", "x\ny")] {
        assert_eq!(
            code(delete(&w, As("alice"), host, guest, "").await),
            Code::InvalidArgument,
            "{host:?} {guest:?}"
        );
    }
    assert_eq!(
        code(delete(&w, As("alice"), "h9", "web", "").await),
        Code::NotFound
    );
    assert_eq!(
        code(delete(&w, NoToken, "h1", "web", "").await),
        Code::Unauthenticated
    );
    let missing = delete(&w, As("bob"), "h1", "zz", "")
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
    for who in ["bob", "carol", "dave"] {
        let e = delete(&w, As(who), "h1", "web", "")
            .await
            .expect_err("not theirs");
        assert_eq!(e.code(), Code::NotFound, "{who}: {}", e.message());
        if who == "bob" {
            assert_eq!(
                e.message().replace("\"web\"", "G").replace(" web ", " G "),
                missing
                    .message()
                    .replace("\"zz\"", "G")
                    .replace(" zz ", " G "),
                "a foreign guest looks like a missing one"
            );
        }
        assert_eq!(ops_of(&w, who).await, 0, "{who}: refused, no row");
    }

    // A guest a capture or a deploy works on: FAILED_PRECONDITION.
    let alice = w.catalog.account_by_name("alice").await.expect("alice").id;
    for (kind, guest, asked) in [
        (OpKind::Capture, d.guest_uuid.as_str(), "web"),
        (OpKind::Deploy, "web", "web"),
    ] {
        let (busy, _) = w
            .catalog
            .begin_operation(&NewOperation {
                account_id: &alice,
                request_id: None,
                kind,
                image_id: None,
                host: "h1",
                guest,
                agent_request: "",
                new_image: None,
            })
            .await
            .expect("a running operation");
        let e = delete(&w, As("alice"), "h1", asked, "")
            .await
            .expect_err("busy");
        assert_eq!(
            e.code(),
            Code::FailedPrecondition,
            "{kind}: {}",
            e.message()
        );
        assert!(e.message().contains(&busy.id), "{}", e.message());
        w.catalog
            .finish_operation(
                &busy.id,
                crate::domain::OpState::Failed,
                "test",
                Code::Aborted as i32,
                "",
                &crate::catalog::ImageOutcome::None,
            )
            .await
            .expect("end it");
    }
    assert_eq!(
        ops_of(&w, "alice").await,
        ops_before + 2,
        "only the test's rows"
    );
    assert!(w.hv.guests.lock().expect("lock").contains_key("web"));

    // The owner deletes it: an operation like the others; volumes, guest
    // and ownership go. A retry with the same request id is the same one.
    let op = delete(&w, As("alice"), "h1", "web", "del-web")
        .await
        .expect("delete");
    assert_eq!(op.kind, "delete-guest");
    assert_eq!(op.host, "h1");
    let again = delete(&w, As("alice"), "h1", "web", "del-web")
        .await
        .expect("retry");
    assert_eq!(again.id, op.id);
    let done = w.wait(As("alice"), &op).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let r = done.delete_guest.expect("delete result");
    assert_eq!(r.guest_name, "web");
    assert_eq!(r.guest_uuid, d.guest_uuid);
    assert!(!r.already_gone);
    let mut deleted = r.deleted_volumes.clone();
    deleted.sort();
    let mut made = d.volumes.clone();
    made.sort();
    assert_eq!(deleted, made);
    for v in &d.volumes {
        assert!(!std::path::Path::new(v).exists(), "{v} deleted");
    }
    assert!(!w.hv.guests.lock().expect("lock").contains_key("web"));
    assert_eq!(
        names(list(&w, As("root")).await.expect("root")),
        [("a".into(), "alice".into())],
        "its ownership record went"
    );
    assert!(
        w.catalog
            .guest_owners("h1")
            .await
            .expect("owners")
            .values()
            .all(|o| o.uuid != d.guest_uuid)
    );
    let listed = w
        .ops
        .clone()
        .list_operations(w.req(
            As("alice"),
            pb::ListDaemonOperationsRequest {
                page_size: 100,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner()
        .operations;
    assert!(
        listed
            .iter()
            .any(|o| o.id == op.id && o.kind == "delete-guest")
    );
    // Gone: NOT_FOUND now.
    assert_eq!(
        code(delete(&w, As("alice"), "h1", "web", "").await),
        Code::NotFound
    );

    // An admin deletes any guest: a (alice's, running) is forced off; its
    // disk is no pool volume, so it stays and is named.
    let op = delete(&w, As("root"), "h1", "a", "").await.expect("admin");
    let done = w.wait(As("root"), &op).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let r = done.delete_guest.expect("result");
    assert!(r.forced_off);
    assert!(r.deleted_volumes.is_empty());
    assert_eq!(r.left_disks.len(), 1, "{:?}", r.left_disks);
    assert!(r.left_disks[0].contains("a.raw"), "{:?}", r.left_disks);
    assert!(w.tmp.path().join("a.raw").exists(), "left in place");
    assert!(w.hv.guests.lock().expect("lock").is_empty());
}
