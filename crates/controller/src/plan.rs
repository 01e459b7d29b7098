//! Plans: what a run would do, computed without touching anything. The targets as
//! resolved, every fault window on a timeline, and the blast radius: how much of the
//! fleet is exposed, at most at once, and for how long a dead controller could leave
//! faults behind.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use faultline_spec::units::Duration;
use faultline_spec::{Experiment, Inventory, LOCAL_AGENT};
use indexmap::IndexMap;
use serde::Serialize;

use crate::select::{SelectError, Selection, resolve};

#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub name: String,
    pub kind: &'static str,
    pub target: String,
    pub agents: Vec<String>,
    pub start: Duration,
    pub end: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlastRadius {
    /// Distinct agents that receive at least one fault.
    pub agents_affected: usize,
    /// Agents known: the inventory, plus the local agent where the experiment uses it.
    pub agents_known: usize,
    /// Most faults active at the same moment (a fault on n agents counts n).
    pub peak_faults: usize,
    /// Most distinct agents faulted at the same moment.
    pub peak_agents: usize,
    /// Sum over faults of duration x agents, in seconds.
    pub agent_seconds: f64,
    /// A controller that dies leaves each fault active at most this long.
    pub orphan_bound: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub experiment: String,
    pub seed: u64,
    pub targets: Vec<Selection>,
    pub baseline: Duration,
    pub steps: Vec<PlannedStep>,
    pub fault_phase: Duration,
    pub recovery_within: Option<Duration>,
    pub lease: Duration,
    pub blast_radius: BlastRadius,
    pub abort_when: Vec<String>,
}

/// Builds the plan; fails with every target that cannot be resolved.
pub fn plan(exp: &Experiment, inv: &Inventory, seed: u64) -> Result<Plan, Vec<SelectError>> {
    let selections: IndexMap<String, Selection> = resolve(exp, inv, seed)?;
    let steps: Vec<PlannedStep> = exp
        .method
        .iter()
        .map(|s| PlannedStep {
            name: s.name.clone(),
            kind: s.fault.kind(),
            target: s.target.clone(),
            agents: selections
                .get(&s.target)
                .map(|t| t.agents.clone())
                .unwrap_or_default(),
            start: s.start,
            end: s.end(),
        })
        .collect();

    let uses_local = selections
        .values()
        .any(|s| s.agents.iter().any(|a| a == LOCAL_AGENT));
    let agents_affected = steps
        .iter()
        .flat_map(|s| s.agents.iter().map(String::as_str))
        .collect::<BTreeSet<&str>>()
        .len();
    // The peak is reached at some step's start: scan those instants.
    let (mut peak_faults, mut peak_agents) = (0, 0);
    for t in steps.iter().map(|s| s.start) {
        let active: Vec<&PlannedStep> =
            steps.iter().filter(|s| s.start <= t && t < s.end).collect();
        let faults: usize = active.iter().map(|s| s.agents.len()).sum();
        let agents: BTreeSet<&str> = active
            .iter()
            .flat_map(|s| s.agents.iter().map(String::as_str))
            .collect();
        peak_faults = peak_faults.max(faults);
        peak_agents = peak_agents.max(agents.len());
    }
    let agent_seconds = steps
        .iter()
        .map(|s| (s.end.0 - s.start.0).as_secs_f64() * s.agents.len() as f64)
        .sum();
    let lease = exp.safety.lease;
    let baseline = Duration(crate::engine::baseline(exp));

    Ok(Plan {
        experiment: exp.name.clone(),
        seed,
        targets: selections.into_values().collect(),
        steps,
        baseline,
        fault_phase: exp.fault_phase_end(),
        recovery_within: exp.recovery.as_ref().map(|r| r.within),
        lease,
        blast_radius: BlastRadius {
            agents_affected,
            agents_known: inv.agents.len() + usize::from(uses_local),
            peak_faults,
            peak_agents,
            agent_seconds,
            // The agent's reaper runs every second.
            orphan_bound: Duration(lease.0 + std::time::Duration::from_secs(1)),
        },
        abort_when: exp
            .safety
            .abort_when
            .iter()
            .map(crate::engine::describe)
            .collect(),
    })
}

const GANTT_WIDTH: usize = 48;

impl Plan {
    /// The plan for people: targets, a text Gantt of the fault windows, the blast radius.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "plan: {} (seed {})", self.experiment, self.seed);
        let _ = writeln!(out, "nothing runs: this is what `faultline run` would do\n");

