//! The run store: experiments, runs, their event streams, schedules and the audit log
//! that `faultline serve` keeps. One [`RunStore`] trait, two backends chosen by URL:
//!
//! - `sqlite:///abs/path/runs.db`: [`SqliteStore`], bundled SQLite in WAL mode; the
//!   blocking calls run on tokio's blocking pool, one connection behind a mutex.
//! - `postgres://user:pass@host:port/db` (or `postgresql://`): [`PostgresStore`],
//!   tokio-postgres with a small connection pool of its own.
//!
//! Both migrate their schema when opened (a `faultline_migrations` table of applied
//! versions; each migration and its row in one transaction; opening twice, or from two
//! processes at once, applies each migration once), and every operation that writes
//! more than one row does it in one transaction, so a crash never leaves a run
//! half-written. Timestamps are UTC with microsecond precision on both (`timestamptz`
//! on PostgreSQL, fixed-width RFC 3339 text on SQLite, which sorts as time); JSON
//! columns are `jsonb` on PostgreSQL and text on SQLite.
//!
//! Runs are the unit a restart must not lose track of: [`RunStore::abort_in_flight`]
//! is what the controller calls on start, so no run stays `queued` or `running` after
//! the process that owned it is gone.

mod postgres;
mod sqlite;
// === replicas (HA) ===
mod ha;
pub use ha::{
    Fence, LeaseGrant, OwnedRun, Replica, RunLease, RunOwner, SCHEDULER_LEASE, SlotBy, SlotFire,
    SlotFired, SweptRun, swept_reason,
};
// === end replicas (HA) ===

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::client::BoxFuture;
use crate::schedule::{ScheduleError, ScheduleSpec, SkipReason};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no backend this build knows. Only the scheme is echoed: URLs
    /// carry passwords.
    #[error(
        "unsupported store URL (scheme `{scheme}`): expected sqlite:///absolute/path/runs.db or postgres://user:password@host:port/database"
    )]
    BadUrl { scheme: String },
    #[error("{kind} `{id}` not found")]
    NotFound { kind: &'static str, id: String },
    /// The operation does not apply to the record's current state.
    #[error("{0}")]
    Conflict(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(
        "the store's schema is at version {found}, newer than this faultline knows ({known}): upgrade faultline"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A stored value this code cannot read back (a hand-edited row, a bad enum).
    #[error("stored data unreadable: {0}")]
    Corrupt(String),
    /// The blocking task that ran a SQLite call panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
}

impl From<ScheduleError> for StoreError {
    fn from(e: ScheduleError) -> Self {
        StoreError::Invalid {
            field: "schedule",
            reason: e.to_string(),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Opens (and migrates) the store a URL names.
pub async fn open(url: &str) -> Result<Arc<dyn RunStore>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if !path.starts_with('/') {
            return Err(StoreError::Invalid {
                field: "store URL",
                reason: "a sqlite URL needs an absolute path: sqlite:///abs/path/runs.db"
                    .to_owned(),
            });
        }
        return Ok(Arc::new(SqliteStore::open(path).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::open(url).await?));
    }
    let scheme = url.split_once(':').map_or("", |(s, _)| s).to_owned();
    Err(StoreError::BadUrl { scheme })
}

// === records ===

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Experiment {
    pub id: String,
    pub name: String,
    pub yaml: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewExperiment {
    pub name: String,
    pub yaml: String,
    pub created_by: String,
}

/// Where a run is. `queued` and `running` are in flight; the rest are final, and the
/// ones a run ends in match the `run` exit codes (see [`RunStatus::from_exit_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    /// Exit 0: every hypothesis held.
    Passed,
    /// Exit 1: a hypothesis failed.
    Failed,
    /// Exit 3: a safety stop, a signal, a lost agent, or a controller restart.
    Aborted,
    /// Exit 4: a revert could not be confirmed.
    RevertUnconfirmed,
    /// Exit 2: invalid input, nothing injected.
    Invalid,
    /// The controller failed to run it at all.
    Error,
}

impl RunStatus {
    pub const ALL: [RunStatus; 8] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Passed,
        RunStatus::Failed,
        RunStatus::Aborted,
        RunStatus::RevertUnconfirmed,
        RunStatus::Invalid,
        RunStatus::Error,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Passed => "passed",
            RunStatus::Failed => "failed",
            RunStatus::Aborted => "aborted",
            RunStatus::RevertUnconfirmed => "revert_unconfirmed",
            RunStatus::Invalid => "invalid",
            RunStatus::Error => "error",
        }
    }
    /// Queued or running.
    pub fn in_flight(self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::Running)
    }
    /// The final status a `run` exit code stands for.
    pub fn from_exit_code(code: i32) -> Option<RunStatus> {
        Some(match code {
            0 => RunStatus::Passed,
            1 => RunStatus::Failed,
            2 => RunStatus::Invalid,
            3 => RunStatus::Aborted,
            4 => RunStatus::RevertUnconfirmed,
            _ => return None,
        })
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RunStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown run status `{s}`: expected one of {}",
                    all.join(", ")
                )
            })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    /// `None` for a run of inline YAML.
    pub experiment_id: Option<String>,
    pub experiment_name: String,
    pub yaml: String,
    pub status: RunStatus,
    pub exit_code: Option<i32>,
    /// The verdict summary; `{}` until the run finishes.
    pub summary: Value,
    /// The run's journal; `None` until it finishes.
    pub journal: Option<Value>,
    /// Why the run ended as it did, when the store decided it (a controller restart).
    pub reason: Option<String>,
    pub requested_by: String,
    pub idempotency_key: Option<String>,
    pub schedule_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRun {
    pub experiment_id: Option<String>,
    pub experiment_name: String,
    pub yaml: String,
    pub requested_by: String,
    /// Unique per requester: a second request with the same key gets the first run.
    pub idempotency_key: Option<String>,
    pub schedule_id: Option<String>,
}

