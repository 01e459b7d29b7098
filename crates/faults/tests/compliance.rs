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

/// A copy of `sleep` under a name no other process on the host has.
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
    std::fs::copy(sleep, &path).expect("copy sleep");
    let child = Child::spawn(std::process::Command::new(&path).arg("600"));
    // Until the exec completes, the child's comm is still this test thread's name.
    let comm =
        || std::fs::read_to_string(format!("/proc/{}/comm", child.pid())).unwrap_or_default();
    assert!(
        faultline_testkit::eventually_blocking(Duration::from_secs(5), || comm().trim_end()
            == name),
        "the copy of sleep never ran under its own name"
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
