//! SQL probe: one timed query per attempt; the first column of the first row is the
//! measured value (when it is a number).
//!
//! Each attempt opens its own connection, so it measures what a new client of the
//! database sees (connect, authenticate, query), and a broken connection never
//! outlives one attempt.
//!
//! - SQLite, through rusqlite (bundled): opens the database read-write without
//!   creating it (a probe must not conjure an empty database), waits at most the
//!   probe's timeout for locks (`busy_timeout`), and is interrupted if the attempt
//!   is abandoned.
//! - PostgreSQL, through tokio-postgres without TLS: the query runs with the
//!   simple protocol (the value is read from its text), and a query still running
//!   when the attempt is abandoned is cancelled on the server.
//! - MySQL and MariaDB, through mysql_async without TLS: the query runs with the
//!   text protocol (the value is read from its first column), and a query still
//!   running when the attempt is abandoned is killed on the server (`KILL QUERY`
//!   from a second connection), so a probe stuck behind a lock does not keep
//!   waiting there.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use faultline_spec::fault::DbEngine;
use faultline_spec::probe::SqlProbe;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, InterruptHandle, OpenFlags};
use tokio_postgres::{CancelToken, NoTls, SimpleQueryMessage};

use crate::error::ProbeError;
use crate::window::FailureKind;

/// A prepared SQL query for one engine.
#[derive(Debug, Clone)]
pub enum SqlQuery {
    Sqlite(SqliteQuery),
    Postgres(Box<PgQuery>),
    Mysql(Box<MyQuery>),
}

impl SqlQuery {
    /// Resolves the URL (a secret) and picks the engine.
    pub fn new(spec: &SqlProbe) -> Result<Self, ProbeError> {
        let url = spec.url.expose()?;
        match spec.engine.or_else(|| engine_of(&url)) {
            Some(DbEngine::Sqlite) => SqliteQuery::new(spec, &url).map(SqlQuery::Sqlite),
            Some(DbEngine::Postgres) => {
                PgQuery::new(spec, &url).map(|q| SqlQuery::Postgres(Box::new(q)))
            }
            Some(DbEngine::Mysql) => MyQuery::new(spec, &url).map(|q| SqlQuery::Mysql(Box::new(q))),
            None => Err(ProbeError::Sql(format!(
                "cannot tell the engine from `{}`; set `engine`",
                spec.url
            ))),
        }
    }

    /// Runs the query once.
    pub async fn attempt(&self) -> Result<Option<f64>, FailureKind> {
        match self {
            SqlQuery::Sqlite(q) => q.attempt().await,
            SqlQuery::Postgres(q) => q.attempt().await,
            SqlQuery::Mysql(q) => q.attempt().await,
        }
    }
}

// === impl PgQuery ===

/// A prepared PostgreSQL query. Its `Debug` shows no connection details.
#[derive(Clone)]
pub struct PgQuery {
    config: tokio_postgres::Config,
    query: String,
}

impl std::fmt::Debug for PgQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgQuery")
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

impl PgQuery {
    fn new(spec: &SqlProbe, url: &str) -> Result<Self, ProbeError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            ProbeError::Sql(format!(
                "`{}` is not a PostgreSQL connection string: {e}",
                spec.url
            ))
        })?;
        config.connect_timeout(spec.timeout.get());
        config.application_name("faultline-probe");
        Ok(PgQuery {
            config,
            query: spec.query.clone(),
        })
    }

    pub async fn attempt(&self) -> Result<Option<f64>, FailureKind> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| {
            tracing::debug!(error = %e, "postgres probe cannot connect");
            FailureKind::Connect
        })?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres probe connection ended");
            }
        });
        let mut cancel = CancelOnDrop(Some(client.cancel_token()));
        let result = client.simple_query(&self.query).await;
        cancel.0 = None;
        drop(client);
        driver.abort();
        let messages = result.map_err(|e| {
            tracing::debug!(error = %e, "postgres probe query failed");
            if e.is_closed() {
                FailureKind::Connect
            } else {
                FailureKind::Other
            }
        })?;
        Ok(messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(0).and_then(|v| v.trim().parse().ok())),
                _ => None,
            })
            .flatten())
    }
}

