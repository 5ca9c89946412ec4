//! The guest configuration a capture records, read from libvirt's domain
//! XML, and the domain XML a deploy defines from it.

use serde::{Deserialize, Serialize};

/// Everything about a guest that a new guest made from its image needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    /// Domain name at capture.
    pub name: String,
    /// Domain UUID at capture (never reused).
    pub uuid: String,
    /// libvirt domain type: `kvm` or `qemu` (TCG).
    pub domain_type: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in KiB.
    pub memory_kib: u64,
    /// Guest architecture (`x86_64`).
    pub arch: String,
    /// Machine type (`pc-q35-10.0`), empty when libvirt chose.
    pub machine: String,
    /// Firmware and boot.
    pub firmware: Firmware,
    /// Block devices in domain order (CD-ROMs included; captures skip them).
    pub disks: Vec<DiskConfig>,
    /// Network interfaces in domain order.
    pub nics: Vec<NicConfig>,
    /// ACPI is enabled (without it a guest cannot be shut down gracefully).
    pub acpi: bool,
    /// A serial console (ttyS0) is defined; configurations recorded before
    /// this field existed always had one.
    #[serde(default = "yes")]
    pub serial_console: bool,
    /// Whether the first disk has an EFI system partition, when an import
    /// looked (`None`: not inspected, as for captures so far).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub esp: Option<bool>,
}

fn yes() -> bool {
    true
}

/// How the guest boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Firmware {
    /// `bios` or `efi`.
    pub kind: String,
    /// UEFI loader path, when set explicitly.
    pub loader: Option<String>,
    /// UEFI: the guest's NVRAM file on its host, at capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvram: Option<String>,
    /// UEFI: SHA-256 (hex) of the NVRAM contents the image keeps
    /// ([`NVRAM_FILE`] beside its indexes); deploys start from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvram_sha256: Option<String>,
    /// Direct kernel boot: host paths of kernel and initrd, and the
    /// command line. These are host files, not captured: a target host needs
    /// them at the same paths.
    pub kernel: Option<String>,
    /// See `kernel`.
    pub initrd: Option<String>,
    /// See `kernel`.
    pub cmdline: Option<String>,
}

/// One block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// `disk`, `cdrom` or `floppy`.
    pub device: String,
    /// Guest device name (`vda`).
    pub target_dev: String,
    /// Bus (`virtio`, `sata`, `scsi`, `ide`).
    pub bus: String,
    /// Image format libvirt gives QEMU (`raw`, `qcow2`).
    pub format: String,
    /// Host path of the source (files and block devices), if any.
    pub source_path: Option<String>,
    /// Storage pool and volume, when the disk is a `type='volume'` disk.
    pub source_pool: Option<String>,
    /// See `source_pool`.
    pub source_volume: Option<String>,
    /// Read-only in the guest.
    pub readonly: bool,
    /// Guest-visible size in bytes, filled in at capture.
    #[serde(default)]
    pub size_bytes: u64,
}

