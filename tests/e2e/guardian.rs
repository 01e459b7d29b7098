//! kill -9 of `faultline run` (whose agent is in its own process) at each phase:
//! its guardian reverts what the run left, seen from outside within 2 s. kill -9
//! of both the run and its guardian leaves the faults in place, `faultline
//! status` names each, and `faultline halt` clears them.
//!
//! Runs that inject nftables faults run inside a network namespace of their own
//! (`ip netns exec` execs, so the run keeps the child's pid), and so do the nft
//! checks, `status` and `halt`: a host-wide halt must not touch the tables of
//! tests running beside these.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use faultline_testkit::NetNs;
use faultline_testkit::{Child, eventually_blocking};

use crate::root;

const PG_URL: &str = "postgres://faultline:faultline@127.0.0.1:5432/postgres";

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("faultline")
}

/// `faultline ARGS` inside `ns` when given.
fn faultline_in(ns: Option<&NetNs>) -> Command {
    let mut c = match ns {
        Some(ns) => ns.command(&bin().display().to_string()),
        None => Command::new(bin()),
    };
    c.current_dir(root()).env_remove("FAULTLINE_LOG");
    c
}

/// An experiment on the in-process agent probing `url`, with `steps` as its
/// method (YAML list items, indented by four spaces).
fn experiment(dir: &Path, url: &str, steps: &str) -> PathBuf {
    let path = dir.join("exp.yaml");
    std::fs::write(
        &path,
        format!(
            r#"version: faultline/v1
name: guardian
targets:
  host: {{ agents: [local] }}
probes:
  web:
    http: {{ url: "{url}", rate: 20/s, timeout: 500ms }}
hypotheses:
  - {{ probe: web, availability: ">= 0%", window: 1s }}
recovery: {{ within: 2s }}
method:
{steps}
safety:
  lease: 30s
"#
        ),
    )
    .expect("write experiment");
    path
}

/// One test's world: a network namespace of its own (the run's nftables
/// faults, `status` and `halt` stay inside it), the HTTP server the probe reads,
/// and a temporary directory for the experiment and the run's state.
struct Scene {
    ns: NetNs,
    dir: tempfile::TempDir,
    url: String,
    addr: std::net::SocketAddr,
    _server: Child,
}

impl Scene {
    /// The server inside the namespace, where the run will be.
    fn new() -> Self {
        let ns = NetNs::new();
        let (server, addr) = Child::http_server_with(ns.command("python3"));
        Self::with(ns, server, addr)
    }

    /// The server on the host, for runs that must be on the host (PostgreSQL
    /// listens on the host's loopback); the namespace still scopes `status`.
    fn on_host() -> Self {
        let (server, addr) = Child::http_server();
        Self::with(NetNs::new(), server, addr)
    }

