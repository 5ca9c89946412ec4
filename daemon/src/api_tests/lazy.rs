//! The daemon's default for deploys that do not say whether they are lazy
//! (`--lazy-deploys`): lazy where a lazy deploy can be (the guest starts,
//! on a pool of files), written first elsewhere; an explicit `false`
//! writes first.

use imprint_proto::v1 as pb;

use super::world::on_each_backend;

#[tokio::test(flavor = "multi_thread")]
async fn unsaid_deploys_are_lazy_where_they_can_be() {
    on_each_backend(|w| async move {
        w.dispatcher.set_lazy_deploys(true);
        let img = w.capture("alice", "lazy-default").await;
        let deploy = |name: &str, start: bool, lazy: Option<bool>| pb::DeployImageRequest {
            keep_identity: true,
            image_id: img.id.clone(),
            host: "h1".into(),
            guest_name: name.into(),
            start,
            lazy,
            ..Default::default()
        };
        // Which guests' disks were filled by a copy job (lazy deploys).
        let copied = |name: &str| {
            w.hv.copies_started
                .lock()
                .expect("lock")
                .iter()
                .any(|(_, t, _)| t.path.contains(&format!("/{name}-")))
        };
        for (name, start, lazy, want) in [
            ("unsaid-started", true, None, true),
            ("unsaid-stopped", false, None, false),
            ("said-full", true, Some(false), false),
            ("said-lazy", true, Some(true), true),
        ] {
            let done = w
                .deploy_as_alice(deploy(name, start, lazy))
                .await
                .expect("deploy");
            assert_eq!(
                done.state,
                pb::OperationState::Succeeded as i32,
                "{name}: {}",
                done.error
            );
            assert_eq!(copied(name), want, "{name} lazy");
        }
        // Off: only a deploy asking for it is lazy.
        w.dispatcher.set_lazy_deploys(false);
        let done = w
            .deploy_as_alice(deploy("default-off", true, None))
            .await
            .expect("deploy");
        assert_eq!(
            done.state,
            pb::OperationState::Succeeded as i32,
            "{}",
            done.error
        );
        assert!(!copied("default-off"));
    })
    .await;
}
