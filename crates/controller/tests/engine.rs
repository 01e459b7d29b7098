//! The engine end to end against real processes: an HTTP server in its own process
//! (probed, paused by `process.pause`), the in-process agent, and an agent that is
//! not there. Buckets are 250 ms and windows 1 s so a run takes seconds.

use std::sync::Arc;
use std::time::Duration;

use faultline_controller::client::{AgentClient, HttpClient, LocalClient};
use faultline_controller::engine::{self, Agents, RunOptions};
use faultline_controller::journal::{CheckKind, Event, Journal, Phase, RunStatus};
use faultline_spec::{Experiment, Inventory};
use faultline_testkit::Child;
use tokio::sync::mpsc;

fn experiment(yaml: &str) -> Experiment {
    let loaded = faultline_spec::validate::load("test.yaml", yaml);
    match loaded.experiment {
        Some(e) => e,
        None => panic!("{}", loaded.report.render()),
    }
}

/// An experiment that pauses the server at `addr` (pid `pid`) for 2 s.
fn pause_experiment(addr: std::net::SocketAddr, pid: u32, during: &str, extra: &str) -> Experiment {
    experiment(&format!(
        r#"
version: faultline/v1
name: pause-web
targets:
  host: {{ agents: [local] }}
probes:
  web:
    http: {{ url: "http://{addr}/", rate: 40/s, timeout: 500ms }}
hypotheses:
  - {{ probe: web, availability: ">= 99%", p99: "<= 400ms", window: 1s }}
during:
  - {{ probe: web, {during}, window: 1s }}
recovery: {{ within: 3s }}
method:
  - name: freeze
    target: host
    fault: {{ process.pause: {{ pid: {pid} }} }}
    start: 250ms
    duration: 2s
safety:
  lease: 3s
{extra}
"#
    ))
}

struct Local {
    agents: Agents,
    _dir: tempfile::TempDir,
}

async fn local() -> Local {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, _) = LocalClient::start(dir.path(), Default::default())
        .await
        .expect("local agent");
    let mut agents = Agents::new();
    agents.insert("local".into(), Arc::new(client) as Arc<dyn AgentClient>);
    Local { agents, _dir: dir }
}

fn options() -> RunOptions {
    let mut o = RunOptions::new(engine::new_run_id(), 7);
    o.bucket = Duration::from_millis(250);
    o.tick = Duration::from_millis(50);
    o.observe_every = Duration::from_millis(500);
    o
}

