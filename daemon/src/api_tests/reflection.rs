//! Server reflection answers, in both protocol versions, with exactly the
//! services the daemon serves.

use crate::testpg::catalogs;

use super::world::world;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::{v1, v1alpha};
    let (_b, c) = catalogs().await.into_iter().next().expect("sqlite");
    let w = world(c).await;
    let ch = w.channel.clone();
    let mut seen = Vec::new();
    // v1 (current clients) ...
    let mut r1 = v1::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut s = r1
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection v1")
        .into_inner();
    if let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) = s
        .message()
        .await
        .expect("answer")
        .and_then(|m| m.message_response)
    {
        seen.push(l.service.into_iter().map(|s| s.name).collect::<Vec<_>>());
    }
    // ... and v1alpha (grpcurl, older clients).
    let mut ra = v1alpha::server_reflection_client::ServerReflectionClient::new(ch);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut s = ra
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    if let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) = s
        .message()
        .await
        .expect("answer")
        .and_then(|m| m.message_response)
    {
        seen.push(l.service.into_iter().map(|s| s.name).collect::<Vec<_>>());
    }
    assert_eq!(seen.len(), 2, "both versions answer");
    for mut names in seen {
        names.sort();
        // Exactly what the daemon serves: not the agent's API, whose
        // messages share the descriptor set.
        let mut want: Vec<&str> = crate::server::SERVED.to_vec();
        want.sort();
        names.retain(|n| !n.starts_with("grpc.reflection."));
        assert_eq!(names, want);
        assert!(!names.iter().any(|n| n == "imprint.v1.AgentService"));
    }
}
