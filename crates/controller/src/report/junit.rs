//! JUnit XML for CI test UIs (GitLab, Jenkins, GitHub test reporters).
//!
//! Layout: one `<testsuites>` named after the experiment, one `<testsuite>` per
//! phase that has something to report (`{experiment}: baseline`, `...: faults`,
//! `...: recovery`, `...: verify`) so a UI groups the SLA checks by when they ran,
//! and the classname `{experiment}.{phase}` for UIs that group by class (Jenkins:
//! package = experiment, class = phase).
//!
//! - one test case per verdict: `hypothesis[i] <condition>` at baseline and
//!   recovery, `during[i]` and `abort_when[i]` in the faults phase; a verdict that
//!   does not hold is a `<failure>` whose message is [`failure_line`] (it names the
//!   phase and the condition) and whose text lists the checks;
//! - recovery hypotheses the run never reached (it aborted) are `<skipped>`;
//! - one `inject <step> on <agent>` case per fault in the faults suite (an
//!   `<error>` when the agent refused it) and one `revert ...` case per injected
//!   fault in the verify suite (an `<error>` when the revert was not confirmed);
//!   a left-behind entry with no fault record of its own is an `<error>` too;
//! - every suite carries the run's properties: run id, seed, status, exit code.
//!
//! Timestamps come from the journal: the suites' from the phase records, the
//! cases' from the run's epoch plus their window (verdicts) or the agent's
//! inject/revert times (faults).

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeDelta};
use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::{
    ReportError, check_text, epoch, failure_line, fmt_duration, kind_str, revert_in_doubt,
};
use crate::journal::{CheckKind, FaultRecord, Journal, Phase, RunStatus, VerdictRecord};

const PHASES: [Phase; 5] = [
    Phase::Preflight,
    Phase::Baseline,
    Phase::Faults,
    Phase::Recovery,
    Phase::Verify,
];

/// Renders the run as JUnit XML.
pub fn junit(j: &Journal) -> Result<String, ReportError> {
    let epoch = epoch(j);
    let at = |s: f64| -> Option<DateTime<FixedOffset>> {
        let e = epoch?;
        s.is_finite()
            .then(|| e + TimeDelta::milliseconds((s * 1000.0).round() as i64))
    };

    let mut report = Report::new(j.experiment.as_str());
    if let Ok(t) = DateTime::parse_from_rfc3339(&j.started_at) {
        report.set_timestamp(t);
    }
    if let Some(d) = secs(j.duration_s) {
        report.set_time(d);
    }

    for phase in PHASES {
        let mut cases = Vec::new();
        for v in j.verdicts.iter().filter(|v| v.phase == phase) {
            let mut case = verdict_case(j, v);
            if let Some(t) = at(v.at_s - v.window_s) {
                case.set_timestamp(t);
            }
            if let Some(d) = secs(v.window_s) {
                case.set_time(d);
            }
            cases.push(case);
        }
        if phase == Phase::Recovery {
            cases.extend(unreached_recovery(j));
        }
        if phase == Phase::Faults {
            for f in &j.faults {
                cases.push(inject_case(j, f, &at));
            }
        }
        if phase == Phase::Verify {
            for f in &j.faults {
                if f.injected_s.is_some() || f.reverted_s.is_some() || f.revert_error.is_some() {
                    cases.push(revert_case(j, f, &at));
                }
            }
            for l in &j.left_behind {
                if j.faults
                    .iter()
                    .any(|f| f.id == l.fault && f.agent == l.agent)
                {
                    continue;
                }
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
                status.set_type("left_behind").set_message(format!(
                    "{} on {} may be left: {}",
                    l.kind, l.agent, l.reason
                ));
                if let Some(at) = &l.lease_expires_at {
                    status.set_description(format!("its lease lapses at {at}"));
                }
                let mut case = TestCase::new(format!("revert {} on {}", l.fault, l.agent), status);
                case.set_classname(classname(j, phase));
                cases.push(case);
            }
        }
        if cases.is_empty() {
            continue;
        }
        let mut suite = TestSuite::new(format!("{}: {}", j.experiment, phase.as_str()));
        if let Some(p) = j.phases.iter().find(|p| p.phase == phase) {
            if let Ok(t) = DateTime::parse_from_rfc3339(&p.started_at) {
                suite.set_timestamp(t);
            }
            let end = p.end_s.unwrap_or(j.duration_s);
            if let Some(d) = secs(end - p.start_s) {
                suite.set_time(d);
            }
        }
        suite.add_properties(properties(j));
        suite.add_test_cases(cases);
        report.add_test_suite(suite);
    }
    Ok(report.to_string()?)
}

