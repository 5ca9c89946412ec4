//! `OperationService`: follow, list and cancel operations.
//!
//! An account sees the operations it started (admins see all); any other
//! id answers NOT_FOUND.

use std::{pin::Pin, sync::Arc, time::Duration};

use imprint_proto::v1::{self as pb, operation_service_server::OperationService};
use prost::Message;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::{
    auth,
    catalog::OperationRow,
    catalog::{Account, Catalog},
    dispatch::Dispatcher,
    error::DaemonError,
};

/// The API's view of an operation row.
pub fn op_to_pb(op: &OperationRow) -> pb::Operation {
    let state = pb::OperationState::from(op.state);
    // The agent's final report, when there is one.
    let result = hex::decode(&op.result)
        .ok()
        .and_then(|b| pb::AgentOperation::decode(b.as_slice()).ok());
    let running = op.running();
    let eta = if running && op.rate_bps > 0.0 && op.bytes_total > op.bytes_done {
        (op.bytes_total - op.bytes_done) as f64 / op.rate_bps
    } else {
        0.0
    };
    let image_id = match (&result, &op.image_id) {
        (_, Some(id)) => id.clone(),
        (Some(r), None) => r
            .capture
            .as_ref()
            .map(|c| c.image_id.clone())
            .unwrap_or_default(),
        _ => String::new(),
    };
    pb::Operation {
        id: op.id.clone(),
        kind: op.kind.as_str().to_string(),
        state: state as i32,
        phase: op.phase.clone(),
        bytes_done: crate::catalog::unsigned(op.bytes_done),
        bytes_total: crate::catalog::unsigned(op.bytes_total),
        rate_bytes_per_second: if running { op.rate_bps } else { 0.0 },
        eta_seconds: eta,
        image_id,
        host: op.host.clone(),
        error: op.error.clone(),
        error_code: op.error_code,
        capture: result.as_ref().and_then(|r| r.capture.clone()),
        deploy: result.as_ref().and_then(|r| r.deploy.clone()),
        export: result.as_ref().and_then(|r| r.export.clone()),
        copy: result.as_ref().and_then(|r| r.copy),
        delete_guest: result.as_ref().and_then(|r| r.delete_guest.clone()),
        request_id: op.request_id.clone().unwrap_or_default(),
        created_unix: op.created_unix,
        updated_unix: op.updated_unix,
        finished_unix: op.finished_unix,
    }
}

/// The service.
#[derive(Debug, Clone)]
pub struct Operations {
    d: Arc<Dispatcher>,
}

impl Operations {
    /// Over the dispatcher (and its catalog).
    pub fn new(d: Arc<Dispatcher>) -> Self {
        Self { d }
    }

    fn catalog(&self) -> &Catalog {
        self.d.catalog()
    }

    async fn visible(&self, who: &Account, id: &str) -> Result<OperationRow, DaemonError> {
        let not_found = || DaemonError::not_found(format!("operation {id} not found"));
        match self.catalog().operation(id).await {
            Ok(op) if op.account_id == who.id || who.is_admin => Ok(op),
            Ok(_) => Err(not_found()),
            Err(crate::catalog::CatalogError::NotFound(_)) => Err(not_found()),
            Err(e) => Err(e.into()),
        }
    }
}

type OpStream = Pin<Box<dyn Stream<Item = Result<pb::Operation, Status>> + Send>>;

#[tonic::async_trait]
impl OperationService for Operations {
    async fn get_operation(
        &self,
        req: Request<pb::GetDaemonOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let op = self.visible(&who, &req.into_inner().id).await?;
        Ok(Response::new(op_to_pb(&op)))
    }

    async fn list_operations(
        &self,
        req: Request<pb::ListDaemonOperationsRequest>,
    ) -> Result<Response<pb::ListDaemonOperationsResponse>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let r = req.into_inner();
        let (ops, next) = self
            .catalog()
            .operations_of(
                &who.id,
                r.running_only,
                r.page_size,
                Some(r.page_token.as_str()),
            )
            .await?;
        Ok(Response::new(pb::ListDaemonOperationsResponse {
            operations: ops.iter().map(op_to_pb).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    type WatchOperationStream = OpStream;

    async fn watch_operation(
        &self,
        req: Request<pb::GetDaemonOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let first = self.visible(&who, &req.into_inner().id).await?;
        let d = self.d.clone();
        let mut changed = d.subscribe();
        let stream = async_stream(move |tx| async move {
            let mut last = op_to_pb(&first);
            if tx.send(Ok(last.clone())).await.is_err() || !first.running() {
                return;
            }
            loop {
                // Woken by this daemon's changes; re-read anyway every
                // second for changes made by another daemon.
                tokio::select! {
                    _ = tokio::time::timeout(Duration::from_secs(1), changed.changed()) => {}
                    // The client went away: stop reading the catalog for it.
                    () = tx.closed() => return,
                }
                let op = match d.catalog().operation(&first.id).await {
                    Ok(op) => op,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let now = op_to_pb(&op);
                if now != last {
                    last = now.clone();
                    if tx.send(Ok(now)).await.is_err() {
                        return;
                    }
                }
                if !op.running() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn cancel_operation(
        &self,
        req: Request<pb::GetDaemonOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let who = auth::account(self.catalog(), &req).await?;
        let op = self.visible(&who, &req.into_inner().id).await?;
        if op.running() {
            self.d.cancel(&op).await?;
            tracing::info!(op = %op.id, account = %who.name, "cancel requested");
        }
        // Cancelling a finished operation changes nothing.
        let op = self.catalog().operation(&op.id).await?;
        Ok(Response::new(op_to_pb(&op)))
    }
}

/// A stream fed by a task through a small channel (the task ends when the
/// client goes away).
fn async_stream<F, Fut>(f: F) -> OpStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::Operation, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
