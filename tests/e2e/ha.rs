//! Two `faultline serve` replicas on one PostgreSQL (a database of each test's own),
//! as real processes, with short leases (leader 2 s, run 3 s) so the tests stay
//! short:
//!
//! - an every-second schedule is fired exactly once per slot across both, and kill -9
//!   of the leader loses no slot after the stated handover time (leader lease + a
//!   third of it);
//! - kill -9 of the replica running a run leaves no run `running` and no fault on
//!   the (real, `faultline agent`) agent a second after the run lease;
//! - either replica shows the same run and its events: SSE on one follows events the
//!   other appends, and an abort asked on one stops the run the other owns.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child as Process, Command, Stdio};
use std::time::{Duration, Instant};

use faultline_testkit::Child;
use serde_json::{Value, json};

use crate::agent::bin;
use crate::serve::{ADMIN, OPERATOR, VIEWER, call, write_config};

const LEADER_LEASE: Duration = Duration::from_secs(2);
const RUN_LEASE: Duration = Duration::from_secs(3);
/// What docs/operations.md states: leader lease + a third of it.
const HANDOVER: Duration = LEADER_LEASE.saturating_add(Duration::from_millis(667));

/// A database of the test's own on the cluster scripts/setup.sh starts, dropped
/// (with its connections) when the test ends.
struct PgDb {
    name: String,
}

fn psql(sql: &str) -> std::process::Output {
    Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "faultline",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-qAtc",
            sql,
        ])
        .env("PGPASSWORD", "faultline")
        .output()
        .expect("psql runs (postgresql-client from scripts/setup.sh)")
}

