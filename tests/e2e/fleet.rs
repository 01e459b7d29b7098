//! The fleet, for real: `faultline agent` processes, each in a network namespace
//! of its own (crates/testkit's fleet harness: a bridge and a veth pair per
//! agent), registering with a `faultline serve` that listens on the bridge.
//!
//! - 50 agents register and are `alive` in `GET /v1/agents` within 5 s of their
//!   start; a `percent(20%)` run by label injects on exactly 10 of them (the
//!   agents' own `GET /v1/faults` and the nftables table in their namespace say
//!   so, and they are the 10 the snapshot and the seed choose), and afterwards
//!   no agent holds anything;
//! - `kill -9` of one agent makes it `lost` within 3 heartbeats, and later runs
//!   never select it.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child as Process, Stdio};
use std::time::{Duration, Instant};

use faultline_testkit::fleet::{self, FleetNet, FleetSpec, http_json};
use serde_json::{Value, json};

use crate::agent::bin;

const ADMIN: &str = "fleet-e2e-admin";
const JOIN: &str = "fleet-e2e-join-token";

/// A `faultline serve` on the bridge, killed if the test ends without stopping it.
struct Serve(Process);

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the controller on `ip:0` with an admin token, the join token and
/// `heartbeat`; answers it and where it listens.
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
    let mut child = bin()
        .arg("serve")
        .args(["--listen", &format!("{ip}:0"), "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn faultline serve");
    let stderr = child.stderr.take().expect("stderr");
    let serve = Serve(child);
    let (addr, _) = crate::serve::listening_on(stderr, "faultline serve");
    (serve, addr, join)
}

