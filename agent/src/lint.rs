//! Image lint: what a template will do when deployed, found without
//! booting it. The stored image's disks are served read-only over NBD
//! ([`crate::lazy::export_disk`]) and libguestfs's appliance reads them
//! (`guestfish --ro`, remote-controlled so one appliance answers every
//! question): the operating system, then each check below, as findings
//! with a severity and a one-line fix.
//!
//! Checks: cloud-init present, enabled and allowed NoCloud (the network
//! configuration a deploy injects depends on it), virtio drivers, fstab by
//! UUID/LABEL, a serial console, qemu-guest-agent (live captures), a root
//! filesystem that grows with its disk, and the identity a clone would
//! carry (deploys generalize it by default).

use std::{
    path::Path,
    process::{Command, Stdio},
};

use serde::Serialize;

use crate::error::{AgentError, Kind, Result};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Deploys of the image will not work as asked (publishing is
    /// refused unless forced).
    Error,
    /// Deploys work, with a flaw a user will meet.
    Warning,
    /// Worth knowing.
    Info,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// Stable name (`cloud-init-missing`...).
    pub code: &'static str,
    /// What was found.
    pub message: String,
    /// The one-line fix.
    pub fix: &'static str,
}

/// The operating system found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OsInfo {
    /// `linux`, `windows`...
    pub kind: String,
    /// `debian`, `ubuntu`, `rhel`...
    pub distro: String,
    /// Human name and version.
    pub product: String,
    /// The root filesystem's device inside the appliance.
    pub root: String,
}

/// What lint found in an image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `None`: no operating system could be read ("unknown").
    pub os: Option<OsInfo>,
    /// The findings, errors first.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// A libguestfs appliance under remote control (`guestfish --listen`):
/// a command that fails ends it, so only questions that cannot fail are
/// asked (`exists` before `cat`).
struct Fish {
    pid: String,
}

impl Fish {
    fn start(disks: &[String], tcg: bool) -> Result<Self> {
        let mut cmd = Command::new("guestfish");
        cmd.args(["--listen", "--ro", "--format=raw"]);
        for d in disks {
            cmd.arg("-a").arg(d);
        }
        // guestfish forks the server and prints how to reach it: read that
        // line, not to the end (the server keeps stdout open). Its errors
        // go to the agent's log.
        crate::generalize::appliance(&mut cmd, tcg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| {
            AgentError::new(
                Kind::FailedPrecondition,
                format!("run guestfish (Debian package libguestfs-tools) to lint the image: {e}"),
            )
        })?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
        }
        let _ = child.wait();
        let pid = line
            .split(';')
            .find_map(|p| p.trim().strip_prefix("GUESTFISH_PID="))
            .map(str::to_string)
            .ok_or_else(|| {
                AgentError::new(
                    Kind::Internal,
                    format!("guestfish did not start (it said {:?})", line.trim()),
                )
            })?;
        let fish = Self { pid };
        fish.ask(&["run"])?;
        Ok(fish)
    }

    fn ask(&self, args: &[&str]) -> Result<String> {
        let out = crate::tool::run(
            Command::new("guestfish")
                .arg(format!("--remote={}", self.pid))
                .args(args),
            &format!("guestfish {}", args.join(" ")),
        )?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.ask(&["exists", path])?.trim() == "true")
    }

    /// A file's text, or `None` when it is not a file.
    fn read(&self, path: &str) -> Result<Option<String>> {
        if self.ask(&["is-file", path, "followsymlinks:true"])?.trim() != "true" {
            return Ok(None);
        }
        self.ask(&["cat", path]).map(Some)
    }

    fn glob(&self, pattern: &str) -> Result<Vec<String>> {
        Ok(self
            .ask(&["glob-expand", pattern])?
            .lines()
            .map(str::to_string)
            .collect())
    }
}

impl Drop for Fish {
    fn drop(&mut self) {
        let _ = self.ask(&["exit"]);
    }
}

