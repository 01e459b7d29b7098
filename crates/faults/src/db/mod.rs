//! `db.lock`: lock stalls on PostgreSQL, MySQL/MariaDB and SQLite.
//!
//! A holder task opens its own session, takes the lock inside a transaction that it
//! always rolls back, holds it for `hold` (or until revert), and starts again every
//! `every`. The fault never writes. Each engine has a server-side dead man's switch,
//! so an agent killed while it holds a lock cannot leave the lock behind for longer
//! than the lease plus a margin:
//!
//! - PostgreSQL: the session sets `idle_in_transaction_session_timeout` and
//!   `statement_timeout` to lease + margin; the holder keeps the session busy with
//!   a cheap `SELECT 1` while it lives. Revert also terminates any backend whose
//!   `application_name` is `faultline:<fault id>`, so a revert after a crash finds
//!   the session by name.
//! - MySQL/MariaDB: `wait_timeout` = lease + margin, keep-alive `DO 1`; the session
//!   also holds `GET_LOCK('faultline:<fault id>')` as a marker, so a revert after a
//!   crash finds its connection id with `IS_USED_LOCK` and `KILL`s exactly it.
//! - SQLite: the lock lives in the holder's file handle; it dies with the process.

mod fault;
mod mysql;
mod postgres;
mod sql;
mod sqlite;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faultline_spec::fault::{DbEngine, DbLock, LockMode};
use faultline_spec::secret::SecretError;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Added to the lease for the server-side timeouts: the holder's keep-alive must
/// never race the server's clock.
pub const DEAD_MAN_MARGIN: Duration = Duration::from_secs(2);

/// What went wrong with a database lock fault. Messages name the database with
/// its password masked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Secret(#[from] SecretError),
    #[error("cannot tell the database engine from `{0}`; set `engine: postgres | mysql | sqlite`")]
    UnknownEngine(String),
    #[error(
        "mode `{mode}` does not apply to {engine}; see docs/experiment-format.md for the modes of each engine"
    )]
    BadMode {
        mode: &'static str,
        engine: &'static str,
    },
    #[error("bad parameters: {0}")]
    BadParams(String),
    #[error("cannot reach {target}: {reason}")]
    Unreachable { target: String, reason: String },
    #[error("authentication failed for {target}: {reason}{}", masked_hint(.target))]
    Auth { target: String, reason: String },
    #[error("{what} does not exist on {target}")]
    Missing { what: String, target: String },
    #[error(
        "could not take the lock on {what} within {timeout:?} (lock_timeout): another session holds a conflicting lock"
    )]
    LockTimeout { what: String, timeout: Duration },
    #[error("{target}: {reason}")]
    Query { target: String, reason: String },
    #[error("revert not confirmed on {target}: {reason}")]
    NotReverted { target: String, reason: String },
}

/// A journal keeps an inline password masked (`user:***@`), so a fault rebuilt
/// from it after a crash cannot log in with it: say how to avoid that.
fn masked_hint(target: &str) -> &'static str {
    if target.contains(":***@") {
        "; the journal keeps inline passwords masked, so a recovery after a crash cannot use them: give the URL as `${env:NAME}` (the agent or the run's guardian resolves it from its environment)"
    } else {
        ""
    }
}

/// Sessions waiting behind the fault's lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockedSessions {
    pub waiting: u64,
    pub longest_wait: Duration,
}

/// The state of a lock fault, for the agent's fault status and the run journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockStatus {
    /// Whether the lock is held right now (false between stalls).
    pub holding: bool,
    /// Stalls started so far.
    pub stalls: u64,
    /// Sessions blocked by the lock, where the engine can tell (not SQLite).
    pub blocked: Option<BlockedSessions>,
    /// The last error of a repeated stall that could not take its lock.
    pub last_error: Option<String>,
}

impl std::fmt::Display for LockStatus {
    /// `holding the lock (stall 3), blocking 4 sessions, longest wait 1.8s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.holding {
            write!(f, "holding the lock (stall {})", self.stalls)?;
        } else {
            write!(f, "between stalls ({} so far)", self.stalls)?;
        }
        if let Some(b) = &self.blocked {
            write!(
                f,
                ", blocking {} session(s), longest wait {:.1}s",
                b.waiting,
                b.longest_wait.as_secs_f64()
            )?;
        }
        if let Some(e) = &self.last_error {
            write!(f, "; last stall failed: {e}")?;
        }
        Ok(())
    }
}

