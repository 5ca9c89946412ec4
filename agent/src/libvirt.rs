//! The one module that talks to libvirt (the `virt` crate). Every call
//! blocks: callers run them on blocking threads.
//!
//! The connection is opened lazily and dropped after an error that means
//! "libvirtd is gone" (restarted, crashed), so the next call reconnects.

use std::{sync::Mutex, time::Duration};

use virt::{
    connect::Connect,
    domain::{Domain, DomainPausedReason, DomainState, DomainStateReason},
    enumutil::Enum,
    error::{Error as VirtError, ErrorNumber},
    storage_pool::StoragePool,
    storage_vol::StorageVol,
};

use crate::{
    domain::esc,
    error::{AgentError, Kind, Result},
    hypervisor::{BackupPlan, CopyTarget, GuestRef, Hypervisor, PoolInfo, PowerState},
};

/// libvirt through one (re)connecting, shared connection.
pub struct Libvirt {
    uri: String,
    conn: Mutex<Option<Connect>>,
}

impl std::fmt::Debug for Libvirt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libvirt")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

fn kind_of(e: &VirtError) -> Kind {
    match e.code() {
        Enum::Known(
            ErrorNumber::NoDomain
            | ErrorNumber::NoStoragePool
            | ErrorNumber::NoStorageVolume
            | ErrorNumber::NoDomainCheckpoint,
        ) => Kind::NotFound,
        Enum::Known(ErrorNumber::StorageVolExist) => Kind::Conflict,
        Enum::Known(ErrorNumber::OperationInvalid) => Kind::FailedPrecondition,
        Enum::Known(ErrorNumber::NoConnect | ErrorNumber::Rpc | ErrorNumber::SystemError) => {
            Kind::Unavailable
        }
        Enum::Known(ErrorNumber::XmlError | ErrorNumber::XmlDetail | ErrorNumber::InvalidArg) => {
            Kind::InvalidArgument
        }
        _ => Kind::Internal,
    }
}

impl Libvirt {
    /// A hypervisor at `uri` (e.g. `qemu:///system`); nothing is opened yet.
    pub fn new(uri: &str) -> Self {
        // libvirt prints every error to stderr by default; ours are
        // returned, mapped and logged where handled.
        virt::error::clear_error_callback();
        Self {
            uri: uri.to_string(),
            conn: Mutex::new(None),
        }
    }

    /// The shared connection, opened when there is none. The lock is held
    /// only to look at the slot: opening happens outside it, and calls run
    /// on a clone (libvirt connections are thread-safe), so one slow call,
    /// or a reconnect while libvirtd restarts, never holds up the others.
    fn connection(&self) -> Result<Connect> {
        if let Some(c) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        let c = Connect::open(Some(&self.uri)).map_err(|e| {
            AgentError::new(
                Kind::Unavailable,
                format!("connect to libvirt at {}: {}", self.uri, e.message()),
            )
        })?;
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        // Another call may have connected meanwhile: keep one.
        Ok(slot.get_or_insert(c).clone())
    }

    /// Whether libvirt runs a backup job on the guest (a gone or stopped
    /// guest runs none). Other jobs (a save, a migration an administrator
    /// started) are not ours to wait for or abort.
    fn backup_running(&self, g: &GuestRef) -> Result<bool> {
        let r = self.with(&format!("read the job of guest {}", g.name), |c| {
            let d = Self::domain_of(c, g)?;
            let mut kind: std::os::raw::c_int = 0;
            let mut params: virt::sys::virTypedParameterPtr = std::ptr::null_mut();
            let mut n: std::os::raw::c_int = 0;
            // SAFETY: `d` is a live domain handle for the call; `kind`,
            // `params` and `n` are valid out-pointers; libvirt allocates
            // the parameter array (freed below).
            let r = unsafe {
                virt::sys::virDomainGetJobStats(d.as_ptr(), &mut kind, &mut params, &mut n, 0)
            };
            if r < 0 {
                return Err(VirtError::last_error());
            }
            let mut operation: std::os::raw::c_int = 0;
            // SAFETY: `params` holds `n` parameters from libvirt (or is
            // NULL with n = 0); the name is a NUL-terminated constant and
            // `operation` a valid out-pointer. 0 means "not present".
            let found = unsafe {
                virt::sys::virTypedParamsGetInt(
                    params,
                    n,
                    virt::sys::VIR_DOMAIN_JOB_OPERATION.as_ptr(),
                    &mut operation,
                )
            };
            // SAFETY: the array and its strings came from libvirt, which
            // frees them; NULL with n = 0 is fine.
            unsafe { virt::sys::virTypedParamsFree(params, n) };
            Ok(i64::from(kind) != i64::from(virt::sys::VIR_DOMAIN_JOB_NONE)
                && found == 1
                && i64::from(operation) == i64::from(virt::sys::VIR_DOMAIN_JOB_OPERATION_BACKUP))
        });
        match r {
            Err(e) if matches!(e.kind, Kind::NotFound | Kind::FailedPrecondition) => Ok(false),
            other => other,
        }
    }

