//! The run engine: validate -> resolve targets -> every agent answers -> baseline
//! -> faults on their timeline (leases renewed, `during` and `abort_when` checked
//! continuously) -> revert everything -> recovery -> verify every revert.
//!
//! One rule above all: once anything is injected, every path out of [`run`] goes
//! through the revert and the verify step, whether the run passed, failed, was
//! aborted (`abort_when`, a signal through [`Abort`], a lost agent) or a fault could
//! not be injected. What cannot be confirmed reverted is named in
//! `Journal::left_behind`, and the run's status is `revert_unconfirmed` (exit 4).
//!
//! The engine never touches a host itself: faults go through `AgentClient`, probes
//! through `faultline-probe`. A controller that dies mid-run leaves faults behind for
//! at most their lease, because the agents revert what is not renewed.

mod checks;
pub(crate) mod faults;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use faultline_probe::{Clock, ProbeHandle};
use faultline_spec::{Experiment, Inventory};
use indexmap::IndexMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::AgentClient;
use crate::journal::{
    CheckKind, Event, Journal, LeftBehind, Phase, PhaseRecord, ProbeTimeline, RunStatus,
    VerdictRecord,
};
use crate::report::failure_line;
use crate::select::resolve;

pub use checks::describe;
use checks::{Monitor, point_of};
use faults::Slots;
pub use faults::parse_fault_id;

/// The agents a run may use, by inventory name (`local` for the in-process one).
pub type Agents = IndexMap<String, Arc<dyn AgentClient>>;

/// How long the baseline is measured when no hypothesis names a window.
pub const DEFAULT_WINDOW: Duration = faultline_probe::slo::DEFAULT_WINDOW;
/// How soon the SLA must hold again after the last revert when the experiment does
/// not say (`recovery.within`).
pub const DEFAULT_RECOVERY: Duration = Duration::from_secs(30);
/// How long an agent has to answer its health check before anything is injected.
pub const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(5);
/// The budget for reverting everything on abort (DESIGN.md, safety invariant 5).
pub const ABORT_REVERT_BUDGET: Duration = Duration::from_secs(1);

/// Stops a run from outside: a signal handler, the service's abort endpoint. The
/// run reverts everything and ends `aborted` (exit 3) with the reason given.
#[derive(Debug, Clone, Default)]
pub struct Abort {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl Abort {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the run to stop; the first reason given is kept.
    pub fn trigger(&self, reason: impl Into<String>) {
        let mut r = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        if r.is_none() {
            *r = Some(reason.into());
        }
        drop(r);
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }
}

/// Everything a run needs beside the experiment and its agents.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub run_id: String,
    pub seed: u64,
    pub inventory: Inventory,
    pub abort: Abort,
    /// Live events (progress, SSE). A closed receiver is ignored.
    pub events: Option<mpsc::UnboundedSender<Event>>,
    /// How often the engine wakes to inject, revert, renew and check.
    pub tick: Duration,
    /// How often an active fault's observation is sampled for the journal.
    pub observe_every: Duration,
    /// Probe bucket width: the resolution of every timeline and `for`.
    pub bucket: Duration,
}

impl RunOptions {
    pub fn new(run_id: impl Into<String>, seed: u64) -> Self {
        RunOptions {
            run_id: run_id.into(),
            seed,
            inventory: Inventory::default(),
            abort: Abort::new(),
            events: None,
            tick: Duration::from_millis(100),
            observe_every: Duration::from_secs(2),
            bucket: Clock::DEFAULT_BUCKET,
        }
    }
}

/// How long the baseline is measured: the longest window of the hypotheses
/// (each 10 s unless it names one); nothing without hypotheses.
pub fn baseline(exp: &Experiment) -> Duration {
    exp.hypotheses
        .iter()
        .map(faultline_probe::slo::window_of)
        .max()
        .unwrap_or(Duration::ZERO)
}

