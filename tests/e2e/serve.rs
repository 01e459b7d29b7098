//! `faultline serve` as a real process: a viewer token cannot start a run (403),
//! and kill -9 of the controller in the middle of a run leaves no run `running`
//! forever: the next start on the same store marks it aborted, and its in-process
//! agent's journal resumes the process the killed one had paused.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child as Process, Stdio};
use std::time::{Duration, Instant};

use faultline_testkit::Child;
use serde_json::{Value, json};

use crate::agent::{bin, http};

pub(crate) const ADMIN: &str = "e2e-admin";
pub(crate) const OPERATOR: &str = "e2e-operator";
pub(crate) const VIEWER: &str = "e2e-viewer";

/// A service config with three tokens and `pid:*` allowed on this host.
pub(crate) fn write_config(dir: &Path) -> std::path::PathBuf {
    for (name, secret) in [("admin", ADMIN), ("operator", OPERATOR), ("viewer", VIEWER)] {
        std::fs::write(dir.join(name), format!("{secret}\n")).expect("token file");
    }
    let path = dir.join("serve.yaml");
    std::fs::write(
        &path,
        format!(
            r#"tokens:
  - {{ name: root, role: admin, token_file: {d}/admin }}
  - {{ name: ci, role: operator, token_file: {d}/operator }}
  - {{ name: dash, role: viewer, token_file: {d}/viewer }}
allow:
  local_processes: ["pid:*"]
concurrency: refuse
"#,
            d = dir.display()
        ),
    )
    .expect("config");
    path
}

/// A `faultline serve` process, killed if a test ends without stopping it.
pub(crate) struct Serve(Process);

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `faultline serve` and waits for the line that says where it listens;
/// answers the process, the address and its earlier stderr lines.
pub(crate) fn start_serve(dir: &Path, config: &Path) -> (Serve, SocketAddr, Vec<String>) {
    start_serve_with(dir, config, &[])
}

fn start_serve_with(
    dir: &Path,
    config: &Path,
    extra: &[&std::ffi::OsStr],
) -> (Serve, SocketAddr, Vec<String>) {
    let mut serve = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .args(extra)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn faultline serve");
    let stderr = serve.stderr.take().expect("stderr");
    let serve = Serve(serve);
    let (addr, lines) = listening_on(stderr, "faultline serve");
    (serve, addr, lines)
}

/// Reads a `faultline serve`'s stderr (at most 30 s) up to the line that says
/// where it listens; answers that address and the lines before it. The rest of
/// stderr is drained in the background so the process never blocks on it.
pub(crate) fn listening_on(
    stderr: std::process::ChildStderr,
    who: &str,
) -> (SocketAddr, Vec<String>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{who} did not say where it listens: {lines:?}"));
        if let Some(a) = line.strip_prefix("faultline serve: listening on ") {
            return (a.parse().expect("addr"), lines);
        }
        lines.push(line);
    }
}

