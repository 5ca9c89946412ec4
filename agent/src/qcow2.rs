//! qcow2 disks as the guest sees them (backing chains resolved, compressed
//! clusters decoded) through `imago`, with unallocated and zero clusters
//! reported as holes so they are never read.

use imago::{
    FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate, file::File, qcow2::Qcow2,
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

/// Open the qcow2 image at `path`.
pub fn open(path: &str) -> Result<Box<dyn DiskSource>> {
    // The backing chain is named inside the image; the permissive gate lets
    // imago open it (read-only), as QEMU would.
    let q = Qcow2::<File>::builder_path(path)
        .open(PermissiveImplicitOpenGate::default())
        .map_err(|e| {
            AgentError::new(
                Kind::FailedPrecondition,
                format!("open qcow2 image {path}: {e}"),
            )
        })?;
    let access = FormatAccess::new(q);
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
        let q = Qcow2::<File>::builder_path(path)
            .write(true)
            .open(PermissiveImplicitOpenGate::default())
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
