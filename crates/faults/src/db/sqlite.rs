//! SQLite lock sessions through rusqlite, on a thread of their own (SQLite is
//! blocking). `immediate` takes the RESERVED lock (`BEGIN IMMEDIATE`): writers wait,
//! readers go on. `exclusive` takes the EXCLUSIVE lock (`BEGIN EXCLUSIVE` and, in WAL
//! mode, `locking_mode=EXCLUSIVE` with a read, since in WAL mode EXCLUSIVE alone does
//! not keep readers out): readers wait too. Nothing is written; the transaction
//! rolls back and the connection closes on release. The lock lives in this
//! process's file handle, so it dies with the process.

use std::sync::mpsc;
use std::time::Duration;

use faultline_spec::fault::LockMode;
use rusqlite::{Connection, OpenFlags};

use super::{DbError, LockPlan};

pub(crate) struct LiteSession {
    release: mpsc::Sender<()>,
    done: tokio::sync::oneshot::Receiver<()>,
}

/// The file a `sqlite:` URL names: `sqlite:///abs/path.db`, `sqlite://rel.db`,
/// `sqlite:path.db`, with any `?query` dropped.
pub(crate) fn path_of(url: &str) -> Result<String, DbError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() {
        return Err(DbError::BadParams(format!("no database file in `{url}`")));
    }
    Ok(path.to_owned())
}

fn open(plan: &LockPlan) -> Result<(Connection, String), DbError> {
    let path = path_of(&plan.spec.url.expose()?)?;
    // Never create the file: a typo must not conjure an empty database.
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| DbError::Unreachable {
        target: path.clone(),
        reason: e.to_string(),
    })?;
    conn.busy_timeout(plan.lock_timeout())
        .map_err(|e| DbError::Query {
            target: path.clone(),
            reason: e.to_string(),
        })?;
    Ok((conn, path))
}

fn take(conn: &Connection, plan: &LockPlan, path: &str) -> Result<(), DbError> {
    let err = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
            DbError::LockTimeout {
                what: plan.what(),
                timeout: plan.lock_timeout(),
            }
        }
        _ => DbError::Query {
            target: path.to_owned(),
            reason: e.to_string(),
        },
    };
    if plan.mode == LockMode::Immediate {
        return conn.execute_batch("BEGIN IMMEDIATE").map_err(err);
    }
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(err)?;
    if journal.eq_ignore_ascii_case("wal") {
        conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE")
            .map_err(err)?;
    }
    conn.execute_batch("BEGIN EXCLUSIVE").map_err(err)?;
    // A read makes sure the lock is taken on the file now, in every journal mode.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(err)?;
    Ok(())
}

pub(crate) async fn acquire(plan: &LockPlan) -> Result<LiteSession, DbError> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let plan = plan.clone();
    std::thread::Builder::new()
        .name("faultline-sqlite-lock".into())
        .spawn(move || {
            let held =
                open(&plan).and_then(|(conn, path)| take(&conn, &plan, &path).map(|()| conn));
            match held {
                Ok(conn) => {
                    let _ = ready_tx.send(Ok(()));
                    // Hold until released, or until the fault is dropped.
                    let _ = release_rx.recv();
                    let _ = conn.execute_batch("ROLLBACK");
                    drop(conn);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
            let _ = done_tx.send(());
        })
        .map_err(|e| DbError::Query {
            target: plan_target(),
            reason: format!("cannot start the lock thread: {e}"),
        })?;
    match ready_rx.await {
        Ok(Ok(())) => Ok(LiteSession {
            release: release_tx,
            done: done_rx,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(DbError::Query {
            target: plan_target(),
            reason: "the lock thread ended".into(),
        }),
    }
}

fn plan_target() -> String {
    "sqlite".to_owned()
}

impl LiteSession {
    pub(crate) async fn release(self) -> Result<(), DbError> {
        let _ = self.release.send(());
        tokio::time::timeout(Duration::from_secs(2), self.done)
            .await
            .map(|_| ())
            .map_err(|_| DbError::Query {
                target: plan_target(),
                reason: "release timed out".into(),
            })
    }
}

/// A fresh connection can take the write lock at once (and read, for exclusive).
pub(crate) async fn verify_reverted(plan: &LockPlan) -> Result<(), DbError> {
    let plan = plan.clone();
    tokio::task::spawn_blocking(move || {
        let (conn, path) = open(&plan)?;
        conn.busy_timeout(Duration::from_millis(200))
            .map_err(|e| DbError::Query {
                target: path.clone(),
                reason: e.to_string(),
            })?;
        let check = conn
            .execute_batch("BEGIN IMMEDIATE; SELECT count(*) FROM sqlite_master; ROLLBACK")
            .map_err(|e| DbError::NotReverted {
                target: path.clone(),
                reason: format!("the database is still locked: {e}"),
            });
        drop(conn);
        check
    })
    .await
    .map_err(|e| DbError::Query {
        target: plan_target(),
        reason: e.to_string(),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_files() {
        assert_eq!(path_of("sqlite:///tmp/a.db").unwrap(), "/tmp/a.db");
        assert_eq!(path_of("sqlite://rel.db?mode=rw").unwrap(), "rel.db");
        assert_eq!(path_of("sqlite:x.db").unwrap(), "x.db");
        assert!(path_of("sqlite://").is_err());
    }
}