pub(crate) fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &Value,
) -> (u16, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, text) = http(addr, method, path, token, &body);
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn wait_for(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kill_9_of_the_controller_mid_run_leaves_no_run_running_and_a_viewer_gets_403() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let (server, addr) = Child::http_server();
    let yaml = format!(
        r#"version: faultline/v1
name: long-pause
targets:
  host: {{ agents: [local] }}
probes:
  web:
    http: {{ url: "http://{addr}/", rate: 20/s, timeout: 500ms }}
hypotheses:
  - {{ probe: web, availability: ">= 99%", window: 1s }}
during:
  - {{ probe: web, availability: ">= 0%", window: 1s }}
method:
  - name: freeze
    target: host
    fault: {{ process.pause: {{ pid: {pid} }} }}
    duration: 120s
safety:
  lease: 3s
"#,
        pid = server.pid()
    );
    let (mut serve, api, _) = start_serve(dir.path(), &config);

    // A viewer may look, not start.
    let (code, body) = call(api, "POST", "/v1/runs", VIEWER, &json!({ "yaml": yaml }));
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"], "forbidden");

    let (code, run) = call(api, "POST", "/v1/runs", OPERATOR, &json!({ "yaml": yaml }));
    assert_eq!(code, 202, "{run}");
    let id = run["id"].as_str().expect("run id").to_owned();
    // Running, with the server paused by its fault.
    wait_for(Duration::from_secs(30), "the fault is injected", || {
        server.is_stopped()
    });
    let (_, run) = call(api, "GET", &format!("/v1/runs/{id}"), VIEWER, &Value::Null);
    assert_eq!(run["status"], "running", "{run}");

    // kill -9: no chance to revert, abort or write anything.
    serve.0.kill().expect("kill -9");
    let _ = serve.0.wait();
    assert!(server.is_stopped(), "nothing resumed the server yet");

    // The next controller on the same state directory (and SQLite store).
    let (mut serve, api, said) = start_serve(dir.path(), &config);
    assert!(
        said.iter()
            .any(|l| l.contains(&id) && l.contains("marked aborted")),
        "{said:?}"
    );
    let (_, run) = call(api, "GET", &format!("/v1/runs/{id}"), VIEWER, &Value::Null);
    assert_eq!(run["status"], "aborted", "{run}");
    assert!(
        run["reason"].as_str().unwrap_or("").contains("restarted"),
        "{run}"
    );
    // Its in-process agent replayed the journal: the server runs again.
    wait_for(Duration::from_secs(5), "the server is resumed", || {
        !server.is_stopped()
    });
    let (code, runs) = call(
        api,
        "GET",
        "/v1/runs?status=running,queued",
        VIEWER,
        &Value::Null,
    );
    assert_eq!((code, runs), (200, json!([])));
    let (_, audit) = call(
        api,
        "GET",
        "/v1/audit?actor=controller",
        ADMIN,
        &Value::Null,
    );
    assert_eq!(audit[0]["target"], id.as_str(), "{audit}");

    // SIGTERM: a clean stop.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(serve.0.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = serve.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "faultline serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_refuses_to_listen_beyond_loopback_without_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bin()
        .args(["serve", "--listen", "0.0.0.0:0", "--state-dir"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without API tokens"), "{stderr}");
}

/// `faultline status` and `faultline halt` against a running agent, then
/// `faultline halt --controller` through the service that has it in its
/// inventory: each revert confirmed from outside (the paused process runs).
#[test]
fn status_and_halt_reach_an_agent_and_a_controller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut agent, agent_addr) = crate::agent::start_agent(dir.path());
    let sleeper = Child::sleep();
    let url = format!("http://{agent_addr}");
    let token = dir.path().join("token");
    let pause = |id: &str| {
        let body = format!(
            r#"{{"kind":"process.pause","params":{{"pid":{}}},"lease":"30s"}}"#,
            sleeper.pid()
        );
        let (code, text) = http(
            agent_addr,
            "PUT",
            &format!("/v1/faults/{id}"),
            "e2e-token",
            &body,
        );
        assert!(code == 200 || code == 201, "{code} {text}");
        assert!(sleeper.is_stopped());
    };
    pause("run-0000000000aa.00-freeze.a1");
    let out = bin()
        .args([
            "status",
            "--output",
            "json",
            "--agent",
            &url,
            "--token-file",
        ])
        .arg(&token)
        .output()
        .expect("status");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let st: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(st["faults"][0]["kind"], "process.pause", "{st:#}");
    // What the live agent reports, not a journal read on this host.
    assert_eq!(st["faults"][0]["source"], "agent", "{st:#}");
    assert_eq!(st["faults"][0]["run"], "run-0000000000aa", "{st:#}");
    assert_eq!(st["faults"][0]["step"], "freeze", "{st:#}");
    assert!(st["faults"][0]["expires_at"].is_string(), "{st:#}");

    let out = bin()
        .args(["halt", "--agent", &url, "--token-file"])
        .arg(&token)
        .output()
        .expect("halt");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!sleeper.is_stopped(), "halt --agent resumed it");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reverted run-0000000000aa.00-freeze.a1"),
        "{out:?}"
    );

    // The same through a controller that has the agent in its inventory.
    let inventory = dir.path().join("inventory.yaml");
    std::fs::write(
        &inventory,
        format!(
            "agents:\n  a1: {{ url: '{url}', token_file: '{}' }}\n",
            token.display()
        ),
    )
    .expect("inventory");
    let config = write_config(dir.path());
    let (_serve, api, _) = start_serve_with(
        dir.path(),
        &config,
        &["--inventory".as_ref(), inventory.as_os_str()],
    );
    pause("run-0000000000bb.00-freeze.a1");
    let out = bin()
        .args([
            "halt",
            "--controller",
            &format!("http://{api}"),
            "--token-file",
        ])
        .arg(dir.path().join("admin"))
        .output()
        .expect("halt --controller");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!sleeper.is_stopped(), "halt --controller resumed it");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("run-0000000000bb.00-freeze.a1 on a1"),
        "{out:?}"
    );
    // A viewer may not halt: refused, nothing claimed.
    let out = bin()
        .args([
            "halt",
            "--controller",
            &format!("http://{api}"),
            "--token-file",
        ])
        .arg(dir.path().join("viewer"))
        .output()
        .expect("halt --controller as viewer");
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    let _ = agent.kill();
    let _ = agent.wait();
}
