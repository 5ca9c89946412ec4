//! Incremental recaptures of a real guest on a qcow2 disk: each capture
//! leaves a libvirt checkpoint (a persistent dirty bitmap), the next one
//! reads only the blocks changed since and reuses the earlier image's
//! chunks for the rest; only the newest checkpoint is kept; a parent image
//! that was deleted means a full read that says why; the incremental image
//! deploys and boots with the right contents.

use std::{path::Path, time::Duration};

use imprint_proto::v1 as pb;
use imprint_tests::*;
use sha2::{Digest, Sha256};

const BOOT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

/// SHA-256 of `len` bytes of `file` from `offset`.
fn sha_of(file: &Path, offset: u64, len: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(file).expect("open");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.read_exact(&mut buf[..n]).expect("read");
        h.update(&buf[..n]);
        left -= n as u64;
    }
    hex::encode(h.finalize())
}

fn checkpoints(guest: &str) -> Vec<String> {
    virsh(&["checkpoint-list", guest, "--name"])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn recapture_of_a_qcow2_guest_reads_only_what_changed() {
    let f = Fixture::new();
    // The busybox guest on a 512 MiB qcow2 disk holding 256 MiB of random
    // bytes past its filesystem (which the guest never touches).
    let raw = f.wd.path().join("inc-src.raw");
    run(
        "cp",
        &[
            "--sparse=always",
            f.guest.disk.to_str().expect("utf8"),
            raw.to_str().expect("utf8"),
        ],
    );
    run("truncate", &["-s", "512M", raw.to_str().expect("utf8")]);
    run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", raw.display()),
            "bs=1M",
            "seek=128",
            "count=256",
            "conv=notrunc",
            "status=none",
        ],
    );
    let random_sha = sha_of(&raw, 128 * MIB, 256 * MIB);
    let disk = f.pool_a.dir.join("inc-vda.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            raw.to_str().expect("utf8"),
            disk.to_str().expect("utf8"),
        ],
    );
    let (_d, name, log) = f.boot_guest("inc", &[(&disk, "qcow2")]);
    let mut client = f.client().await;
    let capture_it = |image: &str| pb::CaptureRequest {
        operation_id: uuid::Uuid::new_v4().to_string(),
        guest: name.clone(),
        image_name: image.into(),
        shutdown_timeout_seconds: 60,
        ..Default::default()
    };

    // First capture: nothing to start from; a checkpoint is left.
    let done = capture(&mut client, capture_it("first")).await;
    assert_succeeded(&done);
    let first = done.capture.expect("result");
    eprintln!(
        "first: read {} MiB in {:.1} s; {}",
        first.bytes_read / MIB,
        first.read_seconds,
        first.full_read_reason
    );
    assert!(first.incremental_parent.is_empty(), "{first:?}");
    assert!(
        first.full_read_reason.contains("no checkpoint"),
        "{first:?}"
    );
    assert!(first.bytes_read >= 256 * MIB, "{first:?}");
    assert_eq!(checkpoints(&name), [format!("imprint-{}", first.image_id)]);
    wait_for(&log, "IMPRINT-READY", 2, BOOT);

    // Second capture: only what the guest wrote since (its boot counter,
    // logs) is read; the rest comes from the first image unread.
    let done = capture(&mut client, capture_it("second")).await;
    assert_succeeded(&done);
    let second = done.capture.expect("result");
    eprintln!(
        "second: read {} KiB in {:.1} s, reused {} MiB",
        second.bytes_read >> 10,
        second.read_seconds,
        second.bytes_reused / MIB
    );
    assert_eq!(second.incremental_parent, first.image_id, "{second:?}");
    assert!(second.full_read_reason.is_empty(), "{second:?}");
    assert!(
        second.bytes_read < 16 * MIB,
        "read only the changed blocks: {second:?}"
    );
    assert!(second.bytes_reused >= 256 * MIB, "{second:?}");
    assert_eq!(
        checkpoints(&name),
        [format!("imprint-{}", second.image_id)],
        "only the newest checkpoint is kept"
    );
    wait_for(&log, "IMPRINT-READY", 3, BOOT);

    // The guest's QEMU is killed (SIGKILL, a power cut for the disk): the
    // qcow2 bitmap was in use and is inconsistent now. The next capture says why it reads in full
    // and leaves a good checkpoint again.
    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid")).expect("pid file");
    run("kill", &["-KILL", pid.trim()]);
    let start = std::time::Instant::now();
    while virsh(&["domstate", &name]).trim() != "shut off" {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "QEMU killed, domain still up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    virsh(&["start", &name]);
    wait_for(&log, "IMPRINT-READY", 4, BOOT);
    let done = capture(&mut client, capture_it("after-crash")).await;
    assert_succeeded(&done);
    let after_crash = done.capture.expect("result");
    eprintln!(
        "after a power cut: read {} MiB; {}",
        after_crash.bytes_read / MIB,
        after_crash.full_read_reason
    );
    assert!(
        after_crash.incremental_parent.is_empty(),
        "no incremental read from an inconsistent bitmap: {after_crash:?}"
    );
    assert!(!after_crash.full_read_reason.is_empty(), "{after_crash:?}");
    assert!(after_crash.bytes_read >= 256 * MIB, "{after_crash:?}");
    assert_eq!(
        checkpoints(&name),
        [format!("imprint-{}", after_crash.image_id)]
    );
    wait_for(&log, "IMPRINT-READY", 5, BOOT);

    // The parent of a third capture is deleted: a full read, with the
    // reason.
    let out = std::process::Command::new(binary("imprint"))
        .args(["store", "delete", "--store"])
        .arg(f.wd.path().join("store"))
        .arg(&after_crash.image_id)
        .output()
        .expect("imprint");
    assert!(out.status.success(), "{out:?}");
    let done = capture(&mut client, capture_it("third")).await;
    assert_succeeded(&done);
    let third = done.capture.expect("result");
    assert!(third.incremental_parent.is_empty(), "{third:?}");
    assert!(third.full_read_reason.contains("is gone"), "{third:?}");
    assert!(third.bytes_read >= 256 * MIB, "{third:?}");
    wait_for(&log, "IMPRINT-READY", 6, BOOT);

    // A fourth, incremental from the third, deploys and boots: its boot
    // counter (a changed block, read) and the random bytes (unchanged,
    // reused) are the guest's.
    let done = capture(&mut client, capture_it("fourth")).await;
    assert_succeeded(&done);
    let fourth = done.capture.expect("result");
    assert_eq!(fourth.incremental_parent, third.image_id, "{fourth:?}");
    // Its disk's SHA-256 was not read during the capture: it is computed
    // from the stored image afterwards, and is the exported disk's.
    assert!(fourth.disks[0].sha256.is_empty(), "{fourth:?}");
    let store = f.wd.path().join("store");
    let start = std::time::Instant::now();
    let recorded = loop {
        let out = std::process::Command::new(binary("imprint"))
            .args(["-o", "json", "store", "show", "--store"])
            .arg(&store)
            .arg(&fourth.image_id)
            .output()
            .expect("imprint");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let s = &doc["disk_sha256"][0];
        if s["state"] == "done" {
            break s["sha256"].as_str().expect("hex").to_string();
        }
        assert_eq!(s["state"], "pending", "{doc}");
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "still pending: {doc}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let exported = f.wd.path().join("fourth.raw");
    let out = std::process::Command::new(binary("imprint"))
        .args(["store", "get", "--store"])
        .arg(&store)
        .arg("--output")
        .arg(&exported)
        .arg(&fourth.image_id)
        .output()
        .expect("imprint");
    assert!(out.status.success(), "{out:?}");
    let len = std::fs::metadata(&exported).expect("meta").len();
    assert_eq!(sha_of(&exported, 0, len), recorded);
    let clone = format!("imp-{}-inccopy", f.tag);
    let _c = Domain::adopt(&clone);
    let done = deploy(
        &mut client,
        pb::DeployRequest {
            keep_identity: true,
            operation_id: uuid::Uuid::new_v4().to_string(),
            image_id: fourth.image_id.clone(),
            guest_name: clone.clone(),
            start: true,
            ..Default::default()
        },
    )
    .await;
    assert_succeeded(&done);
    let vols = done.deploy.expect("deploy").volumes;
    let clone_log = wait_for(
        &f.consoles.join(format!("{clone}.log")),
        "IMPRINT-READY",
        1,
        BOOT,
    );
    // Captured after the source's sixth boot; the clone's is the seventh.
    assert_eq!(
        last_value(&clone_log, "IMPRINT-BOOT").as_deref(),
        Some("count=7")
    );
    assert_eq!(
        sha_of(Path::new(&vols[0]), 128 * MIB, 256 * MIB),
        random_sha,
        "the reused chunks hold the guest's bytes"
    );
}