    fn with(ns: NetNs, server: Child, addr: std::net::SocketAddr) -> Self {
        Self {
            ns,
            dir: tempfile::tempdir().expect("tempdir"),
            url: format!("http://{addr}/"),
            addr,
            _server: server,
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `faultline run` of an experiment with `steps`, inside the namespace.
    fn run(&self, steps: &str) -> Run {
        let exp = experiment(self.dir.path(), &self.url, steps);
        Run::start(Some(&self.ns), &exp, &self.state())
    }

    /// kill -9 of the run; then its guardian must leave `clear` true within 2 s
    /// and `status` must find nothing.
    fn kill_9_leaves_nothing(&self, run: &mut Run, clear: impl Fn() -> bool) {
        let guardian = run.guardian();
        let killed = run.kill9();
        left_nothing(run, guardian, killed, &self.ns, clear);
    }
}

/// A running `faultline run` and the lines of its stderr so far.
struct Run {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    state: PathBuf,
}

impl Run {
    fn start(ns: Option<&NetNs>, exp: &Path, state: &Path) -> Self {
        Self::start_with_env(ns, exp, state, ("FL_GUARD_UNUSED", ""))
    }

    fn start_with_env(ns: Option<&NetNs>, exp: &Path, state: &Path, env: (&str, &str)) -> Self {
        let mut child = faultline_in(ns)
            .env(env.0, env.1)
            .arg("run")
            .arg(exp)
            .arg("--state-dir")
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn faultline run");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            state: state.to_owned(),
        }
    }

    /// Waits (at most 60 s) for a progress line containing `needle`.
    fn until(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line with {needle:?}; stderr so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// Waits for a progress line containing each of `needles`, in any
    /// order: steps that start together are injected concurrently.
    /// Only lines that arrive after the call count.
    fn until_all(&mut self, needles: &[&str]) {
        let from = self.seen.len();
        while let Some(missing) = needles
            .iter()
            .find(|n| !self.seen[from..].iter().any(|l| l.contains(**n)))
        {
            self.until(missing);
        }
    }

    /// The guardian's pid, from the lock it holds.
    fn guardian(&self) -> u32 {
        let text =
            std::fs::read_to_string(self.state.join("guardian.lock")).expect("guardian.lock");
        let pid: u32 = text.trim().parse().expect("a pid in guardian.lock");
        assert!(alive(pid), "guardian {pid} is not running");
        pid
    }

    /// kill -9 of the run itself.
    fn kill9(&mut self) -> Instant {
        // `ip netns exec` exec'd faultline: the child's pid is the run's.
        let comm =
            std::fs::read_to_string(format!("/proc/{}/comm", self.child.id())).unwrap_or_default();
        assert_eq!(comm.trim(), "faultline", "the killed process is the run");
        self.child.kill().expect("kill -9");
        let at = Instant::now();
        let _ = self.child.wait();
        at
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `pid` is a live process (not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s[s.rfind(')')? + 1..].to_owned();
            rest.split_whitespace().next().map(|st| st != "Z")
        })
        .unwrap_or(false)
}

fn kill9(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill -9");
}

/// The nftables tables named `faultline_*` in `ns`.
fn nft_tables(ns: &NetNs) -> Vec<String> {
    let out = ns
        .command("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft (scripts/setup.sh installs nftables)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|n| n.starts_with("faultline_"))
        .map(str::to_owned)
        .collect()
}

/// `faultline status --output json` on `state` (inside `ns`).
fn status(ns: Option<&NetNs>, state: &Path) -> serde_json::Value {
    let out = faultline_in(ns)
        .args(["status", "--output", "json", "--state-dir"])
        .arg(state)
        .output()
        .expect("faultline status");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

fn faults_of(status: &serde_json::Value) -> Vec<(String, bool)> {
    status["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or_default().to_owned(),
                f["present"].as_bool().unwrap_or_default(),
            )
        })
        .collect()
}

/// After kill -9 of the run: `clear` holds within 2 s, the guardian has exited,
/// and `status` (run in `ns`, where no other test's nftables tables are) finds
/// nothing. Returns how long it took; prints it (seen with `--nocapture`) for
/// the table in docs/operations.md.
#[allow(clippy::print_stderr)]
fn left_nothing(
    run: &Run,
    guardian: u32,
    killed: Instant,
    ns: &NetNs,
    clear: impl Fn() -> bool,
) -> Duration {
    let ok = eventually_blocking(Duration::from_secs(2), || clear() && !alive(guardian));
    let took = killed.elapsed();
    assert!(
        ok,
        "left behind 2 s after kill -9 (guardian alive: {})",
        alive(guardian)
    );
    let log = std::fs::read_to_string(run.state.join("guardian.log")).unwrap_or_default();
    let st = status(Some(ns), &run.state);
    assert!(faults_of(&st).is_empty(), "{st:#}\nguardian.log: {log}");
    eprintln!("cleared {took:?} after kill -9; guardian.log: {log}");
    took
}

#[test]
fn kill_9_after_preflight_leaves_nothing() {
    let scene = Scene::new();
    let target = Child::sleep();
    let mut run = scene.run(&format!(
        "  - {{ name: freeze, target: host, fault: {{ process.pause: {{ pid: {} }} }}, start: 2s, duration: 30s }}",
        target.pid()
    ));
    run.until("phase baseline");
    scene.kill_9_leaves_nothing(&mut run, || !target.is_stopped());
    assert!(!target.is_stopped());
}

#[test]
fn kill_9_mid_transparent_latency_leaves_no_redirect() {
    let scene = Scene::new();
    let (ns, addr) = (&scene.ns, scene.addr);
    let mut run = scene.run(&format!(
        "  - {{ name: slow, target: host, fault: {{ network.latency: {{ port: {}, delay: 50ms }} }}, duration: 30s }}",
        addr.port()
    ));
    run.until("injected slow");
    assert!(!nft_tables(ns).is_empty(), "the redirect is in place");
    scene.kill_9_leaves_nothing(&mut run, || nft_tables(ns).is_empty());
    // The port answers directly again, inside the namespace.
    let out = ns
        .command("python3")
        .args([
            "-c",
            &format!("import urllib.request;print(urllib.request.urlopen('http://{addr}/',timeout=2).status)"),
        ])
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200",
        "{out:?}"
    );
}

#[test]
fn kill_9_mid_network_loss_leaves_no_table() {
    let scene = Scene::new();
    let mut run = scene.run(
        "  - { name: lossy, target: host, fault: { network.loss: { probability: 50%, ports: [9] } }, duration: 30s }",
    );
    run.until("injected lossy");
    assert_eq!(nft_tables(&scene.ns).len(), 1, "the loss table is in place");
    scene.kill_9_leaves_nothing(&mut run, || nft_tables(&scene.ns).is_empty());
}

#[test]
fn kill_9_mid_process_pause_leaves_nothing_stopped() {
    let scene = Scene::new();
    let target = Child::sleep();
    let mut run = scene.run(&format!(
        "  - {{ name: freeze, target: host, fault: {{ process.pause: {{ pid: {} }} }}, duration: 30s }}",
        target.pid()
    ));
    run.until("injected freeze");
    assert!(target.is_stopped());
    scene.kill_9_leaves_nothing(&mut run, || !target.is_stopped());
}

/// `psql` against the test server: the command's success.
fn psql(sql: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .args([PG_URL, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .map_err(|e| format!("psql: {e} (scripts/setup.sh installs PostgreSQL)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn kill_9_mid_db_lock_on_postgres_leaves_no_lock() {
    // PostgreSQL listens on the host's loopback, so the run is on the host;
    // `status` looks from a namespace of its own.
    let scene = Scene::on_host();
    let table = format!("fl_guard_{}", std::process::id());
    psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, v text); INSERT INTO {table} VALUES (1, 'a')"
    ))
    .unwrap_or_else(|e| panic!("PostgreSQL at {PG_URL}: {e}; start it with ./scripts/setup.sh"));
    let write = || {
        psql(&format!(
            "SET lock_timeout = '200ms'; UPDATE {table} SET v = v WHERE id = 1"
        ))
    };
    let exp = experiment(
        scene.dir.path(),
        &scene.url,
        &format!(
            "  - {{ name: stall, target: host, fault: {{ db.lock: {{ url: \"${{env:FL_GUARD_PG_URL}}\", engine: postgres, table: {table}, mode: access_exclusive }} }}, duration: 30s }}"
        ),
    );
    // As the docs say a URL with a password is written: a reference the guardian
    // resolves from the environment it inherited (the journal masks inline ones).
    let mut run = Run::start_with_env(None, &exp, &scene.state(), ("FL_GUARD_PG_URL", PG_URL));
    run.until("injected stall");
    assert!(write().is_err(), "the lock blocks a writer");
    scene.kill_9_leaves_nothing(&mut run, || write().is_ok());
    let _ = psql(&format!("DROP TABLE IF EXISTS {table}"));
}

#[test]
fn kill_9_after_the_last_revert_leaves_nothing() {
    let scene = Scene::new();
    let mut run = scene.run(
        "  - { name: lossy, target: host, fault: { network.loss: { probability: 50%, ports: [9] } }, duration: 500ms }",
    );
    run.until("reverted ");
    scene.kill_9_leaves_nothing(&mut run, || nft_tables(&scene.ns).is_empty());
}

#[test]
#[allow(clippy::print_stderr)] // how long the halt took, for docs/operations.md
fn kill_9_of_run_and_guardian_then_halt_clears_everything() {
    let scene = Scene::new();
    let (ns, state) = (&scene.ns, scene.state());
    let target = Child::sleep();
    let mut run = scene.run(&format!(
        "  - {{ name: slow, target: host, fault: {{ network.latency: {{ port: {port}, delay: 50ms }} }}, duration: 30s }}
  - {{ name: lossy, target: host, fault: {{ network.loss: {{ probability: 50%, ports: [9] }} }}, duration: 30s }}
  - {{ name: freeze, target: host, fault: {{ process.pause: {{ pid: {pid} }} }}, duration: 30s }}",
        port = scene.addr.port(),
        pid = target.pid()
    ));
    run.until_all(&["injected slow", "injected lossy", "injected freeze"]);
    kill9(run.guardian());
    run.kill9();

    // Nobody is left to revert: status names each leftover, in place.
    let st = status(Some(ns), &state);
    let mut found = faults_of(&st);
    found.sort();
    assert_eq!(
        found,
        [
            ("network.latency".to_owned(), true),
            ("network.loss".to_owned(), true),
            ("process.pause".to_owned(), true),
        ],
        "{st:#}"
    );
    for f in st["faults"].as_array().expect("faults") {
        assert!(
            f["run"].as_str().is_some_and(|r| r.starts_with("run-")),
            "{f}"
        );
        assert!(f["step"].is_string() && f["expires_at"].is_string(), "{f}");
    }
    assert_eq!(nft_tables(ns).len(), 2);
    assert!(target.is_stopped());
    let text = faultline_in(Some(ns))
        .args(["status", "--state-dir"])
        .arg(&state)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&text.stdout);
    for step in ["step slow", "step lossy", "step freeze"] {
        assert!(text.contains(step), "{text}");
    }
    assert!(text.contains("LEFT"), "{text}");

    let halted = Instant::now();
    let out = faultline_in(Some(ns))
        .args(["halt", "--state-dir"])
        .arg(&state)
        .output()
        .expect("halt");
    eprintln!("halt took {:?}", halted.elapsed());
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing is left"),
        "{out:?}"
    );
    // Confirmed from outside too.
    assert!(nft_tables(ns).is_empty());
    assert!(!target.is_stopped());
    assert!(faults_of(&status(Some(ns), &state)).is_empty());
    // A second halt has nothing to do and says so.
    let again = faultline_in(Some(ns))
        .args(["halt", "--state-dir"])
        .arg(&state)
        .output()
        .expect("halt");
    assert_eq!(again.status.code(), Some(0), "{again:?}");
}

