//! SLO evaluation: does a [`Hypothesis`] hold over a window of probe samples?
//!
//! - availability: successes / attempts, in percent. No attempts: not holding
//!   ("no samples"), since an SLA cannot be shown to hold on nothing.
//! - p50/p90/p99/p999: from the window's merged HDR histogram (see
//!   [`crate::window`] for which samples it holds).
//! - ttft_p50/ttft_p99, itl_p99: from the window's merged HDR histograms of time to
//!   first token and of inter-token gaps (see [`crate::window`] for what enters
//!   them). A window without any: not holding ("no streamed tokens").
//! - tokens_per_s: the per-stream output rate of the window's completed streams,
//!   judged at a percentile so that a few slow streams cannot hide behind an
//!   average: for `>`/`>=` the 1st percentile (the slowest 1% of streams must
//!   still meet the bound), read at the bottom of its HDR bucket; for `<`/`<=` the
//!   99th, read at the top. Either way a bound is never passed by rounding.
//! - burn rate: `(1 - availability) / (1 - slo)`: 1 spends the error budget exactly
//!   by the end of the SLO period. Rounded to 6 decimals so that a window exactly at
//!   a bound (990 of 1000 against 99.9% is 10) is not pushed over it by
//!   floating-point noise.
//! - value: every value measured in the window must satisfy the threshold, so the
//!   observed figure is the worst one (the maximum for `<`/`<=`, the minimum for
//!   `>`/`>=`).
//!
//! Over a series of buckets: [`evaluate_at`] looks at the window ending at an
//! instant; [`persists`] implements `for` (a condition seen at every bucket boundary
//! of the last `for`); [`time_to_recover`] finds the first instant after the last
//! revert from which the hypothesis holds for a full window.

use std::fmt;
use std::time::Duration;

use faultline_spec::Hypothesis;
use faultline_spec::units::{self, Cmp, Number, Percent, Threshold};

use crate::window::{Series, WindowStats};

/// The window a hypothesis is computed over when it names none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// What a threshold was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Availability,
    P50,
    P90,
    P99,
    P999,
    TtftP50,
    TtftP99,
    ItlP99,
    TokensPerS,
    BurnRate,
    Value,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Availability => "availability",
            Metric::P50 => "p50",
            Metric::P90 => "p90",
            Metric::P99 => "p99",
            Metric::P999 => "p999",
            Metric::TtftP50 => "ttft_p50",
            Metric::TtftP99 => "ttft_p99",
            Metric::ItlP99 => "itl_p99",
            Metric::TokensPerS => "tokens_per_s",
            Metric::BurnRate => "burn_rate",
            Metric::Value => "value",
        }
    }
}

/// A measured figure, in the unit of its threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observed {
    Percent(f64),
    Latency(Duration),
    Number(f64),
    /// Output tokens per second.
    TokensPerSecond(f64),
}

impl Observed {
    /// The figure as a plain number: percent, milliseconds, or the number.
    pub fn value(self) -> f64 {
        match self {
            Observed::Percent(p) => p,
            Observed::Latency(d) => d.as_secs_f64() * 1e3,
            Observed::Number(n) | Observed::TokensPerSecond(n) => n,
        }
    }
}

impl fmt::Display for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Three decimals are enough to compare with any bound people write
            // (99.95%); more is floating-point noise (41.666666666666664%).
            Observed::Percent(p) => {
                let s = format!("{p:.3}");
                write!(f, "{}%", s.trim_end_matches('0').trim_end_matches('.'))
            }
            Observed::Latency(d) => write!(f, "{}", units::Duration(*d)),
            Observed::Number(n) => write!(f, "{n}"),
            Observed::TokensPerSecond(n) => {
                let s = format!("{n:.2}");
                write!(f, "{}/s", s.trim_end_matches('0').trim_end_matches('.'))
            }
        }
    }
}

/// One threshold of a hypothesis: its bound, what was observed, and whether it held.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub metric: Metric,
    /// The threshold as written, e.g. `<= 500ms`.
    pub bound: String,
    /// `None` when there was nothing to measure (no samples, no latencies, no value).
    pub observed: Option<Observed>,
    pub holds: bool,
}

/// The outcome of evaluating one hypothesis over one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub holds: bool,
    pub checks: Vec<Check>,
    /// Why it does not hold (`None` when it holds).
    pub reason: Option<String>,
    /// Attempts in the window.
    pub samples: u64,
}

