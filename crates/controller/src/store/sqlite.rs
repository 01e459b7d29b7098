//! The SQLite backend: one connection (bundled SQLite, WAL, `synchronous = FULL`,
//! foreign keys on) behind a mutex; every call runs on tokio's blocking pool. Writes
//! take `BEGIN IMMEDIATE`, so a second process on the same file waits (busy timeout)
//! instead of failing half-way.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use serde_json::Value;

use super::*;

// === replicas (HA) ===
mod ha;
// === end replicas (HA) ===

/// Each migration: (version, name, SQL). Append only; never edit an applied one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        r#"
CREATE TABLE experiments (
    ord         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    yaml        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL
);
CREATE TABLE runs (
    ord              INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    experiment_id    TEXT REFERENCES experiments(id),
    experiment_name  TEXT NOT NULL,
    yaml             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'passed', 'failed',
                         'aborted', 'revert_unconfirmed', 'invalid', 'error')),
    exit_code        INTEGER,
    summary          TEXT NOT NULL,
    journal          TEXT,
    reason           TEXT,
    requested_by     TEXT NOT NULL,
    idempotency_key  TEXT,
    schedule_id      TEXT,
    event_seq        INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    UNIQUE (requested_by, idempotency_key)
);
CREATE INDEX runs_status ON runs (status);
CREATE INDEX runs_schedule ON runs (schedule_id, status);
CREATE INDEX runs_experiment ON runs (experiment_id);
CREATE TABLE run_events (
    run_id  TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    at      TEXT NOT NULL,
    kind    TEXT NOT NULL,
    data    TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE schedules (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    experiment_id  TEXT NOT NULL REFERENCES experiments(id),
    cron           TEXT NOT NULL,
    time_zone      TEXT NOT NULL,
    overlap        TEXT NOT NULL CHECK (overlap IN ('skip', 'queue', 'replace')),
    blackouts      TEXT NOT NULL,
    missed         TEXT NOT NULL CHECK (missed IN ('skip', 'run_once')),
    enabled        INTEGER NOT NULL,
    last_fired_at  TEXT,
    next_fire_at   TEXT,
    created_by     TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE INDEX audit_target ON audit_log (target, id);
"#,
    ),
    // === agents (registry) ===
    (
        2,
        "agents",
        r#"
CREATE TABLE agents (
    id             TEXT PRIMARY KEY,
    url            TEXT NOT NULL,
    labels         TEXT NOT NULL,
    capabilities   TEXT NOT NULL,
    version        TEXT NOT NULL,
    host           TEXT NOT NULL,
    generation     INTEGER NOT NULL,
    token_hash     TEXT NOT NULL,
    heartbeat_ms   INTEGER NOT NULL,
    active_faults  INTEGER NOT NULL DEFAULT 0,
    registered_at  TEXT NOT NULL,
    last_seen      TEXT NOT NULL
) WITHOUT ROWID;
"#,
    ),
    // === end agents (registry) ===
    // === replicas (HA) ===
    ha::MIGRATION,
    // === end replicas (HA) ===
];

const RUN_COLS: &str = "id, experiment_id, experiment_name, yaml, status, exit_code, summary, \
    journal, reason, requested_by, idempotency_key, schedule_id, created_at, started_at, finished_at";
const SCHEDULE_COLS: &str = "id, name, experiment_id, cron, time_zone, overlap, blackouts, missed, \
    enabled, last_fired_at, next_fire_at, created_by, created_at, updated_at";

/// The SQLite [`RunStore`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens or creates the database file and migrates it.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection> {
            let mut conn = Connection::open(&p)?;
            conn.busy_timeout(Duration::from_secs(10))?;
            // journal_mode answers with the mode it is now in.
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(path = %p.display(), mode, "sqlite store: WAL not available");
            }
            conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
            migrate(&mut conn)?;
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        tracing::debug!(path = %path.display(), "sqlite store open");
        Ok(SqliteStore {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on the blocking pool.
    fn call<T, F>(&self, f: F) -> BoxFuture<'static, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                // A panic while holding the lock dropped its transaction (rolled back):
                // the connection is still good.
                let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
                f(&mut guard)
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
        })
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    for &(version, name, sql) in MIGRATIONS {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS faultline_migrations (
                 version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
        )?;
        let found: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM faultline_migrations",
            [],
            |r| r.get(0),
        )?;
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        let applied: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM faultline_migrations WHERE version = ?1)",
            [version],
            |r| r.get(0),
        )?;
        if !applied {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO faultline_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![version, name, ts(now())],
            )?;
            tracing::info!(version, name, "sqlite store: migration applied");
        }
        tx.commit()?;
    }
    Ok(())
}

