//! Two sites on a real libvirtd: site `default` keeps its images in a
//! directory, site `dc2` in a bucket of a real S3 server (s3s-fs). One
//! agent (host) per site, one daemon. A guest captured at `default` is
//! copied to `dc2` through the daemon's API (only the chunks `dc2` lacks
//! cross; a second copy after a recapture sends a fraction), deployed at
//! `dc2` from its own store, the `default` copy dropped, and deployed back
//! at `default` reading from `dc2`.

use std::time::Duration;

use imprint_proto::v1 as pb;
use imprint_store::s3_server::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use imprint_tests::{
    daemon_api::{Api, api, registered},
    *,
};

const BOOT: Duration = Duration::from_secs(120);

async fn done(api: &mut Api, op: pb::Operation) -> pb::Operation {
    let (end, _) = api.wait(&op.id).await;
    assert_eq!(
        end.state,
        pb::OperationState::Succeeded as i32,
        "{} {}: {}",
        end.kind,
        end.id,
        end.error
    );
    end
}

async fn locations(api: &mut Api, id: &str) -> Vec<(String, i32)> {
    api.image(id)
        .await
        .expect("image")
        .locations
        .into_iter()
        .map(|l| (l.site, l.state))
        .collect()
}

async fn capture(api: &mut Api, host: &str, guest: &str, name: &str) -> pb::Operation {
    let op = api.capture(host, guest, name, "").await.expect("capture");
    done(api, op).await
}

async fn copy(api: &mut Api, image: &str, site: &str) -> pb::CopyResult {
    let op = api
        .images
        .copy_image(pb::CopyImageRequest {
            image_id: image.into(),
            site: site.into(),
            ..Default::default()
        })
        .await
        .expect("copy")
        .into_inner();
    done(api, op).await.copy.expect("copy result")
}

