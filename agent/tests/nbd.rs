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