/// The answer to [`RunStore::create_run`].
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedRun {
    pub run: Run,
    /// False when the idempotency key matched an existing run, which is returned.
    pub created: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFinish {
    /// A final status (not queued or running).
    pub status: RunStatus,
    pub exit_code: Option<i32>,
    pub summary: Value,
    pub journal: Option<Value>,
    /// Why it did not pass (the journal's reason); `None` when it passed.
    pub reason: Option<String>,
}

/// Which runs [`RunStore::list_runs`] returns, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunQuery {
    /// Any of these; empty: any status.
    pub statuses: Vec<RunStatus>,
    pub experiment_id: Option<String>,
    pub schedule_id: Option<String>,
    /// At most this many (1..=[`MAX_LIMIT`]).
    pub limit: u32,
}

impl Default for RunQuery {
    fn default() -> Self {
        RunQuery {
            statuses: Vec::new(),
            experiment_id: None,
            schedule_id: None,
            limit: 50,
        }
    }
}

/// The most rows one list call returns.
pub const MAX_LIMIT: u32 = 10_000;

/// One entry of a run's event stream; `seq` counts from 1 per run, without gaps, and
/// is what an SSE client sends back as `Last-Event-ID`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    pub run_id: String,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub data: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: String,
    pub name: String,
    pub experiment_id: String,
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    pub enabled: bool,
    /// The last slot handled (fired or skipped).
    pub last_fired_at: Option<DateTime<Utc>>,
    /// The next slot, as computed when the schedule last changed or fired.
    pub next_fire_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Schedule {
    /// Slots at or before this are never due: the last one handled, or when the
    /// schedule was created or last changed (a change does not catch up on the past).
    pub fn anchor(&self) -> DateTime<Utc> {
        self.last_fired_at
            .map_or(self.updated_at, |l| l.max(self.updated_at))
    }
}

/// A schedule as created, or as replaced by [`RunStore::update_schedule`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleDef {
    pub name: String,
    pub experiment_id: String,
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    pub enabled: bool,
}

/// What happened at a slot, as [`RunStore::record_fired`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FireOutcome {
    /// A run was started, queued, or replaced the one in flight.
    Fired {
        run_id: String,
        action: crate::schedule::FireAction,
        catch_up: bool,
        missed: u32,
    },
    Skipped {
        reason: SkipReason,
    },
    /// The trigger failed; the slot still counts as handled.
    Failed {
        error: String,
    },
}

