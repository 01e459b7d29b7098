//! Every implemented fault kind through `assert_fault_compliance`, on real processes
//! and real nftables tables. Network faults target only a loopback address unique to
//! the test, so they run in parallel with anything else on the host.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use faultline_spec::FaultSpec;
use faultline_testkit::{Child, ComplianceCase, assert_fault_compliance, unique_loopback};
use serde_json::json;

fn spec(kind: &str, params: serde_json::Value) -> FaultSpec {
    FaultSpec::from_kind_and_params(kind, params).expect("valid params")
}

// === process.pause ===

/// Pauses a fresh `sleep` child chosen by `select`.
struct Pause {
    child: Option<Child>,
    select: fn(&Child) -> serde_json::Value,
    spawn: fn() -> Child,
}

impl ComplianceCase for Pause {
    fn spec(&mut self) -> FaultSpec {
        let child = (self.spawn)();
        let params = (self.select)(&child);
        self.child = Some(child);
        spec("process.pause", params)
    }
    async fn effect_visible(&mut self) -> bool {
        self.child.as_ref().is_some_and(Child::is_stopped)
    }
}

#[tokio::test]
async fn process_pause_by_pid() {
    let mut case = Pause {
        child: None,
        select: |c| json!({ "pid": c.pid() }),
        spawn: Child::sleep,
    };
    assert_fault_compliance("pause-pid", &mut case).await;
}

/// `sleep` run under a name no other process on the host has.
fn uniquely_named_sleep() -> Child {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!("faultline-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let name = format!(
        "fls{}_{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(&name);
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("sleep is installed");
    // A symlink, not a copy: execve names the process after the path it was given,
    // and a copied binary can fail with ETXTBSY while a fork on another test thread
    // still holds the copy's write descriptor.
    std::os::unix::fs::symlink(sleep, &path).expect("symlink sleep");
    let child = Child::spawn(std::process::Command::new(&path).arg("600"));
    // Until the exec completes, the child's comm is still this test thread's name.
    let comm =
        || std::fs::read_to_string(format!("/proc/{}/comm", child.pid())).unwrap_or_default();
    assert!(
        faultline_testkit::eventually_blocking(Duration::from_secs(5), || comm().trim_end()
            == name),
        "sleep never ran under its own name"
    );
    child
}

#[tokio::test]
async fn process_pause_by_name() {
    let mut case = Pause {
        child: None,
        select: |c| {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", c.pid())).expect("comm");
            json!({ "name": comm.trim_end() })
        },
        spawn: uniquely_named_sleep,
    };
    assert_fault_compliance("pause-name", &mut case).await;
}

/// A cgroup of its own (v2 or a v1 hierarchy, whichever is writable), removed on drop.
struct Cgroup(std::path::PathBuf);

impl Cgroup {
    fn new(tag: &str) -> Self {
        for base in [
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ] {
            let dir = std::path::Path::new(base)
                .join(format!("faultline-test-{tag}-{}", std::process::id()));
            if std::fs::create_dir(&dir).is_ok() {
                return Cgroup(dir);
            }
        }
        panic!("no writable cgroup hierarchy under /sys/fs/cgroup (tests run as root)");
    }
    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("join cgroup");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

struct PauseCgroup {
    cgroup: Cgroup,
    child: Option<Child>,
}

impl ComplianceCase for PauseCgroup {
    fn spec(&mut self) -> FaultSpec {
        // The previous child leaves the cgroup by dying first.
        self.child = None;
        let child = Child::sleep();
        self.cgroup.add(child.pid());
        self.child = Some(child);
        spec(
            "process.pause",
            json!({ "cgroup": self.cgroup.0.to_string_lossy() }),
        )
    }
    async fn effect_visible(&mut self) -> bool {
        self.child.as_ref().is_some_and(Child::is_stopped)
    }
}

#[tokio::test]
async fn process_pause_by_cgroup() {
    let mut case = PauseCgroup {
        cgroup: Cgroup::new("pause"),
        child: None,
    };
    assert_fault_compliance("pause-cgroup", &mut case).await;
    case.child = None;
}

// === process.kill ===

struct Kill {
    child: Option<Child>,
}

impl ComplianceCase for Kill {
    fn spec(&mut self) -> FaultSpec {
        let child = Child::sleep();
        let params = json!({ "pid": child.pid(), "signal": "SIGTERM" });
        self.child = Some(child);
        spec("process.kill", params)
    }
    async fn effect_visible(&mut self) -> bool {
        self.child.as_mut().is_some_and(Child::has_exited)
    }
}

#[tokio::test]
async fn process_kill_by_pid() {
    assert_fault_compliance("kill-pid", &mut Kill { child: None }).await;
}

// === network.loss, network.partition ===

/// A listener on a loopback address of the test's own; the effect is "a TCP connect
/// to it fails".
struct Blocked {
    kind: &'static str,
    params: fn(Ipv4Addr, u16) -> serde_json::Value,
    addr: SocketAddr,
    _listener: TcpListener,
}

impl Blocked {
    fn new(kind: &'static str, params: fn(Ipv4Addr, u16) -> serde_json::Value) -> Self {
        let listener =
            TcpListener::bind((unique_loopback(), 0)).expect("bind a unique loopback address");
        Self {
            kind,
            params,
            addr: listener.local_addr().expect("addr"),
            _listener: listener,
        }
    }
}

impl ComplianceCase for Blocked {
    fn spec(&mut self) -> FaultSpec {
        let SocketAddr::V4(a) = self.addr else {
            unreachable!("bound v4")
        };
        spec(self.kind, (self.params)(*a.ip(), a.port()))
    }
    async fn effect_visible(&mut self) -> bool {
        let connect = tokio::net::TcpStream::connect(self.addr);
        !matches!(
            tokio::time::timeout(Duration::from_millis(300), connect).await,
            Ok(Ok(_))
        )
    }
}

#[tokio::test]
async fn network_loss_of_every_packet_to_a_peer() {
    let mut case = Blocked::new(
        "network.loss",
        |ip, port| json!({ "probability": "100%", "peers": [ip.to_string()], "ports": [port], "direction": "egress" }),
    );
    assert_fault_compliance(&format!("loss-{}", case.addr.port()), &mut case).await;
}

#[tokio::test]
async fn network_partition_drop() {
    let mut case = Blocked::new(
        "network.partition",
        |ip, _| json!({ "peers": [ip.to_string()] }),
    );
    assert_fault_compliance(&format!("part-drop-{}", case.addr.port()), &mut case).await;
}

#[tokio::test]
async fn network_partition_reject_refuses_at_once() {
    let mut case = Blocked::new(
        "network.partition",
        |ip, port| json!({ "peers": [format!("{ip}/32")], "ports": [port], "action": "reject" }),
    );
    let id = format!("part-reject-{}", case.addr.port());
    let mut fault =
        faultline_faults::build(&id, &case.spec(), Duration::from_secs(30)).expect("build");
    fault.inject().await.expect("inject");
    let started = std::time::Instant::now();
    let res = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(case.addr),
    )
    .await;
    let took = started.elapsed();
    faultline_faults::revert_and_verify(fault.as_mut())
        .await
        .expect("revert");
    let err = res
        .expect("a rejected connect fails at once, not by timeout")
        .expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // A reset comes back at once; a drop would take the full timeout.
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_fault_compliance(&id, &mut case).await;
}

// === bad input ===

#[tokio::test]
async fn a_missing_pid_is_no_target_and_nothing_is_built() {
    let err = faultline_faults::build(
        "x",
        &spec("process.pause", json!({ "pid": i32::MAX })),
        Duration::from_secs(30),
    )
    .expect_err("no such pid");
    assert!(
        matches!(err, faultline_faults::InjectError::NoTarget { .. }),
        "{err}"
    );
}

// === across a network namespace ===

/// A listener on this side of a veth pair; the effect is "the namespace's TCP
/// connect to it fails" (run inside the namespace with bash's /dev/tcp).
struct AcrossNetns {
    ns: faultline_testkit::NetNs,
    port: u16,
    _listener: TcpListener,
}

impl ComplianceCase for AcrossNetns {
    fn spec(&mut self) -> FaultSpec {
        spec(
            "network.partition",
            json!({ "peers": [self.ns.ns_ip.to_string()], "action": "reject" }),
        )
    }
    async fn effect_visible(&mut self) -> bool {
        let script = format!("exec 3<>/dev/tcp/{}/{}", self.ns.host_ip, self.port);
        let ok = self
            .ns
            .command("timeout")
            .args(["1", "bash", "-c", &script])
            .stderr(std::process::Stdio::null())
            .status()
            .expect("ip netns exec");
        !ok.success()
    }
}

#[tokio::test]
async fn network_partition_cuts_a_namespace_off() {
    let ns = faultline_testkit::NetNs::new();
    let listener = TcpListener::bind((ns.host_ip, 0)).expect("bind the host side of the veth");
    let port = listener.local_addr().expect("addr").port();
    let mut case = AcrossNetns {
        ns,
        port,
        _listener: listener,
    };
    assert!(
        !case.effect_visible().await,
        "the namespace cannot reach the host before the fault"
    );
    let id = format!("netns-{}", case.ns.name);
    assert_fault_compliance(&id, &mut case).await;
}

// === db.lock (PostgreSQL started by scripts/setup.sh) ===

fn pg_url() -> String {
    std::env::var("FAULTLINE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://faultline:faultline@127.0.0.1:5432/postgres".to_owned())
}

async fn pg() -> tokio_postgres::Client {
    let (client, conn) = match tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => panic!(
            "PostgreSQL is not reachable ({e}); start it with `./scripts/setup.sh` (pg_ctlcluster 15 main start, faultline role)"
        ),
    };
    tokio::spawn(conn);
    client
}

