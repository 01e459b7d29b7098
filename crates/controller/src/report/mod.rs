//! Renderers of a run's [`Journal`]: the results table the CLI prints on stdout
//! after a run ([`table`]), JUnit XML for CI test UIs ([`junit`]), and a
//! self-contained HTML report with an SVG timeline ([`html`], [`timeline_svg`]).
//!
//! Every renderer reads the journal only; none of them does I/O except [`html`],
//! which writes the files it names. Failures are named the same way in all three
//! ([`failure_line`]), so that what a CI log says is what the HTML page says.

mod html;
mod junit;
mod table;
mod timeline;

#[cfg(test)]
pub(crate) mod fixtures;

use std::path::PathBuf;

pub use html::html;
pub use junit::junit;
pub use table::table;
pub(crate) use timeline::palette;
pub use timeline::timeline_svg;

use crate::journal::{CheckKind, CheckRecord, FaultRecord, Journal, RunStatus, VerdictRecord};

/// Why a report could not be rendered or written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("JUnit XML: {0}")]
    Junit(#[from] quick_junit::SerializeError),
    #[error("timeline chart: {0}")]
    Chart(String),
    #[error("journal JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The status as the table and the HTML page shout it: `PASSED`, `FAILED`, ...
pub(crate) fn status_word(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Passed => "PASSED",
        RunStatus::Failed => "FAILED",
        RunStatus::Invalid => "INVALID",
        RunStatus::Aborted => "ABORTED",
        RunStatus::RevertUnconfirmed => "REVERT UNCONFIRMED",
    }
}

pub(crate) fn kind_str(kind: CheckKind) -> &'static str {
    match kind {
        CheckKind::Hypothesis => "hypothesis",
        CheckKind::During => "during",
        CheckKind::AbortWhen => "abort_when",
    }
}

/// A length of time: `4.0s`, `1m34.2s`.
pub(crate) fn fmt_duration(s: f64) -> String {
    if !s.is_finite() {
        return "?".to_owned();
    }
    if s.abs() < 60.0 {
        format!("{s:.1}s")
    } else {
        let whole = s.abs();
        let m = (whole / 60.0).floor();
        let sign = if s < 0.0 { "-" } else { "" };
        format!("{sign}{m:.0}m{:04.1}s", whole - m * 60.0)
    }
}

/// An offset on the run's timeline: `+12.0s`.
/// Always in seconds, so that offsets line up with the timeline's axis.
pub(crate) fn fmt_offset(s: f64) -> String {
    if !s.is_finite() {
        "?".to_owned()
    } else if s < 0.0 {
        format!("{s:.1}s")
    } else {
        format!("+{s:.1}s")
    }
}

/// The opposite of a bound's comparison, to say why a check failed:
/// `<= 300ms` -> `> 300ms`. A bound without an operator comes back as written.
pub(crate) fn negate_bound(bound: &str) -> String {
    let b = bound.trim();
    for (op, neg) in [
        ("<=", ">"),
        (">=", "<"),
        ("==", "!="),
        ("!=", "=="),
        ("<", ">="),
        (">", "<="),
        ("=", "!="),
    ] {
        if let Some(rest) = b.strip_prefix(op) {
            return format!("{neg} {}", rest.trim_start());
        }
    }
    format!("not {b}")
}

/// One check as a line of the table or the HTML page: `p99 <= 300ms: 612ms`.
pub(crate) fn check_text(c: &CheckRecord) -> String {
    match &c.observed {
        Some(o) => format!("{} {}: {o}", c.metric, c.bound),
        None => format!("{} {}: not measured", c.metric, c.bound),
    }
}

/// Why a check failed: `p99 612ms > 300ms`.
fn check_violation(c: &CheckRecord) -> String {
    match &c.observed {
        Some(o) => format!("{} {o} {}", c.metric, negate_bound(&c.bound)),
        None => format!("{} not measured (needs {})", c.metric, c.bound),
    }
}

