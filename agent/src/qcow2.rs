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
