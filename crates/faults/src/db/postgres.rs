//! PostgreSQL lock sessions through tokio-postgres.
//!
//! The session is named `faultline:<fault id>` (application_name), so a DBA sees
//! who holds the lock and a revert after a crash can end it by name. Table locks:
//! `LOCK TABLE ... IN <mode> MODE`; row locks: `SELECT 1 FROM ... WHERE ... FOR
//! <mode>` with bound values; advisory: `pg_advisory_xact_lock`. All inside a
//! transaction that is rolled back; `lock_timeout` bounds the wait to acquire.

use std::str::FromStr;
use std::time::Duration;

use faultline_spec::fault::{FilterValue, LockMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls};

use super::sql::{op_sql, quote_pg};
use super::{BlockedSessions, DbError, LockPlan};

pub(crate) struct PgSession {
    client: Client,
    conn: tokio::task::JoinHandle<()>,
}

fn classify(plan: &LockPlan, e: &tokio_postgres::Error) -> DbError {
    let target = plan.target();
    match e.code() {
        Some(c)
            if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            DbError::Auth {
                target,
                reason: e.to_string(),
            }
        }
        Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE => DbError::LockTimeout {
            what: plan.what(),
            timeout: plan.lock_timeout(),
        },
        Some(c)
            if *c == SqlState::UNDEFINED_TABLE
                || *c == SqlState::UNDEFINED_COLUMN
                || *c == SqlState::INVALID_CATALOG_NAME =>
        {
            DbError::Missing {
                what: e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
                target,
            }
        }
        Some(_) => DbError::Query {
            target,
            reason: e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
        },
        None if e.is_closed() => DbError::Query {
            target,
            reason: "connection closed".into(),
        },
        None => match std::error::Error::source(e) {
            Some(io) if io.is::<std::io::Error>() => DbError::Unreachable {
                target,
                reason: io.to_string(),
            },
            _ => DbError::Query {
                target,
                reason: e.to_string(),
            },
        },
    }
}

async fn connect(
    plan: &LockPlan,
    app: &str,
) -> Result<(Client, tokio::task::JoinHandle<()>), DbError> {
    let url = plan.spec.url.expose()?;
    let mut config = Config::from_str(&url).map_err(|e| {
        DbError::BadParams(format!(
            "bad PostgreSQL connection string {}: {e}",
            plan.target()
        ))
    })?;
    config.application_name(app);
    config.connect_timeout(Duration::from_secs(5));
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| classify(plan, &e))?;
    let conn = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok((client, conn))
}

fn mode_sql(mode: LockMode) -> &'static str {
    match mode {
        LockMode::AccessShare => "ACCESS SHARE",
        LockMode::RowShare => "ROW SHARE",
        LockMode::RowExclusive => "ROW EXCLUSIVE",
        LockMode::ShareUpdateExclusive => "SHARE UPDATE EXCLUSIVE",
        LockMode::Share => "SHARE",
        LockMode::ShareRowExclusive => "SHARE ROW EXCLUSIVE",
        LockMode::Exclusive => "EXCLUSIVE",
        LockMode::ForUpdate => "UPDATE",
        LockMode::ForNoKeyUpdate => "NO KEY UPDATE",
        LockMode::ForShare => "SHARE",
        LockMode::ForKeyShare => "KEY SHARE",
        // LockPlan::new admits only PostgreSQL modes here.
        LockMode::AccessExclusive | LockMode::Read | LockMode::Write | LockMode::Immediate => {
            "ACCESS EXCLUSIVE"
        }
    }
}

pub(crate) async fn acquire(plan: &LockPlan) -> Result<PgSession, DbError> {
    let (client, conn) = connect(plan, &plan.session_name).await?;
    let ms = |d: Duration| d.as_millis().max(1);
    // The dead man's switch: a holder that stops talking (a killed agent) loses
    // the session, and with it the lock, lease + margin later.
    let setup = format!(
        "SET idle_in_transaction_session_timeout = {}; SET statement_timeout = {}; SET lock_timeout = {}; BEGIN",
        ms(plan.dead_man()),
        ms(plan.dead_man()),
        ms(plan.lock_timeout())
    );
    client
        .batch_execute(&setup)
        .await
        .map_err(|e| classify(plan, &e))?;
    let session = PgSession { client, conn };
    let taken = match (&plan.spec.table, plan.spec.advisory) {
        (Some(table), _) if plan.mode.is_row_mode() => {
            lock_rows(&session.client, plan, table).await
        }
        (Some(table), _) => session
            .client
            .batch_execute(&format!(
                "LOCK TABLE {} IN {} MODE",
                quote_pg(table),
                mode_sql(plan.mode)
            ))
            .await
            .map_err(|e| classify(plan, &e)),
        (None, Some(key)) => session
            .client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&key])
            .await
            .map(|_| ())
            .map_err(|e| classify(plan, &e)),
        (None, None) => Err(DbError::BadParams("expected `table` or `advisory`".into())),
    };
    match taken {
        Ok(()) => Ok(session),
        Err(e) => {
            let _ = session.release().await;
            Err(e)
        }
    }
}