// === conversions ===

/// Fixed width (microseconds, `Z`), so text order is time order.
fn ts(t: DateTime<Utc>) -> String {
    t.trunc_subsecs(6)
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp `{s}`: {e}")))
}

fn opt_ts(s: Option<String>) -> Result<Option<DateTime<Utc>>> {
    s.as_deref().map(parse_ts).transpose()
}

fn json(v: &Value) -> String {
    v.to_string()
}

fn parse_json(s: &str) -> Result<Value> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("json: {e}")))
}

fn experiment(row: &Row<'_>) -> Result<Experiment> {
    Ok(Experiment {
        id: row.get("id")?,
        name: row.get("name")?,
        yaml: row.get("yaml")?,
        created_at: parse_ts(&row.get::<_, String>("created_at")?)?,
        created_by: row.get("created_by")?,
    })
}

fn run(row: &Row<'_>) -> Result<Run> {
    Ok(Run {
        id: row.get("id")?,
        experiment_id: row.get("experiment_id")?,
        experiment_name: row.get("experiment_name")?,
        yaml: row.get("yaml")?,
        status: parse_enum(&row.get::<_, String>("status")?)?,
        exit_code: row.get("exit_code")?,
        summary: parse_json(&row.get::<_, String>("summary")?)?,
        journal: row
            .get::<_, Option<String>>("journal")?
            .as_deref()
            .map(parse_json)
            .transpose()?,
        reason: row.get("reason")?,
        requested_by: row.get("requested_by")?,
        idempotency_key: row.get("idempotency_key")?,
        schedule_id: row.get("schedule_id")?,
        created_at: parse_ts(&row.get::<_, String>("created_at")?)?,
        started_at: opt_ts(row.get("started_at")?)?,
        finished_at: opt_ts(row.get("finished_at")?)?,
    })
}

fn schedule(row: &Row<'_>) -> Result<Schedule> {
    let blackouts: String = row.get("blackouts")?;
    Ok(Schedule {
        id: row.get("id")?,
        name: row.get("name")?,
        experiment_id: row.get("experiment_id")?,
        spec: ScheduleSpec {
            cron: row.get("cron")?,
            time_zone: row.get("time_zone")?,
            overlap: parse_enum(&row.get::<_, String>("overlap")?)?,
            blackouts: serde_json::from_str(&blackouts)
                .map_err(|e| StoreError::Corrupt(format!("blackouts: {e}")))?,
            missed: parse_enum(&row.get::<_, String>("missed")?)?,
        },
        enabled: row.get("enabled")?,
        last_fired_at: opt_ts(row.get("last_fired_at")?)?,
        next_fire_at: opt_ts(row.get("next_fire_at")?)?,
        created_by: row.get("created_by")?,
        created_at: parse_ts(&row.get::<_, String>("created_at")?)?,
        updated_at: parse_ts(&row.get::<_, String>("updated_at")?)?,
    })
}

fn audit(row: &Row<'_>) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.get("id")?,
        at: parse_ts(&row.get::<_, String>("at")?)?,
        actor: row.get("actor")?,
        action: row.get("action")?,
        target: row.get("target")?,
        detail: parse_json(&row.get::<_, String>("detail")?)?,
    })
}

fn collect<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}

fn one<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: fn(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    Ok(collect(conn, sql, params, map)?.into_iter().next())
}

fn get_run(conn: &Connection, id: &str) -> Result<Option<Run>> {
    one(
        conn,
        &format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"),
        [id],
        run,
    )
}

fn run_status(conn: &Connection, id: &str) -> Result<Option<RunStatus>> {
    conn.query_row("SELECT status FROM runs WHERE id = ?1", [id], |r| {
        r.get::<_, String>(0)
    })
    .optional()?
    .map(|s| parse_enum(&s))
    .transpose()
}

fn experiment_exists(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM experiments WHERE id = ?1)",
        [id],
        |r| r.get(0),
    )?)
}

