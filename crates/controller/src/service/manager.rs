//! The run manager: takes runs (from the API and the scheduler), keeps them from
//! sharing agents, runs each through the engine on a task of its own, persists
//! every event it emits (then broadcasts it, for live SSE), and stores the final
//! journal. It holds each run's [`Abort`] handle, which is how abort, halt and
//! shutdown stop runs.
//!
//! Two runs never use one agent at once: a run whose agents are busy is refused
//! ([`ConcurrencyPolicy::Refuse`], 409) or waits in a queue
//! ([`ConcurrencyPolicy::Queue`]); a queued run never overtakes an earlier one
//! that wants one of its agents. A schedule counts as a resource too, so a run a
//! schedule queues (`overlap: queue | replace`) waits for the schedule's previous
//! run whatever agents the two picked.
//!
//! Several replicas on one store: every run this manager creates is owned by its
//! replica with a run lease ([`HaSettings::run_lease`]), claimed when it starts
//! ([`RunStore::claim_run`]) and renewed by [`Manager::tick_leases`] while it is
//! in flight. A run the store no longer gives this replica (a survivor swept it
//! after a stall longer than the lease) is aborted here too, and an abort another
//! replica asked for is carried out at the next tick. A run of another replica is
//! aborted by leaving it a request ([`RunStore::request_abort`]); `halt` asks every
//! replica's runs to abort and halts every agent. Agent exclusivity (two runs never
//! on one agent) is per replica: runs submitted to different replicas are not
//! checked against each other.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use faultline_spec::located::SourceMap;
use faultline_spec::{Experiment, Report, Severity};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify, broadcast, mpsc};

use super::config::{AllowList, ConcurrencyPolicy, RunTuning};
use super::ha::HaSettings;
use super::metrics::Metrics;
use super::policy;
use crate::client::BoxFuture;
use crate::connect::{AgentHalt, ConnectError, Connector};
use crate::engine::{self, Abort, RunOptions};
use crate::journal::{self, Journal};
use crate::schedule::ScheduleFire;
use crate::store::{
    CreatedRun, MAX_LIMIT, NewAudit, NewRun, Run, RunEvent, RunFinish, RunOwner, RunQuery,
    RunStatus, RunStore, SlotBy, SlotFire, SlotFired, StoreError,
};

/// The file name diagnostics of experiments from the API carry.
pub const API_FILE: &str = "request.yaml";

/// How many live events a slow SSE client may fall behind before it re-reads the
/// store.
const LIVE_CAPACITY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The experiment does not validate (or its targets do not resolve).
    #[error("invalid experiment: {} error(s)", .0.error_count())]
    Invalid(Report),
    /// The experiment goes beyond the server's allow-list.
    #[error("not allowed by the server's allow-list: {} error(s)", .0.error_count())]
    NotAllowed(Report),
    #[error("{kind} `{id}` not found")]
    NotFound { kind: &'static str, id: String },
    /// A body names an experiment that does not exist.
    #[error("experiment `{0}` not found")]
    UnknownExperiment(String),
    #[error(
        "agent(s) {} busy with run(s) {}; the server refuses overlapping runs (concurrency: refuse)",
        .agents.join(", "), .runs.join(", ")
    )]
    Busy {
        agents: Vec<String>,
        runs: Vec<String>,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("the controller is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An experiment ready to run: parsed, validated, with where it came from.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub experiment: Experiment,
    pub yaml: String,
    /// `None` for inline YAML.
    pub experiment_id: Option<String>,
    /// The selection seed a client asked for (`faultline run --controller
    /// --seed`); `None`: a random one.
    pub seed: Option<u64>,
}

/// Who wants a run and how.
#[derive(Debug, Clone, Default)]
pub struct Submit {
    pub requested_by: String,
    pub idempotency_key: Option<String>,
    pub schedule_id: Option<String>,
    /// Queue behind busy agents whatever the policy (a schedule's queue/replace).
    pub queue: bool,
}

/// The answer to [`Manager::submit`].
#[derive(Debug, Clone)]
pub struct Submitted {
    pub run: Run,
    /// False: the idempotency key matched an earlier run, which is returned.
    pub created: bool,
}

/// What the live channel carries.
#[derive(Debug, Clone)]
pub enum Live {
    /// An event, after the store has it.
    Event(Arc<RunEvent>),
    /// The run's final status is in the store; no more events follow.
    Done(String),
}

/// What [`Manager::halt`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HaltOutcome {
    pub aborted: Vec<String>,
    pub agents: Vec<AgentHalt>,
}

