//! qcow2 disks as the guest sees them (backing chains resolved, compressed
//! clusters decoded) through `imago`, with unallocated and zero clusters
//! reported as holes so they are never read.
//!
//! The image file itself is always opened here, explicitly; every file its
//! header names (a backing image, an external data file, and theirs in
//! turn) is opened by imago through the caller's `ImplicitOpenGate`, or not
//! at all. The gate is where a policy on those files belongs: it sees what
//! is actually opened, not what a header parser thinks will be.

use std::path::Path;

use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate, Storage,
    StorageOpenOptions, file::File, format::gate::ImplicitOpenGate, qcow2::Qcow2,
};
use imprint_store::source::DiskSource;

use crate::error::{AgentError, Kind, Result};

/// A qcow2 image opened read-only, backing files included.
pub struct Qcow2Source {
    access: FormatAccess<File>,
    size: u64,
}

impl std::fmt::Debug for Qcow2Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Source")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Open a guest's qcow2 disk at `path`, its backing chain included.
pub fn open(path: &str) -> Result<Box<dyn DiskSource>> {
    // A guest's own disk: its backing chain is the hypervisor's
    // configuration, which the guest reads through already. The permissive
    // gate opens it (read-only), as QEMU does. Imported files, which come
    // from callers, go through `transfer`'s gate instead.
    open_gated(Path::new(path), PermissiveImplicitOpenGate::default()).map_err(|e| {
        AgentError::new(
            Kind::FailedPrecondition,
            format!("open qcow2 image {path}: {e}"),
        )
    })
}

/// Open the qcow2 image at `path` read-only; whatever its header names is
/// opened through `gate`, or not at all.
pub fn open_gated<G: ImplicitOpenGate<File>>(
    path: &Path,
    gate: G,
) -> std::io::Result<Box<dyn DiskSource>> {
    let file = File::open(StorageOpenOptions::new().filename(path))?;
    let access = FormatAccess::new(Qcow2::<File>::builder(file).open(gate)?);
    let size = access.size();
    Ok(Box::new(Qcow2Source { access, size }))
}

impl DiskSource for Qcow2Source {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.access.read(buf, offset)
    }

    fn may_have_data(&mut self, mut offset: u64, len: u64) -> std::io::Result<bool> {
        let end = offset + len;
        while offset < end {
            let (mapping, n) = self.access.get_mapping(offset, end - offset)?;
            match mapping {
                imago::Mapping::Zero { .. } if n > 0 => offset += n,
                imago::Mapping::Eof { .. } => return Ok(false),
                _ => return Ok(true),
            }
        }
        Ok(false)
    }
}

/// A fresh qcow2 volume written through `imago`: holes stay unallocated.
pub struct Qcow2Target {
    access: FormatAccess<File>,
}

impl std::fmt::Debug for Qcow2Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Target").finish_non_exhaustive()
    }
}

impl Qcow2Target {
    /// Open the (new, empty) qcow2 image at `path` for writing.
    pub fn open(path: &str) -> Result<Self> {
        // A fresh volume names no other file; one that did would have its
        // writes land there, so the gate refuses whatever it names.
        let q = File::open(StorageOpenOptions::new().filename(path).write(true))
            .and_then(|file| {
                Qcow2::<File>::builder(file)
                    .write(true)
                    .open(DenyImplicitOpenGate::default())
            })
            .map_err(|e| {
                AgentError::new(
                    Kind::Internal,
                    format!("open qcow2 volume {path} for writing: {e}"),
                )
            })?;
        Ok(Self {
            access: FormatAccess::new(q),
        })
    }
}

impl imprint_store::source::DiskTarget for Qcow2Target {
    fn size_bytes(&mut self) -> std::io::Result<u64> {
        Ok(self.access.size())
    }

    fn write_all_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.access.write(buf, offset)
    }

    fn write_zeroes(&mut self, _offset: u64, _len: u64) -> std::io::Result<()> {
        // Only fresh volumes are written: unallocated clusters read as zero.
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.access.flush()?;
        self.access.sync()
    }
}
