//! `faultline agent` as a real process: it refuses to listen beyond loopback without
//! a token, serves the API with one, and reverts everything on SIGTERM.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::root;

pub(crate) fn bin() -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("faultline"));
    c.current_dir(root()).env_remove("FAULTLINE_LOG");
    c
}

/// One HTTP/1.1 request over a plain socket; (status, body).
pub(crate) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn agent_refuses_a_public_listen_without_a_token() {
    let state = tempfile::tempdir().expect("tempdir");
    let out = bin()
        .args(["agent", "--listen", "0.0.0.0:0", "--state-dir"])
        .arg(state.path())
        .output()
        .expect("runs");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without a token"),
        "{out:?}"
    );
}

#[test]
fn agent_serves_with_a_token_and_reverts_on_sigterm() {
    let state = tempfile::tempdir().expect("tempdir");
    let (mut agent, addr) = start_agent(state.path());
    let (status, body) = http(addr, "GET", "/v1/health", "e2e-token", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"role\":\"e2e\""), "{body}");
    assert_eq!(http(addr, "GET", "/v1/health", "wrong", "").0, 401);

    let mut sleeper = Command::new("sleep").arg("600").spawn().expect("sleep");
    let fault = format!(
        r#"{{"kind":"process.pause","params":{{"pid":{}}},"lease":"60s"}}"#,
        sleeper.id()
    );
    let (status, body) = http(addr, "PUT", "/v1/faults/e2e-pause", "e2e-token", &fault);
    assert_eq!(status, 201, "{body}");
    let state_of = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim().chars().next()))
            .flatten()
    };
    assert_eq!(state_of(sleeper.id()), Some('T'));

    nix_kill(agent.id(), "TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = agent.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert_ne!(
        state_of(sleeper.id()),
        Some('T'),
        "SIGTERM left a stopped process"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// Starts `faultline agent` on 127.0.0.1 port 0 with the token `e2e-token` and its
/// state under `dir`; returns the process and the address it says it listens on.
pub(crate) fn start_agent(dir: &std::path::Path) -> (std::process::Child, SocketAddr) {
    let token_file = dir.join("token");
    std::fs::write(&token_file, "e2e-token\n").expect("token file");
    let mut agent = bin()
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--labels",
            "role=e2e",
            "--token-file",
        ])
        .arg(&token_file)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let stderr = agent.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("faultline agent: listening on ") {
                let _ = tx.send(a.to_owned());
            }
        }
    });
    let addr: SocketAddr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the agent says where it listens")
        .parse()
        .expect("addr");
    (agent, addr)
}

/// `psql` against the PostgreSQL that scripts/setup.sh starts.
fn psql(sql: &str) -> Command {
    let mut c = Command::new("psql");
    c.args([
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
    .stdout(Stdio::null());
    c
}

#[test]
fn sigkill_of_the_agent_holding_a_db_lock_frees_it_within_the_dead_man_timeout() {
    let table = format!("e2e_lock_{}", std::process::id());
    let created = psql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text); INSERT INTO {table} VALUES (1, 'a')"
    ))
    .status()
    .expect("psql runs (postgresql-client from scripts/setup.sh)");
    assert!(
        created.success(),
        "PostgreSQL is not reachable: run ./scripts/setup.sh (pg_ctlcluster 15 main start)"
    );

    let state = tempfile::tempdir().expect("tempdir");
    let (mut agent, addr) = start_agent(state.path());
    let lease = Duration::from_secs(2);
    let fault = format!(
        r#"{{"kind":"db.lock","params":{{"url":"postgres://faultline:faultline@127.0.0.1:5432/postgres","table":"{table}","mode":"access_exclusive"}},"lease":"2s"}}"#
    );
    let (status, body) = http(addr, "PUT", "/v1/faults/e2e-db-lock", "e2e-token", &fault);
    assert_eq!(status, 201, "{body}");

    // A writer queues behind the lock...
    let mut writer = psql(&format!("UPDATE {table} SET v = v WHERE id = 1"))
        .spawn()
        .expect("writer");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        writer.try_wait().expect("wait").is_none(),
        "the writer went through the lock"
    );
    // The agent's fault status reports who waits behind the lock.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let figures = loop {
        let (status, body) = http(addr, "GET", "/v1/faults/e2e-db-lock", "e2e-token", "");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
        let figures = v["observation"]["figures"].clone();
        if figures["blocked_sessions"] == 1 || std::time::Instant::now() > deadline {
            break figures;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(figures["blocked_sessions"], 1, "{figures}");
    assert_eq!(figures["holding"], true, "{figures}");

    // ...and goes through once the agent is killed, with no revert from anyone:
    // the server ends the dead agent's session (lease + margin at the latest).
    let killed = std::time::Instant::now();
    agent.kill().expect("SIGKILL");
    let _ = agent.wait();
    let bound = lease + faultline_faults::db::DEAD_MAN_MARGIN + Duration::from_secs(1);
    let status = loop {
        if let Some(s) = writer.try_wait().expect("wait") {
            break s;
        }
        assert!(
            killed.elapsed() < bound,
            "the lock outlived the agent by more than {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the writer failed");
    assert!(
        psql(&format!("DROP TABLE {table}"))
            .status()
            .expect("psql")
            .success()
    );
}

fn nix_kill(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}
