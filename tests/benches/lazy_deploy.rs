//! Lazy against full deploys, in one run against a real libvirtd:
//!
//! ```text
//! cargo build --release -p imprint-agent
//! cargo bench -p imprint-tests --bench lazy_deploy -- [--big-gib 16] [--random-mib 4096] [--runs 3]
//! ```
//!
//! Two images of the busybox guest: its 1 GiB "slow" disk (768 MiB of
//! random bytes past its filesystem), and a disk of `--big-gib` GiB with
//! `--random-mib` MiB of random bytes. Each is deployed twice on the same
//! agent onto raw volumes, fully (written before the guest starts) and
//! lazily (the guest starts on overlays reading the agent's NBD export;
//! its volumes are filled while it runs). Per
//! deploy, from the DeployImage call: until libvirt reports the guest
//! `running` (`virsh domstate`, polled every 50 ms: the measurement), until
//! its first console line, and until the operation succeeds; and the
//! write (or fill) speed of the image's data. Medians of `--runs` runs.

use std::time::{Duration, Instant};

use imprint_proto::v1 as pb;
use imprint_tests::*;

/// Capture a shut-off busybox guest on `disk`, timed.
async fn image(f: &Fixture, suffix: &str, disk: &std::path::Path) -> String {
    let t = Instant::now();
    let id = f.capture_disk(suffix, disk).await;
    eprintln!("captured {suffix} in {:.1} s", t.elapsed().as_secs_f64());
    id
}

#[derive(Debug)]
struct Timing {
    running: f64,
    console: f64,
    complete: f64,
    data_mib_s: f64,
}

async fn deploy(f: &Fixture, image_id: &str, guest: &str, lazy: bool) -> Timing {
    let mut client = f.client().await;
    let log = f.consoles.join(format!("{guest}.log"));
    let _ = std::fs::remove_file(&log);
    let t = Instant::now();
    let op = client
        .deploy(pb::DeployRequest {
            keep_identity: true,
            operation_id: uuid::Uuid::new_v4().to_string(),
            image_id: image_id.into(),
            guest_name: guest.into(),
            disk_format: pb::DiskFormat::Raw as i32,
            start: true,
            lazy,
            ..Default::default()
        })
        .await
        .expect("deploy accepted")
        .into_inner();
    // The operation's end, seen as it happens.
    let watcher = {
        let mut client = f.client().await;
        let id = op.operation_id.clone();
        tokio::spawn(async move {
            let done = watch(&mut client, &id).await;
            (done, t.elapsed().as_secs_f64())
        })
    };
    let running = loop {
        let out = std::process::Command::new("virsh")
            .args(["-c", "qemu:///system", "domstate", guest])
            .output()
            .expect("virsh");
        if String::from_utf8_lossy(&out.stdout).trim() == "running" {
            break t.elapsed().as_secs_f64();
        }
        assert!(t.elapsed() < Duration::from_secs(1800), "never running");
        std::thread::sleep(Duration::from_millis(50));
    };
    let console = loop {
        if std::fs::read_to_string(&log).is_ok_and(|s| s.contains("IMPRINT-BOOT")) {
            break t.elapsed().as_secs_f64();
        }
        assert!(t.elapsed() < Duration::from_secs(1800), "no console line");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (done, complete) = watcher.await.expect("watcher");
    assert_succeeded(&done);
    let d = done.deploy.expect("result");
    let data_mib_s = if lazy {
        d.bytes_written as f64 / f64::from(1 << 20) / (complete - running)
    } else {
        d.bytes_written as f64 / f64::from(1 << 20) / d.write_seconds
    };
    Timing {
        running,
        console,
        complete,
        data_mib_s,
    }
}

#[tokio::main]
async fn main() {
    let big_gib = bench_arg("--big-gib", 16);
    let random_mib = bench_arg("--random-mib", 4096);
    let runs = bench_arg("--runs", 3);
    let f = Fixture::new();
    let small_disk = f.slow_disk_in_pool_a("small-vda.raw");
    let small = image(&f, "small", &small_disk).await;
    let big_disk = f.disk_in_pool_a(&f.guest.disk, "big-vda.raw");
    run(
        "truncate",
        &[
            "-s",
            &format!("{big_gib}G"),
            big_disk.to_str().expect("utf8"),
        ],
    );
    run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", big_disk.display()),
            "bs=1M",
            "seek=128",
            &format!("count={random_mib}"),
            "conv=notrunc",
            "status=none",
        ],
    );
    let big = image(&f, "big", &big_disk).await;
    std::fs::remove_file(&big_disk).expect("free the source disk");
    println!(
        "image                     | deploy | running s | console s | complete s | data MiB/s"
    );
    println!(
        "--------------------------|--------|-----------|-----------|------------|-----------"
    );
    for (what, id) in [
        ("1 GiB (768 MiB data)".to_string(), &small),
        (format!("{big_gib} GiB ({random_mib} MiB data)"), &big),
    ] {
        for lazy in [false, true] {
            let mut all = Vec::new();
            for _ in 0..runs {
                all.push(once(&f, id, lazy).await);
            }
            let median = |key: fn(&Timing) -> f64| {
                let mut v: Vec<f64> = all.iter().map(key).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let t = Timing {
                running: median(|t| t.running),
                console: median(|t| t.console),
                complete: median(|t| t.complete),
                data_mib_s: median(|t| t.data_mib_s),
            };
            println!(
                "{what:<26}| {:<6} | {:>9.2} | {:>9.2} | {:>10.2} | {:>9.0}",
                if lazy { "lazy" } else { "full" },
                t.running,
                t.console,
                t.complete,
                t.data_mib_s
            );
        }
    }
}

/// One deploy, then its guest and volumes removed.
async fn once(f: &Fixture, id: &str, lazy: bool) -> Timing {
    let guest = format!("imp-{}-{}", f.tag, uuid::Uuid::new_v4().simple());
    let dom = Domain::adopt(&guest);
    let t = deploy(f, id, &guest, lazy).await;
    drop(dom);
    for e in std::fs::read_dir(&f.pool_b.dir).expect("pool").flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    virsh_quiet(&["pool-refresh", &f.pool_b.name]);
    t
}
