//! Following operations to their end: one task per running operation,
//! leases between daemons, the final state into the catalog.

use super::*;

impl Dispatcher {
    /// Drive `op` to its end in a task of its own, unless this daemon
    /// already does; returns the task when it is new.
    pub fn spawn_follower(
        self: &Arc<Self>,
        op: OperationRow,
    ) -> Option<tokio::task::JoinHandle<Option<()>>> {
        let mut following = self.following.lock().unwrap_or_else(|e| e.into_inner());
        if following.contains_key(&op.id) {
            return None;
        }
        let (me, id) = (self.clone(), op.id.clone());
        let task = self.background.spawn_task(async move {
            if op.kind == OpKind::Delete {
                me.finish_delete(&op).await;
            } else {
                me.clone().follow(op.id.clone()).await;
            }
            me.following
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&op.id);
        });
        following.insert(id, (task.abort_handle(), Instant::now()));
        Some(task)
    }

    /// Operations this daemon drives now.
    pub fn following(&self) -> usize {
        self.following.lock().map_or(0, |f| f.len())
    }

    /// Renew this daemon's leases, stop following operations it lost, and
    /// claim operations whose daemon died (with `include_own`, also the
    /// ones this daemon held before a restart). Returns how many it took.
    ///
    /// A held operation nobody here follows (its follower gave up, e.g. a
    /// delete whose store was unreachable) gets a follower again once it is
    /// older than a dispatch can take, so nothing held stays unattended.
    pub async fn lease_pass(self: &Arc<Self>, include_own: bool) -> Result<usize, DaemonError> {
        let renewing = Instant::now();
        let held: HashSet<String> = self.catalog.renew_leases().await?.into_iter().collect();
        {
            let mut following = self.following.lock().unwrap_or_else(|e| e.into_inner());
            following.retain(|id, (task, started)| {
                // Followers started after the renewal began may be of
                // operations created since: not in `held`, yet ours.
                if held.contains(id) || task.is_finished() || *started >= renewing {
                    return true;
                }
                // Ended meanwhile, or this daemon stalled past its lease and
                // another one drives it now.
                tracing::info!(op = %id, "no longer holding the operation's lease; stopped following it");
                task.abort();
                false
            });
        }
        let unattended: Vec<String> = {
            let following = self.following.lock().unwrap_or_else(|e| e.into_inner());
            held.iter()
                .filter(|id| !following.contains_key(*id))
                .cloned()
                .collect()
        };
        let settled = now() - 2 * signed(SEND_TIMEOUT.as_secs());
        for id in unattended {
            match self.catalog.operation(&id).await {
                Ok(op) if op.running() && op.created_unix < settled => {
                    tracing::info!(op = %op.id, kind = %op.kind, "following a held operation again");
                    self.spawn_follower(op);
                }
                _ => {}
            }
        }
        let claimed = self.catalog.claim_operations(include_own).await?;
        let mut n = 0;
        for op in claimed {
            tracing::info!(op = %op.id, kind = %op.kind, host = %op.host, phase = %op.phase, "driving operation");
            if self.spawn_follower(op).is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// At start: pick up this daemon's operations from before a restart
    /// and those of daemons that died.
    pub async fn resume_all(self: &Arc<Self>) -> Result<usize, DaemonError> {
        self.lease_pass(true).await
    }

    /// Follow an operation until it is final (or failed by the reaper).
    pub(super) async fn follow(self: Arc<Self>, id: String) {
        loop {
            let op = match self.catalog.operation(&id).await {
                Ok(op) if op.running() => op,
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(op = %id, error = %e, "cannot read operation; retrying");
                    tokio::time::sleep(RETRY_EVERY).await;
                    continue;
                }
            };
            match self.follow_once(&op).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(op = %id, error = %e, "agent not reachable; retrying");
                    tokio::time::sleep(RETRY_EVERY).await;
                }
            }
        }
    }

    /// One attempt: `Ok` when the operation reached its final state here,
    /// `Err` to retry.
    pub(super) async fn follow_once(
        self: &Arc<Self>,
        op: &OperationRow,
    ) -> Result<(), DaemonError> {
        let host = match self.catalog.host(&op.host).await {
            Ok(h) => h,
            // The host is gone from the catalog: the operation cannot end.
            Err(e @ crate::catalog::CatalogError::NotFound(_)) => {
                self.fail(op, ErrorKind::WrongState, &e.to_string()).await;
                return Ok(());
            }
            // A database blip is no reason to fail the operation: retry.
            Err(e) => return Err(read_host_failed(&op.host, e)),
        };
        if op.phase == phase::QUEUED
            && let Err(e) = self.resend(op, &host).await
        {
            return self.end_unless_transient(op, e).await;
        }
        let stream = match self.watch(op, &host).await {
            Ok(s) => s,
            Err(e) => return self.end_unless_transient(op, e).await,
        };
        self.follow_stream(op, &host, stream).await
    }

    /// A failure of an attempt: retried if transient, else the end of the
    /// operation.
    async fn end_unless_transient(
        &self,
        op: &OperationRow,
        e: DaemonError,
    ) -> Result<(), DaemonError> {
        if e.kind().is_transient() {
            return Err(e);
        }
        self.fail(op, e.kind(), e.context()).await;
        Ok(())
    }

    /// Send a request never acknowledged again (agents are idempotent on
    /// the operation id).
    async fn resend(&self, op: &OperationRow, host: &HostRow) -> Result<(), DaemonError> {
        let req = AgentRequest::decode(op.kind, &op.agent_request)
            .map_err(|e| DaemonError::internal(format!("stored request is unreadable: {e}")))?;
        self.send(host, &req).await?;
        let _ = self.catalog.set_phase(&op.id, phase::DISPATCHED).await;
        Ok(())
    }

    /// The agent's progress stream of `op`.
    async fn watch(
        &self,
        op: &OperationRow,
        host: &HostRow,
    ) -> Result<tonic::Streaming<pb::AgentOperation>, DaemonError> {
        let forgotten = || {
            DaemonError::new(
                ErrorKind::Aborted,
                format!(
                    "the agent on host {} no longer knows this operation (it restarted while the operation ran); \
                     a capture's guest was returned to its power state from the agent's journal",
                    host.name
                ),
            )
        };
        match self
            .agent(host)?
            .watch_operation(pb::GetOperationRequest {
                operation_id: op.id.clone(),
            })
            .await
            .map_err(|s| DaemonError::from_agent(&host.name, s))
        {
            Ok(s) => Ok(s.into_inner()),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(forgotten()),
            Err(e) => Err(e),
        }
    }

    /// Progress into the row until the final state. Byte counts are
    /// written at most every `PROGRESS_EVERY`; a new phase at once; and the
    /// latest update held back by that limit is written once it allows, so
    /// the row never stays at an older phase than the agent's.
    async fn follow_stream(
        self: &Arc<Self>,
        op: &OperationRow,
        host: &HostRow,
        mut stream: tonic::Streaming<pb::AgentOperation>,
    ) -> Result<(), DaemonError> {
        use tokio_stream::StreamExt;
        let mut rate = Rate::default();
        let mut last_write = Instant::now() - PROGRESS_EVERY;
        let mut recorded_phase: Option<String> = None;
        let mut held: Option<(pb::AgentOperation, f64)> = None;
        loop {
            let due = tokio::time::Instant::from_std(last_write + PROGRESS_EVERY);
            let next = tokio::select! {
                // `next` is cancel-safe: the stream keeps its own state.
                m = stream.next() => m,
                () = tokio::time::sleep_until(due), if held.is_some() => {
                    if let Some((a, bps)) = held.take() {
                        last_write = Instant::now();
                        self.record_progress(&op.id, &a, bps).await;
                        self.bump();
                    }
                    continue;
                }
            };
            let Some(a) = next
                .transpose()
                .map_err(|s| DaemonError::from_agent(&host.name, s))?
            else {
                break;
            };
            if a.state == pb::OperationState::Running as i32 {
                let bps = rate.sample(a.bytes_done);
                let new_phase = recorded_phase.as_deref() != Some(a.phase.as_str());
                if new_phase || last_write.elapsed() >= PROGRESS_EVERY {
                    last_write = Instant::now();
                    held = None;
                    recorded_phase = Some(a.phase.clone());
                    self.record_progress(&op.id, &a, bps).await;
                    self.bump();
                } else {
                    held = Some((a, bps));
                }
                continue;
            }
            // A final state not recorded (database down) is retried: the
            // agent sends it again on the next watch.
            return self.finish(op, &a).await;
        }
        Err(DaemonError::unavailable("the progress stream ended early"))
    }

    pub(super) async fn finish(
        self: &Arc<Self>,
        op: &OperationRow,
        a: &pb::AgentOperation,
    ) -> Result<(), DaemonError> {
        // A new image is stored at its host's site.
        let site = match self.catalog.host(&op.host).await {
            Ok(h) => site_of_host(&h.site).to_string(),
            // Never guess the site: retry (the agent sends the end again).
            Err(e) => return Err(read_host_failed(&op.host, e)),
        };
        let (state, outcome) = self.outcome(op, a, site);
        // A guest deployed through imprint belongs to the deploying account
        // (recorded before the end, so a retry records it again).
        if let (Some(d), OpState::Succeeded, OpKind::Deploy) = (&a.deploy, state, op.kind)
            && let Err(e) = self
                .catalog
                .assign_guests(
                    &op.host,
                    &[(d.guest_uuid.clone(), d.guest_name.clone())],
                    &op.account_id,
                    true,
                )
                .await
        {
            return Err(
                DaemonError::unavailable("cannot record the new guest's owner").with_source(e),
            );
        }
        // A deleted guest belongs to nobody any more (forgotten before the
        // end, so a retry forgets it again).
        if let (OpState::Succeeded, OpKind::DeleteGuest) = (state, op.kind)
            && let Err(e) = self.catalog.forget_guest(&op.host, &op.guest).await
        {
            return Err(
                DaemonError::unavailable("cannot forget the deleted guest's owner").with_source(e),
            );
        }
        // A lint's report is kept with its image (recorded before the end,
        // so a retry records it again).
        if let (Some(report), OpState::Succeeded, Some(image)) = (&a.lint, state, &op.image_id)
            && let Err(e) = self
                .catalog
                .set_lint(image, &hex::encode(report.encode_to_vec()), a.finished_unix)
                .await
        {
            return Err(DaemonError::unavailable("cannot record the lint report").with_source(e));
        }
        let result = hex::encode(a.encode_to_vec());
        // The final figures, so the row does not keep the last sampled ones.
        self.record_progress(&op.id, a, 0.0).await;
        match self
            .catalog
            .finish_operation(&op.id, state, &a.error, a.error_code, &result, &outcome)
            .await
        {
            Ok(true) => {
                tracing::info!(op = %op.id, kind = %op.kind, %state, error = %a.error, "operation finished");
                record_metrics(op, state, a);
                // A copy adds a site's bytes to what deleting frees.
                if (op.kind.creates_image() || op.kind == OpKind::Copy)
                    && state == OpState::Succeeded
                {
                    self.usage_changed();
                }
                self.record_damage(op, state, a).await;
                self.settle_copy(op).await;
                if op.kind.creates_image() && state == OpState::Succeeded {
                    let (me, op) = (self.clone(), op.clone());
                    drop(
                        self.background
                            .spawn_task(async move { me.lint_new_image(&op).await }),
                    );
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(op = %op.id, error = %e, "cannot record the end of an operation; retrying");
                return Err(DaemonError::from(e));
            }
        }
        self.bump();
        Ok(())
    }

    /// With `--auto-lint`: lint the image operation `op` just made, on its
    /// host, as its account, so the report is kept before anyone deploys
    /// or publishes it. The request id names `op`, so a second finish of
    /// it starts no second lint. A lint that cannot start is logged; the
    /// image stays usable (and `image lint` runs one by hand).
    async fn lint_new_image(self: &Arc<Self>, op: &OperationRow) {
        let (true, Some(image_id)) = (
            self.auto_lint.load(std::sync::atomic::Ordering::Relaxed),
            &op.image_id,
        ) else {
            return;
        };
        let request_id = format!("lint-after-{}", op.id);
        let started = async {
            let host = self.catalog.host(&op.host).await?;
            self.start_lint(&op.account_id, Some(&request_id), image_id, &host)
                .await
                .map(|row| row.id)
        };
        match started.await {
            Ok(lint) => {
                tracing::info!(op = %op.id, image = %image_id, %lint, "linting the new image");
            }
            Err(e) => {
                tracing::warn!(op = %op.id, image = %image_id, error = %e, "cannot lint the new image");
            }
        }
    }

    /// The final state an agent reported, and what it means for the image.
    fn outcome(
        &self,
        op: &OperationRow,
        a: &pb::AgentOperation,
        site: String,
    ) -> (OpState, ImageOutcome) {
        match pb::OperationState::try_from(a.state) {
            Ok(pb::OperationState::Succeeded) => {
                let outcome = match &a.capture {
                    Some(c) if op.kind.creates_image() => {
                        let disks: Vec<ImageDiskRow> = c
                            .disks
                            .iter()
                            .map(|d| ImageDiskRow {
                                name: d.name.clone(),
                                size_bytes: d.size_bytes,
                                sha256: d.sha256.clone(),
                            })
                            .collect();
                        ImageOutcome::Active {
                            size_bytes: disks.iter().map(|d| signed(d.size_bytes)).sum(),
                            config_json: c.config_json.clone(),
                            disks_json: serde_json::to_string(&disks).unwrap_or_default(),
                            site,
                            sealed: c.sealed,
                        }
                    }
                    _ => ImageOutcome::None,
                };
                (OpState::Succeeded, outcome)
            }
            Ok(pb::OperationState::Cancelled) => {
                (OpState::Cancelled, self.image_failed(op, &a.error))
            }
            _ => (OpState::Failed, self.image_failed(op, &a.error)),
        }
    }

    /// A deploy or export checks every chunk it reads: one that failed its
    /// check marks the image damaged (shown by `image show`); a deploy that
    /// read the whole image clears the mark.
    pub(super) async fn record_damage(
        &self,
        op: &OperationRow,
        state: OpState,
        a: &pb::AgentOperation,
    ) {
        let (true, Some(image)) = (
            matches!(op.kind, OpKind::Deploy | OpKind::Export),
            &op.image_id,
        ) else {
            return;
        };
        let damage = match state {
            // A deploy reads every disk of the image; an export only one.
            OpState::Succeeded if op.kind == OpKind::Deploy => String::new(),
            OpState::Succeeded => return,
            _ if a.error_code == ErrorKind::DataLoss.code() as i32 => {
                format!("{} (found by {} operation {})", a.error, op.kind, op.id)
            }
            _ => return,
        };
        if let Err(e) = self.catalog.set_damage(image, &damage).await {
            tracing::error!(op = %op.id, %image, error = %e, "cannot record the image's damage");
        } else if !damage.is_empty() {
            tracing::error!(op = %op.id, %image, %damage, "stored data of an image failed its check");
        }
    }

    pub(super) async fn record_progress(&self, id: &str, a: &pb::AgentOperation, bps: f64) {
        if let Err(e) = self
            .catalog
            .update_progress(
                id,
                phase::reported(&a.phase),
                signed(a.bytes_done),
                signed(a.bytes_total),
                bps,
            )
            .await
        {
            tracing::warn!(op = %id, error = %e, "cannot record progress");
        }
    }

    pub(super) fn image_failed(&self, op: &OperationRow, error: &str) -> ImageOutcome {
        if op.kind.creates_image() {
            ImageOutcome::Failed(error.to_string())
        } else {
            ImageOutcome::None
        }
    }

    /// Fail an operation from the daemon's side.
    pub async fn fail(&self, op: &OperationRow, kind: ErrorKind, error: &str) {
        let outcome = self.image_failed(op, error);
        if let Err(e) = self
            .catalog
            .finish_operation(
                &op.id,
                OpState::Failed,
                error,
                kind.code() as i32,
                "",
                &outcome,
            )
            .await
        {
            tracing::error!(op = %op.id, error = %e, "cannot record a failure");
        }
        tracing::warn!(op = %op.id, %error, "operation failed");
        record_metrics(op, OpState::Failed, &pb::AgentOperation::default());
        self.settle_copy(op).await;
        self.bump();
    }

    /// After a copy ended: its location becomes available, or goes.
    pub(super) async fn settle_copy(&self, op: &OperationRow) {
        if op.kind == OpKind::Copy
            && let Err(e) = self.catalog.settle_locations().await
        {
            // The background pass settles it later.
            tracing::warn!(op = %op.id, error = %e, "cannot settle the copy's location");
        }
    }

    /// Carry out a delete operation: remove the manifest (the chunks are
    /// GC's), then mark the image deleted. Safe to repeat.
    pub async fn finish_delete(&self, op: &OperationRow) {
        let Some(image_id) = op.image_id.clone() else {
            self.fail(op, ErrorKind::Internal, "delete operation without an image")
                .await;
            return;
        };
        // Every site that holds (or is receiving) a copy.
        let mut sites: Vec<String> = match self.catalog.locations(&image_id).await {
            Ok(l) => l.into_iter().map(|l| l.site).collect(),
            Err(e) => {
                tracing::error!(op = %op.id, error = %e, "cannot read the image's locations; retrying later");
                return;
            }
        };
        if sites.is_empty() && self.store.is_some() {
            sites.push(DEFAULT_SITE.to_string());
        }
        for site in sites {
            if let Err(e) = self.delete_at(&site, &image_id).await {
                // The image goes back to the state it had.
                let prior = op
                    .agent_request
                    .strip_prefix("prior:")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(ImageState::Active);
                if let Err(e) = self.catalog.revert_deleting(&image_id, prior).await {
                    tracing::error!(op = %op.id, error = %e, "cannot restore image state");
                }
                let said = format!("removing the image from the store failed: site {site}: {e}");
                self.fail(op, e.kind(), &said).await;
                return;
            }
            if let Err(e) = self.catalog.remove_location(&image_id, &site).await {
                tracing::warn!(op = %op.id, %site, error = %e, "cannot forget a removed location");
            }
        }
        if let Err(e) = self.catalog.mark_deleted(&image_id).await {
            // The operation stays running; the next start finishes it.
            tracing::error!(op = %op.id, error = %e, "cannot mark image deleted");
            return;
        }
        let _ = self
            .catalog
            .finish_operation(&op.id, OpState::Succeeded, "", 0, "", &ImageOutcome::None)
            .await;
        record_metrics(op, OpState::Succeeded, &pb::AgentOperation::default());
        self.usage_changed();
        self.bump();
    }
}

