//! Image manifest: what an image is made of. Written last, atomically: an
//! image exists exactly when its manifest does.
//!
//! ```text
//! offset size field
//!      0    8 magic       IMPMAN\0\x01
//!      8    4 json_len    u32 LE
//!     12    n json        UTF-8 JSON object, see [`Manifest`]
//!   12+n   32 trailer     BLAKE3 of every byte before it
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    Error, ImageId, Result,
    format::{MANIFEST_HEADER_LEN, MANIFEST_MAGIC_V1, TRAILER_LEN},
};

/// Largest manifest accepted (the guest configuration is the big part).
pub const MAX_MANIFEST_JSON: usize = 4 << 20;
/// Longest image name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// One captured disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskEntry {
    /// The guest's name for the disk (`vda`) or the source file name.
    pub name: String,
    /// File holding the disk's [`crate::FixedIndex`], inside the image.
    pub index_file: String,
    /// BLAKE3 of that index file, hex.
    pub index_blake3: String,
    /// Guest-visible size in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the guest-visible bytes, hex: equals `sha256sum` of a raw
    /// export of the disk. Absent when the capture was asked to skip it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Chunks that are all zero (or holes) and were not stored.
    pub zero_chunks: u64,
    /// Chunks with data.
    pub data_chunks: u64,
}

/// An image: disks, guest configuration, provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Stable identifier.
    pub image_id: ImageId,
    /// Name given at capture.
    pub name: String,
    /// Seconds since the Unix epoch when the manifest was written.
    pub created_unix: u64,
    /// Chunk size of every disk's index.
    pub chunk_size: u32,
    /// The disks, in the guest's order.
    pub disks: Vec<DiskEntry>,
    /// Guest configuration recorded at capture (CPUs, memory, firmware,
    /// NICs, ...). Opaque to the store; `null` for plain disk images.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Free-form key/value labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Manifest {
    /// Serialize with header and trailer.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::invalid(format!("manifest does not serialize: {e}")))?;
        let json_len = match u32::try_from(json.len()) {
            Ok(n) if json.len() <= MAX_MANIFEST_JSON => n,
            _ => {
                return Err(Error::invalid(format!(
                    "manifest of {} bytes is larger than the maximum {MAX_MANIFEST_JSON}",
                    json.len()
                )));
            }
        };
        let mut out = Vec::with_capacity(MANIFEST_HEADER_LEN + json.len() + TRAILER_LEN);
        out.extend_from_slice(&MANIFEST_MAGIC_V1);
        out.extend_from_slice(&json_len.to_le_bytes());
        out.extend_from_slice(&json);
        let seal = blake3::hash(&out);
        out.extend_from_slice(seal.as_bytes());
        Ok(out)
    }

    /// Parse and verify an encoded manifest.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < MANIFEST_HEADER_LEN + TRAILER_LEN {
            return Err(Error::corrupt(format!(
                "manifest is truncated: {} bytes",
                bytes.len()
            )));
        }
        crate::format_check::magic(&bytes[..8], &MANIFEST_MAGIC_V1, "manifest")?;
        let json_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        if json_len > MAX_MANIFEST_JSON
            || bytes.len() != MANIFEST_HEADER_LEN + json_len + TRAILER_LEN
        {
            return Err(Error::corrupt(format!(
                "manifest is truncated or padded: header says {json_len} JSON bytes, file has {}",
                bytes.len()
            )));
        }
        let (sealed, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
        if blake3::hash(sealed).as_bytes() != trailer {
            return Err(Error::corrupt("manifest checksum mismatch"));
        }
        let m: Manifest = serde_json::from_slice(&sealed[MANIFEST_HEADER_LEN..])
            .map_err(|e| Error::corrupt(format!("manifest JSON does not parse: {e}")))?;
        validate_name(&m.name).map_err(|e| Error::corrupt(e.message().to_string()))?;
        crate::index::validate_chunk_size(m.chunk_size)
            .map_err(|e| Error::corrupt(e.message().to_string()))?;
        for d in &m.disks {
            if !is_plain_file_name(&d.index_file) {
                return Err(Error::corrupt(format!(
                    "manifest names index file {:?}, which is not a plain file name",
                    d.index_file
                )));
            }
        }
        Ok(m)
    }
}

fn is_plain_file_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        && !s.starts_with('.')
}

/// Image names: 1 to 255 bytes, no control characters, not blank, and not
/// shaped like an image id (so "id or unique name" is never ambiguous).
pub fn validate_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::invalid("image name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "image name is {} bytes long, the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid("image name contains control characters"));
    }
    if name.parse::<ImageId>().is_ok() {
        return Err(Error::invalid(format!(
            "image name {name:?} looks like an image id; choose another name"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn sample() -> Manifest {
        Manifest {
            image_id: ImageId::generate(),
            name: "web-base".into(),
            created_unix: 1_700_000_000,
            chunk_size: 1 << 20,
            disks: vec![DiskEntry {
                name: "vda".into(),
                index_file: "disk0.fidx".into(),
                index_blake3: "00".repeat(32),
                size_bytes: 10,
                sha256: Some("11".repeat(32)),
                zero_chunks: 0,
                data_chunks: 1,
            }],
            config: serde_json::json!({"vcpus": 2}),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(
            Manifest::decode(&m.encode().expect("encode")).expect("decode"),
            m
        );
    }

    #[test]
    fn damage_and_versions() {
        let enc = sample().encode().expect("encode");
        let mut bad = enc.clone();
        bad[20] ^= 0x20;
        assert_eq!(
            Manifest::decode(&bad).expect_err("flip").kind(),
            ErrorKind::Corrupt
        );
        assert_eq!(
            Manifest::decode(&enc[..enc.len() - 3])
                .expect_err("cut")
                .kind(),
            ErrorKind::Corrupt
        );
        let mut newer = enc;
        newer[7] = 2;
        let err = Manifest::decode(&newer).expect_err("newer");
        assert_eq!(err.kind(), ErrorKind::UnsupportedVersion);
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn hostile_index_file_names_are_rejected() {
        let mut m = sample();
        m.disks[0].index_file = "../../etc/passwd".into();
        let enc = m.encode().expect("encode");
        assert_eq!(
            Manifest::decode(&enc).expect_err("path").kind(),
            ErrorKind::Corrupt
        );
    }

    #[test]
    fn names() {
        assert!(validate_name("debian-12 (base)").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("   ").is_err());
        assert!(validate_name(&"x".repeat(256)).is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(validate_name(&ImageId::generate().to_string()).is_err());
    }
}
