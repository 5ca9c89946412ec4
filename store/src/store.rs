//! [`Store`]: a backend plus the store's settings, and the image-level
//! operations (list, resolve, read index, delete) the pipelines build on.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::{
    DirStore, Error, ErrorKind, FixedIndex, ImageId, Manifest, Result,
    backend::{Backend, ImageStore},
    format::{DEFAULT_CHUNK_SIZE, STORE_LAYOUT_VERSION},
    index::validate_chunk_size,
    s3::{S3Options, S3Store},
};

/// Where a store lives: a directory (the SAN mount) or an S3 bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory.
    Dir(PathBuf),
    /// A prefix in an S3 bucket.
    S3(S3Options),
}

impl Location {
    /// `s3://bucket/prefix` (endpoint and credentials from the `AWS_*`
    /// environment, see [`S3Options::from_url_and_env`]) or a path.
    pub fn parse(s: &str) -> Result<Self> {
        if s.starts_with("s3://") {
            return Ok(Self::S3(S3Options::from_url_and_env(s)?));
        }
        if s.contains("://") {
            return Err(Error::invalid(format!(
                "store {s:?}: only directories and s3:// URLs are supported"
            )));
        }
        if s.is_empty() {
            return Err(Error::invalid("store location is empty"));
        }
        Ok(Self::Dir(PathBuf::from(s)))
    }

    /// Whether both name the same store (same folder, or same endpoint,
    /// bucket and prefix).
    pub fn same_store(&self, other: &Location) -> bool {
        match (self, other) {
            (Self::Dir(a), Self::Dir(b)) => {
                let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
                canon(a) == canon(b)
            }
            (Self::S3(a), Self::S3(b)) => {
                a.endpoint == b.endpoint
                    && a.region == b.region
                    && a.bucket == b.bucket
                    && a.prefix == b.prefix
            }
            _ => false,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir(p) => write!(f, "{}", p.display()),
            Self::S3(o) => f.write_str(&o.url()),
        }
    }
}

/// Settings fixed when the store is created (`imprint-store.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Layout version of the store.
    pub layout_version: u32,
    /// Chunk size of every image in this store: dedup works across images
    /// only when they are cut the same way.
    pub chunk_size: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            layout_version: STORE_LAYOUT_VERSION,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// An opened image store.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    config: StoreConfig,
}

/// One entry of [`Store::list`]: an image, or why its manifest is unreadable.
pub type Listed = (ImageId, Result<Manifest>);

impl Store {
    /// Create a new store in `backend`.
    pub fn create(backend: Arc<dyn Backend>, config: StoreConfig) -> Result<Self> {
        validate_chunk_size(config.chunk_size)?;
        let bytes = serde_json::to_vec_pretty(&config)
            .map_err(|e| Error::invalid(format!("store settings: {e}")))?;
        backend.create_config(&bytes)?;
        Ok(Self { backend, config })
    }

