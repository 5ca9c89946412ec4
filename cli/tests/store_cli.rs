//! `imprint store ...` as scripts use it: JSON figures and exit codes.

use std::{
    fs::{self, File},
    os::unix::fs::FileExt,
    path::Path,
    process::{Command, Output},
};

use sha2::{Digest, Sha256};

fn imprint(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args(args)
        .output()
        .expect("run imprint")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "imprint failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

fn make_disk(path: &Path, size: u64) -> Vec<u8> {
    let f = File::create(path).expect("create");
    f.set_len(size).expect("size");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 7919) as u8).collect();
    f.write_all_at(&data, 5 << 20).expect("write");
    drop(f);
    fs::read(path).expect("read")
}

#[test]
fn put_get_list_verify_gc_delete() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("store");
    let s = store.to_str().expect("utf8");
    let disk = tmp.path().join("vda.raw");
    let data = make_disk(&disk, 16 << 20);

    let put = json(&imprint(&[
        "-q",
        "-o",
        "json",
        "store",
        "put",
        "--store",
        s,
        "--name",
        "base",
        disk.to_str().expect("utf8"),
    ]));
    for k in [
        "bytes_read",
        "bytes_stored",
        "bytes_deduplicated",
        "zero_bytes_skipped",
        "seconds",
    ] {
        assert!(
            put.get(k).is_some_and(serde_json::Value::is_number),
            "put lacks {k}: {put}"
        );
    }
    let id = put["image_id"].as_str().expect("id").to_string();
    assert_eq!(put["bytes_total"], 16 << 20);
    assert!(put["zero_bytes_skipped"].as_u64().expect("n") >= 12 << 20);
    assert_eq!(
        put["disks"][0]["sha256"],
        hex::encode(Sha256::digest(&data))
    );

    // Same disk again under another name: everything deduplicates.
    let again = json(&imprint(&[
        "-q",
        "-o",
        "json",
        "store",
        "put",
        "--store",
        s,
        "--name",
        "copy",
        disk.to_str().expect("utf8"),
    ]));
    assert_eq!(again["bytes_stored"], 0);
    assert_eq!(again["bytes_deduplicated"], put["bytes_new"]);

    let list = json(&imprint(&["-o", "json", "store", "list", "--store", s]));
    let names: Vec<&str> = list["images"]
        .as_array()
        .expect("array")
        .iter()
        .map(|i| i["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"base") && names.contains(&"copy"));

    let out = tmp.path().join("out.raw");
    let get = json(&imprint(&[
        "-q",
        "-o",
        "json",
        "store",
        "get",
        "--store",
        s,
        "base",
        "--disk",
        "0",
        "--output",
        out.to_str().expect("utf8"),
    ]));
    for k in [
        "bytes_read",
        "zero_bytes_skipped",
        "seconds",
        "bytes_written",
    ] {
        assert!(
            get.get(k).is_some_and(serde_json::Value::is_number),
            "get lacks {k}: {get}"
        );
    }
    assert_eq!(fs::read(&out).expect("read"), data);

    let verify = json(&imprint(&["-o", "json", "store", "verify", "--store", s]));
    assert_eq!(verify["images_checked"], 2);
    assert_eq!(verify["missing"].as_array().expect("a").len(), 0);

    let del = imprint(&["store", "delete", "--store", s, &id]);
    assert!(del.status.success());
    let gc = json(&imprint(&[
        "-o", "json", "store", "gc", "--store", s, "--grace", "0",
    ]));
    assert_eq!(gc["chunks_removed"], 0, "copy still uses every chunk: {gc}");
    let del = imprint(&["store", "delete", "--store", s, "copy"]);
    assert!(del.status.success());
    let dry = json(&imprint(&[
        "-o",
        "json",
        "store",
        "gc",
        "--store",
        s,
        "--grace",
        "0",
        "--dry-run",
    ]));
    assert!(dry["chunks_removed"].as_u64().expect("n") > 0);
    let gc = json(&imprint(&[
        "-o", "json", "store", "gc", "--store", s, "--grace", "0",
    ]));
    assert_eq!(gc["chunks_removed"], dry["chunks_removed"]);
    assert_eq!(gc["bytes_freed"], dry["bytes_freed"]);
}

#[test]
fn exit_codes_by_class() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("store");
    let s = store.to_str().expect("utf8");
    let disk = tmp.path().join("vda.raw");
    make_disk(&disk, 8 << 20);
    let d = disk.to_str().expect("utf8");

    // usage
    assert_eq!(code(&imprint(&["store", "put", "--store", s])), 2);
    assert_eq!(
        code(&imprint(&["store", "put", "--store", s, "--name", "", d])),
        2
    );
    // not a store / not found
    let out = imprint(&["store", "list", "--store", s]);
    assert_eq!(code(&out), 3);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{out:?}"
    );
    let out = imprint(&[
        "store",
        "put",
        "--store",
        s,
        "--name",
        "x",
        "/nonexistent/disk",
    ]);
    assert_eq!(code(&out), 3);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/disk"),
        "{out:?}"
    );

    json(&imprint(&[
        "-q", "-o", "json", "store", "put", "--store", s, "--name", "img", d,
    ]));
    let out = imprint(&[
        "store",
        "get",
        "--store",
        s,
        "nope",
        "--output",
        "/dev/null",
    ]);
    assert_eq!(code(&out), 3);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"nope\""),
        "{out:?}"
    );
    let out = imprint(&[
        "store",
        "get",
        "--store",
        s,
        "img",
        "--disk",
        "3",
        "--output",
        "/dev/null",
    ]);
    assert_eq!(code(&out), 2);

    // conflict: two images with one name
    json(&imprint(&[
        "-q", "-o", "json", "store", "put", "--store", s, "--name", "img", d,
    ]));
    let out = imprint(&["store", "show", "--store", s, "img"]);
    assert_eq!(code(&out), 5);

    // data: a damaged chunk makes verify fail with the chunk's name
    let chunks = store.join("chunks");
    let prefix = fs::read_dir(&chunks)
        .expect("ls")
        .next()
        .expect("a prefix")
        .expect("e")
        .path();
    let chunk = fs::read_dir(&prefix)
        .expect("ls")
        .next()
        .expect("a chunk")
        .expect("e")
        .path();
    let mut bytes = fs::read(&chunk).expect("read");
    let n = bytes.len() - 1;
    bytes[n] ^= 0xff;
    fs::write(&chunk, &bytes).expect("write");
    let out = imprint(&["store", "verify", "--store", s]);
    assert_eq!(code(&out), 7);
    let name = chunk.file_name().expect("n").to_string_lossy().into_owned();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&name),
        "{out:?}"
    );
    // ... and a get of the damaged image fails with DATA (7) and leaves no
    // file, partial or whole, at its output.
    let id =
        json(&imprint(&["-o", "json", "store", "list", "--store", s]))["images"][0]["image_id"]
            .as_str()
            .expect("id")
            .to_string();
    let output = tmp.path().join("out.raw");
    let out = imprint(&[
        "store",
        "get",
        "--store",
        s,
        &id,
        "--output",
        output.to_str().expect("utf8"),
    ]);
    assert_eq!(code(&out), 7, "{out:?}");
    let left: Vec<_> = fs::read_dir(tmp.path())
        .expect("ls")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("out.raw"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn store_not_writable_is_permission_denied() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("store");
    let s = store.to_str().expect("utf8");
    let disk = tmp.path().join("vda.raw");
    make_disk(&disk, 4 << 20);
    fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    fs::set_permissions(&disk, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    json(&imprint(&[
        "-q",
        "-o",
        "json",
        "store",
        "put",
        "--store",
        s,
        "--name",
        "a",
        disk.to_str().expect("utf8"),
    ]));
    // Root ignores permission bits: run as nobody then.
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_imprint"));
        c
    } else {
        for sub in ["", "chunks", "images", "writers"] {
            fs::set_permissions(
                store.join(sub),
                std::os::unix::fs::PermissionsExt::from_mode(0o555),
            )
            .expect("chmod");
        }
        Command::new(env!("CARGO_BIN_EXE_imprint"))
    };
    let out = cmd
        .args([
            "store",
            "put",
            "--store",
            s,
            "--name",
            "b",
            disk.to_str().expect("utf8"),
        ])
        .output()
        .expect("run");
    assert_eq!(code(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(s),
        "names the path: {out:?}"
    );
    let list = json(&imprint(&["-o", "json", "store", "list", "--store", s]));
    assert_eq!(
        list["images"].as_array().expect("a").len(),
        1,
        "nothing half-written"
    );
}

#[test]
fn copy_to_another_store_sends_what_it_lacks() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("site-a"), tmp.path().join("site-b"));
    let (sa, sb) = (a.to_str().expect("utf8"), b.to_str().expect("utf8"));
    let disk = tmp.path().join("vda.raw");
    let data = make_disk(&disk, 16 << 20);
    let d = disk.to_str().expect("utf8");
    json(&imprint(&[
        "-q", "-o", "json", "store", "put", "--store", sa, "--name", "web", d,
    ]));
    let first = json(&imprint(&[
        "-q", "-o", "json", "store", "copy", "--store", sa, "web", "--to", sb,
    ]));
    assert!(first["chunks_sent"].as_u64().expect("sent") > 0);
    assert_eq!(first["chunks_sent"], first["chunks_total"]);
    // A second image of the same disk: nothing new crosses.
    json(&imprint(&[
        "-q", "-o", "json", "store", "put", "--store", sa, "--name", "web2", d,
    ]));
    let second = json(&imprint(&[
        "-q", "-o", "json", "store", "copy", "--store", sa, "web2", "--to", sb,
    ]));
    assert_eq!(second["chunks_sent"], 0);
    assert_eq!(second["bytes_sent"], 0);
    let out = tmp.path().join("out.raw");
    json(&imprint(&[
        "-q",
        "-o",
        "json",
        "store",
        "get",
        "--store",
        sb,
        "web2",
        "--output",
        out.to_str().expect("utf8"),
    ]));
    assert!(fs::read(&out).expect("read") == data, "identical at site B");
    assert_eq!(
        code(&imprint(&[
            "-q", "store", "copy", "--store", sa, "web", "--to", sb
        ])),
        5,
        "exists"
    );
    assert_eq!(
        code(&imprint(&[
            "-q", "store", "copy", "--store", sa, "web", "--to", sa
        ])),
        2,
        "same store"
    );
    assert_eq!(
        code(&imprint(&[
            "-q", "store", "copy", "--store", sa, "nope", "--to", sb
        ])),
        3
    );
}

/// `imprint … | head`: a reader that stops reading is no failure (no
/// panic, exit 0), as for other Unix tools.
#[test]
fn a_closed_stdout_is_no_failure() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("store");
    let s = store.to_str().expect("utf8");
    let disk = tmp.path().join("vda.raw");
    make_disk(&disk, 8 << 20);
    let put = imprint(&[
        "-q",
        "store",
        "put",
        "--store",
        s,
        "--name",
        "base",
        disk.to_str().expect("utf8"),
    ]);
    assert_eq!(code(&put), 0, "{}", String::from_utf8_lossy(&put.stderr));
    // The read end is closed before imprint writes a byte.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args(["-o", "json", "store", "list", "--store", s])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run imprint");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(code(&out), 0, "{err}");
}
