//! The directory backend: a store on a local or shared (SAN, NFS)
//! filesystem.
//!
//! ```text
//! <root>/imprint-store.json          store settings (chunk size, layout version)
//! <root>/chunks/<4 hex>/<64 hex>     chunk blobs, named by digest
//! <root>/images/<uuid>/disk<N>.fidx  per-disk indexes
//! <root>/images/<uuid>/manifest      written last: the image exists
//! <root>/writers/<id>.json           captures in progress (GC keeps their chunks)
//! ```
//!
//! Every file is written as `<name>.tmp-<random>` in its final directory,
//! optionally fsynced, then renamed over its final name (then, when
//! durability is asked for, the directory is fsynced). Several processes on
//! several hosts may write at once: names are content digests or random
//! ids, so concurrent writers of one name write the same bytes and the last
//! rename wins harmlessly.

use std::{
    fs::{self, File},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    time::SystemTime,
};

use nix::sys::{
    stat::{UtimensatFlags, utimensat},
    time::TimeSpec,
};

use crate::{
    ChunkDigest, Error, ErrorKind, ImageId, Result,
    backend::{ChunkInfo, ChunkStore, ImageStore, Inserted, WriterInfo, WriterRecord},
    format::STORE_CONFIG_FILE,
};

const TMP_MARK: &str = ".tmp-";
const GC_MARK: &str = ".gc-";
const MANIFEST_FILE: &str = "manifest";

/// A store in a directory.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
    fsync: bool,
}

impl DirStore {
    /// A store rooted at `root`; `fsync` makes every write durable before it
    /// is reported done (slower; for stores that must survive power loss).
    pub fn new(root: impl Into<PathBuf>, fsync: bool) -> Self {
        Self {
            root: root.into(),
            fsync,
        }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn chunk_path(&self, digest: &ChunkDigest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("chunks").join(&hex[..4]).join(hex)
    }

    fn image_dir(&self, image: &ImageId) -> PathBuf {
        self.root.join("images").join(image.to_string())
    }

    fn writer_path(&self, writer_id: &str) -> Result<PathBuf> {
        if writer_id.is_empty()
            || !writer_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(Error::invalid(format!("bad writer id {writer_id:?}")));
        }
        Ok(self.root.join("writers").join(format!("{writer_id}.json")))
    }

    /// Write `bytes` to `path` atomically: temp file, optional fsync, rename.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let dir = path.parent().unwrap_or(&self.root);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let tmp = dir.join(format!("{name}{TMP_MARK}{}", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            if self.fsync {
                f.sync_all()?;
            }
            drop(f);
            fs::rename(&tmp, path)?;
            if self.fsync {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        result.map_err(|e: io::Error| {
            let _ = fs::remove_file(&tmp);
            Error::io(format!("write {}", path.display()), e)
        })
    }

    fn create_dir(&self, dir: &Path) -> Result<()> {
        match fs::create_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(Error::io(format!("create directory {}", dir.display()), e)),
        }
    }
}

fn touch(path: &Path) -> io::Result<()> {
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_NOW,
        &TimeSpec::UTIME_NOW,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

fn read_file(path: &Path, buf: &mut Vec<u8>, what: &str) -> Result<()> {
    buf.clear();
    let mut f =
        File::open(path).map_err(|e| Error::io(format!("open {what} {}", path.display()), e))?;
    f.read_to_end(buf)
        .map_err(|e| Error::io(format!("read {what} {}", path.display()), e))?;
    Ok(())
}

fn read_dir_or_empty(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(it) => it
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| Error::io(format!("list {}", dir.display()), e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(format!("list {}", dir.display()), e)),
    }
}

