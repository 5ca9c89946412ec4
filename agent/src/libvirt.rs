//! The one module that talks to libvirt (the `virt` crate). Every call
//! blocks: callers run them on blocking threads.
//!
//! The connection is opened lazily and dropped after an error that means
//! "libvirtd is gone" (restarted, crashed), so the next call reconnects.

use std::sync::Mutex;

use virt::{
    connect::Connect,
    domain::{Domain, DomainState},
    enumutil::Enum,
    error::{Error as VirtError, ErrorNumber},
    storage_pool::StoragePool,
    storage_vol::StorageVol,
};

use crate::{
    domain::esc,
    error::{AgentError, Kind, Result},
    hypervisor::{GuestRef, Hypervisor, PoolInfo, PowerState},
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
            ErrorNumber::NoDomain | ErrorNumber::NoStoragePool | ErrorNumber::NoStorageVolume,
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
        // NVRAM files of UEFI guests go with the definition.
        self.with(&format!("undefine guest {}", g.name), |c| {
            Self::domain_of(c, g)?.undefine_flags(virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM)
        })
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
            p.refresh(0)?;
            Ok(PoolInfo {
                available_bytes: p.info()?.available,
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
}