fn get_schedule(conn: &Connection, id: &str) -> Result<Option<Schedule>> {
    one(
        conn,
        &format!("SELECT {SCHEDULE_COLS} FROM schedules WHERE id = ?1"),
        [id],
        schedule,
    )
}

fn insert_event(tx: &Transaction<'_>, run_id: &str, kind: &str, data: &Value) -> Result<i64> {
    let seq: Option<i64> = tx
        .query_row(
            "UPDATE runs SET event_seq = event_seq + 1 WHERE id = ?1 RETURNING event_seq",
            [run_id],
            |r| r.get(0),
        )
        .optional()?;
    let seq = seq.ok_or_else(|| not_found("run", run_id))?;
    tx.execute(
        "INSERT INTO run_events (run_id, seq, at, kind, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![run_id, seq, ts(now()), kind, json(data)],
    )?;
    Ok(seq)
}

fn insert_audit(conn: &Connection, entry: &NewAudit) -> Result<AuditEntry> {
    let at = now();
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            ts(at),
            entry.actor,
            entry.action,
            entry.target,
            json(&entry.detail)
        ],
    )?;
    Ok(AuditEntry {
        id: conn.last_insert_rowid(),
        at,
        actor: entry.actor.clone(),
        action: entry.action.clone(),
        target: entry.target.clone(),
        detail: entry.detail.clone(),
    })
}

