//! The results table the CLI prints on stdout after a run. Plain text: no colour
//! codes, `ok`/`FAIL` words rather than symbols, so that it reads the same in a
//! terminal, a CI log and a pasted ticket. Failures are repeated by name at the
//! bottom, where a reader of a long CI log looks first.

use std::fmt::Write as _;

use comfy_table::{ColumnConstraint, Table, Width, presets};

use super::{
    check_text, failure_line, failure_word, fmt_duration, fmt_offset, kind_str, revert_in_doubt,
    status_word,
};
use crate::journal::{CheckKind, FaultRecord, Journal, ObservationRecord, Phase, RunStatus};

/// Renders the results table of a run: a header line, the verdicts, the faults,
/// time to recover per hypothesis, every failure by name and anything left behind.
pub fn table(j: &Journal) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "experiment {}  run {}  {} (exit {})  duration {}",
        j.experiment,
        j.run_id,
        status_word(j.status),
        j.exit_code,
        fmt_duration(j.duration_s)
    );
    if let Some(reason) = &j.reason {
        let _ = writeln!(out, "reason: {reason}");
    }

    out.push_str("\nVerdicts\n");
    if j.verdicts.is_empty() {
        out.push_str("  (none: the run stopped before any condition was checked)\n");
    } else {
        out.push_str(&verdicts(j).trim_fmt());
        out.push('\n');
    }

    if !j.faults.is_empty() {
        out.push_str("\nFaults\n");
        out.push_str(&faults(&j.faults).trim_fmt());
        out.push('\n');
    }

    let recovery: Vec<_> = j
        .verdicts
        .iter()
        .filter(|v| v.phase == Phase::Recovery && v.kind == CheckKind::Hypothesis)
        .collect();
    if !recovery.is_empty() {
        out.push_str("\nTime to recover\n");
        let width = recovery
            .iter()
            .map(|v| v.name.chars().count())
            .max()
            .unwrap_or(0);
        for v in recovery {
            let ttr = match v.time_to_recover_s {
                Some(s) => fmt_duration(s),
                None if v.holds => "held".to_owned(),
                None => "NOT RECOVERED".to_owned(),
            };
            let _ = writeln!(out, "  {:<width$}  {ttr}", v.name);
        }
    }

    let mut bottom = Vec::new();
    for v in j.failures() {
        bottom.push(format!("{}: {}", failure_word(v), failure_line(v)));
    }
    for f in &j.faults {
        if let Some(e) = &f.inject_error {
            bottom.push(format!(
                "FAILED: inject {} ({}) on {}: {e}",
                f.step, f.kind, f.agent
            ));
        }
        if revert_in_doubt(f) {
            bottom.push(format!(
                "REVERT UNCONFIRMED: {} ({}) on {}: {}",
                f.step,
                f.kind,
                f.agent,
                f.revert_error
                    .as_deref()
                    .unwrap_or("the agent did not confirm it gone")
            ));
        }
    }
    if bottom.is_empty() && j.status != RunStatus::Passed {
        bottom.push(format!(
            "{}: {}",
            status_word(j.status),
            j.reason.as_deref().unwrap_or("no reason recorded")
        ));
    }
    out.push('\n');
    if bottom.is_empty() {
        out.push_str("PASSED: every hypothesis held\n");
    }
    for line in bottom {
        out.push_str(&line);
        out.push('\n');
    }

    if !j.left_behind.is_empty() {
        let n = j.left_behind.len();
        let _ = writeln!(
            out,
            "\n!!! LEFT BEHIND: {n} fault{} may still be active !!!",
            if n == 1 { "" } else { "s" }
        );
        for l in &j.left_behind {
            let _ = write!(
                out,
                "!!! {} on {} (fault {}): {}",
                l.kind, l.agent, l.fault, l.reason
            );
            match &l.lease_expires_at {
                Some(at) => {
                    let _ = writeln!(out, "; the agent reverts it when its lease lapses at {at}");
                }
                None => out.push_str("; lease expiry unknown\n"),
            }
        }
        out.push_str("!!! check these agents now (GET /v1/faults, POST /v1/halt)\n");
    }
    out
}

fn verdicts(j: &Journal) -> Table {
    let mut t = Table::new();
    t.load_style(presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "phase",
        "check",
        "condition",
        "result",
        "checks",
        "at",
    ]);
    for v in &j.verdicts {
        let result = match (v.kind, v.holds) {
            (_, true) => "ok",
            (CheckKind::AbortWhen, false) => "FIRED",
            (_, false) => "FAIL",
        };
        let checks: Vec<String> = v
            .checks
            .iter()
            .map(|c| match v.kind {
                // abort_when checks are the firing condition, not a bound to keep.
                CheckKind::AbortWhen => format!("     {}", check_text(c)),
                _ => format!(
                    "{:<4} {}",
                    if c.holds { "ok" } else { "FAIL" },
                    check_text(c)
                ),
            })
            .collect();
        let checks = if checks.is_empty() {
            v.reason.clone().unwrap_or_default()
        } else {
            checks.join("\n")
        };
        t.add_row(vec![
            v.phase.as_str().to_owned(),
            format!("{}[{}]", kind_str(v.kind), v.index),
            v.name.clone(),
            result.to_owned(),
            checks,
            fmt_offset(v.at_s),
        ]);
    }
    t
}

