//! The PostgreSQL backend: tokio-postgres (no TLS: loopback or a trusted network;
//! `sslmode=require` URLs are refused by the driver), `timestamptz` and `jsonb`
//! columns, and a small pool of connections of its own (a connection is checked out
//! per call and returned unless it closed). Migrations hold a transaction-scoped
//! advisory lock, so two controllers opening one database apply each migration once.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, GenericClient, NoTls, Row};

use super::*;

// === replicas (HA) ===
mod ha;
// === end replicas (HA) ===

/// The advisory lock key migrations hold (`faultlin` in ASCII).
const MIGRATION_LOCK: i64 = 0x6661_756c_746c_696e;

/// Connections one store opens at most.
pub const POOL_SIZE: usize = 8;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        r#"
CREATE TABLE experiments (
    ord         BIGINT GENERATED ALWAYS AS IDENTITY,
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    yaml        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    created_by  TEXT NOT NULL
);
CREATE INDEX experiments_ord ON experiments (ord);
CREATE TABLE runs (
    ord              BIGINT GENERATED ALWAYS AS IDENTITY,
    id               TEXT PRIMARY KEY,
    experiment_id    TEXT REFERENCES experiments(id),
    experiment_name  TEXT NOT NULL,
    yaml             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'passed', 'failed',
                         'aborted', 'revert_unconfirmed', 'invalid', 'error')),
    exit_code        INTEGER,
    summary          JSONB NOT NULL,
    journal          JSONB,
    reason           TEXT,
    requested_by     TEXT NOT NULL,
    idempotency_key  TEXT,
    schedule_id      TEXT,
    event_seq        BIGINT NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL,
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    UNIQUE (requested_by, idempotency_key)
);
CREATE INDEX runs_ord ON runs (ord);
CREATE INDEX runs_status ON runs (status);
CREATE INDEX runs_schedule ON runs (schedule_id, status);
CREATE INDEX runs_experiment ON runs (experiment_id);
CREATE TABLE run_events (
    run_id  TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    at      TIMESTAMPTZ NOT NULL,
    kind    TEXT NOT NULL,
    data    JSONB NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE schedules (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    experiment_id  TEXT NOT NULL REFERENCES experiments(id),
    cron           TEXT NOT NULL,
    time_zone      TEXT NOT NULL,
    overlap        TEXT NOT NULL CHECK (overlap IN ('skip', 'queue', 'replace')),
    blackouts      JSONB NOT NULL,
    missed         TEXT NOT NULL CHECK (missed IN ('skip', 'run_once')),
    enabled        BOOLEAN NOT NULL,
    last_fired_at  TIMESTAMPTZ,
    next_fire_at   TIMESTAMPTZ,
    created_by     TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);
CREATE TABLE audit_log (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  JSONB NOT NULL
);
CREATE INDEX audit_target ON audit_log (target, id);
"#,
    ),
    // === agents (registry) ===
    // Timestamps of this table come from the database's clock (clock_timestamp()),
    // so every replica judges `lost` against the same clock.
    (
        2,
        "agents",
        r#"
CREATE TABLE agents (
    id             TEXT PRIMARY KEY,
    url            TEXT NOT NULL,
    labels         JSONB NOT NULL,
    capabilities   JSONB NOT NULL,
    version        TEXT NOT NULL,
    host           JSONB NOT NULL,
    generation     BIGINT NOT NULL,
    token_hash     TEXT NOT NULL,
    heartbeat_ms   BIGINT NOT NULL,
    active_faults  BIGINT NOT NULL DEFAULT 0,
    registered_at  TIMESTAMPTZ NOT NULL,
    last_seen      TIMESTAMPTZ NOT NULL
);
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

/// The PostgreSQL [`RunStore`].
pub struct PostgresStore {
    config: Config,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the config: it holds the password.
        f.debug_struct("PostgresStore")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

/// A pooled connection; goes back to the pool on drop unless it closed.
struct Conn<'a> {
    store: &'a PostgresStore,
    client: Option<Client>,
    _permit: SemaphorePermit<'a>,
}

impl Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Only `drop` takes it out.
        self.client.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            self.store
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(client);
        }
    }
}

use std::sync::PoisonError;