impl DiskConfig {
    /// Whether a capture reads this device: real disks, not CD-ROMs,
    /// floppies or cloud-init seeds.
    pub fn is_capturable(&self) -> bool {
        self.device == "disk"
            && !self.readonly
            && !self
                .source_path
                .as_deref()
                .is_some_and(|p| p.ends_with("-cidata.img") || p.ends_with("/cidata.img"))
    }
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicConfig {
    /// libvirt interface type: `network`, `bridge`, `direct`, `udp`, ...
    pub kind: String,
    /// Model (`virtio`, `e1000`).
    pub model: String,
    /// Network or bridge name (for `network`/`bridge`/`direct`).
    pub source: Option<String>,
    /// For `udp`: local and remote endpoints `address:port`.
    pub udp_local: Option<String>,
    /// See `udp_local`.
    pub udp_remote: Option<String>,
    /// MAC at capture: recorded, never reused on deploy.
    pub mac: String,
}

/// The image file that keeps a UEFI guest's NVRAM contents.
pub const NVRAM_FILE: &str = "nvram.fd";

/// Where libvirt keeps guests' NVRAM files; a deploy writes the image's
/// NVRAM here before it defines the guest.
pub const NVRAM_DIR: &str = "/var/lib/libvirt/qemu/nvram";

/// The NVRAM file of a new guest `name`.
pub fn nvram_path(name: &str) -> String {
    format!("{NVRAM_DIR}/{name}_VARS.fd")
}

impl NicConfig {
    /// A virtio NIC attached where the host's `--default-nic` says.
    pub fn unattached() -> Self {
        Self {
            kind: String::new(),
            model: "virtio".into(),
            source: None,
            udp_local: None,
            udp_remote: None,
            mac: String::new(),
        }
    }
}

/// Where a NIC without an attachment of its own (an imported image's, or
/// one a profile added) goes on this host: `network:NAME`, `bridge:NAME`,
/// or `udp` (a tunnel on loopback that reaches nothing; for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicAttachment {
    /// A libvirt network.
    Network(String),
    /// A host bridge.
    Bridge(String),
    /// A UDP tunnel on 127.0.0.1.
    Udp,
}

impl Default for NicAttachment {
    fn default() -> Self {
        Self::Network("default".into())
    }
}

impl std::str::FromStr for NicAttachment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("network", n)) if !n.is_empty() => Ok(Self::Network(n.into())),
            Some(("bridge", n)) if !n.is_empty() => Ok(Self::Bridge(n.into())),
            None if s == "udp" => Ok(Self::Udp),
            _ => Err(format!(
                "NIC attachment {s:?}: write network:NAME, bridge:NAME or udp"
            )),
        }
    }
}

impl NicAttachment {
    /// Attach `nic` here.
    pub fn attach(&self, nic: &mut NicConfig) {
        (nic.kind, nic.source) = match self {
            Self::Network(n) => ("network".into(), Some(n.clone())),
            Self::Bridge(b) => ("bridge".into(), Some(b.clone())),
            Self::Udp => ("udp".into(), None),
        };
    }
}

/// Why a domain XML cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("domain XML: {0}")]
pub struct XmlError(String);

fn attr<'a>(n: &roxmltree::Node<'a, 'a>, child: &str, name: &str) -> Option<String> {
    n.children()
        .find(|c| c.has_tag_name(child))
        .and_then(|c| c.attribute(name))
        .map(str::to_string)
}

fn text(n: &roxmltree::Node<'_, '_>, child: &str) -> Option<String> {
    n.children()
        .find(|c| c.has_tag_name(child))
        .and_then(|c| c.text())
        .map(|t| t.trim().to_string())
}

fn unit_to_kib(value: u64, unit: &str) -> Result<u64, XmlError> {
    Ok(match unit {
        "b" | "bytes" => value / 1024,
        "KB" => value * 1000 / 1024,
        "k" | "KiB" => value,
        "MB" => value * 1_000_000 / 1024,
        "M" | "MiB" => value * 1024,
        "GB" => value * 1_000_000_000 / 1024,
        "G" | "GiB" => value * 1024 * 1024,
        "T" | "TiB" => value * 1024 * 1024 * 1024,
        other => return Err(XmlError(format!("unknown memory unit {other:?}"))),
    })
}

