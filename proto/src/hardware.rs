//! Hardware profiles (flavors), checked the same way by the daemon (at its
//! edge) and the agent (before it applies one): a [`pb::HardwareProfile`]
//! from the wire becomes a [`Hardware`] whose fields are known values.

use crate::v1 as pb;

/// Firmware a guest boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS.
    Bios,
    /// OVMF; each guest gets its own NVRAM copy (libvirt's firmware
    /// auto-selection).
    Uefi,
}

/// Machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// i440fx.
    Pc,
    /// Q35.
    Q35,
}

/// Disk bus of the image's disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    /// virtio-blk (`vdX`).
    Virtio,
    /// AHCI (`sdX`).
    Sata,
    /// virtio-scsi (`sdX`).
    Scsi,
}

/// NIC model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicModel {
    /// virtio-net.
    Virtio,
    /// Intel e1000.
    E1000,
    /// Realtek 8139.
    Rtl8139,
}

macro_rules! names {
    ($t:ty, $what:literal, $($v:ident => $s:literal),+ $(,)?) => {
        impl $t {
            /// The name used in the API and libvirt.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }

            /// From its name; "" is none.
            pub fn parse(s: &str) -> Result<Option<Self>, String> {
                match s {
                    "" => Ok(None),
                    $($s => Ok(Some(Self::$v)),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " {:?} (one of {})"),
                        other,
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
    };
}

names!(Firmware, "firmware", Bios => "bios", Uefi => "uefi");
names!(Machine, "machine type", Pc => "pc", Q35 => "q35");
names!(DiskBus, "disk bus", Virtio => "virtio", Sata => "sata", Scsi => "scsi");
names!(NicModel, "NIC model", Virtio => "virtio", E1000 => "e1000", Rtl8139 => "rtl8139");

/// A validated profile; `None` fields keep what the image says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hardware {
    /// Name, empty for inline fields.
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: Option<u32>,
    /// Memory.
    pub memory_mib: Option<u64>,
    /// Firmware.
    pub firmware: Option<Firmware>,
    /// Machine type.
    pub machine: Option<Machine>,
    /// Disk bus.
    pub disk_bus: Option<DiskBus>,
    /// NIC count.
    pub nic_count: Option<u32>,
    /// NIC model.
    pub nic_model: Option<NicModel>,
    /// Serial console.
    pub serial_console: Option<bool>,
}

pub use crate::limits::MAX_VCPUS;
/// The most NICs a profile may give.
pub const MAX_NICS: u32 = 16;

/// Profile names: 1-64 lower-case letters, digits, '-', '_' or '.'.
pub fn check_profile_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '.'])
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "profile name {name:?} must be 1-64 lower-case letters, digits, '-', '_' or '.'"
        ))
    }
}

impl TryFrom<&pb::HardwareProfile> for Hardware {
    type Error = String;

    fn try_from(p: &pb::HardwareProfile) -> Result<Self, String> {
        if !p.name.is_empty() {
            check_profile_name(&p.name)?;
        }
        crate::limits::check_vcpus(p.vcpus)?;
        crate::limits::check_memory_mib(p.memory_mib)?;
        if p.nic_count > MAX_NICS {
            return Err(format!("{} NICs is more than {MAX_NICS}", p.nic_count));
        }
        Ok(Self {
            name: p.name.clone(),
            vcpus: (p.vcpus != 0).then_some(p.vcpus),
            memory_mib: (p.memory_mib != 0).then_some(p.memory_mib),
            firmware: Firmware::parse(&p.firmware)?,
            machine: Machine::parse(&p.machine)?,
            disk_bus: DiskBus::parse(&p.disk_bus)?,
            nic_count: (p.nic_count != 0).then_some(p.nic_count),
            nic_model: NicModel::parse(&p.nic_model)?,
            serial_console: p.serial_console,
        })
    }
}