        let _ = writeln!(out, "targets");
        let tw = self
            .targets
            .iter()
            .map(|t| t.target.len())
            .max()
            .unwrap_or(0)
            .max(6);
        for t in &self.targets {
            let _ = writeln!(
                out,
                "  {:tw$}  {:12}  {} of {} matched: {}",
                t.target,
                t.mode,
                t.agents.len(),
                t.matched,
                t.agents.join(", ")
            );
        }

        let end = self.fault_phase.0.as_secs_f64().max(f64::EPSILON);
        let _ = writeln!(
            out,
            "\ntimeline  baseline {} -> faults 0s..{} -> recovery{}",
            self.baseline,
            self.fault_phase,
            self.recovery_within
                .map(|r| format!(" within {r}"))
                .unwrap_or_default()
        );
        let nw = self
            .steps
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0)
            .max(4);
        let kw = self.steps.iter().map(|s| s.kind.len()).max().unwrap_or(0);
        for s in &self.steps {
            let from = ((s.start.0.as_secs_f64() / end) * GANTT_WIDTH as f64).floor() as usize;
            let to = (((s.end.0.as_secs_f64() / end) * GANTT_WIDTH as f64).ceil() as usize)
                .clamp(from + 1, GANTT_WIDTH);
            let bar: String = (0..GANTT_WIDTH)
                .map(|i| if (from..to).contains(&i) { '#' } else { '.' })
                .collect();
            let _ = writeln!(
                out,
                "  {:nw$}  {:kw$}  |{bar}|  {} - {}  on {}",
                s.name,
                s.kind,
                s.start,
                s.end,
                s.agents.join(", ")
            );
        }

        let b = &self.blast_radius;
        let pct = if b.agents_known == 0 {
            0.0
        } else {
            100.0 * b.agents_affected as f64 / b.agents_known as f64
        };
        let _ = writeln!(out, "\nblast radius");
        let _ = writeln!(
            out,
            "  agents affected     {} of {} ({pct:.0}%)",
            b.agents_affected, b.agents_known
        );
        let _ = writeln!(
            out,
            "  at most at once     {} fault(s) on {} agent(s)",
            b.peak_faults, b.peak_agents
        );
        let _ = writeln!(
            out,
            "  exposure            {:.0} agent-seconds of faults",
            b.agent_seconds
        );
        let _ = writeln!(
            out,
            "  lease               {} (a dead controller leaves a fault for at most {})",
            self.lease, b.orphan_bound
        );
        if self.abort_when.is_empty() {
            let _ = writeln!(
                out,
                "  abort when          (nothing: add safety.abort_when to stop early)"
            );
        }
        for (i, a) in self.abort_when.iter().enumerate() {
            let label = if i == 0 { "abort when" } else { "" };
            let _ = writeln!(out, "  {label:18}  {a}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quickstart_plan_renders() {
        let text = include_str!("../../../experiments/quickstart.yaml");
        let loaded = faultline_spec::load("experiments/quickstart.yaml", text);
        let exp = loaded.experiment.expect("quickstart is valid");
        let plan =
            plan(&exp, &Inventory::default(), 0).expect("local resolves without an inventory");
        assert_eq!(plan.blast_radius.agents_affected, 1);
        assert_eq!(plan.blast_radius.agents_known, 1);
        assert_eq!(plan.steps.len(), 4);
        insta::assert_snapshot!(plan.render());
    }

    #[test]
    fn peak_counts_overlapping_faults() {
        let text = include_str!("../../../experiments/network-latency.yaml");
        let exp = faultline_spec::load("n.yaml", text)
            .experiment
            .expect("valid");
        let inv = Inventory::parse(
            "inv.yaml",
            "agents:\n  a1: { url: \"http://127.0.0.1:1\", labels: { role: api } }\n  a2: { url: \"http://127.0.0.1:2\", labels: { role: api } }\n  d1: { url: \"http://127.0.0.1:3\", labels: { role: db } }\n",
        )
        .expect("inventory");
        let plan = plan(&exp, &inv, 1).expect("resolves");
        // percent(50) of two api hosts = one agent; slow-payments (0-60s) overlaps
        // slow-inventory-port (30-60s).
        assert_eq!(plan.blast_radius.agents_affected, 1);
        assert_eq!(plan.blast_radius.agents_known, 3);
        assert_eq!(plan.blast_radius.peak_faults, 2);
        assert_eq!(plan.blast_radius.peak_agents, 1);
    }
}
