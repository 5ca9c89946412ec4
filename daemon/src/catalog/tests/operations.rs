//! Operations: idempotent by request id, final once, excluding deletes
//! of the images they read, leased to one daemon at a time.

use crate::catalog::*;
use crate::domain::{OpKind, OpState};
use crate::testpg::catalogs;

#[tokio::test]
async fn operations_are_idempotent_and_final() {
    for (_b, c) in catalogs().await {
        let op = retried_requests_find_their_operation(&c).await;
        finished_operations_are_final(&c, &op).await;
    }
}

/// Alice's operation for request req-1 (a capture on h1), begun twice;
/// bob's under the same request id is another one.
async fn retried_requests_find_their_operation(c: &Catalog) -> OperationRow {
    let (alice, _) = c.create_account("alice", false, false).await.expect("a");
    let (bob, _) = c.create_account("bob", false, false).await.expect("b");
    let n = NewOperation {
        account_id: &alice.id,
        request_id: Some("req-1"),
        kind: OpKind::Capture,
        image_id: None,
        host: "h1",
        guest: "g1",
        agent_request: "",
        new_image: None,
    };
    let (op, new) = c.begin_operation(&n).await.expect("begin");
    assert!(new);
    assert_eq!(op.state, OpState::Running);
    let (again, new) = c.begin_operation(&n).await.expect("retry");
    assert!(!new, "a retried request finds its operation");
    assert_eq!(again.id, op.id);
    // Request ids are per account.
    let (other, new) = c
        .begin_operation(&NewOperation {
            account_id: &bob.id,
            guest: "g2",
            ..n.clone()
        })
        .await
        .expect("bob");
    assert!(new);
    assert_ne!(other.id, op.id);
    // Same id for another kind of call is a client bug.
    let err = c
        .begin_operation(&NewOperation {
            kind: OpKind::Deploy,
            ..n.clone()
        })
        .await
        .expect_err("kind");
    assert!(matches!(err, CatalogError::Exists(_)));
    op
}

/// `op` moves while it runs, then finishes once and stays as it ended.
async fn finished_operations_are_final(c: &Catalog, op: &OperationRow) {
    c.update_progress(&op.id, "reading disks", 10, 100, 5.0)
        .await
        .expect("progress");
    let cur = c.operation(&op.id).await.expect("get");
    assert_eq!(
        (cur.phase.as_str(), cur.bytes_done, cur.bytes_total),
        ("reading disks", 10, 100)
    );
    assert_eq!(c.running_operations().await.expect("running").len(), 2);
    assert!(
        c.finish_operation(
            &op.id,
            OpState::Succeeded,
            "",
            0,
            "{\"image_id\":\"x\"}",
            &ImageOutcome::None
        )
        .await
        .expect("finish")
    );
    assert!(
        !c.finish_operation(&op.id, OpState::Failed, "late", 2, "", &ImageOutcome::None)
            .await
            .expect("again"),
        "final once"
    );
    let done = c.operation(&op.id).await.expect("get");
    assert_eq!(done.state, OpState::Succeeded);
    assert_eq!(done.result, "{\"image_id\":\"x\"}");
    c.update_progress(&op.id, "ignored", 1, 1, 0.0)
        .await
        .expect("progress");
    assert_eq!(
        c.operation(&op.id).await.expect("get").phase,
        "done",
        "a finished operation does not move"
    );
    assert!(matches!(
        c.operation("nope").await,
        Err(CatalogError::NotFound(_))
    ));
    assert!(matches!(
        c.finish_operation(&op.id, OpState::Running, "", 0, "", &ImageOutcome::None)
            .await,
        Err(CatalogError::Invalid(_))
    ));
}

