//! Downtime of a capture of a running guest, by disk size, with the
//! point-in-time read (the default) against the offline read
//! (`--offline-read`), in one run against a real libvirtd:
//!
//! ```text
//! cargo build --release -p imprint-agent -p imprint-cli
//! cargo bench -p imprint-tests --bench capture_downtime -- [--big-gib 16] [--big-data-mib 4096]
//! ```
//!
//! Boots a busybox guest on a small disk (1 GiB, the guest's data) and one
//! on a big disk (`--big-gib` GiB holding `--big-data-mib` MiB of random
//! data more), captures each while it runs with both agents' settings, and
//! prints the phases: the downtime (shutdown + start, plus the read when
//! offline) and the read.

use imprint_proto::v1 as pb;
use imprint_tests::*;

async fn one(f: &Fixture, disk_gib: u64, data_mib: u64, label: &str) -> pb::CaptureResult {
    let disk = f.pool_a.dir.join(format!("{label}-vda.raw"));
    run(
        "cp",
        &[
            "--sparse=always",
            f.guest.disk.to_str().expect("utf8"),
            disk.to_str().expect("utf8"),
        ],
    );
    run(
        "truncate",
        &["-s", &format!("{disk_gib}G"), disk.to_str().expect("utf8")],
    );
    if data_mib > 0 {
        run(
            "dd",
            &[
                "if=/dev/urandom",
                &format!("of={}", disk.display()),
                "bs=1M",
                "seek=1024",
                &format!("count={data_mib}"),
                "conv=notrunc",
                "status=none",
            ],
        );
    }
    let (_d, name, _log) = f.boot_guest(label, &[(&disk, "raw")]);
    let done = capture(
        &mut f.client().await,
        pb::CaptureRequest {
            guest: name,
            image_name: label.into(),
            shutdown_timeout_seconds: 120,
            ..Default::default()
        },
    )
    .await;
    assert_succeeded(&done);
    let _ = std::fs::remove_file(&disk);
    done.capture.expect("result")
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut big_gib, mut big_data) = (16u64, 4096u64);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--big-gib" => big_gib = args.next().and_then(|v| v.parse().ok()).expect("N"),
            "--big-data-mib" => big_data = args.next().and_then(|v| v.parse().ok()).expect("N"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    println!("| read | disk | shutdown | start | downtime | read (s) | read while running |");
    println!("|---|---|---:|---:|---:|---:|---|");
    for (mode, agent_args) in [
        ("point-in-time", Vec::<&str>::new()),
        ("offline", vec!["--offline-read"]),
    ] {
        let f = Fixture::with_agent_args(&agent_args);
        for (label, gib, data) in [("small", 1, 0), ("big", big_gib, big_data)] {
            let r = one(&f, gib, data, &format!("{label}-{}", &mode[..3])).await;
            println!(
                "| {mode} | {gib} GiB, {} MiB data | {:.1} | {:.1} | **{:.1}** | {:.1} | {} |",
                r.bytes_read >> 20,
                r.shutdown_seconds,
                r.boot_seconds,
                r.downtime_seconds,
                r.read_seconds,
                r.point_in_time
            );
        }
    }
}
