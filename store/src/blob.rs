//! Chunk blobs: one chunk's bytes, compressed, behind a small header.
//!
//! ```text
//! offset size field
//!      0    8 magic          IMPCHK\0\x01
//!      8    1 encoding       0 = raw, 1 = zstd
//!      9    3 reserved       zero
//!     12    4 raw_len        u32 LE, uncompressed length
//!     16    4 payload_len    u32 LE, bytes after the header
//!     20    4 crc32          u32 LE, CRC-32 (IEEE) of bytes 0..20 + payload
//!     24    . payload
//! ```
//!
//! The CRC catches a torn or bit-flipped blob before decompression; the
//! BLAKE3 digest of the decoded bytes, which is the blob's file name, proves
//! it is the chunk it claims to be. A chunk that zstd cannot shrink is kept
//! raw, so deploy never pays to decompress noise.

use crate::{
    ChunkDigest, Error, Result,
    format::{CHUNK_HEADER_LEN, CHUNK_MAGIC_V1, ENCODING_RAW, ENCODING_ZSTD, MAX_CHUNK_SIZE},
};

/// Compresses chunks into blobs, reusing its zstd context and output buffer.
pub struct BlobEncoder {
    compressor: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
}

impl std::fmt::Debug for BlobEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobEncoder").finish_non_exhaustive()
    }
}

impl BlobEncoder {
    /// An encoder compressing at zstd `level`.
    pub fn new(level: i32) -> Result<Self> {
        let compressor = zstd::bulk::Compressor::new(level)
            .map_err(|e| Error::io(format!("set up zstd level {level}"), e))?;
        Ok(Self {
            compressor,
            out: Vec::new(),
        })
    }

    /// Encode `data` into a blob; the returned slice lives until the next call.
    pub fn encode(&mut self, data: &[u8]) -> Result<&[u8]> {
        let raw_len = match u32::try_from(data.len()) {
            Ok(n) if n <= MAX_CHUNK_SIZE => n,
            _ => {
                return Err(Error::invalid(format!(
                    "chunk of {} bytes is larger than the maximum {MAX_CHUNK_SIZE}",
                    data.len()
                )));
            }
        };
        let bound = zstd::zstd_safe::compress_bound(data.len());
        self.out.clear();
        self.out.resize(CHUNK_HEADER_LEN + bound, 0);
        let n = self
            .compressor
            .compress_to_buffer(data, &mut self.out[CHUNK_HEADER_LEN..])
            .map_err(|e| Error::io("compress chunk", e))?;
        let encoding = if n < data.len() {
            self.out.truncate(CHUNK_HEADER_LEN + n);
            ENCODING_ZSTD
        } else {
            self.out.truncate(CHUNK_HEADER_LEN);
            self.out.extend_from_slice(data);
            ENCODING_RAW
        };
        write_header(&mut self.out, encoding, raw_len)?;
        Ok(&self.out)
    }
}

fn write_header(blob: &mut [u8], encoding: u8, raw_len: u32) -> Result<()> {
    // Never above `raw_len`: a payload zstd cannot shrink is stored raw.
    let payload_len = u32::try_from(blob.len() - CHUNK_HEADER_LEN).map_err(|_| {
        Error::invalid(format!(
            "blob payload of {} bytes does not fit its header",
            blob.len() - CHUNK_HEADER_LEN
        ))
    })?;
    blob[..8].copy_from_slice(&CHUNK_MAGIC_V1);
    blob[8] = encoding;
    blob[9..12].fill(0);
    blob[12..16].copy_from_slice(&raw_len.to_le_bytes());
    blob[16..20].copy_from_slice(&payload_len.to_le_bytes());
    let crc = blob_crc(blob);
    blob[20..24].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn blob_crc(blob: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&blob[..20]);
    h.update(&blob[CHUNK_HEADER_LEN..]);
    h.finalize()
}

/// A parsed, checksum-verified blob header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobHeader {
    /// [`ENCODING_RAW`] or [`ENCODING_ZSTD`].
    pub encoding: u8,
    /// Length of the chunk once decoded.
    pub raw_len: u32,
}

/// Check magic, lengths and CRC of a whole blob; does not decompress.
pub fn check_blob(blob: &[u8]) -> Result<BlobHeader> {
    if blob.len() < CHUNK_HEADER_LEN {
        return Err(Error::corrupt(format!(
            "blob is truncated: {} bytes, shorter than its {CHUNK_HEADER_LEN}-byte header",
            blob.len()
        )));
    }
    crate::format_check::magic(&blob[..8], &CHUNK_MAGIC_V1, "chunk blob")?;
    let encoding = blob[8];
    if encoding != ENCODING_RAW && encoding != ENCODING_ZSTD {
        return Err(Error::corrupt(format!(
            "blob has unknown encoding {encoding}"
        )));
    }
    let raw_len = u32::from_le_bytes([blob[12], blob[13], blob[14], blob[15]]);
    let payload_len = u32::from_le_bytes([blob[16], blob[17], blob[18], blob[19]]) as usize;
    let stored_crc = u32::from_le_bytes([blob[20], blob[21], blob[22], blob[23]]);
    if raw_len > MAX_CHUNK_SIZE {
        return Err(Error::corrupt(format!(
            "blob claims {raw_len} bytes, more than the maximum chunk size"
        )));
    }
    let actual = blob.len() - CHUNK_HEADER_LEN;
    if actual != payload_len {
        return Err(Error::corrupt(format!(
            "blob is truncated or padded: header says {payload_len} payload bytes, file has {actual}"
        )));
    }
    if encoding == ENCODING_RAW && payload_len != raw_len as usize {
        return Err(Error::corrupt("raw blob length does not match its header"));
    }
    if blob_crc(blob) != stored_crc {
        return Err(Error::corrupt("blob checksum mismatch (CRC-32)"));
    }
    Ok(BlobHeader { encoding, raw_len })
}

