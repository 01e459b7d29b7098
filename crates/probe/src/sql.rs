//! SQL probe: one timed query per attempt; the first column of the first row is the
//! measured value (when it is a number).
//!
//! SQLite only, through rusqlite (bundled): each attempt opens the database
//! read-write without creating it (a probe must not conjure an empty database),
//! waits at most the probe's timeout for locks (`busy_timeout`), and is interrupted
//! if the attempt is abandoned. PostgreSQL and MySQL probes are refused at start
//! with an error that says so; they are not implemented yet.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use faultline_spec::fault::DbEngine;
use faultline_spec::probe::SqlProbe;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, InterruptHandle, OpenFlags};

use crate::error::ProbeError;
use crate::window::FailureKind;

/// A prepared SQLite query.
#[derive(Debug, Clone)]
pub struct SqliteQuery {
    path: String,
    query: String,
    timeout: Duration,
}

impl SqliteQuery {
    /// Resolves the URL (a secret) and checks the engine.
    pub fn new(spec: &SqlProbe) -> Result<Self, ProbeError> {
        let url = spec.url.expose()?;
        let engine = spec.engine.or_else(|| engine_of(&url));
        match engine {
            Some(DbEngine::Sqlite) => {}
            Some(e @ (DbEngine::Postgres | DbEngine::Mysql)) => {
                return Err(ProbeError::Sql(format!(
                    "{} probes are not implemented yet; only sqlite is",
                    match e {
                        DbEngine::Postgres => "postgres",
                        _ => "mysql",
                    }
                )));
            }
            None => {
                return Err(ProbeError::Sql(format!(
                    "cannot tell the engine from `{}`; set `engine`",
                    spec.url
                )));
            }
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(&url)
            .to_owned();
        if path.is_empty() {
            return Err(ProbeError::Sql(format!(
                "`{}` names no database file",
                spec.url
            )));
        }
        Ok(SqliteQuery {
            path,
            query: spec.query.clone(),
            timeout: spec.timeout.get(),
        })
    }

    /// Runs the query once on a blocking thread.
    pub async fn attempt(&self) -> Result<Option<f64>, FailureKind> {
        let this = self.clone();
        let interrupt: Arc<Mutex<Option<InterruptHandle>>> = Arc::default();
        let guard = InterruptOnDrop(Arc::clone(&interrupt));
        let result = tokio::task::spawn_blocking(move || this.run(&interrupt))
            .await
            .map_err(|_| FailureKind::Other)?;
        // Finished: nothing left to interrupt.
        guard
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        result
    }

    fn run(&self, interrupt: &Mutex<Option<InterruptHandle>>) -> Result<Option<f64>, FailureKind> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| {
            tracing::debug!(error = %e, "sqlite probe cannot open the database");
            FailureKind::Connect
        })?;
        conn.busy_timeout(self.timeout)
            .map_err(|_| FailureKind::Other)?;
        *interrupt.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(conn.get_interrupt_handle());
        let mut stmt = conn.prepare(&self.query).map_err(|e| {
            tracing::debug!(error = %e, "sqlite probe query does not prepare");
            FailureKind::Other
        })?;
        let mut rows = stmt.query([]).map_err(|_| FailureKind::Other)?;
        let row = rows.next().map_err(|e| {
            tracing::debug!(error = %e, "sqlite probe query failed");
            FailureKind::Other
        })?;
        Ok(row.and_then(|r| match r.get_ref(0).ok()? {
            ValueRef::Integer(i) => Some(i as f64),
            ValueRef::Real(f) => Some(f),
            ValueRef::Text(t) => std::str::from_utf8(t).ok()?.trim().parse().ok(),
            ValueRef::Null | ValueRef::Blob(_) => None,
        }))
    }
}

/// Interrupts the running query when the attempt is abandoned (timed out, stopped).
struct InterruptOnDrop(Arc<Mutex<Option<InterruptHandle>>>);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.lock().unwrap_or_else(PoisonError::into_inner).take() {
            h.interrupt();
        }
    }
}

fn engine_of(url: &str) -> Option<DbEngine> {
    if url.starts_with("sqlite:") {
        Some(DbEngine::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Some(DbEngine::Postgres)
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        Some(DbEngine::Mysql)
    } else {
        None
    }
}
