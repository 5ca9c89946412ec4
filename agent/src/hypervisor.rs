//! The seam to the hypervisor. libvirt is behind it in [`crate::libvirt`];
//! the capture and deploy logic is written against this trait and tested
//! with [`fake::FakeHypervisor`].

use std::time::Duration;

use crate::error::Result;

/// Power state of a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PowerState {
    /// Running.
    Running,
    /// Shut off (defined, not running).
    ShutOff,
    /// Paused by the hypervisor or an admin.
    Paused,
    /// Crashed, shutting down, suspended to disk...
    Other,
}

/// A guest's identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestRef {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
}

/// A storage pool's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    /// Bytes free.
    pub available_bytes: u64,
    /// libvirt's pool type (`dir`, `logical`, `netfs`…).
    pub kind: String,
}

/// The volume a disk is copied into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyTarget {
    /// Its path.
    pub path: String,
    /// `raw` or `qcow2`.
    pub format: String,
}

/// What a backup job covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPlan {
    /// The UNIX socket QEMU's NBD server listens on.
    pub socket: std::path::PathBuf,
    /// Every disk of the guest: (target device, scratch file; `None`: not
    /// backed up).
    pub disks: Vec<(String, Option<std::path::PathBuf>)>,
    /// Export the blocks changed since this checkpoint (its disks'
    /// bitmaps), for the disks it covers.
    pub incremental: Option<String>,
    /// Create this checkpoint with the backup, with a bitmap on each of
    /// these disks (qcow2 only).
    pub checkpoint: Option<(String, Vec<String>)>,
}