fn secs(s: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(s).ok()
}

fn classname(j: &Journal, phase: Phase) -> String {
    format!("{}.{}", j.experiment, phase.as_str())
}

fn properties(j: &Journal) -> Vec<Property> {
    let mut p = vec![
        Property::new("run_id", j.run_id.as_str()),
        Property::new("experiment", j.experiment.as_str()),
        Property::new("seed", j.seed.to_string()),
        Property::new("status", j.status.as_str()),
        Property::new("exit_code", j.exit_code.to_string()),
        Property::new("faultline", j.faultline.as_str()),
    ];
    if let Some(r) = &j.reason {
        p.push(Property::new("reason", r.as_str()));
    }
    p
}

fn verdict_case(j: &Journal, v: &VerdictRecord) -> TestCase {
    let mut text = String::new();
    for c in &v.checks {
        let mark = match (v.kind, c.holds) {
            (CheckKind::AbortWhen, _) => "",
            (_, true) => "ok   ",
            (_, false) => "FAIL ",
        };
        let _ = writeln!(text, "{mark}{}", check_text(c));
    }
    let _ = write!(
        text,
        "window {} ending at +{:.1}s, {} samples of probe {}",
        fmt_duration(v.window_s),
        v.at_s,
        v.samples,
        v.probe
    );
    if let Some(ttr) = v.time_to_recover_s {
        let _ = write!(text, "\ntime to recover {}", fmt_duration(ttr));
    }
    if let Some(r) = &v.reason {
        let _ = write!(text, "\n{r}");
    }
    let status = if v.holds {
        TestCaseStatus::success()
    } else {
        let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
        s.set_type(kind_str(v.kind))
            .set_message(failure_line(v))
            .set_description(text.clone());
        s
    };
    let mut case = TestCase::new(
        format!("{}[{}] {}", kind_str(v.kind), v.index, v.name),
        status,
    );
    case.set_classname(classname(j, v.phase))
        .set_assertions(v.checks.len());
    if v.holds {
        case.set_system_out(text);
    }
    case
}

/// Recovery hypotheses the run never got to check (it stopped first): skipped,
/// so that a UI shows them as not run rather than silently missing.
fn unreached_recovery(j: &Journal) -> Vec<TestCase> {
    if j.status == RunStatus::Passed {
        return Vec::new();
    }
    j.verdicts
        .iter()
        .filter(|b| b.phase == Phase::Baseline && b.kind == CheckKind::Hypothesis)
        .filter(|b| {
            !j.verdicts.iter().any(|r| {
                r.phase == Phase::Recovery && r.kind == CheckKind::Hypothesis && r.index == b.index
            })
        })
        .map(|b| {
            let mut status = TestCaseStatus::skipped();
            status.set_message(format!(
                "not checked: the run ended {} before recovery",
                j.status.as_str()
            ));
            let mut case = TestCase::new(format!("hypothesis[{}] {}", b.index, b.name), status);
            case.set_classname(classname(j, Phase::Recovery));
            case
        })
        .collect()
}

