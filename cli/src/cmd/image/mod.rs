//! `imprint image ...`: images in the daemon's catalog.
//!
//! The commands with many flags each have a file named after them
//! (`capture`, `deploy`, `import`, `export`, `list`, `update`); the ones
//! that are one call (show, copy, delete, protect, share, publish...) are
//! here. `view` prints an image.

mod capture;
mod deploy;
mod export;
mod import;
mod list;
mod update;
mod view;

use anyhow::Result;
use clap::Subcommand;
use imprint_proto::v1 as pb;

use crate::{client::Api, follow::op_result, output::Ctx};

/// `imprint image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Images you can see, newest first.
    List(list::ListArgs),
    /// One image.
    Show { id: String },
    /// Capture a guest into a new image.
    Capture(capture::CaptureArgs),
    /// Deploy an image as a new guest.
    Deploy(deploy::DeployArgs),
    /// Import a raw or qcow2 file lying on a host (in its agent's transfer
    /// directory) as a new image.
    Import(import::ImportArgs),
    /// Write one disk of an image to a new raw or qcow2 file on a host.
    Export(export::ExportArgs),
    /// Copy an image to another site's store (only the chunks it lacks
    /// are sent; the copy is checked there).
    Copy {
        id: String,
        /// Target site.
        #[arg(long)]
        site: String,
        #[arg(long)]
        request_id: Option<String>,
        /// Wait until done, with progress; exit non-zero if it fails.
        #[arg(long)]
        wait: bool,
    },
    /// Drop the copy of an image at one site (not its last copy).
    RemoveLocation {
        id: String,
        #[arg(long)]
        site: String,
    },
    /// Change name, notes or tags.
    Update(update::UpdateArgs),
    /// Delete an image (its chunks are reclaimed by GC unless shared).
    Delete {
        id: String,
        /// Idempotency key.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Protect an image from deletion (`--off` to lift it).
    Protect {
        id: String,
        #[arg(long)]
        off: bool,
    },
    /// Mark an image deprecated (`--undo`: active again).
    Deprecate {
        id: String,
        #[arg(long)]
        undo: bool,
    },
    /// Share with accounts.
    Share {
        id: String,
        #[arg(required = true)]
        accounts: Vec<String>,
    },
    /// Stop sharing with accounts.
    Unshare {
        id: String,
        #[arg(required = true)]
        accounts: Vec<String>,
    },
    /// Accept an image shared with you (it then shows in your lists).
    Accept { id: String },
    /// Reject an image shared with you.
    Reject { id: String },
    /// Read an image on a host without booting it, for what its deploys
    /// will meet (cloud-init, virtio, fstab, serial console...); prints
    /// the report, kept with the image (`image show`). Exit 0 even when it
    /// finds errors: they are the report.
    Lint {
        id: String,
        /// Host whose agent reads it (default: the only one you may use).
        #[arg(long, default_value = "")]
        host: String,
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Make an image public (needs the publish right). Refused when its
    /// last lint found errors, unless --force.
    Publish {
        id: String,
        #[arg(long)]
        force: bool,
    },
    /// Make a public image private (or shared) again.
    Unpublish { id: String },
}

/// `image lint`: run it, wait, print the report.
async fn lint(
    api: &mut Api,
    ctx: &Ctx,
    id: String,
    host: String,
    request_id: String,
) -> Result<u8> {
    let req = pb::ImageLintRequest {
        request_id,
        image_id: id.clone(),
        host,
    };
    let op = api.images.lint_image(req).await?.into_inner();
    let op = crate::follow::follow(api, ctx, &op.id).await?;
    if op.state != pb::OperationState::Succeeded as i32 {
        return op_result(api, ctx, op, false).await;
    }
    let img = api
        .images
        .get_image(pb::GetImageRequest { id })
        .await?
        .into_inner();
    let report = img.lint.unwrap_or_default();
    ctx.emit(&view::lint_json(&report), || {
        view::lint_lines(&report).join("\n")
    })?;
    Ok(0)
}

/// Run an image command.
pub async fn run(cmd: ImageCommand, api: &mut Api, ctx: &Ctx) -> Result<u8> {
    use ImageCommand as C;
    let images = &mut api.images;
    let answer = match cmd {
        // Commands with their own file.
        C::List(a) => return list::run(api, ctx, a).await,
        C::Capture(a) => return capture::run(api, ctx, a).await,
        C::Deploy(a) => return deploy::run(api, ctx, a).await,
        C::Import(a) => return import::run(api, ctx, a).await,
        C::Export(a) => return export::run(api, ctx, a).await,
        C::Update(a) => return update::run(api, ctx, a).await,
        // One call answered with an operation.
        C::Copy {
            id,
            site,
            request_id,
            wait,
        } => {
            let request_id = request_id.unwrap_or_default();
            let req = pb::CopyImageRequest {
                request_id,
                image_id: id,
                site,
            };
            let op = images.copy_image(req).await?.into_inner();
            return op_result(api, ctx, op, wait).await;
        }
        C::Delete { id, request_id } => {
            let request_id = request_id.unwrap_or_default();
            let req = pb::DeleteImageRequest { request_id, id };
            let op = images.delete_image(req).await?.into_inner();
            return op_result(api, ctx, op, true).await;
        }
        // One call answered with the image.
        C::Show { id } => images.get_image(pb::GetImageRequest { id }).await,
        C::RemoveLocation { id, site } => {
            let req = pb::RemoveImageLocationRequest { image_id: id, site };
            images.remove_image_location(req).await
        }
        C::Protect { id, off } => {
            let req = pb::SetProtectedRequest {
                id,
                protected: !off,
            };
            images.set_protected(req).await
        }
        C::Deprecate { id, undo } => {
            let req = pb::DeprecateImageRequest {
                id,
                deprecated: !undo,
            };
            images.deprecate_image(req).await
        }
        C::Share { id, accounts } => {
            let req = pb::ShareImageRequest { id, accounts };
            images.share_image(req).await
        }
        C::Unshare { id, accounts } => {
            let req = pb::ShareImageRequest { id, accounts };
            images.unshare_image(req).await
        }
        C::Accept { id } => images.accept_share(pb::ShareDecisionRequest { id }).await,
        C::Reject { id } => images.reject_share(pb::ShareDecisionRequest { id }).await,
        C::Publish { id, force } => {
            images
                .publish_image(pb::PublishImageRequest { id, force })
                .await
        }
        C::Unpublish { id } => {
            let req = pb::PublishImageRequest { id, force: false };
            images.unpublish_image(req).await
        }
        C::Lint {
            id,
            host,
            request_id,
        } => return lint(api, ctx, id, host, request_id.unwrap_or_default()).await,
    };
    view::show(ctx, answer?.into_inner())
}