impl FireOutcome {
    /// The audit log action this outcome is recorded as.
    pub fn audit_action(&self) -> &'static str {
        match self {
            FireOutcome::Fired { .. } => "schedule.fire",
            FireOutcome::Skipped { .. } => "schedule.skip",
            FireOutcome::Failed { .. } => "schedule.error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireRecord {
    pub slot: DateTime<Utc>,
    pub outcome: FireOutcome,
    pub next_fire_at: Option<DateTime<Utc>>,
}

/// The actor the scheduler's audit entries name.
pub const SCHEDULER_ACTOR: &str = "scheduler";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    /// The id of what was acted on (`run_...`, `sch_...`, `exp_...`).
    pub target: String,
    pub detail: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAudit {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    pub target: Option<String>,
    pub actor: Option<String>,
    pub limit: u32,
}

impl Default for AuditQuery {
    fn default() -> Self {
        AuditQuery {
            target: None,
            actor: None,
            limit: 100,
        }
    }
}

// === the trait ===

/// The controller's persistent state. Object-safe (`Arc<dyn RunStore>`), with boxed
/// futures like [`crate::client::AgentClient`]: no macro crate, and the lifetimes are
/// written out where a caller can read them.
pub trait RunStore: Send + Sync + fmt::Debug {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// The schema version the store is at (the highest applied migration).
    fn schema_version(&self) -> BoxFuture<'_, Result<i64>>;

    fn create_experiment<'a>(&'a self, new: &'a NewExperiment)
    -> BoxFuture<'a, Result<Experiment>>;
    fn get_experiment<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Experiment>>>;
    /// Newest first.
    fn list_experiments(&self, limit: u32) -> BoxFuture<'_, Result<Vec<Experiment>>>;

    /// A new `queued` run, or, when `idempotency_key` was used before by the same
    /// requester, that run (`created: false`); [`StoreError::Conflict`] if the key
    /// was used for a different experiment or YAML.
    fn create_run<'a>(&'a self, new: &'a NewRun) -> BoxFuture<'a, Result<CreatedRun>>;
    fn get_run<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Run>>>;
    /// Newest first.
    fn list_runs<'a>(&'a self, query: &'a RunQuery) -> BoxFuture<'a, Result<Vec<Run>>>;
    /// `queued` -> `running`, stamping `started_at`.
    fn mark_running<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Run>>;
    /// `queued`/`running` -> a final status, stamping `finished_at`.
    fn finish_run<'a>(&'a self, id: &'a str, finish: &'a RunFinish) -> BoxFuture<'a, Result<Run>>;
    /// Every run still queued or running becomes `aborted` with `reason`, and gets an
    /// `aborted` event; returns their ids. Called when the controller starts.
    fn abort_in_flight<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, Result<Vec<String>>>;

