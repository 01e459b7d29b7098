//! The scheduler task: loads schedules from a [`RunStore`], sleeps until the earliest
//! next slot (or until told that schedules changed), decides each due schedule with
//! [`CompiledSchedule::decide`], calls the trigger for fires and records every handled
//! slot with [`RunStore::record_slot`].
//!
//! The trigger is called before the slot is recorded. A trigger that creates its
//! run with [`RunStore::fire_slot`] claims the slot, creates the run and records the
//! fire in one transaction, and [`RunStore::record_slot`] afterwards is a no-op; a
//! trigger that creates its run otherwise should use
//! [`ScheduleFire::idempotency_key`] (requester [`crate::store::SCHEDULER_ACTOR`]),
//! so a crash between the two gets the first run back after the restart instead of
//! a second one. The trigger should only create or queue the run, not wait for it:
//! fires of other schedules wait behind it.
//!
//! Several replicas on one store (`faultline serve` on PostgreSQL): with
//! [`Scheduler::with_leadership`] the task fires only while it holds the store's
//! [`SCHEDULER_LEASE`], taken or renewed every third of its length; a follower
//! tries as often, so a dead leader's slots are fired again at most `lease +
//! lease/3` after its last renewal ([`Leadership::handover`]). Slots inside that
//! window are not run one by one (the next leader fires the latest due slot, as
//! after any downtime). Leadership alone is not what makes a fire happen once: each
//! slot is a row unique per `(schedule_id, slot)`, written with the fire (and
//! fenced by the lease's epoch), so two tasks that both believe they lead still
//! handle a slot once.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;

use super::{CompiledSchedule, Decision, Due};
use crate::client::BoxFuture;
use crate::store::{
    Fence, FireOutcome, FireRecord, MAX_LIMIT, RunQuery, RunStatus, RunStore, SCHEDULER_LEASE,
    Schedule, SlotBy, StoreError,
};

/// The longest the task sleeps without looking at the wall clock again (it sleeps on
/// the monotonic clock; cron is wall time).
const MAX_SLEEP: std::time::Duration = std::time::Duration::from_secs(60);
/// Backoff while the store fails.
const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(500);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// What the triggered run should do about a run of the same schedule in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FireAction {
    /// Nothing is in flight: start a run.
    Start,
    /// Queue a run behind the one in flight (`overlap: queue`).
    Queue,
    /// Abort the run in flight, then start a new one (`overlap: replace`).
    Replace,
}

/// One fire handed to the trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleFire {
    pub schedule_id: String,
    pub schedule_name: String,
    pub experiment_id: String,
    pub action: FireAction,
    /// The cron occurrence this fire stands for.
    pub slot: DateTime<Utc>,
    /// A catch-up run for slots missed while the scheduler was down.
    pub catch_up: bool,
    /// Slots that were due and are not run one by one.
    pub missed: u32,
    /// The schedule's next slot after this one, for the fire's record.
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The leadership this fire was decided under (`None` without leadership): a
    /// store write fenced with it commits only while the lease is still held.
    pub fence: Option<Fence>,
    /// The replica whose scheduler fired.
    pub replica: String,
}

impl ScheduleFire {
    /// The idempotency key for the run this fire creates: one run per slot, whatever
    /// happens between triggering and recording.
    pub fn idempotency_key(&self) -> String {
        format!("schedule:{}:{}", self.schedule_id, self.slot.to_rfc3339())
    }
}

/// Why the trigger could not start a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TriggerError(pub String);

/// Starts (or queues) the run for a fire; answers its run id.
pub type Trigger =
    Arc<dyn Fn(ScheduleFire) -> BoxFuture<'static, Result<String, TriggerError>> + Send + Sync>;

/// A [`Trigger`] from an async closure.
pub fn trigger_fn<F, Fut>(f: F) -> Trigger
where
    F: Fn(ScheduleFire) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, TriggerError>> + Send + 'static,
{
    Arc::new(move |fire| Box::pin(f(fire)))
}

/// A slot the scheduler handled and recorded, as [`SchedulerHandle::subscribe`]
/// announces it (after the store has it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireRecorded {
    pub schedule_id: String,
    pub record: FireRecord,
}

/// How many announcements a slow subscriber may fall behind before it lags.
const ANNOUNCE_CAPACITY: usize = 256;

/// Fire only while holding the store's scheduler lease (several replicas on one
/// store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// This replica's id: the lease's holder.
    pub replica: String,
    /// How long a renewal keeps the lease.
    pub lease: std::time::Duration,
}

impl Leadership {
    /// How often the leader renews and a follower tries to take over.
    pub fn poll(&self) -> std::time::Duration {
        self.lease / 3
    }

    /// The longest a dead leader's schedules go unfired: its lease runs out, and a
    /// follower tries again within one poll.
    pub fn handover(&self) -> std::time::Duration {
        self.lease + self.poll()
    }
}

/// The replica id slots are recorded with when there is no leadership.
const LOCAL_REPLICA: &str = "local";