/// Evaluates every threshold of `h` against `stats`.
pub fn evaluate(h: &Hypothesis, stats: &WindowStats) -> Verdict {
    let mut checks = Vec::new();
    let total = stats.total();
    let mut push = |metric, bound: String, observed: Option<Observed>, holds: bool| {
        checks.push(Check {
            metric,
            bound,
            observed,
            holds: holds && observed.is_some(),
        })
    };

    if let Some(t) = &h.availability {
        let pct = availability_percent(stats);
        let holds = pct.and_then(Percent::new).is_some_and(|p| t.holds(p));
        push(
            Metric::Availability,
            t.to_string(),
            pct.map(Observed::Percent),
            holds,
        );
    }
    for (metric, q, t) in [
        (Metric::P50, 0.5, &h.p50),
        (Metric::P90, 0.9, &h.p90),
        (Metric::P99, 0.99, &h.p99),
        (Metric::P999, 0.999, &h.p999),
    ] {
        if let Some(t) = t {
            let d = stats.quantile(q);
            let holds = d.is_some_and(|d| t.holds(units::Duration(d)));
            push(metric, t.to_string(), d.map(Observed::Latency), holds);
        }
    }
    let stream = stats.stream.as_deref();
    for (metric, q, t) in [
        (Metric::TtftP50, 0.5, &h.ttft_p50),
        (Metric::TtftP99, 0.99, &h.ttft_p99),
    ] {
        if let Some(t) = t {
            let d = stream.and_then(|s| s.ttft_quantile(q));
            let holds = d.is_some_and(|d| t.holds(units::Duration(d)));
            push(metric, t.to_string(), d.map(Observed::Latency), holds);
        }
    }
    if let Some(t) = &h.itl_p99 {
        let d = stream.and_then(|s| s.itl_quantile(0.99));
        let holds = d.is_some_and(|d| t.holds(units::Duration(d)));
        push(
            Metric::ItlP99,
            t.to_string(),
            d.map(Observed::Latency),
            holds,
        );
    }
    if let Some(t) = &h.tokens_per_s {
        let r = stream.and_then(|s| match t.cmp {
            Cmp::Ge | Cmp::Gt => s.tokens_per_s_quantile(0.01, false),
            Cmp::Le | Cmp::Lt => s.tokens_per_s_quantile(0.99, true),
        });
        let holds = r.is_some_and(|r| t.holds(Number(r)));
        push(
            Metric::TokensPerS,
            t.to_string(),
            r.map(Observed::TokensPerSecond),
            holds,
        );
    }
    if let Some(t) = &h.burn_rate {
        let burn = h.slo.and_then(|slo| burn_rate(stats, slo));
        let holds = burn.is_some_and(|b| t.holds(Number(b)));
        push(
            Metric::BurnRate,
            t.to_string(),
            burn.map(Observed::Number),
            holds,
        );
    }
    if let Some(t) = &h.value {
        let v = worst_value(stats, t);
        let holds = v.is_some_and(|v| t.holds(Number(v)));
        push(Metric::Value, t.to_string(), v.map(Observed::Number), holds);
    }

    let holds = total > 0 && checks.iter().all(|c| c.holds);
    let reason = if holds {
        None
    } else if total == 0 {
        Some("no samples".to_owned())
    } else {
        Some(
            checks
                .iter()
                .filter(|c| !c.holds)
                .map(|c| failed_check_reason(c, h))
                .collect::<Vec<_>>()
                .join("; "),
        )
    };
    Verdict {
        holds,
        checks,
        reason,
        samples: total,
    }
}

fn failed_check_reason(c: &Check, h: &Hypothesis) -> String {
    let m = c.metric.as_str();
    match (&c.observed, c.metric) {
        (Some(o), _) => format!("{m} {o} (needs {})", c.bound),
        (None, Metric::BurnRate) if h.slo.is_none() => {
            "burn_rate needs slo, the target it burns against".to_owned()
        }
        (None, Metric::Value) => format!("{m}: no value measured (needs {})", c.bound),
        (None, Metric::P50 | Metric::P90 | Metric::P99 | Metric::P999) => {
            format!("{m}: no latency samples (needs {})", c.bound)
        }
        (None, Metric::TtftP50 | Metric::TtftP99 | Metric::ItlP99) => {
            format!("{m}: no streamed tokens (needs {})", c.bound)
        }
        (None, Metric::TokensPerS) => {
            format!("{m}: no completed streams with a rate (needs {})", c.bound)
        }
        (None, _) => format!("{m}: no samples (needs {})", c.bound),
    }
}

