//! `image update`: name, notes, tags, recommended profiles, minimum
//! hardware and default hardware of an image.

use anyhow::{Result, bail};
use clap::Args;
use imprint_proto::v1 as pb;

use super::view;
use crate::{client::Api, cmd::profile::HardwareArgs, exit::usage, output::Ctx, parse};

/// `image update`: each flag given replaces that field.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    id: String,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    notes: Option<String>,
    /// Replace the tags (repeat; `--tag ''` alone clears them).
    #[arg(long = "tag")]
    tags: Option<Vec<String>>,
    /// Replace the recommended profiles (repeat; `''` alone clears).
    #[arg(long = "recommend-profile")]
    recommended_profiles: Option<Vec<String>>,
    /// Deploys below this many vCPUs are refused (0: no minimum).
    #[arg(long)]
    min_vcpus: Option<u32>,
    /// Deploys below this memory are refused (`2G`; 0: no minimum).
    #[arg(long, value_parser = parse::size_or_zero)]
    min_memory: Option<u64>,
    /// Deploys get a first disk of at least this size (`20G`), and one
    /// asking for less is refused (0: the captured size).
    #[arg(long, value_parser = parse::size_or_zero)]
    min_disk: Option<u64>,
    /// Hardware every deploy gets unless it names a profile (replaces
    /// what was set; `--clear-hardware` removes it).
    #[command(flatten)]
    hardware: HardwareArgs,
    #[arg(long, conflicts_with = "vcpus")]
    clear_hardware: bool,
}

impl UpdateArgs {
    /// The request's update mask: the fields given.
    fn mask(&self) -> Vec<String> {
        [
            (self.recommended_profiles.is_some(), "recommended_profiles"),
            (self.min_vcpus.is_some(), "min_vcpus"),
            (self.min_memory.is_some(), "min_memory_mib"),
            (self.min_disk.is_some(), "min_disk_bytes"),
            (self.hardware.any() || self.clear_hardware, "hardware"),
            (self.name.is_some(), "name"),
            (self.notes.is_some(), "notes"),
            (self.tags.is_some(), "tags"),
        ]
        .into_iter()
        .filter(|(given, _)| *given)
        .map(|(_, field)| field.to_string())
        .collect()
    }
}

/// A repeated flag's values without the empty ones (`''` alone clears).
fn non_empty(values: Option<Vec<String>>) -> Vec<String> {
    values
        .unwrap_or_default()
        .into_iter()
        .filter(|v| !v.is_empty())
        .collect()
}

/// Run `image update`.
pub async fn run(api: &mut Api, ctx: &Ctx, a: UpdateArgs) -> Result<u8> {
    let mask = a.mask();
    if mask.is_empty() {
        bail!(usage(
            "nothing to update: give --name, --notes, --tag, --recommend-profile, --min-vcpus, --min-memory, --min-disk or hardware flags".into()
        ));
    }
    let i = api
        .images
        .update_image(pb::UpdateImageRequest {
            id: a.id,
            update_mask: mask,
            name: a.name.unwrap_or_default(),
            notes: a.notes.unwrap_or_default(),
            tags: non_empty(a.tags),
            recommended_profiles: non_empty(a.recommended_profiles),
            min_vcpus: a.min_vcpus.unwrap_or(0),
            min_memory_mib: a.min_memory.map_or(0, |m| m.div_ceil(1 << 20)),
            min_disk_bytes: a.min_disk.unwrap_or(0),
            hardware: (!a.clear_hardware).then(|| a.hardware.to_pb("")),
        })
        .await?
        .into_inner();
    view::show(ctx, i)
}