fn api(addr: SocketAddr, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    http_json(addr, method, path, ADMIN, &body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Polls until `check` holds, at most `within`.
fn wait_for(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The ids of the faults an agent holds, asked of the agent itself.
fn faults_on(addr: SocketAddr, token: &str) -> Vec<String> {
    match http_json(addr, "GET", "/v1/faults", token, "") {
        Ok((200, Value::Array(list))) => list
            .iter()
            .filter_map(|f| f["id"].as_str().map(str::to_owned))
            .collect(),
        other => panic!("GET /v1/faults on {addr}: {other:?}"),
    }
}

/// faultline's nftables tables in an agent's namespace: the fault seen from
/// outside the agent.
fn nft_tables(agent: &fleet::FleetAgent) -> Vec<String> {
    let out = agent
        .command("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft (scripts/setup.sh installs nftables)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("faultline_"))
        .map(str::to_owned)
        .collect()
}

fn run_yaml(mode: &str, duration: &str) -> String {
    format!(
        r#"version: faultline/v1
name: fleet-{mode_name}
targets:
  workers: {{ selector: {{ role: worker }}, mode: {mode} }}
method:
  - name: cut-discard
    target: workers
    fault: {{ network.partition: {{ peers: ["192.0.2.1/32"], ports: [9] }} }}
    duration: {duration}
safety:
  lease: 3s
"#,
        mode_name = mode.replace(['(', ')', '%'], "")
    )
}

fn wait_final(api_addr: SocketAddr, run: &str, within: Duration) -> Value {
    let mut last = Value::Null;
    wait_for(within, "the run ends", || {
        let (_, r) = api(api_addr, "GET", &format!("/v1/runs/{run}"), &Value::Null);
        let done = !matches!(r["status"].as_str(), Some("queued" | "running"));
        last = r;
        done
    });
    last
}

#[test]
fn fifty_agents_register_within_5s_and_percent_20_injects_on_exactly_10_then_reverts_all() {
    let net = FleetNet::new(50);
    let dir = tempfile::tempdir().expect("tempdir");
    let (_serve, api_addr, join) = serve_on(dir.path(), net.controller_ip, "1s");
    let mut spec = FleetSpec::new(assert_cmd::cargo::cargo_bin("faultline"), 50);
    spec.labels = |i| {
        vec![
            ("role".to_owned(), "worker".to_owned()),
            (
                "zone".to_owned(),
                if i % 2 == 0 { "a" } else { "b" }.to_owned(),
            ),
        ]
    };
    let token = spec.agent_token.clone();
    let fleet = net.start(&spec, &format!("http://{api_addr}"), &join);

    // (a) all 50 alive in GET /v1/agents within 5 s of their start.
    let took = fleet
        .await_registered(api_addr, ADMIN, Duration::from_secs(5))
        .unwrap_or_else(|missing| {
            panic!(
                "{} agents not registered within 5 s: {missing:?}; agent-0 said: {}",
                missing.len(),
                fleet.log(0)
            )
        });
    assert!(took <= Duration::from_secs(5), "registered in {took:?}");
    // And GET /v1/agents (its own view, each agent asked) lists all 50 alive
    // within 5 s of the first agent's start.
    let deadline = fleet.spawned_at + Duration::from_secs(5);
    let mut listed = Vec::new();
    while listed.len() < 50 {
        assert!(
            Instant::now() < deadline,
            "GET /v1/agents lists {} alive after 5 s",
            listed.len()
        );
        listed = fleet::listed_alive(api_addr, ADMIN);
    }
    let (code, listed) = api(api_addr, "GET", "/v1/agents", &Value::Null);
    assert_eq!(code, 200);
    let registered: Vec<&Value> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter(|a| a["source"] == "registry")
        .collect();
    assert_eq!(registered.len(), 50);
    for a in &registered {
        assert_eq!(a["state"], "alive", "{a}");
        assert_eq!(
            a["reachable"], true,
            "the controller's api token works: {a}"
        );
        assert_eq!(a["labels"]["role"], "worker");
        assert!(
            a["last_seen"].is_string() && a["version"].is_string(),
            "{a}"
        );
        let caps = a["capabilities"].as_array().expect("capabilities");
        assert!(caps.iter().any(|c| c == "network.partition"), "{a}");
        assert!(a["host"]["cpus"].as_u64().unwrap_or(0) >= 1, "{a}");
    }

    // The selection the service will make, computed here from its snapshot.
    let seed = 20_260_101_u64;
    let yaml = run_yaml("percent(20%)", "6s");
    let (code, snap) = api(api_addr, "GET", "/v1/fleet/snapshot", &Value::Null);
    assert_eq!(code, 200, "{snap}");
    let inventory: faultline_spec::Inventory =
        serde_json::from_value(snap["inventory"].clone()).expect("an inventory");
    let loaded = faultline_spec::load("fleet.yaml", &yaml);
    let exp = loaded.experiment.expect("the experiment validates");
    let expected: BTreeSet<String> = faultline_controller::select::resolve(&exp, &inventory, seed)
        .expect("resolves")["workers"]
        .agents
        .iter()
        .cloned()
        .collect();
    assert_eq!(expected.len(), 10, "ceil(20% of 50)");

    // (b) the run injects on exactly those 10, seen on the agents themselves.
    let (code, run) = api(
        api_addr,
        "POST",
        "/v1/runs",
        &json!({ "yaml": yaml, "seed": seed }),
    );
    assert_eq!(code, 202, "{run}");
    let run_id = run["id"].as_str().expect("run id").to_owned();
    let mut holding: BTreeSet<String> = BTreeSet::new();
    wait_for(Duration::from_secs(10), "10 agents hold the fault", || {
        holding = fleet
            .agents
            .iter()
            .filter(|a| !faults_on(a.addr(), &token).is_empty())
            .map(|a| a.id.clone())
            .collect();
        holding.len() >= 10
    });
    assert_eq!(
        holding, expected,
        "exactly the 10 the seed and the snapshot choose"
    );
    // From outside the agents: the nftables table exists in exactly those namespaces.
    let chosen = fleet
        .agent(expected.iter().next().expect("one"))
        .expect("agent");
    assert_eq!(nft_tables(chosen).len(), 1, "{:?}", nft_tables(chosen));
    let spared = fleet
        .agents
        .iter()
        .find(|a| !expected.contains(&a.id))
        .expect("a spared agent");
    assert!(nft_tables(spared).is_empty());
    // And the controller's view agrees.
    let (_, listed) = api(api_addr, "GET", "/v1/agents", &Value::Null);
    let with_faults: BTreeSet<String> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter(|a| a["source"] == "registry" && !a["faults"].as_array().is_none_or(Vec::is_empty))
        .filter_map(|a| a["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(with_faults, expected);

    // After the run: nothing anywhere.
    let done = wait_final(api_addr, &run_id, Duration::from_secs(60));
    assert_eq!(done["status"], "passed", "{done}");
    let targets = &done["journal"]["targets"];
    let journaled: BTreeSet<String> = targets[0]["agents"]
        .as_array()
        .expect("journal targets")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    assert_eq!(journaled, expected, "{targets}");
    for a in &fleet.agents {
        assert!(
            faults_on(a.addr(), &token).is_empty(),
            "{} still holds a fault",
            a.id
        );
    }
    for id in &expected {
        let a = fleet.agent(id).expect("agent");
        assert!(nft_tables(a).is_empty(), "{id}: {:?}", nft_tables(a));
    }
}

#[test]
fn kill_9_of_an_agent_makes_it_lost_within_3_heartbeats_and_later_runs_skip_it() {
    const HEARTBEAT: Duration = Duration::from_millis(300);
    let net = FleetNet::new(8);
    let dir = tempfile::tempdir().expect("tempdir");
    let (_serve, api_addr, join) = serve_on(dir.path(), net.controller_ip, "300ms");
    let spec = FleetSpec::new(assert_cmd::cargo::cargo_bin("faultline"), 8);
    let token = spec.agent_token.clone();
    let mut fleet = net.start(&spec, &format!("http://{api_addr}"), &join);
    fleet
        .await_registered(api_addr, ADMIN, Duration::from_secs(10))
        .unwrap_or_else(|m| panic!("not registered: {m:?}; agent-0 said: {}", fleet.log(0)));

    let victim = "agent-3";
    let state_of = |id: &str| -> Value {
        let (_, listed) = api(api_addr, "GET", "/v1/agents", &Value::Null);
        listed
            .as_array()
            .expect("list")
            .iter()
            .find(|a| a["name"] == id)
            .map(|a| a["state"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(state_of(victim), "alive");
    fleet.agent_mut(victim).expect("victim").kill9();
    let killed = Instant::now();
    // The rule is "silent for more than 3 heartbeats"; its last one came at most
    // one heartbeat before the kill, so `lost` shows within 3 of them. The
    // margin is the poll and the request.
    wait_for(HEARTBEAT * 3 + Duration::from_millis(400), "lost", || {
        state_of(victim) == "lost"
    });
    let took = killed.elapsed();
    assert!(
        took <= HEARTBEAT * 3 + Duration::from_millis(400),
        "lost after {took:?} (heartbeat {HEARTBEAT:?})"
    );
    // Everyone else stays alive.
    for a in fleet.agents.iter().filter(|a| a.id != victim) {
        assert_eq!(state_of(&a.id), "alive", "{}", a.id);
    }
    let (_, snap) = api(api_addr, "GET", "/v1/fleet/snapshot", &Value::Null);
    assert_eq!(snap["lost"], json!([victim]), "{snap}");
    assert!(snap["inventory"]["agents"].get(victim).is_none(), "{snap}");

    // Later runs never select it: `all` of the workers is the 7 alive ones,
    // whatever the seed.
    for seed in [1u64, 2] {
        let (code, run) = api(
            api_addr,
            "POST",
            "/v1/runs",
            &json!({ "yaml": run_yaml("all", "1s"), "seed": seed }),
        );
        assert_eq!(code, 202, "{run}");
        let id = run["id"].as_str().expect("id").to_owned();
        let done = wait_final(api_addr, &id, Duration::from_secs(60));
        assert_eq!(done["status"], "passed", "{done}");
        let chosen: Vec<String> = done["journal"]["targets"][0]["agents"]
            .as_array()
            .expect("targets")
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        assert_eq!(chosen.len(), 7, "{chosen:?}");
        assert!(!chosen.iter().any(|c| c == victim), "{chosen:?}");
    }
    for a in fleet.agents.iter().filter(|a| a.id != victim) {
        assert!(faults_on(a.addr(), &token).is_empty(), "{}", a.id);
    }
    // Halt reaches every alive registered agent (with its api token), not the lost one.
    let (code, halted) = api(api_addr, "POST", "/v1/halt", &Value::Null);
    assert_eq!(code, 200, "{halted}");
    let reached: BTreeSet<String> = halted["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter(|h| !h["report"].is_null())
        .filter_map(|h| h["agent"].as_str().map(str::to_owned))
        .collect();
    for a in fleet.agents.iter().filter(|a| a.id != victim) {
        assert!(reached.contains(&a.id), "{} not halted: {halted}", a.id);
    }
    assert!(!halted.to_string().contains(victim), "{halted}");
}

#[test]
fn agents_plan_and_run_against_a_controller_show_the_selection_it_makes() {
    let net = FleetNet::new(6);
    let dir = tempfile::tempdir().expect("tempdir");
    let (_serve, api_addr, join) = serve_on(dir.path(), net.controller_ip, "1s");
    let spec = FleetSpec::new(assert_cmd::cargo::cargo_bin("faultline"), 6);
    let token = spec.agent_token.clone();
    let fleet = net.start(&spec, &format!("http://{api_addr}"), &join);
    fleet
        .await_registered(api_addr, ADMIN, Duration::from_secs(10))
        .unwrap_or_else(|m| panic!("not registered: {m:?}; agent-0 said: {}", fleet.log(0)));
    let url = format!("http://{api_addr}");
    let admin = dir.path().join("admin");

    // `faultline agents`: a table with every registered agent alive.
    let out = crate::faultline()
        .args(["agents", "--controller", &url, "--token-file"])
        .arg(&admin)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ID"), "{table}");
    for a in &fleet.agents {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("{} ", a.id)))
            .unwrap_or_else(|| panic!("{} missing: {table}", a.id));
        assert!(line.contains("alive") && line.contains(&a.url()), "{line}");
    }
    // Without a token: refused, and said so.
    let out = crate::faultline()
        .args(["agents", "--controller", &url])
        .output()
        .expect("runs");
    assert!(!out.status.success());

    // `plan --controller --seed`: the selection over the controller's snapshot.
    let file = dir.path().join("fleet.yaml");
    std::fs::write(&file, run_yaml("count(2)", "2s")).expect("experiment");
    let seed = "77";
    let out = crate::faultline()
        .args([
            "plan",
            "--output",
            "json",
            "--seed",
            seed,
            "--controller",
            &url,
            "--token-file",
        ])
        .arg(&admin)
        .arg(&file)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let planned: Vec<String> = plan["targets"][0]["agents"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    assert_eq!(planned.len(), 2, "{plan}");

    // `run --controller --seed`: the same selection, the run's exit code.
    let out = crate::faultline()
        .args([
            "run",
            "--quiet",
            "--seed",
            seed,
            "--controller",
            &url,
            "--token-file",
        ])
        .arg(&admin)
        .arg(&file)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "target workers (count(2), 6 matched): {}",
            planned.join(", ")
        )),
        "{stderr}"
    );
    // The run the controller made chose the same agents.
    let (_, runs) = api(api_addr, "GET", "/v1/runs?limit=1", &Value::Null);
    let id = runs[0]["id"].as_str().expect("a run").to_owned();
    let (_, run) = api(api_addr, "GET", &format!("/v1/runs/{id}"), &Value::Null);
    assert_eq!(run["status"], "passed", "{run}");
    assert_eq!(
        run["journal"]["targets"][0]["agents"],
        json!(planned),
        "{run}"
    );
    for a in &fleet.agents {
        assert!(faults_on(a.addr(), &token).is_empty(), "{}", a.id);
    }
    // Invalid input exits 2 before anything is sent.
    std::fs::write(&file, "version: faultline/v1\nname: x\nbogus: 1\n").expect("bad");
    let out = crate::faultline()
        .args(["run", "--controller", &url, "--token-file"])
        .arg(&admin)
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
}
