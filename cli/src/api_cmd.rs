//! `imprint image|op|host ...`: the daemon's API from the command line.
//!
//! Every command prints the server's answer as a table (people) or as one
//! JSON/YAML document (scripts; field names are the proto's). Errors print
//! the server's message; the exit code tells the class (`docs/cli.md`).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use imprint_proto::v1 as pb;
use serde_json::{Value, json};

use crate::{
    client::{Api, Conn},
    exit,
    output::{self, Ctx},
    progress::Progress,
};

/// `imprint image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Images you can see, newest first.
    List(ListArgs),
    /// One image.
    Show { id: String },
    /// Capture a guest into a new image.
    Capture(CaptureArgs),
    /// Deploy an image as a new guest.
    Deploy(DeployArgs),
    /// Import a raw or qcow2 file lying on a host (in its agent's transfer
    /// directory) as a new image.
    Import {
        /// Host whose agent reads the file.
        #[arg(long)]
        host: String,
        /// Absolute path on that host.
        #[arg(long)]
        path: String,
        /// Name of the new image.
        #[arg(long)]
        name: String,
        /// raw or qcow2 (default: detect).
        #[arg(long = "disk-format")]
        disk_format: Option<String>,
        #[arg(long, default_value = "")]
        notes: String,
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        request_id: Option<String>,
        /// Wait until done, with progress; exit non-zero if it fails.
        #[arg(long)]
        wait: bool,
        /// Hardware profile of the new image (flags below go over it;
        /// without either: BIOS, one virtio disk and NIC, 1 vCPU, 1 GiB).
        #[arg(long)]
        profile: Option<String>,
        #[command(flatten)]
        hardware: crate::profile_cmd::HardwareArgs,
    },
    /// Write one disk of an image to a new raw or qcow2 file on a host.
    Export {
        id: String,
        /// Host whose agent writes the file.
        #[arg(long)]
        host: String,
        /// Absolute path of the new file on that host.
        #[arg(long)]
        path: String,
        /// Disk number (0: the first).
        #[arg(long, default_value_t = 0)]
        disk: u32,
        /// raw or qcow2.
        #[arg(long = "disk-format", default_value = "raw")]
        disk_format: String,
        #[arg(long)]
        request_id: Option<String>,
        /// Wait until done, with progress; exit non-zero if it fails.
        #[arg(long)]
        wait: bool,
    },
    /// Copy an image to another site's store (only the chunks it lacks
    /// are sent; the copy is checked there).
    Copy {
        id: String,
        /// Target site.
        #[arg(long)]
        site: String,
        #[arg(long)]
        request_id: Option<String>,
        /// Wait until done, with progress; exit non-zero if it fails.
        #[arg(long)]
        wait: bool,
    },
    /// Drop the copy of an image at one site (not its last copy).
    RemoveLocation {
        id: String,
        #[arg(long)]
        site: String,
    },
    /// Change name, notes or tags.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        notes: Option<String>,
        /// Replace the tags (repeat; `--tag ''` alone clears them).
        #[arg(long = "tag")]
        tags: Option<Vec<String>>,
        /// Replace the recommended profiles (repeat; `''` alone clears).
        #[arg(long = "recommend-profile")]
        recommended_profiles: Option<Vec<String>>,
        /// Deploys below this many vCPUs are refused (0: no minimum).
        #[arg(long)]
        min_vcpus: Option<u32>,
        /// Deploys below this memory are refused (`2G`; 0: no minimum).
        #[arg(long, value_parser = parse_size_or_zero)]
        min_memory: Option<u64>,
        /// Hardware every deploy gets unless it names a profile (replaces
        /// what was set; `--clear-hardware` removes it).
        #[command(flatten)]
        hardware: crate::profile_cmd::HardwareArgs,
        #[arg(long, conflicts_with = "vcpus")]
        clear_hardware: bool,
    },
    /// Delete an image (its chunks are reclaimed by GC unless shared).
    Delete {
        id: String,
        /// Idempotency key.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Protect an image from deletion (`--off` to lift it).
    Protect {
        id: String,
        #[arg(long)]
        off: bool,
    },
    /// Mark an image deprecated (`--undo`: active again).
    Deprecate {
        id: String,
        #[arg(long)]
        undo: bool,
    },
    /// Share with accounts.
    Share {
        id: String,
        #[arg(required = true)]
        accounts: Vec<String>,
    },
    /// Stop sharing with accounts.
    Unshare {
        id: String,
        #[arg(required = true)]
        accounts: Vec<String>,
    },
    /// Accept an image shared with you (it then shows in your lists).
    Accept { id: String },
    /// Reject an image shared with you.
    Reject { id: String },
    /// Make an image public (needs the publish right).
    Publish { id: String },
    /// Make a public image private (or shared) again.
    Unpublish { id: String },
}

/// Filters of `image list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    owner: Option<String>,
    /// private, shared or public.
    #[arg(long)]
    visibility: Option<String>,
    #[arg(long)]
    name_prefix: Option<String>,
    #[arg(long)]
    tag: Option<String>,
    /// creating, active, failed, deprecated, deleting.
    #[arg(long)]
    state: Option<String>,
    /// created_desc, created_asc, name_asc, name_desc.
    #[arg(long, default_value = "created_desc")]
    order_by: String,
    /// Images per page.
    #[arg(long, default_value_t = 50)]
    page_size: u32,
    /// Continue from a previous page's token.
    #[arg(long)]
    page_token: Option<String>,
    /// Follow every page.
    #[arg(long)]
    all: bool,
}

