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
//!   (the import would read files the caller did not name), or is longer
//!   than 16 files;
//! - a downloaded qcow2 that names any other file at all: it would be a
//!   file of this host, not of the download.
//!
//! The qcow2 rules are not checked on a parsed header ahead of the open:
//! imago opens every file a header names through an `ImplicitOpenGate`,
//! and `ImportGate` is that gate, so the policy holds for exactly what
//! is opened.
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

/// The format of the regular file at `path` by its signature, and its
/// length; other formats are refused, naming what they are.
fn detect(path: &Path) -> Result<(Format, u64)> {
    let mut f = File::open(path).map_err(|e| io("open", path, e))?;
    let meta = f.metadata().map_err(|e| io("stat", path, e))?;
    if !meta.file_type().is_file() {
        return Err(invalid(format!("{} is not a regular file", path.display())));
    }
    let len = meta.len();
    let mut head = [0u8; 512];
    let n = f.read(&mut head).map_err(|e| io("read", path, e))?;
    let mut tail = [0u8; 512];
    if len >= 512 {
        f.read_exact_at(&mut tail, len - 512)
            .map_err(|e| io("read", path, e))?;
    }
    match foreign_format(&head[..n], &tail) {
        Some("qcow2") => Ok((Format::Qcow2, len)),
        Some(other) => Err(invalid(format!(
            "{} is a {other} image; convert it to raw or qcow2 with qemu-img convert first",
            path.display()
        ))),
        None => Ok((Format::Raw, len)),
    }
}

fn check_raw_len(path: &Path, len: u64) -> Result<()> {
    if len == 0 || !len.is_multiple_of(512) {
        return Err(invalid(format!(
            "{} is not a disk image: {len} bytes is not a positive multiple of 512",
            path.display()
        )));
    }
    Ok(())
}

/// What an import may open beyond the file it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Implicit {
    /// Nothing: a downloaded image must be self-contained. Whatever its
    /// header names would be a file of this host, not of the download.
    Nothing,
    /// Backing images in the imported file's directory (the caller named
    /// the directory's files), read-only, at most 16 files in all.
    BackingInDirectory,
}

/// The longest chain an import follows, the imported file included.
const MAX_CHAIN: usize = 16;

/// imago's [`ImplicitOpenGate`] for imports: every file a qcow2 header
/// names (a backing image, an external data file, and theirs in turn) is
/// opened here, under [`Implicit`], or not at all.
///
/// [`ImplicitOpenGate`]: imago::format::gate::ImplicitOpenGate
struct ImportGate {
    implicit: Implicit,
    /// The imported file (canonical).
    top: PathBuf,
    /// Its directory.
    dir: PathBuf,
    /// The image whose header is being followed, for messages.
    image: PathBuf,
    /// Files in the chain so far, the imported file included.
    files: usize,
    /// Why an open was refused. imago reports only that the open failed,
    /// with its own context around the reason; this is what callers see.
    refused: Option<AgentError>,
}

impl ImportGate {
    fn new(path: &Path, implicit: Implicit) -> Self {
        ImportGate {
            implicit,
            top: path.to_path_buf(),
            dir: path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/")),
            image: path.to_path_buf(),
            files: 1,
            refused: None,
        }
    }

    fn refuse(&mut self, e: AgentError) -> std::io::Error {
        let err = std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.message.clone());
        self.refused.get_or_insert(e);
        err
    }

    /// The backing file `name` of `self.image`, if the policy lets it be
    /// opened: its canonical path.
    fn backing(&self, name: &Path) -> Result<PathBuf> {
        let image = self.image.display();
        if self.implicit == Implicit::Nothing {
            return Err(invalid(format!(
                "{image} has backing file {}; an image imported from a URL must be self-contained: flatten it with qemu-img convert first",
                name.display()
            )));
        }
        let next = name.canonicalize().map_err(|e| {
            io(
                &format!("open backing file {} of", name.display()),
                &self.image,
                e,
            )
        })?;
        if !next.starts_with(&self.dir) {
            return Err(invalid(format!(
                "{image} has backing file {} outside {}; flatten it with qemu-img convert first",
                next.display(),
                self.dir.display()
            )));
        }
        if self.files >= MAX_CHAIN {
            return Err(invalid(format!(
                "{}: backing chain deeper than {MAX_CHAIN}",
                self.top.display()
            )));
        }
        let (format, len) = detect(&next)?;
        if format == Format::Raw {
            check_raw_len(&next, len)?;
        }
        Ok(next)
    }
}

