//! Who may do what to an image: every image RPC as the owner, an account
//! it was shared with, a viewer of a public image, another account, no
//! token and a bad token.

use std::time::Duration;

use imprint_agent::hypervisor::PowerState;
use imprint_proto::v1 as pb;
use tonic::Code;

use super::world::{
    Caller::{self, As, BadToken, NoToken},
    World, code, on_each_backend,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capture_deploy_and_the_access_matrix() {
    on_each_backend(access_matrix_on).await;
}

async fn access_matrix_on(w: World) {
    let (s, public) = shared_and_public(&w).await;
    // (caller, image) for each role of the matrix.
    let roles: [(&str, Caller, &str); 6] = [
        ("owner", As("alice"), &s.id),
        ("shared-with", As("bob"), &s.id),
        ("public viewer", As("carol"), &public.id),
        ("other account", As("carol"), &s.id),
        ("no token", NoToken, &s.id),
        ("bad token", BadToken, &s.id),
    ];
    let mut deployed = 0;
    let mut failures = Vec::new();
    for (rpc, expect) in expected_codes() {
        // The owner goes last: its calls change the images.
        for i in [1, 2, 3, 4, 5, 0] {
            let (role, who, id) = roles[i];
            let got = call(&w, rpc, role, who, id.to_string(), &mut deployed).await;
            if got != expect[i] {
                failures.push(format!(
                    "{rpc} as {role}: got {got:?}, want {:?}",
                    expect[i]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "access matrix:\n{}",
        failures.join("\n")
    );
    after_the_owners_delete(&w, &s).await;
}

/// Alice captures the guest twice: S (shared with bob, who accepted) and
/// PUB (public).
async fn shared_and_public(w: &World) -> (pb::Image, pb::Image) {
    let s = w.capture("alice", "shared-img").await;
    assert_eq!(s.state, pb::ImageState::Active as i32);
    assert_eq!(s.disks.len(), 1);
    assert_eq!(s.disks[0].size_bytes, 8 << 20);
    assert_eq!(s.disks[0].sha256.len(), 64);
    assert_eq!(s.size_bytes, 8 << 20);
    assert_eq!(s.source_host, "h1");
    assert_eq!(s.source_guest, "a");
    assert!(s.config_json.contains("vcpus"), "{}", s.config_json);
    assert_eq!(
        w.hv.guests.lock().expect("lock")["a"].state,
        PowerState::Running
    );
    let public = w.capture("alice", "public-img").await;
    let mut images = w.images.clone();
    images
        .publish_image(w.req(
            As("alice"),
            pb::PublishImageRequest {
                id: public.id.clone(),
                force: false,
            },
        ))
        .await
        .expect("publish");
    images
        .share_image(w.req(
            As("alice"),
            pb::ShareImageRequest {
                id: s.id.clone(),
                accounts: vec!["bob".into()],
            },
        ))
        .await
        .expect("share");
    images
        .accept_share(w.req(As("bob"), pb::ShareDecisionRequest { id: s.id.clone() }))
        .await
        .expect("accept");

    // Both images hold the same chunks: nothing is exclusive to either.
    let mut freed = None;
    for _ in 0..50 {
        let img = w.get("alice", &s.id).await.expect("get");
        freed = Some(img.exclusive_bytes);
        if img.exclusive_bytes == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(freed, Some(0), "identical captures share every chunk");
    (s, public)
}

/// Each RPC's expected code for the roles owner, shared-with, public
/// viewer, other account, no token, bad token.
fn expected_codes() -> Vec<(&'static str, [Code; 6])> {
    let ok = Code::Ok;
    let (nf, pd, ua, fp) = (
        Code::NotFound,
        Code::PermissionDenied,
        Code::Unauthenticated,
        Code::FailedPrecondition,
    );
    vec![
        ("GetImage", [ok, ok, ok, nf, ua, ua]),
        ("ListImages", [ok, ok, ok, ok, ua, ua]),
        ("DeployImage", [ok, ok, ok, nf, ua, ua]),
        ("UpdateImage", [ok, pd, pd, nf, ua, ua]),
        ("SetProtected", [ok, pd, pd, nf, ua, ua]),
        ("DeprecateImage", [ok, pd, pd, nf, ua, ua]),
        ("ShareImage", [ok, pd, pd, nf, ua, ua]),
        ("UnshareImage", [ok, pd, pd, nf, ua, ua]),
        ("AcceptShare", [fp, ok, fp, nf, ua, ua]),
        ("RejectShare", [fp, ok, fp, nf, ua, ua]),
        ("PublishImage", [ok, pd, pd, nf, ua, ua]),
        ("UnpublishImage", [ok, pd, pd, nf, ua, ua]),
        ("DeleteImage", [ok, pd, pd, nf, ua, ua]),
    ]
}

/// `rpc` on image `id` as `who` (in the matrix as `role`); its code.
/// Deploys count in `deployed`, which names their guests.
async fn call(
    w: &World,
    rpc: &str,
    role: &str,
    who: Caller,
    id: String,
    deployed: &mut u32,
) -> Code {
    match rpc {
        "GetImage" => code(
            w.images
                .clone()
                .get_image(w.req(who, pb::GetImageRequest { id }))
                .await,
        ),
        "ListImages" => {
            let r = w.listed(who, &id).await;
            // Listed exactly when visible in lists.
            if let Ok(seen) = r {
                assert_eq!(seen, role != "other account", "{role} lists {id}");
            }
            code(r)
        }
        "DeployImage" => {
            *deployed += 1;
            deploy(w, role, who, id, *deployed).await
        }
        "AcceptShare" | "RejectShare" | "PublishImage" | "UnpublishImage" => {
            decide_and_publish(w, rpc, who, id).await
        }
        _ => change(w, rpc, who, id).await,
    }
}

/// A deploy of image `id` as guest `copy-{n}`, followed to its end when
/// accepted.
async fn deploy(w: &World, role: &str, who: Caller, id: String, n: u32) -> Code {
    let r = w
        .images
        .clone()
        .deploy_image(w.req(
            who,
            pb::DeployImageRequest {
                keep_identity: true,
                image_id: id,
                host: "h1".into(),
                guest_name: format!("copy-{n}"),
                disk_sizes_bytes: vec![16 << 20],
                ..Default::default()
            },
        ))
        .await;
    if let Ok(op) = &r {
        let done = w.wait(who, op.get_ref()).await;
        assert_eq!(
            done.state,
            pb::OperationState::Succeeded as i32,
            "{role}: {}",
            done.error
        );
        assert_eq!(done.deploy.expect("result").guest_name, format!("copy-{n}"));
    }
    code(r)
}

/// Share decisions and publishing; what succeeds is undone at once, for
/// the rows that follow.
async fn decide_and_publish(w: &World, rpc: &str, who: Caller, id: String) -> Code {
    let mut c = w.images.clone();
    match rpc {
        "AcceptShare" => code(
            c.accept_share(w.req(who, pb::ShareDecisionRequest { id }))
                .await,
        ),
        "RejectShare" => {
            let r = c
                .reject_share(w.req(who, pb::ShareDecisionRequest { id: id.clone() }))
                .await;
            if r.is_ok() {
                // Back to accepted for the rows that follow.
                c.accept_share(w.req(who, pb::ShareDecisionRequest { id }))
                    .await
                    .expect("accept again");
            }
            code(r)
        }
        "PublishImage" => {
            let r = c
                .publish_image(w.req(
                    who,
                    pb::PublishImageRequest {
                        id: id.clone(),
                        force: false,
                    },
                ))
                .await;
            if r.is_ok() {
                c.unpublish_image(w.req(who, pb::PublishImageRequest { id, force: false }))
                    .await
                    .expect("unpublish again");
            }
            code(r)
        }
        "UnpublishImage" => code(
            c.unpublish_image(w.req(who, pb::PublishImageRequest { id, force: false }))
                .await,
        ),
        other => unreachable!("{other}"),
    }
}

/// The owner's changes to an image: its fields, its members, its end.
async fn change(w: &World, rpc: &str, who: Caller, id: String) -> Code {
    let mut c = w.images.clone();
    let share = |id| pb::ShareImageRequest {
        id,
        accounts: vec!["dave".into()],
    };
    match rpc {
        "UpdateImage" => code(
            c.update_image(w.req(
                who,
                pb::UpdateImageRequest {
                    id,
                    update_mask: vec!["notes".into()],
                    notes: "checked".into(),
                    ..Default::default()
                },
            ))
            .await,
        ),
        "SetProtected" => code(
            c.set_protected(w.req(
                who,
                pb::SetProtectedRequest {
                    id,
                    protected: false,
                },
            ))
            .await,
        ),
        "DeprecateImage" => code(
            c.deprecate_image(w.req(
                who,
                pb::DeprecateImageRequest {
                    id,
                    deprecated: false,
                },
            ))
            .await,
        ),
        "ShareImage" => code(c.share_image(w.req(who, share(id))).await),
        "UnshareImage" => code(c.unshare_image(w.req(who, share(id))).await),
        "DeleteImage" => code(
            c.delete_image(w.req(
                who,
                pb::DeleteImageRequest {
                    id,
                    ..Default::default()
                },
            ))
            .await,
        ),
        other => unreachable!("{other}"),
    }
}

/// The owner's delete went through; bob's deploys stay his.
async fn after_the_owners_delete(w: &World, s: &pb::Image) {
    let nf = Code::NotFound;
    let ua = Code::Unauthenticated;
    // The owner's delete went through: gone for everyone, members included.
    assert_eq!(code(w.get("alice", &s.id).await), Code::NotFound);
    assert_eq!(code(w.get("bob", &s.id).await), Code::NotFound);
    // Operations belong to who started them.
    let (mine, _) = w
        .catalog
        .operations_of(
            &w.catalog.account_by_name("bob").await.expect("bob").id,
            false,
            10,
            None,
        )
        .await
        .expect("ops");
    let bobs = mine.first().expect("bob deployed").id.clone();
    let mut ops = w.ops.clone();
    assert_eq!(
        code(
            ops.get_operation(w.req(
                As("bob"),
                pb::GetDaemonOperationRequest { id: bobs.clone() }
            ))
            .await
        ),
        Code::Ok
    );
    for who in [As("carol"), NoToken, BadToken] {
        let want = if who == As("carol") { nf } else { ua };
        assert_eq!(
            code(
                ops.get_operation(w.req(who, pb::GetDaemonOperationRequest { id: bobs.clone() }))
                    .await
            ),
            want,
            "{who:?}"
        );
    }
}
