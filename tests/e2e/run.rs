//! `faultline run` as a real process against a real HTTP server process: exit 1
//! naming the failed hypothesis on stdout, in JUnit and in the journal; exit 0
//! within tolerance; Ctrl-C reverts and exits 3; kill -9 of the controller leaves
//! nothing injected once the lease has lapsed (with a real agent process).

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use faultline_testkit::Child;

use crate::agent::{http, start_agent};
use crate::{faultline, root};

/// Pauses the server for 2 s; `during` is the tolerance, `target` its agent.
fn write_experiment(
    dir: &Path,
    server: &Child,
    addr: std::net::SocketAddr,
    during: &str,
    target: &str,
    lease: &str,
    duration: &str,
) -> std::path::PathBuf {
    let path = dir.join("exp.yaml");
    std::fs::write(
        &path,
        format!(
            r#"version: faultline/v1
name: pause-web
targets:
  host: {{ agents: [{target}] }}
probes:
  web:
    http: {{ url: "http://{addr}/", rate: 40/s, timeout: 500ms }}
hypotheses:
  - {{ probe: web, availability: ">= 99%", p99: "<= 400ms", window: 2s }}
during:
  - {{ probe: web, availability: "{during}", window: 2s }}
recovery: {{ within: 5s }}
method:
  - name: freeze
    target: host
    fault: {{ process.pause: {{ pid: {pid} }} }}
    start: 500ms
    duration: {duration}
safety:
  lease: {lease}
"#,
            pid = server.pid()
        ),
    )
    .expect("write experiment");
    path
}

#[test]
fn a_run_that_breaks_its_sla_exits_1_naming_the_hypothesis_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addr) = Child::http_server();
    let exp = write_experiment(dir.path(), &server, addr, ">= 99%", "local", "5s", "2s");
    let out = faultline()
        .arg("run")
        .arg(&exp)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--journal")
        .arg(dir.path().join("journal.json"))
        .arg("--junit")
        .arg(dir.path().join("junit.xml"))
        .arg("--report")
        .arg(dir.path().join("report"))
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!server.is_stopped(), "left paused");
    let name = "web: availability >= 99% over 2s";
    assert!(stdout.contains(name), "{stdout}");

    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).expect("junit");
    assert!(junit.contains("<failure"), "{junit}");
    let escaped = name.replace('>', "&gt;");
    assert!(junit.contains(&format!("during[0] {escaped}")), "{junit}");

    let journal: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("journal.json")).expect("journal"),
    )
    .expect("journal is JSON");
    assert_eq!(journal["status"], "failed");
    assert_eq!(journal["exit_code"], 1);
    let failed = crate::failed_verdicts(&journal);
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0]["name"], name);
    assert_eq!(journal["faults"][0]["revert_confirmed"], true);
    assert!(dir.path().join("report/index.html").exists());
}

#[test]
fn a_run_within_tolerance_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addr) = Child::http_server();
    let exp = write_experiment(dir.path(), &server, addr, ">= 0%", "local", "5s", "2s");
    let out = faultline()
        .arg("run")
        .arg(&exp)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--output", "json"])
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let journal: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(journal["status"], "passed");
    assert!(!server.is_stopped());
}

#[test]
fn an_invalid_experiment_exits_2_and_runs_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "version: faultline/v1\nname: x\nmethod: []\nprobes: { a: { htp: {} } }\n",
    )
    .expect("write");
    let out = faultline().arg("run").arg(&path).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.yaml:4:"),
        "{out:?}"
    );
}

/// Spawns `faultline run` and returns it once it says it injected the fault.
fn spawn_until_injected(args: &[&std::ffi::OsStr]) -> std::process::Child {
    let mut run = Command::new(assert_cmd::cargo::cargo_bin("faultline"))
        .current_dir(root())
        .env_remove("FAULTLINE_LOG")
        .arg("run")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run");
    let stderr = run.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("injected freeze") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the run injects its fault");
    run
}