#[test]
fn halt_refuses_a_journal_a_live_run_owns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, addr) = Child::http_server();
    let target = Child::sleep();
    let exp = experiment(
        dir.path(),
        &format!("http://{addr}/"),
        &format!(
            "  - {{ name: freeze, target: host, fault: {{ process.pause: {{ pid: {} }} }}, duration: 30s }}",
            target.pid()
        ),
    );
    let state = dir.path().join("state");
    let mut run = Run::start(None, &exp, &state);
    run.until("injected freeze");
    let st = status(None, &state);
    assert_eq!(
        st["owner"].as_u64(),
        Some(u64::from(run.child.id())),
        "{st:#}"
    );
    let out = faultline_in(None)
        .args(["halt", "--state-dir"])
        .arg(&state)
        .output()
        .expect("halt");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "owned by a live faultline process (pid {})",
            run.child.id()
        )),
        "{out:?}"
    );
    assert!(target.is_stopped(), "a refused halt touches nothing");
}

#[test]
fn two_guardians_on_one_state_dir_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let guardian = || {
        Command::new(bin())
            .args(["guardian", "--state-dir"])
            .arg(dir.path())
            .args(["--watch", &std::process::id().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn guardian")
    };
    let mut first = guardian();
    let mut line = String::new();
    BufReader::new(first.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "ready");
    let second = guardian().wait_with_output().expect("second guardian");
    assert_eq!(second.status.code(), Some(2), "{second:?}");
    let said = String::from_utf8_lossy(&second.stdout);
    assert!(
        said.contains("in use by another faultline process")
            && said.contains(&format!("pid {}", first.id())),
        "{said}"
    );
    // A clean end: it exits at once, touching nothing.
    std::io::Write::write_all(&mut first.stdin.take().expect("stdin"), b"done\n").expect("write");
    let status = first.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert!(!dir.path().join("guardian.log").exists());
}

#[test]
fn a_guardian_watches_only_its_parent() {
    let out = Command::new(bin())
        .args(["guardian", "--state-dir", "/nonexistent", "--watch", "1"])
        .output()
        .expect("guardian");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("watches its own parent"),
        "{out:?}"
    );
}
