//! A storage pool that is too small, or fills up while a deploy writes:
//! the deploy is refused up front (RESOURCE_EXHAUSTED, nothing made) or
//! fails with RESOURCE_EXHAUSTED and removes its volume. The pools are
//! real libvirt dir pools on small tmpfs mounts the test makes.

use std::path::{Path, PathBuf};

use imprint_proto::v1 as pb;
use imprint_tests::*;

/// A tmpfs of `size` mounted at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
                dir.to_str().expect("utf8"),
            ],
        );
        Self(dir.into())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn left_in(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("ls pool")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_pool_refuses_or_cleans_up() {
    let f = Fixture::new();
    let image_id = f.capture_random_disk("full", 1024).await;
    let mut client = f.client().await;
    let deploy = |name: &str, pool: &str| pb::DeployRequest {
        keep_identity: true,
        image_id: image_id.clone(),
        guest_name: name.into(),
        pool: pool.into(),
        ..Default::default()
    };

    // Too small from the start: refused before anything is made.
    let small_dir = f.wd.path().join("small");
    let _small_fs = Tmpfs::mount(&small_dir, "64M");
    let small = Pool::new(&format!("imp-{}-small", f.tag), &small_dir);
    let name = format!("imp-{}-s", f.tag);
    let e = client
        .deploy(deploy(&name, &small.name))
        .await
        .expect_err("pool too small");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    assert!(left_in(&small_dir, &name).is_empty());

    // Big enough when checked, full while writing: the write fails and the
    // volume goes.
    let big_dir = f.wd.path().join("fills");
    let _big_fs = Tmpfs::mount(&big_dir, "1100M");
    let fills = Pool::new(&format!("imp-{}-fills", f.tag), &big_dir);
    let name = format!("imp-{}-f", f.tag);
    let _copy = Domain::adopt(&name);
    let op = client
        .deploy(deploy(&name, &fills.name))
        .await
        .expect("deploy accepted")
        .into_inner();
    phase_reached(&mut client, &op.operation_id, "writing volumes").await;
    // Something else fills the pool meanwhile (dd ends when nothing is
    // left): the rest of the deploy's write no longer fits.
    let filled = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "status=none"])
        .arg(format!("of={}", big_dir.join("filler").display()))
        .status()
        .expect("dd");
    assert!(!filled.success(), "dd stops at a full pool");
    let done = watch(&mut client, &op.operation_id).await;
    assert_eq!(done.state, pb::OperationState::Failed as i32, "{done:?}");
    assert_eq!(
        done.error_code,
        tonic::Code::ResourceExhausted as i32,
        "{}",
        done.error
    );
    assert!(
        left_in(&big_dir, &name).is_empty(),
        "{:?}",
        left_in(&big_dir, "")
    );
    assert!(
        !virsh(&["list", "--all", "--name"])
            .lines()
            .any(|n| n == name),
        "no domain"
    );
    drop(fills);
    drop(small);
}