/// `image capture`.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Host the guest runs on.
    #[arg(long)]
    host: String,
    /// Guest (libvirt name or UUID).
    #[arg(long)]
    guest: String,
    /// Name of the new image.
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "")]
    notes: String,
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Leave this disk out (target device, e.g. vdb; repeat).
    #[arg(long = "exclude-disk")]
    exclude_disks: Vec<String>,
    /// Seconds to wait for the ACPI shutdown.
    #[arg(long, default_value_t = 300)]
    shutdown_timeout: u32,
    /// Force the guest off after the timeout (otherwise fail, guest left running).
    #[arg(long)]
    force_off: bool,
    /// Capture a running guest without shutting it down: its guest agent
    /// (qemu-guest-agent) freezes the filesystems while the point-in-time
    /// view is taken. A guest without a responding agent is refused.
    #[arg(long, conflicts_with_all = ["crash_consistent", "force_off"])]
    live: bool,
    /// Capture a running guest without shutting it down or freezing it
    /// (as after a power cut; for guests without an agent).
    #[arg(long, conflicts_with = "force_off")]
    crash_consistent: bool,
    /// With --live: the longest the filesystems may stay frozen, in
    /// seconds (default: the agent's, 10).
    #[arg(long, requires = "live", value_parser = clap::value_parser!(u32).range(1..=3600))]
    freeze_timeout: Option<u32>,
    /// Idempotency key: a retry with the same key returns the same operation.
    #[arg(long)]
    request_id: Option<String>,
    /// Wait until done, with progress; exit non-zero if it fails.
    #[arg(long)]
    wait: bool,
}

impl CaptureArgs {
    fn mode(&self) -> pb::CaptureMode {
        match (self.live, self.crash_consistent) {
            (true, _) => pb::CaptureMode::Live,
            (false, true) => pb::CaptureMode::CrashConsistent,
            (false, false) => pb::CaptureMode::Offline,
        }
    }
}

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
    /// Volume format: raw or qcow2.
    #[arg(long = "disk-format", default_value = "raw")]
    disk_format: String,
    /// Size of each disk in order (`20G`, `512MiB`; repeat). Never smaller
    /// than the image's.
    #[arg(long = "disk-size", value_parser = parse_size)]
    disk_sizes: Vec<u64>,
    #[arg(long, default_value_t = 0)]
    vcpus: u32,
    /// Memory (`2G`, `512MiB`).
    #[arg(long, value_parser = parse_size)]
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
    #[arg(long = "nic", value_parser = parse_nic)]
    nics: Vec<pb::InterfaceConfig>,
    /// cloud-init user-data file.
    #[arg(long)]
    user_data: Option<PathBuf>,
    /// Start the guest.
    #[arg(long)]
    start: bool,
    /// Idempotency key.
    #[arg(long)]
    request_id: Option<String>,
    /// Wait until done, with progress; exit non-zero if it fails.
    #[arg(long)]
    wait: bool,
}

/// `imprint op ...`
#[derive(Debug, Subcommand)]
pub enum OpCommand {
    /// Your operations, newest first.
    List {
        /// Only running ones.
        #[arg(long)]
        running: bool,
        #[arg(long, default_value_t = 50)]
        page_size: u32,
    },
    /// One operation.
    Show { id: String },
    /// Follow an operation until it ends (exit non-zero if it fails).
    Watch { id: String },
    /// Cancel a running operation.
    Cancel { id: String },
}

/// `imprint account ...` (admin accounts only).
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Create an account; prints its API token once.
    Create {
        name: String,
        /// May make images public.
        #[arg(long)]
        can_publish: bool,
        /// May administer accounts, use every host, see every operation.
        #[arg(long)]
        admin: bool,
    },
    /// Replace an account's token; prints the new one.
    Token { name: String },
    /// Let an account use a host (`*`: every host).
    AllowHost { name: String, host: String },
    /// Take a host away from an account.
    DisallowHost { name: String, host: String },
    /// Every account.
    List,
}

/// `imprint host ...`
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Registered hosts and whether their agent is alive.
    List,
    /// The sites (named stores) and how many hosts each has.
    Sites,
}

/// [`parse_size`] that also takes 0.
fn parse_size_or_zero(s: &str) -> Result<u64, String> {
    if s == "0" { Ok(0) } else { parse_size(s) }
}

/// `20G`, `512MiB`, `1T`, `4096`: binary units (like qemu-img).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 20G, 512MiB, 1T)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G, T)")),
    };
    let v = n * mult as f64;
    if !(v.is_finite() && v >= 1.0 && v < u64::MAX as f64) {
        return Err(format!("{s:?} must be a positive size"));
    }
    Ok(v as u64)
}

fn parse_nic(s: &str) -> Result<pb::InterfaceConfig, String> {
    let mut nic = pb::InterfaceConfig::default();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        match k {
            "addr" => nic.addresses.push(v.into()),
            "gw4" => nic.gateway4 = v.into(),
            "gw6" => nic.gateway6 = v.into(),
            "dns" => nic.nameservers.push(v.into()),
            "search" => nic.search_domains.push(v.into()),
            "mac" => nic.mac_address = v.into(),
            "onlink" => {
                nic.gateway_on_link = match v {
                    "yes" | "true" => true,
                    "no" | "false" => false,
                    _ => return Err(format!("onlink={v:?}: write onlink=yes or onlink=no")),
                }
            }
            other => {
                return Err(format!(
                    "unknown NIC setting {other:?} (addr, gw4, gw6, dns, search, mac, onlink)"
                ));
            }
        }
    }
    Ok(nic)
}

