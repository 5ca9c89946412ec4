//! The Debian packages (`scripts/package.sh`, `debian/`): built from this
//! workspace's dev build and checked by lintian, installed on this machine
//! with `apt-get install ./….deb`, then used as docs/operator.md says (a
//! host token, an account, one config file), with the daemon and agent run
//! from the installed units' command lines (no systemd as PID 1 here), and
//! purged: nothing the packages made is left but the system user, which
//! Debian's policy keeps.

use std::{
    io::{BufRead, BufReader},
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use imprint_tests::*;

const PACKAGES: [&str; 3] = ["imprint", "imprintd", "imprint-agent"];

/// Files the packages install (and purge removes).
const FILES: &[&str] = &[
    "/usr/bin/imprint",
    "/usr/bin/imprintd",
    "/usr/bin/imprint-agent",
    "/lib/systemd/system/imprint.target",
    "/lib/systemd/system/imprintd.service",
    "/lib/systemd/system/imprint-agent.service",
    "/lib/systemd/system/imprint-gc.service",
    "/lib/systemd/system/imprint-gc.timer",
    "/lib/systemd/system/imprint-verify.service",
    "/lib/systemd/system/imprint-verify.timer",
    "/usr/lib/sysusers.d/imprintd.conf",
    "/usr/lib/sysusers.d/imprint-agent.conf",
    "/usr/lib/tmpfiles.d/imprintd.conf",
    "/usr/lib/tmpfiles.d/imprint-agent.conf",
    "/etc/imprint/imprintd.env",
    "/usr/share/man/man1/imprint.1.gz",
    "/usr/share/man/man8/imprintd.8.gz",
    "/usr/share/man/man8/imprint-agent.8.gz",
    "/usr/share/bash-completion/completions/imprint",
    "/usr/share/zsh/vendor-completions/_imprint",
    "/usr/share/fish/vendor_completions.d/imprint.fish",
    "/usr/share/doc/imprint-agent/examples/agent.toml",
    "/usr/share/doc/imprint/operator.md.gz",
];

/// What the maintainer scripts and the operator's steps make.
const STATE: &[&str] = &[
    "/etc/imprint",
    "/var/lib/imprintd",
    "/var/lib/imprint-agent",
    "/etc/systemd/system/multi-user.target.wants/imprintd.service",
    "/etc/systemd/system/multi-user.target.wants/imprint-agent.service",
    "/etc/systemd/system/imprint.target.wants",
];

fn apt(args: &[&str]) -> std::process::Output {
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .expect("apt-get")
}

fn status(package: &str) -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .expect("dpkg-query");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn purge() {
    let mut args = vec!["purge", "-y", "-q"];
    args.extend(PACKAGES);
    let out = apt(&args);
    assert!(
        out.status.success(),
        "purge: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `ExecStart=` of an installed unit, split into words.
fn exec_start(unit: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new("/lib/systemd/system").join(unit)).expect("unit");
    text.lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{unit} has no ExecStart"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Start `argv` (as user `uid`:`gid` when given, with `env` added) and
/// read its `listening on` line.
fn start(user: Option<(u32, u32)>, argv: &[String], env: &[(&str, &str)]) -> (Child, String) {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).envs(env.iter().copied());
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {argv:?}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{argv:?} did not start: {line:?}"))
        .to_string();
    (child, addr)
}

fn stop(mut child: Child, what: &str) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let st = child.wait().expect("wait");
    assert!(st.success(), "{what} exited with {st} at SIGTERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn packages_install_work_and_purge_cleanly() {
    // Build (and lint) the packages of the dev build the suite already has.
    let out = Command::new(workspace().join("scripts/package.sh"))
        .arg("--dev")
        .output()
        .expect("scripts/package.sh");
    assert!(
        out.status.success(),
        "package.sh failed (lintian included):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let changelog = workspace().join("debian/changelog");
    let version = run(
        "dpkg-parsechangelog",
        &["-l", changelog.to_str().expect("utf8"), "-S", "Version"],
    );
    let version = version.trim();
    let arch = run("dpkg", &["--print-architecture"]);
    let debs: Vec<String> = PACKAGES
        .iter()
        .map(|p| {
            let f = dir.join(format!("{p}_{version}_{}.deb", arch.trim()));
            assert!(f.exists(), "{} was not built", f.display());
            f.to_str().expect("utf8").to_string()
        })
        .collect();

    // A run that failed half-way may have left them installed.
    if PACKAGES.iter().any(|p| !status(p).is_empty()) {
        purge();
    }
    let mut args = vec!["install", "-y", "-q"];
    args.extend(debs.iter().map(String::as_str));
    let out = apt(&args);
    assert!(
        out.status.success(),
        "apt-get install: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for p in PACKAGES {
        assert_eq!(status(p), "installed", "{p}");
    }

    // Files, the conffile, the user and the state directories' owners.
    for f in FILES {
        assert!(Path::new(f).exists(), "{f} is not installed");
    }
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", "imprintd"]);
    assert!(
        conffiles.contains("/etc/imprint/imprintd.env"),
        "{conffiles}"
    );
    let passwd = run("getent", &["passwd", "imprint"]);
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(fields[5], "/var/lib/imprintd", "{passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    let uid: u32 = fields[2].parse().expect("uid");
    let gid: u32 = fields[3].parse().expect("gid");
    assert!(uid < 1000, "a system user: {passwd}");
    let meta = std::fs::metadata("/var/lib/imprintd").expect("/var/lib/imprintd");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777),
        (uid, gid, 0o750)
    );
    let meta = std::fs::metadata("/var/lib/imprint-agent").expect("/var/lib/imprint-agent");
    assert_eq!((meta.uid(), meta.permissions().mode() & 0o7777), (0, 0o711));
    // Enabled, not started (nothing runs without its configuration); the
    // store timers and imprint.target are left to the operator.
    for unit in ["imprintd.service", "imprint-agent.service"] {
        let link = Path::new("/etc/systemd/system/multi-user.target.wants").join(unit);
        assert!(link.exists(), "{unit} is not enabled");
    }
    for unit in ["imprint-gc.timer", "imprint-verify.timer"] {
        let link = Path::new("/etc/systemd/system/timers.target.wants").join(unit);
        assert!(!link.exists(), "{unit} was enabled by surprise");
    }
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/imprint.target").exists());

    // The installed units verify against the installed binaries.
    let units: Vec<String> = FILES
        .iter()
        .filter(|f| f.starts_with("/lib/systemd/system/"))
        .map(|f| f.to_string())
        .collect();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for bin in ["imprintd", "imprint-agent", "imprint"] {
        let v = run(&format!("/usr/bin/{bin}"), &["--version"]);
        assert_eq!(v.trim(), format!("{bin} {version}"));
    }

    // docs/operator.md's steps: a host token and an account, made as the
    // daemon's user; the agent's one config file from the example.
    let wd = Workdir::new("imprint-packages-");
    let admin = |args: &[&str]| {
        let mut all = vec![
            "-u",
            "imprint",
            "--",
            "/usr/bin/imprintd",
            "--state-dir",
            "/var/lib/imprintd",
        ];
        all.extend(args);
        run("runuser", &all).trim().to_string()
    };
    let host_token = admin(&["host", "add", "pkg-host"]);
    let token = admin(&["account", "create", "ops", "--admin"]);
    std::fs::write("/etc/imprint/host.token", format!("{host_token}\n")).expect("host.token");
    std::fs::set_permissions("/etc/imprint/host.token", PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let port = free_tcp_port();
    // The store, as the guide makes it: group imprint, setgid.
    std::fs::set_permissions(wd.path(), PermissionsExt::from_mode(0o711)).expect("chmod");
    let store = wd.path().join("store");
    run(
        "install",
        &[
            "-d",
            "-g",
            "imprint",
            "-m",
            "2770",
            store.to_str().expect("utf8"),
        ],
    );
    let env_file = std::fs::read_to_string("/etc/imprint/imprintd.env").expect("imprintd.env");
    assert!(
        env_file.contains("\n#IMPRINTD_STORE=/srv/imprint\n"),
        "{env_file}"
    );
    let env_file = env_file.replace(
        "\n#IMPRINTD_STORE=/srv/imprint\n",
        &format!("\nIMPRINTD_STORE={}\n", store.display()),
    );
    std::fs::write("/etc/imprint/imprintd.env", &env_file).expect("imprintd.env");
    let example = std::fs::read_to_string("/usr/share/doc/imprint-agent/examples/agent.toml")
        .expect("example");
    assert!(example.contains("store = \"/srv/imprint\""), "{example}");
    assert!(
        example.contains("daemon = \"http://127.0.0.1:7340\""),
        "{example}"
    );
    let config = example
        .replace(
            "store = \"/srv/imprint\"",
            &format!("store = \"{}\"", store.display()),
        )
        .replace(
            "daemon = \"http://127.0.0.1:7340\"",
            &format!("daemon = \"http://127.0.0.1:{port}\"\nhost_name = \"pkg-host\""),
        );
    std::fs::write("/etc/imprint/agent.toml", config).expect("agent.toml");

    // The daemon and the agent as their units start them.
    let daemon_argv: Vec<String> = exec_start("imprintd.service")
        .into_iter()
        .map(|w| w.replace("${IMPRINTD_LISTEN}", &format!("127.0.0.1:{port}")))
        .collect();
    // EnvironmentFile=: its KEY=VALUE lines.
    let env: Vec<(&str, &str)> = env_file
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    assert_eq!(env.len(), 1, "{env:?}");
    let (daemon, _) = start(Some((uid, gid)), &daemon_argv, &env);
    let (agent, agent_addr) = start(None, &exec_start("imprint-agent.service"), &[]);
    assert_eq!(agent_addr, "unix:/run/imprint-agent/agent.sock");
    let endpoint = format!("http://127.0.0.1:{port}");
    let hosts = || {
        let out = Command::new("/usr/bin/imprint")
            .args(["-o", "json", "host", "list"])
            .env("IMPRINT_ENDPOINT", &endpoint)
            .env("IMPRINT_TOKEN", &token)
            .env_remove("IMPRINT_CONFIG")
            .output()
            .expect("imprint host list");
        assert!(
            out.status.success(),
            "imprint host list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    wait_until(
        "the installed agent registers",
        Duration::from_secs(30),
        || {
            hosts()["hosts"].as_array().is_some_and(|h| {
                h.iter()
                    .any(|h| h["name"] == "pkg-host" && h["alive"] == true)
            })
        },
    )
    .await;
    stop(agent, "imprint-agent");
    stop(daemon, "imprintd");

    // Purge: everything goes but the user (and the store, the site's).
    purge();
    for p in PACKAGES {
        assert!(
            status(p).is_empty() || status(p) == "not-installed",
            "{p}: {}",
            status(p)
        );
    }
    for f in FILES.iter().chain(STATE) {
        assert!(!Path::new(f).exists(), "{f} is left after purge");
    }
    assert!(store.exists(), "the store is the site's data");
    run("getent", &["passwd", "imprint"]);
}