impl GuestConfig {
    /// Read the configuration from a domain XML (`virsh dumpxml`).
    pub fn from_domain_xml(xml: &str) -> Result<Self, XmlError> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| XmlError(e.to_string()))?;
        let dom = doc.root_element();
        if !dom.has_tag_name("domain") {
            return Err(XmlError("root element is not <domain>".into()));
        }
        let name = text(&dom, "name").ok_or_else(|| XmlError("no <name>".into()))?;
        let uuid = text(&dom, "uuid").unwrap_or_default();
        let vcpus = text(&dom, "vcpu")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| XmlError("no valid <vcpu>".into()))?;
        let mem = dom
            .children()
            .find(|c| c.has_tag_name("memory"))
            .ok_or_else(|| XmlError("no <memory>".into()))?;
        let mem_value: u64 = mem
            .text()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| XmlError("bad <memory> value".into()))?;
        let memory_kib = unit_to_kib(mem_value, mem.attribute("unit").unwrap_or("KiB"))?;
        let os = dom
            .children()
            .find(|c| c.has_tag_name("os"))
            .ok_or_else(|| XmlError("no <os>".into()))?;
        let os_type = os.children().find(|c| c.has_tag_name("type"));
        let firmware = Firmware {
            kind: if os.attribute("firmware") == Some("efi")
                || os
                    .children()
                    .any(|c| c.has_tag_name("loader") && c.attribute("type") == Some("pflash"))
            {
                "efi".into()
            } else {
                "bios".into()
            },
            loader: text(&os, "loader").filter(|s| !s.is_empty()),
            nvram: text(&os, "nvram").filter(|s| !s.is_empty()),
            nvram_sha256: None,
            kernel: text(&os, "kernel"),
            initrd: text(&os, "initrd"),
            cmdline: text(&os, "cmdline"),
        };
        let devices = dom.children().find(|c| c.has_tag_name("devices"));
        let mut disks = Vec::new();
        let mut nics = Vec::new();
        if let Some(devices) = devices {
            for d in devices.children().filter(|c| c.has_tag_name("disk")) {
                let source = d.children().find(|c| c.has_tag_name("source"));
                disks.push(DiskConfig {
                    device: d.attribute("device").unwrap_or("disk").to_string(),
                    target_dev: attr(&d, "target", "dev").unwrap_or_default(),
                    bus: attr(&d, "target", "bus").unwrap_or_default(),
                    format: attr(&d, "driver", "type").unwrap_or_else(|| "raw".into()),
                    source_path: source.and_then(|s| {
                        s.attribute("file")
                            .or(s.attribute("dev"))
                            .map(str::to_string)
                    }),
                    source_pool: source.and_then(|s| s.attribute("pool").map(str::to_string)),
                    source_volume: source.and_then(|s| s.attribute("volume").map(str::to_string)),
                    readonly: d.children().any(|c| c.has_tag_name("readonly")),
                    size_bytes: 0,
                });
            }
            for n in devices.children().filter(|c| c.has_tag_name("interface")) {
                let source = n.children().find(|c| c.has_tag_name("source"));
                let kind = n.attribute("type").unwrap_or("network").to_string();
                let (mut udp_local, mut udp_remote) = (None, None);
                if kind == "udp" {
                    let ep = |s: roxmltree::Node<'_, '_>| {
                        format!(
                            "{}:{}",
                            s.attribute("address").unwrap_or("127.0.0.1"),
                            s.attribute("port").unwrap_or("0")
                        )
                    };
                    udp_remote = source.map(ep);
                    udp_local = source
                        .and_then(|s| s.children().find(|c| c.has_tag_name("local")))
                        .map(ep);
                }
                nics.push(NicConfig {
                    source: source.and_then(|s| {
                        s.attribute("network")
                            .or(s.attribute("bridge"))
                            .or(s.attribute("dev"))
                            .map(str::to_string)
                    }),
                    kind,
                    model: attr(&n, "model", "type").unwrap_or_else(|| "virtio".into()),
                    udp_local,
                    udp_remote,
                    mac: attr(&n, "mac", "address").unwrap_or_default(),
                });
            }
        }
        let acpi = dom
            .children()
            .find(|c| c.has_tag_name("features"))
            .is_some_and(|f| f.children().any(|c| c.has_tag_name("acpi")));
        Ok(Self {
            name,
            uuid,
            domain_type: dom.attribute("type").unwrap_or("kvm").to_string(),
            vcpus,
            memory_kib,
            arch: os_type
                .and_then(|t| t.attribute("arch"))
                .unwrap_or("x86_64")
                .to_string(),
            machine: os_type
                .and_then(|t| t.attribute("machine"))
                .unwrap_or("")
                .to_string(),
            firmware,
            disks,
            nics,
            acpi,
            serial_console: true,
            esp: None,
        })
    }

    /// UEFI needs an EFI system partition: refuse it for an image whose
    /// first disk was seen to have none.
    pub fn check_firmware(&self) -> Result<(), crate::error::AgentError> {
        if self.firmware.kind == "efi" && self.esp == Some(false) {
            return Err(crate::error::AgentError::new(
                crate::error::Kind::FailedPrecondition,
                "UEFI firmware needs an EFI system partition, and the image's first disk has none (it boots with BIOS)",
            ));
        }
        Ok(())
    }

    /// The configuration an imported image records when its importer gives
    /// no hardware: BIOS, libvirt's default machine, one virtio disk per
    /// imported disk, one virtio NIC on the host's default network, 1 vCPU,
    /// 1 GiB, a serial console, ACPI. Profiles and deploy fields change
    /// it like a captured one.
    pub fn imported(name: &str, disk_sizes: &[u64]) -> Self {
        Self {
            name: name.to_string(),
            uuid: String::new(),
            domain_type: String::new(),
            vcpus: 1,
            memory_kib: 1 << 20,
            arch: "x86_64".into(),
            machine: String::new(),
            firmware: Firmware {
                kind: "bios".into(),
                ..Default::default()
            },
            disks: disk_sizes
                .iter()
                .enumerate()
                .map(|(i, size)| DiskConfig {
                    device: "disk".into(),
                    target_dev: format!("vd{}", disk_letter(i)),
                    bus: "virtio".into(),
                    format: "raw".into(),
                    source_path: None,
                    source_pool: None,
                    source_volume: None,
                    readonly: false,
                    size_bytes: *size,
                })
                .collect(),
            nics: vec![NicConfig::unattached()],
            acpi: true,
            serial_console: true,
            esp: None,
        }
    }

    /// Apply a hardware profile's given fields over this configuration.
    pub fn apply(&mut self, h: &imprint_proto::hardware::Hardware) {
        use imprint_proto::hardware::{DiskBus, Firmware as Fw, Machine};
        if let Some(v) = h.vcpus {
            self.vcpus = v;
        }
        if let Some(m) = h.memory_mib {
            self.memory_kib = m * 1024;
        }
        if let Some(f) = h.firmware {
            self.firmware.kind = match f {
                Fw::Bios => "bios",
                Fw::Uefi => "efi",
            }
            .into();
            // An explicit loader path belongs to the old firmware.
            self.firmware.loader = None;
        }
        if let Some(m) = h.machine {
            self.machine = match m {
                Machine::Pc => "pc",
                Machine::Q35 => "q35",
            }
            .into();
        }
        if let Some(bus) = h.disk_bus {
            let (prefix, name) = match bus {
                DiskBus::Virtio => ("vd", "virtio"),
                DiskBus::Sata => ("sd", "sata"),
                DiskBus::Scsi => ("sd", "scsi"),
            };
            for (i, d) in self
                .disks
                .iter_mut()
                .filter(|d| d.is_capturable())
                .enumerate()
            {
                d.bus = name.into();
                d.target_dev = format!("{prefix}{}", disk_letter(i));
            }
        }
        if let Some(n) = h.nic_count {
            self.nics.resize(n as usize, NicConfig::unattached());
        }
        if let Some(m) = h.nic_model {
            for nic in &mut self.nics {
                nic.model = m.as_str().into();
            }
        }
        if let Some(s) = h.serial_console {
            self.serial_console = s;
        }
    }
}

