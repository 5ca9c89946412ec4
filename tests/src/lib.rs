//! Test infrastructure for the end-to-end tests in `tests/tests/`: a real
//! libvirtd, real QEMU guests built by `tests/guests/*.sh`, and the real
//! `imprint-agent` binary.
//!
//! Nothing here skips: when libvirt or a guest image is missing, the
//! helpers panic with what to install or run.

// A test harness: a step that fails fails the test, with what it expected.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test harness: a failed step fails the test"
)]

pub mod daemon_api;
pub mod pg;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// A binary of the workspace, built by `cargo test --workspace`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built; run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// Run a command, panic with its stderr if it fails; return stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (run scripts/install-deps.sh)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Python test venv (`scripts/python-venv.sh`) with the client of this
/// tree installed (its wheel built into `scratch/dist`); the venv's
/// directory.
pub fn venv_with_client(scratch: &Path) -> PathBuf {
    let root = workspace();
    let utf8 = |p: &Path| p.to_str().expect("utf8").to_string();
    let venv = PathBuf::from(run(&utf8(&root.join("scripts/python-venv.sh")), &[]).trim());
    let wheel = run(
        &utf8(&root.join("clients/python/build-wheel.sh")),
        &[&utf8(&scratch.join("dist"))],
    );
    run(
        &utf8(&venv.join("bin/python")),
        &[
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--force-reinstall",
            "--no-deps",
            wheel.trim(),
        ],
    );
    venv
}

/// `virsh -c qemu:///system ARGS`.
pub fn virsh(args: &[&str]) -> String {
    let mut all = vec!["-c", "qemu:///system"];
    all.extend_from_slice(args);
    run("virsh", &all)
}

/// The same, but failures are fine (clean-up).
pub fn virsh_quiet(args: &[&str]) {
    let _ = Command::new("virsh")
        .arg("-c")
        .arg("qemu:///system")
        .args(args)
        .output();
}

/// The domain type tests must use on this host: `kvm` only with hardware
/// virtualisation (PVM-style /dev/kvm hangs stock kernels).
pub fn domain_type() -> &'static str {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpu.split_whitespace().any(|w| w == "vmx" || w == "svm");
    if hw && !Path::new("/sys/module/kvm_pvm").exists() {
        "kvm"
    } else {
        "qemu"
    }
}

/// The busybox test guest: (kernel, initrd, disk, disk that ignores ACPI).
#[derive(Debug, Clone)]
pub struct BusyboxGuest {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Root disk (raw, 64 MiB).
    pub disk: PathBuf,
    /// The same disk with `/imprint/ignore-acpi`.
    pub disk_ignore_acpi: PathBuf,
}

/// Build (or reuse from the cache) the busybox guest.
pub fn busybox_guest() -> BusyboxGuest {
    let script = workspace().join("tests/guests/build-busybox-guest.sh");
    let out = run(script.to_str().expect("utf8"), &[]);
    let get = |key: &str| -> PathBuf {
        out.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| PathBuf::from(v.trim())))
            .unwrap_or_else(|| panic!("build-busybox-guest.sh printed no {key:?} line:\n{out}"))
    };
    BusyboxGuest {
        kernel: get("kernel:"),
        initrd: get("initrd:"),
        disk: get("disk:"),
        disk_ignore_acpi: get("disk (ignores ACPI power button):"),
    }
}

/// The self-booting test disk (MBR, GRUB in the gap, the busybox guest on
/// partition 1): (raw, qcow2). Built or reused from the cache.
pub fn grub_guest() -> (PathBuf, PathBuf) {
    boot_disk("build-grub-guest.sh")
}

/// The UEFI test disk (GPT, an EFI system partition with GRUB, the busybox
/// guest on partition 2): (raw, qcow2).
pub fn uefi_guest() -> (PathBuf, PathBuf) {
    boot_disk("build-uefi-guest.sh")
}

fn boot_disk(builder: &str) -> (PathBuf, PathBuf) {
    let script = workspace().join("tests/guests").join(builder);
    let out = run(script.to_str().expect("utf8"), &[]);
    let get = |key: &str| -> PathBuf {
        out.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| PathBuf::from(v.trim())))
            .unwrap_or_else(|| panic!("{builder} printed no {key:?} line:\n{out}"))
    };
    (get("disk:"), get("qcow2:"))
}

/// A scratch directory QEMU (user libvirt-qemu) can traverse, removed on drop.
#[derive(Debug)]
pub struct Workdir(pub tempfile::TempDir);

