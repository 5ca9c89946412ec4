//! The agent on an S3 store: a real QEMU guest captured into a bucket of a
//! real S3 server (s3s-fs on 127.0.0.1) and deployed back from it, and the
//! CLI reading and checking that store. The directory-store twin of this
//! test is `agent_e2e::capture_running_guest_and_deploy_copy_with_static_ip`.

use std::{process::Command, time::Duration};

use imprint_proto::v1 as pb;
use imprint_store::s3_server::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use imprint_tests::*;

const BOOT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn capture_to_s3_and_deploy_from_it() {
    let s3 = S3Server::start();
    let url = format!("s3://{BUCKET}/site-a");
    let env = [
        ("AWS_ENDPOINT_URL", s3.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
    ];
    let f = Fixture::on_store(&url, &env);
    let disk = f.disk_in_pool_a(&f.guest.disk, "a-vda.raw");
    let (a, name_a, log_a) = f.boot_guest("a", &[(&disk, "raw")]);
    let log = std::fs::read_to_string(&log_a).expect("log");
    let marker_a = last_value(&log, "IMPRINT-MARKER").expect("guest A prints its marker");
    let mut client = f.client().await;

    let done = capture(
        &mut client,
        pb::CaptureRequest {
            operation_id: uuid::Uuid::new_v4().to_string(),
            guest: name_a.clone(),
            image_name: "from-s3".into(),
            shutdown_timeout_seconds: 90,
            ..Default::default()
        },
    )
    .await;
    assert_succeeded(&done);
    let r = done.capture.expect("capture result");
    assert_eq!(r.final_power_state, pb::PowerState::Running as i32);
    wait_for(&log_a, "IMPRINT-READY", 2, BOOT);
    assert_eq!(a.state(), "running");
    // The image is in the bucket: its manifest is an object there.
    let manifest = s3
        .store_dir("site-a")
        .join("images")
        .join(&r.image_id)
        .join("manifest");
    assert!(manifest.is_file(), "{} is stored", manifest.display());

    let name_b = format!("imp-{}-b", f.tag);
    let _b = Domain::adopt(&name_b);
    let done = deploy(
        &mut client,
        pb::DeployRequest {
            keep_identity: true,
            operation_id: uuid::Uuid::new_v4().to_string(),
            image_id: r.image_id.clone(),
            guest_name: name_b.clone(),
            disk_sizes_bytes: vec![96 << 20],
            start: true,
            ..Default::default()
        },
    )
    .await;
    assert_succeeded(&done);
    let log_b = f.consoles.join(format!("{name_b}.log"));
    let log = wait_for(&log_b, "IMPRINT-READY", 1, BOOT);
    assert_eq!(
        last_value(&log, "IMPRINT-MARKER"),
        Some(marker_a),
        "B has A's data, read back from S3"
    );

    // The CLI reads the same store, and every chunk checks out.
    let cli = |args: &[&str]| {
        let out = Command::new(binary("imprint"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .output()
            .expect("run imprint");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&["-o", "json", "store", "list", "--store", &url]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&r.image_id), "{out}");
    let (code, _, err) = cli(&["store", "verify", "--store", &url]);
    assert_eq!(code, Some(0), "{err}");
    // A bucket that does not exist: exit code 3 (not found), named.
    let (code, _, err) = cli(&["store", "list", "--store", "s3://no-such-bucket/x"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("no-such-bucket"), "{err}");
}