/// `a`, `b`, ... `z`, `aa`, ... for the `i`th disk.
pub(crate) fn disk_letter(i: usize) -> String {
    const LETTERS: &[u8; 26] = b"abcdefghijklmnopqrstuvwxyz";
    let mut s = String::new();
    let mut n = i + 1;
    while n > 0 {
        n -= 1;
        s.insert(0, char::from(LETTERS[n % 26]));
        n /= 26;
    }
    s
}

/// Whether disk `dev` of a domain's XML reads from a backing image (a
/// `<backingStore>` with a source; `<backingStore/>` ends the chain).
pub fn disk_has_backing(xml: &str, dev: &str) -> bool {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return false;
    };
    doc.descendants()
        .filter(|n| n.has_tag_name("disk"))
        .find(|d| {
            d.children()
                .any(|c| c.has_tag_name("target") && c.attribute("dev") == Some(dev))
        })
        .and_then(|d| d.children().find(|c| c.has_tag_name("backingStore")))
        .is_some_and(|b| b.attribute("type").is_some())
}

/// XML-escape text and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

/// A disk of the new domain.
#[derive(Debug, Clone)]
pub struct NewDisk {
    /// Host path of the volume.
    pub path: String,
    /// `raw` or `qcow2`.
    pub format: String,
    /// Guest device (`vda`).
    pub target_dev: String,
    /// Bus.
    pub bus: String,
    /// Read-only (the seed).
    pub readonly: bool,
    /// A lazy deploy's disk: reads what it has not got yet from this NBD
    /// export (the stored image) until the fill ends.
    pub backing: Option<NbdBacking>,
}

