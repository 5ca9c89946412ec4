//! Hardware profiles and imported disks: admins define profiles, imported
//! images deploy with their recorded configuration or a profile, within
//! the minimums their owner set, like captured images do.

use std::path::Path;

use imprint_proto::v1 as pb;
use tonic::Code;

use super::world::{
    Caller::{As, NoToken},
    World, code, on_each_backend,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn imported_images_deploy_with_profiles() {
    on_each_backend(profiles_on).await;
}

async fn profiles_on(w: World) {
    admins_define_profiles(&w).await;
    let img = import_vendor_disk(&w).await;
    imports_deploy_with_their_configuration(&w, &img).await;
    minimums_refuse_smaller_deploys(&w, &img).await;
    disk_requirement_sizes_deploys(&w, &img).await;
    captured_and_imported_deploy_alike(&w).await;
}

fn profile(name: &str, firmware: &str) -> pb::HardwareProfile {
    pb::HardwareProfile {
        name: name.into(),
        vcpus: 2,
        memory_mib: 2048,
        firmware: firmware.into(),
        machine: "q35".into(),
        disk_bus: "virtio".into(),
        nic_count: 1,
        nic_model: "virtio".into(),
        ..Default::default()
    }
}

/// The configuration the fake hypervisor was given for guest `name`.
fn defined(w: &World, name: &str) -> imprint_agent::domain::GuestConfig {
    let xml = w.hv.guests.lock().expect("lock")[name].xml.clone();
    imprint_agent::domain::GuestConfig::from_domain_xml(&xml).expect("xml")
}

/// An import of the disk at `path` on h1.
fn import(
    name: &str,
    profile: &str,
    hardware: Option<pb::HardwareProfile>,
    path: &Path,
) -> pb::ImportImageRequest {
    pb::ImportImageRequest {
        host: "h1".into(),
        path: path.display().to_string(),
        name: name.into(),
        profile: profile.into(),
        hardware,
        ..Default::default()
    }
}

/// A deploy of image `id` on h1 as guest `name`, with `profile`.
fn deploy(id: &str, name: &str, profile: &str) -> pb::DeployImageRequest {
    pb::DeployImageRequest {
        keep_identity: true,
        image_id: id.into(),
        host: "h1".into(),
        guest_name: name.into(),
        profile: profile.into(),
        ..Default::default()
    }
}

/// Admins define profiles (m1.small and m1.uefi); everyone reads them.
async fn admins_define_profiles(w: &World) {
    let mut profiles = pb::profile_service_client::ProfileServiceClient::new(w.channel.clone());
    let small = profiles
        .create_profile(w.req(As("root"), profile("m1.small", "bios")))
        .await
        .expect("create")
        .into_inner();
    assert!(small.created_unix > 0);
    assert_eq!(
        small.serial_console,
        Some(true),
        "serial console by default"
    );
    profiles
        .create_profile(w.req(As("root"), profile("m1.uefi", "uefi")))
        .await
        .expect("create uefi");
    bad_profiles_are_refused(w).await;
    let listed = profiles
        .list_profiles(w.req(As("bob"), pb::ListProfilesRequest {}))
        .await
        .expect("list")
        .into_inner()
        .profiles;
    let names: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["m1.small", "m1.uefi"],
        "bad profiles changed nothing"
    );
}

async fn bad_profiles_are_refused(w: &World) {
    let mut profiles = pb::profile_service_client::ProfileServiceClient::new(w.channel.clone());
    for (what, who, p, want) in [
        (
            "not an admin",
            As("alice"),
            profile("x", "bios"),
            Code::PermissionDenied,
        ),
        (
            "no token",
            NoToken,
            profile("x", "bios"),
            Code::Unauthenticated,
        ),
        (
            "taken",
            As("root"),
            profile("m1.small", "bios"),
            Code::AlreadyExists,
        ),
        (
            "firmware",
            As("root"),
            profile("x", "coreboot"),
            Code::InvalidArgument,
        ),
        (
            "machine",
            As("root"),
            pb::HardwareProfile {
                machine: "isapc".into(),
                ..profile("x", "bios")
            },
            Code::InvalidArgument,
        ),
        (
            "incomplete",
            As("root"),
            pb::HardwareProfile {
                vcpus: 0,
                ..profile("x", "bios")
            },
            Code::InvalidArgument,
        ),
    ] {
        let got = code(profiles.create_profile(w.req(who, p)).await);
        assert_eq!(got, want, "{what}");
    }
}

