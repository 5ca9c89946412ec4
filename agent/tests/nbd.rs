//! The NBD client against QEMU's own NBD server (`qemu-nbd`, package
//! qemu-utils): the bytes read are the file's, an unknown export is
//! NOT_FOUND.

use std::{
    os::unix::fs::FileExt,
    process::{Child, Command},
    time::{Duration, Instant},
};

use imprint_agent::nbd::NbdDisk;
use imprint_store::source::DiskSource;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn reads_what_qemu_nbd_serves() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("disk.raw");
    let size = 9 << 20;
    let f = std::fs::File::create(&file).expect("create");
    f.set_len(size).expect("len");
    let pattern: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i * 7 % 251) as u8).collect();
    f.write_all_at(&pattern, 5 << 20).expect("write");
    let sock = tmp.path().join("nbd.sock");
    let _server = Server(
        Command::new("qemu-nbd")
            .args([
                "--read-only",
                "--persistent",
                "--shared=4",
                "--format=raw",
                "--export-name=vda",
            ])
            .arg(format!("--socket={}", sock.display()))
            .arg(&file)
            .spawn()
            .expect("qemu-nbd (package qemu-utils)"),
    );
    let start = Instant::now();
    let mut disk = loop {
        match NbdDisk::open(&sock, "vda") {
            Ok(d) => break d,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(10), "qemu-nbd: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!(disk.size_bytes(), size);
    // 9 MiB in one call: several requests under the hood.
    let mut all = vec![0xaa; size as usize];
    disk.read_exact_at(0, &mut all).expect("read all");
    assert!(all[..5 << 20].iter().all(|b| *b == 0));
    assert_eq!(&all[5 << 20..8 << 20], &pattern[..]);
    let mut part = vec![0; 4097];
    disk.read_exact_at((5 << 20) + 3, &mut part)
        .expect("unaligned");
    assert_eq!(&part[..], &pattern[3..4100]);
    // Block status: the holes before the data are known without reading.
    assert!(disk.knows_allocation(), "qemu-nbd offers base:allocation");
    assert!(!disk.may_have_data(0, 1 << 20).expect("status"));
    assert!(!disk.may_have_data(1 << 20, 4 << 20).expect("status"));
    assert!(disk.may_have_data(5 << 20, 1 << 20).expect("status"));
    assert!(
        disk.may_have_data((4 << 20) + 4096, 1 << 20)
            .expect("status"),
        "straddles"
    );
    let e = NbdDisk::open(&sock, "nope").expect_err("unknown export");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
}

fn qemu(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
}

/// A qcow2 disk with a persistent dirty bitmap (what a libvirt checkpoint
/// is): blocks written after the bitmap was added are the changed ones,
/// read from QEMU's `qemu:dirty-bitmap:` context.
#[test]
fn dirty_bitmap_tells_what_changed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("disk.qcow2");
    let f = file.to_str().expect("utf8");
    qemu("qemu-img", &["create", "-q", "-f", "qcow2", f, "8M"]);
    qemu("qemu-io", &["-f", "qcow2", "-c", "write -P 0x11 0 8M", f]);
    qemu("qemu-img", &["bitmap", "--add", f, "b0"]);
    qemu(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x22 3M 64k",
            "-c",
            "write -P 0x33 6M 1M",
            f,
        ],
    );
    let sock = tmp.path().join("nbd.sock");
    let _server = Server(
        Command::new("qemu-nbd")
            .args([
                "--read-only",
                "--persistent",
                "--shared=4",
                "--format=qcow2",
                "--bitmap=b0",
                "--export-name=vda",
            ])
            .arg(format!("--socket={}", sock.display()))
            .arg(&file)
            .spawn()
            .expect("qemu-nbd (package qemu-utils)"),
    );
    let start = Instant::now();
    let mut disk = loop {
        match NbdDisk::open_with_bitmap(&sock, "vda", Some("b0")) {
            Ok(d) => break d,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(10), "qemu-nbd: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let changed = |d: &mut NbdDisk, at: u64| d.may_have_changed(at << 20, 1 << 20).expect("status");
    assert!(!changed(&mut disk, 0));
    assert!(changed(&mut disk, 3), "64 KiB written at 3 MiB");
    assert!(!changed(&mut disk, 4));
    assert!(changed(&mut disk, 6));
    assert!(!changed(&mut disk, 7));
    // Allocation still answers beside it.
    assert!(disk.may_have_data(0, 1 << 20).expect("status"));
    let mut b = vec![0; 4];
    disk.read_exact_at(3 << 20, &mut b).expect("read");
    assert_eq!(b, [0x22; 4]);
    // Without the bitmap, everything may have changed.
    let mut plain = NbdDisk::open(&sock, "vda").expect("open");
    assert!(plain.may_have_changed(0, 1 << 20).expect("status"));
    // A bitmap the export does not have: NOT_FOUND, not a full read.
    let e = NbdDisk::open_with_bitmap(&sock, "vda", Some("nope")).expect_err("no bitmap");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
}
