//! Opening a guest's disk as the guest sees it.

use imprint_store::source::{DiskSource, FileSource};

use crate::error::{AgentError, Kind, Result};

/// Open the disk at `path` in libvirt format `format` as a capture source.
pub fn open_source(path: &str, format: &str) -> Result<Box<dyn DiskSource>> {
    match format {
        "raw" | "" => {
            let f = FileSource::open(std::path::Path::new(path))
                .map_err(|e| AgentError::new(Kind::Internal, format!("open {path}: {e}")))?;
            Ok(Box::new(f))
        }
        "qcow2" => crate::qcow2::open(path),
        other => Err(AgentError::new(
            Kind::FailedPrecondition,
            format!("disk {path} has format {other:?}; the agent reads raw and qcow2"),
        )),
    }
}
