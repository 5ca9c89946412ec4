//! Sealed captures through the daemon: the image is marked sealed, and its
//! deploys get a fresh identity without generalizing (the image has none
//! left); a disk with no operating system cannot be sealed. libguestfs
//! really reads the world's guest disk, given here a skeleton Debian root
//! filesystem (enough for its inspection).

use std::path::Path;

use imprint_proto::v1 as pb;

use super::world::{Caller::As, World, on_each_backend};

/// Make the guest's disk an ext4 filesystem holding what libguestfs's
/// inspection needs to see Debian, and an identity.
fn skeleton_debian(disk: &Path, dir: &Path) {
    let root = dir.join("skeleton");
    for (path, text) in [
        (
            "etc/os-release",
            "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
        ),
        ("etc/debian_version", "12.5\n"),
        ("etc/fstab", "/dev/vda / ext4 defaults 0 1\n"),
        ("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
        ("etc/ssh/ssh_host_ed25519_key", "not a key\n"),
        ("var/lib/dpkg/status", ""),
        ("bin/.keep", ""),
        ("usr/bin/.keep", ""),
    ] {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
        std::fs::write(&p, text).expect("file");
    }
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(disk)
        .output()
        .expect("mkfs.ext4");
    assert!(out.status.success(), "{out:?}");
}

async fn capture_sealed(w: &World, name: &str) -> pb::Operation {
    let op = w
        .images
        .clone()
        .capture_image(w.req(
            As("alice"),
            pb::CaptureImageRequest {
                host: "h1".into(),
                guest: "a".into(),
                name: name.into(),
                seal: true,
                ..Default::default()
            },
        ))
        .await
        .expect("capture accepted")
        .into_inner();
    w.wait(As("alice"), &op).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_images_are_marked_and_deploy_without_generalizing() {
    on_each_backend(|w| async move {
        // No operating system on the disk: nothing to seal.
        let done = capture_sealed(&w, "no-os").await;
        assert_eq!(done.state, pb::OperationState::Failed as i32, "{done:?}");
        assert_eq!(
            done.error_code,
            tonic::Code::FailedPrecondition as i32,
            "{}",
            done.error
        );
        assert!(
            done.error
                .contains("cannot seal the image: no operating system"),
            "{}",
            done.error
        );
        let failed = w.get("alice", &done.image_id).await.expect("image");
        assert_eq!(failed.state, pb::ImageState::Failed as i32);

        skeleton_debian(&w.tmp.path().join("a.raw"), w.tmp.path());
        let done = capture_sealed(&w, "sealed").await;
        assert_eq!(
            done.state,
            pb::OperationState::Succeeded as i32,
            "{}",
            done.error
        );
        let c = done.capture.expect("result");
        assert!(c.sealed && c.seal_seconds > 0.0, "{c:?}");
        let img = w.get("alice", &done.image_id).await.expect("image");
        assert!(img.sealed, "{img:?}");
        assert!(!w.capture("alice", "plain").await.sealed);

        // A fresh identity (the default) without virt-sysprep.
        let done = w
            .deploy_as_alice(pb::DeployImageRequest {
                image_id: img.id.clone(),
                host: "h1".into(),
                guest_name: "from-sealed".into(),
                ..Default::default()
            })
            .await
            .expect("deploy");
        assert_eq!(
            done.state,
            pb::OperationState::Succeeded as i32,
            "{}",
            done.error
        );
        assert_eq!(done.deploy.expect("result").generalize_seconds, 0.0);
    })
    .await;
}
