//! The run journal: everything a run did and saw, as one serialisable record, in
//! the spirit of Chaos Toolkit's journal. The engine fills it in; the CLI writes it
//! (`--journal`), renders it (results table, JUnit, HTML report) and the service
//! stores it. The live [`Event`]s a run emits carry the same records as they happen.
//!
//! Times: `*_at` fields are RFC 3339 UTC wall-clock times; `*_s` fields are seconds
//! from the run's epoch (the moment its probes started), the axis of every timeline.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::select::Selection;

/// How a run ended. Each status has one exit code (DESIGN.md, "run exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every hypothesis held: baseline, during and recovery.
    Passed,
    /// A hypothesis failed (the gate fails); every fault was reverted.
    Failed,
    /// Invalid input; nothing was injected.
    Invalid,
    /// Stopped early (abort_when, signal, lost agent, a fault that could not be
    /// injected) with every fault reverted.
    Aborted,
    /// A revert could not be confirmed: `left_behind` names what may be left.
    RevertUnconfirmed,
}

impl RunStatus {
    pub fn exit_code(self) -> i32 {
        match self {
            RunStatus::Passed => 0,
            RunStatus::Failed => 1,
            RunStatus::Invalid => 2,
            RunStatus::Aborted => 3,
            RunStatus::RevertUnconfirmed => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Passed => "passed",
            RunStatus::Failed => "failed",
            RunStatus::Invalid => "invalid",
            RunStatus::Aborted => "aborted",
            RunStatus::RevertUnconfirmed => "revert_unconfirmed",
        }
    }
}

/// The phases of a run, in order. `abort_when` is not a phase but a kind of check
/// that runs through baseline and faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Targets resolved, agents asked whether they answer.
    Preflight,
    /// Probes run, nothing injected; the hypotheses must hold.
    Baseline,
    /// Faults on their timeline; `during` tolerances checked continuously.
    Faults,
    /// Everything reverted; the hypotheses must hold again within `recovery.within`.
    Recovery,
    /// Every agent asked whether anything of this run is left.
    Verify,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Baseline => "baseline",
            Phase::Faults => "faults",
            Phase::Recovery => "recovery",
            Phase::Verify => "verify",
        }
    }
}

/// Which list of the experiment a checked condition comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// `hypotheses` (the SLA), checked at baseline and recovery.
    Hypothesis,
    /// `during`: tolerated while faults are active.
    During,
    /// `safety.abort_when`: holds -> the run stops.
    AbortWhen,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    /// faultline's version.
    pub faultline: String,
    pub run_id: String,
    pub experiment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub seed: u64,
    pub status: RunStatus,
    pub exit_code: i32,
    /// Why the run did not pass; `None` when it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub started_at: String,
    pub ended_at: String,
    pub duration_s: f64,
    /// Resolved targets.
    pub targets: Vec<Selection>,
    /// Phases in the order they ran (a run that stops early has fewer).
    pub phases: Vec<PhaseRecord>,
    /// Every verdict: one per hypothesis per phase (baseline, recovery), one per
    /// `during` tolerance (its first violation, or that it held), and any
    /// `abort_when` that fired.
    pub verdicts: Vec<VerdictRecord>,
    pub faults: Vec<FaultRecord>,
    /// Per-probe timelines, one point per settled bucket (1 s by default).
    pub probes: IndexMap<String, ProbeTimeline>,
    /// What may be left behind when status is `revert_unconfirmed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_behind: Vec<LeftBehind>,
}

impl Journal {
    /// The verdicts that failed (for `abort_when`: fired).
    pub fn failures(&self) -> impl Iterator<Item = &VerdictRecord> {
        self.verdicts.iter().filter(|v| !v.holds)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub phase: Phase,
    pub started_at: String,
    pub start_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_s: Option<f64>,
}

/// One evaluation of a condition over a window of one probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictRecord {
    pub phase: Phase,
    pub kind: CheckKind,
    /// Index in its list (`hypotheses[i]`, `during[i]`, `safety.abort_when[i]`).
    pub index: usize,
    pub probe: String,
    /// The condition as written, e.g. `api: availability >= 99%, p99 <= 300ms`.
    pub name: String,
    /// For hypotheses and `during`: it held. For `abort_when`: it did *not* fire.
    pub holds: bool,
    /// End of the window evaluated.
    pub at_s: f64,
    pub window_s: f64,
    pub samples: u64,
    pub checks: Vec<CheckRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Recovery only: seconds from the last revert until the condition held for a
    /// full window; `None` when it did not within `recovery.within`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_recover_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRecord {
    /// `availability`, `p99`, `burn_rate`, ...
    pub metric: String,
    /// The threshold as written, e.g. `<= 300ms`.
    pub bound: String,
    /// What was measured, formatted in the bound's unit; `None`: nothing measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,
    /// The measured figure as a number: percent, milliseconds, or the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub holds: bool,
}

/// One fault on one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// The id the agent knows it by.
    pub id: String,
    pub step: String,
    pub kind: String,
    pub agent: String,
    /// The parameters as the agent reported them (defaults filled in); secrets as
    /// written, never resolved.
    pub params: serde_json::Value,
    pub planned_start_s: f64,
    pub planned_end_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_error: Option<String>,
    /// The agent no longer lists the fault after its revert.
    pub revert_confirmed: bool,
    pub renewals: u32,
    /// What the fault looked like from outside while active (the agent's
    /// `observe()`), sampled every few seconds: for db.lock the blocked sessions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observations: Vec<ObservationRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservationRecord {
    pub at_s: f64,
    pub active: bool,
    pub detail: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub figures: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeTimeline {
    /// `http`, `tcp`, `sql`, `prometheus`, `command`.
    pub kind: String,
    /// Bucket width in seconds.
    pub bucket_s: f64,
    pub points: Vec<ProbePoint>,
}

/// One bucket of one probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbePoint {
    /// Start of the bucket.
    pub t_s: f64,
    pub total: u64,
    pub successes: u64,
    /// Percent; `None` without attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Streaming llm probes: time to first token and inter-token latency, p99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub itl_p99_ms: Option<f64>,
    /// Failures by kind (`timeout`, `refused`, `status`, ...), only kinds seen.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failures: BTreeMap<String, u64>,
    /// Value probes: the last value measured in the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// A fault whose revert could not be confirmed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeftBehind {
    pub agent: String,
    pub fault: String,
    pub kind: String,
    pub reason: String,
    /// When the agent's lease lapses and it reverts the fault itself, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<String>,
}

/// What a run reports as it goes: the CLI's progress line and the service's
/// Server-Sent Events are both fed from these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Phase {
        phase: Phase,
        at_s: f64,
    },
    /// A bucket of a probe has settled.
    Window {
        probe: String,
        point: ProbePoint,
    },
    Injected {
        fault: String,
        step: String,
        kind: String,
        agent: String,
        at_s: f64,
    },
    InjectFailed {
        fault: String,
        agent: String,
        reason: String,
        at_s: f64,
    },
    Reverted {
        fault: String,
        agent: String,
        at_s: f64,
        confirmed: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Observed {
        fault: String,
        observation: ObservationRecord,
    },
    Verdict(VerdictRecord),
    Aborting {
        reason: String,
        at_s: f64,
    },
    Finished {
        status: RunStatus,
        exit_code: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}