impl imago::format::gate::ImplicitOpenGate<imago::file::File> for &mut ImportGate {
    fn open_format<F: imago::FormatDriverBuilder<imago::file::File>>(
        &mut self,
        builder: F,
    ) -> std::io::Result<imago::FormatAccess<imago::file::File>> {
        // A backing layer over a file `open_storage` let through; what it
        // names in turn is followed through this gate, naming it.
        let image = builder.get_image_path().unwrap_or_default();
        let parent = std::mem::replace(&mut self.image, image);
        let layer = builder.open(&mut **self);
        self.image = parent;
        Ok(imago::FormatAccess::new(layer?))
    }

    fn open_storage(
        &mut self,
        opts: imago::StorageOpenOptions,
    ) -> std::io::Result<imago::file::File> {
        let name = opts
            .get_filename()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        // An import opens nothing for writing. imago asks for write access
        // to an external data file (and for none to a backing file), so
        // this is where a data file is refused; a data file asked for
        // read-only would still have to pass as a backing file below.
        if opts.get_writable() {
            let e = invalid(format!(
                "{} keeps its data in an external data file ({}); merge it with qemu-img convert first",
                self.image.display(),
                name.display()
            ));
            return Err(self.refuse(e));
        }
        let next = self.backing(&name).map_err(|e| self.refuse(e))?;
        self.files += 1;
        <imago::file::File as imago::Storage>::open(opts.filename(next))
    }
}

/// Open the file at `path` for import, under `implicit`: its format is
/// checked against `want` (when given) and, for qcow2, every file its
/// header names goes through [`ImportGate`].
fn open_import(
    path: &Path,
    want: Option<Format>,
    implicit: Implicit,
) -> Result<(Format, Box<dyn DiskSource>)> {
    let canonical = path.canonicalize().map_err(|e| io("open", path, e))?;
    let (detected, len) = detect(&canonical)?;
    if let Some(w) = want
        && w != detected
    {
        let name = |f| if f == Format::Qcow2 { "qcow2" } else { "raw" };
        return Err(invalid(format!(
            "{} is {}, not {}",
            path.display(),
            name(detected),
            name(w)
        )));
    }
    let source: Box<dyn DiskSource> = match detected {
        Format::Raw => {
            check_raw_len(&canonical, len)?;
            Box::new(FileSource::open(path).map_err(|e| io("open", path, e))?)
        }
        Format::Qcow2 => {
            let mut gate = ImportGate::new(&canonical, implicit);
            crate::qcow2::open_gated(&canonical, &mut gate).map_err(|e| {
                gate.refused.take().unwrap_or_else(|| match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                        io("open qcow2 image", &canonical, e)
                    }
                    _ => invalid(format!(
                        "{} cannot be read as qcow2 ({e}); convert it with qemu-img convert first",
                        canonical.display()
                    )),
                })
            })?
        }
    };
    Ok((detected, source))
}

/// Check `path` (and, for qcow2, its whole backing chain) before a local
/// import; returns the detected format.
pub fn check_import(path: &Path, want: Option<Format>) -> Result<Format> {
    open_import(path, want, Implicit::BackingInDirectory).map(|(format, _)| format)
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
    import_file(
        store,
        path,
        Implicit::BackingInDirectory,
        &origin,
        want,
        name,
        image_id,
        hardware,
        cancel,
        report,
    )
}

/// The label that keeps what an import warned about (lines).
pub const WARNINGS_LABEL: &str = "imprint.import_warnings";

/// [`import`] of a file downloaded from `origin` (a URL), recorded in the
/// image's labels. The file must be self-contained: a qcow2 that names any
/// other file (a backing file, an external data file) is refused, since
/// that file would be one of this host's, not part of the download.
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
    import_file(
        store,
        path,
        Implicit::Nothing,
        origin,
        want,
        name,
        image_id,
        hardware,
        cancel,
        report,
    )
}

