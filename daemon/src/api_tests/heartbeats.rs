//! Heartbeats: an agent reporting operations the catalog already ended
//! is told to cancel them.

use imprint_proto::v1 as pb;
use tonic::{Code, Request};

use super::world::{World, on_each_backend};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heartbeats_cancel_what_the_catalog_ended() {
    on_each_backend(heartbeats_on).await;
}

async fn heartbeats_on(w: World) {
    let token = w.catalog.add_host_token("h1").await.expect("token");
    let alice = w.catalog.account_by_name("alice").await.expect("alice");
    let new_op = |host: &'static str| crate::catalog::NewOperation {
        account_id: &alice.id,
        request_id: None,
        kind: crate::domain::OpKind::Deploy,
        image_id: None,
        host,
        guest: "g",
        agent_request: "",
        new_image: None,
    };
    // The reaper failed this one while h1 was silent; it still runs there.
    let (reaped, _) = w.catalog.begin_operation(&new_op("h1")).await.expect("op");
    w.catalog
        .finish_operation(
            &reaped.id,
            crate::domain::OpState::Failed,
            "host h1 stopped heartbeating",
            Code::Unavailable as i32,
            "",
            &crate::catalog::ImageOutcome::None,
        )
        .await
        .expect("fail");
    let (running, _) = w.catalog.begin_operation(&new_op("h1")).await.expect("op");
    let (elsewhere, _) = w.catalog.begin_operation(&new_op("h2")).await.expect("op");
    w.catalog
        .finish_operation(
            &elsewhere.id,
            crate::domain::OpState::Failed,
            "x",
            Code::Unavailable as i32,
            "",
            &crate::catalog::ImageOutcome::None,
        )
        .await
        .expect("fail");
    let mut hosts = pb::host_service_client::HostServiceClient::new(w.channel.clone());
    let mut req = Request::new(pb::HeartbeatRequest {
        name: "h1".into(),
        running_operation_ids: vec![
            reaped.id.clone(),
            running.id.clone(),
            elsewhere.id.clone(),
            "not-an-operation".into(),
        ],
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    let r = hosts.heartbeat(req).await.expect("heartbeat").into_inner();
    assert_eq!(r.cancel_operation_ids, [reaped.id], "only h1's ended one");
}
