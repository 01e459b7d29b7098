//! Conditions over probe series: the verdict records of hypotheses, `during`
//! tolerances and `abort_when`, evaluated at settled bucket boundaries.

use std::collections::BTreeMap;
use std::time::Duration;

use faultline_probe::slo::{self, Observed};
use faultline_probe::window::FailureKind;
use faultline_probe::{ProbeHandle, Series};
use faultline_spec::{Experiment, Hypothesis};
use indexmap::IndexMap;

use crate::journal::{CheckKind, CheckRecord, Phase, ProbePoint, VerdictRecord};

/// `api: availability >= 99%, p99 <= 300ms` (plus ` over 30s`, ` for 5s` when given).
pub fn describe(h: &Hypothesis) -> String {
    let mut parts = Vec::new();
    if let Some(t) = &h.availability {
        parts.push(format!("availability {t}"));
    }
    for (name, t) in [
        ("p50", &h.p50),
        ("p90", &h.p90),
        ("p99", &h.p99),
        ("p999", &h.p999),
        ("ttft_p50", &h.ttft_p50),
        ("ttft_p99", &h.ttft_p99),
        ("itl_p99", &h.itl_p99),
    ] {
        if let Some(t) = t {
            parts.push(format!("{name} {t}"));
        }
    }
    if let Some(t) = &h.tokens_per_s {
        parts.push(format!("tokens_per_s {t}"));
    }
    if let Some(t) = &h.burn_rate {
        match &h.slo {
            Some(slo) => parts.push(format!("burn_rate {t} (slo {slo})")),
            None => parts.push(format!("burn_rate {t}")),
        }
    }
    if let Some(t) = &h.value {
        parts.push(format!("value {t}"));
    }
    let mut s = format!("{}: {}", h.probe, parts.join(", "));
    if let Some(w) = &h.window {
        s.push_str(&format!(" over {w}"));
    }
    if let Some(f) = &h.sustained {
        s.push_str(&format!(" for {f}"));
    }
    s
}

/// Evaluates `h` over the window ending at `end` as a journal record.
pub(super) fn record(
    phase: Phase,
    kind: CheckKind,
    index: usize,
    h: &Hypothesis,
    series: &Series,
    end: Duration,
) -> VerdictRecord {
    let v = slo::evaluate_at(h, series, end);
    VerdictRecord {
        phase,
        kind,
        index,
        probe: h.probe.clone(),
        name: describe(h),
        holds: v.holds,
        at_s: end.as_secs_f64(),
        window_s: slo::window_of(h).as_secs_f64(),
        samples: v.samples,
        checks: v
            .checks
            .iter()
            .map(|c| CheckRecord {
                metric: c.metric.as_str().to_owned(),
                bound: c.bound.clone(),
                observed: c.observed.map(|o| o.to_string()),
                value: c.observed.map(Observed::value),
                holds: c.holds,
            })
            .collect(),
        reason: v.reason,
        time_to_recover_s: None,
    }
}

