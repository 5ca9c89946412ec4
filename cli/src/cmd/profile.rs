//! `imprint profile ...`: hardware profiles (flavors), and the hardware
//! flags `image import` and `image update` share with them.

use anyhow::Result;
use clap::Subcommand;
use imprint_proto::v1 as pb;
use serde_json::{Value, json};

use crate::{
    client::Api,
    output::{self, Ctx},
};

/// Virtual hardware, as flags (each left out keeps what is there).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HardwareArgs {
    /// Virtual CPUs.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory (`1G`, `512M`).
    #[arg(long, value_parser = crate::parse::size)]
    pub memory: Option<u64>,
    /// bios or uefi.
    #[arg(long)]
    pub firmware: Option<String>,
    /// pc (i440fx) or q35.
    #[arg(long)]
    pub machine: Option<String>,
    /// virtio, sata or scsi.
    #[arg(long)]
    pub disk_bus: Option<String>,
    /// Number of NICs.
    #[arg(long)]
    pub nics: Option<u32>,
    /// virtio, e1000 or rtl8139.
    #[arg(long)]
    pub nic_model: Option<String>,
    /// Serial console on ttyS0 (yes/no).
    #[arg(long)]
    pub serial_console: Option<bool>,
}

impl HardwareArgs {
    /// Whether any flag was given.
    pub fn any(&self) -> bool {
        self.vcpus.is_some()
            || self.memory.is_some()
            || self.firmware.is_some()
            || self.machine.is_some()
            || self.disk_bus.is_some()
            || self.nics.is_some()
            || self.nic_model.is_some()
            || self.serial_console.is_some()
    }

    /// As the API's message.
    pub fn to_pb(&self, name: &str) -> pb::HardwareProfile {
        pb::HardwareProfile {
            name: name.into(),
            vcpus: self.vcpus.unwrap_or(0),
            memory_mib: self.memory.map_or(0, |m| m.div_ceil(1 << 20)),
            firmware: self.firmware.clone().unwrap_or_default(),
            machine: self.machine.clone().unwrap_or_default(),
            disk_bus: self.disk_bus.clone().unwrap_or_default(),
            nic_count: self.nics.unwrap_or(0),
            nic_model: self.nic_model.clone().unwrap_or_default(),
            serial_console: self.serial_console,
            ..Default::default()
        }
    }
}

/// `imprint profile ...`.
#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Every profile.
    List,
    /// One profile.
    Show { name: String },
    /// Define a profile (admins); every hardware flag but --serial-console
    /// is required.
    Create {
        name: String,
        #[command(flatten)]
        hardware: HardwareArgs,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Remove a profile (admins).
    Delete { name: String },
}

/// A profile as JSON (also used by `image show`).
pub fn profile_json(p: &pb::HardwareProfile) -> Value {
    json!({
        "name": p.name, "vcpus": p.vcpus, "memory_mib": p.memory_mib,
        "firmware": p.firmware, "machine": p.machine, "disk_bus": p.disk_bus,
        "nic_count": p.nic_count, "nic_model": p.nic_model,
        "serial_console": p.serial_console, "description": p.description,
    })
}

/// One line for people: `2 vCPU, 2048 MiB, uefi/q35, virtio disks, 1 virtio NIC`.
pub fn profile_summary(p: &pb::HardwareProfile) -> String {
    let mut parts = Vec::new();
    if p.vcpus > 0 {
        parts.push(format!("{} vCPU", p.vcpus));
    }
    if p.memory_mib > 0 {
        parts.push(format!("{} MiB", p.memory_mib));
    }
    for (v, what) in [
        (&p.firmware, ""),
        (&p.machine, " machine"),
        (&p.disk_bus, " disks"),
    ] {
        if !v.is_empty() {
            parts.push(format!("{v}{what}"));
        }
    }
    if p.nic_count > 0 || !p.nic_model.is_empty() {
        parts.push(format!("{} {} NIC(s)", p.nic_count, p.nic_model));
    }
    if let Some(s) = p.serial_console {
        parts.push(format!("serial console {}", if s { "on" } else { "off" }));
    }
    parts.join(", ")
}

fn emit(ctx: &Ctx, profiles: &[pb::HardwareProfile]) -> Result<u8> {
    let doc = json!({ "profiles": profiles.iter().map(profile_json).collect::<Vec<_>>() });
    ctx.emit(&doc, || {
        let rows: Vec<Vec<String>> = profiles
            .iter()
            .map(|p| vec![p.name.clone(), profile_summary(p), p.description.clone()])
            .collect();
        output::table(&["NAME", "HARDWARE", "DESCRIPTION"], &rows)
    })?;
    Ok(0)
}

/// Run a profile command.
pub async fn run(cmd: ProfileCommand, api: &mut Api, ctx: &Ctx) -> Result<u8> {
    let one = match cmd {
        ProfileCommand::List => {
            let all = api
                .profiles
                .list_profiles(pb::ListProfilesRequest {})
                .await?
                .into_inner()
                .profiles;
            return emit(ctx, &all);
        }
        ProfileCommand::Show { name } => {
            api.profiles
                .get_profile(pb::GetProfileRequest { name })
                .await?
        }
        ProfileCommand::Create {
            name,
            hardware,
            description,
        } => {
            api.profiles
                .create_profile(pb::HardwareProfile {
                    description,
                    ..hardware.to_pb(&name)
                })
                .await?
        }
        ProfileCommand::Delete { name } => {
            api.profiles
                .delete_profile(pb::GetProfileRequest { name })
                .await?
        }
    };
    emit(ctx, &[one.into_inner()])
}