/// How the fault's lock is taken: resolved once from the spec.
#[derive(Debug, Clone)]
pub(crate) struct LockPlan {
    pub fault_id: String,
    pub engine: DbEngine,
    pub mode: LockMode,
    pub spec: DbLock,
    pub lease: Duration,
    /// `faultline:<fault id>`: the session name a DBA sees.
    pub session_name: String,
}

impl LockPlan {
    fn new(fault_id: &str, spec: &DbLock, lease: Duration) -> Result<Self, DbError> {
        let engine = spec
            .resolved_engine()
            .ok_or_else(|| DbError::UnknownEngine(spec.url.redacted()))?;
        let mode = spec.mode.unwrap_or(match engine {
            DbEngine::Postgres => LockMode::AccessExclusive,
            DbEngine::Mysql => LockMode::Write,
            DbEngine::Sqlite => LockMode::Exclusive,
        });
        let engine_name = engine_name(engine);
        if !LockMode::names_for(engine).contains(&mode.name()) {
            return Err(DbError::BadMode {
                mode: mode.name(),
                engine: engine_name,
            });
        }
        if engine != DbEngine::Sqlite && spec.table.is_none() && spec.advisory.is_none() {
            return Err(DbError::BadParams("expected `table` or `advisory`".into()));
        }
        if mode.is_row_mode() && spec.rows.is_empty() {
            return Err(DbError::BadParams(format!(
                "mode `{}` needs `where`",
                mode.name()
            )));
        }
        if let Some(t) = &spec.table {
            sql::check_identifier(t)?;
        }
        for r in &spec.rows {
            sql::check_identifier(&r.column)?;
        }
        let clean: String = fault_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        // PostgreSQL keeps 63 bytes of application_name; GET_LOCK names are 64.
        let mut session_name = format!("faultline:{clean}");
        session_name.truncate(63);
        Ok(LockPlan {
            fault_id: fault_id.to_owned(),
            engine,
            mode,
            spec: spec.clone(),
            lease,
            session_name,
        })
    }

    /// Server-side timeout after which a silent session is ended.
    pub fn dead_man(&self) -> Duration {
        self.lease + DEAD_MAN_MARGIN
    }

    /// How often the holder proves it is alive to the server.
    pub fn keepalive(&self) -> Duration {
        (self.lease / 3).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    pub fn lock_timeout(&self) -> Duration {
        self.spec.lock_timeout.get()
    }

    /// What is locked, for messages: `table jobs`, `advisory lock 42`, `database file`.
    pub fn what(&self) -> String {
        match (&self.spec.table, self.spec.advisory) {
            (Some(t), _) if self.mode.is_row_mode() => format!("rows of {t}"),
            (Some(t), _) => format!("table {t}"),
            (None, Some(k)) => format!("advisory lock {k}"),
            (None, None) => "database file".to_owned(),
        }
    }

    pub fn target(&self) -> String {
        self.spec.url.redacted()
    }
}

pub(crate) fn engine_name(engine: DbEngine) -> &'static str {
    match engine {
        DbEngine::Postgres => "postgres",
        DbEngine::Mysql => "mysql",
        DbEngine::Sqlite => "sqlite",
    }
}

/// A held lock: kept alive while the holder lives, given back on release.
pub(crate) enum Session {
    Postgres(postgres::PgSession),
    Mysql(mysql::MySession),
    Sqlite(sqlite::LiteSession),
}

impl Session {
    async fn keepalive(&mut self) -> Result<(), DbError> {
        match self {
            Session::Postgres(s) => s.keepalive().await,
            Session::Mysql(s) => s.keepalive().await,
            Session::Sqlite(_) => Ok(()),
        }
    }

    /// Rolls back and closes. Errors are logged: the server-side clean-up in
    /// `revert` and the dead man's switch cover a session that cannot be closed.
    async fn release(self) {
        let result = match self {
            Session::Postgres(s) => s.release().await,
            Session::Mysql(s) => s.release().await,
            Session::Sqlite(s) => s.release().await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "lock session did not close cleanly; the server-side clean-up ends it");
        }
    }
}