/// The NBD export a lazy deploy's disk reads from until it is filled.
#[derive(Debug, Clone)]
pub struct NbdBacking {
    /// The export's UNIX socket.
    pub socket: String,
    /// The export's name.
    pub export: String,
    /// Seconds QEMU waits for the export to come back (an agent restart)
    /// before reads fail.
    pub reconnect_delay: u32,
}

impl NbdBacking {
    /// The disk's `<backingStore>`, and the driver attributes that pause
    /// the guest rather than feed it an error.
    fn xml(&self) -> String {
        format!(
            "      <backingStore type='network'>\n        <format type='raw'/>\n        <source protocol='nbd' name='{}'>\n          <host transport='unix' socket='{}'/>\n          <reconnect delay='{}'/>\n        </source>\n        <backingStore/>\n      </backingStore>\n",
            esc(&self.export),
            esc(&self.socket),
            self.reconnect_delay
        )
    }
}

/// What a deploy defines.
#[derive(Debug, Clone)]
pub struct NewDomain<'a> {
    /// The captured configuration.
    pub base: &'a GuestConfig,
    /// New name and UUID.
    pub name: String,
    /// See `name`.
    pub uuid: String,
    /// vCPUs and memory after overrides.
    pub vcpus: u32,
    /// See `vcpus`.
    pub memory_kib: u64,
    /// libvirt domain type to use on this host (`kvm` or `qemu`).
    pub domain_type: String,
    /// Disks: the image's, then the seed.
    pub disks: Vec<NewDisk>,
    /// New MACs, one per NIC of `base`.
    pub macs: Vec<String>,
    /// Serial console log file.
    pub console_log: Option<String>,
    /// UEFI: the NVRAM file written from the image (else libvirt makes one
    /// from its template).
    pub nvram: Option<String>,
}

