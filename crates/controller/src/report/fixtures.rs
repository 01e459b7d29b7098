//! Hand-built journals of realistic runs for the renderers' tests: the quickstart
//! game day's shape (an HTTP API behind GPU workers and a database), a run that
//! passed, one that failed (a `during` violation and a failed recovery), and one
//! whose revert could not be confirmed.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde_json::json;

use crate::journal::{
    CheckKind, CheckRecord, FaultRecord, Journal, LeftBehind, ObservationRecord, Phase,
    PhaseRecord, ProbePoint, ProbeTimeline, RunStatus, VerdictRecord,
};
use crate::select::Selection;

const API: &str = "api: availability >= 99%, p99 <= 300ms";
const DB: &str = "db: p99 <= 100ms";
const DURING: &str = "api: availability >= 95%, p99 <= 1500ms";
const ABORT: &str = "api: availability < 80% for 10s";

fn check(metric: &str, bound: &str, observed: &str, value: f64, holds: bool) -> CheckRecord {
    CheckRecord {
        metric: metric.to_owned(),
        bound: bound.to_owned(),
        observed: Some(observed.to_owned()),
        value: Some(value),
        holds,
    }
}

#[allow(clippy::too_many_arguments)]
fn verdict(
    phase: Phase,
    kind: CheckKind,
    index: usize,
    probe: &str,
    name: &str,
    at_s: f64,
    window_s: f64,
    checks: Vec<CheckRecord>,
) -> VerdictRecord {
    let holds = match kind {
        // For abort_when the checks are the firing condition: it holds (did not
        // fire) unless all of them were met.
        CheckKind::AbortWhen => !checks.iter().all(|c| c.holds),
        _ => checks.iter().all(|c| c.holds),
    };
    VerdictRecord {
        phase,
        kind,
        index,
        probe: probe.to_owned(),
        name: name.to_owned(),
        holds,
        at_s,
        window_s,
        samples: (window_s * 200.0) as u64,
        checks,
        reason: None,
        time_to_recover_s: None,
    }
}

fn phases() -> Vec<PhaseRecord> {
    let p = |phase, started_at: &str, start_s, end_s| PhaseRecord {
        phase,
        started_at: started_at.to_owned(),
        start_s,
        end_s: Some(end_s),
    };
    vec![
        p(Phase::Preflight, "2025-03-04T09:59:58Z", -2.0, 0.0),
        p(Phase::Baseline, "2025-03-04T10:00:00Z", 0.0, 10.0),
        p(Phase::Faults, "2025-03-04T10:00:10Z", 10.0, 70.5),
        p(Phase::Recovery, "2025-03-04T10:01:10.500Z", 70.5, 100.5),
        p(Phase::Verify, "2025-03-04T10:01:40.500Z", 100.5, 101.0),
    ]
}

fn faults(recovered: bool) -> Vec<FaultRecord> {
    let gpu = |id: &str, agent: &str| FaultRecord {
        id: id.to_owned(),
        step: "lose-gpus".to_owned(),
        kind: "gpu.unavailable".to_owned(),
        agent: agent.to_owned(),
        params: json!({ "devices": "all", "error": "device_unavailable" }),
        planned_start_s: 10.0,
        planned_end_s: 70.0,
        injected_at: Some("2025-03-04T10:00:10.100Z".to_owned()),
        injected_s: Some(10.1),
        inject_error: None,
        reverted_at: Some("2025-03-04T10:01:10.200Z".to_owned()),
        reverted_s: Some(70.2),
        revert_error: None,
        revert_confirmed: true,
        renewals: 12,
        observations: vec![ObservationRecord {
            at_s: 40.0,
            active: true,
            detail: "shim reports device_unavailable for 2 devices, 14 calls failed".to_owned(),
            figures: json!({ "devices": 2, "failed_calls": 14 }),
        }],
    };
    let blocked = if recovered { 1 } else { 3 };
    let db = FaultRecord {
        id: "r7k2-stall-db-db-1".to_owned(),
        step: "stall-db".to_owned(),
        kind: "db.lock".to_owned(),
        agent: "db-1".to_owned(),
        params: json!({
            "url": "postgres://app@127.0.0.1/app",
            "table": "jobs",
            "mode": "access_exclusive",
            "hold": "5s",
            "every": "15s",
        }),
        planned_start_s: 30.0,
        planned_end_s: 70.0,
        injected_at: Some("2025-03-04T10:00:30Z".to_owned()),
        injected_s: Some(30.0),
        inject_error: None,
        reverted_at: Some("2025-03-04T10:01:10.300Z".to_owned()),
        reverted_s: Some(70.3),
        revert_error: None,
        revert_confirmed: true,
        renewals: 8,
        observations: vec![
            ObservationRecord {
                at_s: 33.0,
                active: true,
                detail: "lock held on jobs (access_exclusive) by faultline:r7k2-stall-db-db-1"
                    .to_owned(),
                figures: json!({ "blocked_sessions": 1, "longest_wait_ms": 900 }),
            },
            ObservationRecord {
                at_s: 48.0,
                active: true,
                detail: format!("lock held on jobs; {blocked} sessions blocked behind it"),
                figures: json!({ "blocked_sessions": blocked, "longest_wait_ms": 1800 }),
            },
        ],
    };
    vec![
        gpu("r7k2-lose-gpus-gpu-1", "gpu-1"),
        gpu("r7k2-lose-gpus-gpu-3", "gpu-3"),
        db,
    ]
}

