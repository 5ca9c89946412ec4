//! Import and export: bring a disk image file (raw or qcow2) into the
//! store as a new image, and write an image's disk out as a raw or qcow2
//! file that `qemu-img compare` finds identical to the guest-visible disk.
//!
//! What is refused before anything is written, with the reason:
//! - files that are not disk images we read: empty, a size that is not a
//!   multiple of 512, or another container format (VMDK, VHD/VHDX, VDI,
//!   LUKS: convert it with `qemu-img convert` first);
//! - qcow2 with an external data file;
//! - qcow2 whose backing chain leaves the directory of the imported file
//!   (the import would read files the caller did not name).
//!
//! An export never leaves a partial file under the requested name: it is
//! written beside it and renamed at the end.

use std::{
    fs::File,
    io::Read,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicBool},
};

use imprint_store::{
    ImageId, Store,
    capture::{CaptureOptions, DiskInput},
    restore::{RestoreOptions, restore_disk},
    source::{DiskSource, DiskTarget, FileSource, FileTarget},
};

use imprint_proto::hardware::Hardware;

use crate::{
    error::{AgentError, Kind, Result},
    work::Report,
};

/// A disk image file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Raw bytes.
    Raw,
    /// qcow2 (version 2 or 3).
    Qcow2,
}

impl Format {
    /// `raw`, `qcow2`; empty means "detect" (import) or raw (export).
    pub fn parse(s: &str) -> Result<Option<Self>> {
        match s {
            "" => Ok(None),
            "raw" => Ok(Some(Format::Raw)),
            "qcow2" => Ok(Some(Format::Qcow2)),
            other => Err(invalid(format!("format {other:?} is not raw or qcow2"))),
        }
    }
}

fn invalid(m: String) -> AgentError {
    AgentError::new(Kind::InvalidArgument, m)
}

fn io(what: &str, path: &Path, e: std::io::Error) -> AgentError {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => Kind::NotFound,
        std::io::ErrorKind::PermissionDenied => Kind::FailedPrecondition,
        std::io::ErrorKind::StorageFull => Kind::ResourceExhausted,
        _ => Kind::Internal,
    };
    AgentError::new(kind, format!("{what} {}: {e}", path.display()))
}

/// Other formats' signatures, so a wrong file gets a useful answer.
fn foreign_format(head: &[u8], tail: &[u8]) -> Option<&'static str> {
    let at = |b: &[u8], off: usize, sig: &[u8]| {
        b.len() >= off + sig.len() && &b[off..off + sig.len()] == sig
    };
    if at(head, 0, b"KDMV") || at(head, 0, b"# Disk DescriptorFile") {
        Some("VMDK")
    } else if at(head, 0, b"vhdxfile") {
        Some("VHDX")
    } else if at(head, 0, b"conectix") || at(tail, 0, b"conectix") {
        Some("VHD")
    } else if at(head, 64, &[0x7f, 0x10, 0xda, 0xbe]) {
        Some("VDI")
    } else if at(head, 0, b"LUKS\xba\xbe") {
        Some("LUKS")
    } else if at(head, 0, b"QFI\xfb") {
        Some("qcow2")
    } else {
        None
    }
}

/// What a qcow2 header says about files beyond the image itself.
struct Qcow2Header {
    backing: Option<String>,
    external_data_file: bool,
}

