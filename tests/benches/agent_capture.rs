//! Agent memory and downtime on a large sparse disk, against a real
//! libvirtd:
//!
//! ```text
//! cargo build --release -p imprint-agent -p imprint-cli
//! cargo bench -p imprint-tests --bench agent_capture -- [--gib 16] [--data-mib 1024]
//! ```
//!
//! Defines a (shut-off) busybox guest whose disk is a sparse file of
//! `--gib` GiB holding `--data-mib` MiB of the guest's data copied to
//! places across it, captures it through a release-built `imprint-agent`,
//! and prints the agent's peak RSS (VmHWM) and the phase durations.

use std::time::Instant;

use imprint_proto::v1 as pb;
use imprint_tests::*;

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut gib, mut data_mib) = (16u64, 1024u64);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--gib" => gib = args.next().and_then(|v| v.parse().ok()).expect("--gib N"),
            "--data-mib" => {
                data_mib = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--data-mib N")
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let f = Fixture::new();
    let disk = f.pool_a.dir.join("big-vda.raw");
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
        &["-s", &format!("{gib}G"), disk.to_str().expect("utf8")],
    );
    // Spread data: 8 places, random (incompressible) so it is really stored.
    let per = data_mib / 8;
    for k in 1..=8u64 {
        let seek_mib = k * (gib << 10) / 9;
        run(
            "dd",
            &[
                "if=/dev/urandom",
                &format!("of={}", disk.display()),
                "bs=1M",
                &format!("seek={seek_mib}"),
                &format!("count={per}"),
                "conv=notrunc",
                "status=none",
            ],
        );
    }
    let name = format!("imp-{}-big", f.tag);
    let log = f.wd.path().join("big.log");
    let xml = busybox_xml(
        &name,
        &f.guest,
        f.wd.path(),
        &[(&disk, "raw")],
        &log,
        free_udp_port(),
    );
    let _d = Domain::define(&name, &xml, f.wd.path());
    let pid = f.agent.child.id();
    let mut client = f.client().await;
    let before = vm_hwm_kib(pid);
    let t = Instant::now();
    let done = capture(
        &mut client,
        pb::CaptureRequest {
            guest: name,
            image_name: "big".into(),
            shutdown_timeout_seconds: 60,
            ..Default::default()
        },
    )
    .await;
    let wall = t.elapsed().as_secs_f64();
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let r = done.capture.expect("result");
    let hwm = vm_hwm_kib(pid);
    println!("| figure | value |");
    println!("|---|---:|");
    println!("| disk size | {gib} GiB |");
    println!("| data | {data_mib} MiB (random) |");
    println!(
        "| agent peak RSS (VmHWM) before / after capture | {:.0} / {:.0} MiB |",
        before as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!("| capture wall (request to done) | {wall:.1} s |");
    println!("| read phase | {:.1} s |", r.read_seconds);
    println!(
        "| bytes read / stored | {} / {} MiB |",
        r.bytes_read >> 20,
        r.bytes_stored >> 20
    );
    println!(
        "| zero bytes skipped | {} MiB |",
        r.zero_bytes_skipped >> 20
    );
    println!(
        "| agent build | {} |",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
}