/// Decodes blobs, reusing its zstd context.
pub struct BlobDecoder {
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl std::fmt::Debug for BlobDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobDecoder").finish_non_exhaustive()
    }
}

impl BlobDecoder {
    /// A fresh decoder.
    pub fn new() -> Result<Self> {
        Ok(Self {
            decompressor: zstd::bulk::Decompressor::new()
                .map_err(|e| Error::io("set up zstd decompression", e))?,
        })
    }

    /// Decode `blob` into `out` (resized to the chunk length) and check that
    /// the bytes hash to `expected`.
    pub fn decode_into(
        &mut self,
        blob: &[u8],
        expected: &ChunkDigest,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let header = check_blob(blob).map_err(|e| e.context(format!("chunk {expected}")))?;
        let payload = &blob[CHUNK_HEADER_LEN..];
        out.clear();
        if header.encoding == ENCODING_RAW {
            out.extend_from_slice(payload);
        } else {
            out.resize(header.raw_len as usize, 0);
            let n = self
                .decompressor
                .decompress_to_buffer(payload, out.as_mut_slice())
                .map_err(|e| {
                    Error::corrupt(format!(
                        "chunk {expected}: zstd payload does not decode: {e}"
                    ))
                })?;
            if n != header.raw_len as usize {
                return Err(Error::corrupt(format!(
                    "chunk {expected}: decoded {n} bytes, header says {}",
                    header.raw_len
                )));
            }
        }
        let actual = ChunkDigest::of(out);
        if actual != *expected {
            return Err(Error::corrupt(format!(
                "chunk {expected}: content hashes to {actual}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn sample() -> Vec<u8> {
        (0..200_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn round_trip_compressible_and_raw() {
        let mut enc = BlobEncoder::new(3).expect("encoder");
        let mut dec = BlobDecoder::new().expect("decoder");
        let data = sample();
        let blob = enc.encode(&data).expect("encode").to_vec();
        assert_eq!(blob[8], ENCODING_ZSTD);
        assert!(blob.len() < data.len() / 10);
        let mut out = Vec::new();
        dec.decode_into(&blob, &ChunkDigest::of(&data), &mut out)
            .expect("decode");
        assert_eq!(out, data);

        // Incompressible bytes are stored raw.
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let noise_digest = ChunkDigest::of(&noise);
        let blob = enc.encode(&noise).expect("encode").to_vec();
        if blob[8] == ENCODING_RAW {
            assert_eq!(blob.len(), CHUNK_HEADER_LEN + noise.len());
        }
        dec.decode_into(&blob, &noise_digest, &mut out)
            .expect("decode");
        assert_eq!(out, noise);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut enc = BlobEncoder::new(1).expect("encoder");
        let mut dec = BlobDecoder::new().expect("decoder");
        let data = b"imprint golden chunk".repeat(50);
        let digest = ChunkDigest::of(&data);
        let blob = enc.encode(&data).expect("encode").to_vec();
        let mut out = Vec::new();
        for byte in 0..blob.len() {
            for bit in 0..8 {
                let mut bad = blob.clone();
                bad[byte] ^= 1 << bit;
                let err = dec
                    .decode_into(&bad, &digest, &mut out)
                    .expect_err("flip must be detected");
                assert!(
                    matches!(
                        err.kind(),
                        ErrorKind::Corrupt | ErrorKind::UnsupportedVersion
                    ),
                    "byte {byte} bit {bit}: {err}"
                );
            }
        }
    }

    #[test]
    fn truncation_and_wrong_digest_are_corrupt() {
        let mut enc = BlobEncoder::new(1).expect("encoder");
        let mut dec = BlobDecoder::new().expect("decoder");
        let data = vec![7u8; 10_000];
        let blob = enc.encode(&data).expect("encode").to_vec();
        let mut out = Vec::new();
        for cut in [0, 5, CHUNK_HEADER_LEN - 1, CHUNK_HEADER_LEN, blob.len() - 1] {
            let err = dec
                .decode_into(&blob[..cut], &ChunkDigest::of(&data), &mut out)
                .expect_err("truncated");
            assert_eq!(err.kind(), ErrorKind::Corrupt, "cut {cut}: {err}");
            assert!(err.to_string().contains("truncated"), "{err}");
        }
        let err = dec
            .decode_into(&blob, &ChunkDigest::of(b"other"), &mut out)
            .expect_err("wrong digest");
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains("hashes to"), "{err}");
    }

    #[test]
    fn newer_version_is_reported_as_such() {
        let mut enc = BlobEncoder::new(1).expect("encoder");
        let mut blob = enc.encode(b"abc").expect("encode").to_vec();
        blob[7] = 2;
        let err = check_blob(&blob).expect_err("v2");
        assert_eq!(err.kind(), ErrorKind::UnsupportedVersion);
    }
}