/// Cancels the query on the server when the attempt is abandoned (timed out,
/// stopped), so a probe stuck behind a lock does not keep waiting there.
struct CancelOnDrop(Option<CancelToken>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let (Some(token), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                if let Err(e) = token.cancel_query(NoTls).await {
                    tracing::debug!(error = %e, "postgres probe could not cancel its query");
                }
            });
        }
    }
}

// === impl MyQuery ===

/// A prepared MySQL/MariaDB query. Its `Debug` shows no connection details.
#[derive(Clone)]
pub struct MyQuery {
    opts: mysql_async::Opts,
    query: String,
}

impl std::fmt::Debug for MyQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MyQuery")
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

impl MyQuery {
    fn new(spec: &SqlProbe, url: &str) -> Result<Self, ProbeError> {
        // mysql_async reads `mysql://`; accept MariaDB's scheme too.
        let url = url
            .strip_prefix("mariadb://")
            .map_or_else(|| url.to_owned(), |rest| format!("mysql://{rest}"));
        let opts = mysql_async::Opts::from_url(&url)
            .map_err(|e| ProbeError::Sql(format!("`{}` is not a MySQL URL: {e}", spec.url)))?;
        let opts = mysql_async::OptsBuilder::from_opts(opts)
            .prefer_socket(false)
            .into();
        Ok(MyQuery {
            opts,
            query: spec.query.clone(),
        })
    }

    pub async fn attempt(&self) -> Result<Option<f64>, FailureKind> {
        use mysql_async::prelude::Queryable as _;
        let mut conn = mysql_async::Conn::new(self.opts.clone())
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "mysql probe cannot connect");
                FailureKind::Connect
            })?;
        let mut kill = KillOnDrop(Some((self.opts.clone(), conn.id())));
        let result: Result<Option<mysql_async::Row>, _> = conn.query_first(&self.query).await;
        kill.0 = None;
        if let Err(e) = conn.disconnect().await {
            tracing::debug!(error = %e, "mysql probe disconnect");
        }
        let row = result.map_err(|e| {
            tracing::debug!(error = %e, "mysql probe query failed");
            match e {
                mysql_async::Error::Io(_) => FailureKind::Connect,
                _ => FailureKind::Other,
            }
        })?;
        Ok(row.and_then(|r| match r.as_ref(0)? {
            mysql_async::Value::Int(i) => Some(*i as f64),
            mysql_async::Value::UInt(u) => Some(*u as f64),
            mysql_async::Value::Float(f) => Some(f64::from(*f)),
            mysql_async::Value::Double(d) => Some(*d),
            mysql_async::Value::Bytes(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
            _ => None,
        }))
    }
}

/// Kills the query on the server when the attempt is abandoned (timed out,
/// stopped): the server would otherwise go on waiting for a lock for nobody.
struct KillOnDrop(Option<(mysql_async::Opts, u32)>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let (Some((opts, id)), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                use mysql_async::prelude::Queryable as _;
                match mysql_async::Conn::new(opts).await {
                    Ok(mut c) => {
                        if let Err(e) = c.query_drop(format!("KILL QUERY {id}")).await {
                            tracing::debug!(error = %e, "mysql probe could not kill its query");
                        }
                        let _ = c.disconnect().await;
                    }
                    Err(e) => tracing::debug!(error = %e, "mysql probe could not kill its query"),
                }
            });
        }
    }
}

// === impl SqliteQuery ===

/// A prepared SQLite query.
#[derive(Debug, Clone)]
pub struct SqliteQuery {
    path: String,
    query: String,
    timeout: Duration,
}

impl SqliteQuery {
    fn new(spec: &SqlProbe, url: &str) -> Result<Self, ProbeError> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url)
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
