//! Import and export of disk image files, checked with qemu-img itself:
//! `qemu-img compare` between the file imported and the file exported, in
//! both formats, and every kind of file the import refuses.

use std::{
    path::Path,
    process::Command,
    sync::{Arc, atomic::AtomicBool},
};

use imprint_agent::{
    error::Kind,
    transfer::{Format, export, import},
};
use imprint_proto::hardware::Hardware;
use imprint_store::{Store, StoreConfig};

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (package qemu-utils)")
}

fn ok(args: &[&str]) {
    let out = qemu_img(args);
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// A 24 MiB raw disk with data here and there and holes between.
fn raw_disk(path: &Path) {
    let f = std::fs::File::create(path).expect("create");
    f.set_len(24 << 20).expect("len");
    for (i, off) in [0u64, 3 << 20, 7 << 20, (24 << 20) - 4096]
        .iter()
        .enumerate()
    {
        let block: Vec<u8> = (0..4096u32).map(|b| (b as u8) ^ (i as u8 * 37)).collect();
        std::os::unix::fs::FileExt::write_all_at(&f, &block, *off).expect("write");
    }
}

fn nothing() -> impl Fn(&str, u64, u64) + Sync {
    |_: &str, _: u64, _: u64| {}
}

#[test]
fn raw_and_qcow2_round_trips_compare_equal_with_qemu_img() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = Store::open_or_create_dir(&tmp.path().join("store"), false, StoreConfig::default())
        .expect("store");
    let cancel = Arc::new(AtomicBool::new(false));
    let raw = tmp.path().join("disk.raw");
    raw_disk(&raw);
    let r = import(
        &store,
        &raw,
        None,
        "from-raw",
        None,
        &Hardware::default(),
        &cancel,
        &nothing(),
    )
    .expect("import raw");
    assert_eq!(r.manifest.disks[0].size_bytes, 24 << 20);
    assert_eq!(
        r.manifest
            .labels
            .get("imprint.imported_from")
            .map(String::as_str),
        Some(s(&raw))
    );
    for (format, name) in [(Format::Raw, "out.raw"), (Format::Qcow2, "out.qcow2")] {
        let out = tmp.path().join(name);
        let n = export(
            &store,
            &r.manifest.image_id,
            0,
            &out,
            format,
            None,
            &cancel,
            &nothing(),
        )
        .expect("export");
        assert_eq!(n, 24 << 20);
        // An export holds an account's private image: owner only.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
        ok(&["compare", s(&raw), s(&out)]);
        if format == Format::Qcow2 {
            let info = qemu_img(&["info", "--output=json", s(&out)]);
            let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
            assert_eq!(info["format"], "qcow2");
            // Four 1 MiB chunks hold data; the 20 MiB of holes stay
            // unallocated.
            assert!(
                info["actual-size"].as_u64().expect("size") < 6 << 20,
                "holes stay unallocated: {info}"
            );
        }
    }

    // qcow2 with a backing file beside it: the guest view is imported.
    let base = tmp.path().join("base.raw");
    raw_disk(&base);
    let overlay = tmp.path().join("overlay.qcow2");
    ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&overlay),
    ]);
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 1M 64k", s(&overlay)])
        .output()
        .expect("qemu-io");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = import(
        &store,
        &overlay,
        Some(Format::Qcow2),
        "from-qcow2",
        None,
        &Hardware::default(),
        &cancel,
        &nothing(),
    )
    .expect("import qcow2");
    let back = tmp.path().join("overlay-out.raw");
    export(
        &store,
        &r.manifest.image_id,
        0,
        &back,
        Format::Raw,
        None,
        &cancel,
        &nothing(),
    )
    .expect("export");
    ok(&["compare", s(&overlay), s(&back)]);

    // Export refuses to overwrite, and names what is wrong.
    let e = export(
        &store,
        &r.manifest.image_id,
        0,
        &back,
        Format::Raw,
        None,
        &cancel,
        &nothing(),
    )
    .expect_err("exists");
    assert_eq!(e.kind, Kind::Conflict, "{e}");
    let e = export(
        &store,
        &r.manifest.image_id,
        3,
        &tmp.path().join("x.raw"),
        Format::Raw,
        None,
        &cancel,
        &nothing(),
    )
    .expect_err("no disk 3");
    assert_eq!(e.kind, Kind::InvalidArgument, "{e}");
    let e = export(
        &store,
        &r.manifest.image_id,
        0,
        &tmp.path().join("missing-dir/x.raw"),
        Format::Raw,
        None,
        &cancel,
        &nothing(),
    )
    .expect_err("no such directory");
    assert_eq!(e.kind, Kind::NotFound, "{e}");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("imprint-partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn files_that_are_not_importable_are_refused_and_store_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = Store::open_or_create_dir(&tmp.path().join("store"), false, StoreConfig::default())
        .expect("store");
    let cancel = Arc::new(AtomicBool::new(false));
    let dir = tmp.path().join("import");
    std::fs::create_dir(&dir).expect("dir");
    let p = |n: &str| dir.join(n);

    std::fs::write(p("empty.raw"), b"").expect("write");
    std::fs::write(p("odd.raw"), vec![1u8; 1000]).expect("write");
    ok(&["create", "-q", "-f", "vmdk", s(&p("disk.vmdk")), "1M"]);
    ok(&["create", "-q", "-f", "vpc", s(&p("disk.vhd")), "1M"]);
    ok(&["create", "-q", "-f", "vdi", s(&p("disk.vdi")), "1M"]);
    ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=ext.data",
        s(&p("external.qcow2")),
        "1M",
    ]);
    let outside = tmp.path().join("outside.raw");
    raw_disk(&outside);
    ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(&outside),
        "-F",
        "raw",
        s(&p("escapes.qcow2")),
    ]);
    raw_disk(&p("plain.raw"));

    let cases: [(&str, Option<Format>, &str); 8] = [
        ("empty.raw", None, "not a disk image"),
        ("odd.raw", None, "multiple of 512"),
        ("disk.vmdk", None, "VMDK"),
        ("disk.vhd", None, "VHD"),
        ("disk.vdi", None, "VDI"),
        ("external.qcow2", None, "external data file"),
        ("escapes.qcow2", None, "outside"),
        ("plain.raw", Some(Format::Qcow2), "not qcow2"),
    ];
    for (file, want, says) in cases {
        let e = import(
            &store,
            &p(file),
            want,
            "x",
            None,
            &Hardware::default(),
            &cancel,
            &nothing(),
        )
        .expect_err(file);
        assert_eq!(e.kind, Kind::InvalidArgument, "{file}: {e}");
        assert!(e.message.contains(says), "{file}: {e}");
    }
    let e = import(
        &store,
        &p("absent.raw"),
        None,
        "x",
        None,
        &Hardware::default(),
        &cancel,
        &nothing(),
    )
    .expect_err("absent");
    assert_eq!(e.kind, Kind::NotFound, "{e}");
    assert!(store.list().expect("list").is_empty(), "nothing imported");
}