/// Lint the disks served at `disks` (NBD URLs, in the guest's order).
/// `tcg`: no usable hardware virtualisation for the appliance.
pub fn lint(disks: &[String], tcg: bool) -> Result<Report> {
    let fish = Fish::start(disks, tcg)?;
    let roots: Vec<String> = fish
        .ask(&["inspect-os"])?
        .lines()
        .map(str::to_string)
        .collect();
    let Some(root) = roots.first() else {
        return Ok(Report {
            os: None,
            findings: vec![Finding {
                severity: Severity::Error,
                code: "os-unknown",
                message: "no operating system was found on the image's disks (no OS, or an encrypted or unknown filesystem)".into(),
                fix: "capture a guest whose root filesystem libguestfs can read, or deploy with --keep-identity",
            }],
        });
    };
    let get = |what: &str| -> Result<String> {
        Ok(fish
            .ask(&[&format!("inspect-get-{what}"), root])?
            .trim()
            .to_string())
    };
    let os = OsInfo {
        kind: get("type")?,
        distro: get("distro")?,
        product: get("product-name")?,
        root: root.clone(),
    };
    fish.ask(&["mount-ro", root, "/"])?;
    // /boot on its own partition holds the boot loader's configuration.
    for line in fish.ask(&["inspect-get-mountpoints", root])?.lines() {
        if let Some(("/boot", dev)) = line.split_once(": ").map(|(m, d)| (m, d.trim()))
            && fish.ask(&["is-blockdev", dev])?.trim() == "true"
            && fish.exists("/boot")?
        {
            let _ = fish.ask(&["mount-ro", dev, "/boot"]);
        }
    }
    let mut findings = if os.kind == "linux" {
        linux_findings(&fish)?
    } else {
        vec![Finding {
            severity: Severity::Warning,
            code: "os-not-linux",
            message: format!("{} ({}) is not checked further", os.product, os.kind),
            fix: "deploy it with --keep-identity and check it by hand",
        }]
    };
    findings.sort_by_key(|f| f.severity as u8);
    Ok(Report {
        os: Some(os),
        findings,
    })
}

/// What the files of a Linux guest say.
#[derive(Debug, Default)]
struct LinuxFacts {
    cloud_init: bool,
    cloud_init_disabled: bool,
    /// The datasource lists configured (cloud.cfg and cloud.cfg.d, in
    /// order: the last one wins).
    datasource_lists: Vec<String>,
    fstab: Option<String>,
    virtio_blk: bool,
    serial_console: bool,
    guest_agent: bool,
    growpart: bool,
    machine_id: bool,
    ssh_host_keys: bool,
}

fn linux_findings(fish: &Fish) -> Result<Vec<Finding>> {
    let mut facts = LinuxFacts {
        cloud_init: fish.exists("/usr/bin/cloud-init")?,
        cloud_init_disabled: fish.exists("/etc/cloud/cloud-init.disabled")?,
        fstab: fish.read("/etc/fstab")?,
        guest_agent: fish.exists("/usr/sbin/qemu-ga")? || fish.exists("/usr/bin/qemu-ga")?,
        growpart: fish.exists("/usr/bin/growpart")? || fish.exists("/usr/sbin/growpart")?,
        machine_id: fish
            .read("/etc/machine-id")?
            .is_some_and(|m| !m.trim().is_empty() && m.trim() != "uninitialized"),
        ssh_host_keys: !fish.glob("/etc/ssh/ssh_host_*_key")?.is_empty(),
        ..LinuxFacts::default()
    };
    let mut cfgs = vec!["/etc/cloud/cloud.cfg".to_string()];
    cfgs.extend(fish.glob("/etc/cloud/cloud.cfg.d/*.cfg")?);
    for c in cfgs {
        if let Some(text) = fish.read(&c)?
            && let Some(list) = datasource_list(&text)
        {
            facts.datasource_lists.push(list);
        }
    }
    for m in fish.glob("/lib/modules/*")? {
        let builtin = fish
            .read(&format!("{m}/modules.builtin"))?
            .is_some_and(|b| b.contains("virtio_blk.ko"));
        let module = !fish
            .glob(&format!("{m}/kernel/drivers/block/virtio_blk.ko*"))?
            .is_empty();
        facts.virtio_blk |= builtin || module;
    }
    for cfg in [
        "/boot/grub/grub.cfg",
        "/boot/grub2/grub.cfg",
        "/etc/default/grub",
    ] {
        facts.serial_console |= fish.read(cfg)?.is_some_and(|t| t.contains("console=ttyS0"));
    }
    facts.serial_console |=
        fish.exists("/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service")?;
    Ok(judge(&facts))
}