async fn deploy(api: &mut Api, f: &Fixture, host: &str, image: &str, name: &str) -> String {
    let op = api
        .images
        .deploy_image(pb::DeployImageRequest {
            keep_identity: true,
            image_id: image.into(),
            host: host.into(),
            guest_name: name.into(),
            start: true,
            ..Default::default()
        })
        .await
        .expect("deploy")
        .into_inner();
    done(api, op).await;
    wait_for(
        &f.consoles.join(format!("{name}.log")),
        "IMPRINT-READY",
        1,
        BOOT,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_between_sites_and_deploy_from_the_nearest() {
    let s3 = S3Server::start();
    let env = [
        ("AWS_ENDPOINT_URL", s3.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ];
    let dc2 = format!("s3://{BUCKET}/dc2");
    let wd1 = Workdir::new("imprint-sites-1-");
    let store1 = wd1.path().join("store");
    let daemon = DaemonProcess::start_with_env(
        &wd1.path().join("imprintd"),
        &store1,
        &["--site", &format!("dc2={dc2}")],
        &env,
    );
    let ep = daemon.endpoint();
    let (h1, mut h2) = (daemon.agent_args("host-1"), daemon.agent_args("host-2"));
    h2.extend(["--site".into(), "dc2".into()]);
    let (h1, h2): (Vec<&str>, Vec<&str>) = (
        h1.iter().map(String::as_str).collect(),
        h2.iter().map(String::as_str).collect(),
    );
    let f1 = Fixture::on_store_with(wd1, store1.to_str().expect("utf8"), &env, &h1);
    let f2 = Fixture::on_store_with(Workdir::new("imprint-sites-2-"), &dc2, &env, &h2);
    let alice = daemon.account("alice");
    registered(&ep, "host-1", &alice).await;
    registered(&ep, "host-2", &alice).await;
    let mut a = api(&ep, &alice);
    let sites = a
        .images
        .list_sites(pb::ListSitesRequest {})
        .await
        .expect("sites")
        .into_inner()
        .sites;
    let names: Vec<(&str, u32)> = sites.iter().map(|s| (s.name.as_str(), s.hosts)).collect();
    assert_eq!(names, [("dc2", 1), ("default", 1)]);

    let disk = f1.disk_in_pool_a(&f1.guest.disk, "a-vda.raw");
    let (_g, guest, log) = f1.boot_guest("a", &[(&disk, "raw")]);
    daemon.assign_guest("host-1", &guest, "alice").await;
    let marker = last_value(
        &std::fs::read_to_string(&log).expect("log"),
        "IMPRINT-MARKER",
    )
    .expect("marker");
    let v1 = capture(&mut a, "host-1", &guest, "v1").await.image_id;
    let available = pb::LocationState::Available as i32;
    assert_eq!(
        locations(&mut a, &v1).await,
        [("default".to_string(), available)]
    );

    // Bad copies: unknown site, a site it is at.
    for (site, code) in [
        ("nowhere", tonic::Code::NotFound),
        ("default", tonic::Code::AlreadyExists),
        ("Bad Name", tonic::Code::InvalidArgument),
    ] {
        let e = a
            .images
            .copy_image(pb::CopyImageRequest {
                image_id: v1.clone(),
                site: site.into(),
                ..Default::default()
            })
            .await
            .expect_err(site);
        assert_eq!(e.code(), code, "{site}: {e}");
    }

    let first = copy(&mut a, &v1, "dc2").await;
    eprintln!("first copy: {first:?}");
    assert_eq!(first.chunks_sent, first.chunks_total, "dc2 had nothing");
    assert!(first.bytes_verified > 0, "checked at the target");
    assert_eq!(
        locations(&mut a, &v1).await,
        [
            ("dc2".to_string(), available),
            ("default".to_string(), available)
        ]
    );

    // The guest runs on; a recapture changes little, so the copy of v2
    // sends a fraction of what the first copy sent.
    wait_for(&log, "IMPRINT-READY", 2, BOOT);
    let v2 = capture(&mut a, "host-1", &guest, "v2").await.image_id;
    let second = copy(&mut a, &v2, "dc2").await;
    eprintln!(
        "second copy: sent {} of {} chunks, {} bytes ({:.1} % of the first copy's bytes)",
        second.chunks_sent,
        second.chunks_total,
        second.bytes_sent,
        100.0 * second.bytes_sent as f64 / first.bytes_sent as f64
    );
    assert!(second.chunks_present > 0, "{second:?}");
    assert!(
        second.bytes_sent * 4 < first.bytes_sent,
        "only what dc2 lacks: {second:?} vs {first:?}"
    );

    // Deploy at dc2: read from dc2's own store.
    let b = format!("imp-{}-b", f2.tag);
    let _b = Domain::adopt(&b);
    let console = deploy(&mut a, &f2, "host-2", &v1, &b).await;
    assert_eq!(last_value(&console, "IMPRINT-MARKER"), Some(marker.clone()));

    // Drop the copy at default; a deploy at default now reads from dc2.
    let img = a
        .images
        .remove_image_location(pb::RemoveImageLocationRequest {
            image_id: v1.clone(),
            site: "default".into(),
        })
        .await
        .expect("remove default copy")
        .into_inner();
    assert_eq!(img.locations.len(), 1);
    assert!(
        !store1.join("images").join(&v1).join("manifest").exists(),
        "the manifest left the default store"
    );
    let e = a
        .images
        .remove_image_location(pb::RemoveImageLocationRequest {
            image_id: v1.clone(),
            site: "dc2".into(),
        })
        .await
        .expect_err("the last copy");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    // The CLI shows the same: sites with their hosts, where v1 is.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(binary("imprint"))
            .args(["-o", "json"])
            .args(args)
            .env("IMPRINT_ENDPOINT", &ep)
            .env("IMPRINT_TOKEN", &alice)
            .env_remove("IMPRINT_CONFIG")
            .output()
            .expect("run imprint");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let sites = cli(&["host", "sites"]);
    assert_eq!(sites["sites"][0]["name"], "dc2");
    assert_eq!(sites["sites"][0]["store"], dc2.as_str());
    let shown = cli(&["image", "show", &v1]);
    assert_eq!(
        shown["locations"],
        serde_json::json!([{"site": "dc2", "state": "available"}])
    );

    let c = format!("imp-{}-c", f1.tag);
    let _c = Domain::adopt(&c);
    let console = deploy(&mut a, &f1, "host-1", &v1, &c).await;
    assert_eq!(
        last_value(&console, "IMPRINT-MARKER"),
        Some(marker),
        "deployed at default from dc2's store"
    );
}