impl Workdir {
    /// New, under /var/tmp (not a tmpfs; big sparse files are fine).
    pub fn new(prefix: &str) -> Self {
        let d = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/var/tmp")
            .expect("workdir");
        run("chmod", &["0755", d.path().to_str().expect("utf8")]);
        Self(d)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Copy `src` in as `name` (sparse) and return the new path.
    pub fn copy_in(&self, src: &Path, name: &str) -> PathBuf {
        let dst = self.path().join(name);
        run(
            "cp",
            &[
                "--sparse=always",
                src.to_str().expect("utf8"),
                dst.to_str().expect("utf8"),
            ],
        );
        dst
    }
}

/// A small tmpfs of its own (a filesystem that fills up for real),
/// unmounted and removed on drop.
#[derive(Debug)]
pub struct Tmpfs {
    dir: Workdir,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (`mount -o size=`, e.g. `48m`).
    pub fn mount(size: &str) -> Self {
        let dir = Workdir::new("imprint-tmpfs-");
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
                dir.path().to_str().expect("utf8"),
            ],
        );
        Self { dir }
    }

    /// Its mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A `dir` storage pool, removed (with its volumes) on drop.
#[derive(Debug)]
pub struct Pool {
    /// Pool name.
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
}

impl Pool {
    /// Define and start a pool in `dir`.
    pub fn new(name: &str, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("pool dir");
        run("chmod", &["0755", dir.to_str().expect("utf8")]);
        virsh_quiet(&["pool-destroy", name]);
        virsh_quiet(&["pool-undefine", name]);
        virsh(&[
            "pool-define-as",
            name,
            "dir",
            "--target",
            dir.to_str().expect("utf8"),
        ]);
        virsh(&["pool-start", name]);
        Self {
            name: name.into(),
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        virsh_quiet(&["pool-destroy", &self.name]);
        virsh_quiet(&["pool-undefine", &self.name]);
    }
}

/// A defined domain, destroyed and undefined on drop.
#[derive(Debug)]
pub struct Domain {
    /// Name.
    pub name: String,
}

impl Domain {
    /// Define from XML (written next to `dir`).
    pub fn define(name: &str, xml: &str, dir: &Path) -> Self {
        virsh_quiet(&["destroy", name]);
        virsh_quiet(&["undefine", name, "--nvram", "--checkpoints-metadata"]);
        let p = dir.join(format!("{name}.xml"));
        std::fs::write(&p, xml).expect("xml");
        virsh(&["define", p.to_str().expect("utf8")]);
        Self { name: name.into() }
    }

    /// Adopt a domain someone else defined (the agent), for clean-up.
    pub fn adopt(name: &str) -> Self {
        Self { name: name.into() }
    }

    /// `virsh domstate`.
    pub fn state(&self) -> String {
        virsh(&["domstate", &self.name]).trim().to_string()
    }

    /// Start it.
    pub fn start(&self) {
        virsh(&["start", &self.name]);
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        // Captures leave a checkpoint (incremental recaptures): libvirt
        // refuses to undefine a domain with checkpoint metadata otherwise.
        virsh_quiet(&["destroy", &self.name]);
        virsh_quiet(&["undefine", &self.name, "--nvram", "--checkpoints-metadata"]);
    }
}

/// XML of a busybox test guest with its disks (raw files), a UDP NIC on
/// loopback, and the serial console appended to `log`.
pub fn busybox_xml(
    name: &str,
    g: &BusyboxGuest,
    dir: &Path,
    disks: &[(&Path, &str)],
    log: &Path,
    udp_port: u16,
) -> String {
    guest_xml(name, (&g.kernel, &g.initrd), 256, dir, disks, log, udp_port)
}

/// XML of a direct-kernel-boot test guest: kernel and initrd copied into
/// `dir` (libvirt relabels them while the guest runs), `memory_mib` of RAM,
/// its disks, a UDP NIC on loopback, the serial console appended to `log`.
pub fn guest_xml(
    name: &str,
    (kernel_src, initrd_src): (&Path, &Path),
    memory_mib: u32,
    dir: &Path,
    disks: &[(&Path, &str)],
    log: &Path,
    udp_port: u16,
) -> String {
    let kernel = dir.join(format!("{name}-vmlinuz"));
    let initrd = dir.join(format!("{name}-initrd.img"));
    std::fs::copy(kernel_src, &kernel).expect("kernel");
    std::fs::copy(initrd_src, &initrd).expect("initrd");
    let mut devs = String::new();
    for (i, (path, format)) in disks.iter().enumerate() {
        devs.push_str(&format!(
            "<disk type='file' device='disk'><driver name='qemu' type='{format}'/><source file='{}'/><target dev='vd{}' bus='virtio'/></disk>\n",
            path.display(),
            char::from(b"abcdefghijklmnopqrstuvwxyz"[i])
        ));
    }
    format!(
        "<domain type='{dt}'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{k}</kernel>
    <initrd>{i}</initrd>
    <cmdline>console=ttyS0 root=/dev/vda</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    {devs}
    <interface type='udp'>
      <source address='127.0.0.1' port='{rp}'><local address='127.0.0.1' port='{lp}'/></source>
      <model type='virtio'/>
    </interface>
    <serial type='file'><source path='{log}' append='on'/><target port='0'/></serial>
    <console type='file'><source path='{log}' append='on'/><target type='serial' port='0'/></console>
  </devices>
</domain>",
        dt = domain_type(),
        k = kernel.display(),
        i = initrd.display(),
        rp = udp_port + 1,
        lp = udp_port,
        log = log.display(),
    )
}

/// `xml` (a domain) with the guest agent's virtio-serial channel
/// (`org.qemu.guest_agent.0`), for guests that run qemu-guest-agent.
pub fn with_guest_agent(xml: &str) -> String {
    xml.replacen(
        "</devices>",
        "  <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n  </devices>",
        1,
    )
}

/// A guest agent command through libvirt (`virsh qemu-agent-command`)
/// that waits at most `timeout_s` seconds: the reply's `return` value, or
/// virsh's error text.
pub fn agent_command(
    domain: &str,
    json: &str,
    timeout_s: u32,
) -> Result<serde_json::Value, String> {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "qemu-agent-command", domain, json])
        .args(["--timeout", &timeout_s.to_string()])
        .output()
        .expect("virsh");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("agent reply is JSON");
    Ok(v["return"].clone())
}

