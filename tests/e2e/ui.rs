//! The game-day dashboard in a real browser: playwright-core (npm, pinned in
//! tests/ui/package-lock.json, installed by ./scripts/setup.sh) drives Debian's
//! Chromium, headless, against a real `faultline serve` process on port 0 and the
//! demo completion API (in this process) with a `db.lock` on its jobs database.
//! The browser script, tests/ui/dashboard.mjs, signs in, pastes an invalid
//! experiment and sees the located error, stores a valid one, starts a run, watches
//! the timeline gain points and a shaded fault window live, cuts the browser's
//! connections (it reaches the controller through a TCP relay of its own) and sees
//! the stream resume with `Last-Event-ID`, every event once, aborts the run and sees
//! every fault reverted and the status `aborted`, then checks that a viewer sees no
//! abort or halt control and that halt asks before it acts. On each page every
//! control must be labelled, and no token may reach a URL or the console. Screenshots of the run
//! page go to target/ui-artifacts/<test>-<pid>/, printed in the test output.
//!
//! Missing node or playwright-core is a failure naming the command that installs
//! them; only a Chromium that cannot start skips, saying why.

// The test's output names the screenshots' folder, the browser script's log, and
// a skip: what someone reading a CI log needs.
#![allow(clippy::print_stderr)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::root;
use crate::serve::{ADMIN, OPERATOR, VIEWER, call, start_serve, write_config};

/// The exit code dashboard.mjs uses when Chromium cannot start.
const CHROMIUM_CANNOT_START: i32 = 77;
const CHROMIUM: &str = "/usr/bin/chromium";
/// The browser script's own bound; every wait inside it is shorter.
const SCRIPT_LIMIT: Duration = Duration::from_secs(90);

fn experiment(gateway: std::net::SocketAddr, db: &Path) -> String {
    format!(
        r#"version: faultline/v1
name: dashboard-demo
description: the demo completion API while its jobs table stalls, watched from the dashboard
targets:
  host: {{ agents: [local] }}
probes:
  api:
    http: {{ url: "http://{gateway}/v1/complete", method: POST, body: '{{"prompt":"hello"}}', rate: 20/s, timeout: 2s }}
hypotheses:
  - {{ probe: api, availability: ">= 90%", window: 1s }}
during:
  - {{ probe: api, availability: ">= 0%", window: 1s }}
method:
  - name: stall-jobs-table
    target: host
    fault: {{ db.lock: {{ url: "sqlite://{db}", mode: immediate, hold: 400ms, every: 1s }} }}
    start: 1s
    duration: 120s
safety:
  lease: 5s
"#,
        db = db.display()
    )
}

#[test]
fn the_dashboard_runs_watches_and_aborts_a_game_day_in_chromium() {
    let script = root().join("tests/ui/dashboard.mjs");
    let playwright = root().join("tests/ui/node_modules/playwright-core/package.json");
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is missing ({node:?}): run ./scripts/setup.sh (it installs nodejs and npm from Debian)"
    );
    assert!(
        playwright.exists(),
        "{} is missing: run ./scripts/setup.sh (it runs `npm ci` in tests/ui)",
        playwright.display()
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run ./scripts/setup.sh (it installs Debian's chromium)"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let db = dir.path().join("demo/jobs.db");
    let mut demo_config = faultline_demo::DemoConfig {
        db_path: db.clone(),
        ..faultline_demo::DemoConfig::default()
    };
    demo_config.gateway.set_port(0);
    demo_config.service.set_port(0);
    let demo = runtime
        .block_on(faultline_demo::Demo::start(demo_config))
        .expect("the demo target starts");
    let yaml_file = dir.path().join("experiment.yaml");
    std::fs::write(&yaml_file, experiment(demo.gateway_addr(), &db)).expect("experiment");

    let config = write_config(dir.path());
    let (serve, api, _) = start_serve(dir.path(), &config);

    let artifacts = artifacts_dir();
    eprintln!("dashboard screenshots: {}", artifacts.display());
    let mut child = Command::new("node")
        .arg(&script)
        .current_dir(root().join("tests/ui"))
        .env("FAULTLINE_URL", format!("http://{api}"))
        .env("FAULTLINE_ADMIN", ADMIN)
        .env("FAULTLINE_OPERATOR", OPERATOR)
        .env("FAULTLINE_VIEWER", VIEWER)
        .env("EXPERIMENT_FILE", &yaml_file)
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", CHROMIUM)
        .env("USER_DATA_DIR", dir.path().join("chromium-profile"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node starts");
    let lines = collect(&mut child);
    let deadline = Instant::now() + SCRIPT_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for node") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "dashboard.mjs did not finish in {SCRIPT_LIMIT:?}:\n{}",
                lines.join()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    lines.drain();
    let out = lines.join();
    eprintln!("{out}");
    if status.code() == Some(CHROMIUM_CANNOT_START) {
        eprintln!("SKIPPED: Chromium cannot start on this machine; the dashboard was not tested");
        return;
    }
    assert!(status.success(), "dashboard.mjs failed ({status}):\n{out}");

    // What the browser saw is what the controller stored.
    let run_id = out
        .lines()
        .find_map(|l| l.strip_prefix("dashboard: run "))
        .expect("the script names its run")
        .trim()
        .to_owned();
    let (code, run) = call(
        api,
        "GET",
        &format!("/v1/runs/{run_id}"),
        VIEWER,
        &Value::Null,
    );
    assert_eq!(code, 200, "{run}");
    assert_eq!(run["status"], "aborted", "{run}");
    let faults = run["journal"]["faults"].as_array().expect("journal faults");
    assert!(!faults.is_empty(), "{run}");
    for f in faults {
        assert!(f["reverted_s"].is_number(), "not reverted: {f}");
    }
    let (code, agents) = call(api, "GET", "/v1/agents", VIEWER, &Value::Null);
    assert_eq!(code, 200, "{agents}");
    let local = agents
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == "local"))
        .expect("the in-process agent is listed");
    assert_eq!(local["faults"], serde_json::json!([]), "{agents}");
    for shot in ["run-live.png", "run-aborted.png", "run-viewer.png"] {
        assert!(artifacts.join(shot).exists(), "no screenshot {shot}");
    }

    drop(serve);
    runtime.block_on(demo.shutdown());
}

/// target/ui-artifacts/<pid>: kept after the test, one folder per test process.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let dir = target
        .join("ui-artifacts")
        .join(format!("dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// The child's stdout and stderr lines, gathered on threads so neither pipe fills.
struct Lines(
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    Vec<std::thread::JoinHandle<()>>,
);

impl Lines {
    fn join(&self) -> String {
        self.0.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits (at most 5 s: a browser left behind may hold a pipe) for both pipes
    /// to be read to their end.
    fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.1.iter().all(|h| h.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn collect(child: &mut std::process::Child) -> Lines {
    let all = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    for pipe in [
        Box::new(out) as Box<dyn std::io::Read + Send>,
        Box::new(err) as Box<dyn std::io::Read + Send>,
    ] {
        let all = std::sync::Arc::clone(&all);
        handles.push(std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut v) = all.lock() {
                    v.push(line);
                }
            }
        }));
    }
    Lines(all, handles)
}