/// The scheduler, before it runs.
pub struct Scheduler {
    store: Arc<dyn RunStore>,
    trigger: Trigger,
    announce: broadcast::Sender<FireRecorded>,
    leadership: Option<Leadership>,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The running scheduler task.
#[derive(Debug)]
pub struct SchedulerHandle {
    changed: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    announce: broadcast::Sender<FireRecorded>,
}

impl SchedulerHandle {
    /// Schedules changed in the store (created, updated, deleted, enabled): reload them
    /// now rather than at the next slot already planned.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// A handle to wake the task from elsewhere (the HTTP API's schedule routes).
    pub fn notifier(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    /// Every slot handled from now on, once it is recorded: fired, skipped (and why)
    /// or failed.
    pub fn subscribe(&self) -> broadcast::Receiver<FireRecorded> {
        self.announce.subscribe()
    }

    /// Stops the task and waits for it. A fire in progress is finished and recorded.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "scheduler task ended abnormally");
        }
    }
}

impl Scheduler {
    pub fn new(store: Arc<dyn RunStore>, trigger: Trigger) -> Self {
        let (announce, _) = broadcast::channel(ANNOUNCE_CAPACITY);
        Scheduler {
            store,
            trigger,
            announce,
            leadership: None,
        }
    }

    /// Fires only while this replica holds the scheduler lease.
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = Some(leadership);
        self
    }

    fn replica(&self) -> &str {
        self.leadership
            .as_ref()
            .map_or(LOCAL_REPLICA, |l| l.replica.as_str())
    }

    /// Starts the task on the current tokio runtime.
    pub fn spawn(self) -> SchedulerHandle {
        let changed = Arc::new(Notify::new());
        let (stop, stop_rx) = watch::channel(false);
        let announce = self.announce.clone();
        let task = tokio::spawn(self.run(Arc::clone(&changed), stop_rx));
        SchedulerHandle {
            changed,
            stop,
            task,
            announce,
        }
    }

    async fn run(self, changed: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        tracing::info!(replica = self.replica(), "scheduler started");
        let mut retry = RETRY_MIN;
        // Under leadership: the fence while leading, valid until the instant its lease
        // may have run out (measured from before the renewal was sent).
        let mut leading: Option<(Fence, std::time::Instant)> = None;
        let mut renew_at = std::time::Instant::now();
        loop {
            if *stop.borrow() {
                break;
            }
            if let Some(l) = &self.leadership {
                if std::time::Instant::now() >= renew_at {
                    let asked = std::time::Instant::now();
                    leading = self.lead(l, leading.take(), asked).await;
                    renew_at = asked + l.poll();
                }
                if leading
                    .as_ref()
                    .is_some_and(|(_, until)| std::time::Instant::now() >= *until)
                {
                    tracing::warn!(replica = %l.replica, "scheduler: lease not renewed in time; not firing");
                    leading = None;
                }
            }
            let fence = leading.as_ref().map(|(f, _)| f.clone());
            let wait = if self.leadership.is_some() && fence.is_none() {
                Ok(None)
            } else {
                self.pass(Utc::now(), fence).await
            };
            let wait = match wait {
                Ok(next) => {
                    retry = RETRY_MIN;
                    next.map(|until| {
                        (until - Utc::now())
                            .to_std()
                            .unwrap_or_default()
                            // Timers may wake a hair early; a slot is due at its second.
                            .saturating_add(std::time::Duration::from_millis(1))
                            .min(MAX_SLEEP)
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "scheduler: store failed");
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    Some(wait)
                }
            };
            let wait = match &self.leadership {
                Some(_) => {
                    let renew = renew_at.saturating_duration_since(std::time::Instant::now());
                    Some(wait.map_or(renew, |w| w.min(renew)))
                }
                None => wait,
            };
            let sleep = async {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = changed.notified() => tracing::debug!("scheduler: schedules changed"),
                _ = stop.changed() => {}
            }
        }
        if let (Some(l), Some(_)) = (&self.leadership, leading) {
            // Hand over now rather than when the lease runs out.
            match self.store.release_lease(SCHEDULER_LEASE, &l.replica).await {
                Ok(_) => tracing::info!(replica = %l.replica, "scheduler: leadership released"),
                Err(e) => tracing::warn!(error = %e, "scheduler: cannot release the lease"),
            }
        }
        tracing::info!("scheduler stopped");
    }

    /// Takes or renews the lease; answers the fence while leading.
    async fn lead(
        &self,
        l: &Leadership,
        was: Option<(Fence, std::time::Instant)>,
        asked: std::time::Instant,
    ) -> Option<(Fence, std::time::Instant)> {
        match self
            .store
            .acquire_lease(SCHEDULER_LEASE, &l.replica, l.lease)
            .await
        {
            Ok(Some(grant)) => {
                if was.as_ref().is_none_or(|(f, _)| f.epoch != grant.epoch) {
                    tracing::info!(replica = %l.replica, epoch = grant.epoch, "scheduler: leading");
                }
                Some((
                    Fence {
                        name: SCHEDULER_LEASE.to_owned(),
                        holder: l.replica.clone(),
                        epoch: grant.epoch,
                    },
                    asked + l.lease,
                ))
            }
            Ok(None) => {
                if was.is_some() {
                    tracing::warn!(replica = %l.replica, "scheduler: another replica leads now");
                }
                None
            }
            Err(e) => {
                // Keep leading only as long as the last renewal holds.
                tracing::warn!(error = %e, "scheduler: cannot renew the lease");
                was
            }
        }
    }

    /// Handles every schedule due at `now`; answers when the next one is due.
    async fn pass(
        &self,
        now: DateTime<Utc>,
        fence: Option<Fence>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let schedules = self.store.list_schedules().await?;
        let active: HashSet<String> = self
            .store
            .list_runs(&RunQuery {
                statuses: vec![RunStatus::Queued, RunStatus::Running],
                limit: MAX_LIMIT,
                ..RunQuery::default()
            })
            .await?
            .into_iter()
            .filter_map(|r| r.schedule_id)
            .collect();
        let mut earliest: Option<DateTime<Utc>> = None;
        for s in schedules.iter().filter(|s| s.enabled) {
            let compiled = match s.spec.compile() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(schedule = %s.id, error = %e, "scheduler: schedule does not compile; skipped");
                    continue;
                }
            };
            let next = self
                .handle(s, &compiled, now, active.contains(&s.id), fence.as_ref())
                .await?;
            if let Some(next) = next {
                earliest = Some(earliest.map_or(next, |e| e.min(next)));
            }
        }
        Ok(earliest)
    }

    /// Decides one schedule; fires or skips and records it. Answers its next slot.
    async fn handle(
        &self,
        s: &Schedule,
        compiled: &CompiledSchedule,
        now: DateTime<Utc>,
        running: bool,
        fence: Option<&Fence>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let decision = compiled.decide(now, s.anchor(), running);
        let due = match &decision {
            Decision::Wait { until } => return Ok(*until),
            Decision::Skip { due, .. }
            | Decision::Fire(due)
            | Decision::Queue(due)
            | Decision::Replace(due) => *due,
        };
        let next = compiled.next_fire(due.slot.max(now));
        let outcome = match decision {
            Decision::Wait { .. } => return Ok(next),
            Decision::Skip { due, reason } => {
                tracing::info!(schedule = %s.id, slot = %due.slot, %reason, "scheduler: fire skipped");
                FireOutcome::Skipped { reason }
            }
            Decision::Fire(due) => self.fire(s, due, FireAction::Start, next, fence).await,
            Decision::Queue(due) => self.fire(s, due, FireAction::Queue, next, fence).await,
            Decision::Replace(due) => self.fire(s, due, FireAction::Replace, next, fence).await,
        };
        let record = FireRecord {
            slot: due.slot,
            outcome,
            next_fire_at: next,
        };
        let by = SlotBy {
            replica: self.replica().to_owned(),
            fence: fence.cloned(),
        };
        match self.store.record_slot(&s.id, &record, &by).await {
            // Claimed now, or by the trigger's own fire (in its transaction).
            Ok(claimed) if claimed || matches!(record.outcome, FireOutcome::Fired { .. }) => {}
            Ok(_) => {
                tracing::info!(schedule = %s.id, slot = %due.slot, "scheduler: slot already handled (by another replica)");
                return Ok(next);
            }
            // Deleted while it fired: nothing left to record it on.
            Err(StoreError::NotFound { .. }) => {
                tracing::info!(schedule = %s.id, slot = %due.slot, "scheduler: schedule deleted while firing");
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        // Nobody listening is fine.
        let _ = self.announce.send(FireRecorded {
            schedule_id: s.id.clone(),
            record,
        });
        Ok(next)
    }

    async fn fire(
        &self,
        s: &Schedule,
        due: Due,
        action: FireAction,
        next_fire_at: Option<DateTime<Utc>>,
        fence: Option<&Fence>,
    ) -> FireOutcome {
        let fire = ScheduleFire {
            schedule_id: s.id.clone(),
            schedule_name: s.name.clone(),
            experiment_id: s.experiment_id.clone(),
            action,
            slot: due.slot,
            catch_up: due.catch_up,
            missed: due.missed,
            next_fire_at,
            fence: fence.cloned(),
            replica: self.replica().to_owned(),
        };
        match (self.trigger)(fire).await {
            Ok(run_id) => {
                tracing::info!(schedule = %s.id, slot = %due.slot, run = %run_id, ?action, "scheduler: fired");
                FireOutcome::Fired {
                    run_id,
                    action,
                    catch_up: due.catch_up,
                    missed: due.missed,
                }
            }
            Err(e) => {
                tracing::warn!(schedule = %s.id, slot = %due.slot, error = %e, "scheduler: trigger failed");
                FireOutcome::Failed {
                    error: e.to_string(),
                }
            }
        }
    }
}