fn qcow2_header(f: &File, path: &Path) -> Result<Qcow2Header> {
    let mut h = [0u8; 80];
    f.read_exact_at(&mut h[..72], 0)
        .map_err(|e| io("read qcow2 header of", path, e))?;
    if u32::from_be_bytes([h[4], h[5], h[6], h[7]]) >= 3 {
        f.read_exact_at(&mut h[72..80], 72)
            .map_err(|e| io("read qcow2 header of", path, e))?;
    }
    let h = h;
    let be32 = |o: usize| u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let be64 = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_be_bytes(b)
    };
    let version = be32(4);
    if !(2..=3).contains(&version) {
        return Err(invalid(format!(
            "{} is qcow2 version {version}; versions 2 and 3 are read",
            path.display()
        )));
    }
    let mut external_data_file = false;
    if version == 3 {
        // Incompatible feature bit 2: the guest data lives in another file.
        external_data_file = be64(72) & (1 << 2) != 0;
    }
    let (off, len) = (be64(8), be32(16) as usize);
    let backing = if off == 0 || len == 0 {
        None
    } else if len > 1023 {
        return Err(invalid(format!(
            "{}: backing file name too long",
            path.display()
        )));
    } else {
        let mut name = vec![0u8; len];
        f.read_exact_at(&mut name, off)
            .map_err(|e| io("read backing file name of", path, e))?;
        Some(String::from_utf8(name).map_err(|_| {
            invalid(format!(
                "{}: backing file name is not UTF-8",
                path.display()
            ))
        })?)
    };
    Ok(Qcow2Header {
        backing,
        external_data_file,
    })
}

/// Check `path` (and, for qcow2, its whole backing chain) before import;
/// returns the detected format.
pub fn check_import(path: &Path, want: Option<Format>) -> Result<Format> {
    let canonical = path.canonicalize().map_err(|e| io("open", path, e))?;
    let dir = canonical
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut current = canonical.clone();
    let mut first = None;
    for depth in 0..16 {
        let mut f = File::open(&current).map_err(|e| io("open", &current, e))?;
        let meta = f.metadata().map_err(|e| io("stat", &current, e))?;
        if !meta.file_type().is_file() {
            return Err(invalid(format!(
                "{} is not a regular file",
                current.display()
            )));
        }
        let len = meta.len();
        let mut head = [0u8; 512];
        let n = f.read(&mut head).map_err(|e| io("read", &current, e))?;
        let mut tail = [0u8; 512];
        if len >= 512 {
            f.read_exact_at(&mut tail, len - 512)
                .map_err(|e| io("read", &current, e))?;
        }
        let detected = match foreign_format(&head[..n], &tail) {
            Some("qcow2") => Format::Qcow2,
            Some(other) => {
                return Err(invalid(format!(
                    "{} is a {other} image; convert it to raw or qcow2 with qemu-img convert first",
                    current.display()
                )));
            }
            None => Format::Raw,
        };
        if depth == 0 {
            if let Some(w) = want
                && w != detected
            {
                return Err(invalid(format!(
                    "{} is {}, not {}",
                    path.display(),
                    if detected == Format::Qcow2 {
                        "qcow2"
                    } else {
                        "raw"
                    },
                    if w == Format::Qcow2 { "qcow2" } else { "raw" }
                )));
            }
            first = Some(detected);
        }
        if detected == Format::Raw {
            if len == 0 || len % 512 != 0 {
                return Err(invalid(format!(
                    "{} is not a disk image: {len} bytes is not a positive multiple of 512",
                    current.display()
                )));
            }
            break;
        }
        let h = qcow2_header(&f, &current)?;
        if h.external_data_file {
            return Err(invalid(format!(
                "{} keeps its data in an external data file; merge it with qemu-img convert first",
                current.display()
            )));
        }
        let Some(backing) = h.backing else { break };
        let base = current.parent().map(Path::to_path_buf).unwrap_or_default();
        let next = base.join(&backing);
        let next = next
            .canonicalize()
            .map_err(|e| io(&format!("open backing file {backing:?} of"), &current, e))?;
        if !next.starts_with(&dir) {
            return Err(invalid(format!(
                "{} has backing file {} outside {}; flatten it with qemu-img convert first",
                current.display(),
                next.display(),
                dir.display()
            )));
        }
        current = next;
        if depth == 15 {
            return Err(invalid(format!(
                "{}: backing chain deeper than 16",
                path.display()
            )));
        }
    }
    first.ok_or_else(|| invalid(format!("{} cannot be read", path.display())))
}

