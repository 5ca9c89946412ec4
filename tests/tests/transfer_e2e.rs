//! Import and export through the daemon, from the CLI: a raw file on the
//! agent's host becomes an image; the image comes back out as qcow2 that
//! `qemu-img compare` finds identical; files outside the agent's transfer
//! directory, foreign formats and existing targets are refused.

use std::{process::Command, time::Duration};

use imprint_tests::*;

const HOST: &str = "kvm-transfer";

fn imprint(endpoint: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("imprint"))
        .args(args)
        .env("IMPRINT_ENDPOINT", endpoint)
        .env("IMPRINT_TOKEN", token)
        .env_remove("IMPRINT_CONFIG")
        .env_remove("HOME")
        .output()
        .expect("run imprint");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A daemon, an agent (host HOST) with a transfer directory and `env`,
/// and alice's token once the agent is registered.
struct World {
    daemon: DaemonProcess,
    _agent: AgentProcess,
    transfer: std::path::PathBuf,
    token: String,
    /// Last: removed after the processes stop.
    wd: Workdir,
}

fn world(prefix: &str, env: &[(String, String)], extra: &[&str]) -> World {
    let wd = Workdir::new(prefix);
    let daemon = DaemonProcess::start(&wd.path().join("imprintd"), &wd.path().join("store"));
    let transfer = wd.path().join("transfer");
    std::fs::create_dir(&transfer).expect("transfer dir");
    let registration = daemon.agent_args(HOST);
    let mut args: Vec<&str> = registration.iter().map(String::as_str).collect();
    args.extend(["--transfer-dir", transfer.to_str().expect("utf8")]);
    args.extend(extra);
    let agent = AgentProcess::start_agent_env(
        wd.path().join("store").as_os_str(),
        &wd.path().join("journal"),
        &args,
        env,
    );
    let token = daemon.account("alice");
    let ep = daemon.endpoint();
    let mut up = false;
    for _ in 0..100 {
        let (_, out, _) = imprint(&ep, &token, &["-o", "json", "host", "list"]);
        if out.contains("\"alive\": true") {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(up, "agent registered");
    World {
        daemon,
        _agent: agent,
        transfer,
        token,
        wd,
    }
}

#[test]
fn import_and_export_through_the_daemon() {
    let w = world("imprint-transfer-", &[], &[]);
    let (transfer, token) = (w.transfer.clone(), w.token.clone());
    let outsider = w.daemon.admin(&["create", "outsider"]).trim().to_string();
    let ep = w.daemon.endpoint();
    let run = |args: &[&str]| imprint(&ep, &token, args);

    let raw = transfer.join("disk.raw");
    let f = std::fs::File::create(&raw).expect("raw");
    f.set_len(24 << 20).expect("len");
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x5au8; 8192], 5 << 20).expect("write");
    drop(f);
    let raw_s = raw.to_str().expect("utf8");

    let (code, out, err) = run(&[
        "-o", "json", "image", "import", "--host", HOST, "--path", raw_s, "--name", "imported",
        "--tag", "import", "--wait",
    ]);
    assert_eq!(code, 0, "{err}");
    let op: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(op["kind"], "import");
    assert_eq!(op["state"], "succeeded", "{op}");
    let id = op["image_id"].as_str().expect("id").to_string();
    let (code, out, _) = run(&["-o", "json", "image", "show", &id]);
    assert_eq!(code, 0);
    let img: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(img["state"], "active");
    assert_eq!(img["disks"][0]["size_bytes"], 24 << 20);
    assert_eq!(img["source_guest"], raw_s, "where it came from");

    let qcow2 = transfer.join("out.qcow2");
    let qcow2_s = qcow2.to_str().expect("utf8");
    let (code, out, err) = run(&[
        "-o",
        "json",
        "image",
        "export",
        &id,
        "--host",
        HOST,
        "--path",
        qcow2_s,
        "--disk-format",
        "qcow2",
        "--wait",
    ]);
    assert_eq!(code, 0, "{err}");
    let op: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(op["export"]["path"], qcow2_s, "{op}");
    let cmp = Command::new("qemu-img")
        .args(["compare", raw_s, qcow2_s])
        .output()
        .expect("qemu-img");
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );

    // Refused, with the class of error in the exit code.
    let (code, _, err) = run(&[
        "image", "export", &id, "--host", HOST, "--path", qcow2_s, "--wait",
    ]);
    assert_eq!(code, 5, "exists: {err}");
    let (code, _, err) = run(&[
        "image", "export", &id, "--host", HOST, "--path", qcow2_s, "--disk", "3",
    ]);
    assert_eq!(code, 2, "no disk 3: {err}");
    let (code, _, err) = run(&[
        "image",
        "import",
        "--host",
        HOST,
        "--path",
        "/etc/hostname",
        "--name",
        "x",
    ]);
    assert_eq!(code, 4, "outside the transfer directory: {err}");
    assert!(err.contains("transfer directory"), "{err}");
    let vmdk = transfer.join("disk.vmdk");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "vmdk"])
        .arg(&vmdk)
        .arg("1M")
        .status()
        .expect("qemu-img");
    assert!(made.success());
    let (code, _, err) = run(&[
        "image",
        "import",
        "--host",
        HOST,
        "--path",
        vmdk.to_str().expect("utf8"),
        "--name",
        "x",
    ]);
    assert_eq!(code, 2, "VMDK: {err}");
    assert!(err.contains("VMDK"), "{err}");
    let (code, _, err) = imprint(
        &ep,
        &outsider,
        &[
            "image", "import", "--host", HOST, "--path", raw_s, "--name", "x",
        ],
    );
    assert_eq!(code, 3, "host not granted: {err}");
    // The export is alice's private image: owner-only on disk, and another
    // account allowed on the host cannot import it (even through a link).
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&qcow2)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "export mode");
    let bob = w.daemon.account("bob");
    let link = transfer.join("innocent.qcow2");
    std::os::unix::fs::symlink(&qcow2, &link).expect("symlink");
    for path in [qcow2_s, link.to_str().expect("utf8")] {
        let (code, _, err) = imprint(
            &ep,
            &bob,
            &[
                "image", "import", "--host", HOST, "--path", path, "--name", "stolen",
            ],
        );
        assert_eq!(code, 4, "another account's export {path}: {err}");
        assert!(err.contains("exported by another account"), "{err}");
    }
    // Its owner may import it again.
    let (code, _, err) = run(&[
        "image", "import", "--host", HOST, "--path", qcow2_s, "--name", "again", "--wait",
    ]);
    assert_eq!(code, 0, "the owner imports its own export: {err}");
    // Only the two imports that were allowed made images.
    let (_, out, _) = run(&["-o", "json", "image", "list"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(list["images"].as_array().expect("images").len(), 2);
}

/// Imports from object URLs: a qcow2 in a bucket of a real S3 server and a
/// raw file behind a plain HTTP server. A missing object fails the call;
/// a qcow2 with an external data file fails the operation and leaves no
/// usable image and no download behind.
#[test]
fn import_from_object_urls() {
    use imprint_store::s3_server::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
    let s3 = S3Server::start();
    let env = [
        ("AWS_ENDPOINT_URL".to_string(), s3.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID".to_string(), ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), SECRET_KEY.to_string()),
    ];
    // Only these prefixes may be imported from.
    let port = free_tcp_port();
    let http_prefix = format!("http://127.0.0.1:{port}/");
    let s3_prefix = format!("s3://{BUCKET}/objects/");
    let w = world(
        "imprint-transfer-url-",
        &env,
        &[
            "--import-url-prefix",
            &s3_prefix,
            "--import-url-prefix",
            &http_prefix,
        ],
    );
    let (wd, transfer) = (&w.wd, w.transfer.clone());
    let ep = w.daemon.endpoint();
    let run = |args: &[&str]| imprint(&ep, &w.token, args);

    // The objects: files behind the servers.
    let objects = s3.bucket_dir(BUCKET).join("objects");
    std::fs::create_dir_all(&objects).expect("objects");
    let raw = wd.path().join("disk.raw");
    let f = std::fs::File::create(&raw).expect("raw");
    f.set_len(16 << 20).expect("len");
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xa5u8; 65536], 3 << 20).expect("write");
    drop(f);
    let qemu_img = |args: &[&str]| {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let raw_s = raw.to_str().expect("utf8");
    let q = objects.join("disk.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-O",
        "qcow2",
        raw_s,
        q.to_str().expect("utf8"),
    ]);
    let ext = objects.join("external.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=ext.data",
        ext.to_str().expect("utf8"),
        "1M",
    ]);

    let import = |url: &str, name: &str| {
        run(&[
            "-o", "json", "image", "import", "--host", HOST, "--path", url, "--name", name,
            "--wait",
        ])
    };
    let url = format!("s3://{BUCKET}/objects/disk.qcow2");
    let (code, out, err) = import(&url, "from-s3");
    assert_eq!(code, 0, "{err}");
    let op: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(op["state"], "succeeded", "{op}");
    let id = op["image_id"].as_str().expect("id").to_string();
    let back = transfer.join("back.raw");
    let back_s = back.to_str().expect("utf8");
    let (code, _, err) = run(&[
        "image", "export", &id, "--host", HOST, "--path", back_s, "--wait",
    ]);
    assert_eq!(code, 0, "{err}");
    qemu_img(&["compare", "-q", raw_s, back_s]);
    let (_, out, _) = run(&["-o", "json", "image", "show", &id]);
    let img: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(img["source_guest"], url.as_str(), "where it came from");

    // Plain HTTP.
    let mut http = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .arg("--directory")
        .arg(wd.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 http.server");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "http.server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out, err) = import(&format!("http://127.0.0.1:{port}/disk.raw"), "from-http");
    let _ = http.kill();
    let _ = http.wait();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"succeeded\""), "{out}");

    // Outside the allowed prefixes (here: the store's own objects, which
    // the agent's keys could read): refused, exit code 4.
    let (code, _, err) = import(&format!("s3://{BUCKET}/other/disk.qcow2"), "x");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not below any URL prefix"), "{err}");
    // Missing object: the call fails (not found), nothing starts.
    let (code, _, err) = import(&format!("s3://{BUCKET}/objects/nope.qcow2"), "x");
    assert_eq!(code, 3, "{err}");
    // An external data file: the operation fails; no image, no download.
    let (code, out, err) = import(&format!("s3://{BUCKET}/objects/external.qcow2"), "ext");
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("external data file"), "{err}");
    let (_, out, _) = run(&["-o", "json", "image", "list"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("json");
    // Like a failed capture, the failed import's image is FAILED with the
    // reason: listed, never usable.
    let mut states: Vec<(&str, &str)> = list["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or_default(),
                i["state"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    states.sort();
    assert_eq!(
        states,
        [
            ("ext", "failed"),
            ("from-http", "active"),
            ("from-s3", "active")
        ],
        "{states:?}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&transfer)
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".imprint-download")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