/// Availability in percent, computed as `successes * 100 / total` so that whole
/// counts at a bound compare exactly (999 of 1000 is 99.9%, as written).
pub fn availability_percent(stats: &WindowStats) -> Option<f64> {
    let total = stats.total();
    (total > 0).then(|| stats.successes as f64 * 100.0 / total as f64)
}

/// Error-budget burn rate against `slo`, rounded to 6 decimals; infinite when the
/// SLO is 100% and anything failed.
pub fn burn_rate(stats: &WindowStats, slo: Percent) -> Option<f64> {
    let total = stats.total();
    if total == 0 {
        return None;
    }
    let failed = stats.failed() as f64;
    let budget = 100.0 - slo.value();
    if budget <= 0.0 {
        return Some(if failed == 0.0 { 0.0 } else { f64::INFINITY });
    }
    let burn = failed * 100.0 / (total as f64 * budget);
    Some((burn * 1e6).round() / 1e6)
}

fn worst_value(stats: &WindowStats, t: &Threshold<Number>) -> Option<f64> {
    let v = stats.values?;
    Some(match t.cmp {
        Cmp::Le | Cmp::Lt => v.max,
        Cmp::Ge | Cmp::Gt => v.min,
    })
}

/// The window a hypothesis is computed over.
pub fn window_of(h: &Hypothesis) -> Duration {
    h.window.map(|w| w.get()).unwrap_or(DEFAULT_WINDOW)
}

/// Evaluates `h` over the window that ends at `end` (offset from the epoch).
pub fn evaluate_at(h: &Hypothesis, series: &Series, end: Duration) -> Verdict {
    let from = end.saturating_sub(window_of(h));
    evaluate(h, &series.window(from, end))
}

/// `for` handling: whether `h` evaluated to `holds` at every bucket boundary in
/// `[end - for, end]` (`end` rounded down to a boundary). Without `for`, only the
/// window ending at `end` counts.
///
/// `during` asks `persists(h, s, end, false)` (violated for the whole `for` before
/// it counts); `safety.abort_when` asks `persists(h, s, end, true)` (its condition,
/// e.g. `availability: "< 90%"`, met for the whole `for`).
pub fn persists(h: &Hypothesis, series: &Series, end: Duration, holds: bool) -> bool {
    let w = series.width;
    let end = series.bucket_start(series.index(end));
    let span = h.sustained.map(|d| d.get()).unwrap_or(Duration::ZERO);
    let steps = u32::try_from(span.as_nanos() / w.as_nanos()).unwrap_or(u32::MAX);
    (0..=steps).all(|k| match end.checked_sub(w.saturating_mul(k)) {
        Some(at) => evaluate_at(h, series, at).holds == holds,
        // Before the epoch there is nothing observed: the condition cannot have
        // persisted that long yet.
        None => false,
    })
}

