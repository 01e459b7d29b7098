//! Fleet benchmark (issue 14): how long a run's inject and revert take to reach
//! N agents (real `faultline agent` processes, each in a network namespace of
//! its own, registered with a real `faultline serve`), and what the registry's
//! heartbeats cost the controller per 1,000 agents.
//!
//! Not a timed test: `bash bench/fleet/run.sh` runs it and prints markdown;
//! bench/RESULTS.md records a run. Every loop is bounded in count and time.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use faultline_testkit::fleet::{FleetNet, FleetSpec, http_json};
use serde_json::{Value, json};

const ADMIN: &str = "fleet-bench-admin";
const JOIN: &str = "fleet-bench-join-token";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_faultline")
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `faultline serve` on `ip:0` with an admin token and the join token.
fn serve_on(dir: &Path, ip: Ipv4Addr, heartbeat: &str) -> (Serve, SocketAddr, std::path::PathBuf) {
    std::fs::write(dir.join("admin"), ADMIN).expect("admin token");
    let join = dir.join("join");
    std::fs::write(&join, JOIN).expect("join token");
    let config = dir.join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "tokens:\n  - {{ name: root, role: admin, token_file: {d}/admin }}\nfleet:\n  join_token_file: {d}/join\n  heartbeat: {heartbeat}\n",
            d = dir.display()
        ),
    )
    .expect("serve config");
    let mut child = Command::new(bin())
        .arg("serve")
        .args(["--listen", &format!("{ip}:0"), "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("FAULTLINE_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn faultline serve");
    let stderr = child.stderr.take().expect("stderr");
    let serve = Serve(child);
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(a) = line.strip_prefix("faultline serve: listening on ") {
            let addr = a.parse().expect("addr");
            // Keep draining stderr so the controller never blocks on it.
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return (serve, addr, join);
        }
    }
    panic!("faultline serve did not start");
}

fn api(addr: SocketAddr, method: &str, path: &str, body: &Value) -> Value {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    match http_json(addr, method, path, ADMIN, &body) {
        Ok((code, v)) if code < 300 => v,
        other => panic!("{method} {path}: {other:?}"),
    }
}

/// The run's inject fan-out (step start to the last agent's confirmed inject)
/// and revert fan-out (step end to the last confirmed revert), from its journal.
fn fan_out(n: usize) -> (f64, f64, usize) {
    let net = FleetNet::new(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let (_serve, addr, join) = serve_on(dir.path(), net.controller_ip, "2s");
    let spec = FleetSpec::new(bin(), n);
    let fleet = net.start(&spec, &format!("http://{addr}"), &join);
    let took = fleet
        .await_registered(addr, ADMIN, Duration::from_secs(60))
        .unwrap_or_else(|m| panic!("{} agents did not register: {m:?}", m.len()));
    eprintln!("{n} agents registered in {took:?}");
    let yaml = r#"version: faultline/v1
name: fleet-bench
targets:
  workers: { selector: { role: worker }, mode: all }
method:
  - name: cut-discard
    target: workers
    fault: { network.partition: { peers: ["192.0.2.1/32"], ports: [9] } }
    duration: 2s
safety:
  lease: 15s
"#;
    let run = api(addr, "POST", "/v1/runs", &json!({ "yaml": yaml }));
    let id = run["id"].as_str().expect("run id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let r = api(addr, "GET", &format!("/v1/runs/{id}"), &Value::Null);
        if !matches!(r["status"].as_str(), Some("queued" | "running")) {
            break r;
        }
        assert!(Instant::now() < deadline, "run {id} did not end");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done["status"], "passed", "{done}");
    let faults = done["journal"]["faults"].as_array().expect("faults");
    let max = |k: &str| {
        faults
            .iter()
            .filter_map(|f| f[k].as_f64())
            .fold(f64::MIN, f64::max)
    };
    let start = faults[0]["planned_start_s"].as_f64().expect("start");
    let end = faults[0]["planned_end_s"].as_f64().expect("end");
    let confirmed = faults
        .iter()
        .filter(|f| f["revert_confirmed"].as_bool() == Some(true))
        .count();
    (
        max("injected_s") - start,
        max("reverted_s") - end,
        confirmed,
    )
}

/// utime + stime of `pid`, in seconds.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// 1,000 registered agents (registrations over HTTP, no processes), then
/// `rounds` heartbeats from each; the controller's CPU per heartbeat.
fn heartbeat_cost(agents: usize, rounds: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (serve, addr, _) = serve_on(dir.path(), Ipv4Addr::LOCALHOST, "5s");
    let pid = serve.0.id();
    let tokens: Vec<(String, String)> = (0..agents)
        .map(|i| {
            let id = format!("hb-{i}");
            let body = json!({ "id": id, "url": format!("http://127.0.0.1:{}", 20000 + i), "version": "bench", "labels": { "role": "worker" } });
            let (code, v) = http_json(addr, "POST", "/v1/agents/register", JOIN, &body.to_string())
                .expect("register");
            assert_eq!(code, 200, "{v}");
            (id, v["agent_token"].as_str().expect("agent token").to_owned())
        })
        .collect();
    let before = cpu_s(pid);
    let t0 = Instant::now();
    let threads = 4;
    std::thread::scope(|s| {
        for chunk in tokens.chunks(agents.div_ceil(threads)) {
            s.spawn(move || {
                for _ in 0..rounds {
                    for (id, token) in chunk {
                        let (code, v) = http_json(
                            addr,
                            "POST",
                            &format!("/v1/agents/{id}/heartbeat"),
                            token,
                            r#"{"active_faults":0}"#,
                        )
                        .expect("heartbeat");
                        assert_eq!(code, 200, "{v}");
                    }
                }
            });
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_s(pid) - before;
    let beats = (agents * rounds) as f64;
    (cpu / beats * 1e6, beats / wall)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("FAULTLINE_BENCH_AGENTS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![50, 200]);
    println!("| agents | inject fan-out s | revert fan-out s | reverts confirmed |");
    println!("|---:|---:|---:|---:|");
    for n in sizes {
        let (inject, revert, confirmed) = fan_out(n);
        println!("| {n} | {inject:.3} | {revert:.3} | {confirmed}/{n} |");
    }
    let (us, rate) = heartbeat_cost(1000, 5);
    println!();
    println!(
        "heartbeats (SQLite store, 1,000 agents x 5): {us:.0} us controller CPU each, {rate:.0}/s served; at the default 5 s interval 1,000 agents cost {:.1}% of one core",
        us * 200.0 / 1e6 * 100.0
    );
}
