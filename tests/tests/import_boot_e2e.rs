//! A disk made elsewhere boots as a new server: a partitioned disk with its
//! own boot loader (GRUB in the MBR gap, no host kernel) is imported as raw
//! and as qcow2 with a hardware profile, deployed with a static address,
//! and each copy boots to its console marker with the address applied. A
//! GPT disk with an EFI system partition imported without a profile gets
//! UEFI (OVMF, its own NVRAM) and boots the same way.

use std::time::Duration;

use imprint_proto::v1 as pb;
use imprint_tests::{daemon_api::*, *};

const HOST: &str = "kvm-import";

#[tokio::test(flavor = "multi_thread")]
async fn imported_disks_deploy_and_boot_with_a_profile() {
    let (raw, qcow2) = grub_guest();
    let (uefi, _) = uefi_guest();
    let wd = Workdir::new("imprint-import-e2e-");
    let daemon = DaemonProcess::start(&wd.path().join("imprintd"), &wd.path().join("store"));
    let transfer = wd.path().join("transfer");
    std::fs::create_dir(&transfer).expect("transfer dir");
    let mut args = daemon.agent_args(HOST);
    // Imported images' NICs go where this host says: a loopback tunnel.
    args.extend(
        [
            "--transfer-dir",
            transfer.to_str().expect("utf8"),
            "--default-nic",
            "udp",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = Fixture::in_workdir(wd, &args);
    let alice = daemon.account("alice");
    registered(&daemon.endpoint(), HOST, &alice).await;

    // An admin defines the profile.
    let ch = tonic::transport::Endpoint::from_shared(daemon.endpoint())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    pb::profile_service_client::ProfileServiceClient::new(ch)
        .create_profile(authed(
            &daemon.admin_token(),
            pb::HardwareProfile {
                name: "tiny".into(),
                vcpus: 1,
                memory_mib: 256,
                firmware: "bios".into(),
                machine: "pc".into(),
                disk_bus: "virtio".into(),
                nic_count: 1,
                nic_model: "virtio".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("create profile");

    let mut a = api(&daemon.endpoint(), &alice);
    let cases = [
        (&raw, "raw", "tiny", "imprint-grub: linux"),
        (&qcow2, "qcow2", "tiny", "imprint-grub: linux"),
        (&uefi, "uefi", "", "imprint-uefi: linux"),
    ];
    for (i, (src, format, profile, boot_line)) in cases.into_iter().enumerate() {
        let file = transfer.join(format!("vendor.{format}"));
        std::fs::copy(src, &file).expect("copy into the transfer directory");
        let op = a
            .images
            .import_image(pb::ImportImageRequest {
                host: HOST.into(),
                path: file.display().to_string(),
                name: format!("vendor-{format}"),
                profile: profile.into(),
                ..Default::default()
            })
            .await
            .expect("import")
            .into_inner();
        let (done, _) = a.wait(&op.id).await;
        assert_eq!(
            done.state,
            pb::OperationState::Succeeded as i32,
            "{}",
            done.error
        );
        assert!(
            done.capture.expect("result").warnings.is_empty(),
            "a partitioned disk imports without warnings"
        );
        let name = format!("imp-{}-{format}", f.tag);
        let _copy = Domain::adopt(&name);
        let addr = format!("192.0.2.{}/24", 70 + i);
        let op = a
            .images
            .deploy_image(pb::DeployImageRequest {
                keep_identity: true,
                image_id: op.image_id.clone(),
                host: HOST.into(),
                guest_name: name.clone(),
                network: Some(pb::NetworkConfig {
                    hostname: format!("vendor-{format}"),
                    interfaces: vec![pb::InterfaceConfig {
                        addresses: vec![addr.clone()],
                        gateway4: "192.0.2.1".into(),
                        ..Default::default()
                    }],
                }),
                start: true,
                ..Default::default()
            })
            .await
            .expect("deploy")
            .into_inner();
        let (done, _) = a.wait(&op.id).await;
        assert_eq!(
            done.state,
            pb::OperationState::Succeeded as i32,
            "{}",
            done.error
        );
        // It boots with its own boot loader: no kernel from the host.
        let xml = virsh(&["dumpxml", &name]);
        assert!(!xml.contains("<kernel>"), "{xml}");
        let log = wait_for(
            &f.consoles.join(format!("{name}.log")),
            "IMPRINT-READY",
            1,
            Duration::from_secs(180),
        );
        assert!(
            log.contains(boot_line),
            "its own boot loader booted it: {log}"
        );
        if format == "uefi" {
            assert!(
                xml.contains("firmware='efi'") || xml.contains("OVMF"),
                "{xml}"
            );
            assert!(xml.contains("<nvram"), "its own NVRAM copy: {xml}");
        }
        assert!(
            log.lines()
                .any(|l| l.trim() == format!("IMPRINT-ADDR {addr}")),
            "{log}"
        );
        if format == "uefi" {
            nvram_travels_with_the_image(&mut a, &f, &name).await;
        }
        virsh_quiet(&["destroy", &name]);
    }
}

/// Capture the running UEFI guest `name` (alice deployed it, so it is
/// hers): the image keeps its NVRAM contents (firmware variables written
/// at its first boot), and a copy deployed from it starts from exactly
/// those bytes, not from the firmware's blank template.
async fn nvram_travels_with_the_image(a: &mut Api, f: &Fixture, name: &str) {
    let op = a
        .images
        .capture_image(pb::CaptureImageRequest {
            host: HOST.into(),
            guest: name.into(),
            name: "uefi-captured".into(),
            shutdown_timeout_seconds: 120,
            ..Default::default()
        })
        .await
        .expect("capture the UEFI guest")
        .into_inner();
    let (done, _) = a.wait(&op.id).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let image = a.image(&op.image_id).await.expect("image");
    let config: serde_json::Value = serde_json::from_str(&image.config_json).expect("config");
    let recorded = config["firmware"]["nvram_sha256"]
        .as_str()
        .expect("the image records its NVRAM")
        .to_string();
    let stored = std::fs::read(
        f.wd.path()
            .join("store/images")
            .join(&op.image_id)
            .join("nvram.fd"),
    )
    .expect("the NVRAM beside the image's indexes");
    let template = std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.fd").expect("OVMF template");
    assert_ne!(
        stored, template,
        "the guest's own variables, not the blank template"
    );
    let copy = format!("{name}-2");
    let _copy = Domain::adopt(&copy);
    let op = a
        .images
        .deploy_image(pb::DeployImageRequest {
            keep_identity: true,
            image_id: op.image_id.clone(),
            host: HOST.into(),
            guest_name: copy.clone(),
            ..Default::default()
        })
        .await
        .expect("deploy")
        .into_inner();
    let (done, _) = a.wait(&op.id).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{}",
        done.error
    );
    let written = std::fs::read(format!("/var/lib/libvirt/qemu/nvram/{copy}_VARS.fd"))
        .expect("the copy's NVRAM");
    assert_eq!(written, stored, "the copy starts from the captured NVRAM");
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&written)), recorded);
}