    /// Open an existing store.
    pub fn open(backend: Arc<dyn Backend>) -> Result<Self> {
        let Some(bytes) = backend.read_config()? else {
            return Err(Error::not_found(format!(
                "no imprint store at {backend:?} (its settings file is missing)"
            )));
        };
        let config: StoreConfig = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(format!("store settings do not parse: {e}")))?;
        if config.layout_version != STORE_LAYOUT_VERSION {
            return Err(Error::new(
                ErrorKind::UnsupportedVersion,
                format!(
                    "store layout version {} is not supported by this build (reads {STORE_LAYOUT_VERSION})",
                    config.layout_version
                ),
            ));
        }
        validate_chunk_size(config.chunk_size)
            .map_err(|e| Error::corrupt(e.message().to_string()))?;
        Ok(Self { backend, config })
    }

    /// Open the directory store at `dir`.
    pub fn open_dir(dir: &Path, fsync: bool) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::not_found(format!(
                "store directory {} does not exist",
                dir.display()
            )));
        }
        Self::open(Arc::new(DirStore::new(dir, fsync))).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::not_found(format!("{} is not an imprint store", dir.display()))
            } else {
                e
            }
        })
    }

    /// Open the directory store at `dir`, creating it (with `config`) if the
    /// directory is missing or empty.
    pub fn open_or_create_dir(dir: &Path, fsync: bool, config: StoreConfig) -> Result<Self> {
        let backend = Arc::new(DirStore::new(dir, fsync));
        if backend.read_config()?.is_some() {
            return Self::open(backend);
        }
        if let Ok(mut entries) = std::fs::read_dir(dir)
            && entries.next().is_some()
        {
            return Err(Error::invalid(format!(
                "{} is not empty and not an imprint store; refusing to create one there",
                dir.display()
            )));
        }
        Self::create(backend, config)
    }

    /// Open the store at `location`.
    pub fn open_at(location: &Location, fsync: bool) -> Result<Self> {
        match location {
            Location::Dir(dir) => Self::open_dir(dir, fsync),
            Location::S3(o) => {
                let backend = Arc::new(S3Store::connect(o.clone())?);
                Self::open(backend).map_err(|e| {
                    if e.kind() == ErrorKind::NotFound {
                        Error::not_found(format!("{location} is not an imprint store"))
                    } else {
                        e
                    }
                })
            }
        }
    }

    /// Open the store at `location`, creating it (with `config`) where
    /// nothing is stored yet (an empty or missing folder, an empty prefix).
    pub fn open_or_create_at(
        location: &Location,
        fsync: bool,
        config: StoreConfig,
    ) -> Result<Self> {
        match location {
            Location::Dir(dir) => Self::open_or_create_dir(dir, fsync, config),
            Location::S3(o) => {
                let backend = Arc::new(S3Store::connect(o.clone())?);
                if backend.read_config()?.is_some() {
                    return Self::open(backend);
                }
                if !backend.is_empty()? {
                    return Err(Error::invalid(format!(
                        "{location} holds objects but no imprint store; refusing to create one there"
                    )));
                }
                Self::create(backend, config)
            }
        }
    }

    /// The backend, for pipelines.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Remove the writer registrations of `host` whose process is gone (a
    /// killed capture never unregisters; until its registration is
    /// retired, GC spares every chunk younger than it). Registrations of a
    /// process that still runs are kept. Returns how many were removed.
    /// Call it on the host that wrote them, where the process ids mean
    /// something.
    pub fn retire_dead_writers(&self, host: &str) -> Result<usize> {
        let mut retired = 0;
        let booted = boot_id();
        for w in self.backend.list_writers()? {
            // Registered in an earlier boot of this host: its process is
            // gone whatever process has that id now.
            let earlier_boot =
                !w.info.boot_id.is_empty() && !booted.is_empty() && w.info.boot_id != booted;
            if w.info.host != host || (!earlier_boot && process_alive(w.info.pid)) {
                continue;
            }
            self.backend.unregister_writer(&w.info.writer_id)?;
            retired += 1;
        }
        Ok(retired)
    }

    /// Settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Chunk size of this store.
    pub fn chunk_size(&self) -> u32 {
        self.config.chunk_size
    }

    /// The manifest of image `id`.
    pub fn manifest(&self, id: &ImageId) -> Result<Manifest> {
        let bytes = self.backend.read_manifest(id)?;
        let m = Manifest::decode(&bytes).map_err(|e| e.context(format!("image {id}")))?;
        if &m.image_id != id {
            return Err(Error::corrupt(format!(
                "image {id}: manifest belongs to image {}",
                m.image_id
            )));
        }
        Ok(m)
    }

    /// Every committed image; an unreadable manifest is listed with its error.
    pub fn list(&self) -> Result<Vec<Listed>> {
        Ok(self
            .backend
            .list_images()?
            .into_iter()
            .map(|id| {
                let m = self.manifest(&id);
                (id, m)
            })
            .collect())
    }

    /// Find an image by id, or by a name exactly one image has.
    pub fn resolve(&self, id_or_name: &str) -> Result<Manifest> {
        if let Ok(id) = id_or_name.parse::<ImageId>() {
            return self.manifest(&id);
        }
        let mut found: Vec<Manifest> = self
            .list()?
            .into_iter()
            .filter_map(|(_, m)| m.ok())
            .filter(|m| m.name == id_or_name)
            .collect();
        match found.len() {
            0 => Err(Error::not_found(format!(
                "no image has the id or name {id_or_name:?}"
            ))),
            1 => Ok(found.remove(0)),
            n => Err(Error::new(
                ErrorKind::Conflict,
                format!("{n} images are named {id_or_name:?}; use an image id"),
            )),
        }
    }

    /// Disk `disk`'s index, checked against the manifest's digest of it.
    pub fn read_index(&self, manifest: &Manifest, disk: usize) -> Result<FixedIndex> {
        let id = &manifest.image_id;
        let entry = manifest.disks.get(disk).ok_or_else(|| {
            Error::invalid(format!(
                "image {id} has {} disks, there is no disk {disk}",
                manifest.disks.len()
            ))
        })?;
        let bytes = self
            .backend
            .read_image_file(id, &entry.index_file)
            .map_err(|e| e.context(format!("image {id} disk {disk}")))?;
        if blake3::hash(&bytes).to_hex().as_str() != entry.index_blake3 {
            return Err(Error::corrupt(format!(
                "image {id} disk {disk}: index {} does not match the manifest's digest of it",
                entry.index_file
            )));
        }
        let index = FixedIndex::decode(&bytes)
            .map_err(|e| e.context(format!("image {id} disk {disk} index {}", entry.index_file)))?;
        if index.size_bytes() != entry.size_bytes || index.chunk_size() != manifest.chunk_size {
            return Err(Error::corrupt(format!(
                "image {id} disk {disk}: index and manifest disagree on size or chunk size"
            )));
        }
        Ok(index)
    }

    /// Remove an image's manifest and indexes; its chunks go at the next GC
    /// unless other images use them.
    pub fn delete_image(&self, id: &ImageId) -> Result<()> {
        self.backend.delete_image(id)
    }
}