/// What a failed verdict says, without the `FAILED:` in front:
/// `recovery: api: availability >= 99%, p99 <= 300ms (p99 612ms > 300ms)`.
///
/// For `abort_when` the checks are the firing condition, whose direction the
/// journal does not pin down, so they are listed as measured with their bound.
pub fn failure_line(v: &VerdictRecord) -> String {
    let mut line = match v.kind {
        CheckKind::Hypothesis => {
            let why: Vec<String> = v
                .checks
                .iter()
                .filter(|c| !c.holds)
                .map(check_violation)
                .collect();
            paren(format!("{}: {}", v.phase.as_str(), v.name), &why.join(", "))
        }
        CheckKind::During => {
            let why: Vec<String> = v
                .checks
                .iter()
                .filter(|c| !c.holds)
                .map(check_violation)
                .collect();
            let mut detail = format!("at {}", fmt_offset(v.at_s));
            if !why.is_empty() {
                detail.push_str(": ");
                detail.push_str(&why.join(", "));
            }
            paren(format!("during: {}", v.name), &detail)
        }
        CheckKind::AbortWhen => {
            let measured: Vec<String> = v
                .checks
                .iter()
                .map(|c| match &c.observed {
                    Some(o) => format!("{} {o}, fires {}", c.metric, c.bound),
                    None => format!("{} not measured, fires {}", c.metric, c.bound),
                })
                .collect();
            let mut detail = format!("fired at {}", fmt_offset(v.at_s));
            if !measured.is_empty() {
                detail.push_str(": ");
                detail.push_str(&measured.join(", "));
            }
            paren(format!("abort_when: {}", v.name), &detail)
        }
    };
    if let Some(reason) = v.reason.as_deref().filter(|r| !r.is_empty()) {
        line.push_str(": ");
        line.push_str(reason);
    }
    line
}

fn paren(head: String, detail: &str) -> String {
    if detail.is_empty() {
        head
    } else {
        format!("{head} ({detail})")
    }
}

/// The word a failed verdict is announced with.
pub(crate) fn failure_word(v: &VerdictRecord) -> &'static str {
    match v.kind {
        CheckKind::AbortWhen => "ABORTED",
        _ => "FAILED",
    }
}

/// Whether a fault's revert is in doubt: it was (or may have been) injected and
/// the agent did not confirm it gone.
pub(crate) fn revert_in_doubt(f: &FaultRecord) -> bool {
    f.revert_error.is_some() || (!f.revert_confirmed && f.injected_s.is_some())
}

/// A fault's window on the timeline: injected..reverted, the planned ends where
/// either is missing. `planned` is true when any end is the plan's.
pub(crate) fn fault_window(f: &FaultRecord) -> (f64, f64, bool) {
    let start = f.injected_s.unwrap_or(f.planned_start_s);
    let end = f.reverted_s.unwrap_or(f.planned_end_s.max(start));
    (start, end, f.injected_s.is_none() || f.reverted_s.is_none())
}

/// The run's epoch (second 0 of every `*_s` field) as a wall-clock time, from the
/// first phase record (which carries both), or the run's start.
pub(crate) fn epoch(j: &Journal) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    for p in &j.phases {
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&p.started_at)
            && p.start_s.is_finite()
        {
            return Some(t - chrono::TimeDelta::milliseconds((p.start_s * 1000.0).round() as i64));
        }
    }
    chrono::DateTime::parse_from_rfc3339(&j.started_at).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Phase;

    #[test]
    fn report_negates_bounds() {
        assert_eq!(negate_bound("<= 300ms"), "> 300ms");
        assert_eq!(negate_bound(">= 99%"), "< 99%");
        assert_eq!(negate_bound("< 2"), ">= 2");
        assert_eq!(negate_bound(">0.5"), "<= 0.5");
        assert_eq!(negate_bound("ok"), "not ok");
    }

    #[test]
    fn report_formats_durations() {
        assert_eq!(fmt_duration(4.04), "4.0s");
        assert_eq!(fmt_duration(94.2), "1m34.2s");
        assert_eq!(fmt_offset(12.0), "+12.0s");
        assert_eq!(fmt_offset(70.5), "+70.5s");
        assert_eq!(fmt_offset(-2.0), "-2.0s");
    }

    #[test]
    fn report_failure_line_names_hypothesis_and_violation() {
        let j = fixtures::failed_run();
        let v = j
            .failures()
            .find(|v| v.phase == Phase::Recovery)
            .expect("fixture has a failed recovery");
        assert_eq!(
            failure_line(v),
            "recovery: api: availability >= 99%, p99 <= 300ms (p99 612ms > 300ms): \
             not held within recovery.within 30s"
        );
    }

    #[test]
    fn report_epoch_comes_from_phase_records() {
        let j = fixtures::failed_run();
        let e = epoch(&j).expect("epoch");
        assert_eq!(e.to_rfc3339(), "2025-03-04T10:00:00+00:00");
    }
}
