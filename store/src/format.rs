//! Every on-disk magic number and fixed header size of the store, declared
//! once.
//!
//! **Never change these values.** Stores written by earlier builds must stay
//! readable: a new layout gets a new version byte (the last byte of its
//! magic), and readers keep accepting the old one. The golden vectors in
//! `tests` (`golden.rs`) fail loudly if any of these drift.

/// Length of every magic.
pub const MAGIC_LEN: usize = 8;

/// Magics are a 7-byte family name plus a 1-byte format version, so a reader
/// can tell "not our file" (family differs, [`crate::ErrorKind::Corrupt`])
/// from "ours, but a newer format" (family matches, version unknown,
/// [`crate::ErrorKind::UnsupportedVersion`]).
pub const FAMILY_LEN: usize = 7;

/// A compressed chunk blob (`chunks/<prefix>/<digest>`), version 1.
pub const CHUNK_MAGIC_V1: [u8; MAGIC_LEN] = *b"IMPCHK\0\x01";
/// Fixed size of the chunk blob header (see [`crate::blob`]).
pub const CHUNK_HEADER_LEN: usize = 24;

/// A per-disk fixed index (`images/<id>/disk<N>.fidx`), version 1.
pub const INDEX_MAGIC_V1: [u8; MAGIC_LEN] = *b"IMPIDX\0\x01";
/// Fixed size of the index header (see [`crate::index`]).
pub const INDEX_HEADER_LEN: usize = 32;

/// An image manifest (`images/<id>/manifest`), version 1.
pub const MANIFEST_MAGIC_V1: [u8; MAGIC_LEN] = *b"IMPMAN\0\x01";
/// Magic + JSON length.
pub const MANIFEST_HEADER_LEN: usize = 12;

/// Length of the BLAKE3 trailer that seals index and manifest files.
pub const TRAILER_LEN: usize = 32;

/// Blob payload encodings (byte 8 of the chunk header).
pub const ENCODING_RAW: u8 = 0;
/// zstd frame holding exactly the chunk's bytes.
pub const ENCODING_ZSTD: u8 = 1;

/// Chunk size of new stores unless the operator chooses another
/// (`docs/benchmarks.md` has the measurements behind 1 MiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest allowed chunk size (64 KiB).
pub const MIN_CHUNK_SIZE: u32 = 1 << 16;
/// Largest allowed chunk size (16 MiB): bounds memory per buffer.
pub const MAX_CHUNK_SIZE: u32 = 1 << 24;

/// Name of the marker file at the root of a store directory.
pub const STORE_CONFIG_FILE: &str = "imprint-store.json";
/// Version of the store directory layout written in the marker file.
pub const STORE_LAYOUT_VERSION: u32 = 1;

/// Whether a magic belongs to `family_of` (same first 7 bytes).
pub(crate) fn same_family(magic: &[u8], family_of: &[u8; MAGIC_LEN]) -> bool {
    magic.len() >= FAMILY_LEN && magic[..FAMILY_LEN] == family_of[..FAMILY_LEN]
}

const _: () = assert!(CHUNK_HEADER_LEN == MAGIC_LEN + 1 + 3 + 4 + 4 + 4);
const _: () = assert!(INDEX_HEADER_LEN == MAGIC_LEN + 8 + 4 + 4 + 8);
const _: () = assert!(MANIFEST_HEADER_LEN == MAGIC_LEN + 4);
const _: () = assert!(DEFAULT_CHUNK_SIZE >= MIN_CHUNK_SIZE && DEFAULT_CHUNK_SIZE <= MAX_CHUNK_SIZE);