/// Import the disk image at `path` as a new image named `name`.
#[allow(clippy::too_many_arguments)]
pub fn import(
    store: &Store,
    path: &Path,
    want: Option<Format>,
    name: &str,
    image_id: Option<ImageId>,
    hardware: &Hardware,
    cancel: &Arc<AtomicBool>,
    report: Report<'_>,
) -> Result<imprint_store::capture::CaptureReport> {
    let origin = path.display().to_string();
    import_from(
        store, path, &origin, want, name, image_id, hardware, cancel, report,
    )
}

/// The label that keeps what an import warned about (lines).
pub const WARNINGS_LABEL: &str = "imprint.import_warnings";

/// [`import`] of a file that came from `origin` (a URL it was downloaded
/// from), recorded in the image's labels.
#[allow(clippy::too_many_arguments)]
pub fn import_from(
    store: &Store,
    path: &Path,
    origin: &str,
    want: Option<Format>,
    name: &str,
    image_id: Option<ImageId>,
    hardware: &Hardware,
    cancel: &Arc<AtomicBool>,
    report: Report<'_>,
) -> Result<imprint_store::capture::CaptureReport> {
    imprint_store::manifest::validate_name(name)?;
    let format = check_import(path, want)?;
    report("reading disk", 0, 0);
    let mut source: Box<dyn DiskSource> = match format {
        Format::Raw => Box::new(FileSource::open(path).map_err(|e| io("open", path, e))?),
        Format::Qcow2 => crate::qcow2::open(&path.to_string_lossy())?,
    };
    // An imported disk gets a configuration like a captured guest's: the
    // documented default, with the importer's hardware over it.
    let layout = crate::partitions::inspect(&mut *source);
    let mut config = crate::domain::GuestConfig::imported(name, &[source.size_bytes()]);
    config.esp = Some(layout.esp);
    if layout.esp {
        // A disk with an EFI system partition boots with UEFI (OVMF, on
        // Q35) unless the importer says otherwise.
        config.firmware.kind = "efi".into();
        config.machine = "q35".into();
    }
    config.apply(hardware);
    config.check_firmware()?;
    let mut labels: std::collections::BTreeMap<String, String> =
        [("imprint.imported_from".to_string(), origin.to_string())].into();
    let warnings = layout.warnings();
    if !warnings.is_empty() {
        labels.insert(WARNINGS_LABEL.into(), warnings.join("\n"));
    }
    let opts = CaptureOptions {
        cancel: Some(cancel.clone()),
        image_id,
        labels,
        config: serde_json::to_value(&config)
            .map_err(|e| AgentError::new(Kind::Internal, format!("record configuration: {e}")))?,
        ..Default::default()
    };
    let disk = DiskInput {
        name: "vda".into(),
        source,
        base: None,
    };
    Ok(imprint_store::capture::capture(
        store,
        name,
        vec![disk],
        &opts,
        &mut |p| report("reading disk", p.bytes_done, p.bytes_total),
    )?)
}