#[tokio::test]
async fn deletes_and_readers_exclude_each_other() {
    for (_b, c) in catalogs().await {
        let (alice, _) = c.create_account("alice", false, false).await.expect("a");
        let img = uuid::Uuid::new_v4().to_string();
        c.insert_image(&img, &alice, "web", "", &[])
            .await
            .expect("insert");
        c.set_image_state(&img, ImageState::Active, "", 1 << 20)
            .await
            .expect("active");
        let deploy = |kind: OpKind| NewOperation {
            account_id: "",
            request_id: None,
            kind,
            image_id: None,
            host: "h1",
            guest: "g",
            agent_request: "",
            new_image: None,
        };
        let (op, _) = c
            .begin_operation(&NewOperation {
                account_id: &alice.id,
                image_id: Some(&img),
                ..deploy(OpKind::Deploy)
            })
            .await
            .expect("deploy");
        // A running reader blocks the delete, and the refusal changes
        // nothing.
        assert!(matches!(
            c.begin_delete(&alice, &img).await,
            Err(CatalogError::WrongState(_))
        ));
        assert_eq!(
            c.get_image(&alice, &img).await.expect("img").state,
            ImageState::Active
        );
        c.finish_operation(&op.id, OpState::Succeeded, "", 0, "", &ImageOutcome::None)
            .await
            .expect("finish");
        assert_eq!(
            c.begin_delete(&alice, &img).await.expect("delete"),
            ImageState::Active
        );
        // Once deleting, no new reader gets in.
        for kind in [OpKind::Deploy, OpKind::Export] {
            assert!(matches!(
                c.begin_operation(&NewOperation {
                    account_id: &alice.id,
                    image_id: Some(&img),
                    ..deploy(kind)
                })
                .await,
                Err(CatalogError::WrongState(_))
            ));
        }
        c.mark_deleted(&img).await.expect("deleted");
        assert!(matches!(
            c.get_image(&alice, &img).await,
            Err(CatalogError::NotFound(_))
        ));
    }
}

#[tokio::test]
async fn leases_pass_to_another_daemon_only_when_they_expire() {
    for (_b, c) in catalogs().await {
        let one = c.clone().with_daemon_id("daemon-1");
        let two = c.clone().with_daemon_id("daemon-2");
        let (alice, _) = one.create_account("alice", false, false).await.expect("a");
        let n = NewOperation {
            account_id: &alice.id,
            request_id: None,
            kind: OpKind::Deploy,
            image_id: None,
            host: "h1",
            guest: "g1",
            agent_request: "",
            new_image: None,
        };
        let (op, _) = one.begin_operation(&n).await.expect("begin");
        assert_eq!(op.lease_owner, "daemon-1", "the creating daemon drives it");
        assert!(op.lease_until > now());
        // Alive: renewing keeps it; the other daemon cannot take it.
        assert_eq!(
            one.renew_leases().await.expect("renew"),
            vec![op.id.clone()]
        );
        assert!(two.claim_operations(true).await.expect("claim").is_empty());
        assert!(two.renew_leases().await.expect("renew").is_empty());
        // A restarted daemon 1 (same name) takes its own back at once.
        let mine = one.claim_operations(true).await.expect("own");
        assert_eq!(mine.len(), 1);
        assert!(one.claim_operations(false).await.expect("none").is_empty());

        // Daemon 1 dies: its lease runs out, daemon 2 claims it once.
        sqlx::query("UPDATE operations SET lease_until = $1 WHERE id = $2")
            .bind(now() - 1)
            .bind(&op.id)
            .execute(c.pool())
            .await
            .expect("expire");
        let taken = two.claim_operations(false).await.expect("claim");
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].lease_owner, "daemon-2");
        assert!(two.claim_operations(false).await.expect("again").is_empty());
        // Daemon 1 comes back from a stall: it no longer holds it.
        assert!(one.renew_leases().await.expect("renew").is_empty());
        assert!(one.claim_operations(false).await.expect("claim").is_empty());
        // Finished operations are nobody's.
        one.finish_operation(&op.id, OpState::Succeeded, "", 0, "", &ImageOutcome::None)
            .await
            .expect("finish");
        assert!(two.renew_leases().await.expect("renew").is_empty());
    }
}