    /// Appends to a run's event stream; returns the event's `seq`.
    fn append_event<'a>(
        &'a self,
        run_id: &'a str,
        kind: &'a str,
        data: &'a Value,
    ) -> BoxFuture<'a, Result<i64>>;
    /// Events with `seq > after`, in order (`after = 0`: all of them).
    fn events_after<'a>(
        &'a self,
        run_id: &'a str,
        after: i64,
    ) -> BoxFuture<'a, Result<Vec<RunEvent>>>;

    /// Validates the spec ([`StoreError::Invalid`]) and computes `next_fire_at`.
    fn create_schedule<'a>(
        &'a self,
        def: &'a ScheduleDef,
        created_by: &'a str,
    ) -> BoxFuture<'a, Result<Schedule>>;
    fn get_schedule<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Schedule>>>;
    /// All schedules, by name.
    fn list_schedules(&self) -> BoxFuture<'_, Result<Vec<Schedule>>>;
    /// Replaces a schedule's definition; keeps `last_fired_at`, recomputes
    /// `next_fire_at`, stamps `updated_at`.
    fn update_schedule<'a>(
        &'a self,
        id: &'a str,
        def: &'a ScheduleDef,
    ) -> BoxFuture<'a, Result<Schedule>>;
    /// False when there was none.
    fn delete_schedule<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// Records a handled slot: `last_fired_at` (never moves back), `next_fire_at`, and
    /// an audit entry by [`SCHEDULER_ACTOR`], in one transaction.
    fn record_fired<'a>(
        &'a self,
        id: &'a str,
        fire: &'a FireRecord,
    ) -> BoxFuture<'a, Result<Schedule>>;

    fn append_audit<'a>(&'a self, entry: &'a NewAudit) -> BoxFuture<'a, Result<AuditEntry>>;
    /// Newest first.
    fn list_audit<'a>(&'a self, query: &'a AuditQuery) -> BoxFuture<'a, Result<Vec<AuditEntry>>>;

    // === agents (registry) ===

    /// Registers an agent, or re-registers it: its row is replaced, its
    /// `generation` goes up by one (rotating both its tokens), and `last_seen`
    /// and `registered_at` are the store's now. An audit entry
    /// (`agent.register`, by `actor`) is written in the same transaction.
    fn register_agent<'a>(
        &'a self,
        reg: &'a AgentRegistration,
        actor: &'a str,
    ) -> BoxFuture<'a, Result<RegisteredAgent>>;
    /// A heartbeat: when `token_hash` is the agent's (compared in constant time),
    /// stamps `last_seen` with the store's now and keeps `active_faults` and
    /// `heartbeat_ms` (the interval the agent is told now: a controller whose
    /// configured heartbeat changed judges `lost` by the new one from here);
    /// `None` when the id is unknown or the hash is not its own.
    fn heartbeat_agent<'a>(
        &'a self,
        id: &'a str,
        token_hash: &'a str,
        active_faults: u64,
        heartbeat_ms: u64,
    ) -> BoxFuture<'a, Result<Option<RegisteredAgent>>>;
    /// Every registered agent, by id, with its state as of the store's now.
    fn list_agents(&self) -> BoxFuture<'_, Result<AgentSnapshot>>;
    fn get_agent<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RegisteredAgent>>>;
    // === replicas (HA) ===

    /// Records that `replica` is alive (inserts its row, or stamps `last_seen`).
    fn heartbeat_replica<'a>(
        &'a self,
        replica: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Replica>>;
    /// Every replica that ever heartbeated, by id.
    fn list_replicas(&self) -> BoxFuture<'_, Result<Vec<Replica>>>;
    /// Takes lease `name` for `holder` when it is free or expired, or renews it when
    /// `holder` has it, for `ttl` from now: one conditional UPDATE. `None`: another
    /// holder's lease is live. The epoch changes whenever the holder does.
    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<Option<LeaseGrant>>>;
    /// Lets lease `name` expire now if `holder` has it (a clean shutdown hands over
    /// at once); false when it did not.
    fn release_lease<'a>(&'a self, name: &'a str, holder: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// [`RunStore::create_run`], with the run owned by `owner` and its run lease
    /// starting now.
    fn create_owned_run<'a>(
        &'a self,
        new: &'a NewRun,
        owner: &'a RunOwner,
    ) -> BoxFuture<'a, Result<CreatedRun>>;
    /// One transaction: claims `(schedule_id, slot)` (unique), creates the owned run
    /// and records the fire (`last_fired_at`, `next_fire_at`, a `schedule.fire`
    /// audit entry). A slot someone already handled answers [`SlotFired::Taken`] and
    /// writes nothing, so two schedulers never fire one slot twice.
    fn fire_slot<'a>(&'a self, fire: &'a SlotFire) -> BoxFuture<'a, Result<SlotFired>>;
    /// [`RunStore::record_fired`] that claims the slot first: false (nothing
    /// written) when the slot was handled already.
    fn record_slot<'a>(
        &'a self,
        id: &'a str,
        fire: &'a FireRecord,
        by: &'a SlotBy,
    ) -> BoxFuture<'a, Result<bool>>;
    /// `queued` -> `running` for the owner: the row is taken with `FOR UPDATE SKIP
    /// LOCKED` on PostgreSQL, only while it is unowned, `owner`'s or its lease
    /// expired; sets the owner and a fresh lease. `None`: not claimable now.
    fn claim_run<'a>(
        &'a self,
        id: &'a str,
        owner: &'a RunOwner,
    ) -> BoxFuture<'a, Result<Option<Run>>>;
    /// Renews the lease of every run in flight `owner` has; answers them, with any
    /// abort another replica requested.
    fn renew_runs<'a>(&'a self, owner: &'a RunOwner) -> BoxFuture<'a, Result<Vec<OwnedRun>>>;
    /// A run's owner, lease and pending abort request.
    fn run_lease<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RunLease>>>;
    /// Asks the owner of a run in flight to abort it (it sees the request at its next
    /// renewal). False when the run is not in flight.
    fn request_abort<'a>(&'a self, id: &'a str, reason: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// Asks every run in flight not owned by `except` to abort; answers their ids.
    fn request_abort_all<'a>(
        &'a self,
        reason: &'a str,
        except: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>>>;
    /// Marks every run in flight whose lease expired `aborted` (the reason names the
    /// lost owner), with an `aborted` event and a `run.abort` audit entry by `actor`,
    /// in one transaction.
    fn sweep_expired_runs<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<Vec<SweptRun>>>;
    /// [`RunStore::abort_in_flight`] for a replica that starts: only runs it owned
    /// before, runs nobody owns, and runs whose lease expired; the other replicas'
    /// live runs are left alone.
    fn abort_replica_in_flight<'a>(
        &'a self,
        replica: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>>>;
    // === end replicas (HA) ===
}

