//! MySQL/MariaDB lock sessions through mysql_async.
//!
//! Table locks: `LOCK TABLES ... READ|WRITE`; row locks: `SELECT ... FOR UPDATE |
//! FOR SHARE` in a transaction; advisory: `GET_LOCK`. The session always also holds
//! `GET_LOCK('faultline:<fault id>')`, a marker by which a revert after a crash
//! finds exactly this connection (`IS_USED_LOCK`) and `KILL`s it. `wait_timeout` is
//! the dead man's switch; `lock_wait_timeout`/`innodb_lock_wait_timeout` bound
//! the wait to acquire.

use std::time::Duration;

use faultline_spec::fault::{FilterValue, LockMode};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Value};

use super::sql::{op_sql, quote_my};
use super::{BlockedSessions, DbError, LockPlan};

pub(crate) struct MySession {
    conn: Conn,
}

fn classify(plan: &LockPlan, e: &mysql_async::Error) -> DbError {
    let target = plan.target();
    match e {
        mysql_async::Error::Server(s) => match s.code {
            1044 | 1045 | 1698 => DbError::Auth {
                target,
                reason: s.message.clone(),
            },
            1049 | 1146 | 1054 => DbError::Missing {
                what: s.message.clone(),
                target,
            },
            1205 => DbError::LockTimeout {
                what: plan.what(),
                timeout: plan.lock_timeout(),
            },
            _ => DbError::Query {
                target,
                reason: format!("{} ({})", s.message, s.code),
            },
        },
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => DbError::Unreachable {
            target,
            reason: e.to_string(),
        },
        other => DbError::Query {
            target,
            reason: other.to_string(),
        },
    }
}

