//! The agent's NBD export against QEMU's NBD client (`qemu-img`, package
//! qemu-utils): a stored image served from the store reads back
//! byte-identical to the disk it was captured from, zero chunks are
//! reported as zeros (`qemu-img map`), writes are refused, and a damaged
//! chunk is an I/O error, never other bytes.

use std::{os::unix::fs::FileExt, path::Path, process::Command, sync::Arc};

use imprint_agent::nbd::server::Export;
use imprint_store::{
    Store, StoreConfig,
    capture::{CaptureOptions, DiskInput, capture},
    reader::DiskReader,
    source::FileSource,
};

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (package qemu-utils)")
}

/// A 24 MiB disk: data at 4-9 MiB and in the last MiB, zeros elsewhere.
fn disk(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("disk.raw");
    let f = std::fs::File::create(&file).expect("create");
    f.set_len(24 << 20).expect("len");
    let pattern: Vec<u8> = (0..(5u32 << 20)).map(|i| (i * 13 % 251) as u8).collect();
    f.write_all_at(&pattern, 4 << 20).expect("write");
    f.write_all_at(&pattern[..1 << 20], 23 << 20)
        .expect("write");
    file
}

fn store_it(dir: &Path, file: &Path) -> (Store, imprint_store::Manifest) {
    let store = Store::open_or_create_dir(&dir.join("store"), false, StoreConfig::default())
        .expect("store");
    let disks = vec![DiskInput {
        name: "vda".into(),
        source: Box::new(FileSource::open(file).expect("source")),
        base: None,
    }];
    let m = capture(&store, "t", disks, &CaptureOptions::default(), &mut |_| {})
        .expect("capture")
        .manifest;
    (store, m)
}

fn url(sock: &Path) -> String {
    format!("nbd+unix:///vda?socket={}", sock.display())
}

#[test]
fn qemu_reads_a_stored_image_as_it_was_captured() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = disk(tmp.path());
    let (store, m) = store_it(tmp.path(), &file);
    let reader = DiskReader::open(&store, &m, 0, 8).expect("reader");
    let sock = tmp.path().join("e.sock");
    let _export = Export::start(&sock, "vda", Arc::new(reader), None).expect("serve");

    let out = qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        file.to_str().unwrap_or_default(),
        &url(&sock),
    ]);
    assert!(
        out.status.success(),
        "compare: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = qemu_img(&["map", "--output=json", "-f", "raw", &url(&sock)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let data: Vec<(u64, u64)> = map
        .as_array()
        .expect("list")
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| {
            (
                e["start"].as_u64().unwrap_or(0),
                e["length"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(data, vec![(4 << 20, 5 << 20), (23 << 20, 1 << 20)], "{map}");

    let copy = tmp.path().join("copy.raw");
    let out = qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &url(&sock),
        copy.to_str().unwrap_or_default(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let allocated = std::fs::metadata(&copy)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(0);
    assert!(
        allocated <= 7 << 20,
        "zero chunks stay holes in a copy: {allocated} bytes allocated"
    );

    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k", &url(&sock)])
        .output()
        .expect("qemu-io");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // The export says it is read-only: QEMU does not even open it for writing.
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("Permission denied"), "{said}");
}

#[test]
fn a_damaged_chunk_is_an_io_error_not_other_bytes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = disk(tmp.path());
    let (store, m) = store_it(tmp.path(), &file);
    // Damage every stored chunk.
    let mut stack = vec![tmp.path().join("store").join("chunks")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let mut b = std::fs::read(&p).expect("read");
                let last = b.len() - 1;
                b[last] ^= 0x5a;
                std::fs::write(&p, b).expect("write");
            }
        }
    }
    let reader = DiskReader::open(&store, &m, 0, 8).expect("reader");
    let sock = tmp.path().join("e.sock");
    let export = Export::start(&sock, "vda", Arc::new(reader), None).expect("serve");
    let out = Command::new("qemu-io")
        .args(["-r", "-f", "raw", "-c", "read 4M 64k", &url(&sock)])
        .output()
        .expect("qemu-io");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Input/output error"), "{said}");
    let failure = export.failure().expect("the failure is recorded");
    assert!(failure.contains("chunk 4"), "names the chunk: {failure}");
}
