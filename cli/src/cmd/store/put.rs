//! `store put`: raw disk files or block devices captured as a new image.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use imprint_store::{
    Store, StoreConfig,
    capture::{CaptureOptions, CaptureReport, CaptureStats, DiskInput, capture},
    source::FileSource,
};
use serde::Serialize;

use super::{StoreArg, cancel_on_interrupt, threads};
use crate::{
    output::{Ctx, bytes, fields},
    progress::Progress,
};

/// `store put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Image name.
    #[arg(long)]
    name: String,
    /// Raw disk files or block devices, in guest order.
    #[arg(required = true)]
    disks: Vec<PathBuf>,
    /// zstd level for new chunks (1 fastest ... 19 smallest).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    level: i32,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Chunk size of a new store, in bytes (ignored for an existing one).
    #[arg(long, default_value_t = imprint_store::format::DEFAULT_CHUNK_SIZE)]
    chunk_size: u32,
    /// fsync every chunk and file before reporting success.
    #[arg(long)]
    fsync: bool,
    /// Skip the whole-disk SHA-256 (faster recaptures; the manifest then
    /// has no digest to compare with `sha256sum`).
    #[arg(long)]
    no_sha256: bool,
}

#[derive(Serialize)]
struct DiskOut {
    name: String,
    size_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(flatten)]
    stats: CaptureStats,
}

#[derive(Serialize)]
struct PutOut {
    image_id: String,
    name: String,
    #[serde(flatten)]
    stats: CaptureStats,
    disks: Vec<DiskOut>,
}

impl PutOut {
    fn new(report: &CaptureReport) -> Self {
        let m = &report.manifest;
        PutOut {
            image_id: m.image_id.to_string(),
            name: m.name.clone(),
            stats: report.stats.clone(),
            disks: m
                .disks
                .iter()
                .zip(&report.disks)
                .map(|(d, s)| DiskOut {
                    name: d.name.clone(),
                    size_bytes: d.size_bytes,
                    sha256: d.sha256.clone(),
                    stats: s.clone(),
                })
                .collect(),
        }
    }

    fn fields(&self) -> String {
        let s = &self.stats;
        fields(&[
            ("image_id", self.image_id.clone()),
            ("name", self.name.clone()),
            ("disks", self.disks.len().to_string()),
            ("size", bytes(s.bytes_total)),
            ("read", bytes(s.bytes_read)),
            ("stored (new, compressed)", bytes(s.bytes_stored)),
            ("deduplicated", bytes(s.bytes_deduplicated)),
            ("zero skipped", bytes(s.zero_bytes_skipped)),
            ("seconds", format!("{:.2}", s.seconds)),
        ])
    }
}

/// Run `store put`.
pub fn run(ctx: &Ctx, a: PutArgs) -> Result<u8> {
    // Check what we can before creating anything.
    imprint_store::manifest::validate_name(&a.name)?;
    let inputs = open_disks(&a.disks)?;
    let config = StoreConfig {
        chunk_size: a.chunk_size,
        ..StoreConfig::default()
    };
    let st = Store::open_or_create_at(&a.store.location()?, a.fsync, config)?;
    let opts = CaptureOptions {
        zstd_level: a.level,
        threads: threads(a.threads),
        cancel: Some(cancel_on_interrupt()),
        disk_sha256: !a.no_sha256,
        ..Default::default()
    };
    let mut bar = Progress::new(format!("capture {}", a.name), ctx.quiet);
    let report = capture(&st, &a.name, inputs, &opts, &mut |p| {
        bar.update(
            p.bytes_done,
            p.bytes_total,
            &format!(" stored {}", bytes(p.stats.bytes_stored)),
        );
    })?;
    bar.finish(
        report.stats.bytes_total,
        &format!(" stored {}", bytes(report.stats.bytes_stored)),
    );
    let out = PutOut::new(&report);
    ctx.emit(&out, || out.fields())?;
    Ok(0)
}

/// The disks to read, named after their files.
fn open_disks(paths: &[PathBuf]) -> Result<Vec<DiskInput<'static>>> {
    let mut inputs = Vec::new();
    for path in paths {
        let src =
            FileSource::open(path).with_context(|| format!("open disk {}", path.display()))?;
        inputs.push(DiskInput {
            name: disk_name(path),
            source: Box::new(src),
            base: None,
        });
    }
    Ok(inputs)
}

fn disk_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