impl PostgresStore {
    /// Connects (checking the URL and the credentials now) and migrates.
    pub async fn open(url: &str) -> Result<Self> {
        let mut config: Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| StoreError::Invalid {
                    field: "store URL",
                    reason: format!("not a PostgreSQL URL: {e}"),
                })?;
        if config.get_application_name().is_none() {
            config.application_name("faultline-controller");
        }
        let store = PostgresStore {
            config,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(POOL_SIZE),
        };
        {
            let mut conn = store.conn().await?;
            migrate(&mut conn).await?;
        }
        tracing::debug!(dbname = ?store.config.get_dbname(), "postgres store open");
        Ok(store)
    }

    async fn conn(&self) -> Result<Conn<'_>> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
        };
        let client = match idle {
            Some(c) => c,
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::warn!(error = %e, "postgres store: connection ended");
                    }
                });
                client
            }
        };
        Ok(Conn {
            store: self,
            client: Some(client),
            _permit: permit,
        })
    }
}

async fn migrate(client: &mut Client) -> Result<()> {
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    for &(version, name, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS faultline_migrations (
                 version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)",
        )
        .await?;
        let found: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM faultline_migrations",
                &[],
            )
            .await?
            .try_get(0)?;
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        let applied: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM faultline_migrations WHERE version = $1)",
                &[&version],
            )
            .await?
            .try_get(0)?;
        if !applied {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO faultline_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                &[&version, &name, &now()],
            )
            .await?;
            tracing::info!(version, name, "postgres store: migration applied");
        }
        tx.commit().await?;
    }
    Ok(())
}

// === conversions ===