/// Wait until `domain`'s guest agent answers a ping.
pub fn wait_for_guest_agent(domain: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        match agent_command(domain, r#"{"execute":"guest-ping"}"#, 5) {
            Ok(_) => return,
            Err(e) => assert!(
                start.elapsed() < timeout,
                "the guest agent of {domain} did not answer within {timeout:?}: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Run `script` with `/bin/sh -c` in the guest through its agent
/// (guest-exec); wait at most `timeout` for it to end; its exit code.
pub fn guest_exec(domain: &str, script: &str, timeout: Duration) -> i64 {
    let cmd = serde_json::json!({
        "execute": "guest-exec",
        "arguments": { "path": "/bin/sh", "arg": ["-c", script] },
    });
    let pid = agent_command(domain, &cmd.to_string(), 30)
        .unwrap_or_else(|e| panic!("guest-exec {script:?} in {domain}: {e}"))["pid"]
        .as_i64()
        .expect("pid");
    let status = serde_json::json!({ "execute": "guest-exec-status", "arguments": { "pid": pid } });
    let start = Instant::now();
    loop {
        // libvirt refuses agent commands while the guest is paused (a test
        // may cause a pause on purpose): ask again until the timeout.
        let s = match agent_command(domain, &status.to_string(), 30) {
            Ok(s) => s,
            Err(e) if e.contains("domain is not running") => serde_json::Value::Null,
            Err(e) => panic!("guest-exec-status in {domain}: {e}"),
        };
        if s["exited"].as_bool() == Some(true) {
            return s["exitcode"].as_i64().unwrap_or(-1);
        }
        assert!(
            start.elapsed() < timeout,
            "{script:?} did not end in {domain} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until the serial log at `log` holds `pattern` at least `count`
/// times; return the whole log.
pub fn wait_for(log: &Path, pattern: &str, count: usize, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log)
            .unwrap_or_default()
            .replace('\r', "");
        if text.matches(pattern).count() >= count {
            return text;
        }
        assert!(
            start.elapsed() < timeout,
            "no {count}x {pattern:?} in {} after {timeout:?}; log:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The value after `KEY ` on the last line starting with it.
pub fn last_value(log: &str, key: &str) -> Option<String> {
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_string()))
}

/// A server binary of ours that prints `listening on ADDR` when ready,
/// killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:PORT`, or `unix:/PATH` for an agent's socket.
    pub endpoint: String,
}

impl ServerProcess {
    /// Start `binary` with `args` and wait for its `listening on` line.
    pub fn start(binary_name: &str, args: &[&std::ffi::OsStr]) -> Self {
        Self::start_env(binary_name, args, &[])
    }

    /// [`ServerProcess::start`] with extra environment variables.
    pub fn start_env(
        binary_name: &str,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        let mut child = Command::new(binary(binary_name))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary_name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{binary_name} did not start: {line:?}"))
            .to_string();
        // A UNIX socket (`unix:/PATH`) is already a URL tonic dials.
        let endpoint = if addr.starts_with("unix:") {
            addr
        } else {
            format!("http://{addr}")
        };
        Self { child, endpoint }
    }

    /// Stop it as systemd does (SIGTERM) and wait for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "SIGTERM to {pid}");
        self.child.wait().expect("wait")
    }

    /// Kill it hard (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `imprint-agent`.
pub type AgentProcess = ServerProcess;

impl AgentProcess {
    /// Start the agent on a kernel-chosen port with these extra flags.
    pub fn start_agent(store: &Path, journal: &Path, extra: &[&str]) -> Self {
        Self::start_agent_env(store.as_os_str(), journal, extra, &[])
    }

    /// [`AgentProcess::start_agent`] on any store location (a directory or
    /// `s3://...`) with extra environment variables (S3 keys). Without TLS
    /// flags the agent serves on a UNIX socket beside its journal (as in
    /// production: plaintext never goes over TCP); with them, on a
    /// kernel-chosen loopback port.
    pub fn start_agent_env(
        store: &std::ffi::OsStr,
        journal: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Self {
        let socket = format!(
            "unix:{}",
            journal.with_extension("sock").to_str().expect("utf8")
        );
        let listen = if extra.contains(&"--tls-cert") {
            "127.0.0.1:0"
        } else {
            socket.as_str()
        };
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--listen".as_ref(),
            listen.as_ref(),
            "--store".as_ref(),
            store,
        ];
        args.extend(["--journal-dir".as_ref(), journal.as_os_str()]);
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        Self::start_env("imprint-agent", &args, &env_refs(env))
    }
}

/// Owned environment pairs as [`ServerProcess::start_env`] takes them.
fn env_refs(env: &[(String, String)]) -> Vec<(&str, &std::ffi::OsStr)> {
    env.iter()
        .map(|(k, v)| (k.as_str(), std::ffi::OsStr::new(v)))
        .collect()
}

/// A free local TCP port (for servers that must come back on the same one).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A running `imprintd` with its embedded catalog in `state` and the store
/// at `store`, on a fixed port so it can be restarted under the same
/// address (agents keep heartbeating to it).
#[derive(Debug)]
pub struct DaemonProcess {
    /// The process.
    pub server: ServerProcess,
    /// Catalog directory.
    pub state: PathBuf,
    /// Image store.
    pub store: PathBuf,
    /// `127.0.0.1:PORT`.
    pub listen: String,
    /// Extra flags.
    pub extra: Vec<String>,
    /// Extra environment variables (S3 keys).
    pub env: Vec<(String, String)>,
}

impl DaemonProcess {
    /// Start on a free port.
    pub fn start(state: &Path, store: &Path) -> Self {
        Self::start_with(state, store, &[])
    }

    /// Start on a free port with extra flags (kept for restarts).
    pub fn start_with(state: &Path, store: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(state, store, extra, &[])
    }

    /// [`DaemonProcess::start_with`] with extra environment variables.
    pub fn start_with_env(
        state: &Path,
        store: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let listen = format!("127.0.0.1:{}", free_tcp_port());
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let server = Self::spawn(state, store, &listen, &extra, &env);
        Self {
            server,
            state: state.into(),
            store: store.into(),
            listen,
            extra,
            env,
        }
    }

    fn spawn(
        state: &Path,
        store: &Path,
        listen: &str,
        extra: &[String],
        env: &[(String, String)],
    ) -> ServerProcess {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--listen".as_ref(),
            listen.as_ref(),
            "--state-dir".as_ref(),
            state.as_os_str(),
            "--store".as_ref(),
            store.as_os_str(),
        ];
        // A lint of every captured image would load the CI's two cores
        // under every test: only the tests that want it ask for it.
        if !extra.iter().any(|a| a == "--auto-lint") {
            args.extend(["--auto-lint", "false"].map(std::ffi::OsStr::new));
        }
        // The tests of lazy deploys ask for them; the others time and
        // check deploys that write their volumes first.
        if !extra.iter().any(|a| a == "--lazy-deploys") {
            args.extend(["--lazy-deploys", "false"].map(std::ffi::OsStr::new));
        }
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        ServerProcess::start_env("imprintd", &args, &env_refs(env))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.server.endpoint.clone()
    }

    /// SIGKILL it and start it again on the same port and catalog.
    pub fn crash_and_restart(&mut self) {
        self.server.kill();
        self.server = Self::spawn(
            &self.state,
            &self.store,
            &self.listen,
            &self.extra,
            &self.env,
        );
    }

    /// `imprintd account ...` on this daemon's catalog; its stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        let mut all = vec!["--state-dir", self.state.to_str().expect("utf8")];
        // A shared catalog (`--catalog postgres://...`) among the extra flags.
        if let Some(i) = self.extra.iter().position(|a| a == "--catalog") {
            all.extend(["--catalog", self.extra[i + 1].as_str()]);
        }
        all.push("account");
        all.extend(args);
        run(binary("imprintd").to_str().expect("utf8"), &all)
    }

    /// `imprintd host add NAME` on this daemon's catalog: the host's token,
    /// written to a file (mode 0600) whose path is returned.
    pub fn host_token(&self, name: &str) -> PathBuf {
        let mut all = vec!["--state-dir", self.state.to_str().expect("utf8")];
        if let Some(i) = self.extra.iter().position(|a| a == "--catalog") {
            all.extend(["--catalog", self.extra[i + 1].as_str()]);
        }
        all.extend(["host", "add", name]);
        let token = run(binary("imprintd").to_str().expect("utf8"), &all);
        // A shared catalog (PostgreSQL) leaves the state directory unmade.
        std::fs::create_dir_all(&self.state).expect("state directory");
        let path = self.state.join(format!("host-{name}.token"));
        std::fs::write(&path, token.trim()).expect("write host token");
        path
    }

    /// Agent flags that register host `name` with this daemon, with the
    /// host's credential.
    pub fn agent_args(&self, name: &str) -> Vec<String> {
        vec![
            "--daemon".into(),
            self.endpoint(),
            "--host-name".into(),
            name.into(),
            "--host-token-file".into(),
            self.host_token(name).to_str().expect("utf8").into(),
        ]
    }

    /// Give guest `guest` of `host` to `account` as the admin account
    /// `imprint-test-admin` (created on first use).
    pub async fn assign_guest(&self, host: &str, guest: &str, account: &str) {
        let admin = self.admin_token();
        let ch = tonic::transport::Endpoint::from_shared(self.endpoint())
            .expect("url")
            .connect()
            .await
            .expect("connect to imprintd");
        imprint_proto::v1::guest_service_client::GuestServiceClient::new(ch)
            .assign_guests(authed(
                &admin,
                imprint_proto::v1::AssignGuestsRequest {
                    host: host.into(),
                    guests: vec![guest.into()],
                    account: account.into(),
                    all_unowned: false,
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("assign {guest} on {host} to {account}: {e}"));
    }

    /// The token of this daemon's admin account (made on first use).
    pub fn admin_token(&self) -> String {
        let path = self.state.join("admin.token");
        if let Ok(t) = std::fs::read_to_string(&path) {
            return t;
        }
        let token = self
            .admin(&["create", "imprint-test-admin", "--admin"])
            .trim()
            .to_string();
        std::fs::create_dir_all(&self.state).expect("state directory");
        std::fs::write(&path, &token).expect("write admin token");
        token
    }

    /// Create an account allowed on every host; its token.
    pub fn account(&self, name: &str) -> String {
        let token = self
            .admin(&["create", name, "--can-publish"])
            .trim()
            .to_string();
        self.admin(&["allow-host", name, "*"]);
        token
    }
}

/// Certificates for mutual TLS tests, made with the `openssl` command: a
/// CA, a daemon and an agent certificate it signs (valid for 127.0.0.1 and
/// localhost), and an outsider signed by another CA. [`TestPki::agent_for`]
/// makes agent certificates bound to a host name.
#[derive(Debug)]
pub struct TestPki {
    /// Where the files are.
    pub dir: PathBuf,
    /// CA certificate.
    pub ca: PathBuf,
    /// (certificate, key) of the daemon.
    pub daemon: (PathBuf, PathBuf),
    /// (certificate, key) of an agent, naming no host (localhost only).
    pub agent: (PathBuf, PathBuf),
    /// (certificate, key) signed by an unrelated CA.
    pub outsider: (PathBuf, PathBuf),
}

impl TestPki {
    /// Make everything in `dir`.
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("pki dir");
        for name in ["test-ca", "other-ca"] {
            let p = |ext: &str| dir.join(format!("{name}.{ext}"));
            run(
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    p("key").to_str().expect("utf8"),
                    "-out",
                    p("pem").to_str().expect("utf8"),
                ],
            );
        }
        let mut pki = Self {
            dir: dir.into(),
            ca: dir.join("test-ca.pem"),
            daemon: Default::default(),
            agent: Default::default(),
            outsider: Default::default(),
        };
        pki.daemon = pki.leaf("daemon", "test-ca", &[]);
        pki.agent = pki.leaf("agent", "test-ca", &[]);
        pki.outsider = pki.leaf("outsider", "other-ca", &[]);
        pki
    }

    /// An agent certificate of the CA whose subjectAltName also holds
    /// `host` (the name it registers as).
    pub fn agent_for(&self, host: &str) -> (PathBuf, PathBuf) {
        self.leaf(&format!("agent-{host}"), "test-ca", &[host])
    }

    /// A certificate `name` signed by `ca`, valid for 127.0.0.1, localhost
    /// and `dns`.
    fn leaf(&self, name: &str, ca: &str, dns: &[&str]) -> (PathBuf, PathBuf) {
        let p = |n: String| self.dir.join(n);
        let s = |p: &Path| p.to_str().expect("utf8").to_string();
        let ext = p(format!("{name}.ext"));
        let sans: String = dns.iter().map(|d| format!(",DNS:{d}")).collect();
        std::fs::write(
            &ext,
            format!(
                "subjectAltName=IP:127.0.0.1,DNS:localhost{sans}\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )
        .expect("ext");
        let (cert, key, csr) = (
            p(format!("{name}.pem")),
            p(format!("{name}.key")),
            p(format!("{name}.csr")),
        );
        run(
            "openssl",
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &s(&key),
                "-out",
                &s(&csr),
            ],
        );
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&p(format!("{ca}.pem"))),
                "-CAkey",
                &s(&p(format!("{ca}.key"))),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &s(&ext),
                "-out",
                &s(&cert),
            ],
        );
        (cert, key)
    }
}