/// Whether process `pid` runs on this host (EPERM: it runs as another user).
/// This host's kernel boot id (empty where the kernel has none).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::WriterInfo;

    #[test]
    fn dead_writers_of_this_host_are_retired() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Store::open_or_create_dir(&tmp.path().join("s"), false, StoreConfig::default())
            .expect("store");
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let dead = child.id();
        child.wait().expect("wait");
        let image: ImageId = "8c4a4d2e-43a5-4d77-9a55-3a1f3a5b5e00".parse().expect("id");
        let this_boot = boot_id();
        assert!(!this_boot.is_empty(), "Linux has a boot id");
        for (id, host, pid, boot) in [
            ("dead-here", "h", dead, this_boot.as_str()),
            ("alive-here", "h", std::process::id(), this_boot.as_str()),
            ("alive-here-unknown-boot", "h", std::process::id(), ""),
            // A live pid, but from before a reboot: another process now.
            (
                "earlier-boot",
                "h",
                std::process::id(),
                "0b5c2e0e-0000-4000-8000-000000000000",
            ),
            ("dead-elsewhere", "other", dead, this_boot.as_str()),
        ] {
            store
                .backend()
                .register_writer(&WriterInfo {
                    writer_id: id.into(),
                    image_id: image.clone(),
                    host: host.into(),
                    pid,
                    boot_id: boot.into(),
                    started_unix: 0,
                })
                .expect("register");
        }
        assert_eq!(store.retire_dead_writers("h").expect("retire"), 2);
        let mut left: Vec<String> = store
            .backend()
            .list_writers()
            .expect("list")
            .into_iter()
            .map(|w| w.info.writer_id)
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["alive-here", "alive-here-unknown-boot", "dead-elsewhere"]
        );
    }
}
