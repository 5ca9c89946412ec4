//! `imprint op ...`: the daemon's long-running operations (captures,
//! deploys, imports, exports, copies, deletes), and how one is printed.

use anyhow::Result;
use clap::Subcommand;
use imprint_proto::v1 as pb;
use serde_json::{Value, json};

use crate::{
    client::Api,
    enum_names::{capture_mode_name, op_state_name},
    follow::op_result,
    output::{self, Ctx},
};

/// `imprint op ...`
#[derive(Debug, Subcommand)]
pub enum OpCommand {
    /// Your operations, newest first.
    List {
        /// Only running ones.
        #[arg(long)]
        running: bool,
        #[arg(long, default_value_t = 50)]
        page_size: u32,
    },
    /// One operation.
    Show { id: String },
    /// Follow an operation until it ends (exit non-zero if it fails).
    Watch { id: String },
    /// Cancel a running operation.
    Cancel { id: String },
}

/// Run an operation command.
pub async fn run(cmd: OpCommand, api: &mut Api, ctx: &Ctx) -> Result<u8> {
    match cmd {
        OpCommand::List { running, page_size } => list(api, ctx, running, page_size).await,
        OpCommand::Show { id } => show(api, ctx, id, false).await,
        OpCommand::Watch { id } => show(api, ctx, id, true).await,
        OpCommand::Cancel { id } => {
            let req = pb::GetDaemonOperationRequest { id };
            let o = api.ops.cancel_operation(req).await?.into_inner();
            ctx.emit(&op_json(&o), || op_fields(&o))?;
            Ok(0)
        }
    }
}

/// `op show`; with `wait`, `op watch`.
async fn show(api: &mut Api, ctx: &Ctx, id: String, wait: bool) -> Result<u8> {
    let req = pb::GetDaemonOperationRequest { id };
    let o = api.ops.get_operation(req).await?.into_inner();
    op_result(api, ctx, o, wait).await
}

/// `op list`.
async fn list(api: &mut Api, ctx: &Ctx, running: bool, page_size: u32) -> Result<u8> {
    let r = api
        .ops
        .list_operations(pb::ListDaemonOperationsRequest {
            page_size,
            page_token: String::new(),
            running_only: running,
        })
        .await?
        .into_inner();
    let doc = json!({
        "operations": r.operations.iter().map(op_json).collect::<Vec<_>>(),
        "next_page_token": r.next_page_token,
    });
    ctx.emit(&doc, || {
        let rows: Vec<Vec<String>> = r
            .operations
            .iter()
            .map(|o| {
                vec![
                    o.id.clone(),
                    o.kind.clone(),
                    op_state_name(o.state),
                    o.phase.clone(),
                    o.host.clone(),
                    o.image_id.clone(),
                ]
            })
            .collect();
        output::table(&["ID", "KIND", "STATE", "PHASE", "HOST", "IMAGE"], &rows)
    })?;
    Ok(0)
}