// === agents (registry) ===

/// Heartbeats an agent may miss before it is `lost`.
pub const LOST_AFTER_HEARTBEATS: u32 = 3;

/// What a registration stores. The token is only ever here as its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRegistration {
    pub id: String,
    pub url: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    pub version: String,
    /// Host facts as the agent sent them (hostname, os, kernel, cpus).
    pub host: Value,
    /// Lowercase hex SHA-256 of the agent token.
    pub token_hash: String,
    /// The heartbeat interval the agent was told.
    pub heartbeat_ms: u64,
}

/// `alive`, or `lost` once an agent has been silent for more than 3 heartbeat
/// intervals; a lost agent is never selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Alive,
    Lost,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Alive => "alive",
            AgentState::Lost => "lost",
        }
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The lost rule: silent for more than [`LOST_AFTER_HEARTBEATS`] heartbeat
/// intervals as of `now` (the store's clock, so every replica agrees).
pub fn agent_state(last_seen: DateTime<Utc>, heartbeat_ms: u64, now: DateTime<Utc>) -> AgentState {
    let allowed = i64::try_from(heartbeat_ms.saturating_mul(u64::from(LOST_AFTER_HEARTBEATS)))
        .unwrap_or(i64::MAX);
    let silent = now.signed_duration_since(last_seen).num_milliseconds();
    if silent > allowed {
        AgentState::Lost
    } else {
        AgentState::Alive
    }
}

/// A registered agent as the store keeps it (without its token hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredAgent {
    pub id: String,
    pub url: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    pub version: String,
    pub host: Value,
    /// 1 at the first registration, one more at each re-registration.
    pub generation: i64,
    pub heartbeat_ms: u64,
    /// Active faults as of its last heartbeat.
    pub active_faults: u64,
    pub registered_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub state: AgentState,
}

/// Every registered agent at one instant of the store's clock, ordered by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSnapshot {
    pub at: DateTime<Utc>,
    pub agents: Vec<RegisteredAgent>,
}

impl AgentSnapshot {
    /// The alive agents, by id.
    pub fn alive(&self) -> impl Iterator<Item = &RegisteredAgent> {
        self.agents.iter().filter(|a| a.state == AgentState::Alive)
    }
}

pub(crate) fn check_registration(reg: &AgentRegistration) -> Result<()> {
    if !faultline_agent::manager::valid_id(&reg.id) {
        return Err(StoreError::Invalid {
            field: "agent id",
            reason: format!(
                "{:?}: 1 to 128 of A-Z a-z 0-9 . _ -, not starting with a dot",
                reg.id
            ),
        });
    }
    if reg.heartbeat_ms == 0 {
        return Err(StoreError::Invalid {
            field: "heartbeat",
            reason: "must be more than 0 ms".to_owned(),
        });
    }
    Ok(())
}

