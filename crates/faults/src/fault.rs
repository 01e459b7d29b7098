//! The `Fault` trait: the contract every fault kind implements.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::Serialize;

use crate::{InjectError, RevertError};

/// A boxed, sendable future: the trait is used as `Box<dyn Fault>`, which native
/// `async fn` in traits does not allow.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a fault looks like from outside, now: whether its effect can be seen on the
/// host (a stopped process, a table in the ruleset), and in what detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observation {
    pub active: bool,
    pub detail: String,
    /// Figures for machines where the kind has them (`db.lock`: the sessions its
    /// lock blocks and the longest wait), for the agent's fault status and the run
    /// journal; null otherwise.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub figures: serde_json::Value,
}

/// One fault on this host. The life cycle is `inject` -> (guarded by a lease, held
/// by the caller) -> `revert` -> `verify_reverted`.
///
/// - `recovery()` is valid right after construction and is what the journal keeps
///   *before* `inject`: `registry::restore` with it must be able to revert the fault
///   even if `inject` was cut off halfway.
/// - `inject` is idempotent: a second call leaves one fault, not two.
/// - `revert` is idempotent: reverting what is not there succeeds.
/// - `verify_reverted` checks from outside, never from the fault's own bookkeeping.
pub trait Fault: Send + Sync + fmt::Debug {
    /// The kind, as written in experiments (`process.pause`).
    fn kind(&self) -> &'static str;
    /// The state the journal keeps to revert this fault after a crash.
    fn recovery(&self) -> serde_json::Value;
    fn inject(&mut self) -> BoxFuture<'_, Result<(), InjectError>>;
    /// The controller renewed the lease. Faults whose effect carries its own
    /// expiry (the CUDA interposer's state file) stamp the new one; the rest have
    /// nothing to do: the agent's reaper holds their lease.
    fn renew(&mut self, _lease: std::time::Duration) -> BoxFuture<'_, Result<(), InjectError>> {
        Box::pin(async { Ok(()) })
    }
    fn revert(&mut self) -> BoxFuture<'_, Result<(), RevertError>>;
    fn verify_reverted(&self) -> BoxFuture<'_, Result<(), RevertError>>;
    fn observe(&self) -> BoxFuture<'_, Observation>;
    /// Whether the effect outlives revert by nature (a killed process stays dead).
    /// Revert of such a fault is a no-op and verify checks nothing is left *of the
    /// fault itself*.
    fn lasting(&self) -> bool {
        false
    }
}

/// Reverts and then checks from outside: the only way callers should revert.
pub async fn revert_and_verify(fault: &mut dyn Fault) -> Result<(), RevertError> {
    fault.revert().await?;
    fault.verify_reverted().await
}
