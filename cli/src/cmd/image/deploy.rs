//! `image deploy`: an image as a new guest, with its disks, hardware,
//! network settings and cloud-init user-data.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use imprint_proto::v1 as pb;

use crate::{client::Api, enum_names, exit::usage, follow::op_result, output::Ctx, parse};

/// `image deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Image id.
    id: String,
    /// Target host.
    #[arg(long)]
    host: String,
    /// Name of the new guest.
    #[arg(long = "name")]
    guest_name: String,
    /// Storage pool (default: the agent's).
    #[arg(long, default_value = "")]
    pool: String,
    /// Volume format: raw or qcow2 (default raw).
    #[arg(long = "disk-format")]
    disk_format: Option<String>,
    /// Size of each disk in order (`20G`, `512MiB`; repeat). Never smaller
    /// than the image's.
    #[arg(long = "disk-size", value_parser = parse::size)]
    disk_sizes: Vec<u64>,
    #[arg(long, default_value_t = 0)]
    vcpus: u32,
    /// Memory (`2G`, `512MiB`).
    #[arg(long, value_parser = parse::size)]
    memory: Option<u64>,
    /// Hardware profile (flavor) over the image's configuration; --vcpus
    /// and --memory still override it.
    #[arg(long, default_value = "")]
    profile: String,
    /// Guest host name.
    #[arg(long, default_value = "")]
    hostname: String,
    /// One NIC's settings, in NIC order (repeat):
    /// `addr=192.0.2.10/24,addr=2001:db8::10/64,gw4=192.0.2.1,gw6=...,dns=192.0.2.53,search=example.com,mac=52:54:00:..`;
    /// a gateway outside the address's subnet needs `onlink=yes`.
    /// A NIC without `--nic` uses DHCP.
    #[arg(long = "nic", value_parser = parse::nic)]
    nics: Vec<pb::InterfaceConfig>,
    /// cloud-init user-data file.
    #[arg(long)]
    user_data: Option<PathBuf>,
    /// Start the guest.
    #[arg(long)]
    start: bool,
    /// Start the guest at once, before its volumes are written: the agent
    /// fills them from the store while it runs (implies --start). The operation shows the
    /// phase "guest running; filling volumes", then succeeds when every
    /// volume is complete. Neither this nor --full: the daemon's default
    /// (lazy where it can be, for a started guest).
    #[arg(long, conflicts_with = "full")]
    lazy: bool,
    /// Write every volume before the guest starts.
    #[arg(long)]
    full: bool,
    /// Keep the image's identity (machine-id, SSH host keys, logs…) in the
    /// new guest instead of generalizing its volumes before it first boots.
    #[arg(long)]
    keep_identity: bool,
    /// Idempotency key.
    #[arg(long)]
    request_id: Option<String>,
    /// Wait until done, with progress; exit non-zero if it fails.
    #[arg(long)]
    wait: bool,
}

/// Run `image deploy`.
pub async fn run(api: &mut Api, ctx: &Ctx, a: DeployArgs) -> Result<u8> {
    let format = a.disk_format.as_deref().unwrap_or("raw");
    let disk_format = enum_names::disk_format(format)?;
    let user_data = match &a.user_data {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("read user-data {}", p.display()))?
        }
        None => String::new(),
    };
    imprint_proto::limits::check_user_data(&user_data).map_err(usage)?;
    imprint_proto::limits::check_guest_name(&a.guest_name).map_err(usage)?;
    let memory_mib = a.memory.map_or(0, |m| m.div_ceil(1 << 20));
    let req = pb::DeployImageRequest {
        request_id: a.request_id.unwrap_or_default(),
        image_id: a.id,
        host: a.host,
        guest_name: a.guest_name,
        pool: a.pool,
        disk_format,
        disk_sizes_bytes: a.disk_sizes,
        vcpus: a.vcpus,
        memory_mib,
        network: Some(pb::NetworkConfig {
            hostname: a.hostname,
            interfaces: a.nics,
        }),
        user_data,
        start: a.start || a.lazy,
        profile: a.profile,
        lazy: if a.lazy {
            Some(true)
        } else if a.full {
            Some(false)
        } else {
            None
        },
        keep_identity: a.keep_identity,
    };
    let op = api.images.deploy_image(req).await?.into_inner();
    op_result(api, ctx, op, a.wait).await
}