/// The `datasource_list` a cloud-init configuration sets, as written.
fn datasource_list(cfg: &str) -> Option<String> {
    let mut lines = cfg.lines();
    while let Some(l) = lines.next() {
        let Some(rest) = l.trim_start().strip_prefix("datasource_list:") else {
            continue;
        };
        let rest = rest.trim();
        if !rest.is_empty() {
            return Some(rest.to_string());
        }
        // A block list: "- NoCloud" lines.
        let items: Vec<&str> = lines
            .by_ref()
            .map(str::trim)
            .take_while(|l| l.starts_with('-'))
            .map(|l| l.trim_start_matches('-').trim())
            .collect();
        return Some(format!("[{}]", items.join(", ")));
    }
    None
}

fn judge(f: &LinuxFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |severity, code, message: String, fix| {
        out.push(Finding {
            severity,
            code,
            message,
            fix,
        })
    };
    if !f.cloud_init {
        add(
            Severity::Error,
            "cloud-init-missing",
            "cloud-init is not installed: the host name, addresses and user-data a deploy gives are ignored".into(),
            "install cloud-init in the guest (apt install cloud-init / dnf install cloud-init) and capture again",
        );
    } else if f.cloud_init_disabled {
        add(
            Severity::Error,
            "cloud-init-disabled",
            "cloud-init is disabled (/etc/cloud/cloud-init.disabled): the network configuration a deploy gives is ignored".into(),
            "remove /etc/cloud/cloud-init.disabled in the guest and capture again",
        );
    } else if let Some(list) = f.datasource_lists.last()
        && !list.contains("NoCloud")
    {
        add(
            Severity::Error,
            "cloud-init-no-nocloud",
            format!(
                "cloud-init's datasource_list {list} leaves out NoCloud, the seed deploys attach"
            ),
            "add NoCloud to datasource_list in /etc/cloud/cloud.cfg(.d) and capture again",
        );
    }
    if !f.virtio_blk {
        add(
            Severity::Error,
            "virtio-missing",
            "no kernel has the virtio block driver: the guest cannot find its disk".into(),
            "install a kernel with virtio drivers (Debian: linux-image-cloud-amd64) and capture again",
        );
    }
    if let Some(fstab) = &f.fstab {
        for dev in fstab
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|d| {
                ["/dev/vd", "/dev/sd", "/dev/hd", "/dev/xvd"]
                    .iter()
                    .any(|p| d.starts_with(p))
            })
        {
            add(
                Severity::Warning,
                "fstab-device-name",
                format!(
                    "/etc/fstab mounts {dev} by device name: a clone with other disks or another bus may not boot"
                ),
                "name filesystems by UUID= or LABEL= in /etc/fstab",
            );
        }
    }
    if !f.serial_console {
        add(
            Severity::Warning,
            "serial-console-missing",
            "no serial console is configured (console=ttyS0 or serial-getty@ttyS0): the console log shows nothing".into(),
            "add console=ttyS0 to the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub)",
        );
    }
    if !f.guest_agent {
        add(
            Severity::Warning,
            "guest-agent-missing",
            "qemu-guest-agent is not installed: captures of the running guest cannot freeze its filesystems".into(),
            "install qemu-guest-agent in the guest",
        );
    }
    if !f.growpart {
        add(
            Severity::Warning,
            "root-not-growable",
            "growpart (cloud-guest-utils) is not installed: a partitioned root does not grow into a larger disk".into(),
            "install cloud-guest-utils in the guest",
        );
    }
    if f.machine_id || f.ssh_host_keys {
        let what: Vec<&str> = [
            (f.machine_id, "a machine-id"),
            (f.ssh_host_keys, "SSH host keys"),
        ]
        .iter()
        .filter(|(has, _)| *has)
        .map(|(_, w)| *w)
        .collect();
        add(
            Severity::Info,
            "identity-present",
            format!(
                "the image carries {}: deploys generalize it (unless --keep-identity)",
                what.join(" and ")
            ),
            "nothing to do; capture with --seal to store the image generalized",
        );
    }
    out
}

/// The NBD URI of an export on `socket` named `export`, as libguestfs
/// writes it.
pub fn nbd_url(socket: &Path, export: &str) -> String {
    format!("nbd:///{export}?socket={}", socket.display())
}