fn assert_reverted(j: &Journal, server: &Child) {
    assert!(!server.is_stopped(), "the server was left paused");
    for f in &j.faults {
        assert!(
            f.injected_s.is_none() || f.revert_confirmed,
            "fault {} not confirmed reverted: {f:?}",
            f.id
        );
    }
    assert!(j.left_behind.is_empty(), "{:?}", j.left_behind);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_that_breaks_the_tolerance_fails_the_run_naming_it() {
    let (server, addr) = Child::http_server();
    let exp = pause_experiment(addr, server.pid(), r#"availability: ">= 99%""#, "");
    let l = local().await;
    let j = engine::run(&exp, &l.agents, options()).await;

    assert_eq!(j.status, RunStatus::Failed, "{:#?}", j.reason);
    assert_eq!(j.exit_code, 1);
    let failed: Vec<_> = j.failures().collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0].kind, CheckKind::During);
    assert_eq!(failed[0].name, "web: availability >= 99% over 1s");
    assert!(
        j.reason
            .as_deref()
            .unwrap_or("")
            .contains("web: availability >= 99%"),
        "{:?}",
        j.reason
    );
    // The SLA held before and came back after.
    let baseline = j
        .verdicts
        .iter()
        .find(|v| v.phase == Phase::Baseline)
        .expect("baseline");
    assert!(baseline.holds);
    let recovery = j
        .verdicts
        .iter()
        .find(|v| v.phase == Phase::Recovery)
        .expect("recovery");
    assert!(recovery.holds, "{recovery:#?}");
    assert!(recovery.time_to_recover_s.is_some());
    // The fault was seen from outside while active, and reverted.
    let f = &j.faults[0];
    assert!(f.injected_s.is_some() && f.reverted_s.is_some());
    assert!(
        f.observations.iter().any(|o| o.active),
        "{:?}",
        f.observations
    );
    assert!(f.renewals >= 1, "a 3 s lease over a 2 s step renews once");
    assert_reverted(&j, &server);
    // The probe saw the pause as timeouts.
    let timeouts: u64 = j.probes["web"]
        .points
        .iter()
        .filter_map(|p| p.failures.get("timeout"))
        .sum();
    assert!(timeouts > 0, "{:?}", j.probes["web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_within_tolerance_passes() {
    let (server, addr) = Child::http_server();
    let exp = pause_experiment(addr, server.pid(), r#"availability: ">= 0%""#, "");
    let l = local().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut o = options();
    o.events = Some(tx);
    let j = engine::run(&exp, &l.agents, o).await;

    assert_eq!(j.status, RunStatus::Passed, "{:#?}", j.reason);
    assert_eq!(j.exit_code, 0);
    assert!(j.failures().next().is_none());
    let phases: Vec<Phase> = j.phases.iter().map(|p| p.phase).collect();
    assert_eq!(
        phases,
        [
            Phase::Preflight,
            Phase::Baseline,
            Phase::Faults,
            Phase::Recovery,
            Phase::Verify
        ]
    );
    // One verdict per hypothesis per phase, one per `during`.
    let kinds: Vec<(Phase, CheckKind)> = j.verdicts.iter().map(|v| (v.phase, v.kind)).collect();
    assert_eq!(
        kinds,
        [
            (Phase::Baseline, CheckKind::Hypothesis),
            (Phase::Faults, CheckKind::During),
            (Phase::Recovery, CheckKind::Hypothesis)
        ]
    );
    assert_reverted(&j, &server);
    // The events told the same story as it happened.
    let mut injected = false;
    let mut reverted = false;
    let mut finished = false;
    while let Ok(e) = rx.try_recv() {
        match e {
            Event::Injected { .. } => injected = true,
            Event::Reverted { confirmed, .. } => reverted = confirmed,
            Event::Finished { status, .. } => finished = status == RunStatus::Passed,
            _ => {}
        }
    }
    assert!(injected && reverted && finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_baseline_injects_nothing() {
    let (server, addr) = Child::http_server();
    // A p99 bound no HTTP round trip meets.
    let exp = experiment(&format!(
        r#"
version: faultline/v1
name: bad-baseline
targets:
  host: {{ agents: [local] }}
probes:
  web:
    http: {{ url: "http://{addr}/", rate: 20/s, timeout: 500ms }}
hypotheses:
  - {{ probe: web, p50: "<= 1us", window: 1s }}
method:
  - name: freeze
    target: host
    fault: {{ process.pause: {{ pid: {pid} }} }}
    duration: 2s
"#,
        pid = server.pid()
    ));
    let l = local().await;
    let j = engine::run(&exp, &l.agents, options()).await;
    assert_eq!(j.status, RunStatus::Failed);
    let reason = j.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("baseline failed, nothing injected: baseline: web: p50 <= 1us"),
        "{reason}"
    );
    assert!(
        j.faults.iter().all(|f| f.injected_s.is_none()),
        "{:?}",
        j.faults
    );
    assert!(!server.is_stopped());
    assert!(!j.phases.iter().any(|p| p.phase == Phase::Faults));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_when_reverts_everything_within_a_second() {
    let (server, addr) = Child::http_server();
    let exp = pause_experiment(
        addr,
        server.pid(),
        r#"availability: ">= 0%""#,
        r#"  abort_when: [ { probe: web, availability: "< 50%", window: 500ms } ]"#,
    );
    let l = local().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut o = options();
    o.events = Some(tx);
    let j = engine::run(&exp, &l.agents, o).await;

    assert_eq!(j.status, RunStatus::Aborted, "{:#?}", j.reason);
    assert_eq!(j.exit_code, 3);
    let reason = j.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("abort_when: web: availability < 50% over 500ms (fired at"),
        "{reason}"
    );
    let fired = j.failures().next().expect("the abort_when verdict");
    assert_eq!(fired.kind, CheckKind::AbortWhen);
    assert_reverted(&j, &server);
    // The revert followed the decision to abort within the budget.
    let mut aborting = None;
    let mut reverted = None;
    while let Ok(e) = rx.try_recv() {
        match e {
            Event::Aborting { at_s, .. } => aborting = Some(at_s),
            Event::Reverted { at_s, .. } => reverted = Some(at_s),
            _ => {}
        }
    }
    let (a, r) = (aborting.expect("aborting"), reverted.expect("reverted"));
    assert!(r - a < 1.0, "reverted {:.3}s after aborting", r - a);
    // The fault was cut short: reverted before its planned end.
    assert!(j.faults[0].reverted_s.expect("reverted") < j.faults[0].planned_end_s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_abort_reverts_and_ends_aborted() {
    let (server, addr) = Child::http_server();
    let exp = pause_experiment(addr, server.pid(), r#"availability: ">= 0%""#, "");
    let l = local().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut o = options();
    o.events = Some(tx);
    let abort = o.abort.clone();
    let agents = l.agents.clone();
    let run = tokio::spawn(async move { engine::run(&exp, &agents, o).await });
    // Abort as soon as the fault is in, as a signal handler would.
    while let Some(e) = rx.recv().await {
        if matches!(e, Event::Injected { .. }) {
            assert!(server.is_stopped());
            abort.trigger("interrupted by SIGINT");
            break;
        }
    }
    let j = run.await.expect("run");
    assert_eq!(j.status, RunStatus::Aborted);
    assert_eq!(j.reason.as_deref(), Some("interrupted by SIGINT"));
    assert_reverted(&j, &server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_does_not_answer_stops_the_run_before_anything_is_injected() {
    let (server, addr) = Child::http_server();
    // A port nothing listens on: bind one, note it, close it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let exp = experiment(&format!(
        r#"
version: faultline/v1
name: gone
targets:
  both: {{ agents: [local, far] }}
probes:
  web:
    http: {{ url: "http://{addr}/", rate: 20/s, timeout: 500ms }}
method:
  - name: freeze
    target: both
    fault: {{ process.pause: {{ pid: {pid} }} }}
    duration: 2s
"#,
        pid = server.pid()
    ));
    let inventory: Inventory =
        serde_yaml::from_str(&format!("agents: {{ far: {{ url: 'http://{dead}' }} }}"))
            .expect("inventory");
    let mut l = local().await;
    let far = HttpClient::new(
        "far",
        &format!("http://{dead}"),
        None,
        None,
        Duration::from_secs(2),
    )
    .expect("client");
    l.agents.insert("far".into(), Arc::new(far));
    let mut o = options();
    o.inventory = inventory;
    let j = engine::run(&exp, &l.agents, o).await;
    assert_eq!(j.status, RunStatus::Aborted);
    let reason = j.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("agent far did not answer") && reason.ends_with("nothing injected"),
        "{reason}"
    );
    assert!(j.faults.iter().all(|f| f.injected_s.is_none()));
    assert!(!server.is_stopped());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_that_cannot_be_injected_aborts_and_reverts_the_others() {
    let (server, addr) = Child::http_server();
    // The second step pauses a pid that does not exist.
    let exp = experiment(&format!(
        r#"
version: faultline/v1
name: half-fails
targets:
  host: {{ agents: [local] }}
probes:
  web:
    http: {{ url: "http://{addr}/", rate: 20/s, timeout: 500ms }}
method:
  - name: freeze
    target: host
    fault: {{ process.pause: {{ pid: {pid} }} }}
    duration: 3s
  - name: freeze-nothing
    target: host
    fault: {{ process.pause: {{ pid: 999999999 }} }}
    start: 500ms
    duration: 2s
"#,
        pid = server.pid()
    ));
    let l = local().await;
    let j = engine::run(&exp, &l.agents, options()).await;
    assert_eq!(j.status, RunStatus::Aborted, "{:?}", j.reason);
    let reason = j.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("step freeze-nothing could not be injected on local"),
        "{reason}"
    );
    assert!(j.faults[1].inject_error.is_some());
    assert_reverted(&j, &server);
    assert!(j.faults[0].revert_confirmed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_rate_limit_through_the_agent_fails_the_during_check_and_reverts() {
    // Transparent mode on the server's own port: the probe's requests go to the
    // agent's gateway proxy while the fault lasts, straight to the server after.
    let (server, addr) = Child::http_server();
    let exp = experiment(&format!(
        r#"
version: faultline/v1
name: rate-limited
targets:
  host: {{ agents: [local] }}
probes:
  web:
    http: {{ url: "http://{addr}/", rate: 40/s, timeout: 500ms }}
hypotheses:
  - {{ probe: web, availability: ">= 99%", window: 1s }}
during:
  - {{ probe: web, availability: ">= 90%", window: 1s }}
recovery: {{ within: 3s }}
method:
  - name: throttle
    target: host
    fault: {{ http.rate_limit: {{ port: {port}, rate: 10/s, burst: 1 }} }}
    start: 250ms
    duration: 2s
safety:
  lease: 3s
"#,
        port = addr.port()
    ));
    let l = local().await;
    let j = engine::run(&exp, &l.agents, options()).await;

    assert_eq!(j.status, RunStatus::Failed, "{:#?}", j.reason);
    assert_eq!(j.exit_code, 1);
    let failed: Vec<_> = j.failures().collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0].name, "web: availability >= 90% over 1s");
    let recovery = j
        .verdicts
        .iter()
        .find(|v| v.phase == Phase::Recovery)
        .expect("recovery");
    assert!(recovery.holds, "{recovery:#?}");
    // The agent's proxy answered 429s, and the probe saw them rejected.
    let f = &j.faults[0];
    assert_eq!(f.kind, "http.rate_limit");
    assert!(
        f.observations
            .iter()
            .any(|o| o.active && o.figures["rate_limited"].as_u64() > Some(0)),
        "{:?}",
        f.observations
    );
    let limited: u64 = j.probes["web"]
        .points
        .iter()
        .flat_map(|p| p.failures.iter())
        .filter(|(k, _)| k.as_str() == "rejected")
        .map(|(_, n)| n)
        .sum();
    assert!(limited > 0, "{:?}", j.probes["web"]);
    assert_reverted(&j, &server);
}
