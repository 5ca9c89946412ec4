//! Golden vectors: a fixed small disk and the exact digests and bytes every
//! format produces for it. If one of these fails, an on-disk format changed:
//! that breaks every existing store. Bump the format version instead.

use std::{collections::BTreeMap, io::Cursor};

use imprint_store::{
    ChunkDigest, FixedIndex, Manifest, Store, StoreConfig,
    blob::{BlobDecoder, BlobEncoder, check_blob},
    capture::{CaptureOptions, DiskInput, capture},
    format,
    manifest::DiskEntry,
    source::ReadSeekSource,
};

const CS: u32 = 64 * 1024;

/// 3 full chunks and a short one: pattern, zeros, text, constant.
fn golden_disk() -> Vec<u8> {
    let mut d = Vec::new();
    d.extend((0..CS).map(|i| (i % 251) as u8));
    d.extend(std::iter::repeat_n(0u8, CS as usize));
    d.extend(b"imprint golden disk\n".iter().cycle().take(CS as usize));
    d.extend(std::iter::repeat_n(0x5Au8, 1000));
    d
}

const CHUNK_DIGESTS: [&str; 4] = [
    "68d647e619a930e7b1082f74f334b0c65a315725569bdc123f0ee11881717bfe",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "1f34b3ab772bbea379343db1d0b9429f9114b97d73716b41529c8c529ee5e2b6",
    "7105a2f0aef78b12086fdb9405046f92c6f7e3609c805df18d06dfc462ce80f6",
];
const INDEX_BLAKE3: &str = "818f45453c2f3b3d00c5cc2f8b80dce1633b0f16ba4cfd66a0266293b14b015b";
const DISK_SHA256: &str = "04c3178229b667f53fa3bf3f6e420aba0152e1b5373b60798427dddb56b08d08";
const MANIFEST_BLAKE3: &str = "4a31fb96bee3deedf58a47ddfa553e917975fce77e1ec160dd91516d2a2e566d";
/// A blob written by version 1 (zstd level 3) of "golden\n" x 100: readers
/// must decode it forever, whatever zstd version encodes today.
const BLOB_V1_HEX: &str = "494d5043484b000101000000bc02000018000000a3726f6f28b52ffd60bc0175000038676f6c64656e0a0100b2541523";

#[test]
fn magics_never_change() {
    assert_eq!(&format::CHUNK_MAGIC_V1, b"IMPCHK\0\x01");
    assert_eq!(&format::INDEX_MAGIC_V1, b"IMPIDX\0\x01");
    assert_eq!(&format::MANIFEST_MAGIC_V1, b"IMPMAN\0\x01");
    assert_eq!(format::CHUNK_HEADER_LEN, 24);
    assert_eq!(format::INDEX_HEADER_LEN, 32);
    assert_eq!(format::DEFAULT_CHUNK_SIZE, 1 << 20);
}

#[test]
fn golden_disk_digests_index_and_sha256() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = Store::open_or_create_dir(
        tmp.path(),
        false,
        StoreConfig {
            chunk_size: CS,
            ..Default::default()
        },
    )
    .expect("store");
    let disk = golden_disk();
    let r = capture(
        &store,
        "golden",
        vec![DiskInput {
            name: "vda".into(),
            source: Box::new(ReadSeekSource::new(Cursor::new(disk)).expect("src")),
            base: None,
        }],
        &CaptureOptions::default(),
        &mut |_| {},
    )
    .expect("capture");
    let index = store.read_index(&r.manifest, 0).expect("index");
    let got: Vec<String> = index.digests().iter().map(ChunkDigest::to_hex).collect();
    assert_eq!(got, CHUNK_DIGESTS);
    assert_eq!(r.manifest.disks[0].index_blake3, INDEX_BLAKE3);
    assert_eq!(r.manifest.disks[0].sha256.as_deref(), Some(DISK_SHA256));
    // Index bytes are fully determined by the digests.
    let mut idx = FixedIndex::new_zeroed(3 * u64::from(CS) + 1000, CS).expect("idx");
    for (i, d) in CHUNK_DIGESTS.iter().enumerate() {
        idx.set(i, d.parse().expect("digest"));
    }
    assert_eq!(blake3::hash(&idx.encode()).to_hex().as_str(), INDEX_BLAKE3);
}

#[test]
fn golden_manifest_bytes() {
    let m = Manifest {
        image_id: "6f1c2a4e-0b7d-4c1e-9a3b-2d5e8f7a6b10".parse().expect("id"),
        name: "golden".into(),
        created_unix: 1_790_000_000,
        chunk_size: CS,
        disks: vec![DiskEntry {
            name: "vda".into(),
            index_file: "disk0.fidx".into(),
            index_blake3: INDEX_BLAKE3.into(),
            size_bytes: 3 * u64::from(CS) + 1000,
            sha256: Some(DISK_SHA256.into()),
            zero_chunks: 1,
            data_chunks: 3,
        }],
        config: serde_json::json!({"vcpus": 2, "memory_mib": 512}),
        labels: BTreeMap::from([("os".to_string(), "debian".to_string())]),
    };
    let bytes = m.encode().expect("encode");
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), MANIFEST_BLAKE3);
    assert_eq!(Manifest::decode(&bytes).expect("decode"), m);
}

#[test]
fn golden_blob_decodes_forever() {
    let data = b"golden\n".repeat(100);
    let mut enc = BlobEncoder::new(3).expect("enc");
    let fresh = enc.encode(&data).expect("encode").to_vec();
    // Header fields are fixed even if zstd's output changes.
    assert_eq!(&fresh[..8], b"IMPCHK\0\x01");
    assert_eq!(fresh[8], format::ENCODING_ZSTD);
    assert_eq!(&fresh[9..12], &[0, 0, 0]);
    assert_eq!(&fresh[12..16], &700u32.to_le_bytes());
    let stored = hex::decode(BLOB_V1_HEX).expect("hex");
    let header = check_blob(&stored).expect("header");
    assert_eq!(header.raw_len, 700);
    let mut out = Vec::new();
    BlobDecoder::new()
        .expect("dec")
        .decode_into(&stored, &ChunkDigest::of(&data), &mut out)
        .expect("decode");
    assert_eq!(out, data);
}