/// Import the file at `path`, opening what `implicit` allows besides.
#[allow(clippy::too_many_arguments)]
fn import_file(
    store: &Store,
    path: &Path,
    implicit: Implicit,
    origin: &str,
    want: Option<Format>,
    name: &str,
    image_id: Option<ImageId>,
    hardware: &Hardware,
    cancel: &Arc<AtomicBool>,
    report: Report<'_>,
) -> Result<imprint_store::capture::CaptureReport> {
    imprint_store::manifest::validate_name(name)?;
    let (_, mut source) = open_import(path, want, implicit)?;
    report("reading disk", 0, 0);
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
                crate::tool::run(
                    std::process::Command::new("qemu-img")
                        .args(["create", "-q", "-f", "qcow2"])
                        .arg(&tmp)
                        .arg(entry.size_bytes.to_string()),
                    &format!("qemu-img create {}", tmp.display()),
                )?;
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

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn qemu_img(args: &[&str]) {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img (package qemu-utils)");
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A qcow2 `name` in `dir` over the backing file `backing` (as written
    /// into its header) of format `format`.
    fn overlay(dir: &Path, name: &str, backing: &str, format: &str) -> PathBuf {
        let p = dir.join(name);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            backing,
            "-F",
            format,
            p.to_str().expect("utf8"),
            "1M",
        ]);
        p
    }

    fn raw(path: &Path) {
        std::fs::write(path, vec![0x5au8; 1 << 20]).expect("write");
    }

    fn refused(r: Result<Format>, says: &str) {
        let e = r.expect_err(says);
        assert_eq!(e.kind, Kind::InvalidArgument, "{e}");
        assert!(e.message.contains(says), "{says}: {e}");
    }

    #[test]
    fn a_local_chain_is_followed_only_inside_its_directory() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("in");
        std::fs::create_dir(&dir).expect("dir");
        raw(&dir.join("base.raw"));
        overlay(&dir, "mid.qcow2", "base.raw", "raw");
        let top = overlay(&dir, "top.qcow2", "mid.qcow2", "qcow2");
        assert_eq!(check_import(&top, None).expect("chain"), Format::Qcow2);

        // The second layer leaves the directory: refused, naming that layer.
        raw(&tmp.path().join("outside.raw"));
        overlay(&dir, "mid-out.qcow2", "../outside.raw", "raw");
        let top = overlay(&dir, "top-out.qcow2", "mid-out.qcow2", "qcow2");
        let e = check_import(&top, None).expect_err("outside");
        assert_eq!(e.kind, Kind::InvalidArgument, "{e}");
        assert!(e.message.contains("mid-out.qcow2 has backing file"), "{e}");
        assert!(e.message.contains("outside"), "{e}");

        // A link in the directory to a file outside it.
        std::os::unix::fs::symlink(tmp.path().join("outside.raw"), dir.join("link.raw"))
            .expect("symlink");
        let top = overlay(&dir, "top-link.qcow2", "link.raw", "raw");
        refused(check_import(&top, None), "outside");

        // A backing file missing: not found, naming it.
        let top = overlay(&dir, "top-gone.qcow2", "gone.raw", "raw");
        let e = check_import(&top, None).expect_err("gone");
        assert_eq!(e.kind, Kind::NotFound, "{e}");
        assert!(e.message.contains("gone.raw"), "{e}");

        // Backing files are checked like imported ones.
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            dir.join("disk.vmdk").to_str().expect("utf8"),
            "1M",
        ]);
        let top = overlay(&dir, "top-vmdk.qcow2", "disk.vmdk", "raw");
        refused(check_import(&top, None), "VMDK");
        std::fs::write(dir.join("odd.raw"), vec![1u8; 1000]).expect("write");
        let top = overlay(&dir, "top-odd.qcow2", "odd.raw", "raw");
        refused(check_import(&top, None), "multiple of 512");
    }

    #[test]
    fn a_chain_longer_than_sixteen_files_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        raw(&tmp.path().join("l0.raw"));
        let mut below = ("l0.raw".to_string(), "raw");
        let mut top = PathBuf::new();
        for i in 1..MAX_CHAIN {
            let name = format!("l{i}.qcow2");
            top = overlay(tmp.path(), &name, &below.0, below.1);
            below = (name, "qcow2");
        }
        assert_eq!(check_import(&top, None).expect("16 files"), Format::Qcow2);
        let top = overlay(tmp.path(), "l16.qcow2", &below.0, below.1);
        refused(check_import(&top, None), "deeper than 16");
    }

    #[test]
    fn a_downloaded_image_must_be_self_contained() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Store::open_or_create_dir(
            &tmp.path().join("store"),
            false,
            imprint_store::StoreConfig::default(),
        )
        .expect("store");
        let cancel = Arc::new(AtomicBool::new(false));
        let import = |path: &Path| {
            import_from(
                &store,
                path,
                "https://images.example/disk.qcow2",
                None,
                "x",
                None,
                &Hardware::default(),
                &cancel,
                &|_: &str, _: u64, _: u64| {},
            )
            .map(|_| Format::Qcow2)
        };
        // A backing file beside the download, which a local import of the
        // same file would read.
        raw(&tmp.path().join("base.raw"));
        let top = overlay(tmp.path(), "top.qcow2", "base.raw", "raw");
        assert_eq!(check_import(&top, None).expect("local"), Format::Qcow2);
        refused(import(&top), "must be self-contained");
        let ext = tmp.path().join("ext.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=ext.data",
            ext.to_str().expect("utf8"),
            "1M",
        ]);
        refused(import(&ext), "external data file");
        assert!(store.list().expect("list").is_empty(), "nothing imported");

        // A self-contained one is imported.
        let whole = tmp.path().join("whole.qcow2");
        qemu_img(&[
            "convert",
            "-q",
            "-O",
            "qcow2",
            top.to_str().expect("utf8"),
            whole.to_str().expect("utf8"),
        ]);
        import(&whole).expect("self-contained");
    }
}