fn experiment(row: &Row) -> Result<Experiment> {
    Ok(Experiment {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        yaml: row.try_get("yaml")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

fn run(row: &Row) -> Result<Run> {
    Ok(Run {
        id: row.try_get("id")?,
        experiment_id: row.try_get("experiment_id")?,
        experiment_name: row.try_get("experiment_name")?,
        yaml: row.try_get("yaml")?,
        status: parse_enum(row.try_get::<_, &str>("status")?)?,
        exit_code: row.try_get("exit_code")?,
        summary: row.try_get("summary")?,
        journal: row.try_get("journal")?,
        reason: row.try_get("reason")?,
        requested_by: row.try_get("requested_by")?,
        idempotency_key: row.try_get("idempotency_key")?,
        schedule_id: row.try_get("schedule_id")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn schedule(row: &Row) -> Result<Schedule> {
    let blackouts: Value = row.try_get("blackouts")?;
    Ok(Schedule {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        experiment_id: row.try_get("experiment_id")?,
        spec: ScheduleSpec {
            cron: row.try_get("cron")?,
            time_zone: row.try_get("time_zone")?,
            overlap: parse_enum(row.try_get::<_, &str>("overlap")?)?,
            blackouts: serde_json::from_value(blackouts)
                .map_err(|e| StoreError::Corrupt(format!("blackouts: {e}")))?,
            missed: parse_enum(row.try_get::<_, &str>("missed")?)?,
        },
        enabled: row.try_get("enabled")?,
        last_fired_at: row.try_get("last_fired_at")?,
        next_fire_at: row.try_get("next_fire_at")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn audit(row: &Row) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        detail: row.try_get("detail")?,
    })
}

fn event(row: &Row) -> Result<RunEvent> {
    Ok(RunEvent {
        run_id: row.try_get("run_id")?,
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        kind: row.try_get("kind")?,
        data: row.try_get("data")?,
    })
}

async fn collect<T>(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    map: fn(&Row) -> Result<T>,
) -> Result<Vec<T>> {
    c.query(sql, params).await?.iter().map(map).collect()
}

async fn one<T>(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    map: fn(&Row) -> Result<T>,
) -> Result<Option<T>> {
    c.query_opt(sql, params)
        .await?
        .as_ref()
        .map(map)
        .transpose()
}

async fn get_run(c: &impl GenericClient, id: &str) -> Result<Option<Run>> {
    one(
        c,
        &format!("SELECT {RUN_COLS} FROM runs WHERE id = $1"),
        &[&id],
        run,
    )
    .await
}

async fn run_status(c: &impl GenericClient, id: &str) -> Result<Option<RunStatus>> {
    c.query_opt("SELECT status FROM runs WHERE id = $1", &[&id])
        .await?
        .map(|r| parse_enum(r.try_get::<_, &str>(0)?))
        .transpose()
}

async fn experiment_exists(c: &impl GenericClient, id: &str) -> Result<bool> {
    Ok(c.query_one(
        "SELECT EXISTS (SELECT 1 FROM experiments WHERE id = $1)",
        &[&id],
    )
    .await?
    .try_get(0)?)
}

async fn get_schedule(c: &impl GenericClient, id: &str) -> Result<Option<Schedule>> {
    one(
        c,
        &format!("SELECT {SCHEDULE_COLS} FROM schedules WHERE id = $1"),
        &[&id],
        schedule,
    )
    .await
}

async fn insert_event(
    c: &impl GenericClient,
    run_id: &str,
    kind: &str,
    data: &Value,
) -> Result<i64> {
    // The row lock this UPDATE takes orders concurrent appends to one run.
    let seq: i64 = c
        .query_opt(
            "UPDATE runs SET event_seq = event_seq + 1 WHERE id = $1 RETURNING event_seq",
            &[&run_id],
        )
        .await?
        .ok_or_else(|| not_found("run", run_id))?
        .try_get(0)?;
    c.execute(
        "INSERT INTO run_events (run_id, seq, at, kind, data) VALUES ($1, $2, $3, $4, $5)",
        &[&run_id, &seq, &now(), &kind, data],
    )
    .await?;
    Ok(seq)
}

async fn insert_audit(c: &impl GenericClient, entry: &NewAudit) -> Result<AuditEntry> {
    let at = now();
    let id: i64 = c
        .query_one(
            "INSERT INTO audit_log (at, actor, action, target, detail)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[
                &at,
                &entry.actor,
                &entry.action,
                &entry.target,
                &entry.detail,
            ],
        )
        .await?
        .try_get(0)?;
    Ok(AuditEntry {
        id,
        at,
        actor: entry.actor.clone(),
        action: entry.action.clone(),
        target: entry.target.clone(),
        detail: entry.detail.clone(),
    })
}

fn blackouts_json(spec: &ScheduleSpec) -> Result<Value> {
    serde_json::to_value(&spec.blackouts)
        .map_err(|e| StoreError::Corrupt(format!("blackouts: {e}")))
}

impl RunStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn schema_version(&self) -> BoxFuture<'_, Result<i64>> {
        Box::pin(async move {
            let c = self.conn().await?;
            Ok(c.query_one(
                "SELECT COALESCE(MAX(version), 0) FROM faultline_migrations",
                &[],
            )
            .await?
            .try_get(0)?)
        })
    }

    fn create_experiment<'a>(
        &'a self,
        new: &'a NewExperiment,
    ) -> BoxFuture<'a, Result<Experiment>> {
        Box::pin(async move {
            let c = self.conn().await?;
            let e = Experiment {
                id: new_id("exp"),
                name: new.name.clone(),
                yaml: new.yaml.clone(),
                created_at: now(),
                created_by: new.created_by.clone(),
            };
            c.execute(
                "INSERT INTO experiments (id, name, yaml, created_at, created_by)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&e.id, &e.name, &e.yaml, &e.created_at, &e.created_by],
            )
            .await?;
            Ok(e)
        })
    }

    fn get_experiment<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Experiment>>> {
        Box::pin(async move {
            let c = self.conn().await?;
            one(
                &*c,
                "SELECT id, name, yaml, created_at, created_by FROM experiments WHERE id = $1",
                &[&id],
                experiment,
            )
            .await
        })
    }

    fn list_experiments(&self, limit: u32) -> BoxFuture<'_, Result<Vec<Experiment>>> {
        Box::pin(async move {
            let limit = check_limit(limit)?;
            let c = self.conn().await?;
            collect(
                &*c,
                "SELECT id, name, yaml, created_at, created_by FROM experiments
                 ORDER BY ord DESC LIMIT $1",
                &[&limit],
                experiment,
            )
            .await
        })
    }

    fn create_run<'a>(&'a self, new: &'a NewRun) -> BoxFuture<'a, Result<CreatedRun>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let created = ha::insert_run(&tx, new, None).await?;
            tx.commit().await?;
            Ok(created)
        })
    }

    fn get_run<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Run>>> {
        Box::pin(async move {
            let c = self.conn().await?;
            get_run(&*c, id).await
        })
    }

    fn list_runs<'a>(&'a self, q: &'a RunQuery) -> BoxFuture<'a, Result<Vec<Run>>> {
        Box::pin(async move {
            let limit = check_limit(q.limit)?;
            let statuses: Vec<&str> = q.statuses.iter().map(|s| s.as_str()).collect();
            let c = self.conn().await?;
            collect(
                &*c,
                &format!(
                    "SELECT {RUN_COLS} FROM runs
                     WHERE (cardinality($1::text[]) = 0 OR status = ANY($1::text[]))
                       AND ($2::text IS NULL OR experiment_id = $2::text)
                       AND ($3::text IS NULL OR schedule_id = $3::text)
                     ORDER BY ord DESC LIMIT $4"
                ),
                &[&statuses, &q.experiment_id, &q.schedule_id, &limit],
                run,
            )
            .await
        })
    }

    fn mark_running<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Run>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let updated = one(
                &tx,
                &format!(
                    "UPDATE runs SET status = 'running', started_at = $2
                     WHERE id = $1 AND status = 'queued' RETURNING {RUN_COLS}"
                ),
                &[&id, &now()],
                run,
            )
            .await?;
            let Some(run) = updated else {
                return Err(transition_error(
                    id,
                    run_status(&tx, id).await?,
                    "mark it running",
                ));
            };
            tx.commit().await?;
            Ok(run)
        })
    }

    fn finish_run<'a>(&'a self, id: &'a str, f: &'a RunFinish) -> BoxFuture<'a, Result<Run>> {
        Box::pin(async move {
            check_finish(f)?;
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let updated = one(
                &tx,
                &format!(
                    "UPDATE runs SET status = $2, exit_code = $3, summary = $4, journal = $5,
                         finished_at = $6, reason = $7
                     WHERE id = $1 AND status IN ('queued', 'running') RETURNING {RUN_COLS}"
                ),
                &[
                    &id,
                    &f.status.as_str(),
                    &f.exit_code,
                    &f.summary,
                    &f.journal,
                    &now(),
                    &f.reason,
                ],
                run,
            )
            .await?;
            let Some(run) = updated else {
                return Err(transition_error(
                    id,
                    run_status(&tx, id).await?,
                    "finish it",
                ));
            };
            tx.commit().await?;
            Ok(run)
        })
    }

    fn abort_in_flight<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let ids: Vec<String> = tx
                .query(
                    "UPDATE runs SET status = 'aborted', reason = $1, finished_at = $2
                     WHERE status IN ('queued', 'running') RETURNING id",
                    &[&reason, &now()],
                )
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            let data = serde_json::json!({ "reason": reason });
            for id in &ids {
                insert_event(&tx, id, "aborted", &data).await?;
            }
            tx.commit().await?;
            Ok(ids)
        })
    }

    fn append_event<'a>(
        &'a self,
        run_id: &'a str,
        kind: &'a str,
        data: &'a Value,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let seq = insert_event(&tx, run_id, kind, data).await?;
            tx.commit().await?;
            Ok(seq)
        })
    }

    fn events_after<'a>(
        &'a self,
        run_id: &'a str,
        after: i64,
    ) -> BoxFuture<'a, Result<Vec<RunEvent>>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let tx = c
                .build_transaction()
                .read_only(true)
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .start()
                .await?;
            if run_status(&tx, run_id).await?.is_none() {
                return Err(not_found("run", run_id));
            }
            let events = collect(
                &tx,
                "SELECT run_id, seq, at, kind, data FROM run_events
                 WHERE run_id = $1 AND seq > $2 ORDER BY seq",
                &[&run_id, &after],
                event,
            )
            .await?;
            tx.commit().await?;
            Ok(events)
        })
    }

    fn create_schedule<'a>(
        &'a self,
        def: &'a ScheduleDef,
        created_by: &'a str,
    ) -> BoxFuture<'a, Result<Schedule>> {
        Box::pin(async move {
            let at = now();
            let next = check_schedule(def, at)?;
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            if !experiment_exists(&tx, &def.experiment_id).await? {
                return Err(not_found("experiment", &def.experiment_id));
            }
            let s = one(
                &tx,
                &format!(
                    "INSERT INTO schedules ({SCHEDULE_COLS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10, $11, $12, $12)
                     RETURNING {SCHEDULE_COLS}"
                ),
                &[
                    &new_id("sch"),
                    &def.name,
                    &def.experiment_id,
                    &def.spec.cron,
                    &def.spec.time_zone,
                    &def.spec.overlap.as_str(),
                    &blackouts_json(&def.spec)?,
                    &def.spec.missed.as_str(),
                    &def.enabled,
                    &next,
                    &created_by,
                    &at,
                ],
                schedule,
            )
            .await?
            .ok_or_else(|| StoreError::Corrupt("INSERT returned no schedule".to_owned()))?;
            tx.commit().await?;
            Ok(s)
        })
    }

    fn get_schedule<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Schedule>>> {
        Box::pin(async move {
            let c = self.conn().await?;
            get_schedule(&*c, id).await
        })
    }

    fn list_schedules(&self) -> BoxFuture<'_, Result<Vec<Schedule>>> {
        Box::pin(async move {
            let c = self.conn().await?;
            collect(
                &*c,
                &format!("SELECT {SCHEDULE_COLS} FROM schedules ORDER BY name, id"),
                &[],
                schedule,
            )
            .await
        })
    }

    fn update_schedule<'a>(
        &'a self,
        id: &'a str,
        def: &'a ScheduleDef,
    ) -> BoxFuture<'a, Result<Schedule>> {
        Box::pin(async move {
            let at = now();
            let next = check_schedule(def, at)?;
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            if !experiment_exists(&tx, &def.experiment_id).await? {
                return Err(not_found("experiment", &def.experiment_id));
            }
            let s = one(
                &tx,
                &format!(
                    "UPDATE schedules SET name = $2, experiment_id = $3, cron = $4, time_zone = $5,
                         overlap = $6, blackouts = $7, missed = $8, enabled = $9,
                         next_fire_at = $10, updated_at = $11
                     WHERE id = $1 RETURNING {SCHEDULE_COLS}"
                ),
                &[
                    &id,
                    &def.name,
                    &def.experiment_id,
                    &def.spec.cron,
                    &def.spec.time_zone,
                    &def.spec.overlap.as_str(),
                    &blackouts_json(&def.spec)?,
                    &def.spec.missed.as_str(),
                    &def.enabled,
                    &next,
                    &at,
                ],
                schedule,
            )
            .await?
            .ok_or_else(|| not_found("schedule", id))?;
            tx.commit().await?;
            Ok(s)
        })
    }

    fn delete_schedule<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let c = self.conn().await?;
            Ok(c.execute("DELETE FROM schedules WHERE id = $1", &[&id])
                .await?
                > 0)
        })
    }

    fn record_fired<'a>(
        &'a self,
        id: &'a str,
        fire: &'a FireRecord,
    ) -> BoxFuture<'a, Result<Schedule>> {
        Box::pin(async move {
            let detail = audit_detail(fire)?;
            let slot = fire.slot.trunc_subsecs(6);
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let s = one(
                &tx,
                &format!(
                    "UPDATE schedules SET
                         last_fired_at = GREATEST(last_fired_at, $2),
                         next_fire_at = $3
                     WHERE id = $1 RETURNING {SCHEDULE_COLS}"
                ),
                &[&id, &slot, &fire.next_fire_at],
                schedule,
            )
            .await?
            .ok_or_else(|| not_found("schedule", id))?;
            insert_audit(
                &tx,
                &NewAudit {
                    actor: SCHEDULER_ACTOR.to_owned(),
                    action: fire.outcome.audit_action().to_owned(),
                    target: id.to_owned(),
                    detail,
                },
            )
            .await?;
            tx.commit().await?;
            Ok(s)
        })
    }

    fn append_audit<'a>(&'a self, entry: &'a NewAudit) -> BoxFuture<'a, Result<AuditEntry>> {
        Box::pin(async move {
            let c = self.conn().await?;
            insert_audit(&*c, entry).await
        })
    }

    fn list_audit<'a>(&'a self, q: &'a AuditQuery) -> BoxFuture<'a, Result<Vec<AuditEntry>>> {
        Box::pin(async move {
            let limit = check_limit(q.limit)?;
            let c = self.conn().await?;
            collect(
                &*c,
                "SELECT id, at, actor, action, target, detail FROM audit_log
                 WHERE ($1::text IS NULL OR target = $1::text)
                   AND ($2::text IS NULL OR actor = $2::text)
                 ORDER BY id DESC LIMIT $3",
                &[&q.target, &q.actor, &limit],
                audit,
            )
            .await
        })
    }

    // === agents (registry) ===

    fn register_agent<'a>(
        &'a self,
        reg: &'a AgentRegistration,
        actor: &'a str,
    ) -> BoxFuture<'a, Result<RegisteredAgent>> {
        Box::pin(async move {
            check_registration(reg)?;
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let heartbeat_ms = i64::try_from(reg.heartbeat_ms).unwrap_or(i64::MAX);
            let labels = serde_json::json!(reg.labels);
            let capabilities = serde_json::json!(reg.capabilities);
            let row = tx
                .query_one(
                    &format!(
                        "INSERT INTO agents (id, url, labels, capabilities, version, host, generation,
                             token_hash, heartbeat_ms, active_faults, registered_at, last_seen)
                         VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8, 0, clock_timestamp(), clock_timestamp())
                         ON CONFLICT (id) DO UPDATE SET url = excluded.url, labels = excluded.labels,
                             capabilities = excluded.capabilities, version = excluded.version,
                             host = excluded.host, generation = agents.generation + 1,
                             token_hash = excluded.token_hash, heartbeat_ms = excluded.heartbeat_ms,
                             active_faults = 0, registered_at = excluded.registered_at,
                             last_seen = excluded.last_seen
                         RETURNING {AGENT_COLS}, clock_timestamp() AS store_now"
                    ),
                    &[
                        &reg.id,
                        &reg.url,
                        &labels,
                        &capabilities,
                        &reg.version,
                        &reg.host,
                        &reg.token_hash,
                        &heartbeat_ms,
                    ],
                )
                .await?;
            let agent = registered_agent(&row)?;
            insert_audit(&tx, &registration_audit(reg, agent.generation, actor)).await?;
            tx.commit().await?;
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
        Box::pin(async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let stored = tx
                .query_opt(
                    "SELECT token_hash FROM agents WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await?;
            let Some(stored) = stored else {
                return Ok(None);
            };
            if !hash_matches(stored.try_get::<_, &str>(0)?, token_hash) {
                return Ok(None);
            }
            let active = i64::try_from(active_faults).unwrap_or(i64::MAX);
            let heartbeat_ms = i64::try_from(heartbeat_ms.max(1)).unwrap_or(i64::MAX);
            let row = tx
                .query_one(
                    &format!(
                        "UPDATE agents SET last_seen = clock_timestamp(), active_faults = $2,
                             heartbeat_ms = $3
                         WHERE id = $1 RETURNING {AGENT_COLS}, clock_timestamp() AS store_now"
                    ),
                    &[&id, &active, &heartbeat_ms],
                )
                .await?;
            let agent = registered_agent(&row)?;
            tx.commit().await?;
            Ok(Some(agent))
        })
    }

    fn list_agents(&self) -> BoxFuture<'_, Result<AgentSnapshot>> {
        Box::pin(async move {
            let c = self.conn().await?;
            // The instant the rows are judged at, from the database clock.
            let at: DateTime<Utc> = c
                .query_one("SELECT clock_timestamp()", &[])
                .await?
                .try_get(0)?;
            let rows = c
                .query(
                    &format!(
                        "SELECT {AGENT_COLS}, $1::timestamptz AS store_now FROM agents ORDER BY id"
                    ),
                    &[&at],
                )
                .await?;
            let agents = rows
                .iter()
                .map(registered_agent)
                .collect::<Result<Vec<_>>>()?;
            Ok(AgentSnapshot { at, agents })
        })
    }

    fn get_agent<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RegisteredAgent>>> {
        Box::pin(async move {
            let c = self.conn().await?;
            one(
                &*c,
                &format!(
                    "SELECT {AGENT_COLS}, clock_timestamp() AS store_now FROM agents WHERE id = $1"
                ),
                &[&id],
                registered_agent,
            )
            .await
        })
    }
    // === replicas (HA) ===

    fn heartbeat_replica<'a>(
        &'a self,
        replica: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Replica>> {
        Box::pin(ha::heartbeat(self, replica, version))
    }

    fn list_replicas(&self) -> BoxFuture<'_, Result<Vec<Replica>>> {
        Box::pin(ha::list_replicas(self))
    }

    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<Option<LeaseGrant>>> {
        Box::pin(ha::acquire_lease(self, name, holder, ttl))
    }

    fn release_lease<'a>(&'a self, name: &'a str, holder: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(ha::release_lease(self, name, holder))
    }

    fn create_owned_run<'a>(
        &'a self,
        new: &'a NewRun,
        owner: &'a RunOwner,
    ) -> BoxFuture<'a, Result<CreatedRun>> {
        Box::pin(ha::create_owned_run(self, new, owner))
    }

    fn fire_slot<'a>(&'a self, fire: &'a SlotFire) -> BoxFuture<'a, Result<SlotFired>> {
        Box::pin(ha::fire_slot(self, fire))
    }

    fn record_slot<'a>(
        &'a self,
        id: &'a str,
        fire: &'a FireRecord,
        by: &'a SlotBy,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(ha::record_slot(self, id, fire, by))
    }

    fn claim_run<'a>(
        &'a self,
        id: &'a str,
        owner: &'a RunOwner,
    ) -> BoxFuture<'a, Result<Option<Run>>> {
        Box::pin(ha::claim_run(self, id, owner))
    }

    fn renew_runs<'a>(&'a self, owner: &'a RunOwner) -> BoxFuture<'a, Result<Vec<OwnedRun>>> {
        Box::pin(ha::renew_runs(self, owner))
    }

    fn run_lease<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RunLease>>> {
        Box::pin(ha::run_lease(self, id))
    }

    fn request_abort<'a>(&'a self, id: &'a str, reason: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(ha::request_abort(self, id, reason))
    }

    fn request_abort_all<'a>(
        &'a self,
        reason: &'a str,
        except: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(ha::request_abort_all(self, reason, except))
    }

    fn sweep_expired_runs<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<Vec<SweptRun>>> {
        Box::pin(ha::sweep_expired_runs(self, actor))
    }

    fn abort_replica_in_flight<'a>(
        &'a self,
        replica: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(ha::abort_replica_in_flight(self, replica, reason))
    }
    // === end replicas (HA) ===
}

