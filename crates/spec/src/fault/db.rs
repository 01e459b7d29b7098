//! `db.lock`: lock stalls on PostgreSQL, MySQL/MariaDB and SQLite. The fault never
//! writes: its transactions always roll back.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::units::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DbEngine {
    Postgres,
    Mysql,
    Sqlite,
}

/// Lock modes. PostgreSQL table modes, row modes (with `where`), MySQL's
/// `LOCK TABLES` modes and SQLite's transaction modes; validation checks the mode
/// fits the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    // PostgreSQL `LOCK TABLE ... IN <mode> MODE`
    AccessShare,
    RowShare,
    RowExclusive,
    ShareUpdateExclusive,
    Share,
    ShareRowExclusive,
    Exclusive,
    AccessExclusive,
    // Row locks (PostgreSQL; MySQL has for_update and for_share)
    ForUpdate,
    ForNoKeyUpdate,
    ForShare,
    ForKeyShare,
    // MySQL/MariaDB `LOCK TABLES ... READ|WRITE`
    Read,
    Write,
    // SQLite `BEGIN IMMEDIATE|EXCLUSIVE`
    Immediate,
}

impl LockMode {
    pub fn is_row_mode(self) -> bool {
        matches!(
            self,
            LockMode::ForUpdate
                | LockMode::ForNoKeyUpdate
                | LockMode::ForShare
                | LockMode::ForKeyShare
        )
    }

    /// The modes `engine` accepts, as written.
    pub fn names_for(engine: DbEngine) -> &'static [&'static str] {
        match engine {
            DbEngine::Postgres => &[
                "access_share",
                "row_share",
                "row_exclusive",
                "share_update_exclusive",
                "share",
                "share_row_exclusive",
                "exclusive",
                "access_exclusive",
                "for_update",
                "for_no_key_update",
                "for_share",
                "for_key_share",
            ],
            DbEngine::Mysql => &["read", "write", "for_update", "for_share"],
            DbEngine::Sqlite => &["immediate", "exclusive"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LockMode::AccessShare => "access_share",
            LockMode::RowShare => "row_share",
            LockMode::RowExclusive => "row_exclusive",
            LockMode::ShareUpdateExclusive => "share_update_exclusive",
            LockMode::Share => "share",
            LockMode::ShareRowExclusive => "share_row_exclusive",
            LockMode::Exclusive => "exclusive",
            LockMode::AccessExclusive => "access_exclusive",
            LockMode::ForUpdate => "for_update",
            LockMode::ForNoKeyUpdate => "for_no_key_update",
            LockMode::ForShare => "for_share",
            LockMode::ForKeyShare => "for_key_share",
            LockMode::Read => "read",
            LockMode::Write => "write",
            LockMode::Immediate => "immediate",
        }
    }
}

/// A comparison operator in a row filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FilterOp {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

/// A scalar compared in a row filter; always sent as a bound parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FilterValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// `column op value`: one conjunct of a row filter. Identifiers are quoted and values
/// bound, never spliced into SQL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RowFilter {
    pub column: String,
    pub op: FilterOp,
    pub value: FilterValue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DbLock {
    /// `postgres://`, `mysql://`, `sqlite:///path` URL or libpq `key=value` text;
    /// `${env:NAME}` for credentials.
    pub url: Secret,
    /// Needed only when the URL does not tell (e.g. it is all `${env:...}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<DbEngine>,
    /// The table to lock (`schema.table` allowed). Not with `advisory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Lock mode; default `access_exclusive` (postgres), `write` (mysql), `exclusive` (sqlite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<LockMode>,
    /// Row filter for row modes, all conjuncts must hold.
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<RowFilter>,
    /// An advisory lock key (postgres `pg_advisory_lock`, mysql `GET_LOCK`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advisory: Option<i64>,
    /// How long each stall holds the lock (default: the whole step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Duration>,
    /// Start a new stall this often (needs `hold`, longer than it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<Duration>,
    /// Give up acquiring after this long, so the fault never queues behind the
    /// application forever.
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout: Duration,
}

fn default_lock_timeout() -> Duration {
    Duration::from_secs(2)
}

impl DbLock {
    /// The engine named, or the one the URL's form tells.
    pub fn resolved_engine(&self) -> Option<DbEngine> {
        self.engine
            .or_else(|| engine_from_url(&self.url.redacted()))
    }
}

/// The engine a connection string's form implies, if it does.
pub fn engine_from_url(url: &str) -> Option<DbEngine> {
    let u = url.trim();
    if u.starts_with("${") {
        return None;
    }
    if u.starts_with("postgres://") || u.starts_with("postgresql://") {
        Some(DbEngine::Postgres)
    } else if u.starts_with("mysql://") || u.starts_with("mariadb://") {
        Some(DbEngine::Mysql)
    } else if u.starts_with("sqlite:") {
        Some(DbEngine::Sqlite)
    } else if u.contains('=') && !u.contains("://") {
        // libpq key=value form
        Some(DbEngine::Postgres)
    } else {
        None
    }
}
