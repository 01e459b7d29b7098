//! The scheduler task: loads schedules from a [`RunStore`], sleeps until the earliest
//! next slot (or until told that schedules changed), decides each due schedule with
//! [`CompiledSchedule::decide`], calls the trigger for fires and records every handled
//! slot with [`RunStore::record_fired`].
//!
//! The trigger is called before the slot is recorded. A crash between the two fires
//! that slot again after the restart, with the same [`ScheduleFire::idempotency_key`]:
//! a trigger that creates its run with that key (requester
//! [`crate::store::SCHEDULER_ACTOR`]) gets
//! the first run back instead of a second one. The trigger should only create or
//! queue the run, not wait for it: fires of other schedules wait behind it.

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
    FireOutcome, FireRecord, MAX_LIMIT, RunQuery, RunStatus, RunStore, Schedule, StoreError,
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

/// The scheduler, before it runs.
pub struct Scheduler {
    store: Arc<dyn RunStore>,
    trigger: Trigger,
    announce: broadcast::Sender<FireRecorded>,
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
        }
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
        tracing::info!("scheduler started");
        let mut retry = RETRY_MIN;
        loop {
            if *stop.borrow() {
                break;
            }
            let wait = match self.pass(Utc::now()).await {
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
        tracing::info!("scheduler stopped");
    }

    /// Handles every schedule due at `now`; answers when the next one is due.
    async fn pass(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StoreError> {
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
                .handle(s, &compiled, now, active.contains(&s.id))
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
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let (due, outcome) = match compiled.decide(now, s.anchor(), running) {
            Decision::Wait { until } => return Ok(until),
            Decision::Skip { due, reason } => {
                tracing::info!(schedule = %s.id, slot = %due.slot, %reason, "scheduler: fire skipped");
                (due, FireOutcome::Skipped { reason })
            }
            Decision::Fire(due) => (due, self.fire(s, due, FireAction::Start).await),
            Decision::Queue(due) => (due, self.fire(s, due, FireAction::Queue).await),
            Decision::Replace(due) => (due, self.fire(s, due, FireAction::Replace).await),
        };
        let next = compiled.next_fire(due.slot.max(now));
        let record = FireRecord {
            slot: due.slot,
            outcome,
            next_fire_at: next,
        };
        match self.store.record_fired(&s.id, &record).await {
            Ok(_) => {}
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

    async fn fire(&self, s: &Schedule, due: Due, action: FireAction) -> FireOutcome {
        let fire = ScheduleFire {
            schedule_id: s.id.clone(),
            schedule_name: s.name.clone(),
            experiment_id: s.experiment_id.clone(),
            action,
            slot: due.slot,
            catch_up: due.catch_up,
            missed: due.missed,
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
