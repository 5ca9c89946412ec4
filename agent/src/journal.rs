//! A small journal of in-flight work on local disk, so an agent that is
//! killed mid-operation finishes or undoes it at start-up: a capture's
//! guest goes back to the power state it had, a deploy's half-made guest
//! and volumes are removed.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Kind, Result};

/// One in-flight operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A capture: the guest must end up running if it was.
    Capture {
        /// Operation id.
        operation_id: String,
        /// Guest name.
        guest_name: String,
        /// Guest UUID.
        guest_uuid: String,
        /// Power state before the capture began.
        was_running: bool,
        /// Directory of a point-in-time read (NBD socket, scratch files):
        /// its backup job is ended and the directory removed.
        #[serde(default)]
        backup_dir: Option<String>,
        /// A live capture froze (or may yet freeze) the guest's
        /// filesystems: thaw until a thaw gets through.
        #[serde(default)]
        thaw: bool,
        /// Directory of a seal ([`crate::seal`]): its servers are stopped
        /// and the directory removed.
        #[serde(default)]
        seal_dir: Option<String>,
    },
    /// A deploy: what it created so far, to remove if it cannot finish.
    Deploy {
        /// Operation id.
        operation_id: String,
        /// New guest's name.
        guest_name: String,
        /// Pool of the volumes.
        pool: String,
        /// Volume names created so far.
        volumes: Vec<String>,
        /// UUID of the defined domain, once defined.
        defined_uuid: Option<String>,
        /// NVRAM file written from the image, before it is written.
        #[serde(default)]
        nvram: Option<String>,
        /// Set once a lazy deploy's guest runs on its exports: the deploy
        /// is then resumed at start-up (exports served again, the fill
        /// finished), not undone.
        #[serde(default)]
        filling: Option<Box<Filling>>,
    },
}

/// A lazy deploy whose guest runs while its volumes fill: what a restarted
/// agent needs to serve the exports again on the sockets QEMU reconnects
/// to, finish the fill and report the deploy's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filling {
    /// The image's store as the request named it (empty: the agent's own).
    pub store: String,
    /// The image.
    pub image_id: String,
    /// The new guest's UUID.
    pub guest_uuid: String,
    /// The disks being filled.
    pub disks: Vec<FillingDisk>,
    /// Fill speed cap in MiB/s per disk (0: none).
    pub fill_mib_s: u64,
    /// Paths of the new volumes (the deploy's result).
    pub volume_paths: Vec<String>,
    /// MAC addresses of the new guest (the deploy's result).
    pub macs: Vec<String>,
    /// Bytes of image data the volumes get (the deploy's result).
    pub bytes_written: u64,
}

/// One disk of a [`Filling`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FillingDisk {
    /// The disk's index in the image.
    pub index: usize,
    /// Guest device.
    pub dev: String,
    /// The export's socket (the backing QEMU reconnects to).
    pub socket: String,
    /// The volume filled: its path.
    pub target: String,
    /// Its format (`raw`, `qcow2`).
    pub format: String,
    /// The overlay volume the guest started on.
    pub overlay: String,
}

impl Entry {
    /// The operation this entry belongs to.
    pub fn operation_id(&self) -> &str {
        match self {
            Entry::Capture { operation_id, .. } | Entry::Deploy { operation_id, .. } => {
                operation_id
            }
        }
    }
}

/// How long the mark of an operation recovery undid is kept: far longer
/// than a daemon re-sends an unacknowledged request.
pub const UNDONE_KEPT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> AgentError {
    move |e| AgentError::new(Kind::Internal, format!("{what}: {e}"))
}

impl Journal {
    /// Open (and create) the journal in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(io_err(format!(
            "create journal directory {}",
            dir.display()
        )))?;
        let journal = Self {
            dir: dir.to_path_buf(),
        };
        journal.forget_undone(UNDONE_KEPT);
        Ok(journal)
    }

    fn path(&self, id: &str) -> Result<PathBuf> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(AgentError::new(
                Kind::InvalidArgument,
                format!("bad operation id {id:?}"),
            ));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    /// Record (or update) an entry durably before acting on it.
    pub fn write(&self, e: &Entry) -> Result<()> {
        let path = self.path(e.operation_id())?;
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(e)
            .map_err(|x| AgentError::new(Kind::Internal, x.to_string()))?;
        let w = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        w().map_err(io_err(format!("write journal {}", path.display())))
    }

    /// The operation is over.
    pub fn remove(&self, id: &str) -> Result<()> {
        match fs::remove_file(self.path(id)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("remove journal entry {id}"))(e)),
        }
    }

    fn undone_path(&self, id: &str) -> Result<PathBuf> {
        Ok(self.path(id)?.with_extension("undone"))
    }

    /// Record that recovery undid operation `id`, left by a run that died:
    /// a request under that id again (a daemon re-sending one it never saw
    /// acknowledged) is refused, not run afresh. Marks older than
    /// [`UNDONE_KEPT`] are dropped when the journal opens.
    pub fn mark_undone(&self, id: &str) -> Result<()> {
        let path = self.undone_path(id)?;
        let w = || -> std::io::Result<()> {
            fs::File::create(&path)?.sync_all()?;
            fs::File::open(&self.dir)?.sync_all()
        };
        w().map_err(io_err(format!("write {}", path.display())))
    }

    /// Whether recovery undid operation `id` (see [`Journal::mark_undone`]).
    pub fn undone(&self, id: &str) -> bool {
        self.undone_path(id).is_ok_and(|p| p.exists())
    }

    /// Drop the marks of undone operations older than `kept`.
    fn forget_undone(&self, kept: std::time::Duration) {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return;
        };
        for p in dir.flatten().map(|e| e.path()) {
            let old = fs::metadata(&p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= kept));
            if old && p.extension().and_then(|e| e.to_str()) == Some("undone") {
                let _ = fs::remove_file(&p);
            }
        }
    }

    /// Entries left by a previous run.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for ent in
            fs::read_dir(&self.dir).map_err(io_err(format!("list {}", self.dir.display())))?
        {
            let p = ent.map_err(io_err("list journal".into()))?.path();
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let bytes = fs::read(&p).map_err(io_err(format!("read {}", p.display())))?;
            let e: Entry = serde_json::from_slice(&bytes).map_err(|x| {
                AgentError::new(
                    Kind::Internal,
                    format!("journal entry {} does not parse: {x}", p.display()),
                )
            })?;
            out.push(e);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_and_go() {
        let tmp = tempfile::tempdir().expect("tmp");
        let j = Journal::open(&tmp.path().join("j")).expect("open");
        let e = Entry::Capture {
            operation_id: "op-1".into(),
            guest_name: "a".into(),
            guest_uuid: "u".into(),
            was_running: true,
            backup_dir: None,
            thaw: false,
            seal_dir: None,
        };
        j.write(&e).expect("write");
        let j2 = Journal::open(&tmp.path().join("j")).expect("reopen");
        assert_eq!(j2.list().expect("list"), vec![e]);
        j2.remove("op-1").expect("remove");
        assert!(j2.list().expect("list").is_empty());
        assert!(j2.remove("../x").is_err());
        // An undone operation's mark outlives its entry and a reopen; it
        // is not an entry.
        assert!(!j2.undone("op-1"));
        j2.mark_undone("op-1").expect("mark");
        let j3 = Journal::open(&tmp.path().join("j")).expect("reopen");
        assert!(j3.undone("op-1"));
        assert!(j3.list().expect("list").is_empty());
        assert!(!j3.undone("../x"));
        j3.forget_undone(std::time::Duration::ZERO);
        assert!(!j3.undone("op-1"));
    }
}