/// A disk made elsewhere, an MBR with one Linux partition and no ESP,
/// imported with profile m1.small.
async fn import_vendor_disk(w: &World) -> pb::Image {
    let disk = w.tmp.path().join("transfer").join("vendor.raw");
    let mut bytes = vec![0u8; 8 << 20];
    bytes[446 + 4] = 0x83;
    bytes[510] = 0x55;
    bytes[511] = 0xaa;
    bytes[3 << 20..(3 << 20) + 11].copy_from_slice(b"vendor data");
    std::fs::write(&disk, &bytes).expect("disk");
    let op = w
        .images
        .clone()
        .import_image(w.req(As("alice"), import("vendor", "m1.small", None, &disk)))
        .await
        .expect("import")
        .into_inner();
    let done = w.wait(As("alice"), &op).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    assert!(
        done.capture.expect("result").warnings.is_empty(),
        "a partitioned disk"
    );
    let img = w.get("alice", &op.image_id).await.expect("image");
    let config: serde_json::Value = serde_json::from_str(&img.config_json).expect("config");
    assert_eq!(config["vcpus"], 2, "{config}");
    assert_eq!(config["machine"], "q35");
    assert_eq!(config["esp"], false);
    img
}

/// It deploys like a captured image: with the recorded configuration; UEFI
/// for a disk without an EFI system partition is refused before anything
/// is made.
async fn imports_deploy_with_their_configuration(w: &World, img: &pb::Image) {
    let d = w
        .deploy_as_alice(deploy(&img.id, "imported-1", ""))
        .await
        .expect("deploy");
    assert_eq!(d.state, pb::OperationState::Succeeded as i32, "{}", d.error);
    let g = defined(w, "imported-1");
    assert_eq!(
        (g.vcpus, g.memory_kib, g.machine.as_str()),
        (2, 2 << 20, "q35")
    );
    assert_eq!(g.nics.len(), 1);
    assert_eq!(g.firmware.kind, "bios");
    let e = w
        .deploy_as_alice(deploy(&img.id, "imported-uefi", "m1.uefi"))
        .await
        .expect_err("no ESP");
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(
        e.message().contains("EFI system partition"),
        "{}",
        e.message()
    );
    assert!(
        !w.hv
            .guests
            .lock()
            .expect("lock")
            .contains_key("imported-uefi")
    );
    assert_eq!(
        code(w.deploy_as_alice(deploy(&img.id, "x", "no-such")).await),
        Code::NotFound
    );
}

/// Minimums, set by the owner, refuse smaller deploys.
async fn minimums_refuse_smaller_deploys(w: &World, img: &pb::Image) {
    w.images
        .clone()
        .update_image(w.req(
            As("alice"),
            pb::UpdateImageRequest {
                id: img.id.clone(),
                update_mask: vec!["min_memory_mib".into(), "recommended_profiles".into()],
                min_memory_mib: 4096,
                recommended_profiles: vec!["m1.small".into()],
                ..Default::default()
            },
        ))
        .await
        .expect("update");
    let e = w
        .deploy_as_alice(deploy(&img.id, "too-small", "m1.small"))
        .await
        .expect_err("below minimum");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("4096 MiB"), "{}", e.message());
    let big = w
        .deploy_as_alice(pb::DeployImageRequest {
            keep_identity: true,
            memory_mib: 4096,
            ..deploy(&img.id, "big-enough", "m1.small")
        })
        .await
        .expect("deploy");
    assert_eq!(
        big.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        big.error
    );
    assert_eq!(defined(w, "big-enough").memory_kib, 4096 * 1024);
    let shown = w.get("alice", &img.id).await.expect("image");
    assert_eq!(shown.recommended_profiles, ["m1.small"]);
    assert_eq!(shown.min_memory_mib, 4096);
}

