//! Image lint on real images, read by libguestfs through the agent's NBD
//! export, never booted: the Debian test guest as a clean template (no
//! error), without cloud-init, with cloud-init disabled and with an fstab
//! naming `/dev/vda` (each problem named, with its fix), and the busybox
//! guest's disk, which holds no operating system ("unknown", with the
//! reason). A sealed capture of the clean template stores it generalized
//! (no identity left to find), its source untouched; sealing a disk with
//! no operating system fails as a precondition.

use std::path::Path;

use imprint_proto::v1 as pb;
use imprint_tests::*;

/// Edit the ext4 filesystem of `disk` offline (e2fsprogs' debugfs).
fn debugfs(disk: &Path, request: &str) {
    run(
        "debugfs",
        &["-w", "-R", request, disk.to_str().expect("utf8")],
    );
}

async fn lint(
    client: &mut imprint_proto::v1::agent_service_client::AgentServiceClient<
        tonic::transport::Channel,
    >,
    image_id: &str,
) -> String {
    client
        .lint_image(pb::LintImageRequest {
            operation_id: uuid::Uuid::new_v4().to_string(),
            image_id: image_id.into(),
            ..Default::default()
        })
        .await
        .expect("lint accepted")
        .into_inner()
        .operation_id
}

fn codes(r: &pb::LintReport, severity: pb::LintSeverity) -> Vec<String> {
    r.findings
        .iter()
        .filter(|f| f.severity == severity as i32)
        .map(|f| f.code.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn lint_names_what_a_template_lacks_without_booting_it() {
    let deb = debian_guest();
    let f = Fixture::new();
    let uuid = run(
        "blkid",
        &[
            "-o",
            "value",
            "-s",
            "UUID",
            deb.disk.to_str().expect("utf8"),
        ],
    );
    let fstab = f.wd.path().join("fstab");
    std::fs::write(
        &fstab,
        format!("UUID={} / ext4 rw,errors=remount-ro 0 0\n", uuid.trim()),
    )
    .expect("fstab");
    let empty = f.wd.path().join("empty");
    std::fs::write(&empty, b"").expect("empty");

    // The clean template: its root named by UUID.
    let clean = f.disk_in_pool_a(&deb.disk, "clean.raw");
    debugfs(&clean, "rm /etc/fstab");
    debugfs(&clean, &format!("write {} /etc/fstab", fstab.display()));
    let no_ci = f.disk_in_pool_a(&clean, "no-ci.raw");
    debugfs(&no_ci, "rm /usr/bin/cloud-init");
    let ci_off = f.disk_in_pool_a(&clean, "ci-off.raw");
    debugfs(
        &ci_off,
        &format!("write {} /etc/cloud/cloud-init.disabled", empty.display()),
    );
    // As built: fstab names /dev/vda.
    let by_name = f.disk_in_pool_a(&deb.disk, "by-name.raw");
    let busybox = f.disk_in_pool_a(&f.guest.disk, "busybox.raw");

    let clean_before = run("sha256sum", &[clean.to_str().expect("utf8")]);
    let sealed = f
        .capture_disk_as(
            "sealed",
            &clean,
            pb::CaptureRequest {
                seal: true,
                ..Default::default()
            },
        )
        .await;
    assert_succeeded(&sealed);
    let sealed = sealed.capture.expect("result");
    assert!(sealed.sealed && sealed.seal_seconds > 0.0, "{sealed:?}");
    assert_eq!(
        run("sha256sum", &[clean.to_str().expect("utf8")]),
        clean_before,
        "sealing never modifies the source"
    );
    let unsealable = f
        .capture_disk_as(
            "busybox-sealed",
            &busybox,
            pb::CaptureRequest {
                seal: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        unsealable.error_code,
        tonic::Code::FailedPrecondition as i32,
        "{unsealable:?}"
    );
    assert!(
        unsealable.error.contains("no operating system"),
        "{}",
        unsealable.error
    );

    let mut images = Vec::new();
    for (name, disk) in [
        ("clean", &clean),
        ("noci", &no_ci),
        ("cioff", &ci_off),
        ("byname", &by_name),
        ("busybox", &busybox),
    ] {
        images.push(f.capture_disk(name, disk).await);
    }
    let mut client = f.client().await;
    images.push(sealed.image_id);
    let mut ops = Vec::new();
    for id in &images {
        ops.push(lint(&mut client, id).await);
    }
    let mut reports = Vec::new();
    for op in &ops {
        let done = watch(&mut client, op).await;
        assert_succeeded(&done);
        reports.push(done.lint.expect("a report"));
    }

    let clean = &reports[0];
    let os = clean.os.as_ref().expect("an OS");
    assert_eq!((os.kind.as_str(), os.distro.as_str()), ("linux", "debian"));
    assert!(
        codes(clean, pb::LintSeverity::Error).is_empty(),
        "a clean template has no error: {clean:?}"
    );
    assert!(
        codes(clean, pb::LintSeverity::Info).contains(&"identity-present".to_string()),
        "{clean:?}"
    );
    assert_eq!(
        codes(&reports[1], pb::LintSeverity::Error),
        ["cloud-init-missing"],
        "{:?}",
        reports[1]
    );
    assert_eq!(
        codes(&reports[2], pb::LintSeverity::Error),
        ["cloud-init-disabled"],
        "{:?}",
        reports[2]
    );
    let by_name = &reports[3];
    assert!(
        codes(by_name, pb::LintSeverity::Error).is_empty(),
        "{by_name:?}"
    );
    let fstab = by_name
        .findings
        .iter()
        .find(|f| f.code == "fstab-device-name")
        .expect("the fstab finding");
    assert!(fstab.message.contains("/dev/vda"), "{fstab:?}");
    assert!(fstab.fix.contains("UUID="), "{fstab:?}");
    let unknown = &reports[4];
    assert!(unknown.os.is_none(), "{unknown:?}");
    assert_eq!(
        codes(unknown, pb::LintSeverity::Error),
        ["os-unknown"],
        "{unknown:?}"
    );
    let sealed = &reports[5];
    assert!(
        codes(sealed, pb::LintSeverity::Error).is_empty(),
        "{sealed:?}"
    );
    assert!(
        sealed.findings.iter().all(|f| f.code != "identity-present"),
        "a sealed image carries no identity: {sealed:?}"
    );
    for r in &reports {
        assert!(
            r.findings
                .iter()
                .all(|f| !f.message.is_empty() && !f.fix.is_empty())
        );
    }
}
