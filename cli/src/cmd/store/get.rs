//! `store get`: one disk of an image written to a raw file or block
//! device.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use imprint_store::{
    restore::{RestoreOptions, RestoreStats, restore_disk},
    source::FileTarget,
};
use serde::Serialize;

use super::{StoreArg, cancel_on_interrupt, open, threads};
use crate::{
    output::{Ctx, bytes, fields},
    progress::Progress,
};

/// `store get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Image id or unique name.
    image: String,
    /// Disk number (0-based).
    #[arg(long, default_value_t = 0)]
    disk: usize,
    /// Output: a new (or replaced) sparse file, or an existing block device.
    #[arg(long)]
    output: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// fsync the output before reporting success.
    #[arg(long)]
    fsync: bool,
}

#[derive(Serialize)]
struct GetOut {
    image_id: String,
    disk: usize,
    output: String,
    /// Compressed bytes read from the store.
    bytes_read: u64,
    zero_bytes_skipped: u64,
    #[serde(flatten)]
    stats: RestoreStats,
}

impl GetOut {
    fn fields(&self) -> String {
        fields(&[
            ("image_id", self.image_id.clone()),
            ("output", self.output.clone()),
            ("size", bytes(self.stats.bytes_total)),
            ("written", bytes(self.stats.bytes_written)),
            ("fetched (compressed)", bytes(self.stats.bytes_fetched)),
            ("zero (holes)", bytes(self.stats.zero_bytes)),
            ("seconds", format!("{:.2}", self.stats.seconds)),
        ])
    }
}

/// Run `store get`.
pub fn run(ctx: &Ctx, a: GetArgs) -> Result<u8> {
    let (disk, output) = (a.disk, &a.output);
    let st = open(&a.store)?;
    let m = st.resolve(&a.image)?;
    let Some(entry) = m.disks.get(disk) else {
        bail!(imprint_store::Error::new(
            imprint_store::ErrorKind::InvalidArgument,
            format!(
                "image {} has {} disk(s); there is no disk {disk}",
                m.image_id,
                m.disks.len()
            )
        ));
    };
    let (mut target, partial) = open_target(output, entry.size_bytes)?;
    let opts = RestoreOptions {
        threads: threads(a.threads),
        cancel: Some(cancel_on_interrupt()),
        sync: a.fsync,
    };
    let mut bar = Progress::new(format!("deploy {} disk {disk}", m.name), ctx.quiet);
    let written = restore_disk(&st, &m, disk, &mut target, &opts, &mut |p| {
        bar.update(p.bytes_done, p.stats.bytes_total, "");
    })
    .with_context(|| format!("write {}", output.display()));
    drop(target);
    // A file appears under its name only when whole.
    let stats = match (written, &partial) {
        (Ok(s), Some(tmp)) => {
            std::fs::rename(tmp, output)
                .with_context(|| format!("rename into {}", output.display()))?;
            s
        }
        (Ok(s), None) => s,
        (Err(e), tmp) => {
            if let Some(tmp) = tmp {
                let _ = std::fs::remove_file(tmp);
            }
            return Err(e);
        }
    };
    bar.finish(stats.bytes_total, "");
    let out = GetOut {
        image_id: m.image_id.to_string(),
        disk,
        output: output.display().to_string(),
        bytes_read: stats.bytes_fetched,
        zero_bytes_skipped: stats.zero_bytes,
        stats,
    };
    ctx.emit(&out, || out.fields())?;
    Ok(0)
}

/// The target for `path`: a device is written in place; a file is written
/// under a temporary name beside it (returned), renamed when whole.
fn open_target(path: &Path, size: u64) -> Result<(FileTarget, Option<PathBuf>)> {
    use std::os::unix::fs::FileTypeExt;
    let is_dev = std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device() || m.file_type().is_char_device())
        .unwrap_or(false);
    if is_dev {
        let t = FileTarget::open_existing(path)
            .with_context(|| format!("open output {}", path.display()))?;
        return Ok((t, None));
    }
    let name = path
        .file_name()
        .with_context(|| format!("output {} names no file", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.imprint-partial", name.to_string_lossy()));
    let t =
        FileTarget::create(&tmp, size).with_context(|| format!("open output {}", tmp.display()))?;
    Ok((t, Some(tmp)))
}