fn inject_case(
    j: &Journal,
    f: &FaultRecord,
    at: &dyn Fn(f64) -> Option<DateTime<FixedOffset>>,
) -> TestCase {
    let status = match &f.inject_error {
        Some(e) => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_type("inject")
                .set_message(format!(
                    "inject {} ({}) on {}: {e}",
                    f.step, f.kind, f.agent
                ))
                .set_description(params_text(f));
            s
        }
        None if f.injected_s.is_none() => {
            let mut s = TestCaseStatus::skipped();
            s.set_message("not injected: the run stopped before its start");
            s
        }
        None => TestCaseStatus::success(),
    };
    let mut case = TestCase::new(format!("inject {} on {}", f.step, f.agent), status);
    case.set_classname(classname(j, Phase::Faults));
    let stamp = f
        .injected_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .or_else(|| at(f.injected_s.unwrap_or(f.planned_start_s)));
    if let Some(t) = stamp {
        case.set_timestamp(t);
    }
    if let (Some(a), Some(b)) = (f.injected_s, f.reverted_s)
        && let Some(d) = secs(b - a)
    {
        case.set_time(d);
    }
    if f.inject_error.is_none() && f.injected_s.is_some() {
        let mut out = params_text(f);
        for o in &f.observations {
            let _ = write!(out, "\n+{:.1}s {}", o.at_s, o.detail);
            if !o.figures.is_null() {
                let _ = write!(out, " {}", o.figures);
            }
        }
        case.set_system_out(out);
    }
    case
}

fn revert_case(
    j: &Journal,
    f: &FaultRecord,
    at: &dyn Fn(f64) -> Option<DateTime<FixedOffset>>,
) -> TestCase {
    let status = if revert_in_doubt(f) {
        let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
        let why = f
            .revert_error
            .as_deref()
            .unwrap_or("the agent did not confirm it gone");
        let mut desc = format!("fault {} on {}", f.id, f.agent);
        if let Some(l) = j
            .left_behind
            .iter()
            .find(|l| l.fault == f.id && l.agent == f.agent)
        {
            let _ = write!(desc, "\nleft behind: {}", l.reason);
            if let Some(at) = &l.lease_expires_at {
                let _ = write!(desc, "\nits lease lapses at {at}");
            }
        }
        s.set_type("revert")
            .set_message(format!(
                "revert {} ({}) on {} unconfirmed: {why}",
                f.step, f.kind, f.agent
            ))
            .set_description(desc);
        s
    } else {
        TestCaseStatus::success()
    };
    let mut case = TestCase::new(format!("revert {} on {}", f.step, f.agent), status);
    case.set_classname(classname(j, Phase::Verify));
    let stamp = f
        .reverted_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .or_else(|| f.reverted_s.and_then(at));
    if let Some(t) = stamp {
        case.set_timestamp(t);
    }
    case
}