fn faults(faults: &[FaultRecord]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "step",
        "kind",
        "agent",
        "injected",
        "reverted",
        "confirmed",
        "last observation",
    ]);
    // Long observation details wrap instead of widening the table past a terminal.
    if let Some(c) = t.column_mut(6) {
        c.set_constraint(ColumnConstraint::UpperBoundary(Width::Fixed(60)));
    }
    for f in faults {
        let injected = match (f.injected_s, &f.inject_error) {
            (_, Some(_)) => "FAILED".to_owned(),
            (Some(s), None) => fmt_offset(s),
            (None, None) => "-".to_owned(),
        };
        let reverted = match (f.reverted_s, &f.revert_error) {
            (_, Some(_)) => "FAILED".to_owned(),
            (Some(s), None) => fmt_offset(s),
            (None, None) => "-".to_owned(),
        };
        let confirmed = if f.revert_confirmed {
            "yes"
        } else if f.injected_s.is_none() && f.revert_error.is_none() {
            "-"
        } else {
            "NO"
        };
        let observation = f
            .observations
            .last()
            .map(observation_text)
            .unwrap_or_default();
        t.add_row(vec![
            f.step.clone(),
            f.kind.clone(),
            f.agent.clone(),
            injected,
            reverted,
            confirmed.to_owned(),
            observation,
        ]);
    }
    t
}

/// `+48.0s lock held on jobs (blocked_sessions=3, longest_wait_ms=1800)`.
fn observation_text(o: &ObservationRecord) -> String {
    let mut s = format!("{} {}", fmt_offset(o.at_s), o.detail);
    if !o.active {
        s.push_str(" [inactive]");
    }
    let figures = match &o.figures {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Object(m) if m.is_empty() => String::new(),
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    if !figures.is_empty() {
        let _ = write!(s, " ({figures})");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    #[test]
    fn report_table_passed_run_says_so() {
        let t = table(&fixtures::passed_run());
        assert!(t.starts_with("experiment gpu-loss-keeps-sla  run r7k2  PASSED (exit 0)"));
        assert!(t.contains("PASSED: every hypothesis held"));
        assert!(!t.contains("FAIL"), "{t}");
        assert!(t.contains("3.7s"), "time to recover of api: {t}");
    }

    #[test]
    fn report_table_names_the_failed_hypotheses_at_the_bottom() {
        let t = table(&fixtures::failed_run());
        assert!(t.contains("FAILED (exit 1)"));
        assert!(t.contains(
            "FAILED: recovery: api: availability >= 99%, p99 <= 300ms (p99 612ms > 300ms)"
        ));
        assert!(t.contains(
            "FAILED: during: api: availability >= 95%, p99 <= 1500ms \
             (at +34.0s: availability 91.5% < 95%)"
        ));
        assert!(t.contains("NOT RECOVERED"));
        // The db.lock's last observation and its figures.
        assert!(t.contains("3 sessions blocked behind it"));
        assert!(t.contains("blocked_sessions=3, longest_wait_ms=1800"));
        assert!(!t.contains('\u{1b}'), "no colour codes");
        let last = t.lines().last().unwrap_or_default();
        assert!(last.starts_with("FAILED: recovery: api"), "{last}");
    }

    #[test]
    fn report_table_shouts_left_behind_and_failed_faults() {
        let t = table(&fixtures::unconfirmed_run());
        assert!(t.contains("REVERT UNCONFIRMED (exit 4)"));
        assert!(t.contains("!!! LEFT BEHIND: 1 fault may still be active !!!"));
        assert!(t.contains("db.lock on db-1 (fault r7k2-stall-db-db-1)"));
        assert!(t.contains("lapses at 2025-03-04T10:01:25Z"));
        assert!(t.contains(
            "FAILED: inject lose-gpus (gpu.unavailable) on gpu-3: gpu-3 refused: 409 shim_not_loaded"
        ));
        assert!(t.contains("REVERT UNCONFIRMED: stall-db (db.lock) on db-1: agent db-1"));
    }

    #[test]
    fn report_table_snapshot() {
        insta::assert_snapshot!(table(&fixtures::failed_run()));
    }
}