fn immediate(conn: &mut Connection) -> Result<Transaction<'_>> {
    Ok(conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

fn blackouts_json(spec: &ScheduleSpec) -> Result<String> {
    serde_json::to_string(&spec.blackouts)
        .map_err(|e| StoreError::Corrupt(format!("blackouts: {e}")))
}

impl RunStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn schema_version(&self) -> BoxFuture<'_, Result<i64>> {
        self.call(|conn| {
            Ok(conn.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM faultline_migrations",
                [],
                |r| r.get(0),
            )?)
        })
    }

    fn create_experiment<'a>(
        &'a self,
        new: &'a NewExperiment,
    ) -> BoxFuture<'a, Result<Experiment>> {
        let new = new.clone();
        self.call(move |conn| {
            let e = Experiment {
                id: new_id("exp"),
                name: new.name,
                yaml: new.yaml,
                created_at: now(),
                created_by: new.created_by,
            };
            conn.execute(
                "INSERT INTO experiments (id, name, yaml, created_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.id, e.name, e.yaml, ts(e.created_at), e.created_by],
            )?;
            Ok(e)
        })
    }

    fn get_experiment<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Experiment>>> {
        let id = id.to_owned();
        self.call(move |conn| {
            one(
                conn,
                "SELECT id, name, yaml, created_at, created_by FROM experiments WHERE id = ?1",
                [id],
                experiment,
            )
        })
    }

    fn list_experiments(&self, limit: u32) -> BoxFuture<'_, Result<Vec<Experiment>>> {
        self.call(move |conn| {
            let limit = check_limit(limit)?;
            collect(
                conn,
                "SELECT id, name, yaml, created_at, created_by FROM experiments
                 ORDER BY ord DESC LIMIT ?1",
                [limit],
                experiment,
            )
        })
    }

    fn create_run<'a>(&'a self, new: &'a NewRun) -> BoxFuture<'a, Result<CreatedRun>> {
        let new = new.clone();
        self.call(move |conn| {
            let tx = immediate(conn)?;
            let created = ha::insert_run(&tx, &new, None)?;
            tx.commit()?;
            Ok(created)
        })
    }

    fn get_run<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Run>>> {
        let id = id.to_owned();
        self.call(move |conn| get_run(conn, &id))
    }

    fn list_runs<'a>(&'a self, query: &'a RunQuery) -> BoxFuture<'a, Result<Vec<Run>>> {
        let q = query.clone();
        self.call(move |conn| {
            let limit = check_limit(q.limit)?;
            let statuses: Vec<&str> = q.statuses.iter().map(|s| s.as_str()).collect();
            let statuses = serde_json::Value::from(statuses).to_string();
            collect(
                conn,
                &format!(
                    "SELECT {RUN_COLS} FROM runs
                     WHERE (?1 = '[]' OR status IN (SELECT value FROM json_each(?1)))
                       AND (?2 IS NULL OR experiment_id = ?2)
                       AND (?3 IS NULL OR schedule_id = ?3)
                     ORDER BY ord DESC LIMIT ?4"
                ),
                params![statuses, q.experiment_id, q.schedule_id, limit],
                run,
            )
        })
    }

    fn mark_running<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Run>> {
        let id = id.to_owned();
        self.call(move |conn| {
            let tx = immediate(conn)?;
            let n = tx.execute(
                "UPDATE runs SET status = 'running', started_at = ?2
                 WHERE id = ?1 AND status = 'queued'",
                params![id, ts(now())],
            )?;
            if n == 0 {
                return Err(transition_error(
                    &id,
                    run_status(&tx, &id)?,
                    "mark it running",
                ));
            }
            let run = get_run(&tx, &id)?.ok_or_else(|| not_found("run", &id))?;
            tx.commit()?;
            Ok(run)
        })
    }

    fn finish_run<'a>(&'a self, id: &'a str, finish: &'a RunFinish) -> BoxFuture<'a, Result<Run>> {
        let id = id.to_owned();
        let f = finish.clone();
        self.call(move |conn| {
            check_finish(&f)?;
            let tx = immediate(conn)?;
            let n = tx.execute(
                "UPDATE runs SET status = ?2, exit_code = ?3, summary = ?4, journal = ?5,
                     finished_at = ?6, reason = ?7
                 WHERE id = ?1 AND status IN ('queued', 'running')",
                params![
                    id,
                    f.status.as_str(),
                    f.exit_code,
                    json(&f.summary),
                    f.journal.as_ref().map(json),
                    ts(now()),
                    f.reason
                ],
            )?;
            if n == 0 {
                return Err(transition_error(&id, run_status(&tx, &id)?, "finish it"));
            }
            let run = get_run(&tx, &id)?.ok_or_else(|| not_found("run", &id))?;
            tx.commit()?;
            Ok(run)
        })
    }

    fn abort_in_flight<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        let reason = reason.to_owned();
        self.call(move |conn| {
            let tx = immediate(conn)?;
            let ids: Vec<String> = {
                let mut stmt = tx.prepare(
                    "UPDATE runs SET status = 'aborted', reason = ?1, finished_at = ?2
                     WHERE status IN ('queued', 'running') RETURNING id",
                )?;
                stmt.query_map(params![reason, ts(now())], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            };
            let data = serde_json::json!({ "reason": reason });
            for id in &ids {
                insert_event(&tx, id, "aborted", &data)?;
            }
            tx.commit()?;
            Ok(ids)
        })
    }

    fn append_event<'a>(
        &'a self,
        run_id: &'a str,
        kind: &'a str,
        data: &'a Value,
    ) -> BoxFuture<'a, Result<i64>> {
        let (run_id, kind, data) = (run_id.to_owned(), kind.to_owned(), data.clone());
        self.call(move |conn| {
            let tx = immediate(conn)?;
            let seq = insert_event(&tx, &run_id, &kind, &data)?;
            tx.commit()?;
            Ok(seq)
        })
    }

    fn events_after<'a>(
        &'a self,
        run_id: &'a str,
        after: i64,
    ) -> BoxFuture<'a, Result<Vec<RunEvent>>> {
        let run_id = run_id.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            if run_status(&tx, &run_id)?.is_none() {
                return Err(not_found("run", &run_id));
            }
            let events = collect(
                &tx,
                "SELECT run_id, seq, at, kind, data FROM run_events
                 WHERE run_id = ?1 AND seq > ?2 ORDER BY seq",
                params![run_id, after],
                |row| {
                    Ok(RunEvent {
                        run_id: row.get("run_id")?,
                        seq: row.get("seq")?,
                        at: parse_ts(&row.get::<_, String>("at")?)?,
                        kind: row.get("kind")?,
                        data: parse_json(&row.get::<_, String>("data")?)?,
                    })
                },
            )?;
            tx.commit()?;
            Ok(events)
        })
    }

    fn create_schedule<'a>(
        &'a self,
        def: &'a ScheduleDef,
        created_by: &'a str,
    ) -> BoxFuture<'a, Result<Schedule>> {
        let (def, created_by) = (def.clone(), created_by.to_owned());
        self.call(move |conn| {
            let at = now();
            let next = check_schedule(&def, at)?;
            let tx = immediate(conn)?;
            if !experiment_exists(&tx, &def.experiment_id)? {
                return Err(not_found("experiment", &def.experiment_id));
            }
            let id = new_id("sch");
            tx.execute(
                &format!(
                    "INSERT INTO schedules ({SCHEDULE_COLS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, ?10, ?11, ?12, ?12)"
                ),
                params![
                    id,
                    def.name,
                    def.experiment_id,
                    def.spec.cron,
                    def.spec.time_zone,
                    def.spec.overlap.as_str(),
                    blackouts_json(&def.spec)?,
                    def.spec.missed.as_str(),
                    def.enabled,
                    next.map(ts),
                    created_by,
                    ts(at)
                ],
            )?;
            let s = get_schedule(&tx, &id)?.ok_or_else(|| not_found("schedule", &id))?;
            tx.commit()?;
            Ok(s)
        })
    }

    fn get_schedule<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Schedule>>> {
        let id = id.to_owned();
        self.call(move |conn| get_schedule(conn, &id))
    }

    fn list_schedules(&self) -> BoxFuture<'_, Result<Vec<Schedule>>> {
        self.call(|conn| {
            collect(
                conn,
                &format!("SELECT {SCHEDULE_COLS} FROM schedules ORDER BY name, id"),
                [],
                schedule,
            )
        })
    }

    fn update_schedule<'a>(
        &'a self,
        id: &'a str,
        def: &'a ScheduleDef,
    ) -> BoxFuture<'a, Result<Schedule>> {
        let (id, def) = (id.to_owned(), def.clone());
        self.call(move |conn| {
            let at = now();
            let next = check_schedule(&def, at)?;
            let tx = immediate(conn)?;
            if !experiment_exists(&tx, &def.experiment_id)? {
                return Err(not_found("experiment", &def.experiment_id));
            }
            let n = tx.execute(
                "UPDATE schedules SET name = ?2, experiment_id = ?3, cron = ?4, time_zone = ?5,
                     overlap = ?6, blackouts = ?7, missed = ?8, enabled = ?9, next_fire_at = ?10,
                     updated_at = ?11
                 WHERE id = ?1",
                params![
                    id,
                    def.name,
                    def.experiment_id,
                    def.spec.cron,
                    def.spec.time_zone,
                    def.spec.overlap.as_str(),
                    blackouts_json(&def.spec)?,
                    def.spec.missed.as_str(),
                    def.enabled,
                    next.map(ts),
                    ts(at)
                ],
            )?;
            if n == 0 {
                return Err(not_found("schedule", &id));
            }
            let s = get_schedule(&tx, &id)?.ok_or_else(|| not_found("schedule", &id))?;
            tx.commit()?;
            Ok(s)
        })
    }

    fn delete_schedule<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool>> {
        let id = id.to_owned();
        self.call(move |conn| Ok(conn.execute("DELETE FROM schedules WHERE id = ?1", [id])? > 0))
    }

    fn record_fired<'a>(
        &'a self,
        id: &'a str,
        fire: &'a FireRecord,
    ) -> BoxFuture<'a, Result<Schedule>> {
        let (id, fire) = (id.to_owned(), fire.clone());
        self.call(move |conn| {
            let detail = audit_detail(&fire)?;
            let tx = immediate(conn)?;
            let n = tx.execute(
                "UPDATE schedules SET
                     last_fired_at = CASE WHEN last_fired_at IS NULL OR last_fired_at < ?2
                                          THEN ?2 ELSE last_fired_at END,
                     next_fire_at = ?3
                 WHERE id = ?1",
                params![id, ts(fire.slot), fire.next_fire_at.map(ts)],
            )?;
            if n == 0 {
                return Err(not_found("schedule", &id));
            }
            insert_audit(
                &tx,
                &NewAudit {
                    actor: SCHEDULER_ACTOR.to_owned(),
                    action: fire.outcome.audit_action().to_owned(),
                    target: id.clone(),
                    detail,
                },
            )?;
            let s = get_schedule(&tx, &id)?.ok_or_else(|| not_found("schedule", &id))?;
            tx.commit()?;
            Ok(s)
        })
    }

    fn append_audit<'a>(&'a self, entry: &'a NewAudit) -> BoxFuture<'a, Result<AuditEntry>> {
        let entry = entry.clone();
        self.call(move |conn| insert_audit(conn, &entry))
    }

    fn list_audit<'a>(&'a self, query: &'a AuditQuery) -> BoxFuture<'a, Result<Vec<AuditEntry>>> {
        let q = query.clone();
        self.call(move |conn| {
            let limit = check_limit(q.limit)?;
            collect(
                conn,
                "SELECT id, at, actor, action, target, detail FROM audit_log
                 WHERE (?1 IS NULL OR target = ?1) AND (?2 IS NULL OR actor = ?2)
                 ORDER BY id DESC LIMIT ?3",
                params![q.target, q.actor, limit],
                audit,
            )
        })
    }

    // === agents (registry) ===

    fn register_agent<'a>(
        &'a self,
        reg: &'a AgentRegistration,
        actor: &'a str,
    ) -> BoxFuture<'a, Result<RegisteredAgent>> {
        let (reg, actor) = (reg.clone(), actor.to_owned());
        self.call(move |conn| {
            check_registration(&reg)?;
            let tx = immediate(conn)?;
            let at = ts(now());
            let generation: i64 = tx.query_row(
                "INSERT INTO agents (id, url, labels, capabilities, version, host, generation,
                     token_hash, heartbeat_ms, active_faults, registered_at, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, 0, ?9, ?9)
                 ON CONFLICT (id) DO UPDATE SET url = excluded.url, labels = excluded.labels,
                     capabilities = excluded.capabilities, version = excluded.version,
                     host = excluded.host, generation = agents.generation + 1,
                     token_hash = excluded.token_hash, heartbeat_ms = excluded.heartbeat_ms,
                     active_faults = 0, registered_at = excluded.registered_at,
                     last_seen = excluded.last_seen
                 RETURNING generation",
                params![
                    reg.id,
                    reg.url,
                    json(&serde_json::json!(reg.labels)),
                    json(&serde_json::json!(reg.capabilities)),
                    reg.version,
                    json(&reg.host),
                    reg.token_hash,
                    i64::try_from(reg.heartbeat_ms).unwrap_or(i64::MAX),
                    at
                ],
                |r| r.get(0),
            )?;
            insert_audit(&tx, &registration_audit(&reg, generation, &actor))?;
            let agent =
                get_agent(&tx, &reg.id, now())?.ok_or_else(|| not_found("agent", &reg.id))?;
            tx.commit()?;
            Ok(agent)
        })
    }

    fn heartbeat_agent<'a>(
        &'a self,
        id: &'a str,
        token_hash: &'a str,
        active_faults: u64,
        heartbeat_ms: u64,
    ) -> BoxFuture<'a, Result<Option<RegisteredAgent>>> {
        let (id, token_hash) = (id.to_owned(), token_hash.to_owned());
        self.call(move |conn| {
            let tx = immediate(conn)?;
            let stored: Option<String> = tx
                .query_row("SELECT token_hash FROM agents WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .optional()?;
            match stored {
                Some(stored) if hash_matches(&stored, &token_hash) => {}
                _ => return Ok(None),
            }
            let at = now();
            tx.execute(
                "UPDATE agents SET last_seen = ?2, active_faults = ?3, heartbeat_ms = ?4
                 WHERE id = ?1",
                params![
                    id,
                    ts(at),
                    i64::try_from(active_faults).unwrap_or(i64::MAX),
                    i64::try_from(heartbeat_ms.max(1)).unwrap_or(i64::MAX)
                ],
            )?;
            let agent = get_agent(&tx, &id, at)?;
            tx.commit()?;
            Ok(agent)
        })
    }

    fn list_agents(&self) -> BoxFuture<'_, Result<AgentSnapshot>> {
        self.call(|conn| {
            let at = now();
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {AGENT_COLS} FROM agents ORDER BY id"))?;
            let mut rows = stmt.query([])?;
            let mut agents = Vec::new();
            while let Some(row) = rows.next()? {
                agents.push(registered_agent(row, at)?);
            }
            Ok(AgentSnapshot { at, agents })
        })
    }

    fn get_agent<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RegisteredAgent>>> {
        let id = id.to_owned();
        self.call(move |conn| get_agent(conn, &id, now()))
    }
    // === replicas (HA) ===

    fn heartbeat_replica<'a>(
        &'a self,
        replica: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Replica>> {
        ha::heartbeat(self, replica, version)
    }

    fn list_replicas(&self) -> BoxFuture<'_, Result<Vec<Replica>>> {
        ha::list_replicas(self)
    }

    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<Option<LeaseGrant>>> {
        ha::acquire_lease(self, name, holder, ttl)
    }

    fn release_lease<'a>(&'a self, name: &'a str, holder: &'a str) -> BoxFuture<'a, Result<bool>> {
        ha::release_lease(self, name, holder)
    }

    fn create_owned_run<'a>(
        &'a self,
        new: &'a NewRun,
        owner: &'a RunOwner,
    ) -> BoxFuture<'a, Result<CreatedRun>> {
        ha::create_owned_run(self, new, owner)
    }

    fn fire_slot<'a>(&'a self, fire: &'a SlotFire) -> BoxFuture<'a, Result<SlotFired>> {
        ha::fire_slot(self, fire)
    }

    fn record_slot<'a>(
        &'a self,
        id: &'a str,
        fire: &'a FireRecord,
        by: &'a SlotBy,
    ) -> BoxFuture<'a, Result<bool>> {
        ha::record_slot(self, id, fire, by)
    }

    fn claim_run<'a>(
        &'a self,
        id: &'a str,
        owner: &'a RunOwner,
    ) -> BoxFuture<'a, Result<Option<Run>>> {
        ha::claim_run(self, id, owner)
    }

    fn renew_runs<'a>(&'a self, owner: &'a RunOwner) -> BoxFuture<'a, Result<Vec<OwnedRun>>> {
        ha::renew_runs(self, owner)
    }

    fn run_lease<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RunLease>>> {
        ha::run_lease(self, id)
    }

    fn request_abort<'a>(&'a self, id: &'a str, reason: &'a str) -> BoxFuture<'a, Result<bool>> {
        ha::request_abort(self, id, reason)
    }

    fn request_abort_all<'a>(
        &'a self,
        reason: &'a str,
        except: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        ha::request_abort_all(self, reason, except)
    }

    fn sweep_expired_runs<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<Vec<SweptRun>>> {
        ha::sweep_expired_runs(self, actor)
    }

    fn abort_replica_in_flight<'a>(
        &'a self,
        replica: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        ha::abort_replica_in_flight(self, replica, reason)
    }
    // === end replicas (HA) ===
}

