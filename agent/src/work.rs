//! Capture and deploy, written against [`Hypervisor`] and the store; the
//! journal makes both safe against the agent dying half-way.

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use imprint_store::{
    ImageId, Store,
    capture::{CaptureOptions, CaptureStats, DiskInput},
    restore::{RestoreOptions, restore_disk},
    source::FileTarget,
};

use crate::{
    cloudinit::{self, Interface, Seed},
    disks::open_source,
    domain::{GuestConfig, NewDisk, NewDomain},
    error::{AgentError, Kind, Result},
    hypervisor::{BackupPlan, CopyTarget, GuestRef, Hypervisor, PowerState},
    journal::{Entry, Filling, FillingDisk, Journal},
};

/// Progress sink: `(phase, bytes done, bytes total)`.
pub type Report<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

/// What capture and deploy work with on this host.
#[derive(Clone)]
pub struct Ctx {
    /// The hypervisor.
    pub hv: Arc<dyn Hypervisor>,
    /// The image store.
    pub store: Store,
    /// The journal of in-flight work.
    pub journal: Journal,
    /// Guests with an operation running.
    pub busy: Busy,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Guests with an operation running, so a second one is refused.
#[derive(Debug, Default, Clone)]
pub struct Busy(Arc<Mutex<HashSet<String>>>);

/// Releases a guest when dropped.
#[derive(Debug)]
pub struct BusyGuard(Busy, String);

impl Busy {
    /// Claim `key` (a guest UUID or name) or fail with `Conflict`.
    pub fn claim(&self, key: &str, what: &str) -> Result<BusyGuard> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !s.insert(key.to_string()) {
            return Err(AgentError::new(
                Kind::Conflict,
                format!("{what} already has an operation running"),
            ));
        }
        Ok(BusyGuard(self.clone(), key.to_string()))
    }

    /// How many of the `limit` slots named `prefix` are taken.
    pub fn slots_taken(&self, prefix: &str, limit: usize) -> usize {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (0..limit)
            .filter(|i| s.contains(&format!("{prefix}#{i}")))
            .count()
    }

    /// Claim one of `limit` slots named `prefix` (concurrent lazy fills),
    /// or fail with `ResourceExhausted` saying `what`.
    pub fn claim_slot(&self, prefix: &str, limit: usize, what: &str) -> Result<BusyGuard> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = (0..limit)
            .map(|i| format!("{prefix}#{i}"))
            .find(|k| !s.contains(k))
            .ok_or_else(|| {
                AgentError::new(
                    Kind::ResourceExhausted,
                    format!("{what}: all {limit} are in use on this host; retry when one ends"),
                )
            })?;
        s.insert(key.clone());
        Ok(BusyGuard(self.clone(), key))
    }
}

/// The slots of concurrent lazy fills.
pub const LAZY_FILL: &str = "lazy-fill";

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// What to capture.
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    /// Operation id (journal key).
    pub operation_id: String,
    /// Guest name or UUID.
    pub guest: String,
    /// New image's name.
    pub image_name: String,
    /// Target devices to leave out.
    pub exclude_disks: Vec<String>,
    /// Wait this long for the guest to power off.
    pub shutdown_timeout: Duration,
    /// Then force it off, or fail.
    pub allow_force_off: bool,
    /// Labels for the image.
    pub labels: BTreeMap<String, String>,
    /// Id of the new image (chosen by the caller), or a fresh one.
    pub image_id: Option<ImageId>,
    /// Resend the ACPI request this often (a request sent before the guest
    /// listens is lost).
    pub acpi_resend: Duration,
    /// Where point-in-time reads keep their NBD socket and scratch files
    /// (one directory per capture); `None`: read with the guest off.
    pub backup_dir: Option<PathBuf>,
    /// How a running guest is captured.
    pub mode: CaptureMode,
    /// Seal the image ([`crate::seal`]); `None`: store what was read.
    pub seal: Option<SealSpec>,
}

/// Where and how a capture seals its image.
#[derive(Debug, Clone)]
pub struct SealSpec {
    /// The overlays' directory (made and removed by the capture).
    pub dir: PathBuf,
    /// No usable hardware virtualisation: libguestfs's appliance runs
    /// under TCG.
    pub tcg: bool,
}

/// How a running guest is captured (a shut-off guest is read as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureMode {
    /// ACPI shutdown, then a point-in-time view taken with the guest
    /// paused; it runs again while the view is read.
    #[default]
    Offline,
    /// No shutdown: the guest agent freezes the filesystems, at most
    /// `freeze_timeout`, while the view is taken.
    Live {
        /// The longest the filesystems may stay frozen.
        freeze_timeout: Duration,
    },
    /// No shutdown, no freeze: the view is the disks as after a power cut.
    CrashConsistent,
}

impl CaptureMode {
    /// The guest keeps running.
    pub fn is_live(self) -> bool {
        !matches!(self, CaptureMode::Offline)
    }
}

/// What taking a view did that the capture must finish after the read.
#[derive(Debug, Default)]
struct ViewState {
    /// A live capture's thaw was not confirmed.
    thaw_pending: AtomicBool,
    /// The checkpoint created with the view.
    checkpoint: Mutex<Option<String>>,
}