/// Bucket `i` of `s` as a timeline point.
pub(super) fn point_of(s: &Series, i: usize) -> ProbePoint {
    let t_s = s.bucket_start(i).as_secs_f64();
    let Some(b) = s.buckets().get(i) else {
        return ProbePoint {
            t_s,
            total: 0,
            successes: 0,
            availability: None,
            p50_ms: None,
            p99_ms: None,
            ttft_p99_ms: None,
            itl_p99_ms: None,
            failures: BTreeMap::new(),
            value: None,
        };
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    ProbePoint {
        t_s,
        total: b.total(),
        successes: b.successes,
        availability: slo::availability_percent(b),
        p50_ms: b.quantile(0.5).map(ms),
        p99_ms: b.quantile(0.99).map(ms),
        ttft_p99_ms: b
            .stream
            .as_deref()
            .and_then(|st| st.ttft_quantile(0.99))
            .map(ms),
        itl_p99_ms: b
            .stream
            .as_deref()
            .and_then(|st| st.itl_quantile(0.99))
            .map(ms),
        failures: FailureKind::ALL
            .iter()
            .filter(|k| b.failures(**k) > 0)
            .map(|k| (k.as_str().to_owned(), b.failures(*k)))
            .collect(),
        value: b.values.map(|v| v.last),
    }
}

/// The continuous checks: `abort_when` from the baseline on, `during` from the
/// first fault on. Each is evaluated once per newly settled bucket boundary.
#[derive(Debug)]
pub(super) struct Monitor {
    phase: Phase,
    during_from: Option<Duration>,
    /// The end of the fault phase: `during` is not evaluated past it.
    during_until: Option<Duration>,
    during_violated: Vec<bool>,
    abort_checked: Option<Duration>,
    during_checked: Option<Duration>,
    /// The run clock's bucket width, which every probe's series shares.
    width: Duration,
}

impl Monitor {
    pub(super) fn new(exp: &Experiment, width: Duration) -> Self {
        Monitor {
            phase: Phase::Baseline,
            during_from: None,
            during_until: None,
            during_violated: vec![false; exp.during.len()],
            abort_checked: None,
            during_checked: None,
            width: width.max(Duration::from_nanos(1)),
        }
    }

    pub(super) fn start_during(&mut self, t0: Duration) {
        self.phase = Phase::Faults;
        self.during_from = Some(t0);
    }

    pub(super) fn stop_during(&mut self, end: Duration) {
        self.during_until = Some(end);
    }

    /// The bucket boundary at or before `at`.
    fn floor(&self, at: Duration) -> Duration {
        let n = at.as_nanos() / self.width.as_nanos();
        self.width
            .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// The first `abort_when` condition that has held for its `for`, as a record
    /// with `holds: false` (it fired).
    pub(super) fn abort_when(
        &mut self,
        exp: &Experiment,
        probes: &IndexMap<String, ProbeHandle>,
        settled: Duration,
    ) -> Option<VerdictRecord> {
        let at = self.floor(settled);
        if at.is_zero() || self.abort_checked.is_some_and(|c| c >= at) {
            return None;
        }
        self.abort_checked = Some(at);
        for (i, h) in exp.safety.abort_when.iter().enumerate() {
            let Some(p) = probes.get(&h.probe) else {
                continue;
            };
            let fired = p.recorder().with(|s| {
                slo::persists(h, s, at, true)
                    .then(|| record(self.phase, CheckKind::AbortWhen, i, h, s, at))
            });
            if let Some(mut v) = fired {
                v.holds = false;
                v.reason = Some(format!(
                    "condition met{}",
                    h.sustained.map(|f| format!(" for {f}")).unwrap_or_default()
                ));
                return Some(v);
            }
        }
        None
    }

    /// `during` tolerances violated (for their `for`) for the first time.
    pub(super) fn during(
        &mut self,
        exp: &Experiment,
        probes: &IndexMap<String, ProbeHandle>,
        settled: Duration,
    ) -> Vec<VerdictRecord> {
        let Some(t0) = self.during_from else {
            return Vec::new();
        };
        let mut at = self.floor(settled);
        if let Some(end) = self.during_until {
            // Not past the boundary at or after the end of the fault phase.
            let ceil = self.floor(end + self.width - Duration::from_nanos(1));
            at = at.min(ceil);
        }
        if at <= t0 || self.during_checked.is_some_and(|c| c >= at) {
            return Vec::new();
        }
        self.during_checked = Some(at);
        let mut out = Vec::new();
        for (i, h) in exp.during.iter().enumerate() {
            if self.during_violated[i] {
                continue;
            }
            let Some(p) = probes.get(&h.probe) else {
                continue;
            };
            let violated = p.recorder().with(|s| {
                slo::persists(h, s, at, false)
                    .then(|| record(Phase::Faults, CheckKind::During, i, h, s, at))
            });
            if let Some(mut v) = violated {
                self.during_violated[i] = true;
                v.holds = false;
                if let Some(f) = h.sustained {
                    let why = v.reason.take().unwrap_or_default();
                    v.reason = Some(format!("{why}, for {f}"));
                }
                out.push(v);
            }
        }
        out
    }

    /// One record per `during` tolerance never violated: it held over the whole
    /// fault phase (the figures are the phase's).
    pub(super) fn held_during(
        &self,
        exp: &Experiment,
        probes: &IndexMap<String, ProbeHandle>,
        end: Duration,
    ) -> Vec<VerdictRecord> {
        let t0 = self.during_from.unwrap_or_default();
        let mut out = Vec::new();
        for (i, h) in exp.during.iter().enumerate() {
            if self.during_violated[i] {
                continue;
            }
            let mut v = match probes.get(&h.probe) {
                Some(p) => p.recorder().with(|s| {
                    let mut whole = h.clone();
                    whole.window = Some(faultline_spec::units::Duration(end.saturating_sub(t0)));
                    let mut v = record(Phase::Faults, CheckKind::During, i, &whole, s, end);
                    v.name = describe(h);
                    v
                }),
                None => continue,
            };
            v.holds = true;
            v.reason = None;
            out.push(v);
        }
        out
    }
}