// === agents (registry) ===

const AGENT_COLS: &str = "id, url, labels, capabilities, version, host, generation, heartbeat_ms, \
    active_faults, registered_at, last_seen";

fn registered_agent(row: &Row<'_>, now: DateTime<Utc>) -> Result<RegisteredAgent> {
    let labels = parse_json(&row.get::<_, String>("labels")?)?;
    let capabilities = parse_json(&row.get::<_, String>("capabilities")?)?;
    let last_seen = parse_ts(&row.get::<_, String>("last_seen")?)?;
    let heartbeat_ms = u64::try_from(row.get::<_, i64>("heartbeat_ms")?)
        .map_err(|e| StoreError::Corrupt(format!("heartbeat_ms: {e}")))?;
    Ok(RegisteredAgent {
        id: row.get("id")?,
        url: row.get("url")?,
        labels: serde_json::from_value(labels)
            .map_err(|e| StoreError::Corrupt(format!("labels: {e}")))?,
        capabilities: serde_json::from_value(capabilities)
            .map_err(|e| StoreError::Corrupt(format!("capabilities: {e}")))?,
        version: row.get("version")?,
        host: parse_json(&row.get::<_, String>("host")?)?,
        generation: row.get("generation")?,
        heartbeat_ms,
        active_faults: u64::try_from(row.get::<_, i64>("active_faults")?).unwrap_or(0),
        registered_at: parse_ts(&row.get::<_, String>("registered_at")?)?,
        last_seen,
        state: agent_state(last_seen, heartbeat_ms, now),
    })
}

fn get_agent(conn: &Connection, id: &str, now: DateTime<Utc>) -> Result<Option<RegisteredAgent>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {AGENT_COLS} FROM agents WHERE id = ?1"))?;
    let mut rows = stmt.query([id])?;
    match rows.next()? {
        Some(row) => Ok(Some(registered_agent(row, now)?)),
        None => Ok(None),
    }
}