/// min_disk_bytes: never below the captured first disk; deploys that give
/// no size get it, one that asks for less is refused.
async fn disk_requirement_sizes_deploys(w: &World, img: &pb::Image) {
    let captured = img.disks[0].size_bytes;
    let set = |bytes: u64| {
        let mut images = w.images.clone();
        let req = w.req(
            As("alice"),
            pb::UpdateImageRequest {
                id: img.id.clone(),
                update_mask: vec!["min_disk_bytes".into()],
                min_disk_bytes: bytes,
                ..Default::default()
            },
        );
        async move { images.update_image(req).await }
    };
    let e = set(captured - 512)
        .await
        .expect_err("below the captured size");
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("as captured"), "{}", e.message());
    assert_eq!(
        w.get("alice", &img.id).await.expect("image").min_disk_bytes,
        0
    );
    let min = captured + (4 << 20);
    let shown = set(min).await.expect("update").into_inner();
    assert_eq!(shown.min_disk_bytes, min);

    let e = w
        .deploy_as_alice(pb::DeployImageRequest {
            memory_mib: 4096,
            disk_sizes_bytes: vec![captured],
            ..deploy(&img.id, "cramped", "")
        })
        .await
        .expect_err("below the requirement");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("min_disk_bytes"), "{}", e.message());
    assert!(!w.hv.guests.lock().expect("lock").contains_key("cramped"));

    let roomy = w
        .deploy_as_alice(pb::DeployImageRequest {
            memory_mib: 4096,
            ..deploy(&img.id, "roomy", "")
        })
        .await
        .expect("deploy");
    assert_eq!(
        roomy.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        roomy.error
    );
    let disk = defined(w, "roomy").disks[0]
        .source_path
        .clone()
        .expect("path");
    let len = std::fs::metadata(&disk).expect("volume").len();
    assert_eq!(len, min, "the first disk got the required size");
    // Cleared: the captured size again.
    assert_eq!(set(0).await.expect("clear").into_inner().min_disk_bytes, 0);
}

/// Guest a's disk, copied and imported without a profile: no partition
/// table, no filesystem, so imported with a warning and the default
/// configuration.
async fn import_disk_of_a(w: &World) -> pb::Image {
    let a_disk = w.tmp.path().join("transfer").join("a.raw");
    let src = w.hv.guests.lock().expect("lock")["a"].xml.clone();
    let src = imprint_agent::domain::GuestConfig::from_domain_xml(&src).expect("xml");
    std::fs::copy(src.disks[0].source_path.as_deref().expect("path"), &a_disk).expect("copy");
    let op = w
        .images
        .clone()
        .import_image(w.req(As("alice"), import("imported-a", "", None, &a_disk)))
        .await
        .expect("import")
        .into_inner();
    let done = w.wait(As("alice"), &op).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    // No partition table, no filesystem: imported with a warning.
    let warnings = done.capture.expect("result").warnings;
    assert!(
        warnings.iter().any(|w| w.contains("may not boot")),
        "{warnings:?}"
    );
    let imported = w.get("alice", &op.image_id).await.expect("image");
    let defaults: serde_json::Value = serde_json::from_str(&imported.config_json).expect("json");
    assert_eq!(
        (defaults["vcpus"].as_u64(), defaults["memory_kib"].as_u64()),
        (Some(1), Some(1 << 20)),
        "the documented default"
    );
    imported
}

/// A captured image and an imported image of the same disk deploy to
/// equivalent domains with one profile: one configuration code path.
async fn captured_and_imported_deploy_alike(w: &World) {
    let captured = w.capture("alice", "captured-a").await;
    let imported = import_disk_of_a(w).await;
    for (id, name) in [
        (&captured.id, "from-captured"),
        (&imported.id, "from-imported"),
    ] {
        let d = w
            .deploy_as_alice(deploy(id, name, "m1.small"))
            .await
            .expect("deploy");
        assert_eq!(d.state, pb::OperationState::Succeeded as i32, "{}", d.error);
    }
    let (a, b) = (defined(w, "from-captured"), defined(w, "from-imported"));
    let shape = |g: &imprint_agent::domain::GuestConfig| {
        (
            g.vcpus,
            g.memory_kib,
            g.machine.clone(),
            g.firmware.kind.clone(),
            g.disks
                .iter()
                .map(|d| (d.target_dev.clone(), d.bus.clone()))
                .collect::<Vec<_>>(),
            g.nics
                .iter()
                .map(|n| (n.kind.clone(), n.model.clone()))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(shape(&a), shape(&b), "equivalent domains");
}
