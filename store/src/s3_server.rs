//! A real S3 server for tests and benchmarks: `s3s-fs` (installed by
//! `scripts/install-deps.sh`) on 127.0.0.1, serving a temporary folder.
//!
//! Objects are plain files under [`S3Server::bucket_dir`], and the server's
//! `Last-Modified` is the file's mtime, so a test can age objects the same
//! way it ages a directory store's files.

#![allow(clippy::expect_used, reason = "a test double (feature test-util)")]

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::s3::S3Options;

/// Access key the test server accepts.
pub const ACCESS_KEY: &str = "imprint-test";
/// Secret key the test server accepts.
pub const SECRET_KEY: &str = "imprint-test-secret";
/// The bucket every test server has.
pub const BUCKET: &str = "imprint";

/// A running `s3s-fs`, killed on drop.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    root: tempfile_like::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

/// Where the `s3s-fs` binary is: `$IMPRINT_S3S_FS`, `s3s-fs` on `PATH`, or
/// `~/.cargo/bin/s3s-fs`.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("IMPRINT_S3S_FS") {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("s3s-fs");
            if p.is_file() {
                return p;
            }
        }
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cargo/bin/s3s-fs")
}

impl S3Server {
    /// Start a server with one empty bucket, [`BUCKET`].
    ///
    /// # Panics
    /// When `s3s-fs` is not installed or does not start (tests want that).
    pub fn start() -> Self {
        let root = tempfile_like::TempDir::new("imprint-s3s");
        std::fs::create_dir_all(root.path().join(BUCKET)).expect("create bucket folder");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let bin = binary();
        // Through a small shell that outlives neither the test process nor
        // its own SIGTERM: a server held in a `static` (one per test binary)
        // is never dropped, and must not stay running after the tests.
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(std::process::id().to_string())
            .arg(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {} ({e}); install it with scripts/install-deps.sh",
                    bin.display()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            root,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Options for a store at `prefix` in [`BUCKET`], with the right keys.
    pub fn options(&self, prefix: &str) -> S3Options {
        let mut o = S3Options::new(BUCKET, prefix);
        o.endpoint = Some(self.endpoint.clone());
        o.access_key_id = Some(ACCESS_KEY.into());
        o.secret_access_key = Some(SECRET_KEY.into());
        o.max_retries = 2;
        o
    }

    /// The folder holding bucket `bucket`'s objects (create it to create
    /// the bucket).
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.path().join(bucket)
    }

    /// The folder holding the objects of a store at `prefix` in [`BUCKET`].
    pub fn store_dir(&self, prefix: &str) -> PathBuf {
        self.bucket_dir(BUCKET).join(prefix)
    }
}

/// `sh -c WATCHDOG sh TEST_PID SERVER ARGS...`: run the server, stop it
/// when the test process is gone or on SIGTERM.
const WATCHDOG: &str = r#"S=$1; shift; "$@" & C=$!
trap 'kill $C 2>/dev/null; wait $C; exit 0' TERM
while kill -0 "$S" 2>/dev/null && kill -0 "$C" 2>/dev/null; do sleep 1; done
kill $C 2>/dev/null; wait $C"#;

impl Drop for S3Server {
    fn drop(&mut self) {
        // SIGTERM: the shell stops the server and exits.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
    }
}

/// A temporary folder removed on drop (no dev-dependency in the library).
mod tempfile_like {
    use std::path::{Path, PathBuf};

    #[derive(Debug)]
    pub(super) struct TempDir(PathBuf);

    impl TempDir {
        pub(super) fn new(prefix: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p).expect("create temporary folder");
            Self(p)
        }
        pub(super) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