// === agents (registry) ===

const AGENT_COLS: &str = "id, url, labels, capabilities, version, host, generation, heartbeat_ms, \
    active_faults, registered_at, last_seen";

/// A row of [`AGENT_COLS`] plus `store_now`, the database's clock it is judged at.
fn registered_agent(row: &Row) -> Result<RegisteredAgent> {
    let heartbeat_ms = u64::try_from(row.try_get::<_, i64>("heartbeat_ms")?)
        .map_err(|e| StoreError::Corrupt(format!("heartbeat_ms: {e}")))?;
    let last_seen: DateTime<Utc> = row.try_get("last_seen")?;
    let now: DateTime<Utc> = row.try_get("store_now")?;
    Ok(RegisteredAgent {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        labels: serde_json::from_value(row.try_get("labels")?)
            .map_err(|e| StoreError::Corrupt(format!("labels: {e}")))?,
        capabilities: serde_json::from_value(row.try_get("capabilities")?)
            .map_err(|e| StoreError::Corrupt(format!("capabilities: {e}")))?,
        version: row.try_get("version")?,
        host: row.try_get("host")?,
        generation: row.try_get("generation")?,
        heartbeat_ms,
        active_faults: u64::try_from(row.try_get::<_, i64>("active_faults")?).unwrap_or(0),
        registered_at: row.try_get("registered_at")?,
        last_seen,
        state: agent_state(last_seen, heartbeat_ms, now),
    })
}
