//! The Ansible collection `imprint.cloud` (`clients/ansible`) against a
//! real daemon, agent and QEMU guests. The collection is built with
//! `ansible-galaxy collection build` and installed into the test's work
//! directory (what an operator does; `ANSIBLE_COLLECTIONS_PATH` points
//! there), the Python client's wheel into the test venv
//! (`scripts/python-venv.sh`), and `ansible-playbook` runs the example
//! playbook `clients/ansible/examples/fleet.yml`: it captures a guest,
//! deploys two servers with static addresses, changes nothing when run
//! again, changes nothing in check mode, converges the image's notes and
//! shares, and with `fleet_state=absent` deletes the servers through the
//! daemon (their volumes too) and then the image; check mode first
//! changes nothing, a second run finds nothing to do.
//!
//! A second, fast test renders every module with `ansible-doc` and runs
//! `ansible-test sanity` on the built collection
//! (`clients/ansible/tests/sanity.sh`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use imprint_proto::v1::{self as pb, guest_service_client::GuestServiceClient};
use imprint_tests::{
    daemon_api::{Api, api, registered},
    *,
};

const HOST: &str = "kvm-ansible";

/// Both tests install into the shared venv and use CPU in bursts: one at a
/// time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn path(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// `ansible-galaxy collection build` + `install` into `dir/collections`;
/// that directory (for ANSIBLE_COLLECTIONS_PATH).
fn install_collection(venv: &Path, dir: &Path) -> PathBuf {
    let galaxy = venv.join("bin/ansible-galaxy");
    let source = workspace().join("clients/ansible");
    let built = run(
        path(&galaxy),
        &[
            "collection",
            "build",
            path(&source),
            "--output-path",
            path(dir),
        ],
    );
    let tarball = built
        .split_whitespace()
        .last()
        .expect("ansible-galaxy names the tarball")
        .to_string();
    assert!(tarball.ends_with(".tar.gz"), "{built}");
    let collections = dir.join("collections");
    run(
        path(&galaxy),
        &["collection", "install", &tarball, "-p", path(&collections)],
    );
    assert!(
        collections
            .join("ansible_collections/imprint/cloud/plugins/modules/server.py")
            .exists()
    );
    collections
}

/// Runs ansible-playbook and ad-hoc `ansible` as one account.
struct Ansible {
    venv: PathBuf,
    collections: PathBuf,
    home: PathBuf,
    endpoint: String,
    token: String,
}

impl Ansible {
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.venv.join("bin").join(program));
        c.env("ANSIBLE_COLLECTIONS_PATH", &self.collections)
            .env("ANSIBLE_HOME", &self.home)
            .env("ANSIBLE_LOCAL_TEMP", self.home.join("tmp"))
            .env("ANSIBLE_REMOTE_TEMP", self.home.join("remote-tmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .env("ANSIBLE_LOCALHOST_WARNING", "false")
            .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "false")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "false")
            .env("LC_ALL", "C.UTF-8")
            .env("HOME", &self.home)
            .env("IMPRINT_ENDPOINT", &self.endpoint)
            .env("IMPRINT_TOKEN", &self.token)
            .env_remove("IMPRINT_CA")
            .env_remove("IMPRINT_CONFIG")
            .env_remove("ANSIBLE_CONFIG")
            .args([
                "-e",
                &format!(
                    "ansible_python_interpreter={}",
                    path(&self.venv.join("bin/python"))
                ),
            ]);
        c
    }

    fn output(what: &str, mut c: Command) -> (i32, String) {
        let out = c.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("--- {what}:\n{text}");
        (out.status.code().unwrap_or(-1), text)
    }

    /// `ansible-playbook fleet.yml -e @vars ARGS`: (exit code, output).
    fn playbook(&self, vars: &Path, args: &[&str]) -> (i32, String) {
        let mut c = self.command("ansible-playbook");
        c.arg(workspace().join("clients/ansible/examples/fleet.yml"))
            .arg("-e")
            .arg(format!("@{}", path(vars)))
            .args(args);
        Self::output(&format!("ansible-playbook {args:?}"), c)
    }

    /// `ansible localhost -m imprint.cloud.MODULE -a ARGS`.
    fn module(&self, module: &str, args: &str) -> (i32, String) {
        let mut c = self.command("ansible");
        c.args([
            "localhost",
            "-c",
            "local",
            "-m",
            &format!("imprint.cloud.{module}"),
            "-a",
            args,
        ]);
        Self::output(&format!("{module} {args}"), c)
    }
}

