//! Users' clients of the daemon's API, for the end-to-end tests.

use std::time::Duration;

use imprint_proto::v1::{
    self as pb, image_service_client::ImageServiceClient,
    operation_service_client::OperationServiceClient,
};
use tonic::{
    Request, Status,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

use crate::authed;

/// Adds the bearer token to every call.
pub type Auth = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send + Sync>;

/// A user's clients of one daemon.
pub struct Api {
    /// Images.
    pub images: ImageServiceClient<InterceptedService<Channel, Auth>>,
    /// Operations.
    pub ops: OperationServiceClient<InterceptedService<Channel, Auth>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Api")
    }
}

/// Clients of the daemon at `endpoint` calling with `token`.
pub fn api(endpoint: &str, token: &str) -> Api {
    let ch = Endpoint::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect_lazy();
    let auth = |token: String| -> Auth {
        let value: tonic::metadata::MetadataValue<_> =
            format!("Bearer {token}").parse().expect("ascii");
        Box::new(move |mut r: Request<()>| {
            r.metadata_mut().insert("authorization", value.clone());
            Ok(r)
        })
    };
    Api {
        images: ImageServiceClient::with_interceptor(ch.clone(), auth(token.into())),
        ops: OperationServiceClient::with_interceptor(ch, auth(token.into())),
    }
}

impl Api {
    /// GetImage.
    pub async fn image(&mut self, id: &str) -> Result<pb::Image, Status> {
        self.images
            .get_image(pb::GetImageRequest { id: id.into() })
            .await
            .map(tonic::Response::into_inner)
    }

    /// CaptureImage of `guest` on `host` as `name` (90 s to shut down),
    /// with an optional request id; the operation as the call answered.
    pub async fn capture(
        &mut self,
        host: &str,
        guest: &str,
        name: &str,
        request_id: &str,
    ) -> Result<pb::Operation, Status> {
        self.images
            .capture_image(pb::CaptureImageRequest {
                request_id: request_id.into(),
                host: host.into(),
                guest: guest.into(),
                name: name.into(),
                shutdown_timeout_seconds: 90,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Follow an operation to its end through the daemon (reconnecting
    /// while the daemon restarts); returns the final state and the phases.
    pub async fn wait(&mut self, id: &str) -> (pb::Operation, Vec<String>) {
        let mut phases: Vec<String> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "operation {id} never ended"
            );
            let stream = self
                .ops
                .watch_operation(pb::GetDaemonOperationRequest { id: id.into() })
                .await;
            let Ok(stream) = stream else {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            };
            let mut stream = stream.into_inner();
            while let Ok(Some(op)) = stream.message().await {
                if phases.last() != Some(&op.phase) {
                    phases.push(op.phase.clone());
                }
                if op.state != pb::OperationState::Running as i32 {
                    return (op, phases);
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Wait until host `host` is registered and alive at the daemon at
/// `endpoint`.
pub async fn registered(endpoint: &str, host: &str, token: &str) {
    let mut hosts = pb::host_service_client::HostServiceClient::connect(endpoint.to_string())
        .await
        .expect("connect");
    for _ in 0..100 {
        let list = hosts
            .list_hosts(authed(token, pb::ListHostsRequest {}))
            .await
            .expect("hosts")
            .into_inner()
            .hosts;
        if list.iter().any(|h| h.name == host && h.alive) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the agent never registered");
}