fn disk_format_pb(s: &str) -> Result<i32> {
    Ok(match s {
        "raw" => pb::DiskFormat::Raw,
        "qcow2" => pb::DiskFormat::Qcow2,
        o => bail!(usage(format!("unknown disk format {o:?} (raw, qcow2)"))),
    } as i32)
}

/// The CLI's name of a proto enum value: its proto name without the
/// enum's prefix, lower-case (`IMAGE_STATE_ACTIVE` → `active`); "unknown"
/// for numbers this CLI does not know.
fn enum_name(proto_name: Option<&str>, prefix: &str) -> String {
    proto_name
        .and_then(|n| n.strip_prefix(prefix))
        .filter(|n| *n != "UNSPECIFIED")
        .map_or_else(|| "unknown".to_string(), str::to_ascii_lowercase)
}

/// The proto enum value the CLI name `name` stands for (see [`enum_name`]);
/// a usage error listing the `allowed` names otherwise.
fn enum_value<E: Into<i32>>(
    name: &str,
    prefix: &str,
    from_str_name: fn(&str) -> Option<E>,
    allowed: &[&str],
) -> Result<i32> {
    match from_str_name(&format!("{prefix}{}", name.to_ascii_uppercase())) {
        Some(v) if allowed.contains(&name) => Ok(v.into()),
        _ => bail!(usage(format!(
            "unknown value {name:?} ({})",
            allowed.join(", ")
        ))),
    }
}

fn state_name(s: i32) -> String {
    enum_name(
        pb::ImageState::try_from(s).ok().map(|v| v.as_str_name()),
        "IMAGE_STATE_",
    )
}

fn image_state(s: &str) -> Result<i32> {
    enum_value(
        s,
        "IMAGE_STATE_",
        pb::ImageState::from_str_name,
        &["creating", "active", "failed", "deprecated", "deleting"],
    )
}

fn visibility_name(v: i32) -> String {
    enum_name(
        pb::Visibility::try_from(v).ok().map(|v| v.as_str_name()),
        "VISIBILITY_",
    )
}

fn op_state_name(s: i32) -> String {
    enum_name(
        pb::OperationState::try_from(s)
            .ok()
            .map(|v| v.as_str_name()),
        "OPERATION_STATE_",
    )
}

/// A usage error (exit code 2) with a message.
fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(tonic::Status::invalid_argument(msg))
}

fn image_json(i: &pb::Image) -> Value {
    json!({
        "id": i.id, "name": i.name, "notes": i.notes, "tags": i.tags, "owner": i.owner,
        "state": state_name(i.state), "visibility": visibility_name(i.visibility),
        "protected": i.protected, "failure_reason": i.failure_reason,
        "source_host": i.source_host, "source_guest": i.source_guest,
        "disks": i.disks.iter().map(|d| json!({"name": d.name, "size_bytes": d.size_bytes, "sha256": d.sha256})).collect::<Vec<_>>(),
        "size_bytes": i.size_bytes, "exclusive_bytes": i.exclusive_bytes,
        "config": serde_json::from_str::<Value>(&i.config_json).unwrap_or(Value::Null),
        "members": i.members.iter().map(|m| json!({"account": m.account, "status": m.status})).collect::<Vec<_>>(),
        "created_unix": i.created_unix, "updated_unix": i.updated_unix,
        "locations": i.locations.iter().map(|l| json!({"site": l.site, "state": location_state_name(l.state)})).collect::<Vec<_>>(),
        "damage": i.damage,
        "recommended_profiles": i.recommended_profiles,
        "min_vcpus": i.min_vcpus, "min_memory_mib": i.min_memory_mib,
        "hardware": i.hardware.as_ref().map(crate::profile_cmd::profile_json),
    })
}

fn location_state_name(s: i32) -> String {
    enum_name(
        pb::LocationState::try_from(s).ok().map(|v| v.as_str_name()),
        "LOCATION_STATE_",
    )
}

/// A capture mode as the CLI prints it (unspecified is offline).
fn capture_mode_name(mode: i32) -> String {
    match pb::CaptureMode::try_from(mode) {
        Ok(pb::CaptureMode::Unspecified) => "offline".into(),
        m => enum_name(m.ok().map(|m| m.as_str_name()), "CAPTURE_MODE_"),
    }
}

