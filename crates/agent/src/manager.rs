//! The fault manager: id -> active fault with its lease. Every change goes through
//! here, in this order: validate -> build (targets resolved) -> journal the intent
//! (fsync) -> inject -> journal active. Revert: journal `reverting` -> revert ->
//! verify from outside -> remove from the journal.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use faultline_faults::{Fault, InjectError, Observation, RevertError, registry, revert_and_verify};
use faultline_spec::FaultSpec;
use faultline_spec::units::Duration;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::journal::{Entry, EntryState, Journal, JournalError};
use crate::metrics::Metrics;

/// The body of `PUT /v1/faults/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    pub kind: String,
    #[serde(default = "empty_object")]
    pub params: serde_json::Value,
    pub lease: Duration,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// An active fault as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultView {
    pub id: String,
    pub kind: String,
    /// The parameters in canonical form (defaults filled in).
    pub params: serde_json::Value,
    pub lease: Duration,
    /// RFC 3339, UTC.
    pub expires_at: String,
    pub expires_in_ms: u64,
}

/// What `POST /v1/halt` reverted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HaltReport {
    pub reverted: Vec<String>,
    pub failed: Vec<Failure>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub id: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("invalid fault id {0:?}: use 1-128 of A-Z a-z 0-9 . _ -, not starting with `.`")]
    BadId(String),
    #[error("unknown fault kind {0:?}; known kinds: {known}", known = FaultSpec::KINDS.join(", "))]
    UnknownKind(String),
    #[error("invalid parameters for {kind}: {reason}")]
    BadParams { kind: String, reason: String },
    #[error("fault {0:?} exists with a different body; DELETE it first or use another id")]
    Conflict(String),
    #[error("no active fault {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error(transparent)]
    Revert(#[from] RevertError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

#[derive(Debug)]
struct Active {
    spec: FaultSpec,
    lease: Duration,
    expires: Instant,
    expires_wall: SystemTime,
    fault: Box<dyn Fault>,
    entry: Entry,
}

impl Active {
    fn view(&self, id: &str) -> FaultView {
        FaultView {
            id: id.to_owned(),
            kind: self.spec.kind().to_owned(),
            params: self.entry.params.clone(),
            lease: self.lease,
            expires_at: humantime::format_rfc3339_millis(self.expires_wall).to_string(),
            expires_in_ms: self
                .expires
                .saturating_duration_since(Instant::now())
                .as_millis() as u64,
        }
    }

    fn renew(&mut self, lease: Duration) {
        self.lease = lease;
        self.expires = Instant::now() + lease.get();
        self.expires_wall = SystemTime::now() + lease.get();
    }
}

/// What the agent knows about itself, for `/v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub version: String,
    pub labels: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    pub active: usize,
}

#[derive(Debug)]
pub struct Manager {
    faults: Mutex<HashMap<String, Active>>,
    journal: Journal,
    pub metrics: Metrics,
    labels: BTreeMap<String, String>,
}

/// `now + lease` as RFC 3339, UTC, to the millisecond.
fn expiry_stamp(lease: Duration) -> String {
    humantime::format_rfc3339_millis(SystemTime::now() + lease.get()).to_string()
}

pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Parses and checks a request, touching nothing.
pub fn parse_request(req: &FaultRequest) -> Result<FaultSpec, ManagerError> {
    if !FaultSpec::KINDS.contains(&req.kind.as_str()) {
        return Err(ManagerError::UnknownKind(req.kind.clone()));
    }
    let spec = FaultSpec::from_kind_and_params(&req.kind, req.params.clone()).map_err(|e| {
        ManagerError::BadParams {
            kind: req.kind.clone(),
            reason: e.to_string(),
        }
    })?;
    if req.lease.is_zero() {
        return Err(ManagerError::BadParams {
            kind: req.kind.clone(),
            reason: "lease must be positive".into(),
        });
    }
    Ok(spec)
}