/// Lint stored image `manifest` of `store`: its disks are served on
/// sockets in `nbd_dir` named for operation `op` for the time of it.
pub fn lint_image(
    store: &imprint_store::Store,
    manifest: &imprint_store::Manifest,
    nbd_dir: &Path,
    op: &str,
    tcg: bool,
) -> Result<Report> {
    let mut exports = Vec::new();
    let mut urls = Vec::new();
    for i in 0..manifest.disks.len() {
        let socket = crate::lazy::socket_path(nbd_dir, &format!("{op}-lint"), i);
        let (export, backing, _) = crate::lazy::export_disk(&socket, store, manifest, i)?;
        urls.push(nbd_url(&socket, &backing.export));
        exports.push(export);
    }
    let t = std::time::Instant::now();
    let report = lint(&urls, tcg);
    tracing::info!(image = %manifest.image_id, seconds = t.elapsed().as_secs_f64(), ok = report.is_ok(), "linted");
    // A chunk that fails its check is the image's damage, not a finding.
    if let Some(failure) = exports.iter().find_map(crate::nbd::server::Export::failure) {
        return Err(AgentError::new(
            Kind::DataLoss,
            format!("reading image {}: {failure}", manifest.image_id),
        ));
    }
    report
}

/// The report as the API carries it.
pub fn to_proto(r: &Report) -> imprint_proto::v1::LintReport {
    use imprint_proto::v1 as pb;
    pb::LintReport {
        os: r.os.as_ref().map(|o| pb::LintOs {
            kind: o.kind.clone(),
            distro: o.distro.clone(),
            product: o.product.clone(),
        }),
        findings: r
            .findings
            .iter()
            .map(|f| pb::LintFinding {
                severity: match f.severity {
                    Severity::Error => pb::LintSeverity::Error,
                    Severity::Warning => pb::LintSeverity::Warning,
                    Severity::Info => pb::LintSeverity::Info,
                } as i32,
                code: f.code.into(),
                message: f.message.clone(),
                fix: f.fix.into(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> LinuxFacts {
        LinuxFacts {
            cloud_init: true,
            datasource_lists: vec!["[NoCloud, ConfigDrive]".into()],
            fstab: Some("UUID=1234 / ext4 defaults 0 1\n".into()),
            virtio_blk: true,
            serial_console: true,
            guest_agent: true,
            growpart: true,
            ..LinuxFacts::default()
        }
    }

    #[test]
    fn a_clean_guest_has_no_finding() {
        assert!(judge(&clean()).is_empty());
    }

    #[test]
    fn each_flaw_is_named_with_its_fix() {
        let codes =
            |f: &LinuxFacts| -> Vec<&'static str> { judge(f).iter().map(|x| x.code).collect() };
        let none = LinuxFacts {
            cloud_init: false,
            ..clean()
        };
        assert_eq!(codes(&none), ["cloud-init-missing"]);
        let off = LinuxFacts {
            cloud_init_disabled: true,
            ..clean()
        };
        assert_eq!(codes(&off), ["cloud-init-disabled"]);
        let ec2 = LinuxFacts {
            datasource_lists: vec!["[NoCloud]".into(), "[ Ec2, None ]".into()],
            ..clean()
        };
        assert_eq!(codes(&ec2), ["cloud-init-no-nocloud"]);
        let by_name = LinuxFacts {
            fstab: Some("# a comment /dev/vda\n/dev/vda1 / ext4 defaults 0 1\nLABEL=x /srv xfs defaults 0 2\n".into()),
            ..clean()
        };
        let f = judge(&by_name);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].message.contains("/dev/vda1"), "{f:?}");
        assert_eq!(f[0].severity, Severity::Warning);
        let bare = LinuxFacts {
            virtio_blk: false,
            serial_console: false,
            guest_agent: false,
            growpart: false,
            machine_id: true,
            ssh_host_keys: true,
            ..clean()
        };
        assert_eq!(
            codes(&bare),
            [
                "virtio-missing",
                "serial-console-missing",
                "guest-agent-missing",
                "root-not-growable",
                "identity-present"
            ]
        );
        assert!(judge(&bare).iter().all(|x| !x.fix.is_empty()));
    }

    #[test]
    fn datasource_lists_inline_and_as_blocks() {
        assert_eq!(
            datasource_list("a: 1\ndatasource_list: [NoCloud, ConfigDrive]\n").as_deref(),
            Some("[NoCloud, ConfigDrive]")
        );
        assert_eq!(
            datasource_list("datasource_list:\n  - Ec2\n  - None\nother: x\n").as_deref(),
            Some("[Ec2, None]")
        );
        assert_eq!(datasource_list("users: []\n"), None);
    }
}