/// Per-second points of the two probes. While the GPUs are gone the API's tail
/// latency climbs, the DB stall costs it availability, and without `recovered` the
/// tail stays high after the reverts.
fn probes(recovered: bool) -> IndexMap<String, ProbeTimeline> {
    let mut api = Vec::new();
    let mut db = Vec::new();
    for t in 0..100 {
        let t = f64::from(t);
        let gpus_gone = (10.0..70.0).contains(&t);
        let stalled = (30.0..35.0).contains(&t) || (45.0..50.0).contains(&t);
        let (avail, p50, p99) = if stalled {
            (91.5, 180.0, 1400.0)
        } else if gpus_gone {
            (99.2, 120.0, 880.0)
        } else if t >= 70.0 && !recovered {
            (99.6, 95.0, 612.0)
        } else if (70.0..74.0).contains(&t) {
            (99.5, 60.0, 410.0)
        } else {
            (99.97, 42.0, 212.0)
        };
        let total: u32 = 200;
        let successes = (f64::from(total) * avail / 100.0).round() as u64;
        let mut failures = BTreeMap::new();
        if successes < u64::from(total) {
            failures.insert(
                if stalled { "timeout" } else { "status" }.to_owned(),
                u64::from(total) - successes,
            );
        }
        api.push(ProbePoint {
            t_s: t,
            total: u64::from(total),
            successes,
            availability: Some(avail),
            p50_ms: Some(p50),
            p99_ms: Some(p99),
            ttft_p99_ms: None,
            itl_p99_ms: None,
            failures,
            value: None,
        });
        db.push(ProbePoint {
            t_s: t,
            total: 10,
            successes: 10,
            availability: Some(100.0),
            p50_ms: Some(if stalled { 900.0 } else { 3.0 }),
            p99_ms: Some(if stalled { 1800.0 } else { 9.0 }),
            ttft_p99_ms: None,
            itl_p99_ms: None,
            failures: BTreeMap::new(),
            value: None,
        });
    }
    let mut out = IndexMap::new();
    out.insert(
        "api".to_owned(),
        ProbeTimeline {
            kind: "http".to_owned(),
            bucket_s: 1.0,
            points: api,
        },
    );
    out.insert(
        "db".to_owned(),
        ProbeTimeline {
            kind: "sql".to_owned(),
            bucket_s: 1.0,
            points: db,
        },
    );
    out
}

fn base(status: RunStatus, recovered: bool) -> Journal {
    Journal {
        faultline: "0.1.0".to_owned(),
        run_id: "r7k2".to_owned(),
        experiment: "gpu-loss-keeps-sla".to_owned(),
        description: Some(
            "half the GPU workers lose their GPU; the gateway keeps its SLA".to_owned(),
        ),
        seed: 42,
        status,
        exit_code: status.exit_code(),
        reason: None,
        started_at: "2025-03-04T09:59:58Z".to_owned(),
        ended_at: "2025-03-04T10:01:41Z".to_owned(),
        duration_s: 103.0,
        targets: vec![
            Selection {
                target: "gpu-workers".to_owned(),
                mode: "percent(50)".to_owned(),
                matched: 4,
                agents: vec!["gpu-1".to_owned(), "gpu-3".to_owned()],
            },
            Selection {
                target: "db".to_owned(),
                mode: "all".to_owned(),
                matched: 1,
                agents: vec!["db-1".to_owned()],
            },
        ],
        phases: phases(),
        verdicts: Vec::new(),
        faults: faults(recovered),
        probes: probes(recovered),
        left_behind: Vec::new(),
    }
}

fn baseline() -> Vec<VerdictRecord> {
    vec![
        verdict(
            Phase::Baseline,
            CheckKind::Hypothesis,
            0,
            "api",
            API,
            10.0,
            10.0,
            vec![
                check("availability", ">= 99%", "99.97%", 99.97, true),
                check("p99", "<= 300ms", "212ms", 212.0, true),
            ],
        ),
        verdict(
            Phase::Baseline,
            CheckKind::Hypothesis,
            1,
            "db",
            DB,
            10.0,
            10.0,
            vec![check("p99", "<= 100ms", "9ms", 9.0, true)],
        ),
    ]
}