fn op_json(o: &pb::Operation) -> Value {
    let capture = o.capture.as_ref().map(|c| {
        json!({
            "image_id": c.image_id, "bytes_total": c.bytes_total, "bytes_read": c.bytes_read,
            "bytes_stored": c.bytes_stored, "bytes_deduplicated": c.bytes_deduplicated,
            "zero_bytes_skipped": c.zero_bytes_skipped, "shutdown_seconds": c.shutdown_seconds,
            "read_seconds": c.read_seconds, "boot_seconds": c.boot_seconds,
            "downtime_seconds": c.downtime_seconds, "point_in_time": c.point_in_time,
            "mode": capture_mode_name(c.mode), "freeze_seconds": c.freeze_seconds,
            "incremental_parent": c.incremental_parent, "full_read_reason": c.full_read_reason,
            "bytes_reused": c.bytes_reused,
        })
    });
    let deploy = o.deploy.as_ref().map(|d| {
        json!({
            "guest_name": d.guest_name, "guest_uuid": d.guest_uuid, "volumes": d.volumes,
            "mac_addresses": d.mac_addresses, "bytes_written": d.bytes_written,
            "write_seconds": d.write_seconds, "started": d.started,
        })
    });
    json!({
        "id": o.id, "kind": o.kind, "state": op_state_name(o.state), "phase": o.phase,
        "bytes_done": o.bytes_done, "bytes_total": o.bytes_total,
        "rate_bytes_per_second": o.rate_bytes_per_second, "eta_seconds": o.eta_seconds,
        "image_id": o.image_id, "host": o.host, "error": o.error, "error_code": o.error_code,
        "capture": capture, "deploy": deploy, "request_id": o.request_id,
        "export": o.export.as_ref().map(|e| json!({"path": e.path, "size_bytes": e.size_bytes})),
        "copy": o.copy.as_ref().map(|c| json!({
            "chunks_total": c.chunks_total, "chunks_sent": c.chunks_sent, "chunks_present": c.chunks_present,
            "bytes_sent": c.bytes_sent, "image_size_bytes": c.image_size_bytes,
            "bytes_verified": c.bytes_verified, "seconds": c.seconds,
        })),
        "created_unix": o.created_unix, "updated_unix": o.updated_unix, "finished_unix": o.finished_unix,
    })
}

fn image_row(i: &pb::Image) -> Vec<String> {
    vec![
        i.id.clone(),
        i.name.clone(),
        i.owner.clone(),
        state_name(i.state),
        visibility_name(i.visibility),
        output::bytes(i.size_bytes),
        i.tags.join(","),
    ]
}

const IMAGE_HEADER: [&str; 7] = ["ID", "NAME", "OWNER", "STATE", "VISIBILITY", "SIZE", "TAGS"];

fn image_fields(i: &pb::Image) -> String {
    let mut f = vec![
        ("id", i.id.clone()),
        ("name", i.name.clone()),
        ("owner", i.owner.clone()),
        ("state", state_name(i.state)),
        ("visibility", visibility_name(i.visibility)),
        ("protected", i.protected.to_string()),
        ("size", output::bytes(i.size_bytes)),
        ("freed if deleted", output::bytes(i.exclusive_bytes)),
        ("source", format!("{} / {}", i.source_host, i.source_guest)),
        ("tags", i.tags.join(", ")),
        ("notes", i.notes.clone()),
    ];
    if !i.damage.is_empty() {
        f.push(("DAMAGED", i.damage.clone()));
    }
    if !i.recommended_profiles.is_empty() {
        f.push(("recommended profiles", i.recommended_profiles.join(", ")));
    }
    if i.min_vcpus > 0 || i.min_memory_mib > 0 {
        f.push((
            "requires",
            format!("{} vCPU, {} MiB", i.min_vcpus, i.min_memory_mib),
        ));
    }
    if let Some(h) = &i.hardware {
        f.push(("hardware", crate::profile_cmd::profile_summary(h)));
    }
    if let Ok(c) = serde_json::from_str::<Value>(&i.config_json)
        && c.is_object()
    {
        f.push((
            "configuration",
            format!(
                "{} vCPU, {} MiB, {} firmware{}",
                c["vcpus"],
                c["memory_kib"].as_u64().unwrap_or(0) / 1024,
                c["firmware"]["kind"].as_str().unwrap_or("?"),
                match c["machine"].as_str() {
                    Some(m) if !m.is_empty() => format!(", machine {m}"),
                    _ => String::new(),
                }
            ),
        ));
    }
    for (n, d) in i.disks.iter().enumerate() {
        f.push((
            "disk",
            format!(
                "{n}: {} {} sha256 {}",
                d.name,
                output::bytes(d.size_bytes),
                d.sha256
            ),
        ));
    }
    for m in &i.members {
        f.push(("shared with", format!("{} ({})", m.account, m.status)));
    }
    for l in &i.locations {
        f.push((
            "stored at",
            format!("{} ({})", l.site, location_state_name(l.state)),
        ));
    }
    if !i.failure_reason.is_empty() {
        f.push(("failure", i.failure_reason.clone()));
    }
    output::fields(&f)
}