impl Hardware {
    /// A full profile (one an admin defines): every field given.
    pub fn complete(p: &pb::HardwareProfile) -> Result<Self, String> {
        check_profile_name(&p.name)?;
        let h = Self::try_from(p)?;
        let missing: Vec<&str> = [
            ("vcpus", h.vcpus.is_none()),
            ("memory_mib", h.memory_mib.is_none()),
            ("firmware", h.firmware.is_none()),
            ("machine", h.machine.is_none()),
            ("disk_bus", h.disk_bus.is_none()),
            ("nic_model", h.nic_model.is_none()),
        ]
        .into_iter()
        .filter_map(|(n, m)| m.then_some(n))
        .collect();
        if !missing.is_empty() {
            return Err(format!("profile {} needs {}", p.name, missing.join(", ")));
        }
        Ok(h)
    }

    /// `over`'s fields where it has them, else this one's.
    pub fn overlaid(&self, over: &Hardware) -> Hardware {
        Hardware {
            name: if over.name.is_empty() {
                self.name.clone()
            } else {
                over.name.clone()
            },
            vcpus: over.vcpus.or(self.vcpus),
            memory_mib: over.memory_mib.or(self.memory_mib),
            firmware: over.firmware.or(self.firmware),
            machine: over.machine.or(self.machine),
            disk_bus: over.disk_bus.or(self.disk_bus),
            nic_count: over.nic_count.or(self.nic_count),
            nic_model: over.nic_model.or(self.nic_model),
            serial_console: over.serial_console.or(self.serial_console),
        }
    }

    /// Back to the wire.
    pub fn to_pb(&self) -> pb::HardwareProfile {
        pb::HardwareProfile {
            name: self.name.clone(),
            vcpus: self.vcpus.unwrap_or(0),
            memory_mib: self.memory_mib.unwrap_or(0),
            firmware: self.firmware.map(Firmware::as_str).unwrap_or("").into(),
            machine: self.machine.map(Machine::as_str).unwrap_or("").into(),
            disk_bus: self.disk_bus.map(DiskBus::as_str).unwrap_or("").into(),
            nic_count: self.nic_count.unwrap_or(0),
            nic_model: self.nic_model.map(NicModel::as_str).unwrap_or("").into(),
            serial_console: self.serial_console,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_checked_at_the_edge() {
        let full = pb::HardwareProfile {
            name: "m1.small".into(),
            vcpus: 2,
            memory_mib: 2048,
            firmware: "uefi".into(),
            machine: "q35".into(),
            disk_bus: "virtio".into(),
            nic_count: 1,
            nic_model: "virtio".into(),
            serial_console: Some(true),
            ..Default::default()
        };
        let h = Hardware::complete(&full).expect("valid");
        assert_eq!(h.firmware, Some(Firmware::Uefi));
        assert_eq!(h.to_pb().machine, "q35");
        for (what, bad) in [
            (
                "firmware",
                pb::HardwareProfile {
                    firmware: "coreboot".into(),
                    ..full.clone()
                },
            ),
            (
                "machine",
                pb::HardwareProfile {
                    machine: "isapc".into(),
                    ..full.clone()
                },
            ),
            (
                "memory",
                pb::HardwareProfile {
                    memory_mib: 8,
                    ..full.clone()
                },
            ),
            (
                "vcpus",
                pb::HardwareProfile {
                    vcpus: 5000,
                    ..full.clone()
                },
            ),
            (
                "bus",
                pb::HardwareProfile {
                    disk_bus: "ide".into(),
                    ..full.clone()
                },
            ),
            (
                "name",
                pb::HardwareProfile {
                    name: "Big One".into(),
                    ..full.clone()
                },
            ),
            (
                "incomplete",
                pb::HardwareProfile {
                    nic_model: String::new(),
                    ..full.clone()
                },
            ),
        ] {
            assert!(Hardware::complete(&bad).is_err(), "{what}");
        }
        // Inline fields: the blanks keep the image's.
        let inline = Hardware::try_from(&pb::HardwareProfile {
            memory_mib: 512,
            ..Default::default()
        })
        .expect("inline");
        let merged = h.overlaid(&inline);
        assert_eq!((merged.memory_mib, merged.vcpus), (Some(512), Some(2)));
    }
}