fn abort_held() -> VerdictRecord {
    verdict(
        Phase::Faults,
        CheckKind::AbortWhen,
        0,
        "api",
        ABORT,
        70.5,
        60.5,
        vec![check("availability", "< 80%", "91.5%", 91.5, false)],
    )
}

/// Every hypothesis held; the API recovered 3.7 s after the last revert.
pub(crate) fn passed_run() -> Journal {
    let mut j = base(RunStatus::Passed, true);
    let mut v = baseline();
    v.push(verdict(
        Phase::Faults,
        CheckKind::During,
        0,
        "api",
        DURING,
        70.5,
        60.5,
        vec![
            check("availability", ">= 95%", "99.2%", 99.2, true),
            check("p99", "<= 1500ms", "1400ms", 1400.0, true),
        ],
    ));
    v.push(abort_held());
    let mut api = verdict(
        Phase::Recovery,
        CheckKind::Hypothesis,
        0,
        "api",
        API,
        84.0,
        10.0,
        vec![
            check("availability", ">= 99%", "99.97%", 99.97, true),
            check("p99", "<= 300ms", "212ms", 212.0, true),
        ],
    );
    api.time_to_recover_s = Some(3.7);
    let mut db = verdict(
        Phase::Recovery,
        CheckKind::Hypothesis,
        1,
        "db",
        DB,
        80.5,
        10.0,
        vec![check("p99", "<= 100ms", "9ms", 9.0, true)],
    );
    db.time_to_recover_s = Some(0.2);
    v.push(api);
    v.push(db);
    j.verdicts = v;
    j
}

/// The DB stall broke the `during` tolerance at +34 s, and the API's p99 stayed
/// at 612 ms after the reverts: the recovery hypothesis failed.
pub(crate) fn failed_run() -> Journal {
    let mut j = base(RunStatus::Failed, false);
    j.description =
        Some("GPU loss & a DB stall <script>alert('owned')</script> \"quoted\"".to_owned());
    j.reason = Some("2 hypotheses failed: during[0], recovery hypotheses[0]".to_owned());
    let mut v = baseline();
    let mut during = verdict(
        Phase::Faults,
        CheckKind::During,
        0,
        "api",
        DURING,
        34.0,
        1.0,
        vec![
            check("availability", ">= 95%", "91.5%", 91.5, false),
            check("p99", "<= 1500ms", "1400ms", 1400.0, true),
        ],
    );
    during.reason = None;
    v.push(during);
    v.push(abort_held());
    let mut api = verdict(
        Phase::Recovery,
        CheckKind::Hypothesis,
        0,
        "api",
        API,
        100.5,
        30.0,
        vec![
            check("availability", ">= 99%", "99.6%", 99.6, true),
            check("p99", "<= 300ms", "612ms", 612.0, false),
        ],
    );
    api.reason = Some("not held within recovery.within 30s".to_owned());
    let mut db = verdict(
        Phase::Recovery,
        CheckKind::Hypothesis,
        1,
        "db",
        DB,
        80.5,
        10.0,
        vec![check("p99", "<= 100ms", "9ms", 9.0, true)],
    );
    db.time_to_recover_s = Some(0.2);
    v.push(api);
    v.push(db);
    j.verdicts = v;
    j
}

/// The failed run, but db-1 stopped answering before it confirmed the lock's
/// revert, and one GPU worker refused its fault: exit 4, with a left-behind entry.
pub(crate) fn unconfirmed_run() -> Journal {
    let mut j = failed_run();
    j.status = RunStatus::RevertUnconfirmed;
    j.exit_code = j.status.exit_code();
    j.reason = Some("the revert of 1 fault could not be confirmed".to_owned());
    if let Some(f) = j.faults.iter_mut().find(|f| f.step == "stall-db") {
        f.reverted_at = None;
        f.reverted_s = None;
        f.revert_confirmed = false;
        f.revert_error = Some("agent db-1: connection refused (os error 111)".to_owned());
    }
    if let Some(f) = j.faults.iter_mut().find(|f| f.agent == "gpu-3") {
        f.injected_at = None;
        f.injected_s = None;
        f.reverted_at = None;
        f.reverted_s = None;
        f.revert_confirmed = true;
        f.renewals = 0;
        f.observations.clear();
        f.inject_error = Some("gpu-3 refused: 409 shim_not_loaded".to_owned());
    }
    j.left_behind = vec![LeftBehind {
        agent: "db-1".to_owned(),
        fault: "r7k2-stall-db-db-1".to_owned(),
        kind: "db.lock".to_owned(),
        reason: "agent db-1: connection refused (os error 111)".to_owned(),
        lease_expires_at: Some("2025-03-04T10:01:25Z".to_owned()),
    }];
    j
}