#[test]
fn ctrl_c_mid_run_reverts_and_exits_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addr) = Child::http_server();
    let exp = write_experiment(dir.path(), &server, addr, ">= 0%", "local", "10s", "30s");
    let state = dir.path().join("state");
    let mut run =
        spawn_until_injected(&[exp.as_os_str(), "--state-dir".as_ref(), state.as_os_str()]);
    assert!(server.is_stopped());
    let pid = nix::unistd::Pid::from_raw(i32::try_from(run.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = run.wait().expect("wait");
    assert_eq!(status.code(), Some(3));
    assert!(!server.is_stopped(), "Ctrl-C left the server paused");
}

#[test]
fn kill_9_of_the_controller_leaves_nothing_once_the_lease_lapses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut agent, agent_addr) = start_agent(dir.path());
    let (server, addr) = Child::http_server();
    let inventory = dir.path().join("inventory.yaml");
    std::fs::write(
        &inventory,
        format!(
            "agents:\n  a1: {{ url: 'http://{agent_addr}', token_file: '{}' }}\n",
            dir.path().join("token").display()
        ),
    )
    .expect("inventory");
    let exp = write_experiment(dir.path(), &server, addr, ">= 0%", "a1", "2s", "60s");
    let mut run = spawn_until_injected(&[
        exp.as_os_str(),
        "--inventory".as_ref(),
        inventory.as_os_str(),
    ]);
    assert!(server.is_stopped());
    run.kill().expect("kill -9");
    let killed = Instant::now();
    let _ = run.wait();
    // Lease 2 s (+1 s): the agent reverts what nobody renews.
    faultline_testkit::eventually_blocking(Duration::from_secs(3), || {
        !server.is_stopped()
            && http(agent_addr, "GET", "/v1/faults", "e2e-token", "")
                .1
                .trim()
                == "[]"
    });
    assert!(
        !server.is_stopped(),
        "still paused {:?} after kill -9",
        killed.elapsed()
    );
    assert_eq!(
        http(agent_addr, "GET", "/v1/faults", "e2e-token", "")
            .1
            .trim(),
        "[]"
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn a_lost_agent_ends_the_run_with_exit_4_naming_what_may_be_left() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut agent, agent_addr) = start_agent(dir.path());
    let (server, addr) = Child::http_server();
    let inventory = dir.path().join("inventory.yaml");
    std::fs::write(
        &inventory,
        format!(
            "agents:\n  a1: {{ url: 'http://{agent_addr}', token_file: '{}' }}\n",
            dir.path().join("token").display()
        ),
    )
    .expect("inventory");
    let exp = write_experiment(dir.path(), &server, addr, ">= 0%", "a1", "3s", "60s");
    let mut run = Command::new(assert_cmd::cargo::cargo_bin("faultline"))
        .current_dir(root())
        .env_remove("FAULTLINE_LOG")
        .arg("run")
        .arg(&exp)
        .arg("--inventory")
        .arg(&inventory)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run");
    let stderr = run.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("injected freeze") {
                let _ = tx.send(None);
            }
            all.push_str(&line);
            all.push('\n');
        }
        let _ = tx.send(Some(all));
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(60)).expect("injected"),
        None
    );
    // The agent dies with the fault in place (its journal would revert it on
    // restart; nobody restarts it here).
    agent.kill().expect("kill -9 the agent");
    let _ = agent.wait();
    let lost = Instant::now();
    let status = run.wait().expect("wait");
    let stderr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("stderr")
        .unwrap_or_default();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut run.stdout.take().expect("stdout"), &mut stdout)
        .expect("read stdout");
    assert_eq!(status.code(), Some(4), "{stdout}\n{stderr}");
    // Noticed within about half a lease, not at the end of the 60 s step.
    assert!(
        lost.elapsed() < Duration::from_secs(15),
        "{:?}",
        lost.elapsed()
    );
    assert!(stderr.contains("agent a1 lost"), "{stderr}");
    assert!(
        stderr.contains("revert unconfirmed, may be left:") && stderr.contains("freeze.a1 on a1"),
        "{stderr}"
    );
    assert!(
        stdout.contains("LEFT BEHIND") || stdout.contains("left behind"),
        "{stdout}"
    );
}
