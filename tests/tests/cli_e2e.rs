//! The `imprint` CLI against a real daemon, agent and QEMU guest: capture
//! with `--wait` and progress, list, deploy with a static address, JSON and
//! YAML output, and the exit code of each class of error.

use std::{process::Command, time::Duration};

use imprint_proto::v1 as pb;
use imprint_tests::*;

const HOST: &str = "kvm-cli";

struct Cli {
    endpoint: String,
    token: String,
}

impl Cli {
    /// Run `imprint ARGS`; (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_as(&self.token, args)
    }

    fn run_as(&self, token: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(binary("imprint"))
            .args(args)
            .env("IMPRINT_ENDPOINT", &self.endpoint)
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

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-o", "json"];
        all.extend(args);
        let (code, out, err) = self.run(&all);
        assert_eq!(code, 0, "imprint {args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("JSON of {args:?}: {e}: {out}"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_captures_deploys_and_reports_errors_by_exit_code() {
    let wd = Workdir::new("imprint-cli-e2e-");
    let daemon = DaemonProcess::start(&wd.path().join("imprintd"), &wd.path().join("store"));
    let registration = daemon.agent_args(HOST);
    let registration: Vec<&str> = registration.iter().map(String::as_str).collect();
    let f = Fixture::in_workdir(wd, &registration);
    let cli = Cli {
        endpoint: daemon.endpoint(),
        token: daemon.account("alice"),
    };
    // The agent registers within a few seconds.
    let mut alive = false;
    for _ in 0..100 {
        let hosts = cli.json(&["host", "list"]);
        if hosts["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .any(|h| h["name"] == HOST && h["alive"] == true)
        {
            alive = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(alive, "agent registered");

    let disk = f.disk_in_pool_a(&f.guest.disk, "a-vda.raw");
    let (_a, name_a, log_a) = f.boot_guest("a", &[(&disk, "raw")]);
    // A guest made outside imprint is nobody's: alice may not capture it
    // (NOT_FOUND, exit 3, no operation left) until an admin assigns it.
    let capture_a = [
        "image", "capture", "--host", HOST, "--guest", &name_a, "--name", "web",
    ];
    let (code, _, err) = cli.run(&capture_a);
    assert_eq!(code, 3, "not alice's guest: {err}");
    assert_eq!(
        cli.json(&["guest", "list", "--host", HOST])["guests"],
        serde_json::json!([])
    );
    let admin = Cli {
        endpoint: cli.endpoint.clone(),
        token: daemon.admin_token(),
    };
    let (code, _, err) = cli.run(&["guest", "assign", HOST, &name_a, "--account", "alice"]);
    assert_eq!(code, 4, "only admins assign: {err}");
    let assigned = admin.json(&["guest", "assign", HOST, &name_a, "--account", "alice"]);
    assert_eq!(assigned["guests"][0]["owner"], "alice", "{assigned}");
    let mine = cli.json(&["guest", "list", "--host", HOST]);
    assert_eq!(mine["guests"][0]["name"], name_a.as_str(), "{mine}");
    assert_eq!(mine["guests"][0]["power_state"], "running", "{mine}");
    let marker = last_value(
        &std::fs::read_to_string(&log_a).expect("log"),
        "IMPRINT-MARKER",
    );

    // Capture and wait: progress lines on stderr (plain: not a terminal),
    // the final operation as JSON on stdout.
    let (code, out, err) = cli.run(&[
        "-o",
        "json",
        "image",
        "capture",
        "--host",
        HOST,
        "--guest",
        &name_a,
        "--name",
        "web",
        "--tag",
        "e2e",
        "--shutdown-timeout",
        "90",
        "--wait",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "no escape codes without a terminal: {err:?}"
    );
    let op: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(op["state"], "succeeded", "{op}");
    let id = op["capture"]["image_id"]
        .as_str()
        .expect("image id")
        .to_string();
    assert!(op["capture"]["bytes_stored"].as_u64().expect("stored") > 0);

    let list = cli.json(&["image", "list", "--tag", "e2e"]);
    assert_eq!(list["images"][0]["id"], id.as_str());
    assert_eq!(list["images"][0]["state"], "active");
    let (code, table, _) = cli.run(&["image", "list"]);
    assert_eq!(code, 0);
    assert!(table.starts_with("ID  ") && table.contains(&id), "{table}");
    let (code, yaml, _) = cli.run(&["-o", "yaml", "image", "show", &id]);
    assert_eq!(code, 0);
    assert!(yaml.contains("\"state\": \"active\""), "{yaml}");

    // Lint: the busybox disk holds no operating system; the report says
    // so, is kept with the image, and publishing it is refused (exit 5,
    // FAILED_PRECONDITION) unless forced.
    let report = cli.json(&["image", "lint", &id, "--host", HOST]);
    assert_eq!(report["os"], serde_json::Value::Null, "{report}");
    assert_eq!(report["findings"][0]["code"], "os-unknown", "{report}");
    assert_eq!(report["findings"][0]["severity"], "error", "{report}");
    let shown = cli.json(&["image", "show", &id]);
    assert_eq!(
        shown["lint"]["findings"][0]["code"], "os-unknown",
        "{shown}"
    );
    let (code, _, err) = cli.run(&["image", "publish", &id]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("os-unknown"), "{err}");
    let forced = cli.json(&["image", "publish", &id, "--force"]);
    assert_eq!(forced["visibility"], "public", "{forced}");
    let private = cli.json(&["image", "unpublish", &id]);
    assert_eq!(private["visibility"], "private", "{private}");

    // Deploy with a static address and a bigger disk; wait for it.
    let name_b = format!("imp-{}-b", f.tag);
    let _b = Domain::adopt(&name_b);
    let deployed = cli.json(&[
        "image",
        "deploy",
        "--keep-identity",
        &id,
        "--host",
        HOST,
        "--name",
        &name_b,
        "--pool",
        &f.pool_b.name,
        "--disk-size",
        "128M",
        "--hostname",
        "imp-b",
        "--nic",
        "addr=192.0.2.40/24,gw4=192.0.2.1",
        "--start",
        "--wait",
    ]);
    assert_eq!(deployed["state"], "succeeded", "{deployed}");
    assert_eq!(deployed["deploy"]["started"], true);
    let log = wait_for(
        &f.consoles.join(format!("{name_b}.log")),
        "IMPRINT-READY",
        1,
        Duration::from_secs(120),
    );
    assert_eq!(last_value(&log, "IMPRINT-MARKER"), marker, "B has A's data");
    assert!(
        log.lines()
            .any(|l| l.trim() == "IMPRINT-ADDR 192.0.2.40/24"),
        "{log}"
    );

    // A lazy deploy: the guest starts before its (raw) volume is written
    // and --wait returns once it is complete and stands alone.
    let name_c = format!("imp-{}-c", f.tag);
    let _c = Domain::adopt(&name_c);
    let lazy = cli.json(&[
        "image",
        "deploy",
        "--keep-identity",
        &id,
        "--host",
        HOST,
        "--name",
        &name_c,
        "--pool",
        &f.pool_b.name,
        "--lazy",
        "--wait",
    ]);
    assert_eq!(lazy["state"], "succeeded", "{lazy}");
    assert_eq!(lazy["deploy"]["started"], true, "{lazy}");
    let volume = lazy["deploy"]["volumes"][0].as_str().expect("volume");
    assert!(volume.ends_with(".raw"), "{volume}");
    let live = virsh(&["dumpxml", &name_c]);
    assert!(
        live.contains(volume),
        "the guest runs on its volume:\n{live}"
    );
    assert!(!live.contains("protocol='nbd'"), "{live}");

    // Input the agent refuses is an error of the call (exit 2) and leaves
    // no image and no operation (the operation list is checked below).
    let images_before = cli.json(&["image", "list"])["images"].clone();
    let (code, _, err) = cli.run(&[
        "image",
        "capture",
        "--host",
        HOST,
        "--guest",
        &name_a,
        "--name",
        "no-vdz",
        "--exclude-disk",
        "vdz",
        "--wait",
    ]);
    assert_eq!(code, 2, "no disk vdz: {err}");
    assert!(err.contains("vdz"), "{err}");
    assert_eq!(
        cli.json(&["image", "list"])["images"],
        images_before,
        "no FAILED image left"
    );
    // A gateway outside the address's subnet is refused unless marked
    // on-link; nothing is created.
    let (code, _, err) = cli.run(&[
        "image",
        "deploy",
        "--keep-identity",
        &id,
        "--host",
        HOST,
        "--name",
        "bad-gw",
        "--nic",
        "addr=10.0.0.5/24,gw4=192.168.7.1",
    ]);
    assert_eq!(code, 2, "gateway off-subnet: {err}");
    assert!(err.contains("outside the subnet"), "{err}");
    // user-data over the limit: the limit in words, not the transport's.
    let big = f.wd.path().join("big-user-data");
    std::fs::write(&big, format!("#cloud-config\n#{}\n", "x".repeat(10 << 20))).expect("write");
    let (code, _, err) = cli.run(&[
        "image",
        "deploy",
        "--keep-identity",
        &id,
        "--host",
        HOST,
        "--name",
        "big-ud",
        "--user-data",
        big.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 2, "user-data too big: {err}");
    assert!(err.contains("524288 bytes"), "{err}");
    assert!(
        virsh(&["list", "--all", "--name"])
            .lines()
            .all(|n| n != "bad-gw" && n != "big-ud"),
        "no guest defined"
    );

    // Errors: one exit code per class, the server's message on stderr.
    let missing = uuid::Uuid::new_v4().to_string();
    let (code, _, err) = cli.run(&["image", "show", &missing]);
    assert_eq!(code, 3, "not found: {err}");
    assert!(err.contains("not found"), "{err}");
    let (code, _, _) = cli.run_as("imp_bad", &["image", "list"]);
    assert_eq!(code, 4, "bad token");
    let (code, _, err) = cli.run(&[
        "image",
        "deploy",
        "--keep-identity",
        &id,
        "--host",
        HOST,
        "--name",
        "x",
        "--disk-size",
        "1M",
    ]);
    assert_eq!(code, 2, "smaller than the image: {err}");
    assert!(err.contains("smaller"), "{err}");
    let (code, _, _) = cli.run(&[
        "image",
        "deploy",
        "--keep-identity",
        &id,
        "--host",
        HOST,
        "--name",
        "x",
        "--disk-size",
        "lots",
    ]);
    assert_eq!(code, 2, "bad size");
    assert_eq!(cli.run(&["image", "protect", &id]).0, 0);
    let (code, _, err) = cli.run(&["image", "delete", &id]);
    assert_eq!(code, 5, "protected: {err}");
    let (code, _, err) = cli.run(&[
        "image", "capture", "--host", "nowhere", "--guest", "g", "--name", "n",
    ]);
    assert_eq!(code, 3, "unknown host: {err}");
    let (code, _, err) = Cli {
        endpoint: "http://127.0.0.1:1".into(),
        token: cli.token.clone(),
    }
    .run(&["image", "list"]);
    assert_eq!(code, 6, "daemon down: {err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert_eq!(cli.run(&["image", "protect", "--off", &id]).0, 0);
    let del = cli.json(&["image", "delete", &id]);
    assert_eq!(del["state"], "succeeded");
    assert_eq!(cli.run(&["image", "show", &id]).0, 3);

    // Operations: all of ours are listed, newest first.
    let ops = cli.json(&["op", "list"]);
    let listed = ops["operations"].as_array().expect("ops");
    // Newest first; operations of the same second in any order.
    let created: Vec<i64> = listed
        .iter()
        .map(|o| o["created_unix"].as_i64().expect("created_unix"))
        .collect();
    assert!(created.is_sorted_by(|a, b| a >= b), "{ops}");
    let mut kinds: Vec<&str> = listed
        .iter()
        .map(|o| o["kind"].as_str().expect("kind"))
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["capture", "delete", "deploy", "deploy", "lint"]);
    let _ = pb::OperationState::Succeeded;

    // Delete the running lazy-deployed guest through the daemon: forced
    // off, its volumes (disk and seed) deleted, undefined, listed as an
    // operation; then it is unknown (exit 3). Bad names: exit 2.
    let (code, _, err) = cli.run(&["guest", "delete", HOST, "no-such-guest"]);
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = cli.run(&["guest", "delete", HOST, "a/b"]);
    assert_eq!(code, 2, "{err}");
    let gone = cli.json(&["guest", "delete", HOST, &name_c, "--wait"]);
    assert_eq!(gone["state"], "succeeded", "{gone}");
    assert_eq!(gone["kind"], "delete-guest", "{gone}");
    assert_eq!(gone["delete_guest"]["forced_off"], true, "{gone}");
    let mut deleted: Vec<&str> = gone["delete_guest"]["deleted_volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    deleted.sort_unstable();
    let mut made: Vec<&str> = lazy["deploy"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    made.sort_unstable();
    assert_eq!(deleted, made, "{gone}");
    for v in &made {
        assert!(!std::path::Path::new(v).exists(), "{v} deleted");
    }
    let dominfo = Command::new("virsh")
        .args(["-c", "qemu:///system", "dominfo", &name_c])
        .output()
        .expect("virsh");
    assert!(!dominfo.status.success(), "{name_c} undefined");
    let (code, _, err) = cli.run(&["guest", "delete", HOST, &name_c]);
    assert_eq!(code, 3, "gone: {err}");
    // Listed (by id: the image delete above may share its second, and the
    // list orders by creation time).
    let listed = cli.json(&["op", "list"]);
    let ops = listed["operations"].as_array().expect("operations");
    assert!(
        ops.iter()
            .any(|o| o["id"] == gone["id"] && o["kind"] == "delete-guest"),
        "{listed}"
    );

    // Endpoint and token from a config file; flags beat it.
    let cfg = f.wd.path().join("imprint.toml");
    std::fs::write(
        &cfg,
        format!(
            "endpoint = \"{}\"\ntoken = \"{}\"\n",
            cli.endpoint, cli.token
        ),
    )
    .expect("config");
    let from_file = Command::new(binary("imprint"))
        .args(["image", "list", "--config"])
        .arg(&cfg)
        .env_remove("IMPRINT_ENDPOINT")
        .env_remove("IMPRINT_TOKEN")
        .output()
        .expect("run");
    assert!(
        from_file.status.success(),
        "{}",
        String::from_utf8_lossy(&from_file.stderr)
    );
    let overridden = Command::new(binary("imprint"))
        .args([
            "image",
            "list",
            "--endpoint",
            "http://127.0.0.1:1",
            "--config",
        ])
        .arg(&cfg)
        .env_remove("IMPRINT_ENDPOINT")
        .env_remove("IMPRINT_TOKEN")
        .output()
        .expect("run");
    assert_eq!(
        overridden.status.code(),
        Some(6),
        "the flag wins over the file"
    );

    // Accounts over the API: admins only.
    let (code, _, _) = cli.run(&["account", "create", "mallory"]);
    assert_eq!(code, 4, "not an admin");
    let root = Cli {
        endpoint: cli.endpoint.clone(),
        token: daemon
            .admin(&["create", "root", "--admin"])
            .trim()
            .to_string(),
    };
    let (code, token, err) = root.run(&["account", "create", "carol"]);
    assert_eq!(code, 0, "{err}");
    let carol = token.trim().to_string();
    assert!(carol.starts_with("imp_"), "{carol}");
    assert_eq!(root.run(&["account", "create", "carol"]).0, 5, "exists");
    assert_eq!(root.run(&["account", "create", "bad name"]).0, 2);
    let as_carol = Cli {
        endpoint: cli.endpoint.clone(),
        token: carol.clone(),
    };
    assert!(
        as_carol.json(&["host", "list"])["hosts"]
            .as_array()
            .expect("hosts")
            .is_empty()
    );
    let granted = root.json(&["account", "allow-host", "carol", HOST]);
    assert_eq!(granted["hosts"][0], HOST);
    assert_eq!(as_carol.json(&["host", "list"])["hosts"][0]["name"], HOST);
    let list = root.json(&["account", "list"]);
    let names: Vec<&str> = list["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| a["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["alice", "carol", "imprint-test-admin", "root"]);
    let rotated = root.json(&["account", "token", "carol"]);
    assert_ne!(rotated["token"], carol.as_str());
    assert_eq!(
        as_carol.run(&["image", "list"]).0,
        4,
        "the old token is dead"
    );

    // Completions and the man page come from the same definitions.
    let (code, bash, _) = cli.run(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(bash.contains("imprint") && bash.contains("deploy"));
    let (code, man, _) = cli.run(&["man"]);
    assert_eq!(code, 0);
    assert!(
        man.contains(".TH imprint"),
        "{}",
        &man[..man.len().min(200)]
    );
}