impl PgDb {
    fn create() -> PgDb {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("faultline_ha_{}_{nanos}", std::process::id());
        let out = psql(&format!("CREATE DATABASE {name}"));
        assert!(
            out.status.success(),
            "PostgreSQL is not reachable: run ./scripts/setup.sh (pg_ctlcluster 15 main start): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PgDb { name }
    }

    fn url(&self) -> String {
        format!(
            "postgres://faultline:faultline@127.0.0.1:5432/{}",
            self.name
        )
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// One replica: its process (killed if the test ends without it), address, id.
struct Replica {
    process: Process,
    addr: SocketAddr,
    id: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Ok(None) = self.process.try_wait() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

impl Replica {
    fn start(dir: &Path, config: &Path, db: &str, id: &str, extra: &[&str]) -> Replica {
        let mut process = bin()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .args(["--db", db, "--replica-id", id])
            .args(["--run-lease", "3s", "--leader-lease", "2s"])
            .args(extra)
            .arg("--state-dir")
            .arg(dir.join(format!("state-{id}")))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn faultline serve");
        let stderr = process.stderr.take().expect("stderr");
        // Killed on drop from here on, also when it never says where it listens.
        let mut replica = Replica {
            process,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            id: id.to_owned(),
        };
        let who = format!("replica {id}");
        replica.addr = crate::serve::listening_on(stderr, &who).0;
        replica
    }

    /// kill -9: no chance to revert, release a lease or write anything.
    fn kill9(&mut self) -> Instant {
        self.process.kill().expect("kill -9");
        let at = Instant::now();
        let _ = self.process.wait();
        at
    }

    fn get(&self, path: &str) -> Value {
        let (code, body) = call(self.addr, "GET", path, ADMIN, &Value::Null);
        assert_eq!(code, 200, "GET {path} on {}: {body}", self.id);
        body
    }
}

fn wait_for(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every slot the scheduler handled, from the audit log: slot -> (action, replica).
fn slots(r: &Replica, schedule: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let audit = r.get(&format!("/v1/audit?target={schedule}&limit=1000"));
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for e in audit.as_array().expect("audit entries") {
        let action = e["action"].as_str().unwrap_or_default();
        if !action.starts_with("schedule.") || action == "schedule.create" {
            continue;
        }
        let slot = e["detail"]["slot"].as_str().expect("slot").to_owned();
        let replica = e["detail"]["replica"].as_str().unwrap_or("?").to_owned();
        out.entry(slot)
            .or_default()
            .push((action.to_owned(), replica));
    }
    out
}

/// Seconds since the epoch of the store's RFC 3339 UTC slot
/// (`2026-12-06T23:05:01+00:00`; an every-second cron has whole seconds).
fn slot_time(s: &str) -> i64 {
    let num = |r: std::ops::Range<usize>| -> i64 {
        s.get(r)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("slot `{s}` is not RFC 3339"))
    };
    assert!(
        s.ends_with("+00:00") || s.ends_with('Z'),
        "slot `{s}` is not UTC"
    );
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[test]
fn two_replicas_fire_each_slot_once_and_a_killed_leader_loses_no_slot_after_handover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let db = PgDb::create();
    let a = Replica::start(dir.path(), &config, &db.url(), "ha-a", &[]);
    let b = Replica::start(dir.path(), &config, &db.url(), "ha-b", &[]);
    let mut replicas = [a, b];

    // A short run per slot: a 200 ms pause of a sleeper on the replica's own host.
    let sleeper = Child::sleep();
    let tick = format!(
        "version: faultline/v1\nname: tick\ntargets:\n  host: {{ agents: [local] }}\nmethod:\n  - {{ name: nap, target: host, fault: {{ process.pause: {{ pid: {} }} }}, duration: 200ms }}\n",
        sleeper.pid()
    );
    let (code, exp) = call(
        replicas[0].addr,
        "POST",
        "/v1/experiments",
        ADMIN,
        &json!({ "yaml": tick }),
    );
    assert_eq!(code, 201, "{exp}");
    let (code, sch) = call(
        replicas[1].addr,
        "POST",
        "/v1/schedules",
        ADMIN,
        &json!({
            "name": "every-second",
            "experiment_id": exp["id"],
            "cron": "*/1 * * * * *",
            "overlap": "queue",
        }),
    );
    assert_eq!(code, 201, "{sch}");
    let schedule = sch["id"].as_str().expect("schedule id").to_owned();

    // A few slots under the first leader.
    wait_for(Duration::from_secs(20), "8 slots fired", || {
        slots(&replicas[1], &schedule).len() >= 8
    });
    let before = slots(&replicas[1], &schedule);
    let leader_id = before.values().next_back().expect("a slot")[0].1.clone();
    let leader = replicas
        .iter()
        .position(|r| r.id == leader_id)
        .unwrap_or_else(|| panic!("the leader `{leader_id}` is one of the replicas"));
    let survivor = 1 - leader;
    let killed_unix = unix_now();
    replicas[leader].kill9();

    // The survivor takes over and fires 12 more slots after the handover window.
    let after_handover = killed_unix + HANDOVER.as_secs_f64();
    wait_for(
        Duration::from_secs(40),
        "12 slots after the handover",
        || {
            slots(&replicas[survivor], &schedule)
                .keys()
                .filter(|s| slot_time(s) as f64 >= after_handover)
                .count()
                >= 12
        },
    );
    let all = slots(&replicas[survivor], &schedule);
    assert!(all.len() >= 20, "{} slots: {all:?}", all.len());
    // Exactly once: no slot has two records, whoever wrote them.
    for (slot, records) in &all {
        assert_eq!(records.len(), 1, "slot {slot} handled twice: {records:?}");
        assert_eq!(records[0].0, "schedule.fire", "slot {slot}: {records:?}");
    }
    let times: Vec<i64> = all.keys().map(|s| slot_time(s)).collect();
    // Before the kill every slot is there, one second apart.
    let first = times[0];
    let last_before = times
        .iter()
        .copied()
        .filter(|t| (*t as f64) < killed_unix - 1.0)
        .max()
        .expect("slots before the kill");
    for t in first..=last_before {
        assert!(
            times.contains(&t),
            "slot {t} before the kill is missing: {times:?}"
        );
    }
    // After the handover window every slot is there too, fired by the survivor.
    let first_after = after_handover.ceil() as i64;
    let last = *times.last().expect("slots");
    for t in first_after..=last {
        assert!(
            times.contains(&t),
            "slot {t} after the handover window is missing: {times:?}"
        );
    }
    for (slot, records) in &all {
        if slot_time(slot) >= first_after {
            assert_eq!(records[0].1, replicas[survivor].id, "slot {slot}");
        }
    }
    // One run per fired slot, no more.
    let runs = replicas[survivor].get(&format!("/v1/runs?schedule_id={schedule}&limit=1000"));
    let fired = all.len();
    assert_eq!(runs.as_array().map(Vec::len), Some(fired), "{runs}");
}

/// An experiment that pauses `pid` on agent `a1` for a minute, with a 3 s fault lease.
fn pause_on_a1(probe: SocketAddr, pid: u32) -> String {
    format!(
        r#"version: faultline/v1
name: pause-on-a1
targets:
  host: {{ agents: [a1] }}
probes:
  web:
    http: {{ url: "http://{probe}/", rate: 20/s, timeout: 500ms }}
hypotheses:
  - {{ probe: web, availability: ">= 0%", window: 1s }}
method:
  - name: freeze
    target: host
    fault: {{ process.pause: {{ pid: {pid} }} }}
    duration: 60s
safety:
  lease: 3s
"#
    )
}

/// An agent process, its inventory file and the replicas' flags for it.
fn agent_inventory(dir: &Path) -> (Process, SocketAddr, PathBuf) {
    let agent_dir = dir.join("agent");
    std::fs::create_dir_all(&agent_dir).expect("agent dir");
    let (agent, addr) = crate::agent::start_agent(&agent_dir);
    let inventory = dir.join("inventory.yaml");
    std::fs::write(
        &inventory,
        format!(
            "agents:\n  a1: {{ url: 'http://{addr}', token_file: '{}' }}\n",
            agent_dir.join("token").display()
        ),
    )
    .expect("inventory");
    (agent, addr, inventory)
}

fn agent_faults(addr: SocketAddr) -> Vec<Value> {
    let (code, body) = crate::agent::http(addr, "GET", "/v1/faults", "e2e-token", "");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("faults JSON");
    v.as_array()
        .cloned()
        .or_else(|| v["faults"].as_array().cloned())
        .unwrap_or_default()
}

/// Two replicas on one fresh PostgreSQL database with one real agent in their
/// inventory, and a run submitted to A that pauses a server the probe reads.
/// Fields drop in order: the server, the replicas, then the database.
struct PausedRun {
    server: Child,
    b: Replica,
    a: Replica,
    agent: Process,
    agent_addr: SocketAddr,
    id: String,
    _db: PgDb,
    _dir: tempfile::TempDir,
}

impl PausedRun {
    fn submit() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(dir.path());
        let db = PgDb::create();
        let (agent, agent_addr, inventory) = agent_inventory(dir.path());
        let inv = inventory.to_str().expect("utf-8 path");
        let replica =
            |id| Replica::start(dir.path(), &config, &db.url(), id, &["--inventory", inv]);
        let (a, b) = (replica("ha-a"), replica("ha-b"));
        let (server, probe) = Child::http_server();
        let (code, run) = call(
            a.addr,
            "POST",
            "/v1/runs",
            OPERATOR,
            &json!({ "yaml": pause_on_a1(probe, server.pid()) }),
        );
        assert_eq!(code, 202, "{run}");
        let id = run["id"].as_str().expect("run id").to_owned();
        PausedRun {
            server,
            b,
            a,
            agent,
            agent_addr,
            id,
            _db: db,
            _dir: dir,
        }
    }
}

#[test]
fn a_replica_killed_mid_run_leaves_no_run_running_and_no_fault_after_the_run_lease() {
    let mut scene = PausedRun::submit();
    let (agent_addr, id) = (scene.agent_addr, scene.id.clone());
    let PausedRun {
        server,
        b,
        a,
        agent,
        ..
    } = &mut scene;
    wait_for(Duration::from_secs(30), "the fault is injected", || {
        server.is_stopped()
    });
    assert_eq!(agent_faults(agent_addr).len(), 1);
    // The other replica sees it running.
    let (_, seen) = call(
        b.addr,
        "GET",
        &format!("/v1/runs/{id}"),
        VIEWER,
        &Value::Null,
    );
    assert_eq!(seen["status"], "running", "{seen}");

    let killed = a.kill9();
    let bound = RUN_LEASE + Duration::from_secs(1);
    let status = loop {
        let (_, r) = call(
            b.addr,
            "GET",
            &format!("/v1/runs/{id}"),
            VIEWER,
            &Value::Null,
        );
        let faults = agent_faults(agent_addr);
        if r["status"] != "running" && faults.is_empty() && !server.is_stopped() {
            break r;
        }
        assert!(
            killed.elapsed() < bound,
            "{:?} after kill -9: run {} ({}), agent faults {faults:?}, server stopped {}",
            killed.elapsed(),
            r["status"],
            r["reason"],
            server.is_stopped()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["status"], "aborted", "{status}");
    let reason = status["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("owner replica `ha-a` lost"), "{reason}");
    let (code, running) = call(
        b.addr,
        "GET",
        "/v1/runs?status=running,queued",
        VIEWER,
        &Value::Null,
    );
    assert_eq!((code, running), (200, json!([])));
    // The survivor audited what it did.
    let audit = b.get(&format!("/v1/audit?target={id}"));
    assert!(
        audit
            .as_array()
            .expect("audit")
            .iter()
            .any(|e| e["action"] == "run.abort" && e["actor"] == "ha-b"),
        "{audit}"
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

/// The SSE stream of a run, read until the server ends it: (id, event) pairs.
fn sse(addr: SocketAddr, id: &str) -> Vec<(i64, String)> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "GET /v1/runs/{id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {VIEWER}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("the stream ends");
    // Fields of one event end at a blank line; chunk-size lines match no field.
    let mut out = Vec::new();
    let (mut seq, mut event): (Option<i64>, Option<String>) = (None, None);
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(v) = line.strip_prefix("id:") {
            seq = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("event:") {
            event = Some(v.trim().to_owned());
        } else if line.is_empty()
            && let Some(e) = event.take()
        {
            out.push((seq.take().unwrap_or(0), e));
        }
    }
    out
}

#[test]
fn either_replica_shows_a_run_follows_its_events_and_aborts_it() {
    let mut scene = PausedRun::submit();
    let (agent_addr, id) = (scene.agent_addr, scene.id.clone());
    let PausedRun {
        server,
        b,
        a,
        agent,
        ..
    } = &mut scene;
    // B follows the events A appends, from the first.
    let follow = {
        let (addr, id) = (b.addr, id.clone());
        std::thread::spawn(move || sse(addr, &id))
    };
    wait_for(Duration::from_secs(30), "the fault is injected", || {
        server.is_stopped()
    });
    let on_a = a.get(&format!("/v1/runs/{id}"));
    let on_b = b.get(&format!("/v1/runs/{id}"));
    assert_eq!(on_a["status"], "running");
    assert_eq!(on_a, on_b, "both replicas show the same run");
    let listed = b.get("/v1/runs?status=running");
    assert_eq!(listed[0]["id"], id.as_str(), "{listed}");

    // An abort asked on B stops the run A owns, and A reverts its fault.
    let asked = Instant::now();
    let (code, body) = call(
        b.addr,
        "POST",
        &format!("/v1/runs/{id}/abort"),
        OPERATOR,
        &Value::Null,
    );
    assert_eq!(code, 202, "{body}");
    wait_for(Duration::from_secs(10), "the run is aborted", || {
        a.get(&format!("/v1/runs/{id}"))["status"] == "aborted"
    });
    assert!(!server.is_stopped(), "the fault was reverted");
    assert!(agent_faults(agent_addr).is_empty());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the abort took {:?}",
        asked.elapsed()
    );
    let reason = b.get(&format!("/v1/runs/{id}"))["reason"].clone();
    assert!(
        reason
            .as_str()
            .unwrap_or_default()
            .contains("aborted by ci"),
        "{reason}"
    );

    // B's live stream saw every event A stored, in order, then the end; a replay
    // from A is the same.
    let followed = follow.join().expect("SSE thread");
    let replayed = sse(a.addr, &id);
    assert_eq!(followed, replayed);
    assert_eq!(
        followed.last().map(|e| e.1.as_str()),
        Some("end"),
        "{followed:?}"
    );
    let seqs: Vec<i64> = followed
        .iter()
        .filter(|e| e.1 != "end")
        .map(|e| e.0)
        .collect();
    assert!(seqs.len() >= 3, "{followed:?}");
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "{followed:?}"
    );

    // Halt on B reaches the agent: a fault put there directly is reverted.
    let sleeper = Child::sleep();
    let body = format!(
        r#"{{"kind":"process.pause","params":{{"pid":{}}},"lease":"30s"}}"#,
        sleeper.pid()
    );
    let (code, text) = crate::agent::http(
        agent_addr,
        "PUT",
        "/v1/faults/run-0000000000cc.00-x.a1",
        "e2e-token",
        &body,
    );
    assert!(code == 200 || code == 201, "{code} {text}");
    assert!(sleeper.is_stopped());
    let (code, halted) = call(b.addr, "POST", "/v1/halt", ADMIN, &Value::Null);
    assert_eq!(code, 200, "{halted}");
    assert!(!sleeper.is_stopped(), "halt on B resumed it: {halted}");
    let _ = agent.kill();
    let _ = agent.wait();
}
