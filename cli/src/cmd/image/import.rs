//! `image import`: a raw or qcow2 file on a host as a new image.

use anyhow::Result;
use clap::Args;
use imprint_proto::v1 as pb;

use crate::{client::Api, cmd::profile::HardwareArgs, enum_names, follow::op_result, output::Ctx};

/// `image import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Host whose agent reads the file.
    #[arg(long)]
    host: String,
    /// Absolute path on that host.
    #[arg(long)]
    path: String,
    /// Name of the new image.
    #[arg(long)]
    name: String,
    /// raw or qcow2 (default: detect).
    #[arg(long = "disk-format")]
    disk_format: Option<String>,
    #[arg(long, default_value = "")]
    notes: String,
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[arg(long)]
    request_id: Option<String>,
    /// Wait until done, with progress; exit non-zero if it fails.
    #[arg(long)]
    wait: bool,
    /// Hardware profile of the new image (flags below go over it;
    /// without either: BIOS, one virtio disk and NIC, 1 vCPU, 1 GiB).
    #[arg(long)]
    profile: Option<String>,
    #[command(flatten)]
    hardware: HardwareArgs,
}

/// Run `image import`.
pub async fn run(api: &mut Api, ctx: &Ctx, a: ImportArgs) -> Result<u8> {
    let format = match a.disk_format.as_deref() {
        None => pb::DiskFormat::Unspecified as i32,
        Some(f) => enum_names::disk_format(f)?,
    };
    let req = pb::ImportImageRequest {
        request_id: a.request_id.unwrap_or_default(),
        host: a.host,
        path: a.path,
        format,
        name: a.name,
        notes: a.notes,
        tags: a.tags,
        profile: a.profile.unwrap_or_default(),
        hardware: Some(a.hardware.to_pb("")),
    };
    let op = api.images.import_image(req).await?.into_inner();
    op_result(api, ctx, op, a.wait).await
}
