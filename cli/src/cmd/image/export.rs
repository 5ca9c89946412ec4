//! `image export`: one disk of an image as a new raw or qcow2 file on a
//! host.

use anyhow::Result;
use clap::Args;
use imprint_proto::v1 as pb;

use crate::{client::Api, enum_names, follow::op_result, output::Ctx};

/// `image export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    id: String,
    /// Host whose agent writes the file.
    #[arg(long)]
    host: String,
    /// Absolute path of the new file on that host.
    #[arg(long)]
    path: String,
    /// Disk number (0: the first).
    #[arg(long, default_value_t = 0)]
    disk: u32,
    /// raw or qcow2.
    #[arg(long = "disk-format", default_value = "raw")]
    disk_format: String,
    #[arg(long)]
    request_id: Option<String>,
    /// Wait until done, with progress; exit non-zero if it fails.
    #[arg(long)]
    wait: bool,
}

/// Run `image export`.
pub async fn run(api: &mut Api, ctx: &Ctx, a: ExportArgs) -> Result<u8> {
    let format = enum_names::disk_format(&a.disk_format)?;
    let req = pb::ExportImageRequest {
        request_id: a.request_id.unwrap_or_default(),
        image_id: a.id,
        host: a.host,
        disk: a.disk,
        path: a.path,
        format,
    };
    let op = api.images.export_image(req).await?.into_inner();
    op_result(api, ctx, op, a.wait).await
}
