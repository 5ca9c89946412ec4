//! Fixed index: the ordered chunk digests of one disk.
//!
//! ```text
//! offset size field
//!      0    8 magic        IMPIDX\0\x01
//!      8    8 size_bytes   u64 LE, guest-visible size of the disk
//!     16    4 chunk_size   u32 LE
//!     20    4 reserved     zero
//!     24    8 count        u64 LE, = ceil(size_bytes / chunk_size)
//!     32  32n digests      BLAKE3 of chunk i; all-zero = zero chunk, not stored
//!   end-32  32 trailer     BLAKE3 of every byte before it
//! ```
//!
//! Chunk `i` covers bytes `[i * chunk_size, min(size, (i+1) * chunk_size))`;
//! only the last chunk may be shorter.

use crate::{
    ChunkDigest, Error, Result,
    format::{INDEX_HEADER_LEN, INDEX_MAGIC_V1, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, TRAILER_LEN},
};

/// One disk's index, in memory (32 bytes per chunk: 512 KiB for 16 GiB at
/// 1 MiB chunks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIndex {
    size_bytes: u64,
    chunk_size: u32,
    digests: Vec<ChunkDigest>,
}

/// How a disk of some size is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Guest-visible size.
    pub size_bytes: u64,
    /// Chunk size.
    pub chunk_size: u32,
}

impl Layout {
    /// Number of chunks.
    pub fn chunk_count(&self) -> u64 {
        chunk_count(self.size_bytes, self.chunk_size)
    }

    /// How the disk is cut.
    pub fn layout(&self) -> Layout {
        Layout {
            size_bytes: self.size_bytes,
            chunk_size: self.chunk_size,
        }
    }

    /// Byte range `(offset, len)` of chunk `i`.
    pub fn chunk_range(&self, i: usize) -> (u64, usize) {
        let offset = i as u64 * u64::from(self.chunk_size);
        // What is left of the disk, at most one chunk: fits a `u32`.
        let len = u32::try_from(self.size_bytes - offset)
            .map_or(self.chunk_size, |rest| rest.min(self.chunk_size));
        (offset, len as usize)
    }
}

/// Number of chunks of a disk of `size_bytes`.
pub fn chunk_count(size_bytes: u64, chunk_size: u32) -> u64 {
    size_bytes.div_ceil(u64::from(chunk_size))
}

/// Check a chunk size is within the supported range and a power of two.
pub fn validate_chunk_size(chunk_size: u32) -> Result<()> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) || !chunk_size.is_power_of_two() {
        return Err(Error::invalid(format!(
            "chunk size {chunk_size} must be a power of two between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
        )));
    }
    Ok(())
}

impl FixedIndex {
    /// An index of a disk whose every chunk is zero.
    pub fn new_zeroed(size_bytes: u64, chunk_size: u32) -> Result<Self> {
        validate_chunk_size(chunk_size)?;
        let count = chunk_count(size_bytes, chunk_size);
        let count = usize::try_from(count)
            .map_err(|_| Error::invalid(format!("disk of {size_bytes} bytes is too large")))?;
        Ok(Self {
            size_bytes,
            chunk_size,
            digests: vec![ChunkDigest::ZERO_CHUNK; count],
        })
    }

    /// Guest-visible size of the disk.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Chunk size the disk was cut with.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Digests in disk order.
    pub fn digests(&self) -> &[ChunkDigest] {
        &self.digests
    }

    /// Set chunk `i`'s digest.
    pub fn set(&mut self, i: usize, digest: ChunkDigest) {
        self.digests[i] = digest;
    }

    /// How the disk is cut.
    pub fn layout(&self) -> Layout {
        Layout {
            size_bytes: self.size_bytes,
            chunk_size: self.chunk_size,
        }
    }

    /// Byte range `(offset, len)` of chunk `i`.
    pub fn chunk_range(&self, i: usize) -> (u64, usize) {
        self.layout().chunk_range(i)
    }

    /// Serialize with header and trailer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INDEX_HEADER_LEN + self.digests.len() * 32 + TRAILER_LEN);
        out.extend_from_slice(&INDEX_MAGIC_V1);
        out.extend_from_slice(&self.size_bytes.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(self.digests.len() as u64).to_le_bytes());
        for d in &self.digests {
            out.extend_from_slice(d.as_bytes());
        }
        let seal = blake3::hash(&out);
        out.extend_from_slice(seal.as_bytes());
        out
    }

    /// Parse and verify an encoded index.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < INDEX_HEADER_LEN + TRAILER_LEN {
            return Err(Error::corrupt(format!(
                "index is truncated: {} bytes",
                bytes.len()
            )));
        }
        crate::format_check::magic(&bytes[..8], &INDEX_MAGIC_V1, "disk index")?;
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let size_bytes = u64_at(8);
        let chunk_size = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        let count = u64_at(24);
        let body_len = bytes.len() - INDEX_HEADER_LEN - TRAILER_LEN;
        if !body_len.is_multiple_of(32) || (body_len / 32) as u64 != count {
            return Err(Error::corrupt(format!(
                "index is truncated or padded: header says {count} chunks, file holds {} bytes of digests",
                body_len
            )));
        }
        let (sealed, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
        if blake3::hash(sealed).as_bytes() != trailer {
            return Err(Error::corrupt("index checksum mismatch"));
        }
        validate_chunk_size(chunk_size).map_err(|e| Error::corrupt(e.message().to_string()))?;
        if chunk_count(size_bytes, chunk_size) != count {
            return Err(Error::corrupt(format!(
                "index of a {size_bytes}-byte disk must hold {} chunks, it holds {count}",
                chunk_count(size_bytes, chunk_size)
            )));
        }
        let digests = sealed[INDEX_HEADER_LEN..]
            .chunks_exact(32)
            .map(|c| {
                let mut d = [0u8; 32];
                d.copy_from_slice(c);
                ChunkDigest::from_bytes(d)
            })
            .collect();
        Ok(Self {
            size_bytes,
            chunk_size,
            digests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn round_trip_and_ranges() {
        let mut idx = FixedIndex::new_zeroed(3 * 65536 + 100, 65536).expect("index");
        assert_eq!(idx.digests().len(), 4);
        idx.set(1, ChunkDigest::of(b"x"));
        assert_eq!(idx.chunk_range(3), (3 * 65536, 100));
        let enc = idx.encode();
        assert_eq!(FixedIndex::decode(&enc).expect("decode"), idx);
    }

    #[test]
    fn damage_is_detected() {
        let idx = FixedIndex::new_zeroed(1 << 20, 65536).expect("index");
        let enc = idx.encode();
        for cut in [0, 10, enc.len() - 1] {
            assert_eq!(
                FixedIndex::decode(&enc[..cut]).expect_err("cut").kind(),
                ErrorKind::Corrupt
            );
        }
        let mut bad = enc.clone();
        bad[40] ^= 1;
        assert_eq!(
            FixedIndex::decode(&bad).expect_err("flip").kind(),
            ErrorKind::Corrupt
        );
        let mut newer = enc;
        newer[7] = 9;
        assert_eq!(
            FixedIndex::decode(&newer).expect_err("newer").kind(),
            ErrorKind::UnsupportedVersion
        );
    }

    #[test]
    fn chunk_size_must_be_sane() {
        assert!(FixedIndex::new_zeroed(10, 1000).is_err());
        assert!(FixedIndex::new_zeroed(10, 1 << 30).is_err());
    }
}
