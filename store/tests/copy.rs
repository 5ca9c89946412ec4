//! Copies between stores: only missing chunks cross, the copy is
//! byte-identical, and bad cases leave nothing at the destination. Copies
//! run between directory stores and between a directory and an S3 store
//! both ways.

mod common;

use std::{fs, io::Cursor, path::Path};

use common::{Kind, TestStore};
use imprint_store::{
    ErrorKind, Store, StoreConfig,
    capture::{CaptureOptions, DiskInput, capture},
    copy::copy_image,
    restore::{RestoreOptions, restore_disk},
    source::{FileSource, WriteSeekTarget},
    usage::usage,
};

const CS: u32 = 64 * 1024;
const CHUNKS: usize = 100;

fn store(kind: Kind, dir: &Path, name: &str, chunk_size: u32) -> (TestStore, Store) {
    let ts = TestStore::new(kind, dir, name);
    let st = ts.create(StoreConfig {
        chunk_size,
        ..Default::default()
    });
    (ts, st)
}

/// 100 chunks of noise (zstd cannot shrink it, so bytes track chunks);
/// chunks in `changed` get other noise.
fn disk(path: &Path, changed: &[usize]) -> Vec<u8> {
    let mut data = vec![0u8; CHUNKS * CS as usize];
    for (c, chunk) in data.chunks_mut(CS as usize).enumerate() {
        let mut x: u32 =
            0x9e37_79b9 ^ (c as u32 * 7919) ^ if changed.contains(&c) { 0xdead } else { 0 };
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
    }
    fs::write(path, &data).expect("write disk");
    data
}

fn put(s: &Store, name: &str, path: &Path) -> imprint_store::Manifest {
    capture(
        s,
        name,
        vec![DiskInput {
            name: "vda".into(),
            source: Box::new(FileSource::open(path).expect("open")),
            base: None,
        }],
        &CaptureOptions::default(),
        &mut |_| {},
    )
    .expect("capture")
    .manifest
}

#[test]
fn dir_to_dir_copies_send_only_missing_chunks() {
    copies_send_only_missing_chunks_and_are_identical(Kind::Dir, Kind::Dir);
}

#[test]
fn dir_to_s3_copies_send_only_missing_chunks() {
    copies_send_only_missing_chunks_and_are_identical(Kind::Dir, Kind::S3);
}

#[test]
fn s3_to_dir_copies_send_only_missing_chunks() {
    copies_send_only_missing_chunks_and_are_identical(Kind::S3, Kind::Dir);
}

fn copies_send_only_missing_chunks_and_are_identical(from: Kind, to: Kind) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_, a) = store(from, tmp.path(), "site-a", CS);
    let (_, b) = store(to, tmp.path(), "site-b", CS);
    let path = tmp.path().join("disk.raw");
    disk(&path, &[]);
    let v1 = put(&a, "v1", &path);
    let first = copy_image(&a, &b, &v1.image_id, &mut |_, _| {}).expect("copy v1");
    assert_eq!(first.chunks_total, CHUNKS as u64);
    assert_eq!(first.chunks_sent, CHUNKS as u64);

    // v2 shares 90 % of its chunks with v1, which site B has.
    let changed: Vec<usize> = (0..CHUNKS).step_by(10).collect();
    let data = disk(&path, &changed);
    let v2 = put(&a, "v2", &path);
    let second = copy_image(&a, &b, &v2.image_id, &mut |_, _| {}).expect("copy v2");
    assert_eq!(second.chunks_sent, changed.len() as u64);
    assert_eq!(second.chunks_present, (CHUNKS - changed.len()) as u64);
    let stored = usage(&a)
        .expect("usage")
        .images
        .into_iter()
        .find(|u| u.image_id == v2.image_id)
        .expect("v2")
        .referenced_bytes;
    let ratio = second.bytes_sent as f64 / stored as f64;
    eprintln!(
        "v2: sent {} of {} stored bytes ({:.1} %)",
        second.bytes_sent,
        stored,
        ratio * 100.0
    );
    assert!(ratio <= 0.12, "sent {:.1} % of the image", ratio * 100.0);

    // Site B's copy is the same disk.
    let m = b.manifest(&v2.image_id).expect("copied manifest");
    assert_eq!(m, v2);
    let mut out = WriteSeekTarget::new(Cursor::new(vec![0u8; data.len()]), true);
    restore_disk(&b, &m, 0, &mut out, &RestoreOptions::default(), &mut |_| {}).expect("restore");
    assert!(
        out.into_inner().into_inner() == data,
        "byte-identical at site B"
    );

    // Copying again, or onto the store it is in, is refused.
    for dst in [&b, &a] {
        let e = copy_image(&a, dst, &v2.image_id, &mut |_, _| {}).expect_err("exists");
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    }
}

fn bad_copies_leave_nothing_at_the_destination(kind: Kind) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (ta, a) = store(kind, tmp.path(), "a", CS);
    let path = tmp.path().join("disk.raw");
    disk(&path, &[]);
    let img = put(&a, "img", &path);

    let (_, other) = store(kind, tmp.path(), "other", 4 * CS);
    let e = copy_image(&a, &other, &img.image_id, &mut |_, _| {}).expect_err("chunk size");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");

    // A damaged source chunk is caught before it is stored.
    let chunks = ta.files.join("chunks");
    let victim = fs::read_dir(&chunks)
        .expect("ls")
        .filter_map(|d| d.ok())
        .flat_map(|d| fs::read_dir(d.path()).expect("ls").filter_map(|e| e.ok()))
        .next()
        .expect("a chunk")
        .path();
    let mut bytes = fs::read(&victim).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&victim, bytes).expect("damage");
    let (_, b) = store(kind, tmp.path(), "b", CS);
    let e = copy_image(&a, &b, &img.image_id, &mut |_, _| {}).expect_err("corrupt");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(
        b.list().expect("list").is_empty(),
        "no image at the destination"
    );
    let e = copy_image(
        &a,
        &b,
        &"6f1e2a3b-0000-4000-8000-000000000000".parse().expect("id"),
        &mut |_, _| {},
    )
    .expect_err("unknown");
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

on_both_backends!(bad_copies_leave_nothing_at_the_destination);