/// Write disk `disk` of image `image` to `path` as `format`; an existing
/// file is refused. Returns the guest-visible bytes written.
/// Refuse a copy that cannot work before it starts: the image must be in
/// `src`, not yet in `dst`, and both stores must cut images alike.
pub fn check_copy(src: &Store, dst: &Store, image: &ImageId) -> Result<()> {
    src.manifest(image)?;
    if src.chunk_size() != dst.chunk_size() {
        return Err(invalid(format!(
            "the stores cut images differently ({} and {} byte chunks)",
            src.chunk_size(),
            dst.chunk_size()
        )));
    }
    match dst.manifest(image) {
        Ok(_) => Err(AgentError::new(
            Kind::Conflict,
            format!("image {image} is in the target store already"),
        )),
        Err(e) if e.kind() == imprint_store::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Copy `image` from `src` to `dst` (only the chunks `dst` lacks); every
/// chunk of the copy is read back at `dst` and checked before the copy is
/// committed there, so one that fails the check never looks usable.
pub fn copy(
    src: &Store,
    dst: &Store,
    image: &ImageId,
    cancel: &Arc<AtomicBool>,
    report: Report<'_>,
) -> Result<imprint_proto::v1::CopyResult> {
    let manifest = src.manifest(image)?;
    let size: u64 = manifest.disks.iter().map(|d| d.size_bytes).sum();
    let cs = u64::from(src.chunk_size());
    let r = imprint_store::copy::copy_image_with(
        src,
        dst,
        image,
        Some(cancel),
        true,
        &mut |done, total| {
            report(
                "copying chunks",
                (done * cs).min(size),
                (total * cs).min(size),
            )
        },
    )?;
    Ok(imprint_proto::v1::CopyResult {
        chunks_total: r.chunks_total,
        chunks_sent: r.chunks_sent,
        chunks_present: r.chunks_present,
        bytes_sent: r.bytes_sent,
        image_size_bytes: size,
        bytes_verified: r.bytes_verified,
        seconds: r.seconds,
    })
}

/// Write disk `disk` of `image` to the new file `path` (written under a
/// temporary name, renamed when whole). The file is readable by its owner
/// only (0600), or also by `group` (0640) when the operator names one: an
/// export holds an account's private image.
#[allow(clippy::too_many_arguments)]
pub fn export(
    store: &Store,
    image: &ImageId,
    disk: usize,
    path: &Path,
    format: Format,
    group: Option<u32>,
    cancel: &Arc<AtomicBool>,
    report: Report<'_>,
) -> Result<u64> {
    let manifest = store.manifest(image)?;
    let entry = manifest.disks.get(disk).ok_or_else(|| {
        invalid(format!(
            "image {image} has {} disk(s); there is no disk {disk}",
            manifest.disks.len()
        ))
    })?;
    if path.exists() {
        return Err(AgentError::new(
            Kind::Conflict,
            format!("{} exists; export writes new files only", path.display()),
        ));
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| invalid(format!("{} names no file", path.display())))?;
    let tmp = parent.join(format!(".{}.imprint-partial", file_name.to_string_lossy()));
    let result = (|| {
        // Made new (never through a link), owner-only from the first byte;
        // a partial file a crashed export left goes first.
        let _ = std::fs::remove_file(&tmp);
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&tmp)
                .map_err(|e| io("create", &tmp, e))?
        };
        let mut target: Box<dyn DiskTarget> = match format {
            Format::Raw => {
                file.set_len(entry.size_bytes)
                    .map_err(|e| io("size", &tmp, e))?;
                Box::new(FileTarget::new(file, true))
            }
            Format::Qcow2 => {
                let out = std::process::Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&tmp)
                    .arg(entry.size_bytes.to_string())
                    .output()
                    .map_err(|e| {
                        AgentError::new(
                            Kind::FailedPrecondition,
                            format!("qemu-img (package qemu-utils) is needed for qcow2: {e}"),
                        )
                    })?;
                if !out.status.success() {
                    return Err(AgentError::new(
                        Kind::Internal,
                        format!(
                            "qemu-img create {}: {}",
                            tmp.display(),
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    ));
                }
                Box::new(crate::qcow2::Qcow2Target::open(&tmp.to_string_lossy())?)
            }
        };
        // Before a byte of the image is written.
        restrict(&tmp, group)?;
        let opts = RestoreOptions {
            cancel: Some(cancel.clone()),
            sync: true,
            ..Default::default()
        };
        let total = entry.size_bytes;
        restore_disk(store, &manifest, disk, &mut *target, &opts, &mut |p| {
            report("writing file", p.bytes_done, total)
        })?;
        drop(target);
        std::fs::rename(&tmp, path).map_err(|e| io("rename into", path, e))?;
        Ok(entry.size_bytes)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Mode 0600, or 0640 with group `group`.
fn restrict(path: &Path, group: Option<u32>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| io("chown", path, e))?;
    }
    let mode = if group.is_some() { 0o640 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io("chmod", path, e))
}