/// A table of the test's own; the effect is "another session cannot lock it".
struct PgLock {
    table: String,
}

impl ComplianceCase for PgLock {
    fn spec(&mut self) -> FaultSpec {
        spec(
            "db.lock",
            json!({ "url": pg_url(), "table": self.table, "lock_timeout": "2s" }),
        )
    }
    async fn effect_visible(&mut self) -> bool {
        let c = pg().await;
        let probe = format!(
            "BEGIN; SET LOCAL lock_timeout = '100ms'; LOCK TABLE {} IN ACCESS SHARE MODE; ROLLBACK",
            self.table
        );
        c.batch_execute(&probe).await.is_err()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_lock_on_postgres() {
    let table = format!("fl_compliance_{}", std::process::id());
    let c = pg().await;
    c.batch_execute(&format!("CREATE TABLE IF NOT EXISTS {table} (id int)"))
        .await
        .expect("create table");
    let mut case = PgLock {
        table: table.clone(),
    };
    assert!(!case.effect_visible().await, "locked before the fault");
    assert_fault_compliance(&format!("pg-{table}"), &mut case).await;
    c.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .expect("drop table");
}

// === network.latency, network.drop (proxy mode) ===

/// An echo server on a loopback address of the test's own, and a free address for
/// the fault's proxy to listen on.
struct Proxied {
    kind: &'static str,
    params: fn(SocketAddr, SocketAddr) -> serde_json::Value,
    listen: SocketAddr,
    upstream: SocketAddr,
    /// What "the effect is visible" means for a round trip through the proxy.
    affected: fn(Option<Duration>) -> bool,
}

fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind((unique_loopback(), 0)).expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut r = conn.try_clone().expect("clone");
                let _ = std::io::copy(&mut r, &mut conn);
            });
        }
    });
    addr
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind((unique_loopback(), 0)).expect("bind");
    l.local_addr().expect("addr")
}

impl Proxied {
    fn new(
        kind: &'static str,
        params: fn(SocketAddr, SocketAddr) -> serde_json::Value,
        affected: fn(Option<Duration>) -> bool,
    ) -> Self {
        Self {
            kind,
            params,
            listen: free_addr(),
            upstream: echo_server(),
            affected,
        }
    }

    /// One byte through the proxy and back: how long it took, or `None` when the
    /// round trip failed (refused, reset, closed, or no answer within 2 s).
    async fn round_trip(&self) -> Option<Duration> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let started = std::time::Instant::now();
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(self.listen).await.ok()?;
            s.write_all(b"x").await.ok()?;
            let mut b = [0u8; 1];
            (s.read(&mut b).await.ok()? == 1).then_some(())
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Some(())) => Some(started.elapsed()),
            _ => None,
        }
    }
}

