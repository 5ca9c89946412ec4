//! qcow2 sources read exactly what `qemu-img convert -O raw` produces:
//! backing file, overlay writes, zero clusters.

use std::process::Command;

use imprint_agent::disks::open_source;

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e} (install qemu-utils)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn qcow2_with_backing_file_reads_like_qemu_img() {
    let tmp = tempfile::tempdir().expect("tmp");
    let base = tmp.path().join("base.raw");
    let f = std::fs::File::create(&base).expect("base");
    f.set_len(8 << 20).expect("len");
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    std::os::unix::fs::FileExt::write_all_at(&f, &data, 3 << 20).expect("write");
    drop(f);
    let overlay = tmp.path().join("overlay.qcow2");
    let (b, o) = (
        base.to_str().expect("utf8"),
        overlay.to_str().expect("utf8"),
    );
    run(&[
        "qemu-img", "create", "-q", "-f", "qcow2", "-b", b, "-F", "raw", o,
    ]);
    run(&["qemu-io", "-c", "write -P 0xab 1M 64k", o]);
    run(&["qemu-io", "-c", "write -z 3M 64k", o]);
    let expect_path = tmp.path().join("expect.raw");
    run(&[
        "qemu-img",
        "convert",
        "-O",
        "raw",
        o,
        expect_path.to_str().expect("utf8"),
    ]);
    let expect = std::fs::read(&expect_path).expect("read");

    let mut src = open_source(o, "qcow2").expect("open");
    assert_eq!(src.size_bytes(), 8 << 20);
    let mut got = vec![0u8; expect.len()];
    src.read_exact_at(0, &mut got).expect("read");
    assert!(got == expect, "guest-visible bytes differ from qemu-img's");
    // Through a raw backing file every range may hold data (raw files carry
    // no allocation map here): never wrong, only slower.
    assert!(src.may_have_data(1 << 20, 1 << 20).expect("map"));

    // A standalone qcow2: unallocated clusters are holes, never read.
    let solo = tmp.path().join("solo.qcow2");
    let s = solo.to_str().expect("utf8");
    run(&["qemu-img", "create", "-q", "-f", "qcow2", s, "8M"]);
    run(&["qemu-io", "-c", "write -P 0x11 2M 64k", s]);
    let mut src = open_source(s, "qcow2").expect("open");
    assert!(!src.may_have_data(0, 2 << 20).expect("map"));
    assert!(src.may_have_data(2 << 20, 1 << 20).expect("map"));
    assert!(!src.may_have_data(3 << 20, 5 << 20).expect("map"));
    let mut buf = vec![0u8; 64 << 10];
    src.read_exact_at(2 << 20, &mut buf).expect("read");
    assert!(buf.iter().all(|&b| b == 0x11));

    assert!(open_source(b, "qcow2").is_err(), "a raw file is not qcow2");
    assert!(open_source(o, "vmdk").is_err());
}