/// A fresh run id: `run-` and 12 hex digits, valid inside agent fault ids.
pub fn new_run_id() -> String {
    format!("run-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// Runs `exp` to the end and returns its journal. Never panics on a failing
/// target, agent or probe: every outcome is a status in the journal.
pub async fn run(exp: &Experiment, agents: &Agents, opts: RunOptions) -> Journal {
    let mut r = Run::new(exp, opts);
    let (status, reason) = r.drive(agents).await;
    r.finish(status, reason).await
}

/// The state of one run.
struct Run<'a> {
    exp: &'a Experiment,
    opts: RunOptions,
    started: SystemTime,
    clock: Clock,
    journal: Journal,
    probes: IndexMap<String, ProbeHandle>,
    /// Next bucket index to report, per probe.
    reported: Vec<usize>,
    slots: Slots,
}

type Outcome = (RunStatus, Option<String>);

impl<'a> Run<'a> {
    fn new(exp: &'a Experiment, opts: RunOptions) -> Self {
        let started = SystemTime::now();
        let clock = Clock::start().with_bucket(opts.bucket);
        let journal = Journal {
            faultline: env!("CARGO_PKG_VERSION").to_owned(),
            run_id: opts.run_id.clone(),
            experiment: exp.name.clone(),
            description: exp.description.clone(),
            seed: opts.seed,
            status: RunStatus::Aborted,
            exit_code: RunStatus::Aborted.exit_code(),
            reason: None,
            started_at: rfc3339(started),
            ended_at: rfc3339(started),
            duration_s: 0.0,
            targets: Vec::new(),
            phases: Vec::new(),
            verdicts: Vec::new(),
            faults: Vec::new(),
            probes: IndexMap::new(),
            left_behind: Vec::new(),
        };
        Run {
            exp,
            opts,
            started,
            clock,
            journal,
            probes: IndexMap::new(),
            reported: Vec::new(),
            slots: Slots::default(),
        }
    }

    fn now_s(&self) -> f64 {
        self.clock.now().as_secs_f64()
    }

    fn emit(&self, e: Event) {
        if let Some(tx) = &self.opts.events {
            // A closed receiver means nobody is watching; the run goes on.
            let _ = tx.send(e);
        }
    }

    fn enter(&mut self, phase: Phase) {
        let at_s = self.now_s();
        if let Some(last) = self.journal.phases.last_mut() {
            last.end_s.get_or_insert(at_s);
        }
        tracing::info!(run = %self.opts.run_id, phase = phase.as_str(), "phase");
        self.journal.phases.push(PhaseRecord {
            phase,
            started_at: rfc3339(SystemTime::now()),
            start_s: at_s,
            end_s: None,
        });
        self.emit(Event::Phase { phase, at_s });
    }

    fn verdict(&mut self, v: VerdictRecord) {
        if !v.holds {
            tracing::warn!(run = %self.opts.run_id, phase = v.phase.as_str(), condition = %v.name,
                reason = v.reason.as_deref().unwrap_or(""), "condition failed");
        }
        self.emit(Event::Verdict(v.clone()));
        self.journal.verdicts.push(v);
    }

    /// Everything up to (not including) the final revert and verify.
    async fn drive(&mut self, agents: &Agents) -> Outcome {
        self.enter(Phase::Preflight);
        let selections = match resolve(self.exp, &self.opts.inventory, self.opts.seed) {
            Ok(s) => s,
            Err(errors) => {
                let msg = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                return (RunStatus::Invalid, Some(format!("targets: {msg}")));
            }
        };
        self.journal.targets = selections.values().cloned().collect();
        match Slots::plan(self.exp, &selections, agents, &self.opts.run_id) {
            Ok(slots) => self.slots = slots,
            Err(reason) => return (RunStatus::Invalid, Some(reason)),
        }
        if let Err((status, reason)) = self.slots.preflight(agents).await {
            return (status, Some(reason));
        }
        if let Some(o) = self.start_probes() {
            return o;
        }

        // Baseline: the SLA must hold before anything is injected.
        self.enter(Phase::Baseline);
        let baseline = baseline(self.exp);
        let mut monitor = Monitor::new(self.exp, self.clock.bucket);
        if let Some(o) = self.wait_settled(baseline, &mut monitor).await {
            return o;
        }
        let mut failed = Vec::new();
        for (i, h) in self.exp.hypotheses.iter().enumerate() {
            let v = self.with_series(&h.probe, |s| {
                checks::record(Phase::Baseline, CheckKind::Hypothesis, i, h, s, baseline)
            });
            if !v.holds {
                failed.push(failure_line(&v));
            }
            self.verdict(v);
        }
        if !failed.is_empty() {
            return (
                RunStatus::Failed,
                Some(format!(
                    "baseline failed, nothing injected: {}",
                    failed.join("; ")
                )),
            );
        }

        // Faults.
        self.enter(Phase::Faults);
        let t0 = self.clock.now();
        let end = t0 + self.exp.fault_phase_end().0;
        let lease = self.exp.safety.lease;
        monitor.start_during(t0);
        loop {
            let now = self.clock.now();
            if let Some(reason) = self.abort_reason(&mut monitor) {
                return self.abort(reason).await;
            }
            let events = self.slots.step(now, t0, lease, &self.clock).await;
            for e in events {
                self.emit(e);
            }
            if let Some(reason) = self.slots.fatal.take() {
                return self.abort(reason).await;
            }
            for e in self
                .slots
                .observe(now, self.opts.observe_every, &self.clock)
                .await
            {
                self.emit(e);
            }
            self.report_windows();
            for v in self.check_during(&mut monitor) {
                self.verdict(v);
            }
            if now >= end && self.slots.all_done() {
                break;
            }
            self.sleep_tick().await;
        }
        // `during` covers the fault phase up to its end: keep checking until the
        // answers to everything sent before the last revert are in.
        let fault_end = self.clock.now();
        monitor.stop_during(fault_end);
        if let Some(o) = self.wait_settled(fault_end, &mut monitor).await {
            return o;
        }
        // Tolerances that were never violated held for the whole fault phase.
        for v in monitor.held_during(self.exp, &self.probes, fault_end) {
            self.verdict(v);
        }

        // Recovery: the SLA must hold again within `recovery.within`.
        let last_revert = self.slots.last_revert().unwrap_or(fault_end);
        self.enter(Phase::Recovery);
        self.recover(last_revert).await
    }

    fn start_probes(&mut self) -> Option<Outcome> {
        for (name, spec) in &self.exp.probes {
            match faultline_probe::start(spec, self.clock) {
                Ok(h) => {
                    self.journal.probes.insert(
                        name.clone(),
                        ProbeTimeline {
                            kind: spec.kind().to_owned(),
                            bucket_s: self.clock.bucket.as_secs_f64(),
                            points: Vec::new(),
                        },
                    );
                    self.probes.insert(name.clone(), h);
                    self.reported.push(0);
                }
                Err(e) => {
                    return Some((
                        RunStatus::Invalid,
                        Some(format!("probe {name} cannot start: {e}")),
                    ));
                }
            }
        }
        None
    }

    fn with_series<R>(&self, probe: &str, f: impl FnOnce(&faultline_probe::Series) -> R) -> R {
        match self.probes.get(probe) {
            Some(p) => p.recorder().with(f),
            // Validation guarantees every condition names a probe; an empty series
            // makes a missing one fail loudly ("no samples") rather than pass.
            None => f(&faultline_probe::Series::new(self.clock.bucket)),
        }
    }

    /// The earliest offset up to which every probe's samples are final.
    fn settled(&self) -> Duration {
        self.probes
            .values()
            .map(|p| p.recorder().with(|s| s.settled))
            .min()
            .unwrap_or_else(|| self.clock.now())
    }

    /// Waits until every probe has settled up to `until`, checking `abort_when`.
    /// A probe that stops settling (its target hangs past its timeout) cannot hold
    /// the run: after its longest timeout plus a margin, the run goes on with what
    /// was measured.
    async fn wait_settled(&mut self, until: Duration, monitor: &mut Monitor) -> Option<Outcome> {
        let give_up = until + self.max_probe_timeout() + Duration::from_secs(2);
        loop {
            if let Some(reason) = self.abort_reason(monitor) {
                return Some(self.abort(reason).await);
            }
            self.report_windows();
            for v in self.check_during(monitor) {
                self.verdict(v);
            }
            if self.settled() >= until || self.clock.now() >= give_up {
                return None;
            }
            self.sleep_tick().await;
        }
    }

    fn max_probe_timeout(&self) -> Duration {
        use faultline_spec::Probe;
        self.exp
            .probes
            .values()
            .map(|p| match p {
                Probe::Http(h) => h.timeout.0,
                Probe::Tcp(t) => t.timeout.0,
                Probe::Sql(s) => s.timeout.0,
                Probe::Prometheus(p) => p.timeout.0,
                Probe::Command(c) => c.timeout.0,
                Probe::Llm(l) => l.timeout.0,
            })
            .max()
            .unwrap_or(Duration::ZERO)
    }

    async fn sleep_tick(&self) {
        tokio::select! {
            _ = self.opts.abort.triggered() => {}
            _ = tokio::time::sleep(self.opts.tick) => {}
        }
    }

    /// An outside abort, or an `abort_when` condition that fired.
    fn abort_reason(&mut self, monitor: &mut Monitor) -> Option<String> {
        if self.opts.abort.is_triggered() {
            return Some(
                self.opts
                    .abort
                    .reason()
                    .unwrap_or_else(|| "aborted".to_owned()),
            );
        }
        let settled = self.settled();
        let fired = monitor.abort_when(self.exp, &self.probes, settled)?;
        let reason = failure_line(&fired);
        self.verdict(fired);
        Some(reason)
    }

    fn check_during(&mut self, monitor: &mut Monitor) -> Vec<VerdictRecord> {
        let settled = self.settled();
        monitor.during(self.exp, &self.probes, settled)
    }

    /// Reverts everything now, within the abort budget, and ends the run aborted.
    async fn abort(&mut self, reason: String) -> Outcome {
        let at_s = self.now_s();
        tracing::warn!(run = %self.opts.run_id, %reason, "aborting: reverting every fault");
        self.emit(Event::Aborting {
            reason: reason.clone(),
            at_s,
        });
        let events = self
            .slots
            .revert_all(&self.clock, ABORT_REVERT_BUDGET)
            .await;
        for e in events {
            self.emit(e);
        }
        (RunStatus::Aborted, Some(reason))
    }

    async fn recover(&mut self, last_revert: Duration) -> Outcome {
        let within = self
            .exp
            .recovery
            .as_ref()
            .map(|r| r.within.0)
            .unwrap_or(DEFAULT_RECOVERY);
        let hyps = &self.exp.hypotheses;
        let mut pending: BTreeSet<usize> = (0..hyps.len()).collect();
        let mut failed = Vec::new();
        loop {
            if self.opts.abort.is_triggered() {
                // Nothing is injected any more; stop waiting.
                let reason = self.opts.abort.reason().unwrap_or_else(|| "aborted".into());
                return (RunStatus::Aborted, Some(reason));
            }
            self.report_windows();
            let settled = self.settled();
            let now = self.clock.now();
            for i in pending.clone() {
                let h = &hyps[i];
                let window = faultline_probe::slo::window_of(h);
                let deadline = last_revert + within;
                // Probes that stop settling cannot hold the run forever.
                let give_up = deadline + window + self.max_probe_timeout() + Duration::from_secs(2);
                let found = self.with_series(&h.probe, |s| {
                    faultline_probe::slo::time_to_recover(h, s, last_revert)
                });
                let decided = match found {
                    Some(t) if t <= deadline => Some(Some(t)),
                    Some(_) => Some(None),
                    None if settled >= deadline + window || now >= give_up => Some(None),
                    None => None,
                };
                let Some(at) = decided else { continue };
                pending.remove(&i);
                let v = self.with_series(&h.probe, |s| {
                    let end = at.map(|t| t + window).unwrap_or(deadline + window);
                    let mut v =
                        checks::record(Phase::Recovery, CheckKind::Hypothesis, i, h, s, end);
                    match at {
                        Some(t) => {
                            v.holds = true;
                            v.reason = None;
                            v.time_to_recover_s = Some(t.saturating_sub(last_revert).as_secs_f64());
                        }
                        None => {
                            v.holds = false;
                            let why = v.reason.take().unwrap_or_else(|| "it held too late".into());
                            v.reason = Some(format!(
                                "did not hold for a full window within {} of the last revert ({why})",
                                faultline_spec::units::Duration(within)
                            ));
                        }
                    }
                    v
                });
                if !v.holds {
                    failed.push(failure_line(&v));
                }
                self.verdict(v);
            }
            if pending.is_empty() {
                break;
            }
            self.sleep_tick().await;
        }
        let during_failed: Vec<String> = self
            .journal
            .verdicts
            .iter()
            .filter(|v| !v.holds && v.phase == Phase::Faults)
            .map(failure_line)
            .collect();
        // `during` failures first: they happened first.
        failed.splice(0..0, during_failed);
        if failed.is_empty() {
            (RunStatus::Passed, None)
        } else {
            (RunStatus::Failed, Some(failed.join("; ")))
        }
    }

    /// Sends a window event for every newly settled bucket of every probe.
    fn report_windows(&mut self) {
        let mut out = Vec::new();
        for (k, (name, p)) in self.probes.iter().enumerate() {
            let next = &mut self.reported[k];
            p.recorder().with(|s| {
                while s.bucket_start(*next + 1) <= s.settled {
                    let point = point_of(s, *next);
                    out.push((name.clone(), point));
                    *next += 1;
                }
            });
        }
        for (probe, point) in out {
            if let Some(t) = self.journal.probes.get_mut(&probe) {
                t.points.push(point.clone());
            }
            self.emit(Event::Window { probe, point });
        }
    }

    /// Reverts whatever is still injected, verifies every agent, stops the probes
    /// and seals the journal.
    async fn finish(mut self, status: RunStatus, reason: Option<String>) -> Journal {
        let mut status = status;
        let mut reason = reason;
        if self.slots.any_injected() {
            // Normal runs have reverted everything already; this catches the paths
            // that returned early.
            for e in self
                .slots
                .revert_all(&self.clock, ABORT_REVERT_BUDGET)
                .await
            {
                self.emit(e);
            }
            self.enter(Phase::Verify);
            let left: Vec<LeftBehind> = self.slots.verify().await;
            if !left.is_empty() {
                let names = left
                    .iter()
                    .map(|l| format!("{} on {} ({})", l.fault, l.agent, l.reason))
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::error!(run = %self.opts.run_id, left = %names, "revert unconfirmed");
                let before = reason
                    .take()
                    .map(|r| format!(" after: {r}"))
                    .unwrap_or_default();
                reason = Some(format!("revert unconfirmed, may be left: {names}{before}"));
                status = RunStatus::RevertUnconfirmed;
                self.journal.left_behind = left;
            }
        }
        if let Some(last) = self.journal.phases.last_mut() {
            last.end_s.get_or_insert(self.clock.now().as_secs_f64());
        }
        for (_, p) in std::mem::take(&mut self.probes) {
            p.stop().await;
        }
        // The last buckets settled while the probes stopped: report them from the
        // final series in the timeline (no events: the run is over).
        self.journal.faults = self.slots.records();
        let ended = SystemTime::now();
        self.journal.status = status;
        self.journal.exit_code = status.exit_code();
        self.journal.reason = reason.clone();
        self.journal.ended_at = rfc3339(ended);
        self.journal.duration_s = ended
            .duration_since(self.started)
            .unwrap_or_default()
            .as_secs_f64();
        self.emit(Event::Finished {
            status,
            exit_code: status.exit_code(),
            reason,
        });
        self.journal
    }
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