impl ComplianceCase for Proxied {
    fn spec(&mut self) -> FaultSpec {
        spec(self.kind, (self.params)(self.listen, self.upstream))
    }
    async fn effect_visible(&mut self) -> bool {
        (self.affected)(self.round_trip().await)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_latency_through_the_proxy() {
    let mut case = Proxied::new(
        "network.latency",
        |l, u| json!({ "listen": l.to_string(), "upstream": u.to_string(), "delay": "300ms", "direction": "downstream" }),
        // Delayed, but through; after revert nothing listens, so nothing is delayed.
        |rt| rt.is_some_and(|d| d >= Duration::from_millis(250)),
    );
    let id = format!("latency-{}", case.listen.port());
    assert_fault_compliance(&id, &mut case).await;
    assert!(
        case.round_trip().await.is_none(),
        "the proxy's listener outlived revert"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_drop_reset_through_the_proxy() {
    let mut case = Proxied::new(
        "network.drop",
        |l, u| json!({ "listen": l.to_string(), "upstream": u.to_string(), "action": "reset" }),
        |rt| rt.is_none(),
    );
    // Before the fault nothing listens on `listen` either, so "effect gone" cannot
    // be told from "never there" by a round trip: check the listener instead.
    assert!(case.round_trip().await.is_none());
    let id = format!("drop-{}", case.listen.port());
    let mut fault =
        faultline_faults::build(&id, &case.spec(), Duration::from_secs(30)).expect("build");
    fault.inject().await.expect("inject");
    assert!(fault.observe().await.active, "the proxy listens");
    assert!(
        case.round_trip().await.is_none(),
        "a reset connection carried data"
    );
    faultline_faults::revert_and_verify(fault.as_mut())
        .await
        .expect("revert");
    let refused = tokio::net::TcpStream::connect(case.listen).await;
    assert!(
        refused.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "listener left behind"
    );
}

// === network.bandwidth (proxy mode) ===

/// Echoes `n` bytes through the proxy: how long until all came back, or None.
async fn bulk_round_trip(listen: SocketAddr, n: usize) -> Option<Duration> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let started = std::time::Instant::now();
    let attempt = async {
        let s = tokio::net::TcpStream::connect(listen).await.ok()?;
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move { w.write_all(&vec![b'x'; n]).await.ok() });
        let mut buf = vec![0u8; n];
        r.read_exact(&mut buf).await.ok()?;
        writer.await.ok()??;
        Some(())
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Some(())) => Some(started.elapsed()),
        _ => None,
    }
}

struct Throttled(Proxied);

impl ComplianceCase for Throttled {
    fn spec(&mut self) -> FaultSpec {
        self.0.spec()
    }
    async fn effect_visible(&mut self) -> bool {
        // 5000 bytes at 10KB/s take at least ~0.5 s; unthrottled, milliseconds.
        // After revert nothing listens, so nothing is throttled.
        bulk_round_trip(self.0.listen, 5000)
            .await
            .is_some_and(|d| d >= Duration::from_millis(400))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_bandwidth_through_the_proxy() {
    let mut case = Throttled(Proxied::new(
        "network.bandwidth",
        |l, u| json!({ "listen": l.to_string(), "upstream": u.to_string(), "rate": "10KB/s", "direction": "downstream" }),
        |_| unreachable!("Throttled measures bulk transfers"),
    ));
    let direct = bulk_round_trip(case.0.upstream, 5000).await;
    assert!(
        direct.is_some_and(|d| d < Duration::from_millis(400)),
        "the echo service is not fast without the fault: {direct:?}"
    );
    let id = format!("bandwidth-{}", case.0.listen.port());
    assert_fault_compliance(&id, &mut case).await;
    assert!(
        case.0.round_trip().await.is_none(),
        "the proxy's listener outlived revert"
    );
}

// === transparent mode: a port captured by nftables, seen from a namespace ===

/// An echo service on every address of this side (port `port`), reached from
/// inside the namespace at the host end of the veth; the fault captures `port`.
struct Transparent {
    ns: faultline_testkit::NetNs,
    port: u16,
    params: serde_json::Value,
    kind: &'static str,
}

/// Spawns a thread echoing every connection of `listener` (blocking I/O: the
/// checks below block the test's runtime while they run).
fn echo_thread(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                use std::io::{Read as _, Write as _};
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

impl Transparent {
    /// One round trip from inside the namespace, in ms; None if it failed. Async:
    /// the fault's proxy runs on this test's runtime.
    async fn round_trip_ms(&self) -> Option<u64> {
        let script = format!(
            "exec 3<>/dev/tcp/{}/{} || exit 1; s=$(date +%s%N); echo ping >&3; read -t 3 line <&3 || exit 1; e=$(date +%s%N); echo $(( (e - s) / 1000000 ))",
            self.ns.host_ip, self.port
        );
        let mut cmd = self.ns.command("timeout");
        cmd.args(["5", "bash", "-c", &script])
            .stderr(std::process::Stdio::null());
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .expect("ip netns exec");
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }
}

impl ComplianceCase for Transparent {
    fn spec(&mut self) -> FaultSpec {
        spec(self.kind, self.params.clone())
    }
    async fn effect_visible(&mut self) -> bool {
        match (self.kind, self.round_trip_ms().await) {
            ("network.latency", Some(ms)) => ms >= 90,
            ("network.latency", None) => false,
            // network.drop with action reset: the round trip fails.
            (_, rtt) => rtt.is_none(),
        }
    }
}

async fn transparent_case(
    kind: &'static str,
    params: impl FnOnce(u16) -> serde_json::Value,
) -> Transparent {
    let ns = faultline_testkit::NetNs::new();
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind the service");
    let port = listener.local_addr().expect("addr").port();
    echo_thread(listener);
    let case = Transparent {
        ns,
        port,
        params: params(port),
        kind,
    };
    let before = case.round_trip_ms().await;
    assert!(
        before.is_some_and(|ms| ms < 90),
        "the service is not fast and reachable before the fault: {before:?}"
    );
    case
}

#[tokio::test]
async fn network_latency_transparent_mode_captures_a_port() {
    let mut case = transparent_case(
        "network.latency",
        |port| json!({ "port": port, "delay": "150ms", "direction": "downstream" }),
    )
    .await;
    let id = format!("tp-lat-{}", case.ns.name);
    assert_fault_compliance(&id, &mut case).await;
}

#[tokio::test]
async fn network_drop_transparent_mode_resets_and_cuts_existing_connections() {
    let mut case = transparent_case(
        "network.drop",
        |port| json!({ "port": port, "action": "reset", "kill_existing": true }),
    )
    .await;
    let id = format!("tp-drop-{}", case.ns.name);
    assert_fault_compliance(&id, &mut case).await;
}

// === http.error, http.delay: real HTTP requests through the gateway proxy ===

/// An HTTP/1.1 service answering `ok <method> <path>` with keep-alive, one thread
/// per connection (blocking: independent of the test's runtime).
fn http_service(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            std::thread::spawn(move || serve_http(conn));
        }
    });
}

fn serve_http(conn: std::net::TcpStream) {
    use std::io::{BufRead as _, Read as _, Write as _};
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = std::io::BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let (mut len, mut close) = (0usize, false);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            close |= h.starts_with("connection:") && h.contains("close");
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let route = path.split('?').next().unwrap_or_default();
        if route == "/sse" {
            if write_sse(&mut w, &path).is_err() || close {
                return;
            }
            continue;
        }
        if route == "/slow" {
            std::thread::sleep(Duration::from_millis(query(&path, "ms", 100)));
        }
        let text = format!("ok {method} {path}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if w.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// Query parameter `key` of `path` as a number.
fn query(path: &str, key: &str, default: u64) -> u64 {
    path.split_once('?')
        .map_or("", |(_, q)| q)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

/// `/sse?n=N&gap_ms=G`: N SSE events, one chunk each, G ms apart, then
/// `data: [DONE]`, as an OpenAI-style completion streams.
fn write_sse(w: &mut std::net::TcpStream, path: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    w.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )?;
    let (n, gap) = (query(path, "n", 5), query(path, "gap_ms", 10));
    for i in 0..=n {
        if i > 0 && gap > 0 {
            std::thread::sleep(Duration::from_millis(gap));
        }
        let event = if i < n {
            format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"t{i}\"}}}}]}}\n\n")
        } else {
            "data: [DONE]\n\n".to_owned()
        };
        w.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())?;
    }
    w.write_all(b"0\r\n\r\n")
}

/// One HTTP response as a client saw it.
#[derive(Debug)]
struct Reply {
    status: u16,
    retry_after: Option<String>,
    /// Every header, names in lower case.
    headers: Vec<(String, String)>,
    body: String,
    took: Duration,
}

/// Parses a raw HTTP/1.1 response (status line, headers, body).
fn parse_reply(raw: &str, took: Duration) -> Option<Reply> {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let retry_after = headers
        .iter()
        .find(|(k, _)| k == "retry-after")
        .map(|(_, v)| v.clone());
    Some(Reply {
        status,
        retry_after,
        headers,
        body: body.to_owned(),
        took,
    })
}

/// One request on a connection of its own (`connection: close`); None when the
/// connection was refused or no answer came within 3 s.
async fn http_request(addr: SocketAddr, method: &str, path: &str) -> Option<Reply> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let started = std::time::Instant::now();
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf)
    };
    let raw = tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()??;
    parse_reply(&String::from_utf8_lossy(&raw), started.elapsed())
}

/// An HTTP service on a loopback address of the test's own, and a free address
/// for the fault's gateway proxy.
struct Gateway {
    kind: &'static str,
    params: serde_json::Value,
    listen: SocketAddr,
    upstream: SocketAddr,
    /// The request that shows the effect, and what "affected" means for it.
    probe: (&'static str, &'static str),
    affected: fn(&Reply) -> bool,
}