/// An operation as JSON (field names are the proto's).
pub fn op_json(o: &pb::Operation) -> Value {
    let capture = o.capture.as_ref().map(|c| {
        json!({
            "image_id": c.image_id, "bytes_total": c.bytes_total, "bytes_read": c.bytes_read,
            "bytes_stored": c.bytes_stored, "bytes_deduplicated": c.bytes_deduplicated,
            "zero_bytes_skipped": c.zero_bytes_skipped, "shutdown_seconds": c.shutdown_seconds,
            "read_seconds": c.read_seconds, "boot_seconds": c.boot_seconds,
            "downtime_seconds": c.downtime_seconds, "point_in_time": c.point_in_time,
            "mode": capture_mode_name(c.mode), "freeze_seconds": c.freeze_seconds,
            "incremental_parent": c.incremental_parent, "full_read_reason": c.full_read_reason,
            "bytes_reused": c.bytes_reused,
        })
    });
    let deploy = o.deploy.as_ref().map(|d| {
        json!({
            "guest_name": d.guest_name, "guest_uuid": d.guest_uuid, "volumes": d.volumes,
            "mac_addresses": d.mac_addresses, "bytes_written": d.bytes_written,
            "write_seconds": d.write_seconds, "started": d.started,
        })
    });
    json!({
        "id": o.id, "kind": o.kind, "state": op_state_name(o.state), "phase": o.phase,
        "bytes_done": o.bytes_done, "bytes_total": o.bytes_total,
        "rate_bytes_per_second": o.rate_bytes_per_second, "eta_seconds": o.eta_seconds,
        "image_id": o.image_id, "host": o.host, "error": o.error, "error_code": o.error_code,
        "capture": capture, "deploy": deploy, "request_id": o.request_id,
        "export": o.export.as_ref().map(|e| json!({"path": e.path, "size_bytes": e.size_bytes})),
        "copy": o.copy.as_ref().map(|c| json!({
            "chunks_total": c.chunks_total, "chunks_sent": c.chunks_sent, "chunks_present": c.chunks_present,
            "bytes_sent": c.bytes_sent, "image_size_bytes": c.image_size_bytes,
            "bytes_verified": c.bytes_verified, "seconds": c.seconds,
        })),
        "delete_guest": o.delete_guest.as_ref().map(|d| json!({
            "guest_name": d.guest_name, "guest_uuid": d.guest_uuid,
            "deleted_volumes": d.deleted_volumes, "left_disks": d.left_disks,
            "already_gone": d.already_gone, "forced_off": d.forced_off,
        })),
        "created_unix": o.created_unix, "updated_unix": o.updated_unix, "finished_unix": o.finished_unix,
    })
}

/// An operation as `key: value` lines.
pub fn op_fields(o: &pb::Operation) -> String {
    let mut f = vec![
        ("id", o.id.clone()),
        ("kind", o.kind.clone()),
        ("state", op_state_name(o.state)),
        ("phase", o.phase.clone()),
        (
            "progress",
            format!(
                "{} / {}",
                output::bytes(o.bytes_done),
                output::bytes(o.bytes_total)
            ),
        ),
        ("image", o.image_id.clone()),
        ("host", o.host.clone()),
    ];
    if !o.error.is_empty() {
        f.push(("error", o.error.clone()));
    }
    if let Some(c) = &o.capture {
        f.push((
            "captured",
            format!(
                "{} read, {} stored, {} deduplicated; {}{}",
                output::bytes(c.bytes_read),
                output::bytes(c.bytes_stored),
                output::bytes(c.bytes_deduplicated),
                match pb::CaptureMode::try_from(c.mode) {
                    Ok(pb::CaptureMode::Live) =>
                        format!("live, filesystems frozen {:.2} s", c.freeze_seconds),
                    Ok(pb::CaptureMode::CrashConsistent) => "live, crash-consistent".to_string(),
                    _ => format!("downtime {:.1} s", c.downtime_seconds),
                },
                if c.point_in_time {
                    format!(" (disks read in {:.1} s while it ran)", c.read_seconds)
                } else {
                    String::new()
                }
            ),
        ));
        if !c.incremental_parent.is_empty() {
            f.push((
                "incremental",
                format!(
                    "from image {}: {} unchanged, reused unread",
                    c.incremental_parent,
                    output::bytes(c.bytes_reused)
                ),
            ));
        }
        if !c.full_read_reason.is_empty() {
            f.push(("full read", c.full_read_reason.clone()));
        }
    }
    if let Some(d) = &o.deploy {
        f.push((
            "deployed",
            format!(
                "guest {} ({}), {} written, started: {}",
                d.guest_name,
                d.guest_uuid,
                output::bytes(d.bytes_written),
                d.started
            ),
        ));
    }
    if let Some(d) = &o.delete_guest {
        let what = if d.already_gone {
            format!("guest {}: did not exist (deleted already)", d.guest_name)
        } else {
            format!(
                "guest {} ({}){}, {} volume(s) deleted",
                d.guest_name,
                d.guest_uuid,
                if d.forced_off { " forced off" } else { "" },
                d.deleted_volumes.len()
            )
        };
        f.push(("deleted", what));
        for v in &d.deleted_volumes {
            f.push(("volume deleted", v.clone()));
        }
        for l in &d.left_disks {
            f.push(("disk left", l.clone()));
        }
    }
    output::fields(&f)
}
