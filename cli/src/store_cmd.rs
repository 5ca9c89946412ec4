//! `imprint store ...`: offline tools on a store directory.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use imprint_store::{
    Location, Store, StoreConfig,
    capture::{CaptureOptions, CaptureStats, DiskInput, capture},
    gc::{GcOptions, collect_garbage},
    restore::{RestoreOptions, RestoreStats, restore_disk},
    source::{FileSource, FileTarget},
    verify::{verify_images, verify_store},
};
use serde::Serialize;

use crate::{
    exit,
    output::{Ctx, bytes, fields, table},
    progress::Progress,
};

#[derive(Debug, Args)]
pub struct StoreArg {
    /// The store: a directory (the SAN mount) or `s3://bucket/prefix`
    /// (endpoint and keys from `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`).
    #[arg(long, env = "IMPRINT_STORE")]
    store: String,
}

impl StoreArg {
    fn location(&self) -> Result<Location> {
        Ok(Location::parse(&self.store)?)
    }
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Capture raw disk files or block devices as a new image; prints its id.
    /// Creates the store if the directory is missing or empty.
    Put {
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
    },
    /// Write one disk of an image to a raw file or block device.
    Get {
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
    },
    /// Re-read and check every chunk of an image, or of the whole store.
    Verify {
        #[command(flatten)]
        store: StoreArg,
        /// Image id or unique name; the whole store when left out.
        image: Option<String>,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Remove chunks no image references.
    Gc {
        #[command(flatten)]
        store: StoreArg,
        /// Count what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep unreferenced chunks younger than this (e.g. 30s, 10m, 1h, 0).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        grace: Duration,
    },
    /// List the images in the store.
    List {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show an image's manifest.
    Show {
        #[command(flatten)]
        store: StoreArg,
        /// Image id or unique name.
        image: String,
    },
    /// Copy an image to another store (another site), sending only the
    /// chunks it lacks. The destination is created when missing, with the
    /// source's chunk size.
    Copy {
        #[command(flatten)]
        store: StoreArg,
        /// Image id or unique name.
        image: String,
        /// Destination store: a directory or `s3://bucket/prefix`.
        #[arg(long)]
        to: String,
    },
    /// Delete an image (its chunks go at the next gc unless shared).
    Delete {
        #[command(flatten)]
        store: StoreArg,
        /// Image id or unique name.
        image: String,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1),
        Some((i, _)) => {
            let mult = match &s[i..] {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                u => return Err(format!("unknown unit {u:?}; use s, m, h or d")),
            };
            (&s[..i], mult)
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 10m, 1h"))?;
    Ok(Duration::from_secs(n * mult))
}

fn threads(t: Option<usize>) -> usize {
    t.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

fn open(store: &StoreArg) -> Result<Store> {
    Ok(Store::open_at(&store.location()?, false)?)
}

/// Ctrl-C sets the flag; pipelines then stop and clean up.
fn cancel_on_interrupt() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    let flag = FLAG
        .get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone();
    extern "C" fn on_signal(_: nix::libc::c_int) {
        if let Some(f) = FLAG.get() {
            f.store(true, Ordering::Relaxed);
        }
    }
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_signal),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    for sig in [nix::sys::signal::SIGINT, nix::sys::signal::SIGTERM] {
        // SAFETY: the handler only does an atomic store on an already
        // initialised static, which is async-signal-safe.
        let _ = unsafe { nix::sys::signal::sigaction(sig, &action) };
    }
    flag
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

pub fn run(cmd: StoreCommand, ctx: &Ctx) -> Result<u8> {
    match cmd {
        StoreCommand::Put {
            store,
            name,
            disks,
            level,
            threads: t,
            chunk_size,
            fsync,
            no_sha256,
        } => {
            // Check what we can before creating anything.
            imprint_store::manifest::validate_name(&name)?;
            let mut inputs = Vec::new();
            for path in &disks {
                let src = FileSource::open(path)
                    .with_context(|| format!("open disk {}", path.display()))?;
                inputs.push(DiskInput {
                    name: disk_name(path),
                    source: Box::new(src),
                    base: None,
                });
            }
            let config = StoreConfig {
                chunk_size,
                ..StoreConfig::default()
            };
            let st = Store::open_or_create_at(&store.location()?, fsync, config)?;
            let opts = CaptureOptions {
                zstd_level: level,
                threads: threads(t),
                cancel: Some(cancel_on_interrupt()),
                disk_sha256: !no_sha256,
                ..Default::default()
            };
            let mut bar = Progress::new(format!("capture {name}"), ctx.quiet);
            let report = capture(&st, &name, inputs, &opts, &mut |p| {
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
            let m = &report.manifest;
            let out = PutOut {
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
            };
            ctx.emit(&out, || {
                let s = &report.stats;
                fields(&[
                    ("image_id", out.image_id.clone()),
                    ("name", out.name.clone()),
                    ("disks", out.disks.len().to_string()),
                    ("size", bytes(s.bytes_total)),
                    ("read", bytes(s.bytes_read)),
                    ("stored (new, compressed)", bytes(s.bytes_stored)),
                    ("deduplicated", bytes(s.bytes_deduplicated)),
                    ("zero skipped", bytes(s.zero_bytes_skipped)),
                    ("seconds", format!("{:.2}", s.seconds)),
                ])
            })?;
            Ok(0)
        }
        StoreCommand::Get {
            store,
            image,
            disk,
            output,
            threads: t,
            fsync,
        } => {
            let st = open(&store)?;
            let m = st.resolve(&image)?;
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
            let (mut target, partial) = open_target(&output, entry.size_bytes)?;
            let opts = RestoreOptions {
                threads: threads(t),
                cancel: Some(cancel_on_interrupt()),
                sync: fsync,
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
                    std::fs::rename(tmp, &output)
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
            ctx.emit(&out, || {
                fields(&[
                    ("image_id", out.image_id.clone()),
                    ("output", out.output.clone()),
                    ("size", bytes(out.stats.bytes_total)),
                    ("written", bytes(out.stats.bytes_written)),
                    ("fetched (compressed)", bytes(out.stats.bytes_fetched)),
                    ("zero (holes)", bytes(out.stats.zero_bytes)),
                    ("seconds", format!("{:.2}", out.stats.seconds)),
                ])
            })?;
            Ok(0)
        }
        StoreCommand::Verify {
            store,
            image,
            threads: t,
        } => {
            let st = open(&store)?;
            let report = match image {
                Some(i) => verify_images(&st, &[st.resolve(&i)?], threads(t))?,
                None => verify_store(&st, threads(t))?,
            };
            ctx.emit(&report, || {
                let mut s = fields(&[
                    ("images checked", report.images_checked.to_string()),
                    ("chunks checked", report.chunks_checked.to_string()),
                    ("bytes checked", bytes(report.bytes_checked)),
                    ("missing chunks", report.missing.len().to_string()),
                    ("corrupt chunks", report.corrupt.len().to_string()),
                    ("unreadable images", report.bad_images.len().to_string()),
                    ("seconds", format!("{:.2}", report.seconds)),
                ]);
                for p in report.missing.iter().chain(&report.corrupt) {
                    s.push_str(&format!(
                        "chunk {}: {} (images: {})\n",
                        p.digest,
                        p.reason,
                        p.images.join(", ")
                    ));
                }
                for p in &report.bad_images {
                    s.push_str(&format!("image {}: {}\n", p.image_id, p.reason));
                }
                s
            })?;
            if report.is_ok() {
                Ok(0)
            } else {
                eprintln!("imprint: verify found problems");
                Ok(exit::DATA)
            }
        }
        StoreCommand::Gc {
            store,
            dry_run,
            grace,
        } => {
            let st = open(&store)?;
            let report = collect_garbage(
                &st,
                &GcOptions {
                    grace,
                    dry_run,
                    ..Default::default()
                },
            )?;
            ctx.emit(&report, || {
                fields(&[
                    ("dry run", report.dry_run.to_string()),
                    ("images", report.images.to_string()),
                    ("chunks", report.chunks_total.to_string()),
                    ("referenced", report.chunks_referenced.to_string()),
                    ("removed", report.chunks_removed.to_string()),
                    ("bytes freed", bytes(report.bytes_freed)),
                    (
                        "kept (younger than grace)",
                        report.chunks_kept_recent.to_string(),
                    ),
                    (
                        "partial images removed",
                        report.incomplete_images_removed.to_string(),
                    ),
                    ("seconds", format!("{:.2}", report.seconds)),
                ])
            })?;
            Ok(0)
        }
        StoreCommand::List { store } => {
            let st = open(&store)?;
            let mut images = Vec::new();
            let mut problems = Vec::new();
            for (id, m) in st.list()? {
                match m {
                    Ok(m) => images.push(ListItem {
                        image_id: id.to_string(),
                        name: m.name.clone(),
                        created_unix: m.created_unix,
                        disks: m.disks.len(),
                        size_bytes: m.disks.iter().map(|d| d.size_bytes).sum(),
                    }),
                    Err(e) => problems.push(
                        serde_json::json!({"image_id": id.to_string(), "error": e.to_string()}),
                    ),
                }
            }
            images.sort_by(|a, b| (a.created_unix, &a.name).cmp(&(b.created_unix, &b.name)));
            let out = serde_json::json!({ "images": images, "unreadable": problems });
            ctx.emit(&out, || {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .map(|i| {
                        vec![
                            i.image_id.clone(),
                            i.name.clone(),
                            i.disks.to_string(),
                            bytes(i.size_bytes),
                            i.created_unix.to_string(),
                        ]
                    })
                    .collect();
                let mut s = table(
                    &["IMAGE ID", "NAME", "DISKS", "SIZE", "CREATED (UNIX)"],
                    &rows,
                );
                for p in &problems {
                    s.push_str(&format!("unreadable: {p}\n"));
                }
                s
            })?;
            Ok(0)
        }
        StoreCommand::Show { store, image } => {
            let st = open(&store)?;
            let m = st.resolve(&image)?;
            // An incremental capture's SHA-256 is computed after it.
            let sums = imprint_store::disk_sha256::sums(&st, &m)?;
            let mut doc = serde_json::to_value(&m)?;
            doc["disk_sha256"] = serde_json::to_value(&sums)?;
            ctx.emit(&doc, || {
                let mut s = fields(&[
                    ("image_id", m.image_id.to_string()),
                    ("name", m.name.clone()),
                    ("created_unix", m.created_unix.to_string()),
                    ("chunk_size", bytes(u64::from(m.chunk_size))),
                ]);
                let rows: Vec<Vec<String>> = m
                    .disks
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        vec![
                            i.to_string(),
                            d.name.clone(),
                            bytes(d.size_bytes),
                            d.data_chunks.to_string(),
                            d.zero_chunks.to_string(),
                            match &sums[i] {
                                imprint_store::disk_sha256::DiskSha256::Done(h) => h.clone(),
                                imprint_store::disk_sha256::DiskSha256::Pending => "pending".into(),
                            },
                        ]
                    })
                    .collect();
                s.push_str(&table(
                    &[
                        "DISK",
                        "NAME",
                        "SIZE",
                        "DATA CHUNKS",
                        "ZERO CHUNKS",
                        "SHA256",
                    ],
                    &rows,
                ));
                s
            })?;
            Ok(0)
        }
        StoreCommand::Copy { store, image, to } => {
            let st = open(&store)?;
            let to = Location::parse(&to)?;
            if store.location()?.same_store(&to) {
                return Err(imprint_store::Error::new(
                    imprint_store::ErrorKind::InvalidArgument,
                    "the source and destination are the same store",
                )
                .into());
            }
            let m = st.resolve(&image)?;
            let dst = Store::open_or_create_at(&to, false, st.config().clone())?;
            // Progress in guest bytes covered (chunks × chunk size).
            let cs = u64::from(st.chunk_size());
            let mut progress = Progress::new("copying", ctx.quiet);
            let r = imprint_store::copy::copy_image(&st, &dst, &m.image_id, &mut |done, total| {
                progress.update(done * cs, total * cs, "")
            })?;
            progress.finish(r.chunks_total * cs, "");
            ctx.emit(&r, || {
                format!(
                    "copied image {} to {}: {} of {} chunks sent ({}), {} already there\n",
                    r.image_id,
                    to,
                    r.chunks_sent,
                    r.chunks_total,
                    bytes(r.bytes_sent),
                    r.chunks_present
                )
            })?;
            Ok(0)
        }
        StoreCommand::Delete { store, image } => {
            let st = open(&store)?;
            let m = st.resolve(&image)?;
            st.delete_image(&m.image_id)?;
            let out = serde_json::json!({"image_id": m.image_id.to_string(), "deleted": true});
            ctx.emit(&out, || {
                format!("deleted image {} ({})\n", m.image_id, m.name)
            })?;
            Ok(0)
        }
    }
}

#[derive(Serialize)]
struct ListItem {
    image_id: String,
    name: String,
    created_unix: u64,
    disks: usize,
    size_bytes: u64,
}

fn disk_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("h").is_err());
    }
}