fn modified(meta: &fs::Metadata) -> SystemTime {
    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

impl ChunkStore for DirStore {
    fn insert_chunk(&self, digest: &ChunkDigest, blob: &[u8]) -> Result<Inserted> {
        if self.touch_chunk(digest)? {
            return Ok(Inserted::Existed);
        }
        let path = self.chunk_path(digest);
        if let Some(dir) = path.parent() {
            self.create_dir(dir)?;
        }
        self.write_atomic(&path, blob)
            .map_err(|e| e.context(format!("store chunk {digest}")))?;
        Ok(Inserted::New)
    }

    fn touch_chunk(&self, digest: &ChunkDigest) -> Result<bool> {
        let path = self.chunk_path(digest);
        match touch(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("touch chunk {}", path.display()), e)),
        }
    }

    fn read_chunk(&self, digest: &ChunkDigest, buf: &mut Vec<u8>) -> Result<()> {
        let path = self.chunk_path(digest);
        read_file(&path, buf, "chunk").map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::not_found(format!("chunk {digest} is missing ({})", path.display()))
            } else {
                e
            }
        })
    }

    fn list_chunks(&self, f: &mut dyn FnMut(ChunkInfo) -> Result<()>) -> Result<()> {
        for prefix in read_dir_or_empty(&self.root.join("chunks"))? {
            for entry in read_dir_or_empty(&prefix.path())? {
                let name = entry.file_name();
                let Some(digest) = name.to_str().and_then(|n| n.parse::<ChunkDigest>().ok()) else {
                    continue; // temp and GC leftovers: see remove_stray_files
                };
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(format!("stat {}", entry.path().display()), e)),
                };
                f(ChunkInfo {
                    digest,
                    size_bytes: meta.len(),
                    modified: modified(&meta),
                })?;
            }
        }
        Ok(())
    }

    fn remove_chunk_if_older(
        &self,
        digest: &ChunkDigest,
        cutoff: SystemTime,
    ) -> Result<Option<u64>> {
        let path = self.chunk_path(digest);
        let io_err = |what: &str, e: io::Error| Error::io(format!("{what} {}", path.display()), e);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("stat", e)),
        };
        if modified(&meta) >= cutoff {
            return Ok(None);
        }
        // Move it aside first: a writer touching the old name from now on
        // gets "absent" and stores the chunk again. A touch that landed just
        // before the rename shows in the moved file's mtime: then put it back.
        let aside = path.with_file_name(format!(
            "{}{GC_MARK}{}",
            digest.to_hex(),
            uuid::Uuid::new_v4().simple()
        ));
        match fs::rename(&path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("move aside", e)),
        }
        let meta = fs::symlink_metadata(&aside).map_err(|e| io_err("stat", e))?;
        if modified(&meta) >= cutoff {
            fs::rename(&aside, &path).map_err(|e| io_err("put back", e))?;
            return Ok(None);
        }
        fs::remove_file(&aside).map_err(|e| io_err("remove", e))?;
        Ok(Some(meta.len()))
    }

    fn remove_stray_files(&self, cutoff: SystemTime, dry_run: bool) -> Result<u64> {
        let mut freed = 0;
        let mut dirs = vec![self.root.clone(), self.root.join("writers")];
        for sub in ["chunks", "images"] {
            dirs.extend(
                read_dir_or_empty(&self.root.join(sub))?
                    .iter()
                    .map(|e| e.path()),
            );
        }
        for dir in dirs {
            for entry in read_dir_or_empty(&dir)? {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if !name.contains(TMP_MARK) && !name.contains(GC_MARK) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                if !meta.is_file() || modified(&meta) >= cutoff {
                    continue;
                }
                freed += meta.len();
                if !dry_run {
                    match fs::remove_file(entry.path()) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(Error::io(format!("remove {}", entry.path().display()), e));
                        }
                    }
                }
            }
        }
        Ok(freed)
    }
}