async fn lock_rows(client: &Client, plan: &LockPlan, table: &str) -> Result<(), DbError> {
    // Bind every value as text and cast it to the column's own type, read from the
    // catalog, so `id = 42` works for int4, int8, numeric or text columns alike.
    let mut conds = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    for (i, f) in plan.spec.rows.iter().enumerate() {
        let ty: String = client
            .query_opt(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = $2 AND NOT attisdropped",
                &[&quote_pg(table), &f.column],
            )
            .await
            .map_err(|e| classify(plan, &e))?
            .map(|r| r.get(0))
            .ok_or_else(|| DbError::Missing {
                what: format!("column {} of {table}", f.column),
                target: plan.target(),
            })?;
        conds.push(format!(
            "{} {} CAST(${}::text AS {ty})",
            quote_pg(&f.column),
            op_sql(f.op),
            i + 1
        ));
        texts.push(match &f.value {
            FilterValue::Bool(b) => b.to_string(),
            FilterValue::Int(n) => n.to_string(),
            FilterValue::Float(x) => x.to_string(),
            FilterValue::Text(t) => t.clone(),
        });
    }
    let query = format!(
        "SELECT 1 FROM {} WHERE {} FOR {}",
        quote_pg(table),
        conds.join(" AND "),
        mode_sql(plan.mode)
    );
    let params: Vec<&(dyn ToSql + Sync)> = texts.iter().map(|t| t as &(dyn ToSql + Sync)).collect();
    let rows = client
        .query(&query, &params)
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

impl PgSession {
    pub(crate) async fn keepalive(&mut self) -> Result<(), DbError> {
        self.client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| DbError::Query {
                target: String::new(),
                reason: e.to_string(),
            })
    }

    pub(crate) async fn release(self) -> Result<(), DbError> {
        let result = tokio::time::timeout(
            Duration::from_secs(2),
            self.client.batch_execute("ROLLBACK"),
        )
        .await;
        drop(self.client);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn).await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DbError::Query {
                target: String::new(),
                reason: e.to_string(),
            }),
            Err(_) => Err(DbError::Query {
                target: String::new(),
                reason: "ROLLBACK timed out".into(),
            }),
        }
    }
}

/// A separate, short session for clean-up and observation.
async fn admin(plan: &LockPlan) -> Result<(Client, tokio::task::JoinHandle<()>), DbError> {
    connect(plan, "faultline:admin").await
}

/// Ends every backend named after the fault (left by a crashed holder).
pub(crate) async fn end_sessions(plan: &LockPlan) -> Result<(), DbError> {
    let (client, conn) = admin(plan).await?;
    let ended = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
            &[&plan.session_name],
        )
        .await
        .map_err(|e| classify(plan, &e))?;
    if !ended.is_empty() {
        tracing::info!(fault = %plan.fault_id, sessions = ended.len(), "ended leftover lock sessions");
    }
    drop(client);
    let _ = conn.await;
    Ok(())
}

pub(crate) async fn verify_reverted(plan: &LockPlan) -> Result<(), DbError> {
    let (client, conn) = admin(plan).await?;
    // pg_terminate_backend signals; the backend is gone a moment later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let result = loop {
        let row = client
            .query_one(
                "SELECT count(DISTINCT a.pid), count(l.pid) FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid WHERE a.application_name = $1",
                &[&plan.session_name],
            )
            .await
            .map_err(|e| classify(plan, &e))?;
        let (sessions, locks): (i64, i64) = (row.get(0), row.get(1));
        if sessions == 0 {
            break Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            break Err(DbError::NotReverted {
                target: plan.target(),
                reason: format!(
                    "{sessions} session(s) named {} still hold {locks} lock(s)",
                    plan.session_name
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(client);
    let _ = conn.await;
    result
}

pub(crate) async fn blocked(plan: &LockPlan) -> Result<Option<BlockedSessions>, DbError> {
    let (client, conn) = admin(plan).await?;
    let row = client
        .query_one(
            "SELECT count(*)::int8, coalesce(extract(epoch FROM max(now() - w.query_start)), 0)::float8
               FROM pg_stat_activity w
              WHERE EXISTS (SELECT 1 FROM pg_stat_activity h
                             WHERE h.application_name = $1 AND h.pid = ANY(pg_blocking_pids(w.pid)))",
            &[&plan.session_name],
        )
        .await
        .map_err(|e| classify(plan, &e))?;
    drop(client);
    let _ = conn.await;
    let (waiting, secs): (i64, f64) = (row.get(0), row.get(1));
    Ok(Some(BlockedSessions {
        waiting: waiting.max(0) as u64,
        longest_wait: Duration::from_secs_f64(secs.max(0.0)),
    }))
}