    /// Run `f` with a live connection; `what` names the action in errors.
    fn with<T>(&self, what: &str, f: impl FnOnce(&Connect) -> Result<T, VirtError>) -> Result<T> {
        let conn = self.connection()?;
        match f(&conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                // A call on a connection libvirtd closed fails with
                // whatever error the RPC layer had at hand ("Broken pipe"):
                // it is libvirt being unavailable all the same.
                let dead = conn.is_alive().map_or(true, |alive| !alive);
                let kind = if dead { Kind::Unavailable } else { kind_of(&e) };
                if kind == Kind::Unavailable {
                    // Forget it, unless another call replaced it already
                    // with one that lives.
                    let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
                    if slot
                        .as_ref()
                        .is_some_and(|c| !c.is_alive().unwrap_or(false))
                    {
                        *slot = None;
                    }
                    return Err(AgentError::new(
                        kind,
                        format!(
                            "{what}: libvirt at {} is unavailable: {}",
                            self.uri,
                            e.message()
                        ),
                    ));
                }
                Err(AgentError::new(kind, format!("{what}: {}", e.message())))
            }
        }
    }

    fn domain(conn: &Connect, guest: &str) -> Result<Domain, VirtError> {
        match conn.lookup_domain_by_name(guest) {
            Ok(d) => Ok(d),
            Err(e) if uuid::Uuid::try_parse(guest).is_ok() => {
                conn.lookup_domain_by_uuid_string(guest).or(Err(e))
            }
            Err(e) => Err(e),
        }
    }

    fn domain_of(conn: &Connect, g: &GuestRef) -> Result<Domain, VirtError> {
        conn.lookup_domain_by_uuid_string(&g.uuid)
    }

    fn reference(d: &Domain) -> Result<GuestRef, VirtError> {
        Ok(GuestRef {
            name: d.name()?,
            uuid: d.uuid_string()?,
        })
    }
}

fn pool(conn: &Connect, name: &str) -> Result<StoragePool, VirtError> {
    conn.lookup_storage_pool_by_name(name)
}

impl Hypervisor for Libvirt {
    fn list_guests(&self) -> Result<Vec<GuestRef>> {
        self.with("list guests", |c| {
            c.list_all_domains(0)?.iter().map(Self::reference).collect()
        })
    }

    fn lookup(&self, guest: &str) -> Result<(GuestRef, String)> {
        self.with(&format!("guest {guest:?}"), |c| {
            let d = Self::domain(c, guest)?;
            Ok((Self::reference(&d)?, d.xml_desc(0)?))
        })
        .map_err(|e| {
            if e.kind == Kind::NotFound {
                AgentError::new(
                    Kind::NotFound,
                    format!("guest {guest:?} does not exist on this host"),
                )
            } else {
                e
            }
        })
    }

    fn power_state(&self, g: &GuestRef) -> Result<PowerState> {
        self.with(&format!("state of guest {}", g.name), |c| {
            // `Domain::state()` swallows libvirt errors (a dead connection
            // reads as an unknown state); `info()` reports them.
            let state = Self::domain_of(c, g)?.info()?.state;
            Ok(match state {
                Enum::Known(DomainState::Running | DomainState::Blocked) => PowerState::Running,
                Enum::Known(DomainState::Shutoff) => PowerState::ShutOff,
                Enum::Known(DomainState::Paused) => PowerState::Paused,
                _ => PowerState::Other,
            })
        })
    }

