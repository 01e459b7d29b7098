//! The experiment document: the top level of a faultline/v1 file.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fault::FaultSpec;
use crate::hypothesis::Hypothesis;
use crate::probe::Probe;
use crate::target::Target;
use crate::units::Duration;

/// The only format version this build reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Version {
    #[serde(rename = "faultline/v1")]
    V1,
}

/// A chaos experiment: which faults to inject where and when, and the SLA that must
/// hold before, during and after.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Always `faultline/v1`.
    pub version: Version,
    /// A short identifier: letters, digits, `.`, `_` and `-`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Upper bound of the fault phase; every step must end within it. Defaults to the
    /// end of the last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// Named groups of agents that steps inject into.
    #[serde(default)]
    pub targets: IndexMap<String, Target>,
    /// Named steady-state probes.
    #[serde(default)]
    pub probes: IndexMap<String, Probe>,
    /// The SLA: must hold at baseline and again after recovery.
    #[serde(default)]
    pub hypotheses: Vec<Hypothesis>,
    /// What is tolerated while faults are active.
    #[serde(default)]
    pub during: Vec<Hypothesis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
    /// The faults, each on its own timeline.
    pub method: Vec<Step>,
    #[serde(default)]
    pub safety: Safety,
}

impl Experiment {
    /// When the last step ends, relative to the start of the fault phase.
    pub fn fault_phase_end(&self) -> Duration {
        self.method
            .iter()
            .map(Step::end)
            .max()
            .unwrap_or_default()
            .max(self.duration.unwrap_or_default())
    }
}

/// One fault on a target for a window of time.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    /// A key of `targets`.
    pub target: String,
    /// Exactly one fault, written as `{ kind: { parameters } }`.
    #[serde(with = "serde_yaml::with::singleton_map")]
    #[schemars(with = "FaultSpec")]
    pub fault: FaultSpec,
    /// Offset from the start of the fault phase.
    #[serde(default)]
    pub start: Duration,
    pub duration: Duration,
}

impl Step {
    pub fn end(&self) -> Duration {
        Duration(self.start.0 + self.duration.0)
    }
}

/// How soon the SLA must hold again after the last revert.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Recovery {
    pub within: Duration,
}

/// Guard rails: when to stop early, and how long a fault outlives a silent controller.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Safety {
    /// Conditions checked continuously; any that holds for its `for` aborts the run.
    #[serde(default)]
    pub abort_when: Vec<Hypothesis>,
    /// Every fault is a lease of this length, renewed by the controller; an agent
    /// reverts a fault whose lease lapses.
    #[serde(default = "default_lease")]
    pub lease: Duration,
}

fn default_lease() -> Duration {
    Duration::from_secs(15)
}

impl Default for Safety {
    fn default() -> Self {
        Safety {
            abort_when: Vec::new(),
            lease: default_lease(),
        }
    }
}