fn params_text(f: &FaultRecord) -> String {
    format!("{} {} params {}", f.kind, f.id, f.params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    struct Counts {
        tests: usize,
        failures: usize,
        errors: usize,
        skipped: usize,
    }

    fn counts(doc: &roxmltree::Document<'_>) -> Counts {
        let cases: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        let with = |tag: &str| {
            cases
                .iter()
                .filter(|c| c.children().any(|n| n.has_tag_name(tag)))
                .count()
        };
        Counts {
            tests: cases.len(),
            failures: with("failure"),
            errors: with("error"),
            skipped: with("skipped"),
        }
    }

    fn attr<'a>(n: roxmltree::Node<'a, '_>, name: &str) -> &'a str {
        n.attribute(name).unwrap_or_default()
    }

    #[test]
    fn report_junit_passed_run_has_no_failures() {
        let xml = junit(&fixtures::passed_run()).expect("junit");
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        assert_eq!(attr(root, "name"), "gpu-loss-keeps-sla");
        let c = counts(&doc);
        // 2 baseline + during + abort_when + 2 recovery + 3 injects + 3 reverts.
        assert_eq!(c.tests, 12);
        assert_eq!((c.failures, c.errors, c.skipped), (0, 0, 0));
        assert_eq!(attr(root, "tests"), "12");
        assert_eq!(attr(root, "failures"), "0");
    }

    #[test]
    fn report_junit_failed_run_names_the_failed_hypothesis() {
        let xml = junit(&fixtures::failed_run()).expect("junit");
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let c = counts(&doc);
        assert_eq!(c.tests, 12);
        assert_eq!(c.failures, 2);
        assert_eq!(c.errors, 0);
        assert_eq!(attr(doc.root_element(), "failures"), "2");

        let suites: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("testsuite"))
            .map(|n| attr(n, "name"))
            .collect();
        assert_eq!(
            suites,
            [
                "gpu-loss-keeps-sla: baseline",
                "gpu-loss-keeps-sla: faults",
                "gpu-loss-keeps-sla: recovery",
                "gpu-loss-keeps-sla: verify",
            ]
        );

        let recovery = doc
            .descendants()
            .find(|n| {
                n.has_tag_name("testsuite") && attr(*n, "name") == "gpu-loss-keeps-sla: recovery"
            })
            .expect("recovery suite");
        assert_eq!(attr(recovery, "failures"), "1");
        assert_eq!(attr(recovery, "timestamp"), "2025-03-04T10:01:10.500+00:00");
        let failed = recovery
            .descendants()
            .find(|n| n.has_tag_name("failure"))
            .expect("a failure");
        let case = failed.parent().expect("its case");
        assert_eq!(
            attr(case, "name"),
            "hypothesis[0] api: availability >= 99%, p99 <= 300ms"
        );
        assert_eq!(attr(case, "classname"), "gpu-loss-keeps-sla.recovery");
        assert!(
            attr(failed, "message").starts_with(
                "recovery: api: availability >= 99%, p99 <= 300ms (p99 612ms > 300ms)"
            ),
            "{}",
            attr(failed, "message")
        );
        assert_eq!(attr(failed, "type"), "hypothesis");
        assert!(
            failed
                .text()
                .unwrap_or_default()
                .contains("FAIL p99 <= 300ms: 612ms")
        );
        // The window of 30 s ending at +100.5 s began at 10:01:10.5.
        assert_eq!(attr(case, "timestamp"), "2025-03-04T10:01:10.500+00:00");

        let props: Vec<(&str, &str)> = recovery
            .descendants()
            .filter(|n| n.has_tag_name("property"))
            .map(|n| (attr(n, "name"), attr(n, "value")))
            .collect();
        assert!(props.contains(&("run_id", "r7k2")));
        assert!(props.contains(&("seed", "42")));
        assert!(props.contains(&("status", "failed")));

        let during = doc
            .descendants()
            .filter(|n| n.has_tag_name("failure"))
            .find(|n| attr(*n, "type") == "during")
            .expect("during failure");
        assert!(attr(during, "message").contains("availability 91.5% < 95%"));
    }

    #[test]
    fn report_junit_faults_that_failed_are_errors() {
        let xml = junit(&fixtures::unconfirmed_run()).expect("junit");
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let c = counts(&doc);
        // gpu-3 was never injected, so it has no revert case.
        assert_eq!(c.tests, 11);
        assert_eq!((c.failures, c.errors), (2, 2));
        let errors: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("error"))
            .map(|n| (attr(n, "type"), attr(n, "message")))
            .collect();
        assert_eq!(errors[0].0, "inject");
        assert!(errors[0].1.contains("gpu-3 refused: 409 shim_not_loaded"));
        assert_eq!(errors[1].0, "revert");
        assert!(
            errors[1]
                .1
                .contains("revert stall-db (db.lock) on db-1 unconfirmed")
        );
    }

    #[test]
    fn report_junit_skips_recovery_the_run_never_reached() {
        let mut j = fixtures::failed_run();
        j.status = RunStatus::Aborted;
        j.verdicts.retain(|v| v.phase != Phase::Recovery);
        let xml = junit(&j).expect("junit");
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let c = counts(&doc);
        assert_eq!(c.skipped, 2);
    }

    #[test]
    fn report_junit_round_trips_through_quick_junit() {
        let xml = junit(&fixtures::failed_run()).expect("junit");
        let back = Report::deserialize_from_str(&xml).expect("quick-junit reads it back");
        assert_eq!(back.tests, 12);
        assert_eq!(back.failures, 2);
    }
}
