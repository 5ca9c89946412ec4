//! The Python client (`clients/python`) against a real daemon, agent and
//! QEMU guests: its wheel is built from this tree and installed into the
//! test venv (`scripts/python-venv.sh`), then its pytest suite captures
//! with progress, deploys with a static address, shares, publishes and
//! deletes through it, and checks the gRPC code of each class of error.
//! The console of the guest it deployed shows the address arrived.

use std::{process::Command, time::Duration};

use imprint_tests::{daemon_api::registered, *};

const HOST: &str = "kvm-py";

#[tokio::test(flavor = "multi_thread")]
async fn python_client_captures_deploys_and_raises_grpc_codes() {
    let wd = Workdir::new("imprint-python-e2e-");
    let daemon = DaemonProcess::start(&wd.path().join("imprintd"), &wd.path().join("store"));
    let registration = daemon.agent_args(HOST);
    let registration: Vec<&str> = registration.iter().map(String::as_str).collect();
    let f = Fixture::in_workdir(wd, &registration);
    let alice = daemon.account("alice");
    let bob = daemon.account("bob");
    registered(&daemon.endpoint(), HOST, &alice).await;

    // Alice's guests: one to capture, one that ignores ACPI shutdown
    // requests (a capture that fails or is cancelled while it waits).
    let disk = f.disk_in_pool_a(&f.guest.disk, "a-vda.raw");
    let (_a, name_a, _) = f.boot_guest("a", &[(&disk, "raw")]);
    daemon.assign_guest(HOST, &name_a, "alice").await;
    let deaf_disk = f.disk_in_pool_a(&f.guest.disk_ignore_acpi, "deaf-vda.raw");
    let (_deaf, name_deaf, _) = f.boot_guest("deaf", &[(&deaf_disk, "raw")]);
    daemon.assign_guest(HOST, &name_deaf, "alice").await;
    // The API deletes images, not guests: this one is undefined on drop.
    let name_py = format!("imp-{}-py", f.tag);
    let _py = Domain::adopt(&name_py);

    let root = workspace();
    let python = venv_with_client(f.wd.path()).join("bin/python");

    // No cache or bytecode is written into the tree.
    let out = Command::new(&python)
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-q"])
        .arg(root.join("clients/python/tests"))
        .current_dir(&root)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("IMPRINT_ENDPOINT", daemon.endpoint())
        .env("IMPRINT_TOKEN", &alice)
        .env_remove("IMPRINT_CA")
        .env_remove("IMPRINT_CONFIG")
        .env("IMPRINT_TEST_HOST", HOST)
        .env("IMPRINT_TEST_GUEST", &name_a)
        .env("IMPRINT_TEST_DEAF_GUEST", &name_deaf)
        .env("IMPRINT_TEST_DEPLOY_NAME", &name_py)
        .env(
            "IMPRINT_TEST_DEPLOY_CONSOLE",
            f.consoles.join(format!("{name_py}.log")),
        )
        .env("IMPRINT_TEST_POOL", &f.pool_b.name)
        .env("IMPRINT_TEST_ACCOUNT", "alice")
        .env("IMPRINT_TEST_OTHER_ACCOUNT", "bob")
        .env("IMPRINT_TEST_OTHER_TOKEN", &bob)
        .output()
        .expect("run pytest");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("pytest:\n{report}");
    assert!(
        out.status.success(),
        "pytest failed ({}):\n{report}",
        out.status
    );
    assert!(
        report.contains(" passed") && !report.contains("skipped"),
        "every test ran:\n{report}"
    );

    // The network dict reached the guest the client deployed (and then
    // deleted, once this was in its console log).
    let log = wait_for(
        &f.consoles.join(format!("{name_py}.log")),
        "IMPRINT-READY",
        1,
        Duration::from_secs(120),
    );
    assert!(
        log.lines()
            .any(|l| l.trim() == "IMPRINT-ADDR 192.0.2.41/24"),
        "{log}"
    );
}