impl ImageStore for DirStore {
    fn read_config(&self) -> Result<Option<Vec<u8>>> {
        let path = self.root.join(STORE_CONFIG_FILE);
        let mut buf = Vec::new();
        match read_file(&path, &mut buf, "store settings") {
            Ok(()) => Ok(Some(buf)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn create_config(&self, bytes: &[u8]) -> Result<()> {
        if self.read_config()?.is_some() {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("{} already holds an imprint store", self.root.display()),
            ));
        }
        for sub in ["", "chunks", "images", "writers"] {
            self.create_dir(&self.root.join(sub))?;
        }
        self.write_atomic(&self.root.join(STORE_CONFIG_FILE), bytes)
    }

    fn write_image_file(&self, image: &ImageId, name: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.image_dir(image);
        self.create_dir(&dir)?;
        self.write_atomic(&dir.join(name), bytes)
    }

    fn read_image_file(&self, image: &ImageId, name: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        read_file(
            &self.image_dir(image).join(name),
            &mut buf,
            &format!("image {image} file"),
        )?;
        Ok(buf)
    }

    fn commit_manifest(&self, image: &ImageId, bytes: &[u8]) -> Result<()> {
        let dir = self.image_dir(image);
        self.create_dir(&dir)?;
        self.write_atomic(&dir.join(MANIFEST_FILE), bytes)
    }

    fn read_manifest(&self, image: &ImageId) -> Result<Vec<u8>> {
        let path = self.image_dir(image).join(MANIFEST_FILE);
        let mut buf = Vec::new();
        read_file(&path, &mut buf, "manifest").map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::not_found(format!("image {image} does not exist"))
            } else {
                e
            }
        })?;
        Ok(buf)
    }

    fn list_images(&self) -> Result<Vec<ImageId>> {
        let mut out = Vec::new();
        for entry in read_dir_or_empty(&self.root.join("images"))? {
            let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if entry.path().join(MANIFEST_FILE).exists() {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    fn list_incomplete(&self) -> Result<Vec<(ImageId, SystemTime)>> {
        let mut out = Vec::new();
        for entry in read_dir_or_empty(&self.root.join("images"))? {
            let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if entry.path().join(MANIFEST_FILE).exists() {
                continue;
            }
            let mut newest = entry
                .metadata()
                .map(|m| modified(&m))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            for f in read_dir_or_empty(&entry.path())? {
                if let Ok(m) = f.metadata() {
                    newest = newest.max(modified(&m));
                }
            }
            out.push((id, newest));
        }
        Ok(out)
    }

    fn delete_image(&self, image: &ImageId) -> Result<()> {
        let dir = self.image_dir(image);
        // Manifest first: from then on the image is gone for every reader.
        match fs::remove_file(dir.join(MANIFEST_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !dir.exists() {
                    return Err(Error::not_found(format!("image {image} does not exist")));
                }
            }
            Err(e) => return Err(Error::io(format!("remove manifest of image {image}"), e)),
        }
        if self.fsync {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(format!("sync {}", dir.display()), e))?;
        }
        fs::remove_dir_all(&dir).map_err(|e| Error::io(format!("remove {}", dir.display()), e))
    }

    fn register_writer(&self, info: &WriterInfo) -> Result<()> {
        let path = self.writer_path(&info.writer_id)?;
        self.create_dir(&self.root.join("writers"))?;
        let bytes = serde_json::to_vec(info).map_err(|e| Error::invalid(e.to_string()))?;
        self.write_atomic(&path, &bytes)
    }

    fn heartbeat_writer(&self, writer_id: &str) -> Result<()> {
        let path = self.writer_path(writer_id)?;
        touch(&path).map_err(|e| Error::io(format!("heartbeat {}", path.display()), e))
    }

    fn unregister_writer(&self, writer_id: &str) -> Result<()> {
        let path = self.writer_path(writer_id)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
        }
    }

    fn list_writers(&self) -> Result<Vec<WriterRecord>> {
        let mut out = Vec::new();
        for entry in read_dir_or_empty(&self.root.join("writers"))? {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let mut buf = Vec::new();
            match read_file(&path, &mut buf, "writer registration") {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let info: WriterInfo = serde_json::from_slice(&buf).map_err(|e| {
                Error::corrupt(format!(
                    "writer registration {} does not parse: {e}",
                    path.display()
                ))
            })?;
            out.push(WriterRecord {
                info,
                heartbeat: modified(&meta),
            });
        }
        Ok(out)
    }
}
