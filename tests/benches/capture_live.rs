//! Live capture and incremental recapture, in one run against a real
//! libvirtd:
//!
//! ```text
//! cargo build --release -p imprint-agent -p imprint-cli
//! cargo bench -p imprint-tests --bench capture_live -- [--data-gib 16] [--random-mib 4096] [--change-mib 164]
//! ```
//!
//! Boots the Debian guest (qemu-guest-agent on its channel) with its 1 GiB
//! root disk and a qcow2 data disk of `--data-gib` GiB holding
//! `--random-mib` MiB of random bytes; the captures take the data disk
//! (the root disk is raw: read in full every time). Captures it live (the first capture:
//! everything read), lets the guest overwrite `--change-mib` MiB of the
//! data disk, captures it live again (incremental from the first one's
//! checkpoint), and, as the peer, captures it offline (ACPI shutdown and a
//! point-in-time view). From outside, `virsh domstate` is sampled every
//! 100 ms during each capture: the samples in which the guest was not
//! running are its downtime as a user sees it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use imprint_proto::v1 as pb;
use imprint_tests::*;

/// Sample the guest's state every 100 ms until stopped: (samples, not
/// running).
fn sampler(name: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u32, u32)> {
    std::thread::spawn(move || {
        let (total, off) = (AtomicU32::new(0), AtomicU32::new(0));
        while !stop.load(Ordering::Relaxed) {
            let out = std::process::Command::new("virsh")
                .args(["-c", "qemu:///system", "domstate", &name])
                .output()
                .expect("virsh");
            total.fetch_add(1, Ordering::Relaxed);
            if String::from_utf8_lossy(&out.stdout).trim() != "running" {
                off.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (total.into_inner(), off.into_inner())
    })
}

/// Capture; the result, the seconds the sampler saw the guest not running,
/// and the capture's wall-clock seconds.
async fn measured(
    f: &Fixture,
    name: &str,
    req: pb::CaptureRequest,
) -> (pb::CaptureResult, f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = sampler(name.to_string(), stop.clone());
    let start = std::time::Instant::now();
    let done = capture(&mut f.client().await, req).await;
    let wall = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (total, off) = s.join().expect("sampler");
    assert_succeeded(&done);
    assert!(total > 0);
    (done.capture.expect("result"), f64::from(off) * 0.1, wall)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut data_gib, mut random_mib, mut change_mib) = (16u64, 4096u64, 164u64);
    while let Some(a) = args.next() {
        let mut num = || args.next().and_then(|v| v.parse().ok()).expect("N");
        match a.as_str() {
            "--data-gib" => data_gib = num(),
            "--random-mib" => random_mib = num(),
            "--change-mib" => change_mib = num(),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let deb = debian_guest();
    let f = Fixture::new();
    let root = f.disk_in_pool_a(&deb.disk, "bench-vda.raw");
    let raw = f.wd.path().join("bench-vdb.raw");
    run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", raw.display()),
            "bs=1M",
            &format!("count={random_mib}"),
            "status=none",
        ],
    );
    let data = f.pool_a.dir.join("bench-vdb.qcow2");
    let data_s = data.to_str().expect("utf8");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            raw.to_str().expect("utf8"),
            data_s,
        ],
    );
    std::fs::remove_file(&raw).expect("rm");
    run(
        "qemu-img",
        &["resize", "-q", data_s, &format!("{data_gib}G")],
    );
    let name = format!("imp-{}-bench", f.tag);
    let log = f.wd.path().join("bench.log");
    let xml = with_guest_agent(&guest_xml(
        &name,
        (&deb.kernel, &deb.initrd),
        512,
        f.wd.path(),
        &[(&root, "raw"), (&data, "qcow2")],
        &log,
        free_udp_port(),
    ));
    let dom = Domain::define(&name, &xml, f.wd.path());
    dom.start();
    wait_for(&log, "IMPRINT-READY", 1, Duration::from_secs(300));
    wait_for_guest_agent(&name, Duration::from_secs(120));
    let req = |image: &str, mode: pb::CaptureMode| pb::CaptureRequest {
        operation_id: uuid::Uuid::new_v4().to_string(),
        guest: name.clone(),
        image_name: image.into(),
        mode: mode as i32,
        shutdown_timeout_seconds: 120,
        // The qcow2 data disk only: the raw root disk is read in full
        // every time (no bitmap for raw), which is not what is measured.
        exclude_disks: vec!["vda".into()],
        ..Default::default()
    };
    let disk_bytes = data_gib << 30;
    println!(
        "| capture | downtime seen (s) | frozen (s) | capture (s) | read (s) | read (MiB) | read / disk | reused (MiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let row = |what: &str, r: &pb::CaptureResult, seen: f64, wall: f64| {
        println!(
            "| {what} | {seen:.1} | {:.2} | {wall:.1} | {:.1} | {} | {:.2} % | {} |",
            r.freeze_seconds,
            r.read_seconds,
            r.bytes_read >> 20,
            100.0 * r.bytes_read as f64 / disk_bytes as f64,
            r.bytes_reused >> 20
        );
    };
    let (first, seen, first_wall) = measured(&f, &name, req("first", pb::CaptureMode::Live)).await;
    row("live, first (full read)", &first, seen, first_wall);
    assert_eq!(
        guest_exec(
            &name,
            &format!(
                "dd if=/dev/urandom of=/dev/vdb bs=1M seek=2048 count={change_mib} oflag=direct conv=fsync 2>/dev/null"
            ),
            Duration::from_secs(600)
        ),
        0
    );
    let (second, seen, second_wall) =
        measured(&f, &name, req("second", pb::CaptureMode::Live)).await;
    assert_eq!(second.incremental_parent, first.image_id, "{second:?}");
    row(
        &format!("live, after {change_mib} MiB changed (incremental)"),
        &second,
        seen,
        second_wall,
    );
    // The incremental image's SHA-256, computed from the store afterwards.
    let start = std::time::Instant::now();
    loop {
        let out = std::process::Command::new(binary("imprint"))
            .args(["-o", "json", "store", "show", "--store"])
            .arg(f.wd.path().join("store"))
            .arg(&second.image_id)
            .output()
            .expect("imprint");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        if doc["disk_sha256"]
            .as_array()
            .is_some_and(|d| d.iter().all(|s| s["state"] == "done"))
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(900), "{doc}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sha_after = start.elapsed().as_secs_f64();
    let (offline, seen, wall) = measured(&f, &name, req("offline", pb::CaptureMode::Offline)).await;
    row(
        &format!(
            "offline (shutdown {:.1} s + start {:.1} s), incremental",
            offline.shutdown_seconds, offline.boot_seconds
        ),
        &offline,
        seen,
        wall,
    );
    println!(
        "\nincremental / first: read {:.1} % of the disk's bytes, capture took {:.1} % of the first's time",
        100.0 * second.bytes_read as f64 / disk_bytes as f64,
        100.0 * second_wall / first_wall
    );
    println!(
        "incremental image's disk SHA-256 (from the store, in the background): done {sha_after:.1} s after the capture"
    );
}