/// Guest and volume operations, all blocking: call them from a blocking
/// thread, never from the async executor.
pub trait Hypervisor: Send + Sync {
    /// All defined guests.
    fn list_guests(&self) -> Result<Vec<GuestRef>>;
    /// Find a guest by name or UUID: its identity and domain XML.
    fn lookup(&self, guest: &str) -> Result<(GuestRef, String)>;
    /// Current power state.
    fn power_state(&self, guest: &GuestRef) -> Result<PowerState>;
    /// Ask the guest to power off (ACPI power button).
    fn request_shutdown(&self, guest: &GuestRef) -> Result<()>;
    /// Power the guest off at once.
    fn force_off(&self, guest: &GuestRef) -> Result<()>;
    /// Start a defined guest.
    fn start(&self, guest: &GuestRef) -> Result<()>;
    /// Define a new guest from XML.
    fn define(&self, xml: &str) -> Result<GuestRef>;
    /// Remove a guest's definition (it must be off), with what libvirt
    /// keeps beside it: its NVRAM file, managed-save image, and snapshot and
    /// checkpoint metadata. Its disks stay.
    fn undefine(&self, guest: &GuestRef) -> Result<()>;
    /// The storage pool and volume name of the file at `path`, when it is
    /// a volume of a pool libvirt knows; `None` when it is not.
    fn volume_at(&self, path: &str) -> Result<Option<(String, String)>>;
    /// Host path of a volume.
    fn volume_path(&self, pool: &str, volume: &str) -> Result<String>;
    /// Pool state (also proves the pool exists).
    fn pool_info(&self, pool: &str) -> Result<PoolInfo>;
    /// Create a volume of `capacity_bytes` in `pool` (`raw` or `qcow2`);
    /// returns its path. `Conflict` if the name is taken.
    fn create_volume(
        &self,
        pool: &str,
        name: &str,
        format: &str,
        capacity_bytes: u64,
    ) -> Result<String>;
    /// Delete a volume.
    fn delete_volume(&self, pool: &str, name: &str) -> Result<()>;
    /// Start a defined guest with its CPUs paused.
    fn start_paused(&self, guest: &GuestRef) -> Result<()>;
    /// Let a paused guest run.
    fn resume(&self, guest: &GuestRef) -> Result<()>;
    /// Begin a pull-mode backup of a running or paused guest: a
    /// point-in-time view of each disk, exported over NBD on the UNIX
    /// socket `plan.socket` under its target name, while the guest runs on
    /// (copy-before-write into the scratch files).
    fn backup_begin(&self, guest: &GuestRef, plan: &BackupPlan) -> Result<()>;
    /// Read the point-in-time view of `disk` that a backup exports; with
    /// `changes`, also which blocks changed since the backup's
    /// `incremental` checkpoint.
    fn backup_disk(
        &self,
        guest: &GuestRef,
        socket: &std::path::Path,
        disk: &str,
        changes: bool,
    ) -> Result<Box<dyn imprint_store::source::DiskSource>>;
    /// Disk `disk` of the guest's point-in-time view on `socket`, as
    /// other tools (qemu-img, libguestfs) name it: the base a seal's
    /// overlay is made over ([`crate::seal`]).
    fn backup_base(
        &self,
        guest: &GuestRef,
        socket: &std::path::Path,
        disk: &str,
    ) -> Result<crate::seal::Base>;
    /// Names of the guest's checkpoints.
    fn checkpoints(&self, guest: &GuestRef) -> Result<Vec<String>>;
    /// Delete a checkpoint (its bitmaps; a missing one is fine).
    fn delete_checkpoint(&self, guest: &GuestRef, name: &str) -> Result<()>;
    /// End the guest's backup job (no job running is fine).
    fn backup_end(&self, guest: &GuestRef) -> Result<()>;
    /// Whether the guest's agent (qemu-guest-agent on its virtio-serial
    /// channel) answers within `timeout`: `FailedPrecondition` if not.
    fn guest_agent_ping(&self, guest: &GuestRef, timeout: Duration) -> Result<()>;
    /// Freeze the guest's filesystems through its agent (flushing them
    /// first). Fails after `timeout`; the agent may still freeze them
    /// later, so a failed freeze must be followed by thaws.
    fn fs_freeze(&self, guest: &GuestRef, timeout: Duration) -> Result<()>;
    /// Thaw the guest's filesystems (nothing frozen is fine).
    fn fs_thaw(&self, guest: &GuestRef, timeout: Duration) -> Result<()>;
    /// Whether the guest's filesystems are frozen now.
    fn fs_frozen(&self, guest: &GuestRef, timeout: Duration) -> Result<bool>;
    /// Whether QEMU paused the guest because a write failed with "no space"
    /// (the guest waits: its write is retried when it runs again).
    fn paused_on_io_error(&self, guest: &GuestRef) -> Result<bool>;
    /// Start copying everything disk `dev` of the running guest reads (its
    /// image and the backing image under it) into the volume `to` (a lazy
    /// deploy's fill): a mirror, so the guest's writes reach both; once in
    /// step, [`Hypervisor::block_pivot`] switches the disk to the volume.
    /// `mib_s` caps its speed in MiB/s (0: none). `shallow`: copy only the
    /// disk's top image (what the guest wrote above its backing), the
    /// volume already holding the backing's data.
    fn block_copy(
        &self,
        guest: &GuestRef,
        dev: &str,
        to: &CopyTarget,
        mib_s: u64,
        shallow: bool,
    ) -> Result<()>;
    /// Switch disk `dev` to the volume its copy job filled, ending the job;
    /// `false` when the copy is not in step yet (ask again).
    fn block_pivot(&self, guest: &GuestRef, dev: &str) -> Result<bool>;
    /// The block job running on disk `dev`: bytes done and in all, or
    /// `None` when none runs (ended, failed or never started).
    fn block_job(&self, guest: &GuestRef, dev: &str) -> Result<Option<(u64, u64)>>;
    /// Whether disk `dev` of the running guest still reads from a backing
    /// image.
    fn has_backing(&self, guest: &GuestRef, dev: &str) -> Result<bool>;
}

