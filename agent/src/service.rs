//! The agent's gRPC service: requests are validated at the edge, turned
//! into [`crate::work`] calls on blocking threads, and followed through
//! in-memory operations with a watch channel for progress.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use imprint_proto::v1::{
    self as pb,
    agent_service_server::{AgentService, AgentServiceServer},
};
use imprint_store::Store;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::{
    domain::GuestConfig,
    error::{AgentError, Kind},
    hypervisor::{Hypervisor, PowerState},
    journal::{Entry, Journal},
    transfer,
    work::{self, Busy, CaptureSpec, Ctx, DeploySpec, InterfaceSpec},
};

/// Settings the service needs beyond its parts.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Pool for deploys that name none.
    pub default_pool: String,
    /// Domain type of new guests on this host (`kvm` or `qemu`).
    pub domain_type: String,
    /// Serial console logs of deployed guests go here (`<dir>/<name>.log`).
    pub console_log_dir: Option<PathBuf>,
    /// Shutdown timeout when a capture gives none.
    pub default_shutdown_timeout: Duration,
    /// Imports read and exports write only below this directory (none:
    /// imports and exports are refused).
    pub transfer_dir: Option<PathBuf>,
    /// URL prefixes imports may come from (none: no URL imports).
    pub import_url_prefixes: Vec<String>,
    /// Exported files are 0600, or 0640 with this group.
    pub export_group: Option<u32>,
    /// Where NICs without an attachment of their own go (imported images).
    pub default_nic: crate::domain::NicAttachment,
    /// Where point-in-time reads of captures keep their NBD socket and
    /// scratch files; `None`: captures read with the guest off.
    pub backup_dir: Option<PathBuf>,
    /// Where lazy deploys' NBD exports put their sockets (QEMU connects:
    /// the directory is 0711).
    pub nbd_dir: PathBuf,
    /// Lazy deploys filling at once, at most (more are refused with
    /// RESOURCE_EXHAUSTED before anything is made).
    pub max_lazy_fills: usize,
    /// A lazy fill's speed cap in MiB/s per disk (0: none), so fills do
    /// not starve the host's other I/O.
    pub lazy_fill_mib_s: u64,
}

/// A request's hardware, checked at the edge.
fn hardware(p: Option<&pb::HardwareProfile>) -> Result<imprint_proto::hardware::Hardware, Status> {
    p.map(imprint_proto::hardware::Hardware::try_from)
        .transpose()
        .map_err(Status::invalid_argument)
        .map(Option::unwrap_or_default)
}

struct Op {
    tx: watch::Sender<pb::AgentOperation>,
    cancel: Arc<AtomicBool>,
}

