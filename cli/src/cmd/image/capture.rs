//! `image capture`: a guest into a new image (offline, live with frozen
//! filesystems, or crash-consistent).

use anyhow::Result;
use clap::Args;
use imprint_proto::v1 as pb;

use crate::{client::Api, follow::op_result, output::Ctx};

/// `image capture`.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Host the guest runs on.
    #[arg(long)]
    host: String,
    /// Guest (libvirt name or UUID).
    #[arg(long)]
    guest: String,
    /// Name of the new image.
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "")]
    notes: String,
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Leave this disk out (target device, e.g. vdb; repeat).
    #[arg(long = "exclude-disk")]
    exclude_disks: Vec<String>,
    /// Seconds to wait for the ACPI shutdown.
    #[arg(long, default_value_t = 300)]
    shutdown_timeout: u32,
    /// Force the guest off after the timeout (otherwise fail, guest left running).
    #[arg(long)]
    force_off: bool,
    /// Capture a running guest without shutting it down: its guest agent
    /// (qemu-guest-agent) freezes the filesystems while the point-in-time
    /// view is taken. A guest without a responding agent is refused.
    #[arg(long, conflicts_with_all = ["crash_consistent", "force_off"])]
    live: bool,
    /// Capture a running guest without shutting it down or freezing it
    /// (as after a power cut; for guests without an agent).
    #[arg(long, conflicts_with = "force_off")]
    crash_consistent: bool,
    /// With --live: the longest the filesystems may stay frozen, in
    /// seconds (default: the agent's, 10).
    #[arg(long, requires = "live", value_parser = clap::value_parser!(u32).range(1..=3600))]
    freeze_timeout: Option<u32>,
    /// Store the image generalized (machine-id emptied, SSH host keys,
    /// cloud-init state, logs... removed; the guest itself is untouched):
    /// every deploy starts fresh, even with --keep-identity, and skips its
    /// own generalization.
    #[arg(long)]
    seal: bool,
    /// Idempotency key: a retry with the same key returns the same operation.
    #[arg(long)]
    request_id: Option<String>,
    /// Wait until done, with progress; exit non-zero if it fails.
    #[arg(long)]
    wait: bool,
}

impl CaptureArgs {
    fn mode(&self) -> pb::CaptureMode {
        match (self.live, self.crash_consistent) {
            (true, _) => pb::CaptureMode::Live,
            (false, true) => pb::CaptureMode::CrashConsistent,
            (false, false) => pb::CaptureMode::Offline,
        }
    }
}

/// Run `image capture`.
pub async fn run(api: &mut Api, ctx: &Ctx, a: CaptureArgs) -> Result<u8> {
    let mode = a.mode().into();
    let req = pb::CaptureImageRequest {
        request_id: a.request_id.unwrap_or_default(),
        host: a.host,
        guest: a.guest,
        name: a.name,
        notes: a.notes,
        tags: a.tags,
        exclude_disks: a.exclude_disks,
        shutdown_timeout_seconds: a.shutdown_timeout,
        allow_force_off: a.force_off,
        mode,
        freeze_timeout_seconds: a.freeze_timeout.unwrap_or(0),
        seal: a.seal,
    };
    let op = api.images.capture_image(req).await?.into_inner();
    op_result(api, ctx, op, a.wait).await
}