impl Dispatcher {
    /// Remove image `image_id`'s manifest from site `site`'s store (gone
    /// already is fine).
    async fn delete_at(&self, site: &str, image_id: &str) -> Result<(), DaemonError> {
        let store = self.site_store(site).await?;
        let id: imprint_store::ImageId = image_id.parse()?;
        tokio::task::spawn_blocking(move || match store.delete_image(&id) {
            Err(e) if e.kind() != imprint_store::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        })
        .await
        .map_err(|e| DaemonError::internal("the delete task failed").with_source(e))?
    }
}

/// Reading the operation's host failed: never a reason to fail the
/// operation (a database blip); retried.
fn read_host_failed(host: &str, e: crate::catalog::CatalogError) -> DaemonError {
    DaemonError::unavailable(format!("cannot read host {host}")).with_source(e)
}

/// Bytes per second over the last few seconds.
#[derive(Debug, Default)]
struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    fn sample(&mut self, done: u64) -> f64 {
        let t = Instant::now();
        self.samples.push_back((t, done));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(s, _)| t.duration_since(*s) > Duration::from_secs(5))
        {
            self.samples.pop_front();
        }
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 && b1 >= b0 => {
                (b1 - b0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// Count a finished operation in /metrics.
fn record_metrics(op: &OperationRow, result: OpState, a: &pb::AgentOperation) {
    use imprint_service::metrics::{CaptureBytesLabels, KindLabels, OperationLabels};
    let m = imprint_service::metrics::daemon();
    let kind = op.kind.as_str();
    let result = result.as_str();
    m.operations
        .get_or_create(&OperationLabels { kind, result })
        .inc();
    let secs = unsigned(now() - op.created_unix);
    m.operation_seconds
        .get_or_create(&KindLabels { kind })
        .inc_by(secs);
    if let Some(c) = &a.capture {
        for (what, n) in [
            ("read", c.bytes_read),
            ("stored", c.bytes_stored),
            ("deduplicated", c.bytes_deduplicated),
            ("zero", c.zero_bytes_skipped),
        ] {
            m.capture_bytes
                .get_or_create(&CaptureBytesLabels { what })
                .inc_by(n);
        }
    }
    if let Some(d) = &a.deploy {
        m.deploy_bytes.inc_by(d.bytes_written);
    }
}