/// An in-memory hypervisor for unit tests: guests with power states,
/// volumes as files in a directory, and switches to misbehave.
#[cfg(feature = "test-util")]
pub mod fake {
    use std::{collections::HashMap, path::PathBuf, sync::Mutex};

    use super::*;
    use crate::error::{AgentError, Kind};

    /// A fake guest.
    #[derive(Debug, Clone)]
    pub struct FakeGuest {
        /// Identity.
        pub r#ref: GuestRef,
        /// Domain XML.
        pub xml: String,
        /// Power state.
        pub state: PowerState,
        /// Powers off on ACPI requests.
        pub obeys_acpi: bool,
        /// ACPI requests received.
        pub acpi_requests: u32,
        /// Has a guest agent that answers.
        pub has_agent: bool,
        /// Its filesystems are frozen.
        pub frozen: bool,
        /// Freezes ever requested.
        pub freezes: u32,
        /// Its agent takes longer than any timeout to answer a freeze.
        pub freeze_hangs: bool,
        /// Paused by QEMU on a failed write.
        pub io_error: bool,
        /// Disks still reading from a backing image.
        pub backed: Vec<String>,
        /// Copy jobs: disk, target.
        pub copies: Vec<(String, CopyTarget)>,
    }

    impl FakeGuest {
        /// A guest in `state` that obeys ACPI and has no guest agent.
        pub fn new(r#ref: GuestRef, xml: String, state: PowerState) -> Self {
            Self {
                r#ref,
                xml,
                state,
                obeys_acpi: true,
                acpi_requests: 0,
                has_agent: false,
                frozen: false,
                freezes: 0,
                freeze_hangs: false,
                io_error: false,
                backed: Vec::new(),
                copies: Vec::new(),
            }
        }
    }

    /// See the module docs.
    #[derive(Debug, Default)]
    pub struct FakeHypervisor {
        /// Guests by name.
        pub guests: Mutex<HashMap<String, FakeGuest>>,
        /// Pools: name → directory.
        pub pools: HashMap<String, PathBuf>,
        /// Fail `start` calls.
        pub fail_start: Mutex<bool>,
        /// Fail `define` calls.
        pub fail_define: Mutex<bool>,
        /// Guests with a backup job: the disk files their views read.
        pub backups: Mutex<HashMap<String, Vec<String>>>,
        /// Checkpoint names (of any guest), in creation order.
        pub checkpoints: Mutex<Vec<String>>,
        /// Fills end without filling the disk (the backing image cannot
        /// be read).
        pub fail_fill: Mutex<bool>,
        /// Copies started: disk, target, shallow.
        pub copies_started: Mutex<Vec<(String, CopyTarget, bool)>>,
    }

    impl FakeHypervisor {
        /// The file behind the guest's disk `disk` (the fake's view of a
        /// running guest is its files).
        fn disk_path(&self, g: &GuestRef, disk: &str) -> Result<String> {
            let xml = self.with_guest(g, |g| Ok(g.xml.clone()))?;
            let config = crate::domain::GuestConfig::from_domain_xml(&xml)
                .map_err(|e| AgentError::new(Kind::Internal, e.to_string()))?;
            config
                .disks
                .iter()
                .find(|d| d.target_dev == disk)
                .and_then(|d| d.source_path.clone())
                .ok_or_else(|| AgentError::new(Kind::NotFound, format!("no disk {disk}")))
        }

        fn with_guest<T>(
            &self,
            g: &GuestRef,
            f: impl FnOnce(&mut FakeGuest) -> Result<T>,
        ) -> Result<T> {
            let mut gs = self.guests.lock().unwrap_or_else(|p| p.into_inner());
            let guest = gs
                .get_mut(&g.name)
                .ok_or_else(|| AgentError::new(Kind::NotFound, format!("no guest {}", g.name)))?;
            f(guest)
        }

