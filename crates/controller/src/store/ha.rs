//! What the store keeps so that several `faultline serve` replicas can share one
//! database (migration 3, "replicas and run leases"): a heartbeat row per replica,
//! named leases with a fencing epoch (the scheduler's leadership), the slots each
//! schedule has handled (`schedule_slots`, primary key `(schedule_id, slot)`: a slot
//! is handled once, whoever handles it), and on each run its owner replica, the
//! expiry of its run lease and an abort request another replica left for the owner.
//!
//! Lease times on PostgreSQL are the database's clock (`now()`), so replicas with
//! skewed clocks still agree on who holds what; on SQLite (one host) the
//! controller's clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{NewRun, Run};
use crate::schedule::FireAction;

/// The lease the scheduler's leader holds.
pub const SCHEDULER_LEASE: &str = "scheduler";

/// A replica as its heartbeat row has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub id: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// Who owns a run and for how long a renewal keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOwner {
    pub replica: String,
    pub lease: Duration,
}

/// A lease held: its fencing epoch (bumped at every change of holder) and expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub epoch: i64,
    pub expires_at: DateTime<Utc>,
}

/// Proof of leadership a write carries: it commits only while `holder` still holds
/// lease `name` at `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fence {
    pub name: String,
    pub holder: String,
    pub epoch: i64,
}

/// Who handled a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotBy {
    pub replica: String,
    pub fence: Option<Fence>,
}

/// A fire, claimed and created in one transaction by [`super::RunStore::fire_slot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotFire {
    pub schedule_id: String,
    pub slot: DateTime<Utc>,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub action: FireAction,
    pub catch_up: bool,
    pub missed: u32,
    pub run: NewRun,
    pub owner: RunOwner,
    pub by: SlotBy,
}

/// The answer to [`super::RunStore::fire_slot`].
#[derive(Debug, Clone, PartialEq)]
pub enum SlotFired {
    /// The slot was this fire's: the run was created (or, with a key used before,
    /// found) and the fire recorded.
    Fired { run: Box<Run>, created: bool },
    /// Another fire (another replica's scheduler) handled the slot already.
    Taken,
    /// The fence's lease is no longer held at its epoch: nothing was written.
    Fenced,
}

/// A run a renewal kept: its id and the abort another replica asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRun {
    pub id: String,
    pub abort_requested: Option<String>,
}

/// A run's owner and lease, as the store has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLease {
    pub owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub abort_requested: Option<String>,
}

/// A run a sweep marked aborted, and the replica that had owned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweptRun {
    pub id: String,
    pub owner: Option<String>,
    pub reason: String,
}

/// The reason a swept run carries.
pub fn swept_reason(owner: Option<&str>, expired: DateTime<Utc>) -> String {
    format!(
        "owner replica `{}` lost: its run lease expired at {}; the run's faults lapse on the agents with their leases",
        owner.unwrap_or("unknown"),
        expired.to_rfc3339()
    )
}

/// Seconds, for SQL interval arithmetic.
pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The slot outcome column's text.
pub(crate) fn outcome_word(o: &super::FireOutcome) -> &'static str {
    match o {
        super::FireOutcome::Fired { .. } => "fired",
        super::FireOutcome::Skipped { .. } => "skipped",
        super::FireOutcome::Failed { .. } => "failed",
    }
}

/// The audit detail of a slot handled, with who handled it.
pub(crate) fn slot_detail(
    fire: &super::FireRecord,
    by: &SlotBy,
) -> super::Result<serde_json::Value> {
    let mut detail = super::audit_detail(fire)?;
    if let serde_json::Value::Object(map) = &mut detail {
        map.insert("replica".to_owned(), by.replica.clone().into());
        if let Some(f) = &by.fence {
            map.insert("epoch".to_owned(), f.epoch.into());
        }
    }
    Ok(detail)
}
