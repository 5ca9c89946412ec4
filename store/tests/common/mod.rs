//! What the store's integration tests share: a store of either backend, and
//! a way to reach its objects as files (a directory store's own files, or
//! the files behind the test S3 server's objects) to age or damage them.

#![allow(dead_code)]

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use imprint_store::{Location, Store, StoreConfig, s3_server::S3Server};

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A prefix in a bucket of a real S3 server (s3s-fs).
    S3,
}

/// One S3 server per test binary; every store gets its own prefix.
pub fn s3_server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(S3Server::start)
}

/// A store of `kind`, and the folder its objects are files in.
#[derive(Debug, Clone)]
pub struct TestStore {
    /// The backend.
    pub kind: Kind,
    /// Where it is.
    pub location: Location,
    /// The folder holding its objects (`chunks/`, `images/`, ...).
    pub files: PathBuf,
}

impl TestStore {
    /// A new empty store location of `kind`; a directory store goes in
    /// `dir/<name>`.
    pub fn new(kind: Kind, dir: &Path, name: &str) -> Self {
        match kind {
            Kind::Dir => {
                let files = dir.join(name);
                Self {
                    kind,
                    location: Location::Dir(files.clone()),
                    files,
                }
            }
            Kind::S3 => {
                let server = s3_server();
                let prefix = format!("{name}-{}", uuid::Uuid::new_v4().simple());
                Self {
                    kind,
                    location: Location::S3(server.options(&prefix)),
                    files: server.store_dir(&prefix),
                }
            }
        }
    }

    /// Create (or open) the store with `config`.
    pub fn create(&self, config: StoreConfig) -> Store {
        Store::open_or_create_at(&self.location, false, config).expect("create store")
    }

    /// Open it again, as another process would.
    pub fn reopen(&self) -> Store {
        Store::open_at(&self.location, false).expect("reopen store")
    }

    /// The file behind chunk `hex`.
    pub fn chunk_file(&self, hex: &str) -> PathBuf {
        self.files.join("chunks").join(&hex[..4]).join(hex)
    }

    /// The file behind `name` of image `id`.
    pub fn image_file(&self, id: &str, name: &str) -> PathBuf {
        self.files.join("images").join(id).join(name)
    }

    /// Make every chunk (and its S3 touch marker) look `by` old.
    pub fn age_all_chunks(&self, by: Duration) {
        for sub in ["chunks", "touch"] {
            for prefix in read_dir(&self.files.join(sub)) {
                for c in read_dir(&prefix) {
                    age(&c, by);
                }
            }
        }
    }

    /// Make chunk `hex` (and its marker) look `by` old.
    pub fn age_chunk(&self, hex: &str, by: Duration) {
        age(&self.chunk_file(hex), by);
        let marker = self.files.join("touch").join(&hex[..4]).join(hex);
        if marker.exists() {
            age(&marker, by);
        }
    }
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir) {
        Ok(it) => it.map(|e| e.expect("entry").path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Set `path`'s mtime `by` in the past.
pub fn age(path: &Path, by: Duration) {
    let t = SystemTime::now() - by;
    File::open(path)
        .expect("open")
        .set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .expect("set times");
}

/// Run each named `fn(Kind)` as a test on both backends:
/// `dir::name` and `s3::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod dir {
            $( #[test] fn $name() { super::$name(super::common::Kind::Dir) } )*
        }
        mod s3 {
            $( #[test] fn $name() { super::$name(super::common::Kind::S3) } )*
        }
    };
}