/// Time to recover: the first bucket boundary at or after `after` from which `h`
/// holds over a full window of settled data (`series.settled`). `None`: it has not
/// recovered within the data so far. The time to recover is the result minus
/// `after`.
pub fn time_to_recover(h: &Hypothesis, series: &Series, after: Duration) -> Option<Duration> {
    let window = window_of(h);
    (series.index_ceil(after)..)
        .map(|i| series.bucket_start(i))
        .take_while(|t| *t + window <= series.settled)
        .find(|t| evaluate(h, &series.window(*t, *t + window)).holds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{FailureKind, Sample};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn hyp(yaml: &str) -> Hypothesis {
        serde_yaml::from_str(yaml).unwrap()
    }

    /// `ok` successes at `lat` ms and `bad` rejections, all at `at` ms.
    fn fill(s: &mut Series, at: u64, ok: u64, bad: u64, lat: u64) {
        for _ in 0..ok {
            s.record(&Sample::success(ms(at), ms(lat)));
        }
        for _ in 0..bad {
            s.record(&Sample::failure(ms(at), FailureKind::Rejected, Some(ms(1))));
        }
    }

    fn stats(ok: u64, bad: u64) -> WindowStats {
        let mut w = WindowStats::new();
        for i in 0..ok {
            // Latencies 1..=ok ms.
            w.record(&Sample::success(ms(0), ms(i + 1)));
        }
        for _ in 0..bad {
            w.record(&Sample::failure(ms(0), FailureKind::Rejected, Some(ms(1))));
        }
        w
    }

    #[test]
    fn availability_at_the_bound_holds_exactly() {
        let h = hyp("{ probe: api, availability: '>= 99.9%' }");
        let v = evaluate(&h, &stats(999, 1));
        assert!(v.holds, "{v:?}");
        assert_eq!(v.checks[0].observed, Some(Observed::Percent(99.9)));
        let v = evaluate(&h, &stats(998, 2));
        assert!(!v.holds);
        assert_eq!(
            v.reason.as_deref(),
            Some("availability 99.8% (needs >= 99.9%)")
        );
    }

    #[test]
    fn no_samples_never_holds() {
        let h = hyp("{ probe: api, availability: '>= 0%' }");
        let v = evaluate(&h, &WindowStats::new());
        assert!(!v.holds);
        assert_eq!(v.reason.as_deref(), Some("no samples"));
        assert_eq!(v.checks[0].observed, None);
    }

    #[test]
    fn percentiles_from_the_histogram() {
        // 1..=1000 ms: p50 = 500 ms, p90 = 900 ms, p99 = 990 ms, p999 = 999 ms
        // (all below 2048 units of the histogram's precision, so exact to 1 ms in
        // 3 significant figures of microseconds: 500000 µs is within 0.1%).
        let w = stats(1000, 0);
        let h = hyp(
            "{ probe: api, p50: '<= 500ms', p90: '<= 901ms', p99: '<= 991ms', p999: '< 999ms' }",
        );
        let v = evaluate(&h, &w);
        let observed: Vec<_> = v.checks.iter().map(|c| c.observed).collect();
        let lat = |c: &Check| match c.observed {
            Some(Observed::Latency(d)) => d,
            other => panic!("{other:?}"),
        };
        // HDR reports the highest value equivalent to the bucket: within 0.1%.
        let close = |d: Duration, want: u64| {
            let got = d.as_micros() as f64;
            let want = (want * 1000) as f64;
            (got - want).abs() <= want * 0.001
        };
        assert!(close(lat(&v.checks[0]), 500), "{observed:?}");
        assert!(close(lat(&v.checks[1]), 900), "{observed:?}");
        assert!(close(lat(&v.checks[2]), 990), "{observed:?}");
        assert!(close(lat(&v.checks[3]), 999), "{observed:?}");
        // p50 may read 500.223 ms (bucket top), so `<= 500ms` fails; p999 `< 999ms`
        // fails whatever the bucket.
        assert!(!v.checks[3].holds);
        assert!(v.checks[1].holds && v.checks[2].holds);
    }

    #[test]
    fn small_latencies_are_exact() {
        // Below 2048 µs the histogram is exact.
        let mut w = WindowStats::new();
        for us in [100u64, 200, 300, 400, 1000] {
            w.record(&Sample::success(ms(0), Duration::from_micros(us)));
        }
        assert_eq!(w.quantile(0.5), Some(Duration::from_micros(300)));
        assert_eq!(w.quantile(0.8), Some(Duration::from_micros(400)));
        assert_eq!(w.quantile(0.99), Some(Duration::from_micros(1000)));
        let h = hyp("{ probe: api, p50: '<= 300us', p99: '< 1ms' }");
        let v = evaluate(&h, &w);
        assert!(v.checks[0].holds);
        assert!(!v.checks[1].holds);
        assert_eq!(v.reason.as_deref(), Some("p99 1ms (needs < 1ms)"));
    }

    #[test]
    fn latency_thresholds_without_latencies_do_not_hold() {
        let h = hyp("{ probe: api, p99: '<= 1s' }");
        let v = evaluate(&h, &stats(0, 3));
        assert!(!v.holds);
        assert_eq!(
            v.reason.as_deref(),
            Some("p99: no latency samples (needs <= 1s)")
        );
    }

    #[test]
    fn burn_rate_exact_at_the_bound() {
        // 10 failures in 1000 against 99.9%: 1% / 0.1% = 10.
        let h = hyp("{ probe: api, slo: 99.9%, burn_rate: '<= 10' }");
        let v = evaluate(&h, &stats(990, 10));
        assert_eq!(v.checks[0].observed, Some(Observed::Number(10.0)));
        assert!(v.holds, "{v:?}");
        let v = evaluate(&h, &stats(989, 11));
        assert_eq!(v.checks[0].observed, Some(Observed::Number(11.0)));
        assert!(!v.holds);
        // 1 in 400 against 99%: 0.25% / 1% = 0.25.
        let h = hyp("{ probe: api, slo: 99%, burn_rate: '< 1' }");
        let v = evaluate(&h, &stats(399, 1));
        assert_eq!(v.checks[0].observed, Some(Observed::Number(0.25)));
        assert!(v.holds);
        assert_eq!(burn_rate(&stats(5, 0), Percent::HUNDRED), Some(0.0));
        assert_eq!(
            burn_rate(&stats(5, 1), Percent::HUNDRED),
            Some(f64::INFINITY)
        );
    }

    #[test]
    fn value_thresholds_take_the_worst_value() {
        let mut w = WindowStats::new();
        for (i, v) in [3.0, 7.0, 5.0].into_iter().enumerate() {
            w.record(&Sample::success(ms(i as u64), ms(1)).with_value(v));
        }
        let v = evaluate(&hyp("{ probe: q, value: '<= 5' }"), &w);
        assert_eq!(v.checks[0].observed, Some(Observed::Number(7.0)));
        assert!(!v.holds);
        let v = evaluate(&hyp("{ probe: q, value: '>= 3' }"), &w);
        assert_eq!(v.checks[0].observed, Some(Observed::Number(3.0)));
        assert!(v.holds);
        let v = evaluate(&hyp("{ probe: q, value: '>= 3' }"), &stats(2, 0));
        assert_eq!(
            v.reason.as_deref(),
            Some("value: no value measured (needs >= 3)")
        );
    }

    #[test]
    fn stream_terms_from_the_stream_histograms() {
        use crate::window::StreamFigures;
        let mut w = WindowStats::new();
        for i in 0..100u64 {
            // TTFT 100..=199 ms; 10 tokens/s for one stream in a hundred, 50 for the rest.
            let figures = StreamFigures {
                ttft: Some(ms(100 + i)),
                tokens: Some(16),
                tokens_per_s: Some(if i == 0 { 10.0 } else { 50.0 }),
            };
            w.record(&Sample::success(ms(0), ms(400)).with_stream(figures));
            w.record_gaps(&[ms(20), ms(20), if i == 99 { ms(2000) } else { ms(25) }]);
        }
        let h = hyp(
            "{ probe: llm, ttft_p50: '<= 150ms', ttft_p99: '<= 200ms', itl_p99: '<= 500ms', \
               tokens_per_s: '>= 20' }",
        );
        let v = evaluate(&h, &w);
        let metrics: Vec<_> = v
            .checks
            .iter()
            .map(|c| (c.metric.as_str(), c.holds))
            .collect();
        assert_eq!(
            metrics,
            vec![
                ("ttft_p50", true),
                ("ttft_p99", true),
                ("itl_p99", true),
                ("tokens_per_s", false)
            ],
            "{v:?}"
        );
        // The slowest stream in a hundred is the 1st percentile: 10 tokens/s.
        assert_eq!(v.checks[3].observed, Some(Observed::TokensPerSecond(10.0)));
        assert_eq!(v.reason.as_deref(), Some("tokens_per_s 10/s (needs >= 20)"));
        // One 2 s gap in 300 is above the 99th percentile; two in a hundred gaps are not.
        let mut w2 = WindowStats::new();
        w2.record(&Sample::success(ms(0), ms(1)).with_stream(StreamFigures::default()));
        w2.record_gaps(&[ms(20); 98]);
        w2.record_gaps(&[ms(2000), ms(2000)]);
        let v = evaluate(&hyp("{ probe: llm, itl_p99: '<= 500ms' }"), &w2);
        assert!(!v.holds);
        assert!(
            v.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("itl_p99 2s")),
            "{v:?}"
        );
        // Nothing streamed: the terms cannot hold.
        let v = evaluate(&hyp("{ probe: llm, ttft_p99: '<= 1s' }"), &stats(3, 0));
        assert_eq!(
            v.reason.as_deref(),
            Some("ttft_p99: no streamed tokens (needs <= 1s)")
        );
    }

    /// Ten 1 s buckets: seconds 0-3 healthy, 4-6 all failing, 7-9 healthy.
    fn outage_series() -> Series {
        let mut s = Series::new(ms(1000));
        for sec in 0..10 {
            let bad = (4..=6).contains(&sec);
            fill(
                &mut s,
                sec * 1000 + 500,
                if bad { 0 } else { 10 },
                if bad { 10 } else { 0 },
                5,
            );
        }
        s.settled = ms(10_000);
        s
    }

    #[test]
    fn windows_over_a_series() {
        let s = outage_series();
        let h = hyp("{ probe: api, availability: '>= 50%', window: 2s }");
        // Window [3s, 5s): one good, one bad bucket: 50%.
        let v = evaluate_at(&h, &s, ms(5000));
        assert_eq!(v.checks[0].observed, Some(Observed::Percent(50.0)));
        assert!(v.holds);
        // [4s, 6s): 0%.
        assert!(!evaluate_at(&h, &s, ms(6000)).holds);
        // The default window is 10 s: 70 of 100.
        let h = hyp("{ probe: api, availability: '>= 70%' }");
        let v = evaluate_at(&h, &s, ms(10_000));
        assert_eq!(v.checks[0].observed, Some(Observed::Percent(70.0)));
    }

    #[test]
    fn sustained_violation_and_abort() {
        let s = outage_series();
        // 1 s window: violated in the windows ending at 5s, 6s and 7s.
        let during = hyp("{ probe: api, availability: '>= 99%', window: 1s, for: 2s }");
        assert!(!persists(&during, &s, ms(6000), false)); // 4s..6s: 4s window held
        assert!(persists(&during, &s, ms(7000), false)); // 5s, 6s, 7s
        assert!(persists(&during, &s, ms(7999), false)); // rounds down to 7s
        assert!(!persists(&during, &s, ms(8000), false)); // 8s holds again
        // Without `for`, one window decides.
        let abort = hyp("{ probe: api, availability: '< 90%', window: 1s }");
        assert!(persists(&abort, &s, ms(5000), true));
        assert!(!persists(&abort, &s, ms(4000), true));
        // Longer than the data so far: not yet.
        let abort = hyp("{ probe: api, availability: '< 90%', window: 1s, for: 30s }");
        assert!(!persists(&abort, &s, ms(7000), true));
    }

    #[test]
    fn time_to_recover_needs_a_full_window() {
        let s = outage_series();
        let h = hyp("{ probe: api, availability: '>= 99%', window: 2s }");
        // Reverted at 6.2 s: the first boundary at or after it is 7 s, and [7s, 9s)
        // holds.
        assert_eq!(time_to_recover(&h, &s, ms(6200)), Some(ms(7000)));
        // Reverted at 4 s: [4s, 6s) .. [6s, 8s) fail; [7s, 9s) holds.
        assert_eq!(time_to_recover(&h, &s, ms(4000)), Some(ms(7000)));
        // From 0: [0, 2s) already holds.
        assert_eq!(time_to_recover(&h, &s, ms(0)), Some(ms(0)));
        // A 4 s window never fits after 7 s in 10 s of data.
        let h = hyp("{ probe: api, availability: '>= 99%', window: 4s }");
        assert_eq!(time_to_recover(&h, &s, ms(6200)), None);
        // Unsettled data does not count.
        let mut s = outage_series();
        s.settled = ms(8500);
        let h = hyp("{ probe: api, availability: '>= 99%', window: 2s }");
        assert_eq!(time_to_recover(&h, &s, ms(6200)), None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn availability_threshold_matches_integer_arithmetic(
                ok in 0u64..2000, bad in 0u64..2000, pct in 0u32..=1000,
            ) {
                prop_assume!(ok + bad > 0);
                let bound = f64::from(pct) / 10.0;
                let h = hyp(&format!("{{ probe: a, availability: '>= {bound}%' }}"));
                let v = evaluate(&h, &stats(ok, bad));
                // ok / (ok + bad) >= pct / 1000, in integers.
                prop_assert_eq!(v.holds, ok * 1000 >= u64::from(pct) * (ok + bad));
            }

            #[test]
            fn windows_merge_like_one_recording(
                samples in proptest::collection::vec((0u64..5000, 1u64..100_000, any::<bool>()), 1..200),
                split in 0u64..5000,
            ) {
                let mut series = Series::new(ms(250));
                let mut whole = WindowStats::new();
                for (at, us, ok) in &samples {
                    let s = if *ok {
                        Sample::success(ms(*at), Duration::from_micros(*us))
                    } else {
                        Sample::failure(ms(*at), FailureKind::Timeout, Some(Duration::from_micros(*us)))
                    };
                    series.record(&s);
                    whole.record(&s);
                }
                let split = ms(split / 250 * 250);
                let mut merged = series.window(ms(0), split);
                merged.merge(&series.window(split, ms(5000)));
                prop_assert_eq!(merged.total(), whole.total());
                prop_assert_eq!(merged.successes, whole.successes);
                prop_assert_eq!(merged.latency.len(), whole.latency.len());
                for q in [0.5, 0.9, 0.99, 1.0] {
                    prop_assert_eq!(merged.quantile(q), whole.quantile(q));
                }
            }
        }
    }
}
