//! What a fresh identity adds to a deploy, in one run against a real
//! libvirtd:
//!
//! ```text
//! cargo build --release -p imprint-agent
//! cargo bench -p imprint-tests --bench fresh_identity -- [--runs 3]
//! ```
//!
//! The Debian test guest's disk (1 GiB, ~430 MiB allocated) captured
//! twice from the same shut-off guest: as it is, and sealed (generalized
//! at capture; its seal time is printed). Then deployed, not started, onto
//! raw volumes three ways: the plain image keeping its identity (the
//! peer: no generalization), the plain image with a fresh identity
//! (virt-sysprep on the new volume), and the sealed image (a fresh
//! identity without generalizing: the image has none). Per deploy, from
//! the Deploy call until the operation succeeds, and the agent's own
//! generalization seconds. Medians of `--runs` runs.

use std::time::Instant;

use imprint_proto::v1 as pb;
use imprint_tests::*;

/// One deploy, timed; then its guest and volumes removed.
async fn once(f: &Fixture, image_id: &str, keep_identity: bool) -> (f64, f64) {
    let guest = format!("imp-{}-{}", f.tag, uuid::Uuid::new_v4().simple());
    let dom = Domain::adopt(&guest);
    let mut client = f.client().await;
    let t = Instant::now();
    let op = client
        .deploy(pb::DeployRequest {
            keep_identity,
            operation_id: uuid::Uuid::new_v4().to_string(),
            image_id: image_id.into(),
            guest_name: guest.clone(),
            disk_format: pb::DiskFormat::Raw as i32,
            ..Default::default()
        })
        .await
        .expect("deploy accepted")
        .into_inner();
    let done = watch(&mut client, &op.operation_id).await;
    let total = t.elapsed().as_secs_f64();
    assert_succeeded(&done);
    let generalize = done.deploy.expect("result").generalize_seconds;
    drop(dom);
    for e in std::fs::read_dir(&f.pool_b.dir).expect("pool").flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    virsh_quiet(&["pool-refresh", &f.pool_b.name]);
    (total, generalize)
}

#[tokio::main]
async fn main() {
    let runs = bench_arg("--runs", 3);
    let deb = debian_guest();
    let f = Fixture::new();
    let disk = f.disk_in_pool_a(&deb.disk, "deb-vda.raw");
    let mut images = Vec::new();
    for (suffix, seal) in [("plain", false), ("sealed", true)] {
        let t = Instant::now();
        let done = f
            .capture_disk_as(
                suffix,
                &disk,
                pb::CaptureRequest {
                    seal,
                    ..Default::default()
                },
            )
            .await;
        assert_succeeded(&done);
        let c = done.capture.expect("result");
        println!(
            "capture {suffix:<6}: {:.1} s (seal {:.1} s, read {:.1} s)",
            t.elapsed().as_secs_f64(),
            c.seal_seconds,
            c.read_seconds
        );
        images.push(c.image_id);
    }
    println!();
    println!("deploy (not started)                 | total s | generalize s");
    println!("-------------------------------------|---------|-------------");
    for (what, id, keep) in [
        ("plain image, identity kept (peer)", &images[0], true),
        ("plain image, fresh identity", &images[0], false),
        ("sealed image, fresh identity", &images[1], false),
    ] {
        let mut all = Vec::new();
        for _ in 0..runs {
            all.push(once(&f, id, keep).await);
        }
        let median = |key: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = all.iter().map(key).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{what:<37}| {:>7.2} | {:>12.2}",
            median(|t| t.0),
            median(|t| t.1)
        );
    }
}
