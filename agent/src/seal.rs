//! Seal on capture: the stored image itself generalized, so every deploy
//! of it starts without the source's identity, `--keep-identity` or not,
//! and deploys of it skip generalization (nothing left to remove).
//!
//! The source is never modified: each disk to read gets a qcow2 overlay
//! (in a directory of the capture's own) over what the capture would have
//! read — the point-in-time view's NBD export, or the shut-off guest's
//! file — and `virt-sysprep` edits the overlays ([`crate::generalize`]:
//! a deploy's operations, then the machine-id emptied and the random
//! seeds deleted, since every clone would share them). `qemu-nbd` then
//! serves each overlay read-only and the capture reads it as it reads a
//! view. Every disk is read in full (the overlays are no earlier
//! capture's changes), and no checkpoint is taken: a sealed image is no
//! base for an incremental recapture of its source.
//!
//! Cost: one libguestfs appliance per capture (10 s or so under TCG, see
//! docs/benchmarks.md), while the guest runs again (point-in-time) or
//! stays off (a capture read with the guest off).

use std::{
    io::Read,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use imprint_store::source::DiskSource;

use crate::{
    error::{AgentError, Kind, Result},
    generalize::Purpose,
};

/// Image label (in the manifest) of a sealed image: the tool it was
/// generalized with. Only the agent writes it (a capture asking for it
/// is refused).
pub const SEALED_LABEL: &str = "imprint.sealed";

/// What the label says.
pub const SEALED_WITH: &str = "virt-sysprep";

/// How long `qemu-nbd` may take to listen.
const SERVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a manifest's image was sealed at capture.
pub fn is_sealed(manifest: &imprint_store::Manifest) -> bool {
    manifest.labels.contains_key(SEALED_LABEL)
}

/// What one disk's overlay is made over.
#[derive(Debug, Clone)]
pub enum Base {
    /// A point-in-time view's NBD export (raw).
    Nbd {
        /// The server's UNIX socket.
        socket: PathBuf,
        /// The export's name.
        export: String,
    },
    /// A disk file in libvirt format `format` (raw or qcow2).
    File {
        /// Its path.
        path: String,
        /// Its format.
        format: String,
    },
}

impl Base {
    /// `qemu-img create` arguments naming this base as the backing file.
    fn backing_args(&self) -> [String; 4] {
        let (name, format) = match self {
            Base::Nbd { socket, export } => (crate::nbd::unix_url(socket, export), "raw"),
            Base::File { path, format } => {
                (path.clone(), if format.is_empty() { "raw" } else { format })
            }
        };
        ["-b".into(), name, "-F".into(), format.into()]
    }
}

/// The sealed disks, each served read-only on its own socket; dropping it
/// stops the servers and removes the directory.
#[derive(Debug)]
pub struct Sealed {
    dir: PathBuf,
    servers: Vec<Child>,
    sockets: Vec<PathBuf>,
}

/// The export name each overlay is served under.
const EXPORT: &str = "sealed";

impl Sealed {
    /// Disk `i` as sealed, to read.
    pub fn open(&mut self, i: usize, cancel: &AtomicBool) -> Result<Box<dyn DiskSource>> {
        let socket = &self.sockets[i];
        let started = Instant::now();
        // The server exits once its one client is gone: the first
        // connection that gets through is the reader's.
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(AgentError::new(Kind::Cancelled, "operation cancelled"));
            }
            match crate::nbd::NbdDisk::open(socket, EXPORT) {
                Ok(d) => return Ok(Box::new(d)),
                Err(e) => {
                    if let Ok(Some(status)) = self.servers[i].try_wait() {
                        let mut err = String::new();
                        if let Some(mut s) = self.servers[i].stderr.take() {
                            let _ = s.read_to_string(&mut err);
                        }
                        return Err(AgentError::new(
                            Kind::Internal,
                            format!(
                                "qemu-nbd for sealed disk {i} ended ({status}): {}",
                                err.trim()
                            ),
                        ));
                    }
                    if started.elapsed() > SERVE_TIMEOUT {
                        return Err(AgentError::new(
                            Kind::Internal,
                            format!(
                                "qemu-nbd did not serve sealed disk {i} on {}: {e}",
                                socket.display()
                            ),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        remove(&self.dir);
    }
}

/// Generalize overlays of `bases` (one per disk, in the order the guest
/// sees them) in `dir`, which this creates and the result removes, and
/// serve them. `tcg`: libguestfs's appliance must not try KVM.
pub fn seal(dir: &Path, bases: &[Base], tcg: bool, cancel: &AtomicBool) -> Result<Sealed> {
    std::fs::create_dir_all(dir).map_err(|e| {
        AgentError::new(
            Kind::Internal,
            format!("create seal directory {}: {e}", dir.display()),
        )
    })?;
    let mut sealed = Sealed {
        dir: dir.to_path_buf(),
        servers: Vec::new(),
        sockets: Vec::new(),
    };
    let overlays: Vec<PathBuf> = (0..bases.len())
        .map(|i| dir.join(format!("disk{i}.qcow2")))
        .collect();
    for (base, overlay) in bases.iter().zip(&overlays) {
        crate::tool::run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .args(base.backing_args())
                .arg(overlay),
            &format!("create the overlay {} to seal", overlay.display()),
        )?;
    }
    let list: Vec<(&Path, &str)> = overlays.iter().map(|p| (p.as_path(), "qcow2")).collect();
    crate::generalize::generalize(&list, tcg, cancel, Purpose::Seal)?;
    for (i, overlay) in overlays.iter().enumerate() {
        let socket = crate::lazy::socket_path(dir, "seal", i);
        let child = Command::new("qemu-nbd")
            .args(["--read-only", "--format=qcow2", "--export-name", EXPORT])
            .arg("--socket")
            .arg(&socket)
            .arg("--pid-file")
            .arg(socket.with_extension("pid"))
            .arg(overlay)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| AgentError::new(Kind::Internal, format!("run qemu-nbd: {e}")))?;
        sealed.servers.push(child);
        sealed.sockets.push(socket);
    }
    Ok(sealed)
}

/// Remove what a seal left in `dir` (a capture that died, found by the
/// journal): stop its servers (their pid files), then the directory. A
/// pid is signalled only while it is still a `qemu-nbd` serving from
/// `dir`: after a reboot, or once the server died, the number may be any
/// process's.
pub fn remove(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "pid")
                && let Ok(text) = std::fs::read_to_string(&path)
                && let Ok(pid) = text.trim().parse::<i32>()
                && serves_from(pid, dir)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the seal directory")
        }
    }
}

/// Whether process `pid` is a `qemu-nbd` whose arguments name a file in
/// `dir`.
fn serves_from(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline
        .split(|b| *b == 0)
        .map(|a| Path::new(std::ffi::OsStr::from_bytes(a)));
    args.next()
        .is_some_and(|exe| exe.file_name().is_some_and(|n| n == "qemu-nbd"))
        && args.any(|a| a.parent() == Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_name_their_base_with_its_format() {
        let nbd = Base::Nbd {
            socket: "/run/b/nbd.sock".into(),
            export: "vda".into(),
        };
        assert_eq!(
            nbd.backing_args(),
            ["-b", "nbd+unix:///vda?socket=/run/b/nbd.sock", "-F", "raw"]
        );
        let file = Base::File {
            path: "/var/lib/libvirt/images/g.qcow2".into(),
            format: "qcow2".into(),
        };
        assert_eq!(
            file.backing_args(),
            ["-b", "/var/lib/libvirt/images/g.qcow2", "-F", "qcow2"]
        );
        let untyped = Base::File {
            path: "/dev/vg/g".into(),
            format: String::new(),
        };
        assert_eq!(untyped.backing_args()[3], "raw");
    }
}