/// The service state, cheap to clone.
#[derive(Clone)]
pub struct Agent {
    ctx: Ctx,
    ops: Arc<Mutex<HashMap<String, Op>>>,
    settings: Arc<Settings>,
    /// Where the agent's own store is (to recognise it in requests).
    own_location: Option<imprint_store::Location>,
    /// Other sites' stores, opened on first use, by location.
    other_stores: Arc<Mutex<HashMap<String, Store>>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Map an agent error to a gRPC status.
pub fn status(e: AgentError) -> Status {
    let code = match e.kind {
        Kind::NotFound => tonic::Code::NotFound,
        Kind::InvalidArgument => tonic::Code::InvalidArgument,
        Kind::Conflict => tonic::Code::AlreadyExists,
        Kind::FailedPrecondition => tonic::Code::FailedPrecondition,
        Kind::PermissionDenied => tonic::Code::PermissionDenied,
        Kind::Unavailable => tonic::Code::Unavailable,
        Kind::ResourceExhausted => tonic::Code::ResourceExhausted,
        Kind::Cancelled => tonic::Code::Cancelled,
        Kind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        Kind::DataLoss => tonic::Code::DataLoss,
        Kind::Internal => tonic::Code::Internal,
    };
    Status::new(code, e.message)
}

/// Finished operations stay answerable (a daemon's retry with the same id
/// gets the result instead of running it again) for this long...
pub const KEEP_FINISHED_SECONDS: i64 = 24 * 3600;
/// ...and at most this many of them: the map stays bounded.
pub const KEEP_FINISHED_MAX: usize = 10_000;

/// Drop finished operations past [`KEEP_FINISHED_SECONDS`], then the
/// oldest finished ones past [`KEEP_FINISHED_MAX`]; running ones stay.
fn prune_finished(ops: &mut HashMap<String, Op>, now: i64) {
    let finished_at = |o: &Op| {
        let o = o.tx.borrow();
        (o.state != pb::OperationState::Running as i32).then_some(o.finished_unix)
    };
    ops.retain(|_, o| finished_at(o).is_none_or(|t| now - t < KEEP_FINISHED_SECONDS));
    let mut finished: Vec<(i64, String)> = ops
        .iter()
        .filter_map(|(id, o)| finished_at(o).map(|t| (t, id.clone())))
        .collect();
    if finished.len() > KEEP_FINISHED_MAX {
        finished.sort();
        for (_, id) in &finished[..finished.len() - KEEP_FINISHED_MAX] {
            ops.remove(id);
        }
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn power(p: PowerState) -> pb::PowerState {
    match p {
        PowerState::Running => pb::PowerState::Running,
        PowerState::ShutOff => pb::PowerState::ShutOff,
        PowerState::Paused => pb::PowerState::Paused,
        PowerState::Other => pb::PowerState::Other,
    }
}

fn is_final(state: i32) -> bool {
    state != pb::OperationState::Running as i32 && state != pb::OperationState::Unspecified as i32
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker thread failed: {e}")))?
        .map_err(status)
}

impl Agent {
    /// A service over these parts.
    pub fn new(
        hv: Arc<dyn Hypervisor>,
        store: Store,
        journal: Journal,
        settings: Settings,
    ) -> Self {
        Self {
            ctx: Ctx {
                hv,
                store,
                journal,
                busy: Busy::default(),
            },
            ops: Arc::new(Mutex::new(HashMap::new())),
            settings: Arc::new(settings),
            own_location: None,
            other_stores: Arc::default(),
        }
    }

    /// Tell the agent where its own store is, so requests naming that
    /// location use it rather than opening it again.
    pub fn with_store_location(mut self, location: imprint_store::Location) -> Self {
        self.own_location = Some(location);
        self
    }

    /// The store at `location` (a directory or `s3://` URL, reached with
    /// this agent's mounts and `AWS_*` keys); empty: the agent's own.
    async fn store_at(&self, location: &str) -> Result<Store, Status> {
        self.store_at_or_create(location, None).await
    }

    /// [`Agent::store_at`]; with `create`, a store that does not exist yet
    /// (an empty folder or prefix) is created with those settings.
    async fn store_at_or_create(
        &self,
        location: &str,
        create: Option<imprint_store::StoreConfig>,
    ) -> Result<Store, Status> {
        if location.is_empty() {
            return Ok(self.ctx.store.clone());
        }
        let loc = imprint_store::Location::parse(location).map_err(|e| status(e.into()))?;
        if self
            .own_location
            .as_ref()
            .is_some_and(|own| own.same_store(&loc))
        {
            return Ok(self.ctx.store.clone());
        }
        if let Some(s) = self
            .other_stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(location)
        {
            return Ok(s.clone());
        }
        let opened = blocking(move || {
            match (create, &loc) {
                // Only an S3 prefix is created here: an empty directory may
                // be a SAN mount point that is not mounted on this host.
                (Some(config), imprint_store::Location::S3(_)) => {
                    match Store::open_or_create_at(&loc, false, config) {
                        // Another copy created it first.
                        Err(e) if e.kind() == imprint_store::ErrorKind::Conflict => {
                            Store::open_at(&loc, false)
                        }
                        r => r,
                    }
                }
                _ => Store::open_at(&loc, false),
            }
            .map_err(|e| AgentError::from(e).context(format!("store {loc}")))
        })
        .await?;
        self.other_stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(location.to_string(), opened.clone());
        Ok(opened)
    }

    /// The tonic service.
    pub fn into_server(self) -> AgentServiceServer<Self> {
        AgentServiceServer::new(self)
    }

    /// `given` if it is absolute and (for imports: resolved, for exports:
    /// its directory) inside the transfer directory.
    fn transfer_path(&self, given: &str, must_exist: bool) -> Result<PathBuf, Status> {
        let Some(dir) = &self.settings.transfer_dir else {
            return Err(Status::failed_precondition(
                "this agent has no transfer directory (transfer_dir) for imports and exports",
            ));
        };
        let p = PathBuf::from(given);
        if !p.is_absolute() {
            return Err(Status::invalid_argument(format!(
                "path {given:?} must be absolute"
            )));
        }
        let dir = dir.canonicalize().map_err(|e| {
            Status::failed_precondition(format!("transfer directory {}: {e}", dir.display()))
        })?;
        let resolved = if must_exist {
            p.canonicalize()
                .map_err(|e| Status::not_found(format!("{given}: {e}")))?
        } else {
            let parent = p
                .parent()
                .ok_or_else(|| Status::invalid_argument(format!("path {given:?} names no file")))?
                .canonicalize()
                .map_err(|e| Status::not_found(format!("directory of {given}: {e}")))?;
            parent.join(
                p.file_name().ok_or_else(|| {
                    Status::invalid_argument(format!("path {given:?} names no file"))
                })?,
            )
        };
        if !resolved.starts_with(&dir) {
            return Err(Status::permission_denied(format!(
                "{given} is outside this agent's transfer directory {}",
                dir.display()
            )));
        }
        Ok(resolved)
    }

    /// An import from an object URL: download into the transfer directory,
    /// then import the file like a local one; the download is removed
    /// whatever happens.
    async fn import_url(
        &self,
        id: String,
        r: pb::ImportRequest,
        want: Option<transfer::Format>,
        image_id: Option<imprint_store::ImageId>,
    ) -> Result<Response<pb::AgentOperation>, Status> {
        let Some(dir) = self.settings.transfer_dir.clone() else {
            return Err(Status::failed_precondition(
                "this agent has no transfer directory (transfer_dir) to download imports into",
            ));
        };
        crate::fetch::allowed(&r.path, &self.settings.import_url_prefixes).map_err(status)?;
        let object = crate::fetch::parse(&r.path).map_err(status)?;
        // A missing object or refused keys fail the call, not an operation.
        object.size().await.map_err(status)?;
        let store = self.ctx.store.clone();
        let handle = tokio::runtime::Handle::current();
        let hw = hardware(r.hardware.as_ref())?;
        let op = self.launch(
            id,
            pb::OperationKind::Import,
            String::new(),
            move |cancel, report| {
                let file = handle.block_on(object.download(&dir, cancel, report))?;
                let r = transfer::import_from(
                    &store,
                    file.path(),
                    &r.path,
                    want,
                    &r.image_name,
                    image_id,
                    &hw,
                    cancel,
                    report,
                )?;
                Ok(Finished::Capture(import_result(&r)))
            },
        );
        Ok(Response::new(op))
    }

    /// Every `every`, finish or undo what the journal holds of operations
    /// that no longer run (a failed deploy whose cleanup libvirt did not
    /// answer, leftovers of a previous run), each under its guest's claim.
    pub async fn recover_leftovers_every(self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let me = self.clone();
            let results = tokio::task::spawn_blocking(move || {
                work::recover_where(&*me.ctx.hv, &me.ctx.journal, Some(&me.ctx.busy), |id| {
                    me.current(id)
                        .is_none_or(|o| o.state != pb::OperationState::Running as i32)
                })
            })
            .await;
            for (id, r) in results.unwrap_or_default() {
                match r {
                    Ok(()) => {
                        tracing::info!(operation = %id, "removed what an operation left behind")
                    }
                    Err(e) => {
                        tracing::warn!(operation = %id, error = %e, "recovery still failing; retrying")
                    }
                }
            }
        }
    }

    /// The operation under `id` this run has, as it stands.
    fn current(&self, id: &str) -> Option<pb::AgentOperation> {
        self.ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|o| o.tx.borrow().clone())
    }

    /// The operation under `id` this run has (a request sent again gets
    /// it, not a second one); ABORTED for one a previous run left and
    /// recovery undid (run afresh, it would act twice for one request).
    fn existing(&self, id: &str) -> Result<Option<pb::AgentOperation>, Status> {
        let op = self.current(id);
        if op.is_none() && self.ctx.journal.undone(id) {
            return Err(Status::aborted(format!(
                "operation {id} was interrupted by a restart of this agent and undone (guest and volumes as before it); \
                 start a new operation"
            )));
        }
        Ok(op)
    }

    /// Resume the lazy deploys a previous run left filling (its journal),
    /// each as a running operation under its own id: called before the
    /// agent serves, so the daemon's next watch of the operation finds it.
    pub async fn resume_fills(&self) -> usize {
        let entries = match self.ctx.journal.list() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the journal for lazy fills to resume");
                return 0;
            }
        };
        let mut n = 0;
        for e in entries {
            let Entry::Deploy {
                operation_id,
                guest_name,
                filling: Some(f),
                ..
            } = &e
            else {
                continue;
            };
            let store = self.store_at(&f.store).await.map_err(|s| {
                AgentError::new(
                    Kind::Unavailable,
                    format!("open the image's store {:?}: {}", f.store, s.message()),
                )
            });
            let ctx = self.ctx.clone();
            let (id, guest) = (operation_id.clone(), guest_name.clone());
            self.launch_in_phase(
                id,
                pb::OperationKind::Deploy,
                guest,
                crate::lazy::RUNNING_PHASE,
                move |cancel, report| {
                    crate::lazy::resume(&ctx, store, e, cancel, report).map(deploy_result)
                },
            );
            n += 1;
        }
        n
    }

    /// Register a new operation and run `work` for it on a blocking thread.
    fn launch(
        &self,
        id: String,
        kind: pb::OperationKind,
        guest: String,
        work: impl FnOnce(
            &Arc<AtomicBool>,
            &(dyn Fn(&str, u64, u64) + Sync),
        ) -> crate::error::Result<Finished>
        + Send
        + 'static,
    ) -> pb::AgentOperation {
        self.launch_in_phase(id, kind, guest, "queued", work)
    }

    /// [`Agent::launch`], reporting `phase` until `work` reports one.
    fn launch_in_phase(
        &self,
        id: String,
        kind: pb::OperationKind,
        guest: String,
        phase: &str,
        work: impl FnOnce(
            &Arc<AtomicBool>,
            &(dyn Fn(&str, u64, u64) + Sync),
        ) -> crate::error::Result<Finished>
        + Send
        + 'static,
    ) -> pb::AgentOperation {
        let first = pb::AgentOperation {
            operation_id: id.clone(),
            kind: kind as i32,
            state: pb::OperationState::Running as i32,
            phase: phase.into(),
            started_unix: now_unix(),
            guest,
            ..Default::default()
        };
        let (tx, _) = watch::channel(first.clone());
        let cancel = Arc::new(AtomicBool::new(false));
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        prune_finished(&mut ops, now_unix());
        ops.insert(
            id,
            Op {
                tx: tx.clone(),
                cancel: cancel.clone(),
            },
        );
        drop(ops);
        tokio::task::spawn_blocking(move || {
            let last = Mutex::new(Instant::now() - Duration::from_secs(1));
            let report = |phase: &str, done: u64, total: u64| {
                let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
                let phase_changed = tx.borrow().phase != phase;
                if !phase_changed && l.elapsed() < Duration::from_millis(250) {
                    return;
                }
                *l = Instant::now();
                tx.send_modify(|o| {
                    o.phase = phase.to_string();
                    o.bytes_done = done;
                    o.bytes_total = total;
                });
            };
            let result = work(&cancel, &report);
            tx.send_modify(|o| {
                o.finished_unix = now_unix();
                if result.is_ok() {
                    o.state = pb::OperationState::Succeeded as i32;
                    o.phase = "done".into();
                }
                match result {
                    Ok(Finished::Capture(r)) => {
                        (o.bytes_done, o.bytes_total) = (r.bytes_total, r.bytes_total);
                        o.capture = Some(r);
                    }
                    Ok(Finished::Export(r)) => {
                        (o.bytes_done, o.bytes_total) = (r.size_bytes, r.size_bytes);
                        o.export = Some(r);
                    }
                    Ok(Finished::Copy(r)) => {
                        (o.bytes_done, o.bytes_total) = (r.image_size_bytes, r.image_size_bytes);
                        o.copy = Some(r);
                    }
                    Ok(Finished::Deploy(r)) => {
                        o.bytes_done = o.bytes_total;
                        o.deploy = Some(r);
                    }
                    Ok(Finished::Lint(r)) => o.lint = Some(r),
                    Ok(Finished::DeleteGuest(r)) => o.delete_guest = Some(r),
                    Err(e) => {
                        let s = status(e);
                        o.state = if s.code() == tonic::Code::Cancelled {
                            pb::OperationState::Cancelled as i32
                        } else {
                            pb::OperationState::Failed as i32
                        };
                        o.error = s.message().to_string();
                        o.error_code = s.code() as i32;
                    }
                }
            });
            let o = tx.borrow().clone();
            tracing::info!(operation = %o.operation_id, state = o.state, error = %o.error, "operation finished");
            let kind = match pb::OperationKind::try_from(o.kind) {
                Ok(pb::OperationKind::Capture) => "capture",
                Ok(pb::OperationKind::Import) => "import",
                Ok(pb::OperationKind::Export) => "export",
                Ok(pb::OperationKind::Copy) => "copy",
                Ok(pb::OperationKind::Lint) => "lint",
                Ok(pb::OperationKind::DeleteGuest) => "delete-guest",
                _ => "deploy",
            };
            let result = match pb::OperationState::try_from(o.state) {
                Ok(pb::OperationState::Succeeded) => "succeeded",
                Ok(pb::OperationState::Cancelled) => "cancelled",
                _ => "failed",
            };
            imprint_service::metrics::agent()
                .operations
                .get_or_create(&imprint_service::metrics::OperationLabels { kind, result })
                .inc();
        });
        first
    }

    /// Operations still running that an agent restart would end (a
    /// [`resumable`] one is not waited for at shutdown).
    pub fn running(&self) -> usize {
        self.ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|o| {
                let o = o.tx.borrow();
                !is_final(o.state) && !resumable(&o)
            })
            .count()
    }

    /// Ids of the operations running now (heartbeats report them).
    pub fn running_ids(&self) -> Vec<String> {
        self.ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, o)| !is_final(o.tx.borrow().state))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Cancel running operation `id` (the daemon ended it); whether it ran.
    pub fn cancel_one(&self, id: &str) -> bool {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        match ops.get(id) {
            Some(o) if !is_final(o.tx.borrow().state) => {
                o.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Ask every running operation to stop (at shutdown): captures return
    /// their guest to its power state, deploys remove what they created;
    /// a [`resumable`] lazy fill is left to the next start. Returns how
    /// many were asked.
    pub fn cancel_all(&self) -> usize {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for o in ops.values().filter(|o| {
            let o = o.tx.borrow();
            !is_final(o.state) && !resumable(&o)
        }) {
            o.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            n += 1;
        }
        n
    }
}

/// A deploy's result as the API reports it.
fn deploy_result(o: work::DeployOutcome) -> Finished {
    Finished::Deploy(pb::DeployResult {
        guest_name: o.guest.name,
        guest_uuid: o.guest.uuid,
        volumes: o.volumes,
        mac_addresses: o.macs,
        bytes_written: o.bytes_written,
        write_seconds: o.write_seconds,
        started: o.started,
        generalize_seconds: o.generalize_seconds,
    })
}

/// Whether operation `o` survives an agent restart as it is: a lazy
/// deploy whose guest runs is resumed from the journal at the next start,
/// so stopping the agent neither cancels nor waits for it.
fn resumable(o: &pb::AgentOperation) -> bool {
    o.kind == pb::OperationKind::Deploy as i32 && o.phase == crate::lazy::RUNNING_PHASE
}

/// The disks of a new image as the API reports them.
fn captured_disks(m: &imprint_store::Manifest) -> Vec<pb::CapturedDisk> {
    m.disks
        .iter()
        .map(|d| pb::CapturedDisk {
            name: d.name.clone(),
            size_bytes: d.size_bytes,
            sha256: d.sha256.clone().unwrap_or_default(),
        })
        .collect()
}

enum Finished {
    Capture(pb::CaptureResult),
    Deploy(pb::DeployResult),
    Export(pb::ExportResult),
    Copy(pb::CopyResult),
    Lint(pb::LintReport),
    DeleteGuest(pb::DeleteGuestResult),
}

/// What an import reports (as a capture's result).
fn import_result(r: &imprint_store::capture::CaptureReport) -> pb::CaptureResult {
    pb::CaptureResult {
        image_id: r.manifest.image_id.to_string(),
        bytes_total: r.stats.bytes_total,
        bytes_read: r.stats.bytes_read,
        bytes_stored: r.stats.bytes_stored,
        bytes_deduplicated: r.stats.bytes_deduplicated,
        zero_bytes_skipped: r.stats.zero_bytes_skipped,
        read_seconds: r.stats.seconds,
        disks: captured_disks(&r.manifest),
        config_json: r.manifest.config.to_string(),
        warnings: r
            .manifest
            .labels
            .get(transfer::WARNINGS_LABEL)
            .map(|w| w.lines().map(str::to_string).collect())
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// The longest a live capture keeps the filesystems frozen unless told.
const DEFAULT_FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request's capture mode, checked.
fn capture_mode(mode: i32, freeze_timeout_seconds: u32) -> Result<work::CaptureMode, Status> {
    let mode = pb::CaptureMode::try_from(mode).map_err(|_| {
        Status::invalid_argument(format!("capture mode {mode} is not a CaptureMode"))
    })?;
    if freeze_timeout_seconds > 3_600 {
        return Err(Status::invalid_argument(
            "freeze_timeout_seconds is more than an hour",
        ));
    }
    Ok(match mode {
        pb::CaptureMode::Unspecified | pb::CaptureMode::Offline if freeze_timeout_seconds == 0 => {
            work::CaptureMode::Offline
        }
        pb::CaptureMode::Live => work::CaptureMode::Live {
            freeze_timeout: match freeze_timeout_seconds {
                0 => DEFAULT_FREEZE_TIMEOUT,
                s => Duration::from_secs(u64::from(s)),
            },
        },
        pb::CaptureMode::CrashConsistent if freeze_timeout_seconds == 0 => {
            work::CaptureMode::CrashConsistent
        }
        _ => {
            return Err(Status::invalid_argument(
                "freeze_timeout_seconds is for live captures (mode LIVE)",
            ));
        }
    })
}

/// An image id as a request gives it.
fn image_id(given: &str) -> Result<imprint_store::ImageId, Status> {
    given
        .parse()
        .map_err(|e: imprint_store::Error| status(e.into()))
}

fn op_id(given: &str) -> Result<String, Status> {
    if given.is_empty() {
        return Ok(uuid::Uuid::new_v4().to_string());
    }
    uuid::Uuid::try_parse(given)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Status::invalid_argument(format!("operation_id {given:?} must be a UUID")))
}

#[tonic::async_trait]
impl AgentService for Agent {
    async fn capture(
        &self,
        req: Request<pb::CaptureRequest>,
    ) -> Result<Response<pb::AgentOperation>, Status> {
        let r = req.into_inner();
        let id = op_id(&r.operation_id)?;
        if let Some(op) = self.existing(&id)? {
            return Ok(Response::new(op));
        }
        if r.guest.is_empty() {
            return Err(Status::invalid_argument("guest is required"));
        }
        imprint_store::manifest::validate_name(&r.image_name).map_err(|e| status(e.into()))?;
        let image_id =
            match r.image_id.as_str() {
                "" => None,
                s => Some(s.parse::<imprint_store::ImageId>().map_err(|_| {
                    Status::invalid_argument(format!("image_id {s:?} must be a UUID"))
                })?),
            };
        let spec = CaptureSpec {
            operation_id: id.clone(),
            guest: r.guest.clone(),
            image_name: r.image_name,
            exclude_disks: r.exclude_disks,
            shutdown_timeout: if r.shutdown_timeout_seconds == 0 {
                self.settings.default_shutdown_timeout
            } else {
                Duration::from_secs(u64::from(r.shutdown_timeout_seconds))
            },
            allow_force_off: r.allow_force_off,
            labels: r.labels.into_iter().collect(),
            image_id,
            acpi_resend: Duration::from_secs(5),
            backup_dir: self.settings.backup_dir.clone(),
            mode: capture_mode(r.mode, r.freeze_timeout_seconds)?,
            // The overlays are small (what sysprep writes): beside the
            // point-in-time views, or the NBD sockets of an agent that
            // reads with the guest off.
            seal: r.seal.then(|| work::SealSpec {
                dir: self
                    .settings
                    .backup_dir
                    .as_ref()
                    .unwrap_or(&self.settings.nbd_dir)
                    .join(format!("{id}-seal")),
                tcg: self.settings.domain_type == "qemu",
            }),
        };
        // Bad input (unknown guest or disk, a disk without a local source...)
        // is refused now, not as a failed operation.
        let (hv, store, check) = (self.ctx.hv.clone(), self.ctx.store.clone(), spec.clone());
        let plan = blocking(move || work::check_capture(&*hv, &store, &check)).await?;
        let guest = plan.guest;
        let spec = CaptureSpec {
            guest: guest.uuid.clone(),
            ..spec
        };
        let ctx = self.ctx.clone();
        let op = self.launch(
            id,
            pb::OperationKind::Capture,
            guest.name,
            move |cancel, report| {
                let o = work::capture(&ctx, &spec, cancel, report)?;
                Ok(Finished::Capture(pb::CaptureResult {
                    image_id: o.image_id.to_string(),
                    bytes_total: o.stats.bytes_total,
                    bytes_read: o.stats.bytes_read,
                    bytes_stored: o.stats.bytes_stored,
                    bytes_deduplicated: o.stats.bytes_deduplicated,
                    zero_bytes_skipped: o.stats.zero_bytes_skipped,
                    shutdown_seconds: o.shutdown_seconds,
                    read_seconds: o.read_seconds,
                    boot_seconds: o.boot_seconds,
                    final_power_state: power(o.final_state) as i32,
                    disks: captured_disks(&o.manifest),
                    config_json: o.manifest.config.to_string(),
                    warnings: Vec::new(),
                    downtime_seconds: o.downtime_seconds,
                    point_in_time: o.point_in_time,
                    mode: match o.mode {
                        work::CaptureMode::Offline => pb::CaptureMode::Offline,
                        work::CaptureMode::Live { .. } => pb::CaptureMode::Live,
                        work::CaptureMode::CrashConsistent => pb::CaptureMode::CrashConsistent,
                    } as i32,
                    freeze_seconds: o.freeze_seconds,
                    incremental_parent: o
                        .incremental_parent
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    full_read_reason: o.full_read_reason.unwrap_or_default(),
                    bytes_reused: o.stats.bytes_reused,
                    sealed: crate::seal::is_sealed(&o.manifest),
                    seal_seconds: o.seal_seconds,
                }))
            },
        );
        Ok(Response::new(op))
    }

    async fn deploy(
        &self,
        req: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::AgentOperation>, Status> {
        let r = req.into_inner();
        let id = op_id(&r.operation_id)?;
        if let Some(op) = self.existing(&id)? {
            return Ok(Response::new(op));
        }
        work::validate_guest_name(&r.guest_name).map_err(status)?;
        let image = image_id(&r.image_id)?;
        let store = self.store_at(&r.store).await?;
        let reader = store.clone();
        blocking(move || {
            reader
                .manifest(&image)
                .map(|_| ())
                .map_err(AgentError::from)
        })
        .await?;
        let disk_format = match pb::DiskFormat::try_from(r.disk_format) {
            Ok(pb::DiskFormat::Unspecified | pb::DiskFormat::Raw) => "raw",
            Ok(pb::DiskFormat::Qcow2) => "qcow2",
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown disk_format {}",
                    r.disk_format
                )));
            }
        };
        let net = r.network.unwrap_or_default();
        let spec = DeploySpec {
            operation_id: id.clone(),
            image_id: r.image_id,
            guest_name: r.guest_name.clone(),
            pool: if r.pool.is_empty() {
                self.settings.default_pool.clone()
            } else {
                r.pool
            },
            disk_format: disk_format.into(),
            disk_sizes_bytes: r.disk_sizes_bytes,
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            hostname: net.hostname,
            interfaces: net
                .interfaces
                .into_iter()
                .map(|i| InterfaceSpec {
                    addresses: i.addresses,
                    gateway4: i.gateway4,
                    gateway6: i.gateway6,
                    nameservers: i.nameservers,
                    search_domains: i.search_domains,
                    mac_address: i.mac_address,
                    gateway_on_link: i.gateway_on_link,
                })
                .collect(),
            user_data: r.user_data,
            start: r.start,
            domain_type: self.settings.domain_type.clone(),
            console_log_dir: self.settings.console_log_dir.clone(),
            hardware: hardware(r.hardware.as_ref())?,
            default_nic: self.settings.default_nic.clone(),
            lazy: r.lazy,
            lazy_if_possible: r.lazy_if_possible,
            nbd_dir: self.settings.nbd_dir.clone(),
            max_lazy_fills: self.settings.max_lazy_fills,
            fill_mib_s: self.settings.lazy_fill_mib_s,
            store_location: r.store.clone(),
            keep_identity: r.keep_identity,
        };
        // Refuse bad input now, as an error of this call.
        // The image may come from another site's store.
        let mut ctx = self.ctx.clone();
        ctx.store = store;
        let check_ctx = ctx.clone();
        let spec = blocking(move || {
            let spec = work::resolve_lazy(&check_ctx, spec)?;
            work::check_deploy(&check_ctx, &spec).map(|_| spec)
        })
        .await?;
        let op = self.launch(
            id,
            pb::OperationKind::Deploy,
            r.guest_name,
            move |cancel, report| work::deploy(&ctx, &spec, cancel, report).map(deploy_result),
        );
        Ok(Response::new(op))
    }

    async fn import(
        &self,
        req: Request<pb::ImportRequest>,
    ) -> Result<Response<pb::AgentOperation>, Status> {
        let r = req.into_inner();
        let id = op_id(&r.operation_id)?;
        if let Some(op) = self.existing(&id)? {
            return Ok(Response::new(op));
        }
        imprint_store::manifest::validate_name(&r.image_name).map_err(|e| status(e.into()))?;
        let want = match pb::DiskFormat::try_from(r.format) {
            Ok(pb::DiskFormat::Unspecified) => None,
            Ok(pb::DiskFormat::Raw) => Some(transfer::Format::Raw),
            Ok(pb::DiskFormat::Qcow2) => Some(transfer::Format::Qcow2),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown format {}",
                    r.format
                )));
            }
        };
        let image_id =
            match r.image_id.as_str() {
                "" => None,
                s => Some(s.parse::<imprint_store::ImageId>().map_err(|_| {
                    Status::invalid_argument(format!("image_id {s:?} must be a UUID"))
                })?),
            };
        if crate::fetch::is_url(&r.path) {
            return self.import_url(id, r, want, image_id).await;
        }
        let path = self.transfer_path(&r.path, true)?;
        // Another account's export (its private image), or an export still
        // being written, is not the caller's to import.
        let refused = r.refused_paths.iter().any(|p| {
            std::path::Path::new(p)
                .canonicalize()
                .is_ok_and(|p| p == path)
        });
        if refused
            || path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".imprint-partial"))
        {
            return Err(Status::permission_denied(format!(
                "{} was exported by another account (or is an export being written); it cannot be imported",
                path.display()
            )));
        }
        // Refuse what cannot be imported now, as an error of this call.
        let check = path.clone();
        blocking(move || transfer::check_import(&check, want).map(|_| ())).await?;
        let store = self.ctx.store.clone();
        let hw = hardware(r.hardware.as_ref())?;
        let op = self.launch(
            id,
            pb::OperationKind::Import,
            String::new(),
            move |cancel, report| {
                let r = transfer::import(
                    &store,
                    &path,
                    want,
                    &r.image_name,
                    image_id,
                    &hw,
                    cancel,
                    report,
                )?;
                Ok(Finished::Capture(import_result(&r)))
            },
        );
        Ok(Response::new(op))
    }

    async fn export(
        &self,
        req: Request<pb::ExportRequest>,
    ) -> Result<Response<pb::AgentOperation>, Status> {
        let r = req.into_inner();
        let id = op_id(&r.operation_id)?;
        if let Some(op) = self.existing(&id)? {
            return Ok(Response::new(op));
        }
        let path = self.transfer_path(&r.path, false)?;
        let (format, pb_format) = match pb::DiskFormat::try_from(r.format) {
            Ok(pb::DiskFormat::Unspecified | pb::DiskFormat::Raw) => {
                (transfer::Format::Raw, pb::DiskFormat::Raw)
            }
            Ok(pb::DiskFormat::Qcow2) => (transfer::Format::Qcow2, pb::DiskFormat::Qcow2),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown format {}",
                    r.format
                )));
            }
        };
        let image = image_id(&r.image_id)?;
        if path.exists() {
            return Err(Status::already_exists(format!(
                "{} exists; export writes new files only",
                path.display()
            )));
        }
        let store = self.store_at(&r.store).await?;
        let (check, disk) = (image.clone(), r.disk as usize);
        let reader = store.clone();
        blocking(move || {
            let m = store.manifest(&check).map_err(AgentError::from)?;
            if disk >= m.disks.len() {
                return Err(AgentError::new(
                    Kind::InvalidArgument,
                    format!(
                        "image {check} has {} disk(s); there is no disk {disk}",
                        m.disks.len()
                    ),
                ));
            }
            Ok(())
        })
        .await?;
        let store = reader;
        let group = self.settings.export_group;
        let op = self.launch(
            id,
            pb::OperationKind::Export,
            String::new(),
            move |cancel, report| {
                let size =
                    transfer::export(&store, &image, disk, &path, format, group, cancel, report)?;
                Ok(Finished::Export(pb::ExportResult {
                    path: path.display().to_string(),
                    size_bytes: size,
                    format: pb_format as i32,
                }))
            },
        );
        Ok(Response::new(op))
    }

    async fn lint_image(
        &self,
        req: Request<pb::LintImageRequest>,
    ) -> Result<Response<pb::AgentOperation>, Status> {
        let r = req.into_inner();
        let id = op_id(&r.operation_id)?;
        if let Some(op) = self.existing(&id)? {
            return Ok(Response::new(op));
        }
        let image = image_id(&r.image_id)?;
        let store = self.store_at(&r.store).await?;
        let reader = store.clone();
        let manifest = blocking(move || reader.manifest(&image).map_err(AgentError::from)).await?;
        let (nbd_dir, tcg, op) = (
            self.settings.nbd_dir.clone(),
            self.settings.domain_type == "qemu",
            id.clone(),
        );
        let op = self.launch(
            id,
            pb::OperationKind::Lint,
            String::new(),
            move |_cancel, report| {
                report("reading the image's disks", 0, 0);
                let r = crate::lint::lint_image(&store, &manifest, &nbd_dir, &op, tcg)?;
                Ok(Finished::Lint(crate::lint::to_proto(&r)))
            },
        );
        Ok(Response::new(op))
    }

    async fn delete_guest(
        &self,
        req: Request<pb::DeleteGuestAgentRequest>,
    ) -> Result<Response<pb::AgentOperation>, Status> {
        let r = req.into_inner();
        let id = op_id(&r.operation_id)?;
        if let Some(op) = self.existing(&id)? {
            return Ok(Response::new(op));
        }
        if r.guest.is_empty() {
            return Err(Status::invalid_argument("guest is required"));
        }
        let ctx = self.ctx.clone();
        let guest = r.guest.clone();
        let op = self.launch(
            id,
            pb::OperationKind::DeleteGuest,
            r.guest,
            move |cancel, report| {
                let o = work::delete_guest(&ctx, &guest, cancel, report)?;
                Ok(Finished::DeleteGuest(pb::DeleteGuestResult {
                    guest_name: o.guest.name,
                    guest_uuid: o.guest.uuid,
                    deleted_volumes: o.deleted_volumes,
                    left_disks: o.left_disks,
                    already_gone: o.already_gone,
                    forced_off: o.forced_off,
                }))
            },
        );
        Ok(Response::new(op))
    }

    async fn copy(
        &self,
        req: Request<pb::CopyRequest>,
    ) -> Result<Response<pb::AgentOperation>, Status> {
        let r = req.into_inner();
        let id = op_id(&r.operation_id)?;
        if let Some(op) = self.existing(&id)? {
            return Ok(Response::new(op));
        }
        let image = image_id(&r.image_id)?;
        let same = r.source_store == r.target_store
            || match (
                imprint_store::Location::parse(&r.source_store),
                imprint_store::Location::parse(&r.target_store),
            ) {
                (Ok(a), Ok(b)) => a.same_store(&b),
                _ => false,
            };
        if same {
            return Err(Status::invalid_argument(
                "the source and target are the same store; a copy needs two stores",
            ));
        }
        let src = self.store_at(&r.source_store).await?;
        // A new site's S3 store is created on its first copy, cut like the
        // source so chunks dedup; a directory store must exist.
        let dst = self
            .store_at_or_create(&r.target_store, Some(src.config().clone()))
            .await?;
        // Refuse now what cannot work: no such image, or already there.
        let (s, d, check) = (src.clone(), dst.clone(), image.clone());
        blocking(move || transfer::check_copy(&s, &d, &check)).await?;
        let op = self.launch(
            id,
            pb::OperationKind::Copy,
            String::new(),
            move |cancel, report| {
                let r = transfer::copy(&src, &dst, &image, cancel, report)?;
                Ok(Finished::Copy(r))
            },
        );
        Ok(Response::new(op))
    }

    async fn list_guests(
        &self,
        _: Request<pb::ListGuestsRequest>,
    ) -> Result<Response<pb::ListGuestsResponse>, Status> {
        let hv = self.ctx.hv.clone();
        let guests = blocking(move || {
            let mut out = Vec::new();
            for g in hv.list_guests()? {
                let state = hv.power_state(&g)?;
                out.push(pb::Guest {
                    name: g.name,
                    uuid: g.uuid,
                    power_state: power(state) as i32,
                    config_json: String::new(),
                });
            }
            Ok(out)
        })
        .await?;
        Ok(Response::new(pb::ListGuestsResponse { guests }))
    }

    async fn get_guest(
        &self,
        req: Request<pb::GetGuestRequest>,
    ) -> Result<Response<pb::Guest>, Status> {
        let hv = self.ctx.hv.clone();
        let name = req.into_inner().guest;
        let g = blocking(move || {
            let (g, xml) = hv.lookup(&name)?;
            let state = hv.power_state(&g)?;
            let config = GuestConfig::from_domain_xml(&xml)
                .map_err(|e| AgentError::new(Kind::Internal, e.to_string()))?;
            Ok(pb::Guest {
                name: g.name,
                uuid: g.uuid,
                power_state: power(state) as i32,
                config_json: serde_json::to_string(&config).unwrap_or_default(),
            })
        })
        .await?;
        Ok(Response::new(g))
    }

    async fn get_operation(
        &self,
        req: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::AgentOperation>, Status> {
        let id = req.into_inner().operation_id;
        match self.existing(&id) {
            Ok(Some(op)) => Ok(Response::new(op)),
            Ok(None) => Err(Status::not_found(format!(
                "operation {id:?} is not known to this agent"
            ))),
            // Not this run's: not found, and why.
            Err(s) => Err(Status::not_found(s.message().to_string())),
        }
    }

    async fn list_operations(
        &self,
        _: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let mut operations: Vec<pb::AgentOperation> =
            ops.values().map(|o| o.tx.borrow().clone()).collect();
        operations.sort_by_key(|o| o.started_unix);
        Ok(Response::new(pb::ListOperationsResponse { operations }))
    }

    type WatchOperationStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::AgentOperation, Status>> + Send>,
    >;

    async fn watch_operation(
        &self,
        req: Request<pb::GetOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        let id = req.into_inner().operation_id;
        let mut rx = {
            let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
            ops.get(&id).map(|o| o.tx.subscribe()).ok_or_else(|| {
                Status::not_found(format!("operation {id:?} is not known to this agent"))
            })?
        };
        let stream = async_stream(move |emit| async move {
            loop {
                let cur = rx.borrow_and_update().clone();
                let done = is_final(cur.state);
                if emit.send(Ok(cur)).await.is_err() || done {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_operation(
        &self,
        req: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::AgentOperation>, Status> {
        let id = req.into_inner().operation_id;
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let op = ops.get(&id).ok_or_else(|| {
            Status::not_found(format!("operation {id:?} is not known to this agent"))
        })?;
        op.cancel.store(true, Ordering::Relaxed);
        Ok(Response::new(op.tx.borrow().clone()))
    }
}

/// A stream fed by a task through a bounded channel.
fn async_stream<F, Fut>(
    f: F,
) -> tokio_stream::wrappers::ReceiverStream<Result<pb::AgentOperation, Status>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::AgentOperation, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(state: pb::OperationState, finished_unix: i64) -> Op {
        let (tx, _) = watch::channel(pb::AgentOperation {
            state: state as i32,
            finished_unix,
            ..Default::default()
        });
        Op {
            tx,
            cancel: Arc::default(),
        }
    }

    #[test]
    fn finished_operations_are_pruned_running_ones_stay() {
        let now = 10 * KEEP_FINISHED_SECONDS;
        let mut ops = HashMap::new();
        ops.insert(
            "old".into(),
            op(pb::OperationState::Succeeded, now - KEEP_FINISHED_SECONDS),
        );
        ops.insert("fresh".into(), op(pb::OperationState::Failed, now - 5));
        ops.insert("running".into(), op(pb::OperationState::Running, 0));
        prune_finished(&mut ops, now);
        let mut left: Vec<&String> = ops.keys().collect();
        left.sort();
        assert_eq!(left, ["fresh", "running"]);
        for i in 0..KEEP_FINISHED_MAX + 5 {
            ops.insert(
                format!("f{i}"),
                op(pb::OperationState::Succeeded, now - 100 + (i % 50) as i64),
            );
        }
        prune_finished(&mut ops, now);
        assert_eq!(
            ops.len(),
            KEEP_FINISHED_MAX + 1,
            "the running one and the newest finished"
        );
        assert!(ops.contains_key("running"));
    }
}