/// Whether a stored token hash is the one given, in constant time.
pub(crate) fn hash_matches(stored: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    stored.as_bytes().ct_eq(given.as_bytes()).into()
}

pub(crate) fn registration_audit(
    reg: &AgentRegistration,
    generation: i64,
    actor: &str,
) -> NewAudit {
    NewAudit {
        actor: actor.to_owned(),
        action: if generation == 1 {
            "agent.register".to_owned()
        } else {
            "agent.reregister".to_owned()
        },
        target: reg.id.clone(),
        detail: serde_json::json!({
            "url": reg.url,
            "labels": reg.labels,
            "version": reg.version,
            "generation": generation,
        }),
    }
}

// === shared helpers ===

/// Now, at the precision both backends keep.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A new id: `prefix` + `_` + 16 lowercase Crockford base32 characters (80 random bits).
pub fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut bits: u128 = rand::rng().random();
    let mut id = String::with_capacity(prefix.len() + 17);
    id.push_str(prefix);
    id.push('_');
    for _ in 0..16 {
        id.push(char::from(ALPHABET[(bits & 31) as usize]));
        bits >>= 5;
    }
    id
}

pub(crate) fn check_limit(limit: u32) -> Result<i64> {
    if limit == 0 || limit > MAX_LIMIT {
        return Err(StoreError::Invalid {
            field: "limit",
            reason: format!("{limit} is not in 1..={MAX_LIMIT}"),
        });
    }
    Ok(i64::from(limit))
}

pub(crate) fn check_finish(finish: &RunFinish) -> Result<()> {
    if finish.status.in_flight() {
        return Err(StoreError::Invalid {
            field: "status",
            reason: format!("`{}` is not a final status", finish.status),
        });
    }
    Ok(())
}

/// The existing run an idempotency key matched, or a conflict if it was for
/// something else.
pub(crate) fn idempotent_match(existing: Run, new: &NewRun) -> Result<CreatedRun> {
    if existing.experiment_id != new.experiment_id || existing.yaml != new.yaml {
        return Err(StoreError::Conflict(format!(
            "idempotency key `{}` of `{}` was already used for run {} of a different experiment",
            new.idempotency_key.as_deref().unwrap_or_default(),
            new.requested_by,
            existing.id
        )));
    }
    Ok(CreatedRun {
        run: existing,
        created: false,
    })
}

/// Why a run could not move: it is missing, or in another state.
pub(crate) fn transition_error(id: &str, current: Option<RunStatus>, wanted: &str) -> StoreError {
    match current {
        None => StoreError::NotFound {
            kind: "run",
            id: id.to_owned(),
        },
        Some(status) => StoreError::Conflict(format!("run {id} is {status}; cannot {wanted}")),
    }
}

/// Validates a schedule definition; returns `next_fire_at` from `now`.
pub(crate) fn check_schedule(
    def: &ScheduleDef,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>> {
    if def.name.trim().is_empty() {
        return Err(StoreError::Invalid {
            field: "schedule name",
            reason: "must not be empty".to_owned(),
        });
    }
    let compiled = def.spec.compile()?;
    match compiled.next_fire(now) {
        Some(next) => Ok(Some(next)),
        None => Err(ScheduleError::NeverFires(def.spec.cron.clone()).into()),
    }
}

pub(crate) fn audit_detail(fire: &FireRecord) -> Result<Value> {
    let mut detail = serde_json::to_value(&fire.outcome)
        .map_err(|e| StoreError::Corrupt(format!("fire outcome: {e}")))?;
    if let Value::Object(map) = &mut detail {
        map.insert("slot".to_owned(), Value::String(fire.slot.to_rfc3339()));
    }
    Ok(detail)
}

pub(crate) fn parse_enum<T: FromStr<Err = String>>(s: &str) -> Result<T> {
    s.parse().map_err(StoreError::Corrupt)
}

pub(crate) fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.to_owned(),
    }
}