impl Manager {
    /// Opens the journal under `state_dir`. Call [`Manager::recover`] before serving.
    pub fn open(
        state_dir: &std::path::Path,
        labels: BTreeMap<String, String>,
    ) -> Result<Arc<Self>, JournalError> {
        Ok(Arc::new(Self {
            faults: Mutex::new(HashMap::new()),
            journal: Journal::open(state_dir)?,
            metrics: Metrics::default(),
            labels,
        }))
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Reverts everything the journal holds (what a crashed agent left behind).
    /// Entries whose revert fails stay journaled and are reported.
    pub async fn recover(&self) -> Result<HaltReport, JournalError> {
        let crate::journal::Loaded {
            entries,
            unreadable: bad,
        } = self.journal.load()?;
        let mut report = HaltReport::default();
        for (path, reason) in bad {
            tracing::error!(path = %path.display(), %reason, "unreadable journal entry kept; check the host by hand");
            report.failed.push(Failure {
                id: path.display().to_string(),
                reason,
            });
        }
        for entry in entries {
            let result = async {
                let spec = FaultSpec::from_kind_and_params(&entry.kind, entry.params.clone())
                    .map_err(|e| e.to_string())?;
                let mut fault =
                    registry::restore(&entry.id, &spec, entry.lease.get(), &entry.recovery)
                        .map_err(|e| e.to_string())?;
                revert_and_verify(fault.as_mut())
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            match result {
                Ok(()) => {
                    self.journal.remove(&entry.id)?;
                    tracing::warn!(id = %entry.id, kind = %entry.kind, state = ?entry.state, "reverted a fault left by a previous run");
                    self.metrics.reverts.inc();
                    report.reverted.push(entry.id);
                }
                Err(reason) => {
                    tracing::error!(id = %entry.id, %reason, "could not revert a journaled fault");
                    self.metrics.failures.inc();
                    report.failed.push(Failure {
                        id: entry.id,
                        reason,
                    });
                }
            }
        }
        self.journal.sync_dir()?;
        Ok(report)
    }

    /// How many faults are active now (what a heartbeat reports).
    pub async fn active_count(&self) -> u64 {
        u64::try_from(self.faults.lock().await.len()).unwrap_or(u64::MAX)
    }

    pub async fn health(&self) -> Health {
        Health {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            labels: self.labels.clone(),
            capabilities: registry::capabilities()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            active: self.faults.lock().await.len(),
        }
    }

    /// Injects fault `id`, or, for the same id and the same body, renews its lease
    /// and returns it (`created` false).
    pub async fn put(
        &self,
        id: &str,
        req: &FaultRequest,
    ) -> Result<(FaultView, bool), ManagerError> {
        if !valid_id(id) {
            return Err(ManagerError::BadId(id.to_owned()));
        }
        let spec = parse_request(req)?;
        let mut faults = self.faults.lock().await;
        if let Some(active) = faults.get_mut(id) {
            if active.spec == spec {
                active.renew(req.lease);
                return Ok((active.view(id), false));
            }
            return Err(ManagerError::Conflict(id.to_owned()));
        }
        let mut fault = registry::build(id, &spec, req.lease.get())?;
        let mut entry = Entry {
            id: id.to_owned(),
            kind: req.kind.clone(),
            params: serde_json::to_value(&spec)
                .ok()
                .and_then(|v| v.get(spec.kind()).cloned())
                .unwrap_or_else(|| req.params.clone()),
            lease: req.lease,
            state: EntryState::Intent,
            recovery: fault.recovery(),
            expires_at: Some(expiry_stamp(req.lease)),
        };
        self.journal.write(&entry, true)?;
        fail::fail_point!("journaled-not-injected");
        if let Err(e) = fault.inject().await {
            self.metrics.failures.inc();
            // Leave nothing half-done: revert whatever part took, then forget it.
            match revert_and_verify(fault.as_mut()).await {
                Ok(()) => self.journal.remove(id)?,
                Err(r) => {
                    tracing::error!(%id, error = %r, "revert after a failed inject failed; kept in the journal")
                }
            }
            return Err(e.into());
        }
        fail::fail_point!("injected-not-journaled-active");
        entry.state = EntryState::Active;
        entry.expires_at = Some(expiry_stamp(req.lease));
        self.journal.write(&entry, true)?;
        self.metrics.injects.inc();
        let mut active = Active {
            spec,
            lease: req.lease,
            expires: Instant::now(),
            expires_wall: SystemTime::now(),
            fault,
            entry,
        };
        active.renew(req.lease);
        let view = active.view(id);
        faults.insert(id.to_owned(), active);
        self.metrics.active.set(faults.len() as i64);
        tracing::info!(%id, kind = %view.kind, lease = %req.lease, "fault injected");
        Ok((view, true))
    }

    /// Extends the lease of fault `id` by `lease` (default: its own) from now.
    pub async fn renew(
        &self,
        id: &str,
        lease: Option<Duration>,
    ) -> Result<FaultView, ManagerError> {
        let mut faults = self.faults.lock().await;
        let active = faults
            .get_mut(id)
            .ok_or_else(|| ManagerError::NotFound(id.to_owned()))?;
        let lease = lease.unwrap_or(active.lease);
        if lease.is_zero() {
            return Err(ManagerError::BadParams {
                kind: active.spec.kind().to_owned(),
                reason: "lease must be positive".into(),
            });
        }
        // A fault that stamps its own expiry (the CUDA interposer's state file)
        // must see the new lease too, or it lapses at the old one.
        if let Err(e) = active.fault.renew(lease.get()).await {
            return Err(ManagerError::Inject(e));
        }
        active.renew(lease);
        // Informational (what `faultline status` shows once nobody guards the
        // fault): a lost write costs a stale expiry, not safety, so no fsync.
        active.entry.expires_at = Some(expiry_stamp(lease));
        if let Err(e) = self.journal.write(&active.entry, false) {
            tracing::warn!(%id, error = %e, "cannot journal a renewed lease's expiry");
        }
        Ok(active.view(id))
    }

    pub async fn list(&self) -> Vec<FaultView> {
        let faults = self.faults.lock().await;
        let mut v: Vec<FaultView> = faults.iter().map(|(id, a)| a.view(id)).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Fault `id` as listed, with what it looks like from outside now.
    pub async fn status(&self, id: &str) -> Option<(FaultView, Observation)> {
        let faults = self.faults.lock().await;
        let a = faults.get(id)?;
        Some((a.view(id), a.fault.observe().await))
    }

    /// What fault `id` looks like from outside now.
    pub async fn observe(&self, id: &str) -> Option<Observation> {
        let faults = self.faults.lock().await;
        match faults.get(id) {
            Some(a) => Some(a.fault.observe().await),
            None => None,
        }
    }

    /// Reverts fault `id`; `Ok(false)` when there was none (DELETE is idempotent).
    pub async fn delete(&self, id: &str) -> Result<bool, ManagerError> {
        let mut faults = self.faults.lock().await;
        let Some(active) = faults.remove(id) else {
            return Ok(false);
        };
        let result = self.revert_one(id.to_owned(), active).await;
        self.journal.sync_dir()?;
        let outcome = match result {
            Ok(()) => Ok(true),
            Err((active, e)) => {
                faults.insert(id.to_owned(), *active);
                Err(e)
            }
        };
        self.metrics.active.set(faults.len() as i64);
        outcome
    }

    async fn revert_one(
        &self,
        id: String,
        mut active: Active,
    ) -> Result<(), (Box<Active>, ManagerError)> {
        active.entry.state = EntryState::Reverting;
        // Informational (recovery reverts every state alike): no fsync needed.
        if let Err(e) = self.journal.write(&active.entry, false) {
            return Err((Box::new(active), e.into()));
        }
        fail::fail_point!("mid-revert");
        match revert_and_verify(active.fault.as_mut()).await {
            Ok(()) => {
                if let Err(e) = self.journal.remove(&id) {
                    return Err((Box::new(active), e.into()));
                }
                self.metrics.reverts.inc();
                tracing::info!(%id, kind = active.spec.kind(), "fault reverted");
                Ok(())
            }
            Err(e) => {
                self.metrics.failures.inc();
                tracing::error!(%id, error = %e, "revert failed; will retry");
                Err((Box::new(active), e.into()))
            }
        }
    }

    /// Reverts every active fault, concurrently; failed ones stay active (and
    /// journaled) so that a later halt or the reaper retries them.
    pub async fn halt(&self) -> HaltReport {
        let mut faults = self.faults.lock().await;
        let report = self.revert_many(&mut faults, |_| true).await;
        self.metrics.active.set(faults.len() as i64);
        report
    }

    /// Reverts the faults whose lease lapsed. Called by the reaper.
    pub async fn reap(&self) -> HaltReport {
        let mut faults = self.faults.lock().await;
        let now = Instant::now();
        let report = self.revert_many(&mut faults, |a| a.expires <= now).await;
        for id in &report.reverted {
            tracing::warn!(%id, "lease lapsed: fault reverted");
            self.metrics.lease_lapses.inc();
        }
        self.metrics.active.set(faults.len() as i64);
        report
    }

    async fn revert_many(
        &self,
        faults: &mut HashMap<String, Active>,
        pick: impl Fn(&Active) -> bool,
    ) -> HaltReport {
        let ids: Vec<String> = faults
            .iter()
            .filter(|(_, a)| pick(a))
            .map(|(id, _)| id.clone())
            .collect();
        let mut report = HaltReport::default();
        if ids.is_empty() {
            return report;
        }
        let reverts = ids.into_iter().filter_map(|id| {
            let active = faults.remove(&id)?;
            Some(async move { (id.clone(), self.revert_one(id, active).await) })
        });
        for (id, result) in join_all(reverts).await {
            match result {
                Ok(()) => report.reverted.push(id),
                Err((active, e)) => {
                    report.failed.push(Failure {
                        id: id.clone(),
                        reason: e.to_string(),
                    });
                    faults.insert(id, *active);
                }
            }
        }
        if let Err(e) = self.journal.sync_dir() {
            tracing::error!(error = %e, "cannot sync the journal directory");
        }
        report.reverted.sort();
        report
    }
}

/// Runs futures concurrently on this task (no spawn: they borrow the manager).
pub(crate) async fn join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Reverts lapsed leases every 200 ms, so a lapse is reverted well within a second.
pub fn spawn_reaper(manager: &Arc<Manager>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(manager);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(manager) = weak.upgrade() else {
                return;
            };
            manager.reap().await;
        }
    })
}
