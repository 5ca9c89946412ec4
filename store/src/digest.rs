//! Names of things in the store: chunk digests, image ids, disk digests.

use std::{fmt, str::FromStr};

use crate::{Error, Result};

/// BLAKE3 digest of a chunk's uncompressed bytes: the chunk's name.
///
/// The all-zero value is reserved ([`ChunkDigest::ZERO_CHUNK`]): in an index
/// it marks a chunk whose bytes are all zero and which is never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkDigest([u8; 32]);

impl ChunkDigest {
    /// Index entry of an all-zero (or never-written) chunk.
    pub const ZERO_CHUNK: ChunkDigest = ChunkDigest([0; 32]);

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// From raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether this is the zero-chunk marker rather than a stored chunk.
    pub fn is_zero_chunk(&self) -> bool {
        self.0 == [0; 32]
    }

    /// Lower-case hex, the chunk's file name.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkDigest({})", self.to_hex())
    }
}

impl FromStr for ChunkDigest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut out).is_err() {
            return Err(Error::invalid(format!(
                "{s:?} is not a chunk digest (64 hex characters)"
            )));
        }
        Ok(Self(out))
    }
}

/// Identifier of an image: a random UUID, stable across renames.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageId(uuid::Uuid);

impl ImageId {
    /// A fresh random id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.hyphenated())
    }
}

impl fmt::Debug for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageId({self})")
    }
}

impl FromStr for ImageId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        // Only the canonical hyphenated form: ids are also directory names.
        match uuid::Uuid::try_parse(s) {
            Ok(u) if u.hyphenated().to_string() == s => Ok(Self(u)),
            _ => Err(Error::invalid(format!("{s:?} is not an image id (a UUID)"))),
        }
    }
}

impl TryFrom<String> for ImageId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<ImageId> for String {
    fn from(id: ImageId) -> String {
        id.to_string()
    }
}

/// SHA-256 of a whole disk's guest-visible bytes, comparable with
/// `sha256sum` of a raw export.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DiskSha256(pub [u8; 32]);

impl fmt::Display for DiskSha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DiskSha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiskSha256({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_digest_round_trips_through_hex() {
        let d = ChunkDigest::of(b"hello");
        let parsed: ChunkDigest = d.to_hex().parse().expect("parse");
        assert_eq!(parsed, d);
        assert!(!d.is_zero_chunk());
        assert!("xyz".parse::<ChunkDigest>().is_err());
        assert!("g".repeat(64).parse::<ChunkDigest>().is_err());
    }

    #[test]
    fn image_id_accepts_only_canonical_uuids() {
        let id = ImageId::generate();
        assert_eq!(id.to_string().parse::<ImageId>().expect("parse"), id);
        assert!("../etc".parse::<ImageId>().is_err());
        let upper = id.to_string().to_uppercase();
        assert!(upper.parse::<ImageId>().is_err());
    }
}