impl Gateway {
    fn new(
        kind: &'static str,
        params: serde_json::Value,
        probe: (&'static str, &'static str),
        affected: fn(&Reply) -> bool,
    ) -> Self {
        let service = TcpListener::bind((unique_loopback(), 0)).expect("bind the service");
        let upstream = service.local_addr().expect("addr");
        http_service(service);
        let listen = free_addr();
        let mut params = params;
        params["listen"] = json!(listen.to_string());
        params["upstream"] = json!(upstream.to_string());
        Self {
            kind,
            params,
            listen,
            upstream,
            probe,
            affected,
        }
    }

    async fn send(&self, method: &str, path: &str) -> Option<Reply> {
        http_request(self.listen, method, path).await
    }

    fn spec_of(&self) -> FaultSpec {
        spec(self.kind, self.params.clone())
    }
}

impl ComplianceCase for Gateway {
    fn spec(&mut self) -> FaultSpec {
        spec(self.kind, self.params.clone())
    }
    async fn effect_visible(&mut self) -> bool {
        let (method, path) = self.probe;
        // After revert nothing listens on `listen`: no reply, no effect.
        self.send(method, path)
            .await
            .is_some_and(|r| (self.affected)(&r))
    }
}

fn figures(o: &faultline_faults::Observation, key: &str) -> u64 {
    o.figures[key]
        .as_u64()
        .unwrap_or_else(|| panic!("figure {key} in {}", o.figures))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_error_answers_429_with_retry_after_to_matching_requests() {
    let mut case = Gateway::new(
        "http.error",
        json!({ "status": 429, "retry_after": "2s", "path": "/v1", "method": "POST" }),
        ("POST", "/v1/complete"),
        |r| r.status == 429 && r.retry_after.as_deref() == Some("2"),
    );
    let before = http_request(case.upstream, "POST", "/v1/complete").await;
    assert_eq!(before.map(|r| r.status), Some(200), "service up before");
    let id = format!("http-error-{}", case.listen.port());
    assert_fault_compliance(&id, &mut case).await;

    // Only matching requests are answered; the rest reach the service.
    let mut fault =
        faultline_faults::build(&id, &case.spec(), Duration::from_secs(30)).expect("build");
    fault.inject().await.expect("inject");
    let hit = case.send("POST", "/v1/complete").await.expect("a reply");
    assert_eq!((hit.status, hit.retry_after.as_deref()), (429, Some("2")));
    for (method, path) in [("GET", "/v1/complete"), ("POST", "/health")] {
        let r = case.send(method, path).await.expect("a reply");
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, format!("ok {method} {path}").as_str()),
            "{method} {path} passes through"
        );
    }
    let seen = fault.observe().await;
    assert!(seen.active, "{seen:?}");
    assert_eq!(
        (
            figures(&seen, "requests"),
            figures(&seen, "matched"),
            figures(&seen, "errors")
        ),
        (3, 1, 1),
        "{seen:?}"
    );
    faultline_faults::revert_and_verify(fault.as_mut())
        .await
        .expect("revert");
    let refused = tokio::net::TcpStream::connect(case.listen).await;
    assert!(
        refused.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "the gateway proxy's listener outlived revert"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_error_probability_is_respected_per_request() {
    let case = Gateway::new(
        "http.error",
        json!({ "status": 503, "probability": "50%" }),
        ("GET", "/"),
        |r| r.status == 503,
    );
    let id = format!("http-error-p-{}", case.listen.port());
    let mut fault = faultline_faults::build(
        &id,
        &spec(case.kind, case.params.clone()),
        Duration::from_secs(30),
    )
    .expect("build");
    fault.inject().await.expect("inject");
    let (mut errors, mut passed) = (0, 0);
    for _ in 0..200 {
        match case.send("GET", "/p").await.map(|r| r.status) {
            Some(503) => errors += 1,
            Some(200) => passed += 1,
            other => panic!("unexpected reply {other:?}"),
        }
    }
    // Binomial(200, 0.5): 60..=140 is beyond 5 standard deviations.
    assert!((60..=140).contains(&errors), "{errors} of 200 at 50%");
    assert_eq!(errors + passed, 200);
    let seen = fault.observe().await;
    assert_eq!(figures(&seen, "errors"), errors, "{seen:?}");
    faultline_faults::revert_and_verify(fault.as_mut())
        .await
        .expect("revert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_delay_holds_matching_requests_back() {
    let mut case = Gateway::new(
        "http.delay",
        json!({ "delay": "300ms", "jitter": "50ms", "path": "/slow" }),
        ("GET", "/slow/q"),
        // Floors only: a loaded machine makes requests slower, never faster.
        |r| r.status == 200 && r.took >= Duration::from_millis(250),
    );
    let id = format!("http-delay-{}", case.listen.port());
    assert_fault_compliance(&id, &mut case).await;

    let mut fault =
        faultline_faults::build(&id, &case.spec(), Duration::from_secs(30)).expect("build");
    fault.inject().await.expect("inject");
    for _ in 0..3 {
        let r = case.send("GET", "/slow/q").await.expect("a reply");
        assert_eq!((r.status, r.body.as_str()), (200, "ok GET /slow/q"));
        assert!(r.took >= Duration::from_millis(250), "{:?}", r.took);
    }
    let r = case.send("GET", "/fast").await.expect("a reply");
    assert_eq!((r.status, r.body.as_str()), (200, "ok GET /fast"));
    // Which requests were held is counted by the proxy, not guessed from timing.
    let seen = fault.observe().await;
    assert_eq!(
        (figures(&seen, "requests"), figures(&seen, "delayed")),
        (4, 3),
        "{seen:?}"
    );
    faultline_faults::revert_and_verify(fault.as_mut())
        .await
        .expect("revert");
    assert!(
        case.send("GET", "/slow/q").await.is_none(),
        "listener left behind"
    );
}

/// An HTTP service on every address of this side (port `port`), reached with curl
/// from inside the namespace at the host end of the veth; the fault captures
/// `port`.
struct TransparentHttp {
    ns: faultline_testkit::NetNs,
    port: u16,
    /// The path `effect_visible` POSTs to.
    probe: &'static str,
    kind: &'static str,
    params: serde_json::Value,
    affected: fn(&Reply) -> bool,
}

impl TransparentHttp {
    async fn new(
        kind: &'static str,
        params: impl FnOnce(u16) -> serde_json::Value,
        affected: fn(&Reply) -> bool,
    ) -> Self {
        let ns = faultline_testkit::NetNs::new();
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind the service");
        let port = listener.local_addr().expect("addr").port();
        http_service(listener);
        let case = Self {
            ns,
            port,
            probe: "/v1/complete",
            kind,
            params: params(port),
            affected,
        };
        let before = case.curl("GET", "/before").await;
        assert!(
            before
                .as_ref()
                .is_some_and(|r| r.status == 200 && !affected(r)),
            "the service is not reachable and unaffected before the fault: {before:?}"
        );
        case
    }

    /// One request from inside the namespace, on a new connection (so it is
    /// redirected); None if curl got no answer.
    async fn curl(&self, method: &str, path: &str) -> Option<Reply> {
        let url = format!("http://{}:{}{path}", self.ns.host_ip, self.port);
        let mut cmd = self.ns.command("curl");
        cmd.args([
            "-s",
            "--noproxy",
            "*",
            "--max-time",
            "5",
            "-X",
            method,
            "-D",
            "-",
            "-w",
            "\r\n\r\n%{time_total}",
            &url,
        ])
        .stderr(std::process::Stdio::null());
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .expect("ip netns exec curl");
        if !out.status.success() {
            return None;
        }
        // Headers, the body, then the total time curl measured.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (rest, secs) = text.rsplit_once("\r\n\r\n")?;
        let took = Duration::from_secs_f64(secs.trim().parse().ok()?);
        parse_reply(rest, took)
    }
}

impl ComplianceCase for TransparentHttp {
    fn spec(&mut self) -> FaultSpec {
        spec(self.kind, self.params.clone())
    }
    async fn effect_visible(&mut self) -> bool {
        self.curl("POST", self.probe)
            .await
            .is_some_and(|r| (self.affected)(&r))
    }
}

#[tokio::test]
async fn http_error_transparent_mode_captures_a_port() {
    let mut case = TransparentHttp::new(
        "http.error",
        |port| json!({ "port": port, "status": 429, "path": "/v1", "method": "POST" }),
        // A 429 without retry_after still tells clients when to retry.
        |r| r.status == 429 && r.retry_after.as_deref() == Some("1"),
    )
    .await;
    let id = format!("tp-http-err-{}", case.ns.name);
    assert_fault_compliance(&id, &mut case).await;

    // While captured, requests the fault does not match reach the service through
    // the proxy (whose own upstream connection the redirect skips by mark).
    let mut fault =
        faultline_faults::build(&id, &case.spec(), Duration::from_secs(30)).expect("build");
    fault.inject().await.expect("inject");
    let r = case.curl("GET", "/v1/complete").await.expect("a reply");
    assert_eq!((r.status, r.body.as_str()), (200, "ok GET /v1/complete"));
    let r = case.curl("POST", "/v1/complete").await.expect("a reply");
    assert_eq!(r.status, 429);
    let seen = fault.observe().await;
    assert!(seen.active, "{seen:?}");
    assert_eq!(
        (figures(&seen, "requests"), figures(&seen, "errors")),
        (2, 1),
        "{seen:?}"
    );
    faultline_faults::revert_and_verify(fault.as_mut())
        .await
        .expect("revert");
    // Reverted: the same request reaches the service directly.
    let r = case.curl("POST", "/v1/complete").await.expect("a reply");
    assert_eq!((r.status, r.body.as_str()), (200, "ok POST /v1/complete"));
}

#[tokio::test]
async fn http_delay_transparent_mode_captures_a_port() {
    let mut case = TransparentHttp::new(
        "http.delay",
        |port| json!({ "port": port, "delay": "400ms" }),
        |r| r.status == 200 && r.took >= Duration::from_millis(350),
    )
    .await;
    let id = format!("tp-http-delay-{}", case.ns.name);
    assert_fault_compliance(&id, &mut case).await;
}

// === transparent revert: requests in flight drain instead of failing ===

/// Keep-alive HTTP clients inside the namespace: `threads` threads, each
/// sending sequential requests on one connection with a think time between
/// them, for `seconds`. Before each request a client checks its connection as
/// HTTP clients do: closed by the server (EOF) means reconnect; reset is
/// counted. Prints one JSON summary.
const KEEP_ALIVE_CLIENT: &str = r#"
import json, select, socket, sys, threading, time
host, port, threads, seconds, think = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
lock = threading.Lock()
out = {"ok": 0, "slow": 0, "fast_late": 0, "eof": 0, "reset": 0, "failures": []}
start = time.monotonic()
def count(k, v=1):
    with lock:
        out[k] += v
def connect():
    s = socket.create_connection((host, port), timeout=3)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s
def response(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise IOError("EOF before the response head")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status = int(head.split()[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            raise IOError("EOF in the body")
        body += chunk
    return status
def run(t):
    s = connect()
    n = 0
    while time.monotonic() - start < seconds:
        readable, _, _ = select.select([s], [], [], 0)
        if readable:
            try:
                peek = s.recv(1, socket.MSG_PEEK)
                count("eof") if peek == b"" else out["failures"].append("unexpected data")
            except ConnectionResetError:
                count("reset")
            s.close()
            s = connect()
        n += 1
        sent = time.monotonic()
        try:
            s.sendall(b"GET /t%d/%d HTTP/1.1\r\nhost: svc\r\ncontent-length: 0\r\n\r\n" % (t, n))
            status = response(s)
            took = time.monotonic() - sent
            if status != 200:
                raise IOError("status %d" % status)
            count("ok")
            if took >= 0.09:
                count("slow")
            elif sent - start > seconds * 0.6:
                count("fast_late")
        except Exception as e:
            with lock:
                out["failures"].append("request %d of thread %d at %.3f s: %r" % (n, t, sent - start, e))
            s.close()
            s = connect()
        time.sleep(think)
    s.close()
ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
[t.start() for t in ts]
[t.join() for t in ts]
print(json.dumps(out))
"#;

/// One request the service never answers: the client waits (up to 5 s) and
/// prints how the connection ended.
const BUSY_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"request")
try:
    print("eof" if s.recv(64) == b"" else "answered")
except ConnectionResetError:
    print("reset")
except Exception as e:
    print(repr(e))
"#;

/// A service that reads what it is sent and never answers.
fn silent_thread(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                use std::io::Read as _;
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
}

fn python_in(
    ns: &faultline_testkit::NetNs,
    script: &str,
    args: &[String],
) -> tokio::process::Child {
    let mut cmd = ns.command("python3");
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .expect("python3 inside the namespace")
}

async fn output_of(child: tokio::process::Child) -> String {
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("the client ends")
        .expect("client output");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Reverts the fault (timed) and verifies it from outside.
async fn timed_revert(fault: &mut dyn faultline_faults::Fault) -> Duration {
    let started = std::time::Instant::now();
    fault.revert().await.expect("revert");
    let took = started.elapsed();
    fault.verify_reverted().await.expect("verified reverted");
    took
}

/// Injects `kind` (a 100 ms delay in transparent mode) on an HTTP service,
/// runs keep-alive clients from the namespace through it, reverts while their
/// requests are in flight, and checks that none failed.
async fn keep_alive_clients_through_a_revert(kind: &str, params: fn(u16) -> serde_json::Value) {
    use faultline_faults::network::proxied::TRANSPARENT_DRAIN;
    let ns = faultline_testkit::NetNs::new();
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind the service");
    let port = listener.local_addr().expect("addr").port();
    http_service(listener);
    let id = format!("tp-drain-{}", ns.name);
    let mut fault =
        faultline_faults::build(&id, &spec(kind, params(port)), Duration::from_secs(30))
            .expect("build");
    fault.inject().await.expect("inject");

    // 3 keep-alive clients for 2.4 s, 150 ms between requests; the revert
    // comes 0.8 s in, while requests are in flight through the proxy.
    let args = [
        ns.host_ip.to_string(),
        port.to_string(),
        "3".into(),
        "2.4".into(),
        "0.15".into(),
    ];
    let client = python_in(&ns, KEEP_ALIVE_CLIENT, &args);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let took = timed_revert(fault.as_mut()).await;
    let summary: serde_json::Value =
        serde_json::from_str(&output_of(client).await).expect("client summary");

    assert_eq!(
        summary["failures"],
        json!([]),
        "no request failed: {summary}"
    );
    assert_eq!(summary["reset"], 0, "no connection reset: {summary}");
    assert!(
        summary["eof"].as_u64() >= Some(1),
        "idle connections closed with a FIN: {summary}"
    );
    assert!(
        summary["slow"].as_u64() >= Some(3),
        "the fault delayed requests before the revert: {summary}"
    );
    assert!(
        summary["fast_late"].as_u64() >= Some(3),
        "after the revert requests reach the service directly: {summary}"
    );
    assert!(
        took < TRANSPARENT_DRAIN + Duration::from_millis(500),
        "the revert is bounded by the drain: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_revert_lets_keep_alive_requests_in_flight_finish() {
    keep_alive_clients_through_a_revert(
        "network.latency",
        |port| json!({ "port": port, "delay": "100ms", "direction": "downstream" }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_delay_transparent_revert_lets_keep_alive_requests_in_flight_finish() {
    keep_alive_clients_through_a_revert(
        "http.delay",
        |port| json!({ "port": port, "delay": "100ms" }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_revert_resets_a_connection_busy_past_the_drain_bound() {
    use faultline_faults::network::proxied::TRANSPARENT_DRAIN;
    let ns = faultline_testkit::NetNs::new();
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind the service");
    let port = listener.local_addr().expect("addr").port();
    silent_thread(listener);
    let id = format!("tp-drain-busy-{}", ns.name);
    let spec = spec(
        "network.latency",
        json!({ "port": port, "delay": "20ms", "direction": "downstream" }),
    );
    let mut fault = faultline_faults::build(&id, &spec, Duration::from_secs(30)).expect("build");
    fault.inject().await.expect("inject");

    let args = [ns.host_ip.to_string(), port.to_string()];
    let client = python_in(&ns, BUSY_CLIENT, &args);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let took = timed_revert(fault.as_mut()).await;
    let how = output_of(client).await;

    assert_eq!(
        how, "reset",
        "a request still unanswered at the deadline is reset"
    );
    assert!(
        took >= TRANSPARENT_DRAIN - Duration::from_millis(50)
            && took < TRANSPARENT_DRAIN + Duration::from_millis(500),
        "the revert waits out the drain, and no longer: {took:?}"
    );
}

// === LLM gateway faults: rate limit, queue, and faults on streamed responses ===

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// SSE events with content, and whether `[DONE]` was one of them.
    fn events(&self) -> (usize, bool) {
        let done = self.body.contains("data: [DONE]");
        (
            self.body.matches("data: ").count() - usize::from(done),
            done,
        )
    }
}

fn limited_like_openai(r: &Reply) -> bool {
    r.status == 429
        && r.retry_after.is_some()
        && r.header("x-ratelimit-limit-requests") == Some("1")
        && r.header("x-ratelimit-remaining-requests") == Some("0")
        && r.header("x-ratelimit-reset-requests").is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_rate_limit_answers_429_with_openai_headers_past_the_bucket() {
    // One request a minute: the first of each fault passes, the next is limited.
    let mut case = Gateway::new(
        "http.rate_limit",
        json!({ "rate": "1/m", "burst": 1 }),
        ("POST", "/v1/chat/completions"),
        limited_like_openai,
    );
    let id = format!("http-rl-{}", case.listen.port());
    assert_fault_compliance(&id, &mut case).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_rate_limit_of_10_per_second_lets_10_a_second_through() {
    let case = Gateway::new(
        "http.rate_limit",
        json!({ "rate": "10/s", "path": "/v1" }),
        ("GET", "/v1/models"),
        |r| r.status == 429,
    );
    let id = format!("http-rl-rate-{}", case.listen.port());
    let mut fault = faultline_faults::build(
        &id,
        &spec(case.kind, case.params.clone()),
        Duration::from_secs(30),
    )
    .expect("build");
    fault.inject().await.expect("inject");
    // The burst is one second of the rate: 10 pass at once, then 429.
    let mut burst = 0;
    while case
        .send("GET", "/v1/models")
        .await
        .expect("a reply")
        .status
        == 200
    {
        burst += 1;
        assert!(burst <= 12, "the bucket never emptied");
    }
    assert!((10..=11).contains(&burst), "{burst}");
    // Offered 40/s for 2 s, 10 +- 1 a second get through; the rest are 429.
    let start = tokio::time::Instant::now();
    let (mut ok, mut limited) = (0u32, 0u32);
    for i in 0..80u32 {
        tokio::time::sleep_until(start + Duration::from_millis(25) * i).await;
        let r = case.send("GET", "/v1/models").await.expect("a reply");
        match r.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(r.header("x-ratelimit-limit-requests"), Some("10"));
                assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
                assert_eq!(r.retry_after.as_deref(), Some("1"));
            }
            s => panic!("status {s}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(
        (9.0..=11.0).contains(&(f64::from(ok) / secs)),
        "{ok} of 80 in {secs:.2} s"
    );
    // Other paths are not limited.
    assert_eq!(
        case.send("GET", "/health").await.expect("a reply").status,
        200
    );
    let seen = fault.observe().await;
    assert_eq!(
        figures(&seen, "rate_limited"),
        u64::from(limited) + 1,
        "{seen:?}"
    );
    faultline_faults::revert_and_verify(fault.as_mut())
        .await
        .expect("revert");
    assert!(
        case.send("GET", "/v1/models").await.is_none(),
        "listener left"
    );
}

#[tokio::test]
async fn http_rate_limit_transparent_mode_limits_each_client_address() {
    let mut case = TransparentHttp::new(
        "http.rate_limit",
        |port| json!({ "port": port, "rate": "1/m", "burst": 1, "key": "client_ip" }),
        limited_like_openai,
    )
    .await;
    let id = format!("tp-http-rl-{}", case.ns.name);
    assert_fault_compliance(&id, &mut case).await;
}

/// `http.queue` of one slot and no queue: of two slow requests at once, one is
/// turned away at once with 503.
struct QueueCase(Gateway);

impl ComplianceCase for QueueCase {
    fn spec(&mut self) -> FaultSpec {
        self.0.spec()
    }
    async fn effect_visible(&mut self) -> bool {
        let (a, b) = tokio::join!(
            self.0.send("GET", "/slow?ms=300"),
            self.0.send("GET", "/slow?ms=300")
        );
        let statuses = [a.map(|r| r.status), b.map(|r| r.status)];
        statuses.contains(&Some(503)) && statuses.contains(&Some(200))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_queue_turns_away_what_it_cannot_hold() {
    let mut case = QueueCase(Gateway::new(
        "http.queue",
        json!({ "concurrency": 1, "queue": 0, "timeout": "1s" }),
        ("GET", "/slow"),
        |r| r.status == 503,
    ));
    let id = format!("http-queue-{}", case.0.listen.port());
    assert_fault_compliance(&id, &mut case).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_queue_of_concurrency_2_delays_more_under_more_load_then_503() {
    let case = Gateway::new(
        "http.queue",
        json!({ "concurrency": 2, "timeout": "350ms" }),
        ("GET", "/slow"),
        |r| r.status == 503,
    );
    let id = format!("http-queue-load-{}", case.listen.port());
    let mut fault = faultline_faults::build(
        &id,
        &spec(case.kind, case.params.clone()),
        Duration::from_secs(30),
    )
    .expect("build");
    fault.inject().await.expect("inject");
    // 100 ms of service: 2, 4 and 6 at once queue for 0, 1 and 2 rounds.
    let mut means = Vec::new();
    for n in [2usize, 4, 6] {
        let replies = futures_join(&case, n).await;
        assert!(replies.iter().all(|r| r.status == 200), "{n}: {replies:?}");
        let total: Duration = replies.iter().map(|r| r.took).sum();
        means.push(total / n as u32);
    }
    assert!(means[0] < means[1] && means[1] < means[2], "{means:?}");
    // 10 at once: those that would wait 400 ms or more are answered 503 at the
    // queue timeout.
    let replies = futures_join(&case, 10).await;
    let rejected: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert!((2..=6).contains(&rejected.len()), "{replies:?}");
    assert!(
        rejected
            .iter()
            .all(|r| r.took >= Duration::from_millis(340)),
        "{replies:?}"
    );
    let seen = fault.observe().await;
    assert_eq!(
        figures(&seen, "queue_rejected"),
        rejected.len() as u64,
        "{seen:?}"
    );
    faultline_faults::revert_and_verify(fault.as_mut())
        .await
        .expect("revert");
    assert!(case.send("GET", "/slow").await.is_none(), "listener left");
}

/// `http.queue` in transparent mode: the same one slot and no queue, with the
/// port captured by nftables inside a namespace; two slow requests from inside
/// it at once, one of them turned away.
struct TransparentQueueCase(TransparentHttp);

impl ComplianceCase for TransparentQueueCase {
    fn spec(&mut self) -> FaultSpec {
        self.0.spec()
    }
    async fn effect_visible(&mut self) -> bool {
        let (a, b) = tokio::join!(
            self.0.curl("GET", "/slow?ms=300"),
            self.0.curl("GET", "/slow?ms=300")
        );
        let statuses = [a.map(|r| r.status), b.map(|r| r.status)];
        statuses.contains(&Some(503)) && statuses.contains(&Some(200))
    }
}

#[tokio::test]
async fn http_queue_transparent_mode_turns_away_what_it_cannot_hold() {
    let case = TransparentHttp::new(
        "http.queue",
        |port| json!({ "port": port, "concurrency": 1, "queue": 0, "timeout": "1s" }),
        |r| r.status == 503,
    )
    .await;
    let id = format!("tp-http-queue-{}", case.ns.name);
    let mut case = TransparentQueueCase(case);
    assert_fault_compliance(&id, &mut case).await;
}

/// `n` requests to `/slow?ms=100` at once.
async fn futures_join(case: &Gateway, n: usize) -> Vec<Reply> {
    let listen = case.listen;
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(async move { http_request(listen, "GET", "/slow?ms=100").await }))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task").expect("a reply"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_stream_stall_holds_a_stream_and_passes_other_responses_through() {
    let mut case = Gateway::new(
        "http.stream_stall",
        json!({ "after_events": 1, "hold": "400ms", "path": "/sse" }),
        ("GET", "/sse?n=3&gap_ms=0"),
        |r| r.status == 200 && r.events() == (3, true) && r.took >= Duration::from_millis(390),
    );
    let id = format!("http-stall-{}", case.listen.port());
    assert_fault_compliance(&id, &mut case).await;

    let mut fault =
        faultline_faults::build(&id, &case.spec(), Duration::from_secs(30)).expect("build");
    fault.inject().await.expect("inject");
    // A response with a length is not a stream: it passes unchanged, at once.
    let r = case.send("GET", "/sse-not/x").await.expect("a reply");
    assert_eq!(r.body, "ok GET /sse-not/x");
    assert!(r.took < Duration::from_millis(300), "{r:?}");
    let seen = fault.observe().await;
    assert_eq!(
        (figures(&seen, "streams"), figures(&seen, "stalled")),
        (0, 0),
        "{seen:?}"
    );
    faultline_faults::revert_and_verify(fault.as_mut())
        .await
        .expect("revert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_stream_stall_then_cut_ends_the_stream_without_done() {
    let mut case = Gateway::new(
        "http.stream_stall",
        json!({ "after_events": 2, "hold": "300ms", "then": "cut" }),
        ("GET", "/sse?n=5&gap_ms=0"),
        // Raw bytes up to the cut: two events, no [DONE], no final chunk.
        |r| {
            r.events() == (2, false)
                && !r.body.ends_with("0\r\n\r\n")
                && r.took >= Duration::from_millis(290)
        },
    );
    let id = format!("http-stall-cut-{}", case.listen.port());
    assert_fault_compliance(&id, &mut case).await;
}

#[tokio::test]
async fn http_stream_stall_transparent_mode_captures_a_port() {
    let mut case = TransparentHttp::new(
        "http.stream_stall",
        |port| json!({ "port": port, "hold": "500ms" }),
        |r| r.status == 200 && r.events() == (3, true) && r.took >= Duration::from_millis(490),
    )
    .await;
    case.probe = "/sse?n=3&gap_ms=0";
    let id = format!("tp-http-stall-{}", case.ns.name);
    assert_fault_compliance(&id, &mut case).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_stream_slow_paces_events() {
    let mut case = Gateway::new(
        "http.stream_slow",
        json!({ "rate": "10/s" }),
        ("GET", "/sse?n=5&gap_ms=0"),
        // 6 events (with [DONE]) a tenth of a second apart: 500 ms at least.
        |r| r.events() == (5, true) && r.took >= Duration::from_millis(490),
    );
    let id = format!("http-slow-{}", case.listen.port());
    assert_fault_compliance(&id, &mut case).await;
}

#[tokio::test]
async fn http_stream_slow_transparent_mode_paces_events() {
    let mut case = TransparentHttp::new(
        "http.stream_slow",
        |port| json!({ "port": port, "rate": "10/s" }),
        // As in proxy mode: 6 events a tenth of a second apart, 500 ms at least,
        // none lost, the stream still ends with [DONE].
        |r| r.status == 200 && r.events() == (5, true) && r.took >= Duration::from_millis(490),
    )
    .await;
    case.probe = "/sse?n=5&gap_ms=0";
    let id = format!("tp-http-slow-{}", case.ns.name);
    assert_fault_compliance(&id, &mut case).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_stream_truncate_ends_after_n_events() {
    let mut case = Gateway::new(
        "http.stream_truncate",
        json!({ "after_events": 2 }),
        ("GET", "/sse?n=6&gap_ms=0"),
        |r| r.status == 200 && r.events() == (2, false) && r.body.ends_with("0\r\n\r\n"),
    );
    let id = format!("http-trunc-{}", case.listen.port());
    assert_fault_compliance(&id, &mut case).await;
}

#[tokio::test]
async fn http_stream_truncate_transparent_mode_with_done() {
    let mut case = TransparentHttp::new(
        "http.stream_truncate",
        |port| json!({ "port": port, "after_events": 2, "done": true }),
        |r| r.status == 200 && r.events() == (2, true),
    )
    .await;
    case.probe = "/sse?n=6&gap_ms=0";
    let id = format!("tp-http-trunc-{}", case.ns.name);
    assert_fault_compliance(&id, &mut case).await;
}

// === network.skew: one hot backend, counted at the backends ===

/// Three backends and a stats port in one python process inside the
/// namespace: each backend counts its connections, answers its own port and
/// closes; the stats port answers the counts as JSON.
const BACKENDS: &str = r#"
import json, socket, sys, threading
host = sys.argv[1]
socks = [socket.create_server((host, 0)) for _ in range(4)]
ports = [s.getsockname()[1] for s in socks]
counts = {str(p): 0 for p in ports[:3]}
lock = threading.Lock()
def serve(s, port):
    while True:
        c, _ = s.accept()
        with lock:
            counts[str(port)] += 1
        c.sendall(b"%d\n" % port)
        c.close()
def stats(s):
    while True:
        c, _ = s.accept()
        with lock:
            body = json.dumps(counts)
        c.sendall(body.encode() + b"\n")
        c.close()
for s, p in zip(socks[:3], ports[:3]):
    threading.Thread(target=serve, args=(s, p), daemon=True).start()
threading.Thread(target=stats, args=(socks[3],), daemon=True).start()
print(json.dumps(ports), flush=True)
threading.Event().wait()
"#;

/// A round-robin balancer on this side of the veth in front of the three
/// backends in the namespace; the fault skews the balancer's port.
struct Skew {
    // Dropped before the namespace it runs in.
    _backends: tokio::process::Child,
    ns: faultline_testkit::NetNs,
    backends: [u16; 3],
    stats: u16,
    balancer: SocketAddr,
    share: &'static str,
}

impl Skew {
    async fn new(share: &'static str) -> Self {
        use tokio::io::AsyncBufReadExt as _;
        let ns = faultline_testkit::NetNs::new();
        let mut child = python_in(&ns, BACKENDS, &[ns.ns_ip.to_string()]);
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("the backends start")
        .expect("read their ports");
        let ports: Vec<u16> = serde_json::from_str(&line).expect("ports as JSON");
        let backends = [ports[0], ports[1], ports[2]];
        let listener = TcpListener::bind((ns.host_ip, 0)).expect("bind the balancer");
        let balancer = listener.local_addr().expect("addr");
        let ns_ip = ns.ns_ip;
        std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            for (i, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { break };
                let to = SocketAddr::from((ns_ip, backends[i % 3]));
                let mut reply = Vec::new();
                if let Ok(mut b) = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
                {
                    let _ = b.read_to_end(&mut reply);
                }
                let _ = conn.write_all(&reply);
            }
        });
        Self {
            _backends: child,
            ns,
            backends,
            stats: ports[3],
            balancer,
            share,
        }
    }

    /// Connections each backend has answered, asked of the backends.
    async fn counts(&self) -> [u64; 3] {
        use tokio::io::AsyncReadExt as _;
        let mut s = tokio::net::TcpStream::connect((self.ns.ns_ip, self.stats))
            .await
            .expect("the backends' stats");
        let mut text = String::new();
        s.read_to_string(&mut text).await.expect("stats");
        let v: serde_json::Value = serde_json::from_str(&text).expect("stats JSON");
        self.backends
            .map(|p| v[p.to_string()].as_u64().expect("a count per backend"))
    }

    /// `n` new connections through the balancer's port, one after the other;
    /// how many each backend answered.
    async fn spread(&self, n: usize) -> [u64; 3] {
        use tokio::io::AsyncReadExt as _;
        let before = self.counts().await;
        for _ in 0..n {
            let mut s = tokio::time::timeout(
                Duration::from_secs(3),
                tokio::net::TcpStream::connect(self.balancer),
            )
            .await
            .expect("connect in time")
            .expect("connect");
            let mut reply = String::new();
            tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut reply))
                .await
                .expect("a reply in time")
                .expect("a reply");
            assert!(!reply.trim().is_empty(), "a backend answered");
        }
        let after = self.counts().await;
        [0, 1, 2].map(|i| after[i] - before[i])
    }
}

impl ComplianceCase for Skew {
    fn spec(&mut self) -> FaultSpec {
        spec(
            "network.skew",
            json!({
                "port": self.balancer.port(),
                "to": format!("{}:{}", self.ns.ns_ip, self.backends[1]),
                "share": self.share,
            }),
        )
    }
    async fn effect_visible(&mut self) -> bool {
        self.spread(12).await == [0, 12, 0]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_skew_of_100_percent_sends_every_new_connection_to_one_backend() {
    let mut case = Skew::new("100%").await;
    assert_eq!(case.spread(12).await, [4, 4, 4], "round robin before");
    let id = format!("skew-{}", case.ns.name);
    assert_fault_compliance(&id, &mut case).await;
    // The revert restored the balancer's spread.
    assert_eq!(case.spread(12).await, [4, 4, 4], "round robin after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_skew_of_a_share_leaves_the_rest_to_the_balancer() {
    let case = Skew::new("50%").await;
    let id = format!("skew-half-{}", case.ns.name);
    let mut fault = faultline_faults::build(
        &id,
        &spec(
            "network.skew",
            json!({
                "port": case.balancer.port(),
                "to": format!("{}:{}", case.ns.ns_ip, case.backends[0]),
                "share": case.share,
            }),
        ),
        Duration::from_secs(30),
    )
    .expect("build");
    fault.inject().await.expect("inject");
    let got = case.spread(90).await;
    faultline_faults::revert_and_verify(fault.as_mut())
        .await
        .expect("revert");
    // The hot one gets the skewed S ~ Binomial(90, 0.5) and a third of the
    // rest: 30 + 2S/3, 60 expected; 45..=85 is S in 23..=82, beyond 4.5
    // standard deviations.
    assert_eq!(got.iter().sum::<u64>(), 90);
    assert!((45..=85).contains(&got[0]), "{got:?}");
    assert!(
        got[1] >= 3 && got[2] >= 3,
        "the balancer still spreads: {got:?}"
    );
    assert_eq!(case.spread(12).await, [4, 4, 4], "round robin after");
}

/// GET `path` from `addr` on a connection of its own; when each SSE event's end
/// arrived, from the request.
async fn sse_event_times(addr: SocketAddr, path: &str) -> Vec<Duration> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let start = std::time::Instant::now();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: g\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let (mut seen, mut times, mut buf) = (String::new(), Vec::new(), [0u8; 4096]);
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("no stall past 5 s")
            .expect("read");
        if n == 0 {
            return times;
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        let ends = seen.matches("\n\n").count();
        times.resize(ends, start.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_stream_stall_of_2s_shows_as_one_2s_gap_between_events() {
    let case = Gateway::new(
        "http.stream_stall",
        json!({ "after_events": 2, "hold": "2s", "then": "continue" }),
        ("GET", "/sse"),
        |_| true,
    );
    let id = format!("http-stall-2s-{}", case.listen.port());
    let mut fault =
        faultline_faults::build(&id, &case.spec_of(), Duration::from_secs(30)).expect("build");
    fault.inject().await.expect("inject");
    let times = sse_event_times(case.listen, "/sse?n=5&gap_ms=20").await;
    // Five events and [DONE]; the headers' blank line is not an event end.
    assert_eq!(times.len(), 6, "{times:?}");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[1] >= Duration::from_millis(1990) && gaps[1] < Duration::from_millis(2600),
        "{gaps:?}"
    );
    assert!(
        gaps.iter()
            .enumerate()
            .all(|(i, g)| i == 1 || *g < Duration::from_millis(500)),
        "{gaps:?}"
    );
    faultline_faults::revert_and_verify(fault.as_mut())
        .await
        .expect("revert");
    // Reverted: the same stream straight from the service has no gap.
    let times = sse_event_times(case.upstream, "/sse?n=5&gap_ms=20").await;
    let widest = times.windows(2).map(|w| w[1] - w[0]).max().expect("gaps");
    assert!(widest < Duration::from_millis(500), "{times:?}");
}