fn op_fields(o: &pb::Operation) -> String {
    let mut f = vec![
        ("id", o.id.clone()),
        ("kind", o.kind.clone()),
        ("state", op_state_name(o.state)),
        ("phase", o.phase.clone()),
        (
            "progress",
            format!(
                "{} / {}",
                output::bytes(o.bytes_done),
                output::bytes(o.bytes_total)
            ),
        ),
        ("image", o.image_id.clone()),
        ("host", o.host.clone()),
    ];
    if !o.error.is_empty() {
        f.push(("error", o.error.clone()));
    }
    if let Some(c) = &o.capture {
        f.push((
            "captured",
            format!(
                "{} read, {} stored, {} deduplicated; {}{}",
                output::bytes(c.bytes_read),
                output::bytes(c.bytes_stored),
                output::bytes(c.bytes_deduplicated),
                match pb::CaptureMode::try_from(c.mode) {
                    Ok(pb::CaptureMode::Live) =>
                        format!("live, filesystems frozen {:.2} s", c.freeze_seconds),
                    Ok(pb::CaptureMode::CrashConsistent) => "live, crash-consistent".to_string(),
                    _ => format!("downtime {:.1} s", c.downtime_seconds),
                },
                if c.point_in_time {
                    format!(" (disks read in {:.1} s while it ran)", c.read_seconds)
                } else {
                    String::new()
                }
            ),
        ));
        if !c.incremental_parent.is_empty() {
            f.push((
                "incremental",
                format!(
                    "from image {}: {} unchanged, reused unread",
                    c.incremental_parent,
                    output::bytes(c.bytes_reused)
                ),
            ));
        }
        if !c.full_read_reason.is_empty() {
            f.push(("full read", c.full_read_reason.clone()));
        }
    }
    if let Some(d) = &o.deploy {
        f.push((
            "deployed",
            format!(
                "guest {} ({}), {} written, started: {}",
                d.guest_name,
                d.guest_uuid,
                output::bytes(d.bytes_written),
                d.started
            ),
        ));
    }
    output::fields(&f)
}

async fn show_image(ctx: &Ctx, i: pb::Image) -> Result<u8> {
    ctx.emit(&image_json(&i), || image_fields(&i))?;
    Ok(0)
}