        fn pool_dir(&self, pool: &str) -> Result<&PathBuf> {
            self.pools.get(pool).ok_or_else(|| {
                AgentError::new(
                    Kind::NotFound,
                    format!("storage pool {pool:?} does not exist"),
                )
            })
        }
    }

    impl Hypervisor for FakeHypervisor {
        fn list_guests(&self) -> Result<Vec<GuestRef>> {
            let gs = self.guests.lock().unwrap_or_else(|p| p.into_inner());
            Ok(gs.values().map(|g| g.r#ref.clone()).collect())
        }
        fn lookup(&self, guest: &str) -> Result<(GuestRef, String)> {
            let gs = self.guests.lock().unwrap_or_else(|p| p.into_inner());
            gs.values()
                .find(|g| g.r#ref.name == guest || g.r#ref.uuid == guest)
                .map(|g| (g.r#ref.clone(), g.xml.clone()))
                .ok_or_else(|| {
                    AgentError::new(
                        Kind::NotFound,
                        format!("guest {guest:?} does not exist on this host"),
                    )
                })
        }
        fn power_state(&self, g: &GuestRef) -> Result<PowerState> {
            self.with_guest(g, |g| Ok(g.state))
        }
        fn request_shutdown(&self, g: &GuestRef) -> Result<()> {
            self.with_guest(g, |g| {
                g.acpi_requests += 1;
                if g.obeys_acpi {
                    g.state = PowerState::ShutOff;
                }
                Ok(())
            })
        }
        fn force_off(&self, g: &GuestRef) -> Result<()> {
            self.with_guest(g, |g| {
                g.state = PowerState::ShutOff;
                Ok(())
            })
        }
        fn start(&self, g: &GuestRef) -> Result<()> {
            if *self.fail_start.lock().unwrap_or_else(|p| p.into_inner()) {
                return Err(AgentError::new(Kind::Internal, "start failed (injected)"));
            }
            self.with_guest(g, |g| {
                if g.state == PowerState::Running {
                    return Err(AgentError::new(Kind::FailedPrecondition, "already running"));
                }
                g.state = PowerState::Running;
                Ok(())
            })
        }
        fn define(&self, xml: &str) -> Result<GuestRef> {
            if *self.fail_define.lock().unwrap_or_else(|p| p.into_inner()) {
                return Err(AgentError::new(Kind::Internal, "define failed (injected)"));
            }
            let c = crate::domain::GuestConfig::from_domain_xml(xml)
                .map_err(|e| AgentError::new(Kind::InvalidArgument, e.to_string()))?;
            let r = GuestRef {
                name: c.name.clone(),
                uuid: c.uuid.clone(),
            };
            let mut gs = self.guests.lock().unwrap_or_else(|p| p.into_inner());
            if gs.contains_key(&c.name) {
                return Err(AgentError::new(
                    Kind::Conflict,
                    format!("guest {} exists", c.name),
                ));
            }
            let mut g = FakeGuest::new(r.clone(), xml.into(), PowerState::ShutOff);
            g.backed = c
                .disks
                .iter()
                .map(|d| d.target_dev.clone())
                .filter(|dev| crate::domain::disk_has_backing(xml, dev))
                .collect();
            gs.insert(c.name.clone(), g);
            Ok(r)
        }
        fn undefine(&self, g: &GuestRef) -> Result<()> {
            let mut gs = self.guests.lock().unwrap_or_else(|p| p.into_inner());
            gs.remove(&g.name)
                .map(|_| ())
                .ok_or_else(|| AgentError::new(Kind::NotFound, "no such guest"))
        }
        fn volume_at(&self, path: &str) -> Result<Option<(String, String)>> {
            let p = std::path::Path::new(path);
            if !p.exists() {
                return Ok(None);
            }
            Ok(self.pools.iter().find_map(|(pool, dir)| {
                (p.parent() == Some(dir.as_path()))
                    .then(|| p.file_name())
                    .flatten()
                    .map(|n| (pool.clone(), n.to_string_lossy().into_owned()))
            }))
        }
        fn volume_path(&self, pool: &str, volume: &str) -> Result<String> {
            let p = self.pool_dir(pool)?.join(volume);
            if !p.exists() {
                return Err(AgentError::new(
                    Kind::NotFound,
                    format!("volume {volume} not in pool {pool}"),
                ));
            }
            Ok(p.display().to_string())
        }
        fn pool_info(&self, pool: &str) -> Result<PoolInfo> {
            self.pool_dir(pool)?;
            Ok(PoolInfo {
                available_bytes: 1 << 40,
                kind: "dir".into(),
            })
        }
        fn create_volume(
            &self,
            pool: &str,
            name: &str,
            _format: &str,
            capacity_bytes: u64,
        ) -> Result<String> {
            let p = self.pool_dir(pool)?.join(name);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
                .map_err(|e| {
                    AgentError::new(Kind::Conflict, format!("create volume {name}: {e}"))
                })?;
            f.set_len(capacity_bytes)
                .map_err(|e| AgentError::new(Kind::Internal, e.to_string()))?;
            Ok(p.display().to_string())
        }
        fn delete_volume(&self, pool: &str, name: &str) -> Result<()> {
            std::fs::remove_file(self.pool_dir(pool)?.join(name))
                .map_err(|e| AgentError::new(Kind::NotFound, format!("delete volume {name}: {e}")))
        }
        fn start_paused(&self, g: &GuestRef) -> Result<()> {
            self.with_guest(g, |g| {
                if g.state != PowerState::ShutOff {
                    return Err(AgentError::new(Kind::FailedPrecondition, "not shut off"));
                }
                g.state = PowerState::Paused;
                Ok(())
            })
        }
        fn resume(&self, g: &GuestRef) -> Result<()> {
            self.with_guest(g, |g| {
                if g.state != PowerState::Paused {
                    return Err(AgentError::new(Kind::FailedPrecondition, "not paused"));
                }
                g.state = PowerState::Running;
                Ok(())
            })
        }
        fn backup_begin(&self, g: &GuestRef, plan: &BackupPlan) -> Result<()> {
            let disks = &plan.disks;
            let xml = self.with_guest(g, |g| Ok(g.xml.clone()))?;
            let config = crate::domain::GuestConfig::from_domain_xml(&xml)
                .map_err(|e| AgentError::new(Kind::Internal, e.to_string()))?;
            // The fake never writes its guests' disks: the files are the
            // point-in-time views.
            let files = disks
                .iter()
                .filter(|(_, scratch)| scratch.is_some())
                .map(|(dev, _)| {
                    config
                        .disks
                        .iter()
                        .find(|d| &d.target_dev == dev)
                        .and_then(|d| d.source_path.clone())
                        .ok_or_else(|| AgentError::new(Kind::NotFound, format!("no disk {dev}")))
                })
                .collect::<Result<Vec<_>>>()?;
            if let Some((name, _)) = &plan.checkpoint {
                let mut cps = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
                if cps.contains(name) {
                    return Err(AgentError::new(
                        Kind::Conflict,
                        format!("checkpoint {name} exists"),
                    ));
                }
                cps.push(name.clone());
            }
            self.backups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(g.uuid.clone(), files);
            Ok(())
        }
        fn backup_disk(
            &self,
            g: &GuestRef,
            _socket: &std::path::Path,
            disk: &str,
            _changes: bool,
        ) -> Result<Box<dyn imprint_store::source::DiskSource>> {
            let path = self.disk_path(g, disk)?;
            Ok(Box::new(
                imprint_store::source::FileSource::open(std::path::Path::new(&path))
                    .map_err(|e| AgentError::new(Kind::Internal, e.to_string()))?,
            ))
        }
        fn backup_base(
            &self,
            g: &GuestRef,
            _socket: &std::path::Path,
            disk: &str,
        ) -> Result<crate::seal::Base> {
            Ok(crate::seal::Base::File {
                path: self.disk_path(g, disk)?,
                format: "raw".into(),
            })
        }
        fn backup_end(&self, g: &GuestRef) -> Result<()> {
            self.backups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&g.uuid);
            Ok(())
        }
        fn checkpoints(&self, _g: &GuestRef) -> Result<Vec<String>> {
            Ok(self
                .checkpoints
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone())
        }
        fn delete_checkpoint(&self, _g: &GuestRef, name: &str) -> Result<()> {
            self.checkpoints
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|n| n != name);
            Ok(())
        }
        fn guest_agent_ping(&self, g: &GuestRef, _timeout: Duration) -> Result<()> {
            self.with_guest(g, |g| match (g.state, g.has_agent) {
                (PowerState::Running, true) => Ok(()),
                _ => Err(AgentError::new(
                    Kind::FailedPrecondition,
                    "guest agent is not connected",
                )),
            })
        }
        fn fs_freeze(&self, g: &GuestRef, timeout: Duration) -> Result<()> {
            let hangs = self.with_guest(g, |g| {
                g.freezes += 1;
                if !g.has_agent {
                    return Err(AgentError::new(
                        Kind::FailedPrecondition,
                        "guest agent is not connected",
                    ));
                }
                if !g.freeze_hangs {
                    g.frozen = true;
                }
                Ok(g.freeze_hangs)
            })?;
            if hangs {
                std::thread::sleep(timeout);
                return Err(AgentError::new(
                    Kind::DeadlineExceeded,
                    "guest agent is not responding",
                ));
            }
            Ok(())
        }
        fn fs_thaw(&self, g: &GuestRef, _timeout: Duration) -> Result<()> {
            self.with_guest(g, |g| {
                if !g.has_agent {
                    return Err(AgentError::new(
                        Kind::FailedPrecondition,
                        "guest agent is not connected",
                    ));
                }
                g.frozen = false;
                Ok(())
            })
        }
        fn fs_frozen(&self, g: &GuestRef, _timeout: Duration) -> Result<bool> {
            self.with_guest(g, |g| Ok(g.frozen))
        }
        fn paused_on_io_error(&self, g: &GuestRef) -> Result<bool> {
            self.with_guest(g, |g| Ok(g.state == PowerState::Paused && g.io_error))
        }
        fn block_copy(
            &self,
            g: &GuestRef,
            dev: &str,
            to: &CopyTarget,
            _mib_s: u64,
            shallow: bool,
        ) -> Result<()> {
            self.copies_started
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((dev.to_string(), to.clone(), shallow));
            // The fake's copies are in step at once, or fail at once (no
            // job, the disk still backed).
            let fails = *self.fail_fill.lock().unwrap_or_else(|p| p.into_inner());
            self.with_guest(g, |g| {
                if !fails {
                    g.copies.push((dev.to_string(), to.clone()));
                }
                Ok(())
            })
        }
        fn block_pivot(&self, g: &GuestRef, dev: &str) -> Result<bool> {
            self.with_guest(g, |g| {
                let before = g.copies.len();
                g.copies.retain(|(d, _)| d != dev);
                if g.copies.len() == before {
                    return Err(AgentError::new(
                        Kind::FailedPrecondition,
                        format!("no copy job on disk {dev}"),
                    ));
                }
                g.backed.retain(|d| d != dev);
                Ok(true)
            })
        }
        fn block_job(&self, g: &GuestRef, dev: &str) -> Result<Option<(u64, u64)>> {
            self.with_guest(g, |g| {
                Ok(g.copies.iter().any(|(d, _)| d == dev).then_some((1, 1)))
            })
        }
        fn has_backing(&self, g: &GuestRef, dev: &str) -> Result<bool> {
            self.with_guest(g, |g| Ok(g.backed.iter().any(|d| d == dev)))
        }
    }
}