impl ViewState {
    fn checkpoint(&self) -> Option<String> {
        self.checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// How long a live capture waits for the guest agent to answer a ping.
const AGENT_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// What a capture did.
#[derive(Debug, Clone)]
pub struct CaptureOutcome {
    /// The new image.
    pub image_id: ImageId,
    /// Its manifest (disks, recorded configuration).
    pub manifest: imprint_store::Manifest,
    /// Store figures.
    pub stats: CaptureStats,
    /// Seconds from the ACPI request to power-off (0 if it was off).
    pub shutdown_seconds: f64,
    /// Seconds reading disks.
    pub read_seconds: f64,
    /// Seconds to start it again (0 if it stays off).
    pub boot_seconds: f64,
    /// Seconds the guest was not running: shutdown + boot. With a
    /// point-in-time read the disks are read after the guest runs again,
    /// so the read is not in it.
    pub downtime_seconds: f64,
    /// The disks were read from a point-in-time view while the guest ran.
    pub point_in_time: bool,
    /// The mode it was captured in (a shut-off guest: offline).
    pub mode: CaptureMode,
    /// Live: seconds from the freeze request to the thaw.
    pub freeze_seconds: f64,
    /// The image whose chunks the unchanged parts of the disks reused
    /// (an incremental capture).
    pub incremental_parent: Option<ImageId>,
    /// Why disks were read in full rather than incrementally.
    pub full_read_reason: Option<String>,
    /// Sealed: seconds generalizing the disks before the read (0: not
    /// sealed).
    pub seal_seconds: f64,
    /// Power state it was left in.
    pub final_state: PowerState,
}

fn cancelled(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(AgentError::new(Kind::Cancelled, "operation cancelled"))
    } else {
        Ok(())
    }
}

/// Labels a caller may not give a capture: `imprint.*` is the agent's own
/// (how the image was captured: sealed, its checkpoint, its parent...),
/// but the owner the daemon records.
fn reserved_label(key: &str) -> bool {
    key.starts_with("imprint.") && key != "imprint.owner"
}

/// What a capture will read, resolved before anything is touched.
#[derive(Debug)]
pub struct CapturePlan {
    /// The guest.
    pub guest: GuestRef,
    /// Its configuration now.
    pub config: GuestConfig,
    /// Its power state now (running or shut off).
    pub initial: PowerState,
    /// (index in `config.disks`, source path) of every disk to read.
    pub chosen: Vec<(usize, String)>,
}

/// Everything a capture can refuse before it changes anything: the name,
/// the guest and its state, excluded disks, the image id, the disks'
/// sources. The service runs it before accepting the operation, so bad
/// input is an error of the call (and the daemon keeps no row for it);
/// the capture runs it again under its claim on the guest.
pub fn check_capture(
    hv: &dyn Hypervisor,
    store: &Store,
    spec: &CaptureSpec,
) -> Result<CapturePlan> {
    imprint_store::manifest::validate_name(&spec.image_name)?;
    if let Some(k) = spec.labels.keys().find(|k| reserved_label(k)) {
        return Err(AgentError::new(
            Kind::InvalidArgument,
            format!("label {k} is the agent's own (it says how the image was captured)"),
        ));
    }
    if spec.seal.is_some() {
        crate::generalize::check(crate::generalize::Purpose::Seal)?;
    }
    let (guest, xml) = hv.lookup(&spec.guest)?;
    let config = GuestConfig::from_domain_xml(&xml)
        .map_err(|e| AgentError::new(Kind::Internal, format!("guest {}: {e}", guest.name)))?;
    let initial = hv.power_state(&guest)?;
    if !matches!(initial, PowerState::Running | PowerState::ShutOff) {
        return Err(AgentError::new(
            Kind::FailedPrecondition,
            format!(
                "guest {} is {initial:?}; resume it or shut it off before capturing",
                guest.name
            ),
        ));
    }
    if initial == PowerState::Running && spec.mode.is_live() {
        if spec.backup_dir.is_none() {
            return Err(AgentError::new(
                Kind::FailedPrecondition,
                "this agent reads captures with the guest off (--offline-read); a live capture needs its backup directory",
            ));
        }
        if let CaptureMode::Live { .. } = spec.mode {
            hv.guest_agent_ping(&guest, AGENT_PING_TIMEOUT).map_err(|e| {
                AgentError::new(
                    Kind::FailedPrecondition,
                    format!(
                        "guest {} has no responding guest agent, so its filesystems cannot be frozen for a live capture ({}); install and start qemu-guest-agent with its org.qemu.guest_agent.0 channel, or ask for a crash-consistent capture",
                        guest.name, e.message
                    ),
                )
            })?;
        }
    }
    for ex in &spec.exclude_disks {
        if !config.disks.iter().any(|d| &d.target_dev == ex) {
            return Err(AgentError::new(
                Kind::InvalidArgument,
                format!("guest {} has no disk {ex:?} to exclude", guest.name),
            ));
        }
    }
    if let Some(id) = &spec.image_id
        && store.manifest(id).is_ok()
    {
        return Err(AgentError::new(
            Kind::Conflict,
            format!("image {id} exists already"),
        ));
    }
    // The checkpoint taken with the view is named after the image: one of
    // that name left on the guest (a capture with this image id that died
    // half-way) is refused now, not found out after the shutdown. (A
    // sealed capture takes none.)
    if let Some(id) = &spec.image_id
        && initial == PowerState::Running
        && spec.backup_dir.is_some()
        && spec.seal.is_none()
    {
        let name = crate::checkpoints::name_for(id);
        if hv.checkpoints(&guest)?.contains(&name) {
            return Err(AgentError::new(
                Kind::Conflict,
                format!(
                    "guest {} already has checkpoint {name}; capture into another image id, or delete it (virsh checkpoint-delete {} {name})",
                    guest.name, guest.name
                ),
            ));
        }
    }
    // Resolve every source before taking the guest down: a bad disk must not
    // cost downtime.
    let mut chosen = Vec::new();
    for (i, d) in config.disks.iter().enumerate() {
        if !d.is_capturable() || spec.exclude_disks.contains(&d.target_dev) {
            continue;
        }
        let path = match (&d.source_path, &d.source_pool, &d.source_volume) {
            (Some(p), _, _) => p.clone(),
            (None, Some(pool), Some(vol)) => hv.volume_path(pool, vol)?,
            _ => {
                return Err(AgentError::new(
                    Kind::FailedPrecondition,
                    format!(
                        "disk {} of guest {} has no local source the agent can read",
                        d.target_dev, guest.name
                    ),
                ));
            }
        };
        if !std::path::Path::new(&path).exists() {
            return Err(AgentError::new(
                Kind::NotFound,
                format!("disk {} source {path} does not exist", d.target_dev),
            ));
        }
        chosen.push((i, path));
    }
    if chosen.is_empty() {
        return Err(AgentError::new(
            Kind::InvalidArgument,
            format!("guest {} has no disk left to capture", guest.name),
        ));
    }
    Ok(CapturePlan {
        guest,
        config,
        initial,
        chosen,
    })
}

/// Capture a guest into a new image; the guest always ends in the power
/// state it had.
pub fn capture(
    ctx: &Ctx,
    spec: &CaptureSpec,
    cancel: &Arc<AtomicBool>,
    report: Report<'_>,
) -> Result<CaptureOutcome> {
    let (hv, store, journal, busy) = (&*ctx.hv, &ctx.store, &ctx.journal, &ctx.busy);
    report("inspecting guest", 0, 0);
    let (guest, _) = hv.lookup(&spec.guest)?;
    let _claim = busy.claim(&guest.uuid, &format!("guest {}", guest.name))?;
    // Under the claim: nothing else of ours changes the guest meanwhile.
    let CapturePlan {
        guest,
        mut config,
        initial,
        chosen,
    } = check_capture(hv, store, spec)?;
    let was_running = initial == PowerState::Running;
    let live = was_running && spec.mode.is_live();
    let frozen = live && matches!(spec.mode, CaptureMode::Live { .. });
    // A point-in-time read needs a place for QEMU's NBD socket and the
    // scratch files; journaled first, so a restart ends the job and
    // removes them (and thaws a guest a live capture froze).
    let backup = match (&spec.backup_dir, was_running) {
        (Some(dir), true) => Some(dir.join(&spec.operation_id)),
        _ => None,
    };
    let seal_dir = spec.seal.as_ref().map(|s| s.dir.display().to_string());
    journal.write(&Entry::Capture {
        operation_id: spec.operation_id.clone(),
        guest_name: guest.name.clone(),
        guest_uuid: guest.uuid.clone(),
        was_running: was_running && !live,
        backup_dir: backup.as_ref().map(|d| d.display().to_string()),
        thaw: frozen,
        seal_dir: seal_dir.clone(),
    })?;
    // Once a point-in-time read lets the guest run again (a live capture:
    // from the start), its power state is its user's: neither this
    // capture nor a recovery touches it.
    let resumed = AtomicBool::new(live);
    let on_resumed = || {
        resumed.store(true, Ordering::Relaxed);
        let _ = journal.write(&Entry::Capture {
            operation_id: spec.operation_id.clone(),
            guest_name: guest.name.clone(),
            guest_uuid: guest.uuid.clone(),
            was_running: false,
            backup_dir: backup.as_ref().map(|d| d.display().to_string()),
            thaw: frozen,
            seal_dir: seal_dir.clone(),
        });
    };
    // A live capture whose thaw was not confirmed keeps its journal entry:
    // the recovery pass thaws until a thaw gets through.
    let view = ViewState::default();
    let mut outcome = take_down_and_read(
        hv,
        store,
        &guest,
        &mut config,
        &chosen,
        initial,
        spec,
        backup.as_deref().map(|d| (d, &on_resumed as &dyn Fn())),
        &view,
        cancel,
        report,
    );
    if let Some(dir) = &backup {
        end_backup(hv, &guest, dir);
    }
    // Whatever happened: back to the state it had (unless it runs again
    // already and is its user's).
    let restore_started = Instant::now();
    let restored = if resumed.load(Ordering::Relaxed) {
        patiently(|| hv.power_state(&guest))
    } else {
        restore_power(hv, &guest, was_running)
    };
    let boot_seconds = restore_started.elapsed().as_secs_f64();
    match (&mut outcome, restored) {
        (Ok(o), Ok(state)) => {
            if !o.point_in_time {
                o.boot_seconds = if was_running { boot_seconds } else { 0.0 };
            }
            o.downtime_seconds = match (o.point_in_time, was_running) {
                _ if live => 0.0,
                (true, _) => o.shutdown_seconds + o.boot_seconds,
                (false, true) => {
                    o.shutdown_seconds + o.seal_seconds + o.read_seconds + o.boot_seconds
                }
                (false, false) => 0.0,
            };
            o.final_state = state;
        }
        (Ok(o), Err(e)) => {
            // The image is good, but the guest is not back: that is a failure
            // the caller must see; keep the journal so a restart retries.
            let _ = store.delete_image(&o.image_id);
            return Err(e.context(format!(
                "image captured but guest {} could not be started again",
                guest.name
            )));
        }
        (Err(_), Err(e)) => {
            return Err(e.context(format!(
                "capture failed and guest {} could not be started again",
                guest.name
            )));
        }
        (Err(_), Ok(_)) => {}
    }
    // Keep only the new image's checkpoint; a failed capture's goes (its
    // parent's stays for the next try).
    if let Some(cp) = view.checkpoint() {
        match &outcome {
            Ok(_) => crate::checkpoints::prune(hv, &guest, Some(&cp)),
            Err(_) => {
                if let Err(e) = hv.delete_checkpoint(&guest, &cp) {
                    tracing::warn!(guest = %guest.name, checkpoint = %cp, error = %e, "cannot delete checkpoint");
                }
            }
        }
    }
    if view.thaw_pending.load(Ordering::Relaxed) {
        // Thaw as soon as the guest agent can hear it; the journal entry
        // stays for a restart of this agent (the recovery pass removes it
        // once its own thaw gets through).
        tracing::warn!(guest = %guest.name, "thaw not confirmed; thawing until one gets through");
        let (hv, guest) = (ctx.hv.clone(), guest.clone());
        std::thread::spawn(move || crate::freeze::thaw_until_through(&*hv, &guest));
    } else {
        journal.remove(&spec.operation_id)?;
    }
    // Disks read incrementally get their SHA-256 from the stored image,
    // after the capture (pending until then).
    if let Ok(o) = &outcome
        && o.manifest.disks.iter().any(|d| d.sha256.is_none())
    {
        let (store, id) = (store.clone(), o.image_id.clone());
        std::thread::spawn(
            move || match imprint_store::disk_sha256::complete(&store, &id) {
                Ok(_) => tracing::info!(image = %id, "disk SHA-256 computed"),
                Err(e) => tracing::warn!(image = %id, error = %e, "cannot compute disk SHA-256"),
            },
        );
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
fn take_down_and_read(
    hv: &dyn Hypervisor,
    store: &Store,
    guest: &GuestRef,
    config: &mut GuestConfig,
    chosen: &[(usize, String)],
    initial: PowerState,
    spec: &CaptureSpec,
    backup: Option<(&std::path::Path, &dyn Fn())>,
    view: &ViewState,
    cancel: &Arc<AtomicBool>,
    report: Report<'_>,
) -> Result<CaptureOutcome> {
    let t0 = Instant::now();
    let live = initial == PowerState::Running && spec.mode.is_live();
    let take_down = initial == PowerState::Running && !live;
    if take_down {
        report("shutting down", 0, 0);
        shut_down(hv, guest, spec, cancel)?;
    }
    let shutdown_seconds = if take_down {
        t0.elapsed().as_secs_f64()
    } else {
        0.0
    };
    cancelled(cancel)?;
    // With a backup directory: start the guest paused, take a point-in-time
    // view of its disks (libvirt pull-mode backup), let it run, and read
    // the view while it runs: the downtime is shutdown + start, whatever
    // the disks' size. Without one (or if libvirt refuses the backup): read
    // the files while the guest stays off.
    let image_id = spec.image_id.clone().unwrap_or_else(ImageId::generate);
    // A view comes with a checkpoint (qcow2 disks), and is incremental
    // from the newest earlier one when it can be.
    // A sealed image is no earlier state of the source: it takes no
    // checkpoint and starts from none.
    let mut inc = match backup {
        _ if spec.seal.is_some() => crate::checkpoints::Increment {
            full_read_reason: Some("a sealed image is read in full".into()),
            ..Default::default()
        },
        Some(_) if initial == PowerState::Running => {
            crate::checkpoints::plan(hv, store, guest, config, chosen, &image_id)
        }
        _ => crate::checkpoints::Increment::default(),
    };
    let mut boot_seconds = 0.0;
    let mut freeze_seconds = 0.0;
    let point_in_time = match backup {
        // Live: no fallback to reading with the guest off (that would be
        // downtime the caller did not ask for).
        Some((dir, _)) if live => {
            let plan = backup_plan(config, chosen, dir)?;
            freeze_seconds = begin_live_view(hv, guest, plan, &mut inc, spec, view, report)?;
            true
        }
        Some((dir, on_resumed)) if initial == PowerState::Running => {
            let began = backup_plan(config, chosen, dir).and_then(|plan| {
                begin_point_in_time(hv, guest, plan, &mut inc, view, on_resumed, report)
            });
            match began {
                Ok(()) => {
                    boot_seconds = t0.elapsed().as_secs_f64() - shutdown_seconds;
                    true
                }
                Err(e) => {
                    tracing::warn!(guest = %guest.name, error = %e, "no point-in-time view; reading the disks with the guest off");
                    end_backup(hv, guest, dir);
                    if hv.power_state(guest)? != PowerState::ShutOff {
                        hv.force_off(guest)?;
                    }
                    false
                }
            }
        }
        _ => false,
    };
    // Sealed: generalized overlays over what would have been read.
    let mut sealed = None;
    let mut seal_seconds = 0.0;
    if let Some(seal) = &spec.seal {
        report("sealing the image", 0, 0);
        let t = Instant::now();
        let bases = chosen
            .iter()
            .map(|(i, path)| {
                let d = &config.disks[*i];
                match backup {
                    Some((dir, _)) if point_in_time => {
                        hv.backup_base(guest, &dir.join("nbd.sock"), &d.target_dev)
                    }
                    _ => Ok(crate::seal::Base::File {
                        path: path.clone(),
                        format: d.format.clone(),
                    }),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let make = || crate::seal::seal(&seal.dir, &bases, seal.tcg, cancel);
        // The guest runs meanwhile (point-in-time): the scratch is watched
        // as during the read.
        sealed = Some(match backup {
            Some((dir, _)) if point_in_time => crate::scratch::watched(hv, guest, dir, make)?,
            _ => make()?,
        });
        seal_seconds = t.elapsed().as_secs_f64();
        tracing::info!(guest = %guest.name, seconds = seal_seconds, "sealed the image's disks");
    }
    report("reading disks", 0, 0);
    let t1 = Instant::now();
    let mut inputs = Vec::new();
    let mut incremental_parent = None;
    for (k, (i, path)) in chosen.iter().enumerate() {
        let d = &mut config.disks[*i];
        let changes = point_in_time && inc.tracks_changes_of(&d.target_dev);
        let src = match (&mut sealed, backup) {
            (Some(s), _) => s
                .open(k, cancel)
                .map_err(|e| e.context(format!("open the sealed view of {}", d.target_dev)))?,
            (None, Some((dir, _))) if point_in_time => hv
                .backup_disk(guest, &dir.join("nbd.sock"), &d.target_dev, changes)
                .map_err(|e| {
                    e.context(format!("open the point-in-time view of {}", d.target_dev))
                })?,
            _ => open_source(path, &d.format)
                .map_err(|e| e.context(format!("open disk {}", d.target_dev)))?,
        };
        d.size_bytes = src.size_bytes();
        let base = if changes {
            inc.base_for(store, &d.target_dev, d.size_bytes)
        } else {
            None
        };
        if base.is_some() {
            incremental_parent = inc.parent.as_ref().map(|p| p.image_id.clone());
        }
        inputs.push(DiskInput {
            name: d.target_dev.clone(),
            source: src,
            base,
        });
    }
    // The manifest records only the captured disks, in order.
    let mut recorded = config.clone();
    recorded.disks = chosen
        .iter()
        .map(|(i, _)| config.disks[*i].clone())
        .collect();
    // A UEFI guest's NVRAM (boot entries, variables) is part of what it is:
    // read while the guest is off, kept beside the image's indexes (before
    // the manifest commits; a capture that fails leaves it to GC with the
    // rest of its partial image), its digest in the configuration.
    if recorded.firmware.kind == "efi"
        && let Some(path) = &recorded.firmware.nvram
        && let Ok(bytes) = std::fs::read(path)
    {
        store
            .backend()
            .write_image_file(&image_id, crate::domain::NVRAM_FILE, &bytes)?;
        use sha2::Digest;
        recorded.firmware.nvram_sha256 = Some(hex::encode(sha2::Sha256::digest(&bytes)));
    }
    let opts = CaptureOptions {
        cancel: Some(cancel.clone()),
        config: serde_json::to_value(&recorded)
            .map_err(|e| AgentError::new(Kind::Internal, e.to_string()))?,
        labels: {
            let mut labels = spec.labels.clone();
            if sealed.is_some() {
                labels.insert(
                    crate::seal::SEALED_LABEL.into(),
                    crate::seal::SEALED_WITH.into(),
                );
            }
            if let Some(cp) = view.checkpoint() {
                labels.insert(crate::checkpoints::CHECKPOINT_LABEL.into(), cp);
            }
            if let Some(p) = &incremental_parent {
                labels.insert(crate::checkpoints::PARENT_LABEL.into(), p.to_string());
            }
            labels
        },
        image_id: Some(image_id),
        ..Default::default()
    };
    let read = || {
        imprint_store::capture::capture(store, &spec.image_name, inputs, &opts, &mut |p| {
            report("reading disks", p.bytes_done, p.bytes_total);
        })
        .map_err(AgentError::from)
    };
    // A view's scratch space may run out while the guest writes: the
    // backup breaks then, not the guest.
    let r = match backup {
        Some((dir, _)) if point_in_time => crate::scratch::watched(hv, guest, dir, read)?,
        _ => read()?,
    };
    // Started by hand while we read (virsh start)? Then what we read may be
    // torn: do not keep it. (A point-in-time view is not affected.)
    if !point_in_time && patiently(|| hv.power_state(guest))? != PowerState::ShutOff {
        let _ = store.delete_image(&r.manifest.image_id);
        return Err(AgentError::new(
            Kind::FailedPrecondition,
            format!(
                "guest {} was started while its disks were being read; the image was discarded",
                guest.name
            ),
        ));
    }
    Ok(CaptureOutcome {
        image_id: r.manifest.image_id.clone(),
        manifest: r.manifest.clone(),
        stats: r.stats,
        shutdown_seconds,
        read_seconds: t1.elapsed().as_secs_f64(),
        boot_seconds,
        downtime_seconds: 0.0,
        point_in_time,
        mode: if initial == PowerState::Running {
            spec.mode
        } else {
            CaptureMode::Offline
        },
        freeze_seconds,
        incremental_parent,
        full_read_reason: inc.full_read_reason.clone(),
        seal_seconds,
        final_state: if point_in_time {
            PowerState::Running
        } else {
            PowerState::ShutOff
        },
    })
}

/// Start the (shut off) guest paused, begin a pull-mode backup of the
/// chosen disks into `dir` (NBD socket, scratch files), and resume it.
fn begin_point_in_time(
    hv: &dyn Hypervisor,
    guest: &GuestRef,
    plan: BackupPlan,
    inc: &mut crate::checkpoints::Increment,
    view: &ViewState,
    on_resumed: &dyn Fn(),
    report: Report<'_>,
) -> Result<()> {
    report("taking a point-in-time view", 0, 0);
    patiently(|| hv.start_paused(guest))?;
    begin_backup(hv, guest, plan, inc, view)?;
    hv.resume(guest)?;
    on_resumed();
    Ok(())
}

/// Take the point-in-time view of a running guest without stopping it:
/// under a bounded filesystem freeze (live), or as is (crash-consistent).
/// Returns the seconds the filesystems were frozen.
fn begin_live_view(
    hv: &dyn Hypervisor,
    guest: &GuestRef,
    plan: BackupPlan,
    inc: &mut crate::checkpoints::Increment,
    spec: &CaptureSpec,
    view: &ViewState,
    report: Report<'_>,
) -> Result<f64> {
    match spec.mode {
        CaptureMode::Live { freeze_timeout } => {
            report("freezing filesystems", 0, 0);
            let f = crate::freeze::while_frozen(hv, guest, freeze_timeout, || {
                begin_backup(hv, guest, plan, inc, view)
            });
            view.thaw_pending.store(!f.thawed, Ordering::Relaxed);
            f.result?;
            Ok(f.frozen_for.as_secs_f64())
        }
        CaptureMode::CrashConsistent | CaptureMode::Offline => {
            report("taking a point-in-time view", 0, 0);
            begin_backup(hv, guest, plan, inc, view)?;
            Ok(0.0)
        }
    }
}

/// Begin the backup job of `plan` with what `inc` decided: incremental
/// from its parent and with a new checkpoint. When libvirt refuses the
/// incremental part (a bitmap inconsistent after a crash, in use...), the
/// backup is taken in full; when it refuses the checkpoint, without one.
fn begin_backup(
    hv: &dyn Hypervisor,
    guest: &GuestRef,
    mut plan: BackupPlan,
    inc: &mut crate::checkpoints::Increment,
    view: &ViewState,
) -> Result<()> {
    plan.checkpoint = inc.checkpoint.clone();
    plan.incremental = inc.parent.as_ref().map(|p| p.checkpoint.clone());
    if plan.incremental.is_some() {
        match hv.backup_begin(guest, &plan) {
            Ok(()) => {
                *view.checkpoint.lock().unwrap_or_else(|p| p.into_inner()) =
                    plan.checkpoint.map(|(name, _)| name);
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(guest = %guest.name, error = %e, "incremental backup refused; taking it in full");
                inc.fall_back(format!(
                    "libvirt refused a backup incremental from checkpoint {} ({}); read in full",
                    plan.incremental.take().unwrap_or_default(),
                    e.message
                ));
            }
        }
    }
    if plan.checkpoint.is_some() {
        match hv.backup_begin(guest, &plan) {
            Ok(()) => {
                *view.checkpoint.lock().unwrap_or_else(|p| p.into_inner()) =
                    plan.checkpoint.map(|(name, _)| name);
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(guest = %guest.name, error = %e, "backup with a checkpoint refused; taking it without");
                inc.checkpoint = None;
                plan.checkpoint = None;
            }
        }
    }
    hv.backup_begin(guest, &plan)
}

/// Make the directory of a point-in-time view and list what the backup job
/// covers: every disk (target, scratch file in `dir` for the chosen ones,
/// `None` for the others); no checkpoint yet.
fn backup_plan(
    config: &GuestConfig,
    chosen: &[(usize, String)],
    dir: &std::path::Path,
) -> Result<BackupPlan> {
    std::fs::create_dir_all(dir)
        .map_err(|e| AgentError::new(Kind::Internal, format!("create {}: {e}", dir.display())))?;
    // QEMU (its own user) makes the socket and writes the scratch files.
    if let Ok(Some(u)) = nix::unistd::User::from_name("libvirt-qemu") {
        let _ = std::os::unix::fs::chown(dir, Some(u.uid.as_raw()), Some(u.gid.as_raw()));
    }
    let disks = config
        .disks
        .iter()
        .enumerate()
        .filter(|(_, d)| d.device == "disk")
        .map(|(i, d)| {
            let scratch = chosen
                .iter()
                .any(|(c, _)| *c == i)
                .then(|| dir.join(format!("scratch-{}.qcow2", d.target_dev)));
            (d.target_dev.clone(), scratch)
        })
        .collect();
    Ok(BackupPlan {
        socket: dir.join("nbd.sock"),
        disks,
        incremental: None,
        checkpoint: None,
    })
}

/// End a point-in-time view: the backup job, then its directory (socket,
/// scratch files). Failures are logged: the journal retries at the next
/// start.
fn end_backup(hv: &dyn Hypervisor, guest: &GuestRef, dir: &std::path::Path) {
    // libvirtd may have restarted during the read (the view is QEMU's and
    // survives it): reconnect and end the job it still tracks.
    if let Err(e) = retrying(UNDO_PATIENCE, || hv.backup_end(guest)) {
        tracing::warn!(guest = %guest.name, error = %e, "cannot end the backup job");
    }
    // QEMU may have stopped the guest on a full scratch (up to the moment
    // the job ended, or while no agent watched): let it run. (Had its own
    // disk filled instead, QEMU stops it again at once.)
    if hv.paused_on_io_error(guest).unwrap_or(false) {
        tracing::warn!(guest = %guest.name, "guest stopped on a failed write during the backup; resuming it");
        if let Err(e) = patiently(|| hv.resume(guest)) {
            tracing::warn!(guest = %guest.name, error = %e, "cannot resume the guest");
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the backup directory")
        }
    }
}

fn shut_down(
    hv: &dyn Hypervisor,
    guest: &GuestRef,
    spec: &CaptureSpec,
    cancel: &AtomicBool,
) -> Result<()> {
    let deadline = Instant::now() + spec.shutdown_timeout;
    let mut next_request = Instant::now();
    loop {
        if patiently(|| hv.power_state(guest))? == PowerState::ShutOff {
            return Ok(());
        }
        cancelled(cancel)?;
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if now >= next_request {
            // A guest that has just gone off may refuse the request.
            if let Err(e) = patiently(|| hv.request_shutdown(guest))
                && patiently(|| hv.power_state(guest))? != PowerState::ShutOff
            {
                return Err(e.context(format!("ask guest {} to shut down", guest.name)));
            }
            next_request = now + spec.acpi_resend;
        }
        std::thread::sleep(Duration::from_millis(200).min(deadline.saturating_duration_since(now)));
    }
    if spec.allow_force_off {
        patiently(|| hv.force_off(guest))?;
        return Ok(());
    }
    Err(AgentError::new(
        Kind::DeadlineExceeded,
        format!(
            "guest {} did not power off within {} s of the ACPI request and force-off was not allowed; it was left running",
            guest.name,
            spec.shutdown_timeout.as_secs()
        ),
    ))
}

/// How long a capture waits for libvirt to come back (a restart of
/// libvirtd) before it gives up on a call.
const LIBVIRT_PATIENCE: Duration = Duration::from_secs(60);

/// Retry `f` while libvirt is unavailable, up to [`LIBVIRT_PATIENCE`]: a
/// guest that is off for a capture must not stay off because libvirtd
/// restarted at the wrong moment.
fn patiently<T>(f: impl Fn() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        match f() {
            Err(e) if e.kind == Kind::Unavailable && start.elapsed() < LIBVIRT_PATIENCE => {
                tracing::warn!(error = %e, "libvirt unavailable; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
            r => return r,
        }
    }
}

fn restore_power(hv: &dyn Hypervisor, guest: &GuestRef, was_running: bool) -> Result<PowerState> {
    let now = patiently(|| hv.power_state(guest))?;
    if was_running && now == PowerState::Paused {
        // Started paused for a point-in-time read that did not get to
        // resume it.
        patiently(|| hv.resume(guest))?;
        return Ok(PowerState::Running);
    }
    if was_running && now != PowerState::Running {
        patiently(|| hv.start(guest))?;
        return Ok(PowerState::Running);
    }
    Ok(now)
}

/// Finish or undo what a previous run left in the journal.
pub fn recover(hv: &dyn Hypervisor, journal: &Journal) -> Vec<(String, Result<()>)> {
    recover_where(hv, journal, None, |_| true)
}

/// [`recover`] for the entries whose operation id `pick` accepts, while
/// the agent serves: each entry's guest (or guest name) is claimed in
/// `busy` first, so a recovery never races a new capture or deploy of the
/// same guest; a guest that is busy is left for the next pass.
pub fn recover_where(
    hv: &dyn Hypervisor,
    journal: &Journal,
    busy: Option<&Busy>,
    pick: impl Fn(&str) -> bool,
) -> Vec<(String, Result<()>)> {
    let entries = match journal.list() {
        Ok(e) => e,
        Err(e) => return vec![("journal".into(), Err(e))],
    };
    let mut out = Vec::new();
    // A lazy deploy whose guest runs is resumed by the service
    // ([`crate::lazy::resume`]), not undone.
    let resumed = |e: &Entry| {
        matches!(
            e,
            Entry::Deploy {
                filling: Some(_),
                ..
            }
        )
    };
    for e in entries
        .into_iter()
        .filter(|e| !resumed(e) && pick(e.operation_id()))
    {
        let id = e.operation_id().to_string();
        let claim = busy.map(|b| match &e {
            Entry::Capture {
                guest_uuid,
                guest_name,
                ..
            } => b.claim(guest_uuid, &format!("guest {guest_name}")),
            Entry::Deploy { guest_name, .. } => b.claim(
                &format!("name:{guest_name}"),
                &format!("guest name {guest_name}"),
            ),
        });
        let _claim = match claim.transpose() {
            Ok(c) => c,
            Err(e) => {
                out.push((id, Err(e)));
                continue;
            }
        };
        let r = match &e {
            Entry::Capture {
                guest_name,
                guest_uuid,
                was_running,
                backup_dir,
                thaw,
                seal_dir,
                ..
            } => {
                let g = GuestRef {
                    name: guest_name.clone(),
                    uuid: guest_uuid.clone(),
                };
                if let Some(dir) = seal_dir {
                    crate::seal::remove(std::path::Path::new(dir));
                }
                if let Some(dir) = backup_dir {
                    end_backup(hv, &g, std::path::Path::new(dir));
                }
                let thawed = if *thaw { thaw_after(hv, &g) } else { Ok(()) };
                thawed.and_then(|()| restore_power(hv, &g, *was_running).map(|_| ()))
            }
            Entry::Deploy {
                guest_name,
                pool,
                volumes,
                defined_uuid,
                nvram,
                ..
            } => undo_deploy(hv, guest_name, defined_uuid.as_deref(), pool, volumes)
                .and_then(|()| remove_nvram(nvram.as_deref())),
        };
        if r.is_ok() {
            // Marked first: a death between the two leaves both, which
            // the next start handles (the entry is undone again).
            if let Err(e) = journal.mark_undone(&id) {
                tracing::warn!(operation = %id, error = %e, "cannot mark the operation undone");
            }
            let _ = journal.remove(&id);
        }
        out.push((id, r));
    }
    out
}

/// Thaw what a live capture may have frozen: done when a thaw gets through
/// or the guest no longer runs (a guest that stopped has nothing frozen).
fn thaw_after(hv: &dyn Hypervisor, g: &GuestRef) -> Result<()> {
    match hv.fs_thaw(g, crate::freeze::THAW_TIMEOUT) {
        Ok(()) => Ok(()),
        Err(e) => match hv.power_state(g) {
            Ok(PowerState::Running | PowerState::Paused) => Err(e),
            Ok(_) => Ok(()),
            Err(s) if s.kind == Kind::NotFound => Ok(()),
            Err(s) => Err(s),
        },
    }
}

/// Remove an NVRAM file a deploy wrote (gone already is fine).
fn remove_nvram(path: Option<&str>) -> Result<()> {
    match path.map(std::fs::remove_file) {
        None | Some(Ok(())) => Ok(()),
        Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Some(Err(e)) => Err(AgentError::new(
            Kind::Internal,
            format!("remove NVRAM {}: {e}", path.unwrap_or_default()),
        )),
    }
}

/// Remove what a deploy made. Ok when none of it is left (what is gone
/// already counts as removed); otherwise the first error, after trying
/// everything.
pub(crate) fn undo_deploy(
    hv: &dyn Hypervisor,
    name: &str,
    uuid: Option<&str>,
    pool: &str,
    volumes: &[String],
) -> Result<()> {
    let gone = |r: Result<()>| match r {
        Err(e) if e.kind == Kind::NotFound => Ok(()),
        other => other,
    };
    let mut results = Vec::new();
    if let Some(uuid) = uuid {
        let g = GuestRef {
            name: name.to_string(),
            uuid: uuid.to_string(),
        };
        match hv.power_state(&g) {
            Ok(PowerState::ShutOff) => {}
            Ok(_) => results.push(gone(hv.force_off(&g))),
            Err(e) => results.push(gone(Err(e))),
        }
        results.push(gone(hv.undefine(&g)));
    }
    for v in volumes {
        results.push(gone(hv.delete_volume(pool, v)));
    }
    results.into_iter().collect()
}

/// What a guest delete did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteGuestOutcome {
    /// The guest (as asked for, when it was gone already).
    pub guest: GuestRef,
    /// Paths of the pool volumes deleted.
    pub deleted_volumes: Vec<String>,
    /// Disks left in place: "path: why".
    pub left_disks: Vec<String>,
    /// The guest did not exist.
    pub already_gone: bool,
    /// It ran (or was paused) and was forced off.
    pub forced_off: bool,
}

/// Delete guest `guest` (name or UUID): force it off, delete the pool
/// volumes of its disks, undefine it. Volumes go before the definition,
/// so an agent that dies half-way leaves a guest a retry finds and
/// finishes, never volumes nobody knows; a guest already gone succeeds.
/// Disks outside pools, CD-ROMs and floppies, and volumes another guest
/// also uses are left and reported. Cancelling works until the guest is
/// forced off; after that the delete runs to its end.
pub fn delete_guest(
    ctx: &Ctx,
    guest: &str,
    cancel: &AtomicBool,
    report: Report,
) -> Result<DeleteGuestOutcome> {
    let hv = ctx.hv.as_ref();
    report("looking up the guest", 0, 0);
    let gone = || DeleteGuestOutcome {
        guest: GuestRef {
            name: guest.to_string(),
            uuid: String::new(),
        },
        already_gone: true,
        ..Default::default()
    };
    let (g, xml) = match hv.lookup(guest) {
        Ok(found) => found,
        Err(e) if e.kind == Kind::NotFound => return Ok(gone()),
        Err(e) => return Err(e),
    };
    let what = format!("guest {}", g.name);
    let _claim = ctx.busy.claim(&g.uuid, &what)?;
    let _name_claim = ctx.busy.claim(&format!("name:{}", g.name), &what)?;
    let config = GuestConfig::from_domain_xml(&xml)
        .map_err(|e| AgentError::new(Kind::Internal, format!("read {what}'s XML: {e}")))?;
    // What the other guests' disks use is theirs too.
    let mut others: HashSet<String> = HashSet::new();
    for o in hv.list_guests()? {
        if o.uuid == g.uuid {
            continue;
        }
        let Ok((_, oxml)) = hv.lookup(&o.uuid) else {
            continue;
        };
        if let Ok(c) = GuestConfig::from_domain_xml(&oxml) {
            for d in c.disks {
                others.extend(d.source_path);
                if let (Some(p), Some(v)) = (d.source_pool, d.source_volume) {
                    others.insert(format!("{p}/{v}"));
                }
            }
        }
    }
    cancelled(cancel)?;
    let mut out = DeleteGuestOutcome {
        guest: g.clone(),
        ..Default::default()
    };
    report("powering off", 0, 0);
    match hv.power_state(&g) {
        Ok(PowerState::ShutOff) => {}
        Ok(_) => {
            match hv.force_off(&g) {
                Ok(()) => {}
                // Stopped by itself meanwhile.
                Err(e) if e.kind == Kind::FailedPrecondition => {}
                Err(e) if e.kind == Kind::NotFound => return Ok(gone()),
                Err(e) => return Err(e),
            }
            out.forced_off = true;
        }
        Err(e) if e.kind == Kind::NotFound => return Ok(gone()),
        Err(e) => return Err(e),
    }
    report("deleting volumes", 0, 0);
    for d in &config.disks {
        let shown = d
            .source_path
            .clone()
            .or_else(|| {
                d.source_pool
                    .as_ref()
                    .zip(d.source_volume.as_ref())
                    .map(|(p, v)| format!("{p}/{v}"))
            })
            .unwrap_or_else(|| d.target_dev.clone());
        if d.device != "disk" {
            out.left_disks.push(format!("{shown}: a {}", d.device));
            continue;
        }
        if others.contains(&shown) {
            out.left_disks
                .push(format!("{shown}: another guest uses it"));
            continue;
        }
        let volume = match (&d.source_pool, &d.source_volume, &d.source_path) {
            (Some(p), Some(v), _) => Some((p.clone(), v.clone())),
            (_, _, Some(path)) => hv.volume_at(path)?,
            _ => None,
        };
        match volume {
            Some((pool, name)) => match hv.delete_volume(&pool, &name) {
                Ok(()) => out.deleted_volumes.push(shown),
                // Deleted by an earlier run that died before undefining.
                Err(e) if e.kind == Kind::NotFound => {}
                Err(e) => return Err(e),
            },
            // A file a run that died half-way deleted: nothing to leave.
            None if d
                .source_path
                .as_deref()
                .is_some_and(|p| !std::path::Path::new(p).exists()) => {}
            None => out
                .left_disks
                .push(format!("{shown}: not a volume of a storage pool")),
        }
    }
    report("undefining", 0, 0);
    match hv.undefine(&g) {
        Ok(()) => {}
        Err(e) if e.kind == Kind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// What to deploy, as received (validated by [`deploy`] before it acts).
#[derive(Debug, Clone, Default)]
pub struct DeploySpec {
    /// Operation id (journal key).
    pub operation_id: String,
    /// Image to deploy.
    pub image_id: String,
    /// New domain name.
    pub guest_name: String,
    /// Pool for the volumes.
    pub pool: String,
    /// `raw` (default) or `qcow2`.
    pub disk_format: String,
    /// Sizes per disk; 0 = image size.
    pub disk_sizes_bytes: Vec<u64>,
    /// Overrides; 0 keeps the image's.
    pub vcpus: u32,
    /// See `vcpus`.
    pub memory_mib: u64,
    /// Host name; empty: the guest name.
    pub hostname: String,
    /// Per NIC: (addresses, gateway4, gateway6, nameservers, search, mac).
    pub interfaces: Vec<InterfaceSpec>,
    /// cloud-init user-data.
    pub user_data: String,
    /// Start once defined.
    pub start: bool,
    /// Domain type for this host (`kvm`/`qemu`).
    pub domain_type: String,
    /// Directory for serial console logs (`<dir>/<guest>.log`).
    pub console_log_dir: Option<PathBuf>,
    /// Hardware over the image's recorded configuration.
    pub hardware: imprint_proto::hardware::Hardware,
    /// Where NICs without an attachment of their own (imported images)
    /// go on this host.
    pub default_nic: crate::domain::NicAttachment,
    /// Start the guest before its volumes are written ([`crate::lazy`]).
    pub lazy: bool,
    /// Lazy when it can be ([`resolve_lazy`]).
    pub lazy_if_possible: bool,
    /// Where a lazy deploy's NBD exports put their sockets.
    pub nbd_dir: PathBuf,
    /// Lazy deploys filling at once on this host, at most.
    pub max_lazy_fills: usize,
    /// A lazy fill's speed cap in MiB/s per disk (0: none).
    pub fill_mib_s: u64,
    /// The image's store as the request named it (empty: the agent's
    /// own), journaled so a restarted agent resumes a lazy fill from it.
    pub store_location: String,
    /// Keep the image's identity: no generalization of the new volumes
    /// ([`crate::generalize`]).
    pub keep_identity: bool,
}

/// One NIC as requested.
#[derive(Debug, Clone, Default)]
pub struct InterfaceSpec {
    /// CIDR addresses; empty: DHCP.
    pub addresses: Vec<String>,
    /// Gateways.
    pub gateway4: String,
    /// See `gateway4`.
    pub gateway6: String,
    /// DNS.
    pub nameservers: Vec<String>,
    /// Search domains.
    pub search_domains: Vec<String>,
    /// Requested MAC; empty: random.
    pub mac_address: String,
    /// The gateways are on the link even outside the addresses' subnets.
    pub gateway_on_link: bool,
}

/// What a deploy made.
#[derive(Debug, Clone)]
pub struct DeployOutcome {
    /// New guest.
    pub guest: GuestRef,
    /// Volume paths (disks, then seed).
    pub volumes: Vec<String>,
    /// New MACs.
    pub macs: Vec<String>,
    /// Data bytes written.
    pub bytes_written: u64,
    /// Seconds writing.
    pub write_seconds: f64,
    /// Seconds giving the guest a fresh identity (0: kept, or the image
    /// was sealed at capture).
    pub generalize_seconds: f64,
    /// Started.
    pub started: bool,
}

/// libvirt domain names: 1-64 of `[A-Za-z0-9_.-]`, not starting with `-` or `.`.
pub fn validate_guest_name(n: &str) -> Result<()> {
    imprint_proto::limits::check_guest_name(n)
        .map_err(|m| AgentError::new(Kind::InvalidArgument, m))
}

fn parse_ip(s: &str, what: &str) -> Result<Option<std::net::IpAddr>> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        AgentError::new(
            Kind::InvalidArgument,
            format!("{what} {s:?} is not an IP address"),
        )
    })
}

/// A checked deploy: the new guest's configuration, disk sizes and seed.
pub struct Plan {
    config: GuestConfig,
    sizes: Vec<u64>,
    seed: Seed,
}

fn plan(spec: &DeploySpec, manifest: &imprint_store::Manifest) -> Result<Plan> {
    validate_guest_name(&spec.guest_name)?;
    if !matches!(spec.disk_format.as_str(), "" | "raw" | "qcow2") {
        return Err(AgentError::new(
            Kind::InvalidArgument,
            format!(
                "disk format {:?} is not supported; use raw or qcow2",
                spec.disk_format
            ),
        ));
    }
    let mut config: GuestConfig = serde_json::from_value(manifest.config.clone()).map_err(|e| {
        AgentError::new(
            Kind::FailedPrecondition,
            format!(
                "image {} has no guest configuration this agent can deploy: {e}",
                manifest.image_id
            ),
        )
    })?;
    // Every deploy, of a captured, imported or copied image, goes through
    // here: the recorded configuration, then the hardware profile, then
    // the request's own vCPUs and memory (applied when the domain is made).
    config.apply(&spec.hardware);
    config.check_firmware()?;
    if spec.disk_sizes_bytes.len() > manifest.disks.len() {
        return Err(AgentError::new(
            Kind::InvalidArgument,
            format!(
                "{} disk sizes given, the image has {} disks",
                spec.disk_sizes_bytes.len(),
                manifest.disks.len()
            ),
        ));
    }
    let mut sizes = Vec::new();
    for (i, d) in manifest.disks.iter().enumerate() {
        let want = spec.disk_sizes_bytes.get(i).copied().unwrap_or(0);
        if want != 0 && want < d.size_bytes {
            return Err(AgentError::new(
                Kind::InvalidArgument,
                format!(
                    "disk {i} ({}) of the image is {} bytes; the requested {want} bytes is smaller",
                    d.name, d.size_bytes
                ),
            ));
        }
        sizes.push(want.max(d.size_bytes));
    }
    let hostname = if spec.hostname.is_empty() {
        spec.guest_name.replace(['_', '.'], "-")
    } else {
        spec.hostname.clone()
    };
    cloudinit::validate_hostname(&hostname)?;
    cloudinit::validate_user_data(&spec.user_data)?;
    if spec.interfaces.len() > config.nics.len() {
        return Err(AgentError::new(
            Kind::InvalidArgument,
            format!(
                "{} network interfaces configured, the image has {} NICs",
                spec.interfaces.len(),
                config.nics.len()
            ),
        ));
    }
    let mut interfaces = Vec::new();
    let mut seen = HashSet::new();
    for i in 0..config.nics.len() {
        let s = spec.interfaces.get(i).cloned().unwrap_or_default();
        let mac = if s.mac_address.is_empty() {
            cloudinit::random_mac()
        } else {
            cloudinit::parse_mac(&s.mac_address)?
        };
        if !seen.insert(mac.clone()) {
            return Err(AgentError::new(
                Kind::InvalidArgument,
                format!("MAC {mac} is given twice"),
            ));
        }
        let addresses = s
            .addresses
            .iter()
            .map(|a| cloudinit::parse_cidr(a))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let gateway4 = parse_ip(&s.gateway4, "gateway4")?;
        let gateway6 = parse_ip(&s.gateway6, "gateway6")?;
        if gateway4.is_some_and(|g| !g.is_ipv4()) || gateway6.is_some_and(|g| !g.is_ipv6()) {
            return Err(AgentError::new(
                Kind::InvalidArgument,
                "gateway4 must be IPv4 and gateway6 IPv6",
            ));
        }
        for g in gateway4.iter().chain(gateway6.iter()) {
            cloudinit::check_gateway(&addresses, *g, s.gateway_on_link)
                .map_err(|e| AgentError::new(Kind::InvalidArgument, format!("NIC {i}: {e}")))?;
        }
        let nameservers = s
            .nameservers
            .iter()
            .map(|n| {
                parse_ip(n, "nameserver").map(|o| o.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])))
            })
            .collect::<Result<Vec<_>>>()?;
        for d in &s.search_domains {
            cloudinit::validate_hostname(d)?;
        }
        interfaces.push(Interface {
            addresses,
            gateway4,
            gateway6,
            nameservers,
            search_domains: s.search_domains.clone(),
            mac,
            gateway_on_link: s.gateway_on_link,
        });
    }
    Ok(Plan {
        config,
        sizes,
        seed: Seed {
            instance_id: format!("i-{}", uuid::Uuid::new_v4().simple()),
            hostname,
            interfaces,
            user_data: spec.user_data.clone(),
        },
    })
}

/// A deploy that may be lazy (`lazy_if_possible`: the daemon's default)
/// is lazy when its guest starts on a pool of files and the host's fill
/// limit has room; otherwise its volumes are written first. An explicit
/// `lazy` stays (and is checked as such).
pub fn resolve_lazy(ctx: &Ctx, mut spec: DeploySpec) -> Result<DeploySpec> {
    if spec.lazy_if_possible && !spec.lazy && spec.start {
        let pool = ctx.hv.pool_info(&spec.pool)?;
        spec.lazy = crate::lazy::check(&pool.kind, true).is_ok()
            && ctx.busy.slots_taken(LAZY_FILL, spec.max_lazy_fills) < spec.max_lazy_fills;
    }
    Ok(spec)
}

/// Everything a deploy can refuse before it changes anything: the image,
/// sizes, network configuration, the guest name, the pool and its free
/// space. The service runs it before accepting the operation, so bad input
/// is an error of the call rather than a failed operation.
pub fn check_deploy(ctx: &Ctx, spec: &DeploySpec) -> Result<(imprint_store::Manifest, Plan)> {
    let hv = &*ctx.hv;
    let image_id: ImageId = spec.image_id.parse().map_err(AgentError::from)?;
    let manifest = ctx.store.manifest(&image_id)?;
    let plan = plan(spec, &manifest)?;
    // What a failed deploy of this name left (libvirt was away) is removed
    // by the recovery pass; until then the name and its volume names stay
    // reserved, so that pass can never remove a later guest's volumes.
    if ctx.journal.list()?.iter().any(|e| {
        matches!(e, Entry::Deploy { guest_name, operation_id, .. }
            if guest_name == &spec.guest_name && operation_id != &spec.operation_id)
    }) {
        return Err(AgentError::new(
            Kind::Conflict,
            format!(
                "what a failed deploy of {} left is still being removed (libvirt did not answer); retry in a minute",
                spec.guest_name
            ),
        ));
    }
    if hv.lookup(&spec.guest_name).is_ok() {
        return Err(AgentError::new(
            Kind::Conflict,
            format!(
                "a guest named {} already exists on this host",
                spec.guest_name
            ),
        ));
    }
    if generalizes(spec, &manifest) {
        crate::generalize::check(crate::generalize::Purpose::Deploy)?;
    }
    let pool = hv.pool_info(&spec.pool)?;
    if spec.lazy {
        crate::lazy::check(&pool.kind, spec.start)?;
        if ctx.busy.slots_taken(LAZY_FILL, spec.max_lazy_fills) >= spec.max_lazy_fills {
            return Err(AgentError::new(
                Kind::ResourceExhausted,
                format!(
                    "this host fills {} lazy deploys already (its limit); retry when one ends",
                    spec.max_lazy_fills
                ),
            ));
        }
    }
    let need: u64 = manifest
        .disks
        .iter()
        .map(|d| d.data_chunks * u64::from(manifest.chunk_size))
        .sum();
    if pool.available_bytes < need {
        return Err(AgentError::new(
            Kind::ResourceExhausted,
            format!(
                "storage pool {} has {} bytes free; the image needs up to {need}",
                spec.pool, pool.available_bytes
            ),
        ));
    }
    Ok((manifest, plan))
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("sizes", &self.sizes)
            .finish_non_exhaustive()
    }
}

/// Deploy an image as a new guest; on failure nothing it created remains.
pub fn deploy(
    ctx: &Ctx,
    spec: &DeploySpec,
    cancel: &Arc<AtomicBool>,
    report: Report<'_>,
) -> Result<DeployOutcome> {
    let (hv, store, journal, busy) = (&*ctx.hv, &ctx.store, &ctx.journal, &ctx.busy);
    let _claim = busy.claim(
        &format!("name:{}", spec.guest_name),
        &format!("guest name {}", spec.guest_name),
    )?;
    let (manifest, plan) = check_deploy(ctx, spec)?;
    let _fill = spec
        .lazy
        .then(|| busy.claim_slot(LAZY_FILL, spec.max_lazy_fills, "lazy deploy fills"))
        .transpose()?;
    let mut entry = Entry::Deploy {
        operation_id: spec.operation_id.clone(),
        guest_name: spec.guest_name.clone(),
        pool: spec.pool.clone(),
        volumes: Vec::new(),
        defined_uuid: None,
        nvram: None,
        filling: None,
    };
    journal.write(&entry)?;
    let r = deploy_steps(
        hv, store, journal, &mut entry, spec, &manifest, &plan, cancel, report,
    );
    end_deploy(ctx, &mut entry, r, report)
}

/// The end of a deploy (or of a resumed lazy fill): on failure what it
/// made is removed; the journal entry goes once nothing is left to do.
pub(crate) fn end_deploy(
    ctx: &Ctx,
    entry: &mut Entry,
    r: Result<DeployOutcome>,
    report: Report<'_>,
) -> Result<DeployOutcome> {
    let id = entry.operation_id().to_string();
    if r.is_err()
        && let Entry::Deploy { filling, .. } = entry
        && filling.take().is_some()
    {
        // What is left is undone, never resumed.
        if let Err(e) = ctx.journal.write(entry) {
            tracing::error!(operation = %id, error = %e, "cannot record that a failed lazy deploy is to be undone");
        }
    }
    if r.is_err()
        && let Entry::Deploy {
            guest_name,
            pool,
            volumes,
            defined_uuid,
            nvram,
            ..
        } = &*entry
        && let Err(e) = retrying(UNDO_PATIENCE, || {
            report("removing what the deploy made", 0, 0);
            undo_deploy(&*ctx.hv, guest_name, defined_uuid.as_deref(), pool, volumes)
                .and_then(|()| remove_nvram(nvram.as_deref()))
        })
    {
        // The journal keeps it: removed at the next start, or by the
        // recovery pass that retries what a start could not finish.
        tracing::error!(operation = %id, error = %e, "cannot remove what a failed deploy made; the journal keeps it for a later retry");
        return r;
    }
    ctx.journal.remove(&id)?;
    r
}

/// Whether a deploy generalizes its new volumes: unless asked to keep the
/// image's identity, or the image was sealed at capture (it has none).
fn generalizes(spec: &DeploySpec, manifest: &imprint_store::Manifest) -> bool {
    !spec.keep_identity && !crate::seal::is_sealed(manifest)
}

/// Generalize what a new guest first boots from ([`crate::generalize`]);
/// an overlay of a lazy deploy names its export in its own header
/// meanwhile, so the tool reads the image through it.
fn generalize_boot_disks(
    disks: &[(String, &str, Option<crate::domain::NbdBacking>)],
    tcg: bool,
    cancel: &AtomicBool,
) -> Result<()> {
    for (path, _, backing) in disks {
        if backing.is_some() {
            crate::lazy::set_header_backing(path, backing.as_ref())?;
        }
    }
    let list: Vec<(&std::path::Path, &str)> = disks
        .iter()
        .map(|(p, f, _)| (std::path::Path::new(p.as_str()), *f))
        .collect();
    let r = crate::generalize::generalize(&list, tcg, cancel, crate::generalize::Purpose::Deploy);
    for (path, _, backing) in disks {
        if backing.is_some() {
            crate::lazy::set_header_backing(path, None)?;
        }
    }
    r
}

/// How long a failed deploy keeps retrying its cleanup while libvirt does
/// not answer (a libvirtd restart takes seconds).
pub const UNDO_PATIENCE: Duration = Duration::from_secs(60);

/// Run `f` until it succeeds or fails with something other than
/// [`Kind::Unavailable`], for at most `patience` (backing off from 0.5 s to
/// 5 s).
pub fn retrying<T>(patience: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(500);
    loop {
        match f() {
            Err(e) if e.kind == Kind::Unavailable && start.elapsed() < patience => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// Create volume `name`, recorded in the journal first: a crash (or a
/// libvirtd that goes away) between creating it and recording it must not
/// leave a volume nobody removes. A name that exists already is not ours
/// and leaves the journal again.
#[allow(clippy::too_many_arguments)]
fn create_journaled(
    hv: &dyn Hypervisor,
    journal: &Journal,
    entry: &mut Entry,
    pool: &str,
    name: &str,
    format: &str,
    size: u64,
) -> Result<String> {
    let Entry::Deploy { volumes, .. } = entry else {
        return Err(AgentError::new(
            Kind::Internal,
            "not a deploy's journal entry",
        ));
    };
    volumes.push(name.to_string());
    journal.write(entry)?;
    match hv.create_volume(pool, name, format, size) {
        Err(e) if e.kind == Kind::Conflict => {
            if let Entry::Deploy { volumes, .. } = entry {
                volumes.retain(|v| v != name);
            }
            journal.write(entry)?;
            Err(e)
        }
        other => other,
    }
}

#[allow(clippy::too_many_arguments)]
fn deploy_steps(
    hv: &dyn Hypervisor,
    store: &Store,
    journal: &Journal,
    entry: &mut Entry,
    spec: &DeploySpec,
    manifest: &imprint_store::Manifest,
    plan: &Plan,
    cancel: &Arc<AtomicBool>,
    report: Report<'_>,
) -> Result<DeployOutcome> {
    let total: u64 = manifest.disks.iter().map(|d| d.size_bytes).sum();
    let mut done = 0;
    let mut new_disks = Vec::new();
    let mut lazy_disks = Vec::new();
    let mut paths = Vec::new();
    // What the guest first boots from, to generalize: (path, format,
    // the export an overlay reads from).
    let mut boot_disks = Vec::new();
    let t0 = Instant::now();
    let mut written = 0;
    for (i, d) in manifest.disks.iter().enumerate() {
        cancelled(cancel)?;
        let cfg_disk = plan.config.disks.get(i);
        let target_dev = cfg_disk.map_or_else(
            || format!("vd{}", crate::domain::disk_letter(i)),
            |c| c.target_dev.clone(),
        );
        let bus = cfg_disk.map_or_else(|| "virtio".to_string(), |c| c.bus.clone());
        let format = if spec.disk_format == "qcow2" {
            "qcow2"
        } else {
            "raw"
        };
        let vol = format!("{}-{}.{format}", spec.guest_name, target_dev);
        report("creating volumes", done, total);
        let path = create_journaled(hv, journal, entry, &spec.pool, &vol, format, plan.sizes[i])?;
        if spec.lazy {
            // The guest starts on an overlay reading from the export; the
            // volume is filled while it runs ([`crate::lazy`]).
            let overlay = crate::lazy::overlay_name(&spec.guest_name, &target_dev);
            let overlay_path = create_journaled(
                hv,
                journal,
                entry,
                &spec.pool,
                &overlay,
                "qcow2",
                plan.sizes[i],
            )?;
            let socket = crate::lazy::socket_path(&spec.nbd_dir, &spec.operation_id, i);
            let (export, backing, size) = crate::lazy::export_disk(&socket, store, manifest, i)?;
            lazy_disks.push(crate::lazy::LazyDisk {
                index: i,
                dev: target_dev.clone(),
                target: CopyTarget {
                    path: path.clone(),
                    format: format.into(),
                },
                overlay,
                export,
                size,
            });
            written += d.data_chunks * u64::from(manifest.chunk_size);
            boot_disks.push((overlay_path.clone(), "qcow2", Some(backing.clone())));
            new_disks.push(NewDisk {
                path: overlay_path,
                format: "qcow2".into(),
                target_dev,
                bus,
                readonly: false,
                backing: Some(backing),
            });
            paths.push(path);
            continue;
        }
        // A fresh volume reads as zeros: holes need no writes.
        let mut target: Box<dyn imprint_store::source::DiskTarget> = if format == "qcow2" {
            Box::new(crate::qcow2::Qcow2Target::open(&path)?)
        } else {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| AgentError::new(Kind::Internal, format!("open volume {path}: {e}")))?;
            Box::new(FileTarget::new(file, true))
        };
        let opts = RestoreOptions {
            sync: true,
            cancel: Some(cancel.clone()),
            ..Default::default()
        };
        let stats = restore_disk(store, manifest, i, &mut *target, &opts, &mut |p| {
            report("writing volumes", done + p.bytes_done, total);
        })
        .map_err(|e| AgentError::from(e).context(format!("write volume {vol}")))?;
        written += stats.bytes_written;
        done += d.size_bytes;
        drop(target);
        boot_disks.push((path.clone(), format, None));
        new_disks.push(NewDisk {
            path: path.clone(),
            format: format.into(),
            target_dev,
            bus,
            readonly: false,
            backing: None,
        });
        paths.push(path);
    }
    let write_seconds = t0.elapsed().as_secs_f64();
    cancelled(cancel)?;
    let mut generalize_seconds = 0.0;
    if generalizes(spec, manifest) {
        report("giving the guest a fresh identity", done, total);
        let t = Instant::now();
        generalize_boot_disks(&boot_disks, spec.domain_type == "qemu", cancel)?;
        generalize_seconds = t.elapsed().as_secs_f64();
        tracing::info!(guest = %spec.guest_name, seconds = generalize_seconds, "generalized the new volumes");
    }
    report("writing cloud-init seed", done, total);
    let seed_vol = format!("{}-cidata.img", spec.guest_name);
    let seed_path = create_journaled(hv, journal, entry, &spec.pool, &seed_vol, "raw", 1 << 20)?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seed_path)
        .map_err(|e| {
            AgentError::new(Kind::Internal, format!("open seed volume {seed_path}: {e}"))
        })?;
    plan.seed
        .write_vfat(&mut f)
        .and_then(|()| f.sync_all())
        .map_err(|e| AgentError::new(Kind::Internal, format!("write seed {seed_path}: {e}")))?;
    let used: HashSet<&str> = new_disks.iter().map(|d| d.target_dev.as_str()).collect();
    let seed_dev = (b'a'..=b'z')
        .map(|c| format!("vd{}", c as char))
        .find(|d| !used.contains(d.as_str()))
        .unwrap_or_else(|| "vdz".into());
    new_disks.push(NewDisk {
        path: seed_path.clone(),
        format: "raw".into(),
        target_dev: seed_dev,
        bus: "virtio".into(),
        readonly: true,
        backing: None,
    });
    paths.push(seed_path);

    let macs: Vec<String> = plan.seed.interfaces.iter().map(|i| i.mac.clone()).collect();
    // A UDP NIC is a point-to-point tunnel: two guests cannot share its
    // local end, so the new guest gets a free local port.
    let mut base = plan.config.clone();
    for nic in base.nics.iter_mut().filter(|n| n.kind.is_empty()) {
        spec.default_nic.attach(nic);
    }
    for nic in base.nics.iter_mut().filter(|n| n.kind == "udp") {
        if nic.udp_remote.is_none() {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .map_err(|e| AgentError::new(Kind::Internal, format!("find a free UDP port: {e}")))?
                .port();
            nic.udp_remote = Some(format!("127.0.0.1:{port}"));
        }
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map_err(|e| AgentError::new(Kind::Internal, format!("find a free UDP port: {e}")))?
            .port();
        nic.udp_local = Some(format!("127.0.0.1:{port}"));
    }
    let uuid = uuid::Uuid::new_v4().to_string();
    let console_log = spec.console_log_dir.as_ref().map(|d| {
        d.join(format!("{}.log", spec.guest_name))
            .display()
            .to_string()
    });
    // A UEFI image keeps its NVRAM (boot entries, variables): the new guest
    // starts from those contents, checked against the digest the image
    // recorded. Journaled before it is written.
    let nvram = match &plan.config.firmware.nvram_sha256 {
        Some(want) if plan.config.firmware.kind == "efi" => {
            let bytes = store
                .backend()
                .read_image_file(&manifest.image_id, crate::domain::NVRAM_FILE)
                .map_err(|e| AgentError::from(e).context("read the image's NVRAM"))?;
            let got = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&bytes))
            };
            if &got != want {
                return Err(AgentError::new(
                    Kind::DataLoss,
                    format!(
                        "the NVRAM of image {} fails its check (SHA-256 {got}, recorded {want})",
                        manifest.image_id
                    ),
                ));
            }
            let path = crate::domain::nvram_path(&spec.guest_name);
            if let Entry::Deploy { nvram, .. } = entry {
                *nvram = Some(path.clone());
            }
            journal.write(entry)?;
            std::fs::create_dir_all(crate::domain::NVRAM_DIR)
                .and_then(|()| std::fs::write(&path, &bytes))
                .map_err(|e| AgentError::new(Kind::Internal, format!("write NVRAM {path}: {e}")))?;
            Some(path)
        }
        _ => None,
    };
    let xml = NewDomain {
        base: &base,
        name: spec.guest_name.clone(),
        uuid: uuid.clone(),
        vcpus: if spec.vcpus > 0 {
            spec.vcpus
        } else {
            plan.config.vcpus
        },
        memory_kib: if spec.memory_mib > 0 {
            spec.memory_mib * 1024
        } else {
            plan.config.memory_kib
        },
        domain_type: spec.domain_type.clone(),
        disks: new_disks,
        macs: macs.clone(),
        console_log,
        nvram,
    }
    .to_xml();
    report("defining guest", done, total);
    if let Entry::Deploy { defined_uuid, .. } = entry {
        *defined_uuid = Some(uuid.clone());
    }
    journal.write(entry)?;
    let guest = hv.define(&xml)?;
    if spec.start {
        cancelled(cancel)?;
        report("starting guest", done, total);
        hv.start(&guest)?;
    }
    if !lazy_disks.is_empty() {
        // From here on a restarted agent resumes the deploy, not undoes it.
        if let Entry::Deploy { filling, .. } = entry {
            *filling = Some(Box::new(Filling {
                store: spec.store_location.clone(),
                image_id: spec.image_id.clone(),
                guest_uuid: guest.uuid.clone(),
                disks: lazy_disks
                    .iter()
                    .map(|d| FillingDisk {
                        index: d.index,
                        dev: d.dev.clone(),
                        socket: d.export.path().display().to_string(),
                        target: d.target.path.clone(),
                        format: d.target.format.clone(),
                        overlay: d.overlay.clone(),
                    })
                    .collect(),
                fill_mib_s: spec.fill_mib_s,
                volume_paths: paths.clone(),
                macs: macs.clone(),
                bytes_written: written,
            }));
        }
        journal.write(entry)?;
        let t = Instant::now();
        report(crate::lazy::RUNNING_PHASE, 0, total);
        crate::lazy::fill(
            hv,
            &guest,
            &spec.pool,
            crate::lazy::Source { store, manifest },
            &lazy_disks,
            spec.fill_mib_s,
            cancel,
            &mut |done, total| {
                report(crate::lazy::RUNNING_PHASE, done, total);
            },
        )?;
        tracing::info!(guest = %spec.guest_name, seconds = t.elapsed().as_secs_f64(), "volumes filled");
    }
    Ok(DeployOutcome {
        guest,
        volumes: paths,
        macs,
        bytes_written: written,
        write_seconds,
        generalize_seconds,
        started: spec.start,
    })
}
