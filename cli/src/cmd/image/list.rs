//! `image list`: filters, and following the pages.

use anyhow::Result;
use clap::Args;
use imprint_proto::v1 as pb;
use serde_json::json;

use super::view::{IMAGE_HEADER, image_json, image_row};
use crate::{
    client::Api,
    enum_names,
    output::{self, Ctx},
};

/// Filters of `image list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    owner: Option<String>,
    /// private, shared or public.
    #[arg(long)]
    visibility: Option<String>,
    #[arg(long)]
    name_prefix: Option<String>,
    #[arg(long)]
    tag: Option<String>,
    /// creating, active, failed, deprecated, deleting.
    #[arg(long)]
    state: Option<String>,
    /// created_desc, created_asc, name_asc, name_desc.
    #[arg(long, default_value = "created_desc")]
    order_by: String,
    /// Images per page.
    #[arg(long, default_value_t = 50)]
    page_size: u32,
    /// Continue from a previous page's token.
    #[arg(long)]
    page_token: Option<String>,
    /// Follow every page.
    #[arg(long)]
    all: bool,
}

/// Run `image list`.
pub async fn run(api: &mut Api, ctx: &Ctx, a: ListArgs) -> Result<u8> {
    let visibility = a
        .visibility
        .as_deref()
        .map_or(Ok(0), enum_names::visibility)?;
    let state = a.state.as_deref().map_or(Ok(0), enum_names::image_state)?;
    let mut token = a.page_token.clone().unwrap_or_default();
    let mut all = Vec::new();
    let next = loop {
        let r = api
            .images
            .list_images(pb::ListImagesRequest {
                page_size: a.page_size,
                page_token: token.clone(),
                owner: a.owner.clone().unwrap_or_default(),
                visibility,
                name_prefix: a.name_prefix.clone().unwrap_or_default(),
                tag: a.tag.clone().unwrap_or_default(),
                state,
                order_by: a.order_by.clone(),
            })
            .await?
            .into_inner();
        all.extend(r.images);
        if !a.all || r.next_page_token.is_empty() {
            break r.next_page_token;
        }
        token = r.next_page_token;
    };
    let doc = json!({
        "images": all.iter().map(image_json).collect::<Vec<_>>(),
        "next_page_token": next,
    });
    ctx.emit(&doc, || {
        let rows: Vec<Vec<String>> = all.iter().map(image_row).collect();
        let mut t = output::table(&IMAGE_HEADER, &rows);
        if !next.is_empty() {
            t.push_str(&format!("(more: --page-token {next} or --all)\n"));
        }
        t
    })?;
    Ok(0)
}
