//! `db.lock` behind the `Fault` trait. The lock session is found by its name
//! (`faultline:<fault id>`) at revert, so a restored fault needs nothing journaled
//! but its spec and lease.

use super::{DbError, DbLockFault};
use crate::{BoxFuture, Fault, InjectError, Observation, RevertError};

const KIND: &str = "db.lock";

fn inject_error(e: DbError) -> InjectError {
    let reason = e.to_string();
    match e {
        DbError::Secret(_)
        | DbError::UnknownEngine(_)
        | DbError::BadMode { .. }
        | DbError::BadParams(_) => InjectError::InvalidParams { kind: KIND, reason },
        DbError::Missing { .. } => InjectError::NoTarget { kind: KIND, reason },
        DbError::Unreachable { .. }
        | DbError::Auth { .. }
        | DbError::LockTimeout { .. }
        | DbError::Query { .. }
        | DbError::NotReverted { .. } => InjectError::Failed {
            kind: KIND,
            action: "take the lock".into(),
            reason,
        },
    }
}

impl DbLockFault {
    fn revert_error(&self, e: DbError) -> RevertError {
        match e {
            DbError::NotReverted { .. } => RevertError::NotReverted {
                kind: KIND,
                left: format!("{e}; session `{}`", self.session_name()),
            },
            e => RevertError::Failed {
                kind: KIND,
                reason: e.to_string(),
                left: format!("sessions named `{}` on the database", self.session_name()),
            },
        }
    }
}

impl Fault for DbLockFault {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn recovery(&self) -> serde_json::Value {
        // Informational: revert finds the session by this name from the spec alone.
        serde_json::json!({ "session": self.session_name() })
    }

    fn inject(&mut self) -> BoxFuture<'_, Result<(), InjectError>> {
        Box::pin(async move { DbLockFault::inject(self).await.map_err(inject_error) })
    }

    fn revert(&mut self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async move {
            DbLockFault::revert(self)
                .await
                .map_err(|e| self.revert_error(e))
        })
    }

    fn verify_reverted(&self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async move {
            DbLockFault::verify_reverted(self)
                .await
                .map_err(|e| self.revert_error(e))
        })
    }

    fn observe(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let s = self.status().await;
            let figures = serde_json::json!({
                "holding": s.holding,
                "stalls": s.stalls,
                "blocked_sessions": s.blocked.map(|b| b.waiting),
                "longest_wait_ms": s.blocked.map(|b| b.longest_wait.as_millis() as u64),
                "last_error": s.last_error,
            });
            Observation {
                figures,
                active: s.holding,
                detail: format!("session `{}`: {s}", self.session_name()),
            }
        })
    }
}