async fn connect(plan: &LockPlan) -> Result<Conn, DbError> {
    let url = plan.spec.url.expose()?;
    // mysql_async reads `mysql://`; accept MariaDB's scheme too.
    let url = url
        .strip_prefix("mariadb://")
        .map_or(url.clone(), |rest| format!("mysql://{rest}"));
    let opts = Opts::from_url(&url)
        .map_err(|e| DbError::BadParams(format!("bad MySQL URL {}: {e}", plan.target())))?;
    let opts = OptsBuilder::from_opts(opts).prefer_socket(false);
    match tokio::time::timeout(Duration::from_secs(5), Conn::new(opts)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(classify(plan, &e)),
        Err(_) => Err(DbError::Unreachable {
            target: plan.target(),
            reason: "connect timed out after 5s".into(),
        }),
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

pub(crate) async fn acquire(plan: &LockPlan) -> Result<MySession, DbError> {
    let mut conn = connect(plan).await?;
    let setup = format!(
        "SET SESSION wait_timeout = {dead}, SESSION lock_wait_timeout = {lt}, SESSION innodb_lock_wait_timeout = {lt}",
        dead = secs(plan.dead_man()),
        lt = secs(plan.lock_timeout())
    );
    let taken = async {
        conn.query_drop(setup).await.map_err(|e| classify(plan, &e))?;
        let marker: Option<i64> = conn
            .exec_first("SELECT GET_LOCK(?, 0)", (plan.session_name.as_str(),))
            .await
            .map_err(|e| classify(plan, &e))?;
        if marker != Some(1) {
            return Err(DbError::Query {
                target: plan.target(),
                reason: format!("the session marker {} is held by another connection: is this fault already active elsewhere?", plan.session_name),
            });
        }
        match (&plan.spec.table, plan.spec.advisory) {
            (Some(table), _) if plan.mode.is_row_mode() => lock_rows(&mut conn, plan, table).await,
            (Some(table), _) => {
                let how = if plan.mode == LockMode::Read { "READ" } else { "WRITE" };
                conn.query_drop(format!("LOCK TABLES {} {how}", quote_my(table))).await.map_err(|e| classify(plan, &e))
            }
            (None, Some(key)) => {
                let got: Option<i64> = conn
                    .exec_first("SELECT GET_LOCK(?, ?)", (format!("faultline-advisory:{key}"), secs(plan.lock_timeout())))
                    .await
                    .map_err(|e| classify(plan, &e))?;
                if got == Some(1) {
                    Ok(())
                } else {
                    Err(DbError::LockTimeout { what: plan.what(), timeout: plan.lock_timeout() })
                }
            }
            (None, None) => Err(DbError::BadParams("expected `table` or `advisory`".into())),
        }
    }
    .await;
    match taken {
        Ok(()) => Ok(MySession { conn }),
        Err(e) => {
            let _ = conn.disconnect().await;
            Err(e)
        }
    }
}

async fn lock_rows(conn: &mut Conn, plan: &LockPlan, table: &str) -> Result<(), DbError> {
    let conds: Vec<String> = plan
        .spec
        .rows
        .iter()
        .map(|f| format!("{} {} ?", quote_my(&f.column), op_sql(f.op)))
        .collect();
    let params: Vec<Value> = plan
        .spec
        .rows
        .iter()
        .map(|f| match &f.value {
            FilterValue::Bool(b) => Value::from(*b),
            FilterValue::Int(n) => Value::from(*n),
            FilterValue::Float(x) => Value::from(*x),
            FilterValue::Text(t) => Value::from(t.as_str()),
        })
        .collect();
    let how = if plan.mode == LockMode::ForShare {
        "LOCK IN SHARE MODE"
    } else {
        "FOR UPDATE"
    };
    conn.query_drop("START TRANSACTION")
        .await
        .map_err(|e| classify(plan, &e))?;
    let rows: Vec<mysql_async::Row> = conn
        .exec(
            format!(
                "SELECT 1 FROM {} WHERE {} {how}",
                quote_my(table),
                conds.join(" AND ")
            ),
            params,
        )
        .await
        .map_err(|e| classify(plan, &e))?;
    if rows.is_empty() {
        return Err(DbError::Missing {
            what: format!("rows of {table} matching the filter"),
            target: plan.target(),
        });
    }
    Ok(())
}

impl MySession {
    pub(crate) async fn keepalive(&mut self) -> Result<(), DbError> {
        self.conn
            .query_drop("DO 1")
            .await
            .map_err(|e| DbError::Query {
                target: String::new(),
                reason: e.to_string(),
            })
    }

    pub(crate) async fn release(mut self) -> Result<(), DbError> {
        // ROLLBACK ends a row-lock transaction; UNLOCK TABLES a table lock; closing
        // the session drops the GET_LOCK marker and advisory lock.
        let r = tokio::time::timeout(Duration::from_secs(2), async {
            self.conn.query_drop("ROLLBACK").await?;
            self.conn.query_drop("UNLOCK TABLES").await
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.disconnect()).await;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DbError::Query {
                target: String::new(),
                reason: e.to_string(),
            }),
            Err(_) => Err(DbError::Query {
                target: String::new(),
                reason: "release timed out".into(),
            }),
        }
    }
}

/// The connection id holding the fault's marker, if any.
async fn holder_id(conn: &mut Conn, plan: &LockPlan) -> Result<Option<u64>, DbError> {
    conn.exec_first::<Option<u64>, _, _>("SELECT IS_USED_LOCK(?)", (plan.session_name.as_str(),))
        .await
        .map(Option::flatten)
        .map_err(|e| classify(plan, &e))
}

/// KILLs the connection that holds the fault's marker (one left by a crashed agent).
pub(crate) async fn end_sessions(plan: &LockPlan) -> Result<(), DbError> {
    let mut conn = connect(plan).await?;
    if let Some(id) = holder_id(&mut conn, plan).await? {
        tracing::info!(fault = %plan.fault_id, connection = id, "killing leftover lock session");
        // Unknown thread id (1094) means it ended meanwhile: that is the goal.
        match conn.query_drop(format!("KILL {id}")).await {
            Ok(()) => {}
            Err(mysql_async::Error::Server(s)) if s.code == 1094 => {}
            Err(e) => return Err(classify(plan, &e)),
        }
    }
    let _ = conn.disconnect().await;
    Ok(())
}

pub(crate) async fn verify_reverted(plan: &LockPlan) -> Result<(), DbError> {
    let mut conn = connect(plan).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let result = loop {
        match holder_id(&mut conn, plan).await? {
            None => break Ok(()),
            Some(id) if tokio::time::Instant::now() >= deadline => {
                break Err(DbError::NotReverted {
                    target: plan.target(),
                    reason: format!(
                        "connection {id} still holds the marker {}",
                        plan.session_name
                    ),
                });
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let _ = conn.disconnect().await;
    result
}

pub(crate) async fn blocked(plan: &LockPlan) -> Result<Option<BlockedSessions>, DbError> {
    let mut conn = connect(plan).await?;
    let Some(holder) = holder_id(&mut conn, plan).await? else {
        let _ = conn.disconnect().await;
        return Ok(Some(BlockedSessions::default()));
    };
    // Table locks show as metadata-lock waits in the processlist; row locks as
    // InnoDB lock waits whose blocking transaction is the holder's.
    let meta: Option<(i64, i64)> = conn
        .exec_first(
            "SELECT COUNT(*), COALESCE(MAX(TIME), 0) FROM information_schema.PROCESSLIST WHERE ID <> ? AND STATE LIKE 'Waiting for%lock'",
            (holder,),
        )
        .await
        .map_err(|e| classify(plan, &e))?;
    let rows: Option<(i64, i64)> = conn
        .exec_first(
            "SELECT COUNT(*), COALESCE(MAX(TIMESTAMPDIFF(SECOND, r.trx_wait_started, NOW())), 0)
               FROM information_schema.INNODB_LOCK_WAITS w
               JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id
               JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id
              WHERE b.trx_mysql_thread_id = ?",
            (holder,),
        )
        .await
        .map_err(|e| classify(plan, &e))?;
    let _ = conn.disconnect().await;
    let (m, mt) = meta.unwrap_or_default();
    let (r, rt) = rows.unwrap_or_default();
    Ok(Some(BlockedSessions {
        waiting: (m + r).max(0) as u64,
        longest_wait: Duration::from_secs(mt.max(rt).max(0) as u64),
    }))
}