struct Pending {
    run_id: String,
    experiment: Experiment,
    seed: u64,
    resources: Vec<String>,
    schedule_id: Option<String>,
    abort: Abort,
}

struct Active {
    resources: Vec<String>,
    schedule_id: Option<String>,
    abort: Abort,
}

#[derive(Default)]
struct State {
    running: HashMap<String, Active>,
    queue: VecDeque<Pending>,
    shutting_down: bool,
}

pub struct Manager {
    store: Arc<dyn RunStore>,
    connector: Arc<Connector>,
    policy: ConcurrencyPolicy,
    allow: AllowList,
    tuning: RunTuning,
    live: broadcast::Sender<Live>,
    state: Mutex<State>,
    idle: Notify,
    pub metrics: Metrics,
    ha: HaSettings,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("store", &self.store)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Manager {
    pub fn new(
        store: Arc<dyn RunStore>,
        connector: Arc<Connector>,
        policy: ConcurrencyPolicy,
        allow: AllowList,
        tuning: RunTuning,
    ) -> Arc<Self> {
        Self::with_ha(
            store,
            connector,
            policy,
            allow,
            tuning,
            HaSettings::default(),
        )
    }

    /// [`Manager::new`] for a replica with these settings.
    pub fn with_ha(
        store: Arc<dyn RunStore>,
        connector: Arc<Connector>,
        policy: ConcurrencyPolicy,
        allow: AllowList,
        tuning: RunTuning,
        ha: HaSettings,
    ) -> Arc<Self> {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Arc::new(Manager {
            store,
            connector,
            policy,
            allow,
            tuning,
            live,
            state: Mutex::new(State::default()),
            idle: Notify::new(),
            metrics: Metrics::default(),
            ha,
        })
    }

    /// This replica's settings (its id, its run lease).
    pub fn ha(&self) -> &HaSettings {
        &self.ha
    }

    fn owner(&self) -> RunOwner {
        RunOwner {
            replica: self.ha.replica_id.clone(),
            lease: self.ha.run_lease,
        }
    }

    /// True when this replica runs or queues the run (its events come live).
    pub async fn is_local(&self, id: &str) -> bool {
        let st = self.state.lock().await;
        st.running.contains_key(id) || st.queue.iter().any(|p| p.run_id == id)
    }

    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.store
    }

    /// How runs reach agents; `GET /v1/agents` asks each agent what it holds.
    pub fn connector(&self) -> &Arc<Connector> {
        &self.connector
    }