    fn request_shutdown(&self, g: &GuestRef) -> Result<()> {
        self.with(&format!("shut down guest {}", g.name), |c| {
            Self::domain_of(c, g)?.shutdown()
        })
    }

    fn force_off(&self, g: &GuestRef) -> Result<()> {
        self.with(&format!("force off guest {}", g.name), |c| {
            Self::domain_of(c, g)?.destroy()
        })
    }

    fn start(&self, g: &GuestRef) -> Result<()> {
        self.with(&format!("start guest {}", g.name), |c| {
            Self::domain_of(c, g)?.create().map(|_| ())
        })
    }

    fn define(&self, xml: &str) -> Result<GuestRef> {
        self.with("define guest", |c| {
            Self::reference(&c.define_domain_xml(xml)?)
        })
    }

    fn undefine(&self, g: &GuestRef) -> Result<()> {
        // NVRAM files of UEFI guests, a managed-save image, and libvirt's
        // records of snapshots and checkpoints go with the definition
        // (without these flags libvirt refuses to undefine such a guest).
        let flags = virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM
            | virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | virt::sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA;
        self.with(&format!("undefine guest {}", g.name), |c| {
            Self::domain_of(c, g)?.undefine_flags(flags)
        })
    }

    fn volume_at(&self, path: &str) -> Result<Option<(String, String)>> {
        let r = self.with(&format!("find the storage volume at {path}"), |c| {
            let v = c.lookup_storage_vol_by_path(path)?;
            Ok((v.lookup_storage_pool()?.name()?, v.name()?))
        });
        match r {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.kind == Kind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn volume_path(&self, pool_name: &str, volume: &str) -> Result<String> {
        self.with(&format!("volume {volume} in pool {pool_name}"), |c| {
            pool(c, pool_name)?
                .lookup_storage_vol_by_name(volume)?
                .path()
        })
    }

    fn pool_info(&self, pool_name: &str) -> Result<PoolInfo> {
        self.with(&format!("storage pool {pool_name:?}"), |c| {
            let p = pool(c, pool_name)?;
            // A refresh picks up what changed outside libvirt. libvirt
            // refuses it while it creates a volume in the pool ("has
            // asynchronous jobs running": another deploy at the same
            // time); the figures it keeps are current for its own volumes.
            if let Err(e) = p.refresh(0) {
                tracing::debug!(pool = pool_name, error = %e.message(), "pool not refreshed; using libvirt's figures");
            }
            let xml = p.xml_desc(0)?;
            Ok(PoolInfo {
                available_bytes: p.info()?.available,
                kind: roxmltree::Document::parse(&xml)
                    .ok()
                    .and_then(|d| d.root_element().attribute("type").map(str::to_string))
                    .unwrap_or_default(),
            })
        })
    }

    fn create_volume(
        &self,
        pool_name: &str,
        name: &str,
        format: &str,
        capacity_bytes: u64,
    ) -> Result<String> {
        let xml = format!(
            "<volume><name>{}</name><capacity unit='bytes'>{capacity_bytes}</capacity><allocation unit='bytes'>0</allocation>\
             <target><format type='{}'/><permissions><mode>0600</mode></permissions></target></volume>",
            esc(name),
            esc(format)
        );
        self.with(&format!("create volume {name} in pool {pool_name}"), |c| {
            StorageVol::create_xml(&pool(c, pool_name)?, &xml, 0)?.path()
        })
    }

    fn delete_volume(&self, pool_name: &str, name: &str) -> Result<()> {
        self.with(&format!("delete volume {name} in pool {pool_name}"), |c| {
            pool(c, pool_name)?
                .lookup_storage_vol_by_name(name)?
                .delete(0)
        })
    }

    fn start_paused(&self, g: &GuestRef) -> Result<()> {
        self.with(&format!("start guest {} paused", g.name), |c| {
            Self::domain_of(c, g)?
                .create_with_flags(virt::sys::VIR_DOMAIN_START_PAUSED)
                .map(|_| ())
        })
    }

    fn resume(&self, g: &GuestRef) -> Result<()> {
        self.with(&format!("resume guest {}", g.name), |c| {
            Self::domain_of(c, g)?.resume().map(|_| ())
        })
    }

    fn backup_begin(&self, g: &GuestRef, plan: &BackupPlan) -> Result<()> {
        let c_string = |x: String| {
            std::ffi::CString::new(x)
                .map_err(|_| AgentError::new(Kind::InvalidArgument, "backup XML holds a NUL byte"))
        };
        let xml = c_string(backup_xml(plan))?;
        let checkpoint = plan
            .checkpoint
            .as_ref()
            .map(|(name, disks)| c_string(checkpoint_xml(name, &plan.disks, disks)))
            .transpose()?;
        self.with(&format!("begin a backup of guest {}", g.name), |c| {
            let d = Self::domain_of(c, g)?;
            // SAFETY: `d` is a live domain handle for the duration of the
            // call (it is dropped after), `xml` and `checkpoint` are
            // NUL-terminated strings that outlive the call, a NULL
            // checkpoint XML is allowed ("no checkpoint"), and libvirt
            // copies what it keeps.
            let r = unsafe {
                virt::sys::virDomainBackupBegin(
                    d.as_ptr(),
                    xml.as_ptr(),
                    checkpoint.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                    0,
                )
            };
            if r < 0 {
                return Err(VirtError::last_error());
            }
            Ok(())
        })
    }

    fn backup_disk(
        &self,
        _g: &GuestRef,
        socket: &std::path::Path,
        disk: &str,
        changes: bool,
    ) -> Result<Box<dyn imprint_store::source::DiskSource>> {
        let bitmap = changes.then(|| export_bitmap(disk));
        crate::nbd::NbdDisk::open_with_bitmap(socket, disk, bitmap.as_deref())
            .map(|d| Box::new(d) as Box<dyn imprint_store::source::DiskSource>)
            .map_err(|e| {
                AgentError::new(
                    Kind::Unavailable,
                    format!(
                        "read disk {disk} from the backup at {}: {e}",
                        socket.display()
                    ),
                )
            })
    }

    fn backup_base(
        &self,
        _g: &GuestRef,
        socket: &std::path::Path,
        disk: &str,
    ) -> Result<crate::seal::Base> {
        // The pull-mode backup exports each disk under its target name.
        Ok(crate::seal::Base::Nbd {
            socket: socket.to_path_buf(),
            export: disk.to_string(),
        })
    }

    fn backup_end(&self, g: &GuestRef) -> Result<()> {
        // Abort only a backup: the guest's job may be another one (ours
        // ended already, and an administrator saves or migrates it).
        if !self.backup_running(g)? {
            return Ok(());
        }
        let r = self.with(&format!("end the backup of guest {}", g.name), |c| {
            let d = Self::domain_of(c, g)?;
            // SAFETY: `d` is a live domain handle for the duration of the
            // call; virDomainAbortJob takes no other argument and ends the
            // domain's job (for a pull-mode backup: stops the export and
            // drops the scratch images).
            let r = unsafe { virt::sys::virDomainAbortJob(d.as_ptr()) };
            if r < 0 {
                return Err(VirtError::last_error());
            }
            Ok(())
        });
        match r {
            // No job (it ended, or the guest stopped) or no guest: done.
            Err(e) if matches!(e.kind, Kind::FailedPrecondition | Kind::NotFound) => return Ok(()),
            other => other?,
        }
        // The abort only asks QEMU to cancel the backup's block jobs; the
        // job ends when their events arrive. Return once it has, so that
        // whoever comes next (a new capture, a test) finds no job.
        let deadline = std::time::Instant::now() + BACKUP_END_PATIENCE;
        loop {
            if !self.backup_running(g)? {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(AgentError::new(
                    Kind::Unavailable,
                    format!(
                        "the backup job of guest {} did not end within {} s of its abort",
                        g.name,
                        BACKUP_END_PATIENCE.as_secs()
                    ),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn checkpoints(&self, g: &GuestRef) -> Result<Vec<String>> {
        self.with(&format!("list the checkpoints of guest {}", g.name), |c| {
            let d = Self::domain_of(c, g)?;
            let mut list: *mut virt::sys::virDomainCheckpointPtr = std::ptr::null_mut();
            // SAFETY: `d` is a live domain handle for the call; `list` is
            // a valid out-pointer that libvirt fills with an array it
            // allocates (freed below).
            let n = unsafe { virt::sys::virDomainListAllCheckpoints(d.as_ptr(), &mut list, 0) };
            // Negative means failure; otherwise the number of handles.
            let Ok(n) = usize::try_from(n) else {
                return Err(VirtError::last_error());
            };
            let mut names = Vec::with_capacity(n);
            for i in 0..n {
                // SAFETY: `list` holds `n` checkpoint handles we own; each
                // is read once, its name (owned by the handle) copied
                // before the handle is freed.
                unsafe {
                    let cp = *list.add(i);
                    let name = virt::sys::virDomainCheckpointGetName(cp);
                    if !name.is_null() {
                        names.push(
                            std::ffi::CStr::from_ptr(name)
                                .to_string_lossy()
                                .into_owned(),
                        );
                    }
                    virt::sys::virDomainCheckpointFree(cp);
                }
            }
            // SAFETY: the array came from libvirt's allocator (malloc) and
            // its elements were freed above; NULL (no checkpoints) is fine.
            unsafe { nix::libc::free(list.cast()) };
            Ok(names)
        })
    }

    fn delete_checkpoint(&self, g: &GuestRef, name: &str) -> Result<()> {
        let c_name = std::ffi::CString::new(name).map_err(|_| {
            AgentError::new(Kind::InvalidArgument, "checkpoint name holds a NUL byte")
        })?;
        let r = self.with(
            &format!("delete checkpoint {name} of guest {}", g.name),
            |c| {
                let d = Self::domain_of(c, g)?;
                // SAFETY: `d` is a live domain handle and `c_name` a
                // NUL-terminated string, both outliving the call.
                let cp = unsafe {
                    virt::sys::virDomainCheckpointLookupByName(d.as_ptr(), c_name.as_ptr(), 0)
                };
                if cp.is_null() {
                    return Err(VirtError::last_error());
                }
                // SAFETY: `cp` is the valid handle just returned; it is used
                // for the deletes and freed once, after them (the error is
                // read before the free, which resets it).
                let failed = unsafe {
                    if virt::sys::virDomainCheckpointDelete(cp, 0) == 0 {
                        None
                    } else {
                        let e = VirtError::last_error();
                        // A checkpoint whose bitmap is broken (QEMU killed
                        // while it was in use) cannot be merged away: drop
                        // libvirt's record of it; QEMU ignores the broken
                        // bitmap left in the qcow2 file.
                        let meta_only = virt::sys::VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY;
                        if virt::sys::virDomainCheckpointDelete(cp, meta_only) == 0 {
                            tracing::warn!(checkpoint = name, error = %e.message(), "checkpoint deleted from libvirt's records only");
                            None
                        } else {
                            Some(e)
                        }
                    }
                };
                // SAFETY: `cp` is valid and freed exactly once.
                unsafe { virt::sys::virDomainCheckpointFree(cp) };
                failed.map_or(Ok(()), Err)
            },
        );
        match r {
            Err(e) if e.kind == Kind::NotFound => Ok(()),
            other => other,
        }
    }

    fn guest_agent_ping(&self, g: &GuestRef, timeout: Duration) -> Result<()> {
        self.agent_command(g, "guest-ping", timeout, "reach the guest agent of")
            .map(|_| ())
    }

    fn fs_freeze(&self, g: &GuestRef, timeout: Duration) -> Result<()> {
        self.agent_command(
            g,
            "guest-fsfreeze-freeze",
            timeout,
            "freeze the filesystems of",
        )
        .map(|_| ())
    }

    fn fs_thaw(&self, g: &GuestRef, timeout: Duration) -> Result<()> {
        self.agent_command(g, "guest-fsfreeze-thaw", timeout, "thaw the filesystems of")
            .map(|_| ())
    }

    fn fs_frozen(&self, g: &GuestRef, timeout: Duration) -> Result<bool> {
        let reply = self.agent_command(
            g,
            "guest-fsfreeze-status",
            timeout,
            "ask whether the filesystems are frozen in",
        )?;
        match reply.get("return").and_then(|r| r.as_str()) {
            Some("frozen") => Ok(true),
            Some("thawed") => Ok(false),
            _ => Err(AgentError::new(
                Kind::Internal,
                format!(
                    "guest agent of {}: unexpected freeze status {reply}",
                    g.name
                ),
            )),
        }
    }

    fn paused_on_io_error(&self, g: &GuestRef) -> Result<bool> {
        self.with(&format!("state of guest {}", g.name), |c| {
            let d = Self::domain_of(c, g)?;
            // `state()` swallows errors (an unknown state); `info()` first
            // reports a dead connection or a vanished guest.
            d.info()?;
            let (_, reason) = d.state()?;
            Ok(matches!(
                reason,
                Enum::Known(DomainStateReason::Paused(Enum::Known(
                    DomainPausedReason::IOError
                )))
            ))
        })
    }

    fn block_copy(
        &self,
        g: &GuestRef,
        dev: &str,
        to: &CopyTarget,
        mib_s: u64,
        shallow: bool,
    ) -> Result<()> {
        let disk = disk_name(dev)?;
        let dest = std::ffi::CString::new(format!(
            "<disk type='file'><source file='{}'/><driver type='{}'/></disk>",
            esc(&to.path),
            esc(&to.format)
        ))
        .map_err(|_| AgentError::new(Kind::InvalidArgument, "a volume path holds a NUL byte"))?;
        let mut params = vec![
            typed_uint(
                virt::sys::VIR_DOMAIN_BLOCK_COPY_GRANULARITY,
                COPY_GRANULARITY,
            ),
            typed_ullong(virt::sys::VIR_DOMAIN_BLOCK_COPY_BUF_SIZE, COPY_BUFFER),
        ];
        if mib_s > 0 {
            params.push(typed_ullong(
                virt::sys::VIR_DOMAIN_BLOCK_COPY_BANDWIDTH,
                mib_s.saturating_mul(1 << 20),
            ));
        }
        let nparams = std::os::raw::c_int::try_from(params.len()).unwrap_or(0);
        // The volume exists (REUSE_EXT); the guest is persistent, so the
        // job is one libvirt need not recover into the definition
        // (TRANSIENT_JOB): the pivot rewrites the definition itself.
        // SHALLOW: the volume holds the image already (written by the
        // agent); QEMU copies only the overlay, what the guest wrote.
        let mut flags = virt::sys::VIR_DOMAIN_BLOCK_COPY_REUSE_EXT
            | virt::sys::VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB;
        if shallow {
            flags |= virt::sys::VIR_DOMAIN_BLOCK_COPY_SHALLOW;
        }
        self.with(
            &format!("start filling disk {dev} of guest {}", g.name),
            |c| {
                let d = Self::domain_of(c, g)?;
                // SAFETY: `d` is a live domain handle, `disk` and `dest`
                // NUL-terminated strings and `params` a vector of `nparams`
                // initialised numeric parameters (no pointers inside), all
                // outliving the call; libvirt copies what it keeps.
                let r = unsafe {
                    virt::sys::virDomainBlockCopy(
                        d.as_ptr(),
                        disk.as_ptr(),
                        dest.as_ptr(),
                        params.as_mut_ptr(),
                        nparams,
                        flags,
                    )
                };
                if r < 0 {
                    return Err(VirtError::last_error());
                }
                Ok(())
            },
        )
    }

    fn block_pivot(&self, g: &GuestRef, dev: &str) -> Result<bool> {
        let disk = disk_name(dev)?;
        self.with(
            &format!("switch disk {dev} of guest {} to its volume", g.name),
            |c| {
                let d = Self::domain_of(c, g)?;
                // SAFETY: `d` is a live domain handle and `disk` a
                // NUL-terminated string, both outliving the call.
                let r = unsafe {
                    virt::sys::virDomainBlockJobAbort(
                        d.as_ptr(),
                        disk.as_ptr(),
                        virt::sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT,
                    )
                };
                if r == 0 {
                    return Ok(true);
                }
                let e = VirtError::last_error();
                match e.code() {
                    // Not in step yet: the caller asks again.
                    Enum::Known(ErrorNumber::BlockCopyActive) => Ok(false),
                    _ => Err(e),
                }
            },
        )
    }

    fn block_job(&self, g: &GuestRef, dev: &str) -> Result<Option<(u64, u64)>> {
        let disk = disk_name(dev)?;
        self.with(
            &format!("block job of disk {dev} of guest {}", g.name),
            |c| {
                let d = Self::domain_of(c, g)?;
                let mut info = virt::sys::virDomainBlockJobInfo {
                    type_: 0,
                    bandwidth: 0,
                    cur: 0,
                    end: 0,
                };
                // SAFETY: `d` is a live domain handle, `disk` a NUL-terminated
                // string and `info` a valid, writable struct, all outliving the
                // call; libvirt fills `info` and keeps no pointer.
                let r = unsafe {
                    virt::sys::virDomainGetBlockJobInfo(d.as_ptr(), disk.as_ptr(), &mut info, 0)
                };
                match r {
                    0 => Ok(None),
                    r if r < 0 => Err(VirtError::last_error()),
                    _ => Ok(Some((info.cur, info.end))),
                }
            },
        )
    }

    fn has_backing(&self, g: &GuestRef, dev: &str) -> Result<bool> {
        let xml = self.with(&format!("configuration of guest {}", g.name), |c| {
            Self::domain_of(c, g)?.xml_desc(0)
        })?;
        Ok(crate::domain::disk_has_backing(&xml, dev))
    }
}

/// How long an aborted backup job may take to end (QEMU cancels its block
/// jobs; libvirt ends the job on their events, normally within a second).
const BACKUP_END_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// A fill's copy job reads and writes in steps of this many bytes (QEMU's
/// default is the target's cluster size, 64 KiB: 16 times as many
/// requests to the export).
const COPY_GRANULARITY: u32 = 1 << 20;
/// The copy job's buffer: requests in flight at once, in bytes.
const COPY_BUFFER: u64 = 64 << 20;

/// A numeric typed parameter named `name` (a libvirt constant).
fn typed_param(name: &std::ffi::CStr) -> virt::sys::virTypedParameter {
    const LEN: usize = virt::sys::VIR_TYPED_PARAM_FIELD_LENGTH as usize;
    let mut field = [0; LEN];
    // The last byte stays NUL.
    for (d, s) in field.iter_mut().zip(name.to_bytes().iter().take(LEN - 1)) {
        *d = std::os::raw::c_char::from_ne_bytes([*s]);
    }
    virt::sys::virTypedParameter {
        field,
        type_: 0,
        value: virt::sys::_virTypedParameter__bindgen_ty_1 { ul: 0 },
    }
}

fn typed_uint(name: &std::ffi::CStr, v: u32) -> virt::sys::virTypedParameter {
    let mut p = typed_param(name);
    p.type_ = std::os::raw::c_int::try_from(virt::sys::VIR_TYPED_PARAM_UINT).unwrap_or(2);
    p.value.ui = v;
    p
}

fn typed_ullong(name: &std::ffi::CStr, v: u64) -> virt::sys::virTypedParameter {
    let mut p = typed_param(name);
    p.type_ = std::os::raw::c_int::try_from(virt::sys::VIR_TYPED_PARAM_ULLONG).unwrap_or(4);
    p.value.ul = v;
    p
}

/// A disk's target name for libvirt's C API.
fn disk_name(dev: &str) -> Result<std::ffi::CString> {
    std::ffi::CString::new(dev)
        .map_err(|_| AgentError::new(Kind::InvalidArgument, "a disk name holds a NUL byte"))
}

impl Libvirt {
    /// Run a guest agent command (`execute` with no arguments), waiting at
    /// most `timeout` for the answer; `what` + the guest's name say what
    /// failed. An agent that is not configured, not connected or does not
    /// answer in time is `FailedPrecondition`.
    fn agent_command(
        &self,
        g: &GuestRef,
        execute: &str,
        timeout: Duration,
        what: &str,
    ) -> Result<serde_json::Value> {
        let secs = i32::try_from(timeout.as_secs().max(1)).unwrap_or(i32::MAX);
        let cmd = serde_json::json!({ "execute": execute }).to_string();
        let what = format!("{what} guest {}", g.name);
        // Agent failures come back inside Ok: `with` maps the rest
        // (libvirtd gone, no such guest) as for every call.
        let reply = self.with(&what, |c| {
            match Self::domain_of(c, g)?.qemu_agent_command(&cmd, secs, 0) {
                Ok(reply) => Ok(Ok(reply)),
                Err(e) if is_agent_failure(&e) => Ok(Err(e)),
                Err(e) => Err(e),
            }
        })?;
        match reply {
            Ok(reply) => serde_json::from_str(&reply).map_err(|e| {
                AgentError::new(Kind::Internal, format!("{what}: unreadable reply: {e}"))
            }),
            Err(e) => Err(AgentError::new(
                Kind::FailedPrecondition,
                format!("{what}: {}", e.message()),
            )),
        }
    }
}

/// The guest agent is not configured, not connected, not answering, or
/// refused the command.
fn is_agent_failure(e: &VirtError) -> bool {
    matches!(
        e.code(),
        Enum::Known(
            ErrorNumber::AgentUnresponsive
                | ErrorNumber::AgentUnsynced
                | ErrorNumber::AgentCommandTimeout
                | ErrorNumber::AgentCommandFailed
                | ErrorNumber::ArgumentUnsupported
                | ErrorNumber::OperationUnsupported
        )
    )
}

/// The name under which a pull-mode backup exports `disk`'s changes.
fn export_bitmap(disk: &str) -> String {
    format!("backup-{disk}")
}

/// Pull-mode backup XML: the listed disks exported over NBD on the plan's
/// socket (export names are the disks' target names), each with its
/// scratch file; disks without one are not backed up. With an incremental
/// checkpoint, the disks it covers (those the new checkpoint covers too:
/// qcow2) also export their changes since it as bitmap `backup-DISK`.
fn backup_xml(plan: &BackupPlan) -> String {
    let mut x = format!(
        "<domainbackup mode='pull'>\n  <server transport='unix' socket='{}'/>\n  <disks>\n",
        esc(&plan.socket.display().to_string())
    );
    let tracked = |dev: &String| {
        plan.checkpoint
            .as_ref()
            .is_some_and(|(_, disks)| disks.contains(dev))
    };
    for (dev, scratch) in &plan.disks {
        let mode = match &plan.incremental {
            Some(cp) if tracked(dev) => format!(
                " backupmode='incremental' incremental='{}' exportbitmap='{}'",
                esc(cp),
                esc(&export_bitmap(dev))
            ),
            _ => String::new(),
        };
        match scratch {
            Some(scratch) => x.push_str(&format!(
                "    <disk name='{}' backup='yes' type='file'{mode}><scratch file='{}'/></disk>\n",
                esc(dev),
                esc(&scratch.display().to_string())
            )),
            None => x.push_str(&format!("    <disk name='{}' backup='no'/>\n", esc(dev))),
        }
    }
    x.push_str("  </disks>\n</domainbackup>\n");
    x
}

/// Checkpoint XML: a bitmap on each of `tracked`, none on the guest's
/// other disks.
fn checkpoint_xml(
    name: &str,
    disks: &[(String, Option<std::path::PathBuf>)],
    tracked: &[String],
) -> String {
    let mut x = format!(
        "<domaincheckpoint>\n  <name>{}</name>\n  <disks>\n",
        esc(name)
    );
    for (dev, _) in disks {
        let kind = if tracked.contains(dev) {
            "bitmap"
        } else {
            "no"
        };
        x.push_str(&format!(
            "    <disk name='{}' checkpoint='{kind}'/>\n",
            esc(dev)
        ));
    }
    x.push_str("  </disks>\n</domaincheckpoint>\n");
    x
}