/// `msg` with `authorization: Bearer <token>`.
pub fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    r
}

/// A free local UDP port pair base (`p` and `p + 1`).
pub fn free_udp_port() -> u16 {
    loop {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let p = a.local_addr().expect("addr").port();
        if p < 65000 && std::net::UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// Agent operation `id` as it is now.
pub async fn operation(
    client: &mut imprint_proto::v1::agent_service_client::AgentServiceClient<
        tonic::transport::Channel,
    >,
    id: &str,
) -> imprint_proto::v1::AgentOperation {
    client
        .get_operation(imprint_proto::v1::GetOperationRequest {
            operation_id: id.into(),
        })
        .await
        .expect("get operation")
        .into_inner()
}

/// Poll `reached` (an observable state: a file, a process, a size) until
/// it holds; fail naming `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut reached: impl FnMut() -> bool) {
    let start = Instant::now();
    while !reached() {
        assert!(start.elapsed() < timeout, "not within {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll agent operation `id` until `reached` holds of it (it must still
/// run; `what` says what is awaited); returns it then.
pub async fn operation_until(
    client: &mut imprint_proto::v1::agent_service_client::AgentServiceClient<
        tonic::transport::Channel,
    >,
    id: &str,
    what: &str,
    reached: impl Fn(&imprint_proto::v1::AgentOperation) -> bool,
) -> imprint_proto::v1::AgentOperation {
    let start = Instant::now();
    loop {
        let cur = operation(client, id).await;
        if reached(&cur) {
            return cur;
        }
        assert_eq!(
            cur.state,
            imprint_proto::v1::OperationState::Running as i32,
            "ended before {what}: {cur:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no {what}: {cur:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll agent operation `id` until its phase is `phase` (it must still
/// run); returns it then.
pub async fn phase_reached(
    client: &mut imprint_proto::v1::agent_service_client::AgentServiceClient<
        tonic::transport::Channel,
    >,
    id: &str,
    phase: &str,
) -> imprint_proto::v1::AgentOperation {
    operation_until(client, id, &format!("phase {phase:?}"), |o| {
        o.phase == phase
    })
    .await
}

/// Follow an agent operation until it ends; return its final state.
pub async fn watch(
    client: &mut imprint_proto::v1::agent_service_client::AgentServiceClient<
        tonic::transport::Channel,
    >,
    id: &str,
) -> imprint_proto::v1::AgentOperation {
    let mut stream = client
        .watch_operation(imprint_proto::v1::GetOperationRequest {
            operation_id: id.into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut last = None;
    let mut phases = Vec::new();
    while let Some(op) = stream.message().await.expect("stream") {
        if phases.last() != Some(&op.phase) {
            phases.push(op.phase.clone());
        }
        last = Some(op);
    }
    let last = last.expect("at least one update");
    eprintln!("operation {id}: phases {phases:?}");
    last
}

/// One test's world: a work directory, two pools, a console directory and
/// a running agent. Everything is removed on drop.
#[derive(Debug)]
pub struct Fixture {
    /// Short random tag in every libvirt name of this test.
    pub tag: String,
    /// The agent (restartable).
    pub agent: AgentProcess,
    /// Where deployed guests' consoles are logged.
    pub consoles: PathBuf,
    /// Source pool (guests to capture live here).
    pub pool_a: Pool,
    /// Target pool (the agent's default for deploys).
    pub pool_b: Pool,
    /// The test guest's files.
    pub guest: BusyboxGuest,
    /// Extra agent flags (kept for restarts).
    pub agent_args: Vec<String>,
    /// The agent's store: `None` for the work directory's `store` folder,
    /// or a location (`s3://...`) and the environment it needs.
    pub store: Option<(String, Vec<(String, String)>)>,
    /// Scratch directory (last, so it outlives the pools).
    pub wd: Workdir,
}

impl Fixture {
    /// Set up and start an agent.
    pub fn new() -> Self {
        Self::with_agent_args(&[])
    }

    /// [`Fixture::new`] with extra agent flags (`--daemon URL`...). The
    /// work directory is created first, so callers that need the store's
    /// path before the agent starts use [`Fixture::in_workdir`].
    pub fn with_agent_args(extra: &[&str]) -> Self {
        Self::in_workdir(Workdir::new("imprint-e2e-"), extra)
    }

    /// [`Fixture::with_agent_args`] in a given work directory (its `store`
    /// folder is the image store).
    pub fn in_workdir(wd: Workdir, extra: &[&str]) -> Self {
        Self::build(wd, extra, None)
    }

    /// [`Fixture::new`] with the agent on another store (`s3://...`) and
    /// the environment variables it needs (`AWS_*`).
    pub fn on_store(location: &str, env: &[(&str, &str)]) -> Self {
        Self::on_store_with(Workdir::new("imprint-e2e-"), location, env, &[])
    }

    /// [`Fixture::on_store`] in a given work directory with extra agent
    /// flags.
    pub fn on_store_with(
        wd: Workdir,
        location: &str,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Self {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::build(wd, extra, Some((location.to_string(), env)))
    }

    fn build(wd: Workdir, extra: &[&str], store: Option<(String, Vec<(String, String)>)>) -> Self {
        let guest = busybox_guest();
        let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let pool_a = Pool::new(&format!("imp-{tag}-a"), &wd.path().join("pool-a"));
        let pool_b = Pool::new(&format!("imp-{tag}-b"), &wd.path().join("pool-b"));
        let consoles = wd.path().join("consoles");
        std::fs::create_dir(&consoles).expect("consoles");
        let agent_args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let agent = Self::spawn_agent(&wd, &consoles, &pool_b, &agent_args, store.as_ref());
        Self {
            tag,
            agent,
            consoles,
            pool_a,
            pool_b,
            guest,
            agent_args,
            store,
            wd,
        }
    }

    fn spawn_agent(
        wd: &Workdir,
        consoles: &Path,
        pool_b: &Pool,
        extra: &[String],
        store: Option<&(String, Vec<(String, String)>)>,
    ) -> AgentProcess {
        let mut args = vec![
            "--domain-type",
            domain_type(),
            "--console-log-dir",
            consoles.to_str().expect("utf8"),
            "--default-pool",
            &pool_b.name,
        ];
        args.extend(extra.iter().map(String::as_str));
        let journal = wd.path().join("journal");
        match store {
            None => AgentProcess::start_agent(&wd.path().join("store"), &journal, &args),
            Some((location, env)) => {
                AgentProcess::start_agent_env(location.as_ref(), &journal, &args, env)
            }
        }
    }

    /// Kill the agent and start a new one on the same store and journal.
    pub fn restart_agent(&mut self) {
        self.agent.kill();
        self.agent = Self::spawn_agent(
            &self.wd,
            &self.consoles,
            &self.pool_b,
            &self.agent_args,
            self.store.as_ref(),
        );
    }

    /// A client of the current agent.
    pub async fn client(
        &self,
    ) -> imprint_proto::v1::agent_service_client::AgentServiceClient<tonic::transport::Channel>
    {
        imprint_proto::v1::agent_service_client::AgentServiceClient::connect(
            self.agent.endpoint.clone(),
        )
        .await
        .expect("connect to agent")
    }

    /// [`Fixture::disk_in_pool_a`] of the busybox disk, grown to 1 GiB with
    /// 768 MiB of random (incompressible) data past its filesystem: the
    /// guest boots as usual, and reading its disk takes long enough to
    /// cause a fault in the middle.
    pub fn slow_disk_in_pool_a(&self, name: &str) -> PathBuf {
        let disk = self.disk_in_pool_a(&self.guest.disk, name);
        run("truncate", &["-s", "1G", disk.to_str().expect("utf8")]);
        run(
            "dd",
            &[
                "if=/dev/urandom",
                &format!("of={}", disk.display()),
                "bs=1M",
                "seek=128",
                "count=768",
                "conv=notrunc",
                "status=none",
            ],
        );
        disk
    }

    /// Capture a shut-off guest `imp-<tag>-<suffix>` whose one disk holds
    /// `mib` MiB of random (incompressible) data; the image id. Its
    /// deploys write long enough to cause faults in the middle.
    pub async fn capture_random_disk(&self, suffix: &str, mib: u32) -> String {
        let disk = self
            .wd
            .path()
            .join("pool-a")
            .join(format!("{suffix}-vda.raw"));
        run(
            "dd",
            &[
                "if=/dev/urandom",
                &format!("of={}", disk.display()),
                "bs=1M",
                &format!("count={mib}"),
                "status=none",
            ],
        );
        self.capture_disk(suffix, &disk).await
    }

    /// Capture a shut-off busybox guest `imp-<tag>-<suffix>` on `disk`
    /// (raw); the image id.
    pub async fn capture_disk(&self, suffix: &str, disk: &Path) -> String {
        let captured = self
            .capture_disk_as(suffix, disk, imprint_proto::v1::CaptureRequest::default())
            .await;
        assert_succeeded(&captured);
        captured.capture.expect("result").image_id
    }

    /// [`Fixture::capture_disk`] with the rest of the request from `req`;
    /// the finished operation, whatever its end.
    pub async fn capture_disk_as(
        &self,
        suffix: &str,
        disk: &Path,
        req: imprint_proto::v1::CaptureRequest,
    ) -> imprint_proto::v1::AgentOperation {
        let name = format!("imp-{}-{suffix}", self.tag);
        let log = self.wd.path().join(format!("{suffix}.log"));
        let _src = Domain::define(
            &name,
            &busybox_xml(
                &name,
                &self.guest,
                self.wd.path(),
                &[(disk, "raw")],
                &log,
                free_udp_port(),
            ),
            self.wd.path(),
        );
        capture(
            &mut self.client().await,
            imprint_proto::v1::CaptureRequest {
                guest: name,
                image_name: suffix.into(),
                ..req
            },
        )
        .await
    }

    /// Define guest `imp-<tag>-<suffix>` on `disks` (in pool A's
    /// directory), start it and wait until it is ready; returns the domain,
    /// its name and its console log.
    pub fn boot_guest(&self, suffix: &str, disks: &[(&Path, &str)]) -> (Domain, String, PathBuf) {
        let name = format!("imp-{}-{suffix}", self.tag);
        let log = self.wd.path().join(format!("{name}.log"));
        let xml = busybox_xml(
            &name,
            &self.guest,
            self.wd.path(),
            disks,
            &log,
            free_udp_port(),
        );
        let d = Domain::define(&name, &xml, self.wd.path());
        d.start();
        wait_for(&log, "IMPRINT-READY", 1, Duration::from_secs(120));
        (d, name, log)
    }

    /// The agent's journal entries (operations in flight or left to
    /// recover; not the marks of undone ones).
    pub fn journal_entries(&self) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(self.wd.path().join("journal"))
            .expect("journal")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect()
    }

    /// What `imprint store list` says of the agent's store (JSON).
    pub fn store_list(&self) -> serde_json::Value {
        let out = std::process::Command::new(binary("imprint"))
            .args(["-o", "json", "store", "list", "--store"])
            .arg(self.wd.path().join("store"))
            .output()
            .expect("imprint");
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// Copy a cached disk into pool A's directory as `name`.
    pub fn disk_in_pool_a(&self, src: &Path, name: &str) -> PathBuf {
        let dst = self.pool_a.dir.join(name);
        run(
            "cp",
            &[
                "--sparse=always",
                src.to_str().expect("utf8"),
                dst.to_str().expect("utf8"),
            ],
        );
        virsh(&["pool-refresh", &self.pool_a.name]);
        dst
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// Assert an agent operation succeeded (its error otherwise).
pub fn assert_succeeded(op: &imprint_proto::v1::AgentOperation) {
    assert_eq!(
        op.state,
        imprint_proto::v1::OperationState::Succeeded as i32,
        "operation failed: {}",
        op.error
    );
}

/// Start a deploy and follow it to the end.
pub async fn deploy(
    client: &mut imprint_proto::v1::agent_service_client::AgentServiceClient<
        tonic::transport::Channel,
    >,
    req: imprint_proto::v1::DeployRequest,
) -> imprint_proto::v1::AgentOperation {
    let op = client
        .deploy(req)
        .await
        .expect("deploy accepted")
        .into_inner();
    watch(client, &op.operation_id).await
}

/// Start a capture and follow it to the end.
pub async fn capture(
    client: &mut imprint_proto::v1::agent_service_client::AgentServiceClient<
        tonic::transport::Channel,
    >,
    req: imprint_proto::v1::CaptureRequest,
) -> imprint_proto::v1::AgentOperation {
    let op = client
        .capture(req)
        .await
        .expect("capture accepted")
        .into_inner();
    watch(client, &op.operation_id).await
}

/// The Debian test guest (systemd, cloud-init): (kernel, initrd, disk).
#[derive(Debug, Clone)]
pub struct DebianGuest {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Root disk (raw, 1 GiB, ~430 MiB allocated).
    pub disk: PathBuf,
}

/// A benchmark's numeric option `name VALUE` from its command line, or
/// `default`.
pub fn bench_arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Build (or reuse from the cache) the Debian guest (~2 min the first time).
pub fn debian_guest() -> DebianGuest {
    let script = workspace().join("tests/guests/build-debian-guest.sh");
    let out = run(script.to_str().expect("utf8"), &[]);
    let get = |key: &str| -> PathBuf {
        out.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| PathBuf::from(v.trim())))
            .unwrap_or_else(|| panic!("build-debian-guest.sh printed no {key:?} line:\n{out}"))
    };
    DebianGuest {
        kernel: get("kernel:"),
        initrd: get("initrd:"),
        disk: get("disk:"),
    }
}

/// Whether libvirtd answers on `qemu:///system`.
pub fn libvirtd_answers() -> bool {
    Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Start libvirtd if it does not answer, and wait until it does.
pub fn start_libvirtd() {
    if !libvirtd_answers() {
        let _ = Command::new("libvirtd").arg("-d").status();
        let start = Instant::now();
        while !libvirtd_answers() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "libvirtd did not come back"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// libvirtd runs again when a test that stops it ends, whatever happened.
/// Declare it after every guard that needs libvirt to clean up (locals
/// drop in reverse order, so it runs first).
#[derive(Debug)]
pub struct LibvirtdBack;

impl Drop for LibvirtdBack {
    fn drop(&mut self) {
        start_libvirtd();
    }
}