impl NewDomain<'_> {
    /// The domain XML to define.
    pub fn to_xml(&self) -> String {
        let b = self.base;
        let mut x = String::new();
        x.push_str(&format!("<domain type='{}'>\n", esc(&self.domain_type)));
        x.push_str(&format!(
            "  <name>{}</name>\n  <uuid>{}</uuid>\n",
            esc(&self.name),
            esc(&self.uuid)
        ));
        x.push_str(&format!(
            "  <memory unit='KiB'>{}</memory>\n  <vcpu>{}</vcpu>\n",
            self.memory_kib, self.vcpus
        ));
        let fw = if b.firmware.kind == "efi" {
            " firmware='efi'"
        } else {
            ""
        };
        x.push_str(&format!("  <os{fw}>\n"));
        let machine = if b.machine.is_empty() {
            String::new()
        } else {
            format!(" machine='{}'", esc(&b.machine))
        };
        x.push_str(&format!(
            "    <type arch='{}'{machine}>hvm</type>\n",
            esc(&b.arch)
        ));
        if b.firmware.kind == "efi" {
            // libvirt would pick OVMF with Secure Boot and Microsoft's keys
            // on Q35 first, which refuses the unsigned boot loaders of most
            // images; without it, libvirt picks plain OVMF. Each guest gets
            // its own NVRAM copy of the firmware's template.
            x.push_str("    <firmware><feature enabled='no' name='secure-boot'/></firmware>\n");
            if let Some(n) = &self.nvram {
                x.push_str(&format!("    <nvram>{}</nvram>\n", esc(n)));
            }
        }
        for (tag, v) in [
            ("kernel", &b.firmware.kernel),
            ("initrd", &b.firmware.initrd),
            ("cmdline", &b.firmware.cmdline),
        ] {
            if let Some(v) = v {
                x.push_str(&format!("    <{tag}>{}</{tag}>\n", esc(v)));
            }
        }
        x.push_str("  </os>\n  <features><acpi/><apic/></features>\n");
        x.push_str("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n");
        x.push_str("  <devices>\n");
        if self.disks.iter().any(|d| d.bus == "scsi") {
            x.push_str("    <controller type='scsi' model='virtio-scsi'/>\n");
        }
        for d in &self.disks {
            // A lazy disk's guest pauses on a failed read or write (the
            // export gone longer than the reconnect delay, a damaged
            // chunk) instead of seeing an error.
            let policy = if d.backing.is_some() {
                " error_policy='stop' rerror_policy='stop'"
            } else {
                ""
            };
            x.push_str(&format!(
                "    <disk type='file' device='disk'>\n      <driver name='qemu' type='{}'{policy}/>\n      <source file='{}'/>\n{}      <target dev='{}' bus='{}'/>\n{}    </disk>\n",
                esc(&d.format),
                esc(&d.path),
                d.backing.as_ref().map(NbdBacking::xml).unwrap_or_default(),
                esc(&d.target_dev),
                esc(&d.bus),
                if d.readonly { "      <readonly/>\n" } else { "" }
            ));
        }
        for (nic, mac) in b.nics.iter().zip(&self.macs) {
            let source = match nic.kind.as_str() {
                "network" => format!(
                    "      <source network='{}'/>\n",
                    esc(nic.source.as_deref().unwrap_or("default"))
                ),
                "bridge" => format!(
                    "      <source bridge='{}'/>\n",
                    esc(nic.source.as_deref().unwrap_or(""))
                ),
                "direct" => format!(
                    "      <source dev='{}' mode='bridge'/>\n",
                    esc(nic.source.as_deref().unwrap_or(""))
                ),
                "udp" => {
                    let split = |s: &Option<String>| {
                        let s = s.clone().unwrap_or_else(|| "127.0.0.1:0".into());
                        let (a, p) = s
                            .rsplit_once(':')
                            .map(|(a, p)| (a.to_string(), p.to_string()))
                            .unwrap_or((s, "0".into()));
                        (a, p)
                    };
                    let (ra, rp) = split(&nic.udp_remote);
                    let (la, lp) = split(&nic.udp_local);
                    format!(
                        "      <source address='{}' port='{}'>\n        <local address='{}' port='{}'/>\n      </source>\n",
                        esc(&ra),
                        esc(&rp),
                        esc(&la),
                        esc(&lp)
                    )
                }
                _ => String::new(),
            };
            x.push_str(&format!(
                "    <interface type='{}'>\n      <mac address='{}'/>\n{source}      <model type='{}'/>\n    </interface>\n",
                esc(&nic.kind),
                esc(mac),
                esc(&nic.model)
            ));
        }
        match &self.console_log {
            _ if !b.serial_console => {}
            Some(log) => x.push_str(&format!(
                "    <serial type='pty'>\n      <log file='{}' append='on'/>\n      <target port='0'/>\n    </serial>\n    <console type='pty'><target type='serial' port='0'/></console>\n",
                esc(log)
            )),
            None => x.push_str("    <serial type='pty'><target port='0'/></serial>\n    <console type='pty'><target type='serial' port='0'/></console>\n"),
        }
        x.push_str("  </devices>\n</domain>\n");
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='qemu' id='3'>
  <name>web-1</name>
  <uuid>0d5e8e0c-5d6c-4b8e-9d0a-1a2b3c4d5e6f</uuid>
  <memory unit='KiB'>524288</memory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-10.0'>hvm</type>
    <kernel>/var/cache/k/vmlinuz</kernel>
    <initrd>/var/cache/k/initrd.img</initrd>
    <cmdline>console=ttyS0 root=/dev/vda</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web-1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='raw'/>
      <source pool='fast' volume='web-1-data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/isos/x.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='udp'>
      <mac address='52:54:00:aa:bb:cc'/>
      <source address='127.0.0.1' port='40001'>
        <local address='127.0.0.1' port='40002'/>
      </source>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:cd'/>
      <source bridge='br0'/>
      <model type='e1000'/>
    </interface>
  </devices>
</domain>"#;

    #[test]
    fn reads_what_a_capture_records() {
        let c = GuestConfig::from_domain_xml(XML).expect("parse");
        assert_eq!(c.name, "web-1");
        assert_eq!(c.domain_type, "qemu");
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory_kib, 524_288);
        assert_eq!(c.machine, "pc-i440fx-10.0");
        assert_eq!(c.firmware.kind, "bios");
        assert_eq!(c.firmware.kernel.as_deref(), Some("/var/cache/k/vmlinuz"));
        assert!(c.acpi);
        assert_eq!(c.disks.len(), 3);
        assert_eq!(c.disks[0].format, "qcow2");
        assert_eq!(c.disks[1].source_pool.as_deref(), Some("fast"));
        assert!(c.disks[0].is_capturable() && c.disks[1].is_capturable());
        assert!(!c.disks[2].is_capturable());
        assert_eq!(c.nics.len(), 2);
        assert_eq!(c.nics[0].udp_remote.as_deref(), Some("127.0.0.1:40001"));
        assert_eq!(c.nics[0].udp_local.as_deref(), Some("127.0.0.1:40002"));
        assert_eq!(c.nics[1].source.as_deref(), Some("br0"));
        assert_eq!(c.nics[1].model, "e1000");
        assert!(GuestConfig::from_domain_xml("<nope/>").is_err());
        assert!(GuestConfig::from_domain_xml("<domain><name>x</name></domain>").is_err());
    }

    #[test]
    fn memory_units() {
        let xml = XML.replace(
            "<memory unit='KiB'>524288</memory>",
            "<memory unit='GiB'>2</memory>",
        );
        assert_eq!(
            GuestConfig::from_domain_xml(&xml)
                .expect("parse")
                .memory_kib,
            2 * 1024 * 1024
        );
    }

    #[test]
    fn new_domain_xml_round_trips_and_escapes() {
        let base = GuestConfig::from_domain_xml(XML).expect("parse");
        let nd = NewDomain {
            base: &base,
            name: "web-2 <&>".into(),
            uuid: "11111111-2222-4333-8444-555555555555".into(),
            vcpus: 4,
            memory_kib: 1 << 20,
            domain_type: "qemu".into(),
            disks: vec![NewDisk {
                path: "/pool/web-2-vda.raw".into(),
                format: "raw".into(),
                target_dev: "vda".into(),
                bus: "virtio".into(),
                readonly: false,
                backing: None,
            }],
            macs: vec!["52:54:00:00:00:01".into(), "52:54:00:00:00:02".into()],
            console_log: Some("/var/log/imprint/web-2.log".into()),
            nvram: None,
        };
        let xml = nd.to_xml();
        let again = GuestConfig::from_domain_xml(&xml).expect("parse generated");
        assert_eq!(again.name, "web-2 <&>");
        assert_eq!(again.vcpus, 4);
        assert_eq!(again.memory_kib, 1 << 20);
        assert_eq!(again.firmware.cmdline, base.firmware.cmdline);
        assert_eq!(again.nics[0].mac, "52:54:00:00:00:01");
        assert_eq!(again.nics[0].udp_remote, base.nics[0].udp_remote);
        assert_eq!(again.nics[1].source.as_deref(), Some("br0"));
        assert_ne!(again.nics[1].mac, base.nics[1].mac);
        assert!(again.acpi);
    }
}