async fn acquire(plan: &LockPlan) -> Result<Session, DbError> {
    match plan.engine {
        DbEngine::Postgres => postgres::acquire(plan).await.map(Session::Postgres),
        DbEngine::Mysql => mysql::acquire(plan).await.map(Session::Mysql),
        DbEngine::Sqlite => sqlite::acquire(plan).await.map(Session::Sqlite),
    }
}

/// A `db.lock` fault on one database.
#[derive(Debug)]
pub struct DbLockFault {
    plan: LockPlan,
    holder: Mutex<Option<Holder>>,
    status: Arc<Mutex<LockStatus>>,
}

#[derive(Debug)]
struct Holder {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl DbLockFault {
    /// Checks the parameters; touches nothing.
    pub fn new(fault_id: &str, spec: &DbLock, lease: Duration) -> Result<Self, DbError> {
        Ok(DbLockFault {
            plan: LockPlan::new(fault_id, spec, lease)?,
            holder: Mutex::new(None),
            status: Arc::new(Mutex::new(LockStatus::default())),
        })
    }

    /// The name the lock session carries (`application_name`, `GET_LOCK` marker).
    pub fn session_name(&self) -> &str {
        &self.plan.session_name
    }

    /// Takes the lock for the first stall and returns once it is held; an error
    /// (unreachable database, wrong credentials, missing table, lock not available
    /// within `lock_timeout`) leaves nothing held. Repeated stalls run in the
    /// background until `revert`. Injecting an active fault again is a no-op.
    pub async fn inject(&self) -> Result<(), DbError> {
        if self.holder_active() {
            return Ok(());
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let (first_tx, first_rx) = oneshot::channel();
        let task = tokio::spawn(hold_loop(
            self.plan.clone(),
            stop_rx,
            first_tx,
            self.status.clone(),
        ));
        match first_rx.await {
            Ok(Ok(())) => {
                if let Ok(mut h) = self.holder.lock() {
                    *h = Some(Holder {
                        stop: stop_tx,
                        task,
                    });
                }
                Ok(())
            }
            Ok(Err(e)) => {
                let _ = task.await;
                Err(e)
            }
            Err(_) => Err(DbError::Query {
                target: self.plan.target(),
                reason: "the lock holder stopped before taking the lock".into(),
            }),
        }
    }

    fn holder_active(&self) -> bool {
        self.holder
            .lock()
            .map(|h| h.as_ref().is_some_and(|h| !h.task.is_finished()))
            .unwrap_or(false)
    }

    /// Ends every stall: rolls back the holder's transaction, closes its session,
    /// then ends any session still carrying this fault's name (one left by a
    /// crashed agent), and verifies. Idempotent: reverting a reverted fault, or one
    /// never injected in this process, only cleans up and verifies.
    pub async fn revert(&self) -> Result<(), DbError> {
        let holder = self.holder.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = holder {
            let _ = h.stop.send(true);
            let mut task = h.task;
            if tokio::time::timeout(Duration::from_secs(3), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        match self.plan.engine {
            DbEngine::Postgres => postgres::end_sessions(&self.plan).await?,
            DbEngine::Mysql => mysql::end_sessions(&self.plan).await?,
            DbEngine::Sqlite => {}
        }
        if let Ok(mut s) = self.status.lock() {
            s.holding = false;
            s.blocked = None;
        }
        self.verify_reverted().await
    }

    /// Checks from outside that nothing of the fault is left: no session with its
    /// name (PostgreSQL), no connection holding its marker (MySQL), the database
    /// file can take a write lock (SQLite).
    pub async fn verify_reverted(&self) -> Result<(), DbError> {
        match self.plan.engine {
            DbEngine::Postgres => postgres::verify_reverted(&self.plan).await,
            DbEngine::Mysql => mysql::verify_reverted(&self.plan).await,
            DbEngine::Sqlite => sqlite::verify_reverted(&self.plan).await,
        }
    }

    /// The fault's state, with the sessions its lock blocks right now.
    pub async fn status(&self) -> LockStatus {
        let mut status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        if status.holding {
            let blocked = match self.plan.engine {
                DbEngine::Postgres => postgres::blocked(&self.plan).await,
                DbEngine::Mysql => mysql::blocked(&self.plan).await,
                DbEngine::Sqlite => Ok(None),
            };
            match blocked {
                Ok(b) => status.blocked = b,
                Err(e) => status.last_error = Some(e.to_string()),
            }
        }
        status
    }
}

impl Drop for DbLockFault {
    fn drop(&mut self) {
        // A dropped fault must not keep holding: stop the holder; its session
        // rolls back as the task ends.
        if let Ok(mut h) = self.holder.lock()
            && let Some(h) = h.take()
        {
            let _ = h.stop.send(true);
        }
    }
}

async fn hold_loop(
    plan: LockPlan,
    mut stop: watch::Receiver<bool>,
    first: oneshot::Sender<Result<(), DbError>>,
    status: Arc<Mutex<LockStatus>>,
) {
    let mut first = Some(first);
    let hold = plan.spec.hold.map(|h| h.get());
    let every = plan.spec.every.map(|e| e.get());
    loop {
        let stall_start = Instant::now();
        let mut session = match acquire(&plan).await {
            Ok(s) => s,
            Err(e) => {
                if let Some(f) = first.take() {
                    let _ = f.send(Err(e));
                    return;
                }
                tracing::warn!(fault = %plan.fault_id, error = %e, "a repeated stall could not take its lock");
                if let Ok(mut s) = status.lock() {
                    s.last_error = Some(e.to_string());
                }
                match every {
                    Some(every) if wait_or_stop(&mut stop, stall_start + every).await => continue,
                    _ => return,
                }
            }
        };
        if let Ok(mut s) = status.lock() {
            s.holding = true;
            s.stalls += 1;
        }
        if let Some(f) = first.take() {
            let _ = f.send(Ok(()));
        }
        tracing::info!(fault = %plan.fault_id, what = %plan.what(), "lock held");
        let release_at = hold.map(|h| stall_start + h);
        let stopped = loop {
            let next = Instant::now() + plan.keepalive();
            let wake = release_at.map_or(next, |r| r.min(next));
            if !wait_or_stop(&mut stop, wake).await {
                break true;
            }
            if release_at.is_some_and(|r| Instant::now() >= r) {
                break false;
            }
            if let Err(e) = session.keepalive().await {
                tracing::warn!(fault = %plan.fault_id, error = %e, "lock session lost");
                if let Ok(mut s) = status.lock() {
                    s.last_error = Some(e.to_string());
                }
                break false;
            }
        };
        session.release().await;
        if let Ok(mut s) = status.lock() {
            s.holding = false;
        }
        tracing::info!(fault = %plan.fault_id, "lock released");
        if stopped {
            return;
        }
        match every {
            Some(every) => {
                if !wait_or_stop(&mut stop, stall_start + every).await {
                    return;
                }
            }
            // One stall of `hold`, then nothing until revert.
            None => {
                let _ = stop.wait_for(|s| *s).await;
                return;
            }
        }
    }
}

/// Sleeps until `deadline`; false when stopped first.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, deadline: Instant) -> bool {
    if *stop.borrow() {
        return false;
    }
    let stopped = tokio::select! {
        _ = tokio::time::sleep_until(deadline.into()) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    !stopped && !*stop.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> DbLock {
        serde_yaml::from_str(yaml).expect("spec parses")
    }

    #[test]
    fn plans_check_mode_engine_and_identifiers() {
        let ok = LockPlan::new(
            "f 1/x",
            &spec("{ url: 'postgres://a@h/d', table: jobs }"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(ok.mode, LockMode::AccessExclusive);
        assert_eq!(ok.session_name, "faultline:f_1_x");
        assert_eq!(ok.dead_man(), Duration::from_secs(7));
        assert!(matches!(
            LockPlan::new(
                "f",
                &spec("{ url: 'mysql://a@h/d', table: jobs, mode: share }"),
                Duration::from_secs(5)
            ),
            Err(DbError::BadMode { .. })
        ));
        assert!(matches!(
            LockPlan::new(
                "f",
                &spec("{ url: 'postgres://a@h/d', table: 'x; drop' }"),
                Duration::from_secs(5)
            ),
            Err(DbError::BadParams(_))
        ));
        assert!(matches!(
            LockPlan::new(
                "f",
                &spec("{ url: '${env:X}', table: jobs }"),
                Duration::from_secs(5)
            ),
            Err(DbError::UnknownEngine(_))
        ));
    }
}