    /// Events of every run as they are stored, and the end of each run.
    pub fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.live.subscribe()
    }

    /// (running, queued) now.
    pub async fn counts(&self) -> (usize, usize) {
        let st = self.state.lock().await;
        (st.running.len(), st.queue.len())
    }

    /// Parses and validates YAML from the API.
    pub fn parse(yaml: &str) -> Result<Prepared, ManagerError> {
        let loaded = faultline_spec::load(API_FILE, yaml);
        match loaded.experiment {
            Some(experiment) => Ok(Prepared {
                experiment,
                yaml: yaml.to_owned(),
                experiment_id: None,
                seed: None,
            }),
            None => Err(ManagerError::Invalid(loaded.report)),
        }
    }

    /// A stored experiment, ready to run.
    pub async fn stored(&self, id: &str) -> Result<Prepared, ManagerError> {
        let Some(e) = self.store.get_experiment(id).await? else {
            return Err(ManagerError::UnknownExperiment(id.to_owned()));
        };
        let mut p = Self::parse(&e.yaml)?;
        p.experiment_id = Some(e.id);
        Ok(p)
    }

    /// Checks that the experiment's targets resolve and that it stays within the
    /// allow-list; answers the agents it uses.
    pub fn admit(&self, p: &Prepared, seed: u64) -> Result<Vec<String>, ManagerError> {
        let selections = match self.connector.resolve(&p.experiment, seed) {
            Ok(s) => s,
            Err(ConnectError::Unresolved(errors)) => {
                let map = SourceMap::parse(&p.yaml);
                let mut report = Report::new(API_FILE, p.yaml.as_str());
                for e in errors {
                    report.push(
                        Severity::Error,
                        map.locate(&e.path),
                        e.path.to_string(),
                        e.message,
                        None,
                    );
                }
                return Err(ManagerError::Invalid(report));
            }
            Err(e) => return Err(ManagerError::Conflict(e.to_string())),
        };
        let report = policy::check(API_FILE, &p.yaml, &p.experiment, &selections, &self.allow);
        if report.has_errors() {
            return Err(ManagerError::NotAllowed(report));
        }
        let mut agents: Vec<String> = Vec::new();
        for a in selections.values().flat_map(|s| s.agents.iter()) {
            if !agents.contains(a) {
                agents.push(a.clone());
            }
        }
        Ok(agents)
    }

    /// Creates a run and starts it, queues it, or refuses it (busy agents, policy
    /// `refuse`). With an idempotency key used before by the same requester, answers
    /// that run instead.
    pub async fn submit(
        self: &Arc<Self>,
        p: Prepared,
        req: Submit,
    ) -> Result<Submitted, ManagerError> {
        self.submit_with(p, req, None).await
    }

    /// [`Manager::submit`] for a schedule's fire: the slot is claimed, the run
    /// created and the fire recorded in one store transaction
    /// ([`RunStore::fire_slot`]); a slot another replica handled already is a
    /// [`ManagerError::Conflict`] and creates nothing.
    pub async fn submit_fire(
        self: &Arc<Self>,
        p: Prepared,
        req: Submit,
        fire: &ScheduleFire,
    ) -> Result<Submitted, ManagerError> {
        self.submit_with(p, req, Some(fire)).await
    }

    async fn submit_with(
        self: &Arc<Self>,
        p: Prepared,
        req: Submit,
        fire: Option<&ScheduleFire>,
    ) -> Result<Submitted, ManagerError> {
        let seed: u64 = p.seed.unwrap_or_else(rand::random);
        let agents = self.admit(&p, seed)?;
        let mut resources: Vec<String> = agents.iter().map(|a| format!("agent:{a}")).collect();
        if let Some(s) = &req.schedule_id {
            resources.push(format!("schedule:{s}"));
        }
        let new = NewRun {
            experiment_id: p.experiment_id.clone(),
            experiment_name: p.experiment.name.clone(),
            yaml: p.yaml.clone(),
            requested_by: req.requested_by.clone(),
            idempotency_key: req.idempotency_key.clone(),
            schedule_id: req.schedule_id.clone(),
        };
        let mut st = self.state.lock().await;
        if st.shutting_down {
            return Err(ManagerError::ShuttingDown);
        }
        let busy = busy_with(&st, &resources);
        // The scheduler already applied the schedule's overlap policy to its own
        // runs; one that is still releasing its agents is waited for, not a refusal.
        let own = req.schedule_id.is_some()
            && busy
                .iter()
                .all(|(_, _, sch)| sch.is_some() && *sch == req.schedule_id);
        if !busy.is_empty() && !req.queue && !own && self.policy == ConcurrencyPolicy::Refuse {
            // A retry of a request that was accepted is answered, not refused.
            if let Some(key) = &req.idempotency_key
                && let Some(run) = self.by_key(&req.requested_by, key).await?
            {
                drop(st);
                let replay = crate::store::idempotent_match(run, &new)?;
                return Ok(Submitted {
                    run: replay.run,
                    created: false,
                });
            }
            self.metrics.refused.inc();
            let mut agents: Vec<String> = Vec::new();
            let mut runs: Vec<String> = Vec::new();
            for (res, run, _) in busy {
                if let Some(a) = res.strip_prefix("agent:") {
                    agents.push(a.to_owned());
                }
                if !runs.contains(&run) {
                    runs.push(run);
                }
            }
            return Err(ManagerError::Busy { agents, runs });
        }
        let created = match fire {
            None => self.store.create_owned_run(&new, &self.owner()).await?,
            Some(f) => {
                let claim = SlotFire {
                    schedule_id: f.schedule_id.clone(),
                    slot: f.slot,
                    next_fire_at: f.next_fire_at,
                    action: f.action,
                    catch_up: f.catch_up,
                    missed: f.missed,
                    run: new.clone(),
                    owner: self.owner(),
                    by: SlotBy {
                        replica: self.ha.replica_id.clone(),
                        fence: f.fence.clone(),
                    },
                };
                match self.store.fire_slot(&claim).await? {
                    SlotFired::Fired { run, created } => CreatedRun { run: *run, created },
                    SlotFired::Taken => {
                        return Err(ManagerError::Conflict(format!(
                            "slot {} of schedule {} was handled already (by another replica)",
                            f.slot.to_rfc3339(),
                            f.schedule_id
                        )));
                    }
                    SlotFired::Fenced => {
                        return Err(ManagerError::Conflict(format!(
                            "replica {} no longer holds the scheduler lease at epoch {}; slot {} left to the leader",
                            self.ha.replica_id,
                            f.fence.as_ref().map_or(0, |x| x.epoch),
                            f.slot.to_rfc3339()
                        )));
                    }
                }
            }
        };
        if !created.created {
            return Ok(Submitted {
                run: created.run,
                created: false,
            });
        }
        let run_id = created.run.id.clone();
        self.audit(
            &req.requested_by,
            "run.start",
            &run_id,
            json!({
                "experiment": p.experiment.name,
                "experiment_id": p.experiment_id,
                "schedule_id": req.schedule_id,
                "idempotency_key": req.idempotency_key,
                "agents": agents,
                "seed": seed,
            }),
        )
        .await;
        st.queue.push_back(Pending {
            run_id: run_id.clone(),
            experiment: p.experiment,
            seed,
            resources,
            schedule_id: req.schedule_id,
            abort: Abort::new(),
        });
        self.pump(&mut st).await;
        drop(st);
        let run = self.store.get_run(&run_id).await?.unwrap_or(created.run);
        Ok(Submitted { run, created: true })
    }

    /// The run an idempotency key of a requester names, among recent runs.
    async fn by_key(&self, requested_by: &str, key: &str) -> Result<Option<Run>, StoreError> {
        let runs = self
            .store
            .list_runs(&RunQuery {
                limit: MAX_LIMIT,
                ..RunQuery::default()
            })
            .await?;
        Ok(runs
            .into_iter()
            .find(|r| r.requested_by == requested_by && r.idempotency_key.as_deref() == Some(key)))
    }

    /// Starts every queued run whose resources are free, in order.
    /// Boxed: a run's task calls it when it ends, and it spawns run tasks.
    fn pump<'a>(self: &'a Arc<Self>, st: &'a mut State) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut taken: HashSet<String> = st
                .running
                .values()
                .flat_map(|a| a.resources.iter().cloned())
                .collect();
            let mut i = 0;
            while i < st.queue.len() {
                let free = st.queue[i].resources.iter().all(|r| !taken.contains(r));
                taken.extend(st.queue[i].resources.iter().cloned());
                if !free {
                    i += 1;
                    continue;
                }
                let Some(p) = st.queue.remove(i) else { break };
                let claimed = match self.store.claim_run(&p.run_id, &self.owner()).await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err(format!(
                        "run {} is no longer queued for replica {}",
                        p.run_id, self.ha.replica_id
                    )),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = claimed {
                    tracing::error!(run = %p.run_id, error = %e, "cannot mark the run running");
                    let reason = format!("the controller could not start the run: {e}");
                    self.finish(
                        &p.run_id,
                        &RunFinish {
                            status: RunStatus::Error,
                            exit_code: None,
                            summary: json!({ "status": "error", "reason": reason }),
                            journal: None,
                            reason: Some(reason.to_string()),
                        },
                    )
                    .await;
                    continue;
                }
                st.running.insert(
                    p.run_id.clone(),
                    Active {
                        resources: p.resources.clone(),
                        schedule_id: p.schedule_id.clone(),
                        abort: p.abort.clone(),
                    },
                );
                self.metrics.runs_started.inc();
                tokio::spawn(Arc::clone(self).drive(p));
            }
            self.gauges(st);
        })
    }

    fn gauges(&self, st: &State) {
        self.metrics
            .runs_running
            .set(i64::try_from(st.running.len()).unwrap_or(i64::MAX));
        self.metrics
            .runs_queued
            .set(i64::try_from(st.queue.len()).unwrap_or(i64::MAX));
    }

    /// One run, start to end, on its own task.
    async fn drive(self: Arc<Self>, p: Pending) {
        let id = p.run_id.clone();
        tracing::info!(run = %id, experiment = %p.experiment.name, "run started");
        // One registry snapshot for the clients and the engine's selection.
        let finish = match self.connector.connect(&p.experiment, p.seed).await {
            Err(e) => {
                let status = match e {
                    ConnectError::Unresolved(_) | ConnectError::BadAgent { .. } => {
                        RunStatus::Invalid
                    }
                    ConnectError::Local(_) => RunStatus::Error,
                };
                let reason = e.to_string();
                self.append(&id, "error", &json!({ "event": "error", "reason": reason }))
                    .await;
                RunFinish {
                    status,
                    exit_code: (status == RunStatus::Invalid).then_some(2),
                    summary: json!({ "status": status.as_str(), "reason": reason }),
                    journal: None,
                    reason: Some(reason.to_string()),
                }
            }
            Ok((agents, inventory)) => {
                let mut opts = RunOptions::new(id.clone(), p.seed);
                opts.inventory = inventory;
                opts.abort = p.abort.clone();
                opts.bucket = self.tuning.bucket;
                opts.tick = self.tuning.tick;
                opts.observe_every = self.tuning.observe_every;
                let (tx, rx) = mpsc::unbounded_channel();
                opts.events = Some(tx);
                let forward = tokio::spawn(Arc::clone(&self).forward(id.clone(), rx));
                let journal = engine::run(&p.experiment, &agents, opts).await;
                if let Err(e) = forward.await {
                    tracing::warn!(run = %id, error = %e, "event forwarder ended abnormally");
                }
                finish_of(&journal)
            }
        };
        self.finish(&id, &finish).await;
        tracing::info!(run = %id, status = %finish.status, "run finished");
        let mut st = self.state.lock().await;
        st.running.remove(&id);
        self.pump(&mut st).await;
        if st.running.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Stores the final status; retried, because a run the store still calls
    /// `running` would be aborted (wrongly) only at the next restart.
    async fn finish(&self, id: &str, finish: &RunFinish) {
        let mut wait = Duration::from_millis(100);
        for attempt in 1..=5 {
            match self.store.finish_run(id, finish).await {
                Ok(_) => break,
                Err(StoreError::Conflict(reason)) => {
                    tracing::warn!(run = %id, %reason, "run already final");
                    break;
                }
                Err(e) => {
                    tracing::error!(run = %id, attempt, error = %e, "cannot store the run's end");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
        self.metrics.finished(finish.status.as_str());
        let _ = self.live.send(Live::Done(id.to_owned()));
    }

    /// Persists each event of a run, then broadcasts it.
    async fn forward(self: Arc<Self>, id: String, mut rx: mpsc::UnboundedReceiver<journal::Event>) {
        while let Some(event) = rx.recv().await {
            let data = match serde_json::to_value(&event) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(run = %id, error = %e, "unserialisable event dropped");
                    continue;
                }
            };
            let kind = data
                .get("event")
                .and_then(Value::as_str)
                .unwrap_or("event")
                .to_owned();
            self.append(&id, &kind, &data).await;
        }
    }

    async fn append(&self, id: &str, kind: &str, data: &Value) {
        match self.store.append_event(id, kind, data).await {
            Ok(seq) => {
                let _ = self.live.send(Live::Event(Arc::new(RunEvent {
                    run_id: id.to_owned(),
                    seq,
                    at: Utc::now(),
                    kind: kind.to_owned(),
                    data: data.clone(),
                })));
            }
            // The run goes on; its journal still has everything.
            Err(e) => tracing::warn!(run = %id, error = %e, "cannot store a run event"),
        }
    }

    /// Aborts a run: a running one reverts everything and ends `aborted`; a queued
    /// one ends `aborted` at once.
    pub async fn abort(&self, id: &str, actor: &str) -> Result<Run, ManagerError> {
        let reason = format!("aborted by {actor}");
        let mut st = self.state.lock().await;
        if let Some(a) = st.running.get(id) {
            a.abort.trigger(reason.clone());
            drop(st);
        } else if let Some(pos) = st.queue.iter().position(|p| p.run_id == id) {
            let p = st.queue.remove(pos);
            self.gauges(&st);
            drop(st);
            if let Some(p) = p {
                self.end_queued(&p.run_id, &reason).await;
            }
        } else {
            drop(st);
            // Another replica's run: leave its owner the request.
            if self.store.request_abort(id, &reason).await? {
                let owner = self.store.run_lease(id).await?.and_then(|l| l.owner);
                self.audit(
                    actor,
                    "run.abort",
                    id,
                    json!({ "reason": reason, "owner": owner, "via": self.ha.replica_id }),
                )
                .await;
                return self
                    .store
                    .get_run(id)
                    .await?
                    .ok_or_else(|| ManagerError::NotFound {
                        kind: "run",
                        id: id.to_owned(),
                    });
            }
            return match self.store.get_run(id).await? {
                None => Err(ManagerError::NotFound {
                    kind: "run",
                    id: id.to_owned(),
                }),
                Some(r) => Err(ManagerError::Conflict(format!(
                    "run {id} is {}; only a queued or running run can be aborted",
                    r.status
                ))),
            };
        }
        self.audit(actor, "run.abort", id, json!({ "reason": reason }))
            .await;
        self.store
            .get_run(id)
            .await?
            .ok_or_else(|| ManagerError::NotFound {
                kind: "run",
                id: id.to_owned(),
            })
    }

    async fn end_queued(&self, id: &str, reason: &str) {
        self.append(
            id,
            "aborting",
            &json!({ "event": "aborting", "reason": reason, "at_s": 0.0 }),
        )
        .await;
        self.finish(
            id,
            &RunFinish {
                status: RunStatus::Aborted,
                exit_code: Some(3),
                summary: json!({ "status": "aborted", "exit_code": 3, "reason": reason }),
                journal: None,
                reason: Some(reason.to_string()),
            },
        )
        .await;
    }

    /// Aborts the runs of a schedule that are in flight (`overlap: replace`).
    pub async fn abort_schedule(&self, schedule_id: &str, reason: &str) -> Vec<String> {
        let mut st = self.state.lock().await;
        let mut ids = Vec::new();
        for (id, a) in &st.running {
            if a.schedule_id.as_deref() == Some(schedule_id) {
                a.abort.trigger(reason.to_owned());
                ids.push(id.clone());
            }
        }
        let mut queued = Vec::new();
        st.queue.retain(|p| {
            let hit = p.schedule_id.as_deref() == Some(schedule_id);
            if hit {
                queued.push(p.run_id.clone());
            }
            !hit
        });
        self.gauges(&st);
        drop(st);
        for id in &queued {
            self.end_queued(id, reason).await;
        }
        ids.extend(queued);
        // Runs of the schedule another replica holds (a leader that lost the lease
        // while its run went on): their owners abort them at their next tick.
        let elsewhere = self
            .store
            .list_runs(&RunQuery {
                statuses: vec![RunStatus::Queued, RunStatus::Running],
                schedule_id: Some(schedule_id.to_owned()),
                limit: MAX_LIMIT,
                ..RunQuery::default()
            })
            .await;
        match elsewhere {
            Ok(runs) => {
                let remote: Vec<Run> = runs.into_iter().filter(|r| !ids.contains(&r.id)).collect();
                for r in remote {
                    match self.store.request_abort(&r.id, reason).await {
                        Ok(true) => ids.push(r.id),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(run = %r.id, error = %e, "cannot ask for the abort")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(schedule = %schedule_id, error = %e, "cannot list the schedule's runs")
            }
        }
        ids
    }

    /// Aborts every run and halts every agent.
    pub async fn halt(&self, actor: &str) -> HaltOutcome {
        self.metrics.halts.inc();
        let reason = format!("halted by {actor}");
        let mut aborted = self.abort_everything(&reason).await;
        // Other replicas' runs: their owners abort them at their next tick.
        match self
            .store
            .request_abort_all(&reason, &self.ha.replica_id)
            .await
        {
            Ok(ids) => aborted.extend(ids),
            Err(e) => {
                tracing::error!(error = %e, "halt: cannot ask the other replicas' runs to abort")
            }
        }
        aborted.sort();
        aborted.dedup();
        let agents = self.connector.halt_all().await;
        self.audit(
            actor,
            "halt",
            "*",
            json!({ "aborted": aborted, "agents": agents }),
        )
        .await;
        HaltOutcome { aborted, agents }
    }

    async fn abort_everything(&self, reason: &str) -> Vec<String> {
        let mut st = self.state.lock().await;
        let mut ids: Vec<String> = Vec::new();
        for (id, a) in &st.running {
            a.abort.trigger(reason.to_owned());
            ids.push(id.clone());
        }
        let queued: Vec<Pending> = st.queue.drain(..).collect();
        self.gauges(&st);
        drop(st);
        for p in queued {
            self.end_queued(&p.run_id, reason).await;
            ids.push(p.run_id);
        }
        ids.sort();
        ids
    }

    /// Refuses new runs, aborts every run and waits (at most `grace`) for them to
    /// revert and end.
    pub async fn shutdown(&self, grace: Duration) {
        self.state.lock().await.shutting_down = true;
        let aborted = self
            .abort_everything("the controller is shutting down")
            .await;
        if !aborted.is_empty() {
            tracing::info!(runs = ?aborted, "shutdown: aborting runs");
        }
        let wait = async {
            loop {
                let idle = self.idle.notified();
                if self.state.lock().await.running.is_empty() {
                    return;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(grace, wait).await.is_err() {
            tracing::error!(
                "shutdown: runs did not end in {grace:?}; their faults lapse with their leases"
            );
        }
        if let Some(report) = self.connector.halt_local().await {
            for f in &report.failed {
                tracing::error!(fault = %f.id, reason = %f.reason, "shutdown: could NOT revert");
            }
        }
    }

    /// One lease tick: renews the run lease of every run this replica has in flight,
    /// carries out aborts other replicas asked for, aborts what the store no longer
    /// gives this replica, and ends runs the store says this replica owns that it
    /// does not hold (left by an earlier process with the same id).
    pub async fn tick_leases(&self) -> Result<(), StoreError> {
        let mut st = self.state.lock().await;
        // Under the state lock: no run is created or dropped between the renewal and
        // the comparison with what this replica holds.
        let owned = self.store.renew_runs(&self.owner()).await?;
        let mut requested: Vec<(String, String)> = Vec::new();
        let mut orphans: Vec<String> = Vec::new();
        for o in &owned {
            let local = st.running.contains_key(&o.id) || st.queue.iter().any(|p| p.run_id == o.id);
            if !local {
                orphans.push(o.id.clone());
            } else if let Some(reason) = &o.abort_requested {
                requested.push((o.id.clone(), reason.clone()));
            }
        }
        let lost_reason = format!(
            "replica {} lost this run's lease (a survivor marked it aborted); reverting",
            self.ha.replica_id
        );
        for (id, a) in &st.running {
            if !owned.iter().any(|o| &o.id == id) {
                tracing::error!(run = %id, "run lease lost; aborting the run here");
                a.abort.trigger(lost_reason.clone());
            }
        }
        let mut ended: Vec<(String, String)> = Vec::new();
        st.queue.retain(|p| {
            if !owned.iter().any(|o| o.id == p.run_id) {
                tracing::error!(run = %p.run_id, "queued run's lease lost; dropped");
                return false;
            }
            if let Some((_, reason)) = requested.iter().find(|(id, _)| *id == p.run_id) {
                ended.push((p.run_id.clone(), reason.clone()));
                return false;
            }
            true
        });
        for (id, reason) in &requested {
            if let Some(a) = st.running.get(id) {
                tracing::info!(run = %id, %reason, "abort requested through the store");
                a.abort.trigger(reason.clone());
            }
        }
        self.gauges(&st);
        drop(st);
        for (id, reason) in ended {
            self.end_queued(&id, &reason).await;
        }
        for id in orphans {
            tracing::warn!(run = %id, "the store has a run of this replica it does not hold; marking it aborted");
            let reason = format!(
                "replica {} restarted while this run was in flight; its faults lapsed with their leases",
                self.ha.replica_id
            );
            self.finish(
                &id,
                &RunFinish {
                    status: RunStatus::Aborted,
                    exit_code: Some(3),
                    summary: json!({ "status": "aborted", "exit_code": 3, "reason": reason }),
                    journal: None,
                    reason: Some(reason.clone()),
                },
            )
            .await;
        }
        Ok(())
    }

    /// Records an audit entry; a failure is logged, not fatal to the action.
    pub async fn audit(&self, actor: &str, action: &str, target: &str, detail: Value) {
        let entry = NewAudit {
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
        };
        if let Err(e) = self.store.append_audit(&entry).await {
            tracing::error!(%actor, %action, %target, error = %e, "cannot write the audit log");
        }
    }
}

/// Resources of `want` in use: the resource, the run holding it, and that run's
/// schedule.
fn busy_with(st: &State, want: &[String]) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for (id, a) in &st.running {
        for r in &a.resources {
            if want.contains(r) {
                out.push((r.clone(), id.clone(), a.schedule_id.clone()));
            }
        }
    }
    for p in &st.queue {
        for r in &p.resources {
            if want.contains(r) {
                out.push((r.clone(), p.run_id.clone(), p.schedule_id.clone()));
            }
        }
    }
    out
}

/// The store's record of how a run ended, from its journal.
fn finish_of(j: &Journal) -> RunFinish {
    let status = RunStatus::from_exit_code(j.exit_code).unwrap_or(RunStatus::Error);
    let verdicts: Vec<Value> = j
        .verdicts
        .iter()
        .map(|v| {
            json!({
                "phase": v.phase,
                "kind": v.kind,
                "name": v.name,
                "holds": v.holds,
                "reason": v.reason,
            })
        })
        .collect();
    let summary = json!({
        "status": j.status.as_str(),
        "exit_code": j.exit_code,
        "reason": j.reason,
        "duration_s": j.duration_s,
        "verdicts": verdicts,
        "failed": j.failures().count(),
        "faults": j.faults.len(),
        "left_behind": j.left_behind,
    });
    RunFinish {
        status,
        exit_code: Some(j.exit_code),
        summary,
        journal: serde_json::to_value(j).ok(),
        reason: j.reason.clone(),
    }
}
