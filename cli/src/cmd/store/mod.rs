//! `imprint store ...`: offline tools on a store directory.
//!
//! `put` and `get` (the capture and restore pipelines, with progress and
//! Ctrl-C) have a file each; the other commands are one function each
//! here.

mod get;
mod put;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use clap::{Args, Subcommand};
use imprint_store::{
    Location, Store,
    gc::{GcOptions, collect_garbage},
    verify::{verify_images, verify_store},
};
use serde::Serialize;

use crate::{
    exit,
    output::{Ctx, bytes, fields, table},
    parse,
    progress::Progress,
};

/// `--store`, which every store command takes.
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
    Put(put::PutArgs),
    /// Write one disk of an image to a raw file or block device.
    Get(get::GetArgs),
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
        #[arg(long, default_value = "1h", value_parser = parse::duration)]
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

/// Run a store command.
pub fn run(cmd: StoreCommand, ctx: &Ctx) -> Result<u8> {
    match cmd {
        StoreCommand::Put(a) => put::run(ctx, a),
        StoreCommand::Get(a) => get::run(ctx, a),
        StoreCommand::Verify {
            store,
            image,
            threads: t,
        } => verify(ctx, &store, image, threads(t)),
        StoreCommand::Gc {
            store,
            dry_run,
            grace,
        } => gc(ctx, &store, dry_run, grace),
        StoreCommand::List { store } => list(ctx, &store),
        StoreCommand::Show { store, image } => show(ctx, &store, &image),
        StoreCommand::Copy { store, image, to } => copy(ctx, &store, &image, &to),
        StoreCommand::Delete { store, image } => delete(ctx, &store, &image),
    }
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

/// `store verify`: exit code [`exit::DATA`] when it finds problems.
fn verify(ctx: &Ctx, store: &StoreArg, image: Option<String>, threads: usize) -> Result<u8> {
    let st = open(store)?;
    let report = match image {
        Some(i) => verify_images(&st, &[st.resolve(&i)?], threads)?,
        None => verify_store(&st, threads)?,
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

/// `store gc`.
fn gc(ctx: &Ctx, store: &StoreArg, dry_run: bool, grace: Duration) -> Result<u8> {
    let st = open(store)?;
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

#[derive(Serialize)]
struct ListItem {
    image_id: String,
    name: String,
    created_unix: u64,
    disks: usize,
    size_bytes: u64,
}

/// `store list`.
fn list(ctx: &Ctx, store: &StoreArg) -> Result<u8> {
    let st = open(store)?;
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
            Err(e) => problems
                .push(serde_json::json!({"image_id": id.to_string(), "error": e.to_string()})),
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

/// `store show`.
fn show(ctx: &Ctx, store: &StoreArg, image: &str) -> Result<u8> {
    let st = open(store)?;
    let m = st.resolve(image)?;
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

/// `store copy`.
fn copy(ctx: &Ctx, store: &StoreArg, image: &str, to: &str) -> Result<u8> {
    let st = open(store)?;
    let to = Location::parse(to)?;
    if store.location()?.same_store(&to) {
        return Err(imprint_store::Error::new(
            imprint_store::ErrorKind::InvalidArgument,
            "the source and destination are the same store",
        )
        .into());
    }
    let m = st.resolve(image)?;
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

/// `store delete`.
fn delete(ctx: &Ctx, store: &StoreArg, image: &str) -> Result<u8> {
    let st = open(store)?;
    let m = st.resolve(image)?;
    st.delete_image(&m.image_id)?;
    let out = serde_json::json!({"image_id": m.image_id.to_string(), "deleted": true});
    ctx.emit(&out, || {
        format!("deleted image {} ({})\n", m.image_id, m.name)
    })?;
    Ok(0)
}
