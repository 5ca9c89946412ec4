//! The dispatcher's background duties (owned by [`crate::background`]):
//! liveness of other daemons, lease renewal, silent hosts, space
//! accounting and store reconciliation.

use super::*;

/// How often a daemon on a shared catalog looks for daemons that died.
const LIVENESS_EVERY: Duration = Duration::from_secs(1);

/// How often the stores are reconciled with the catalog.
const RECONCILE_EVERY: Duration = Duration::from_secs(600);

impl Dispatcher {
    /// On a shared catalog: hold this daemon's liveness lock, and take over
    /// at once the operations of daemons whose lock is free (they died);
    /// checked every [`LIVENESS_EVERY`]. Lost locks are taken again.
    pub(super) async fn watch_liveness(self: Arc<Self>) {
        let mut held = None;
        loop {
            let alive = match &mut held {
                Some(h) => crate::liveness::Held::alive(h).await,
                None => false,
            };
            if !alive {
                match self.catalog.hold_liveness(LEASE_RENEW_EVERY).await {
                    Ok(Some(h)) => held = Some(h),
                    // SQLite: one daemon, nothing to watch.
                    Ok(None) => return,
                    Err(e) => tracing::warn!(error = %e, "cannot take this daemon's liveness lock"),
                }
            }
            match self.catalog.dead_lease_owners().await {
                Ok(dead) => {
                    for owner in dead {
                        match self.catalog.claim_operations_of(&owner).await {
                            Ok(ops) if !ops.is_empty() => {
                                tracing::warn!(daemon = %owner, operations = ops.len(), "took over the operations of a daemon that died");
                                for op in ops {
                                    self.spawn_follower(op);
                                }
                                self.bump();
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(daemon = %owner, error = %e, "cannot take over a dead daemon's operations")
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "liveness check failed"),
            }
            tokio::time::sleep(LIVENESS_EVERY).await;
        }
    }

    /// Begin work: resume the operations a previous daemon left running,
    /// then start the background duties. Returns how many were resumed.
    pub async fn start(self: &Arc<Self>) -> Result<usize, DaemonError> {
        let resumed = self.resume_all().await?;
        if resumed > 0 {
            tracing::info!(resumed, "resumed running operations");
        }
        self.start_background();
        Ok(resumed)
    }

    /// Stop the background duties and wait for them (operations are rows:
    /// the next start resumes them).
    pub async fn stop(&self) {
        self.background.stop().await;
    }

    /// Background duties: fail operations of silent hosts, redo the space
    /// accounting when images came or went.
    pub(super) fn start_background(self: &Arc<Self>) {
        let bg = &self.background;
        // SQLite: one daemon, no other daemon's death to notice.
        if !self.catalog.is_sqlite() {
            bg.spawn("liveness", self.clone().watch_liveness());
        }
        let me = self.clone();
        bg.spawn("leases", async move {
            loop {
                tokio::time::sleep(LEASE_RENEW_EVERY).await;
                if let Err(e) = me.catalog.settle_locations().await {
                    tracing::warn!(error = %e, "cannot settle copy locations");
                }
                match me.lease_pass(false).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(operations = n, "took over operations whose daemon stopped");
                        me.bump();
                    }
                    Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
                }
            }
        });
        let me = self.clone();
        bg.spawn("silent hosts", async move {
            let every = Duration::from_secs(u64::from(HEARTBEAT_INTERVAL_SECONDS));
            // Agents need a few intervals to reach a daemon that was down:
            // judge silence only from then on.
            let started = now();
            loop {
                me.report_status().await;
                let silence = 3 * i64::from(HEARTBEAT_INTERVAL_SECONDS);
                let sweep = if now() - started < silence {
                    Ok(0)
                } else {
                    me.catalog
                        .fail_operations_of_silent_hosts(now() - silence)
                        .await
                };
                match sweep {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(operations = n, "failed the operations of silent hosts");
                        me.bump();
                    }
                    Err(e) => tracing::warn!(error = %e, "silent-host check failed"),
                }
                tokio::time::sleep(every).await;
            }
        });
        if self.store.is_some() {
            let me = self.clone();
            bg.spawn("usage and reconciliation", async move {
                let mut last_reconcile: Option<Instant> = None;
                loop {
                    me.refresh_usage().await;
                    if last_reconcile.is_none_or(|t| t.elapsed() >= RECONCILE_EVERY) {
                        me.reconcile_stores().await;
                        last_reconcile = Some(Instant::now());
                    }
                    // A change, or the next reconciliation, whichever is first.
                    let _ = tokio::time::timeout(RECONCILE_EVERY, me.usage_wanted.notified()).await;
                    // Several changes in a row make one pass.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
        }
    }

    /// `STATUS=` for systemd and gauges for /metrics: what runs now.
    pub(super) async fn report_status(&self) {
        let running = self.catalog.running_operations().await.map(|o| o.len());
        let hosts = self.catalog.hosts().await.map(|h| {
            let alive = h.iter().filter(|h| Self::alive(h)).count();
            (alive, h.len())
        });
        if let (Ok(running), Ok((alive, all))) = (running, hosts) {
            imprint_service::notify::status(&format!(
                "serving; {running} operation(s) running; {alive} of {all} host(s) alive"
            ));
            let m = imprint_service::metrics::daemon();
            m.operations_running.set(count(running));
            m.hosts_alive.set(count(alive));
            m.hosts.set(count(all));
        }
    }

    /// Recompute every image's referenced and exclusive bytes.
    pub async fn refresh_usage(&self) {
        // Every site's store: deleting an image frees its chunks at each
        // site that holds a copy.
        let Some(stores) = self.site_stores().await else {
            return;
        };
        let mut totals: HashMap<String, (i64, i64)> = HashMap::new();
        for (site, store) in stores {
            let r = tokio::task::spawn_blocking(move || imprint_store::usage::usage(&store)).await;
            match r {
                Ok(Ok(u)) => {
                    for (id, why) in &u.unreadable {
                        tracing::warn!(%site, image = %id, error = %why, "image unreadable in the store");
                    }
                    for i in &u.images {
                        let t = totals.entry(i.image_id.to_string()).or_default();
                        t.0 += signed(i.exclusive_bytes);
                        t.1 += signed(i.referenced_bytes);
                    }
                }
                Ok(Err(e)) => tracing::warn!(%site, error = %e, "space accounting failed"),
                Err(e) => tracing::warn!(%site, error = %e, "space accounting panicked"),
            }
        }
        let rows: Vec<(String, i64, i64)> = totals
            .into_iter()
            .map(|(id, (exclusive, referenced))| (id, exclusive, referenced))
            .collect();
        if let Err(e) = self.catalog.set_usage(&rows).await {
            tracing::warn!(error = %e, "cannot record space accounting");
        }
    }

    /// Delete manifests the catalog shows as failed or gone
    /// ([`crate::reconcile`]).
    pub async fn reconcile_stores(&self) {
        let Some(stores) = self.site_stores().await else {
            return;
        };
        if let Err(e) =
            crate::reconcile::reconcile(&self.catalog, stores, crate::reconcile::GRACE_SECONDS)
                .await
        {
            tracing::warn!(error = %e, "store reconciliation failed");
        }
    }

    /// Every site's store, each store once (two sites naming one store
    /// count once); `None` when the sites cannot be listed.
    pub(super) async fn site_stores(&self) -> Option<Vec<(String, Store)>> {
        let mut stores = Vec::new();
        match self.catalog.sites().await {
            Ok(sites) if !sites.is_empty() => {
                // A store named by two sites counts once.
                let mut seen: Vec<imprint_store::Location> = Vec::new();
                for s in sites {
                    match imprint_store::Location::parse(&s.store) {
                        Ok(l) if seen.iter().any(|o| o.same_store(&l)) => continue,
                        Ok(l) => seen.push(l),
                        Err(_) => {}
                    }
                    match self.site_store(&s.name).await {
                        Ok(st) => stores.push((s.name, st)),
                        Err(e) => {
                            tracing::warn!(site = %s.name, error = %e, "space accounting skips a site whose store cannot be opened")
                        }
                    }
                }
            }
            Ok(_) => stores.extend(self.store.clone().map(|s| ("default".to_string(), s))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the sites' stores");
                return None;
            }
        }
        Some(stores)
    }
}