/// Follow an operation with a progress line; the final state.
async fn follow(api: &mut Api, ctx: &Ctx, id: &str) -> Result<pb::Operation> {
    let mut progress = Progress::new("", ctx.quiet);
    let mut last: Option<pb::Operation> = None;
    loop {
        let stream = api
            .ops
            .watch_operation(pb::GetDaemonOperationRequest { id: id.into() })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(e) if e.code() == tonic::Code::Unavailable && last.is_some() => {
                // The daemon restarted: follow on once it is back.
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // The stream ends early when the daemon restarts: watch again.
        while let Ok(Some(o)) = stream.message().await {
            if o.state != pb::OperationState::Running as i32 {
                progress.set_label(&format!("{} {}", o.kind, op_state_name(o.state)));
                progress.finish_at(o.bytes_done, o.bytes_total, "");
                return Ok(o);
            }
            progress.set_label(&o.phase);
            progress.update_with_rate(
                o.bytes_done,
                o.bytes_total,
                o.rate_bytes_per_second,
                o.eta_seconds,
            );
            last = Some(o);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Print an operation; with `wait`, follow it first and fail like it did.
async fn op_result(api: &mut Api, ctx: &Ctx, op: pb::Operation, wait: bool) -> Result<u8> {
    let op = if wait && op.state == pb::OperationState::Running as i32 {
        follow(api, ctx, &op.id).await?
    } else {
        op
    };
    ctx.emit(&op_json(&op), || op_fields(&op))?;
    // The table already shows the error; JSON on stdout is for scripts, so
    // people get the one line on stderr there.
    Ok(op_exit(&op, ctx.format != output::Format::Table))
}

fn op_exit(op: &pb::Operation, say_error: bool) -> u8 {
    match pb::OperationState::try_from(op.state) {
        Ok(pb::OperationState::Failed | pb::OperationState::Cancelled) => {
            if say_error {
                eprintln!(
                    "imprint: operation {} {}: {}",
                    op.id,
                    op_state_name(op.state),
                    op.error
                );
            }
            exit::for_code(tonic::Code::from_i32(op.error_code))
        }
        _ => 0,
    }
}

/// Name the daemon in "cannot connect" errors.
/// A connection failure names the daemon's endpoint. UNAVAILABLE answered
/// by the daemon itself (an agent down, a store unreachable) is passed on
/// as it is: it is not about reaching the daemon.
pub(crate) fn unreachable_names_endpoint(e: anyhow::Error, endpoint: &str) -> anyhow::Error {
    use std::error::Error as _;
    let transport = |s: &tonic::Status| {
        s.source()
            .is_some_and(|src| src.downcast_ref::<tonic::transport::Error>().is_some())
    };
    match e.downcast_ref::<tonic::Status>() {
        Some(s) if s.code() == tonic::Code::Unavailable && transport(s) => {
            anyhow::Error::new(tonic::Status::unavailable(format!(
                "cannot reach the daemon at {endpoint}: {}",
                s.message()
            )))
        }
        _ => e,
    }
}

/// Run an image command.
pub async fn image(cmd: ImageCommand, conn: &Conn, ctx: &Ctx) -> Result<u8> {
    let mut api = conn.connect()?;
    let endpoint = api.endpoint.clone();
    image_inner(cmd, &mut api, ctx)
        .await
        .map_err(|e| unreachable_names_endpoint(e, &endpoint))
}

async fn image_inner(cmd: ImageCommand, api: &mut Api, ctx: &Ctx) -> Result<u8> {
    match cmd {
        ImageCommand::List(a) => {
            let visibility = a
                .visibility
                .as_deref()
                .map(|v| {
                    enum_value(
                        v,
                        "VISIBILITY_",
                        pb::Visibility::from_str_name,
                        &["private", "shared", "public"],
                    )
                })
                .transpose()?
                .unwrap_or(0);
            let state = a
                .state
                .as_deref()
                .map(image_state)
                .transpose()?
                .unwrap_or(0);
            let mut token = a.page_token.clone().unwrap_or_default();
            let mut all = Vec::new();
            let next = loop {
                let r = api
                    .images
                    .list_images(pb::ListImagesRequest {
                        page_size: a.page_size,
                        page_token: token.clone(),
                        owner: a.owner.clone().unwrap_or_default(),
                        visibility,
                        name_prefix: a.name_prefix.clone().unwrap_or_default(),
                        tag: a.tag.clone().unwrap_or_default(),
                        state,
                        order_by: a.order_by.clone(),
                    })
                    .await?
                    .into_inner();
                all.extend(r.images);
                if !a.all || r.next_page_token.is_empty() {
                    break r.next_page_token;
                }
                token = r.next_page_token;
            };
            let doc = json!({
                "images": all.iter().map(image_json).collect::<Vec<_>>(),
                "next_page_token": next,
            });
            ctx.emit(&doc, || {
                let rows: Vec<Vec<String>> = all.iter().map(image_row).collect();
                let mut t = output::table(&IMAGE_HEADER, &rows);
                if !next.is_empty() {
                    t.push_str(&format!("(more: --page-token {next} or --all)\n"));
                }
                t
            })?;
            Ok(0)
        }
        ImageCommand::Show { id } => {
            let i = api
                .images
                .get_image(pb::GetImageRequest { id })
                .await?
                .into_inner();
            show_image(ctx, i).await
        }
        ImageCommand::Capture(a) => {
            let mode = a.mode().into();
            let op = api
                .images
                .capture_image(pb::CaptureImageRequest {
                    request_id: a.request_id.unwrap_or_default(),
                    host: a.host,
                    guest: a.guest,
                    name: a.name,
                    notes: a.notes,
                    tags: a.tags,
                    exclude_disks: a.exclude_disks,
                    shutdown_timeout_seconds: a.shutdown_timeout,
                    allow_force_off: a.force_off,
                    mode,
                    freeze_timeout_seconds: a.freeze_timeout.unwrap_or(0),
                })
                .await?
                .into_inner();
            op_result(api, ctx, op, a.wait).await
        }
        ImageCommand::Deploy(a) => {
            let disk_format = disk_format_pb(&a.disk_format)?;
            let user_data = match &a.user_data {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("read user-data {}", p.display()))?,
                None => String::new(),
            };
            imprint_proto::limits::check_user_data(&user_data).map_err(usage)?;
            imprint_proto::limits::check_guest_name(&a.guest_name).map_err(usage)?;
            let memory_mib = a.memory.map_or(0, |m| m.div_ceil(1 << 20));
            let op = api
                .images
                .deploy_image(pb::DeployImageRequest {
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
                    start: a.start,
                    profile: a.profile,
                })
                .await?
                .into_inner();
            op_result(api, ctx, op, a.wait).await
        }
        ImageCommand::Import {
            host,
            path,
            name,
            disk_format,
            notes,
            tags,
            request_id,
            wait,
            profile,
            hardware,
        } => {
            let format = match disk_format.as_deref() {
                None => pb::DiskFormat::Unspecified as i32,
                Some(f) => disk_format_pb(f)?,
            };
            let op = api
                .images
                .import_image(pb::ImportImageRequest {
                    request_id: request_id.unwrap_or_default(),
                    host,
                    path,
                    format,
                    name,
                    notes,
                    tags,
                    profile: profile.unwrap_or_default(),
                    hardware: Some(hardware.to_pb("")),
                })
                .await?
                .into_inner();
            op_result(api, ctx, op, wait).await
        }
        ImageCommand::Export {
            id,
            host,
            path,
            disk,
            disk_format,
            request_id,
            wait,
        } => {
            let op = api
                .images
                .export_image(pb::ExportImageRequest {
                    request_id: request_id.unwrap_or_default(),
                    image_id: id,
                    host,
                    disk,
                    path,
                    format: disk_format_pb(&disk_format)?,
                })
                .await?
                .into_inner();
            op_result(api, ctx, op, wait).await
        }
        ImageCommand::Copy {
            id,
            site,
            request_id,
            wait,
        } => {
            let op = api
                .images
                .copy_image(pb::CopyImageRequest {
                    request_id: request_id.unwrap_or_default(),
                    image_id: id,
                    site,
                })
                .await?
                .into_inner();
            op_result(api, ctx, op, wait).await
        }
        ImageCommand::RemoveLocation { id, site } => {
            let i = api
                .images
                .remove_image_location(pb::RemoveImageLocationRequest { image_id: id, site })
                .await?
                .into_inner();
            show_image(ctx, i).await
        }
        ImageCommand::Update {
            id,
            name,
            notes,
            tags,
            recommended_profiles,
            min_vcpus,
            min_memory,
            hardware,
            clear_hardware,
        } => {
            let mut mask = Vec::new();
            for (given, field) in [
                (recommended_profiles.is_some(), "recommended_profiles"),
                (min_vcpus.is_some(), "min_vcpus"),
                (min_memory.is_some(), "min_memory_mib"),
                (hardware.any() || clear_hardware, "hardware"),
            ] {
                if given {
                    mask.push(field.to_string());
                }
            }
            if name.is_some() {
                mask.push("name".to_string());
            }
            if notes.is_some() {
                mask.push("notes".into());
            }
            if tags.is_some() {
                mask.push("tags".into());
            }
            if mask.is_empty() {
                bail!(usage(
                    "nothing to update: give --name, --notes, --tag, --recommend-profile, --min-vcpus, --min-memory or hardware flags".into()
                ));
            }
            let tags: Vec<String> = tags
                .unwrap_or_default()
                .into_iter()
                .filter(|t| !t.is_empty())
                .collect();
            let i = api
                .images
                .update_image(pb::UpdateImageRequest {
                    id,
                    update_mask: mask,
                    name: name.unwrap_or_default(),
                    notes: notes.unwrap_or_default(),
                    tags,
                    recommended_profiles: recommended_profiles
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|p| !p.is_empty())
                        .collect(),
                    min_vcpus: min_vcpus.unwrap_or(0),
                    min_memory_mib: min_memory.map_or(0, |m| m.div_ceil(1 << 20)),
                    hardware: (!clear_hardware).then(|| hardware.to_pb("")),
                })
                .await?
                .into_inner();
            show_image(ctx, i).await
        }
        ImageCommand::Delete { id, request_id } => {
            let op = api
                .images
                .delete_image(pb::DeleteImageRequest {
                    request_id: request_id.unwrap_or_default(),
                    id,
                })
                .await?
                .into_inner();
            op_result(api, ctx, op, true).await
        }
        ImageCommand::Protect { id, off } => {
            let i = api
                .images
                .set_protected(pb::SetProtectedRequest {
                    id,
                    protected: !off,
                })
                .await?
                .into_inner();
            show_image(ctx, i).await
        }
        ImageCommand::Deprecate { id, undo } => {
            let i = api
                .images
                .deprecate_image(pb::DeprecateImageRequest {
                    id,
                    deprecated: !undo,
                })
                .await?
                .into_inner();
            show_image(ctx, i).await
        }
        ImageCommand::Share { id, accounts } => {
            let i = api
                .images
                .share_image(pb::ShareImageRequest { id, accounts })
                .await?
                .into_inner();
            show_image(ctx, i).await
        }
        ImageCommand::Unshare { id, accounts } => {
            let i = api
                .images
                .unshare_image(pb::ShareImageRequest { id, accounts })
                .await?
                .into_inner();
            show_image(ctx, i).await
        }
        ImageCommand::Accept { id } => {
            let i = api
                .images
                .accept_share(pb::ShareDecisionRequest { id })
                .await?
                .into_inner();
            show_image(ctx, i).await
        }
        ImageCommand::Reject { id } => {
            let i = api
                .images
                .reject_share(pb::ShareDecisionRequest { id })
                .await?
                .into_inner();
            show_image(ctx, i).await
        }
        ImageCommand::Publish { id } => {
            let i = api
                .images
                .publish_image(pb::PublishImageRequest { id })
                .await?
                .into_inner();
            show_image(ctx, i).await
        }
        ImageCommand::Unpublish { id } => {
            let i = api
                .images
                .unpublish_image(pb::PublishImageRequest { id })
                .await?
                .into_inner();
            show_image(ctx, i).await
        }
    }
}

/// Run an operation command.
pub async fn op(cmd: OpCommand, conn: &Conn, ctx: &Ctx) -> Result<u8> {
    let mut api = conn.connect()?;
    let endpoint = api.endpoint.clone();
    op_inner(cmd, &mut api, ctx)
        .await
        .map_err(|e| unreachable_names_endpoint(e, &endpoint))
}

async fn op_inner(cmd: OpCommand, api: &mut Api, ctx: &Ctx) -> Result<u8> {
    match cmd {
        OpCommand::List { running, page_size } => {
            let r = api
                .ops
                .list_operations(pb::ListDaemonOperationsRequest {
                    page_size,
                    page_token: String::new(),
                    running_only: running,
                })
                .await?
                .into_inner();
            let doc = json!({
                "operations": r.operations.iter().map(op_json).collect::<Vec<_>>(),
                "next_page_token": r.next_page_token,
            });
            ctx.emit(&doc, || {
                let rows: Vec<Vec<String>> = r
                    .operations
                    .iter()
                    .map(|o| {
                        vec![
                            o.id.clone(),
                            o.kind.clone(),
                            op_state_name(o.state),
                            o.phase.clone(),
                            o.host.clone(),
                            o.image_id.clone(),
                        ]
                    })
                    .collect();
                output::table(&["ID", "KIND", "STATE", "PHASE", "HOST", "IMAGE"], &rows)
            })?;
            Ok(0)
        }
        OpCommand::Show { id } => {
            let o = api
                .ops
                .get_operation(pb::GetDaemonOperationRequest { id })
                .await?
                .into_inner();
            op_result(api, ctx, o, false).await
        }
        OpCommand::Watch { id } => {
            let o = api
                .ops
                .get_operation(pb::GetDaemonOperationRequest { id })
                .await?
                .into_inner();
            op_result(api, ctx, o, true).await
        }
        OpCommand::Cancel { id } => {
            let o = api
                .ops
                .cancel_operation(pb::GetDaemonOperationRequest { id })
                .await?
                .into_inner();
            ctx.emit(&op_json(&o), || op_fields(&o))?;
            Ok(0)
        }
    }
}

/// Run a host command.
pub async fn host(cmd: HostCommand, conn: &Conn, ctx: &Ctx) -> Result<u8> {
    let mut api = conn.connect()?;
    let endpoint = api.endpoint.clone();
    host_inner(cmd, &mut api, ctx)
        .await
        .map_err(|e| unreachable_names_endpoint(e, &endpoint))
}

async fn host_inner(cmd: HostCommand, api: &mut Api, ctx: &Ctx) -> Result<u8> {
    match cmd {
        HostCommand::Sites => {
            let sites = api
                .images
                .list_sites(pb::ListSitesRequest {})
                .await?
                .into_inner()
                .sites;
            let doc = json!({
                "sites": sites.iter().map(|s| json!({"name": s.name, "store": s.store, "hosts": s.hosts})).collect::<Vec<_>>(),
            });
            ctx.emit(&doc, || {
                let rows: Vec<Vec<String>> = sites
                    .iter()
                    .map(|s| vec![s.name.clone(), s.store.clone(), s.hosts.to_string()])
                    .collect();
                output::table(&["SITE", "STORE", "HOSTS"], &rows)
            })?;
            Ok(0)
        }
        HostCommand::List => {
            let hosts = api
                .hosts
                .list_hosts(pb::ListHostsRequest {})
                .await?
                .into_inner()
                .hosts;
            let doc = json!({
                "hosts": hosts.iter().map(|h| json!({
                    "name": h.name, "agent_endpoint": h.agent_endpoint, "libvirt_uri": h.libvirt_uri,
                    "version": h.version, "cpus": h.cpus, "memory_bytes": h.memory_bytes,
                    "site": h.site, "alive": h.alive, "last_heartbeat_unix": h.last_heartbeat_unix,
                })).collect::<Vec<_>>(),
            });
            ctx.emit(&doc, || {
                let rows: Vec<Vec<String>> = hosts
                    .iter()
                    .map(|h| {
                        vec![
                            h.name.clone(),
                            if h.alive { "alive" } else { "silent" }.into(),
                            h.agent_endpoint.clone(),
                            h.version.clone(),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "STATUS", "AGENT", "VERSION"], &rows)
            })?;
            Ok(0)
        }
    }
}

fn account_json(a: &pb::Account) -> Value {
    json!({
        "name": a.name, "can_publish": a.can_publish, "admin": a.admin,
        "hosts": a.hosts, "created_unix": a.created_unix,
    })
}

fn account_row(a: &pb::Account) -> Vec<String> {
    vec![
        a.name.clone(),
        if a.admin {
            "admin"
        } else if a.can_publish {
            "publisher"
        } else {
            "user"
        }
        .into(),
        if a.admin {
            "*".into()
        } else {
            a.hosts.join(",")
        },
    ]
}

/// Run an account command.
pub async fn account(cmd: AccountCommand, conn: &Conn, ctx: &Ctx) -> Result<u8> {
    let mut api = conn.connect()?;
    let endpoint = api.endpoint.clone();
    account_inner(cmd, &mut api, ctx)
        .await
        .map_err(|e| unreachable_names_endpoint(e, &endpoint))
}

async fn grant(api: &mut Api, ctx: &Ctx, name: String, host: String, allow: bool) -> Result<u8> {
    let req = pb::HostGrantRequest {
        account: name,
        host,
    };
    let a = if allow {
        api.accounts.allow_host(req).await
    } else {
        api.accounts.disallow_host(req).await
    }?
    .into_inner();
    ctx.emit(&account_json(&a), || {
        output::table(&["NAME", "ROLE", "HOSTS"], &[account_row(&a)])
    })?;
    Ok(0)
}

async fn account_inner(cmd: AccountCommand, api: &mut Api, ctx: &Ctx) -> Result<u8> {
    let with_token = |t: pb::AccountToken| -> Result<u8> {
        let a = t.account.unwrap_or_default();
        let doc = json!({"account": account_json(&a), "token": t.token});
        // The token alone on stdout in table mode, so scripts can capture it.
        ctx.emit(&doc, || format!("{}\n", t.token))?;
        Ok(0)
    };
    match cmd {
        AccountCommand::Create {
            name,
            can_publish,
            admin,
        } => {
            let t = api
                .accounts
                .create_account(pb::CreateAccountRequest {
                    name,
                    can_publish,
                    admin,
                })
                .await?
                .into_inner();
            with_token(t)
        }
        AccountCommand::Token { name } => {
            let t = api
                .accounts
                .rotate_token(pb::AccountRequest { name })
                .await?
                .into_inner();
            with_token(t)
        }
        AccountCommand::AllowHost { name, host } => grant(api, ctx, name, host, true).await,
        AccountCommand::DisallowHost { name, host } => grant(api, ctx, name, host, false).await,
        AccountCommand::List => {
            let list = api
                .accounts
                .list_accounts(pb::ListAccountsRequest {})
                .await?
                .into_inner()
                .accounts;
            let doc = json!({"accounts": list.iter().map(account_json).collect::<Vec<_>>()});
            ctx.emit(&doc, || {
                let rows: Vec<Vec<String>> = list.iter().map(account_row).collect();
                output::table(&["NAME", "ROLE", "HOSTS"], &rows)
            })?;
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2 TiB"), Ok(2 << 40));
        for bad in ["", "G", "-1G", "0", "12Q", "1e3G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nics() {
        let n = parse_nic("addr=192.0.2.10/24,gw4=192.0.2.1,dns=192.0.2.53,dns=192.0.2.54")
            .expect("nic");
        assert_eq!(n.addresses, ["192.0.2.10/24"]);
        assert_eq!(n.gateway4, "192.0.2.1");
        assert_eq!(n.nameservers.len(), 2);
        assert!(parse_nic("ip=1.2.3.4").is_err());
        assert!(parse_nic("addr").is_err());
    }
}
