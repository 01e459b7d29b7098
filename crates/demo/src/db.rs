//! The jobs table, written by one dedicated thread that owns the SQLite connection.
//! Handlers send it operations over a bounded queue and await the answer, so a
//! database stall never blocks the async runtime, and SQLite's busy timeout (not a
//! pile of competing connections) decides how long a write waits for a lock.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rusqlite::{Connection, ErrorCode, params};
use tokio::sync::{mpsc, oneshot};

use crate::DemoError;

/// Operations waiting for the writer; one more is answered 503 at once.
const QUEUE: usize = 1024;

/// The busy timeout while the database is set up, whatever the configuration says:
/// even the fragile demo should start next to a lock that comes and goes.
const SETUP_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY,
    prompt      TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('running', 'done')),
    created_at  TEXT    NOT NULL,
    finished_at TEXT
);";

const INSERT: &str = "INSERT INTO jobs (prompt, status, created_at) \
     VALUES (?1, 'running', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))";
const FINISH: &str = "UPDATE jobs SET status = 'done', \
     finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1";

enum Op {
    Insert {
        prompt: String,
        reply: oneshot::Sender<Result<i64, DbError>>,
    },
    Finish {
        id: i64,
        reply: oneshot::Sender<Result<(), DbError>>,
    },
}

/// Why a database operation failed, as the service answers it.
#[derive(Debug)]
pub(crate) enum DbError {
    /// Someone else held the lock past the busy timeout (SQLITE_BUSY / LOCKED).
    Busy,
    /// The writer's queue is full.
    Overloaded,
    /// The writer is gone (the demo is stopping).
    Closed,
    /// Anything else SQLite said.
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for DbError {
    fn from(err: rusqlite::Error) -> Self {
        match err.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => DbError::Busy,
            _ => DbError::Sqlite(err),
        }
    }
}

impl IntoResponse for DbError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            DbError::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database is locked".to_owned(),
            ),
            DbError::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "job queue is full".to_owned(),
            ),
            DbError::Closed => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service is shutting down".to_owned(),
            ),
            DbError::Sqlite(err) => {
                tracing::warn!(%err, "demo database error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("database error: {err}"),
                )
            }
        };
        let mut response = crate::service::error(status, &message);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A handle on the writer thread.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    queue: mpsc::Sender<Op>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Insert { .. } => f.write_str("Insert"),
            Op::Finish { id, .. } => write!(f, "Finish({id})"),
        }
    }
}

impl Db {
    /// Opens (creating its directory, the file and the table) the database and
    /// starts the writer thread. Blocking.
    pub(crate) fn open(
        path: &Path,
        busy_timeout: Duration,
    ) -> Result<(Db, JoinHandle<()>), DemoError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| DemoError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let db_err = |source| DemoError::Database {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(db_err)?;
        conn.busy_timeout(SETUP_BUSY_TIMEOUT).map_err(db_err)?;
        // WAL: readers never wait for the writer, and a lock fault's BEGIN IMMEDIATE
        // stalls exactly the writes. NORMAL sync is the usual WAL pairing.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(%mode, "the demo's jobs database is not in WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL;")
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        conn.busy_timeout(busy_timeout).map_err(db_err)?;

        let (queue, ops) = mpsc::channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("demo-sqlite".to_owned())
            .spawn(move || write(conn, ops))
            .map_err(DemoError::Writer)?;
        Ok((Db { queue }, writer))
    }

    /// Inserts a running job; its id.
    pub(crate) async fn insert(&self, prompt: String) -> Result<i64, DbError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Insert { prompt, reply })?;
        answer.await.map_err(|_| DbError::Closed)?
    }

    /// Marks a job done.
    pub(crate) async fn finish(&self, id: i64) -> Result<(), DbError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Finish { id, reply })?;
        answer.await.map_err(|_| DbError::Closed)?
    }

    fn send(&self, op: Op) -> Result<(), DbError> {
        self.queue.try_send(op).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => DbError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => DbError::Closed,
        })
    }
}

/// The writer thread: one operation at a time until every handle is gone.
/// Operations whose request was abandoned (client gone, gateway timed out) are
/// skipped rather than written for nobody.
fn write(conn: Connection, mut ops: mpsc::Receiver<Op>) {
    while let Some(op) = ops.blocking_recv() {
        match op {
            Op::Insert { prompt, reply } => {
                if reply.is_closed() {
                    continue;
                }
                let result = conn
                    .prepare_cached(INSERT)
                    .and_then(|mut stmt| stmt.execute(params![prompt]))
                    .map(|_| conn.last_insert_rowid())
                    .map_err(DbError::from);
                let _ = reply.send(result);
            }
            Op::Finish { id, reply } => {
                if reply.is_closed() {
                    continue;
                }
                let result = conn
                    .prepare_cached(FINISH)
                    .and_then(|mut stmt| stmt.execute(params![id]))
                    .map(|_| ())
                    .map_err(DbError::from);
                let _ = reply.send(result);
            }
        }
    }
    if let Err((_, err)) = conn.close() {
        tracing::debug!(%err, "the demo's jobs database did not close cleanly");
    }
}