/// The PLAY RECAP counters of localhost (`ok`, `changed`, `failed`...).
fn recap(out: &str) -> BTreeMap<String, u32> {
    let line = out
        .lines()
        .skip_while(|l| !l.starts_with("PLAY RECAP"))
        .find(|l| l.starts_with("localhost"))
        .unwrap_or_else(|| panic!("no PLAY RECAP for localhost in:\n{out}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().expect("a count")))
        .collect()
}

fn assert_recap(out: &str, changed: u32, failed: u32) {
    let r = recap(out);
    assert_eq!(
        (r["changed"], r["failed"], r["unreachable"]),
        (changed, failed, 0),
        "changed, failed, unreachable in {r:?}:\n{out}"
    );
}

/// Every image alice sees named `name`, deprecated ones included.
async fn images_named(api: &mut Api, name: &str) -> Vec<pb::Image> {
    let mut all = Vec::new();
    for state in [pb::ImageState::Unspecified, pb::ImageState::Deprecated] {
        let list = api
            .images
            .list_images(pb::ListImagesRequest {
                name_prefix: name.into(),
                state: state as i32,
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("list images")
            .into_inner();
        all.extend(list.images.into_iter().filter(|i| i.name == name));
    }
    all
}

/// The names of alice's guests on the host, as the daemon lists them.
async fn guests(endpoint: &str, token: &str) -> Vec<String> {
    let mut c = GuestServiceClient::connect(endpoint.to_string())
        .await
        .expect("connect");
    let mut names: Vec<String> = c
        .list_guests(authed(
            token,
            pb::ListHostGuestsRequest { host: HOST.into() },
        ))
        .await
        .expect("list guests")
        .into_inner()
        .guests
        .into_iter()
        .map(|g| g.name)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn playbook_captures_deploys_converges_and_reports_grpc_codes() {
    let _serial = SERIAL.lock().await;
    let wd = Workdir::new("imprint-ansible-e2e-");
    let daemon = DaemonProcess::start(&wd.path().join("imprintd"), &wd.path().join("store"));
    let registration = daemon.agent_args(HOST);
    let registration: Vec<&str> = registration.iter().map(String::as_str).collect();
    let f = Fixture::in_workdir(wd, &registration);
    let alice = daemon.account("alice");
    daemon.account("bob");
    registered(&daemon.endpoint(), HOST, &alice).await;
    let mut images = api(&daemon.endpoint(), &alice);

    let disk = f.disk_in_pool_a(&f.guest.disk, "src-vda.raw");
    let (_src, source, _) = f.boot_guest("src", &[(&disk, "raw")]);
    daemon.assign_guest(HOST, &source, "alice").await;
    // The absent play deletes these; undefined on drop should it fail
    // (their volumes are in pool B, inside the work directory).
    let web: Vec<String> = (1..=3).map(|i| format!("imp-{}-web{i}", f.tag)).collect();
    let _domains: Vec<Domain> = web.iter().map(|n| Domain::adopt(n)).collect();

    let venv = venv_with_client(f.wd.path());
    let collections = install_collection(&venv, f.wd.path());
    let home = f.wd.path().join("ansible-home");
    std::fs::create_dir_all(&home).expect("ansible home");
    let ansible = Ansible {
        venv,
        collections,
        home,
        endpoint: daemon.endpoint(),
        token: alice.clone(),
    };
    let image_name = format!("golden-{}", f.tag);
    let two = serde_json::json!([
        {"name": web[0], "address": "192.0.2.51/24"},
        {"name": web[1], "address": "192.0.2.52/24"},
    ]);
    let vars = f.wd.path().join("vars.json");
    std::fs::write(
        &vars,
        serde_json::json!({
            "imprint_host": HOST,
            "source_guest": source,
            "image_name": image_name,
            "image_notes": "golden v1",
            "image_tags": ["e2e", "web"],
            "shutdown_timeout": 90,
            // busybox: no operating system to generalize
            "keep_identity": true,
            "gateway4": "192.0.2.1",
            "nameservers": ["192.0.2.53"],
            "servers": two,
        })
        .to_string(),
    )
    .expect("vars");
    let extra = |v: serde_json::Value| v.to_string();

    // 1. A capture and two deploys (the recap counts tasks: two changed).
    let (code, out) = ansible.playbook(&vars, &[]);
    assert_eq!(code, 0, "{out}");
    assert_recap(&out, 2, 0);
    assert_eq!(
        out.matches("changed: [localhost] => (item=imp-").count(),
        2,
        "two servers deployed:\n{out}"
    );
    let found = images_named(&mut images, &image_name).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let image = found[0].clone();
    assert_eq!(image.state, pb::ImageState::Active as i32, "{image:?}");
    assert_eq!(image.source_guest, source);
    assert_eq!(image.notes, "golden v1");
    assert_eq!(image.tags, ["e2e", "web"]);
    assert_eq!(
        guests(&daemon.endpoint(), &alice).await,
        [source.as_str(), &web[0], &web[1]]
    );
    for (name, addr) in [(&web[0], "192.0.2.51/24"), (&web[1], "192.0.2.52/24")] {
        let log = wait_for(
            &f.consoles.join(format!("{name}.log")),
            "IMPRINT-READY",
            1,
            Duration::from_secs(120),
        );
        assert!(
            log.lines()
                .any(|l| l.trim() == format!("IMPRINT-ADDR {addr}")),
            "{name} has {addr}:\n{log}"
        );
        assert_eq!(virsh(&["domstate", name]).trim(), "running", "{name}");
    }

    // 2. The same again: nothing to do.
    let (code, out) = ansible.playbook(&vars, &[]);
    assert_eq!(code, 0, "{out}");
    assert_recap(&out, 0, 0);

    // 3. Check mode on changed input (new notes, a third server): both
    // reported, the diff shows the notes, the daemon is left as it was.
    let images_before = images_named(&mut images, &image_name).await;
    let three = serde_json::json!([
        {"name": web[0], "address": "192.0.2.51/24"},
        {"name": web[1], "address": "192.0.2.52/24"},
        {"name": web[2], "address": "192.0.2.53/24"},
    ]);
    let (code, out) = ansible.playbook(
        &vars,
        &[
            "--check",
            "--diff",
            "-e",
            &extra(serde_json::json!({"image_notes": "golden v2", "servers": three})),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_recap(&out, 2, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with('+') && l.contains("\"notes\": \"golden v2\"")),
        "the diff shows the new notes:\n{out}"
    );
    assert_eq!(images_named(&mut images, &image_name).await, images_before);
    assert_eq!(
        guests(&daemon.endpoint(), &alice).await,
        [source.as_str(), &web[0], &web[1]]
    );
    assert!(
        virsh(&["list", "--all", "--name"])
            .lines()
            .all(|n| n.trim() != web[2]),
        "no third guest defined"
    );

    // 4. For real: notes and shares converge on the same image (no
    // recapture), then nothing changes.
    let converge =
        extra(serde_json::json!({"image_notes": "golden v2", "image_shared_with": ["bob"]}));
    let (code, out) = ansible.playbook(&vars, &["-e", &converge]);
    assert_eq!(code, 0, "{out}");
    assert_recap(&out, 1, 0);
    let found = images_named(&mut images, &image_name).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, image.id, "the same image");
    assert_eq!(found[0].notes, "golden v2");
    let members: Vec<&str> = found[0]
        .members
        .iter()
        .map(|m| m.account.as_str())
        .collect();
    assert_eq!(members, ["bob"]);
    let (code, out) = ansible.playbook(&vars, &["-e", &converge]);
    assert_eq!(code, 0, "{out}");
    assert_recap(&out, 0, 0);

    // 5. Bad input: the daemon's NOT_FOUND with its code in msg; options
    // the argument spec refuses; nothing is deployed.
    let missing = uuid::Uuid::new_v4().to_string();
    let (code, out) = ansible.module(
        "server",
        &format!(
            "name={} host={HOST} image={missing} keep_identity=true",
            web[2]
        ),
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!(
            "\"msg\": \"NOT_FOUND: image {missing} not found\""
        )),
        "{out}"
    );
    assert!(out.contains("\"code\": \"NOT_FOUND\""), "{out}");
    let (code, out) = ansible.module(
        "image",
        &format!("name=other host={HOST} guest=no-such-guest"),
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("\"msg\": \"NOT_FOUND: "), "{out}");
    let (code, out) = ansible.module("server", &format!("name=x host={HOST} state=gone"));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("value of state must be one of: present, absent, got: gone"),
        "{out}"
    );
    let (code, out) = ansible.module("server", &format!("name=x host={HOST}"));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("state is present but all of the following are missing: image"),
        "{out}"
    );
    let (code, out) = ansible.module(
        "server",
        &format!("name=x host={HOST} image={image_name} disk_sizes=lots"),
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("\"msg\": \"INVALID_ARGUMENT: "), "{out}");
    assert_eq!(
        guests(&daemon.endpoint(), &alice).await,
        [source.as_str(), &web[0], &web[1]]
    );

    // 6. Absent in check mode: the servers' and the image's deletes are
    // reported, nothing is deleted.
    let absent = extra(serde_json::json!({"fleet_state": "absent"}));
    let (code, out) = ansible.playbook(&vars, &["--check", "-e", &absent]);
    assert_eq!(code, 0, "{out}");
    assert_recap(&out, 2, 0);
    assert_eq!(
        guests(&daemon.endpoint(), &alice).await,
        [source.as_str(), &web[0], &web[1]]
    );
    assert_eq!(images_named(&mut images, &image_name).await.len(), 1);

    // 7. For real: the daemon deletes the servers (forced off, volumes
    // deleted, undefined), then the image; once gone, nothing is left to
    // do.
    let volumes: Vec<String> = web[..2]
        .iter()
        .flat_map(|name| {
            virsh(&["domblklist", name])
                .lines()
                .skip(2)
                .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
                .filter(|p| p.starts_with('/'))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(volumes.len(), 4, "a disk and a seed each: {volumes:?}");
    let (code, out) = ansible.playbook(&vars, &["-e", &absent]);
    assert_eq!(code, 0, "{out}");
    assert_recap(&out, 2, 0);
    assert_eq!(guests(&daemon.endpoint(), &alice).await, [source.as_str()]);
    for name in &web[..2] {
        let info = Command::new("virsh")
            .args(["-c", "qemu:///system", "dominfo", name])
            .output()
            .expect("virsh");
        assert!(!info.status.success(), "{name} undefined");
    }
    for v in &volumes {
        assert!(!Path::new(v).exists(), "{v} deleted");
    }
    assert_eq!(images_named(&mut images, &image_name).await, []);
    let gone = images.image(&image.id).await.expect_err("deleted");
    assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
    let (code, out) = ansible.playbook(&vars, &["-e", &absent]);
    assert_eq!(code, 0, "{out}");
    assert_recap(&out, 0, 0);
}

#[tokio::test]
async fn collection_documents_every_module_and_passes_sanity() {
    let _serial = SERIAL.lock().await;
    let wd = Workdir::new("imprint-ansible-sanity-");
    let script = workspace().join("clients/ansible/tests/sanity.sh");
    let out = Command::new(&script)
        .arg(wd.path())
        .output()
        .expect("run sanity.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "sanity.sh failed:\n{text}");
    for module in ["host_info", "image", "image_info", "server"] {
        assert!(
            text.contains(&format!("ansible-doc imprint.cloud.{module}: ok")),
            "{module} documented:\n{text}"
        );
    }
    for test in [
        "validate-modules",
        "import",
        "pylint",
        "ansible-doc",
        "yamllint",
    ] {
        assert!(
            text.contains(&format!("Running sanity test \"{test}\"")),
            "{test} ran:\n{text}"
        );
    }
    assert!(text.contains("ansible-test sanity: passed"), "{text}");
}
