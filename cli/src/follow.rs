//! Operations as command results: follow one to its end with a progress
//! line (`--wait`, `op watch`), print it, and exit like it ended.

use std::time::Duration;

use anyhow::Result;
use imprint_proto::v1 as pb;

use crate::{
    client::Api,
    cmd::op::{op_fields, op_json},
    enum_names::op_state_name,
    exit,
    output::{self, Ctx},
    progress::Progress,
};

/// Follow an operation with a progress line; the final state.
pub async fn follow(api: &mut Api, ctx: &Ctx, id: &str) -> Result<pb::Operation> {
    let mut progress = Progress::new("", ctx.quiet);
    let mut last: Option<pb::Operation> = None;
    loop {
        let stream = api
            .ops
            .watch_operation(pb::GetDaemonOperationRequest { id: id.into() })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(e) if e.code() == tonic::Code::Unavailable && last.is_some() => {
                // The daemon restarted: follow on once it is back.
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // The stream ends early when the daemon restarts: watch again.
        while let Ok(Some(o)) = stream.message().await {
            if o.state != pb::OperationState::Running as i32 {
                progress.set_label(&format!("{} {}", o.kind, op_state_name(o.state)));
                progress.finish_at(o.bytes_done, o.bytes_total, "");
                return Ok(o);
            }
            progress.set_label(&o.phase);
            progress.update_with_rate(
                o.bytes_done,
                o.bytes_total,
                o.rate_bytes_per_second,
                o.eta_seconds,
            );
            last = Some(o);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Print an operation; with `wait`, follow it first and fail like it did.
pub async fn op_result(api: &mut Api, ctx: &Ctx, op: pb::Operation, wait: bool) -> Result<u8> {
    let op = if wait && op.state == pb::OperationState::Running as i32 {
        follow(api, ctx, &op.id).await?
    } else {
        op
    };
    ctx.emit(&op_json(&op), || op_fields(&op))?;
    // The table already shows the error; JSON on stdout is for scripts, so
    // people get the one line on stderr there.
    Ok(op_exit(&op, ctx.format != output::Format::Table))
}

/// The exit code of an ended operation: 0, or its error's class.
fn op_exit(op: &pb::Operation, say_error: bool) -> u8 {
    match pb::OperationState::try_from(op.state) {
        Ok(pb::OperationState::Failed | pb::OperationState::Cancelled) => {
            if say_error {
                eprintln!(
                    "imprint: operation {} {}: {}",
                    op.id,
                    op_state_name(op.state),
                    op.error
                );
            }
            exit::for_code(tonic::Code::from_i32(op.error_code))
        }
        _ => 0,
    }
}
