//! Benchmark of the fault proxy against direct loopback and HAProxy, in one run,
//! side by side: bulk throughput, 50-connection echo latency percentiles, the
//! delay a 100 ms latency toxic really adds, bulk throughput through that toxic,
//! and RSS per idle proxied connection. Not a test: it reports, it does not judge.
//!
//! Run: `bash bench/proxy/run.sh` (or `cargo bench -p faultline-proxy --bench proxy`).
//! faultline's proxy runs in a child process of this binary (like HAProxy, its
//! own process), driven only through its Toxiproxy-compatible API; the load
//! generator and the upstream servers run here.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BULK_BYTES: u64 = 512 << 20;
const BULK_ROUNDS: usize = 5;
const ECHO_ROUNDS: usize = 3;
const LAT_BULK_BYTES: u64 = 512 << 20;
const ECHO_CONNS: usize = 50;
const ECHO_SECS: u64 = 2;
const IDLE_CONNS: usize = 1000;
/// Round trips through the 100 ms latency toxic, and no-toxic ones after
/// 100 ms idle on each path: 100 each puts the p99 on the second-worst sample.
const TOXIC_RTTS: usize = 100;
const PACED_RTTS: usize = 100;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve-proxy") {
        serve_proxy_child();
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

/// The proxy under test, in its own process with its own 2-worker runtime.
fn serve_proxy_child() {
    // FAULTLINE_BENCH_PROXY_THREADS=1 runs the proxy on a current-thread runtime.
    let threads: usize = std::env::var("FAULTLINE_BENCH_PROXY_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("runtime")
    };
    rt.block_on(async {
        // FAULTLINE_BENCH_SPLICE=0 copies through user space instead (A/B).
        let splice = std::env::var("FAULTLINE_BENCH_SPLICE").map_or(true, |v| v != "0");
        // FAULTLINE_BENCH_BUF_KIB sets the chunk buffer size (A/B).
        let buffer_size = std::env::var("FAULTLINE_BENCH_BUF_KIB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(64 * 1024, |k| k * 1024);
        let server = faultline_proxy::ProxyServer::with_options(faultline_proxy::ServerOptions {
            splice,
            buffer_size,
            ..faultline_proxy::ServerOptions::default()
        })
        .expect("server");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
        println!("{}", listener.local_addr().expect("addr"));
        faultline_proxy::api::serve(listener, server, std::future::pending())
            .await
            .expect("api");
    });
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kernel counters an echo round moves: read before and after each round.
#[derive(Clone, Default)]
struct Cost {
    /// Busy time of the whole machine (/proc/stat), ns.
    machine_ns: u64,
    /// TCP segments sent by the whole machine (/proc/net/snmp OutSegs).
    segments: u64,
    /// The proxy process's (user, system) clock ticks.
    proxy_ticks: (u64, u64),
    /// The proxy's voluntary and involuntary context switches, all threads.
    proxy_switches: u64,
}

impl Cost {
    fn now(pid: Option<u32>) -> Cost {
        Cost {
            machine_ns: machine_busy_ns(),
            segments: tcp_out_segments(),
            proxy_ticks: pid.map_or((0, 0), user_system_ticks),
            proxy_switches: pid.map_or(0, context_switches),
        }
    }

    fn add_since(&mut self, start: &Cost, pid: Option<u32>) {
        let end = Cost::now(pid);
        self.machine_ns += end.machine_ns.saturating_sub(start.machine_ns);
        self.segments += end.segments.saturating_sub(start.segments);
        self.proxy_ticks.0 += end.proxy_ticks.0.saturating_sub(start.proxy_ticks.0);
        self.proxy_ticks.1 += end.proxy_ticks.1.saturating_sub(start.proxy_ticks.1);
        self.proxy_switches += end.proxy_switches.saturating_sub(start.proxy_switches);
    }
}

/// ns per clock tick of /proc/stat and /proc/PID/stat: USER_HZ, which the
/// kernel fixes at 100 in its user ABI on x86 and arm64 whatever CONFIG_HZ is.
const TICK_NS: u64 = 10_000_000;

fn machine_busy_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq: all but idle and iowait.
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum();
    busy * TICK_NS
}

fn tcp_out_segments() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn user_system_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line, the 12th and 13th after it.
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    match f[..] {
        [u, s] => (u, s),
        _ => (0, 0),
    }
}

/// The sum over all threads of `pid` of what `read` takes from one file of
/// /proc/PID/task/TID (a thread gone meanwhile counts nothing).
fn per_thread_sum(pid: u32, file: &str, read: impl Fn(&str) -> u64) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join(file)).ok())
        .map(|s| read(&s))
        .sum()
}

/// Voluntary and involuntary context switches of all threads of `pid`.
fn context_switches(pid: u32) -> u64 {
    per_thread_sum(pid, "status", |s| {
        s.lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    })
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time (ns) used so far by all threads of `pid`, from schedstat.
fn cpu_ns(pid: u32) -> u64 {
    per_thread_sum(pid, "schedstat", |s| {
        s.split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

/// Reads everything until EOF, then answers one byte.
async fn sink_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let _ = s.write_all(b"k").await;
            });
        }
    });
    addr
}

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// MB/s (10^6) of `bytes` written to `addr` until the sink acknowledged all.
async fn bulk(addr: SocketAddr, bytes: u64) -> f64 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await.unwrap();
        left -= n as u64;
    }
    s.shutdown().await.unwrap();
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.unwrap();
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

async fn bulk_median(addr: SocketAddr, bytes: u64, runs: usize) -> f64 {
    let mut v = Vec::new();
    for _ in 0..runs {
        v.push(bulk(addr, bytes).await);
    }
    v.sort_by(f64::total_cmp);
    v[runs / 2]
}

/// 50 connections doing 64-byte ping-pong for ECHO_SECS; latency histogram in us.
async fn echo_load(addr: SocketAddr) -> Histogram<u64> {
    let deadline = Instant::now() + Duration::from_secs(ECHO_SECS);
    let mut tasks = Vec::new();
    for _ in 0..ECHO_CONNS {
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let msg = [7u8; 64];
            let mut back = [0u8; 64];
            while Instant::now() < deadline {
                let t = Instant::now();
                s.write_all(&msg).await.unwrap();
                s.read_exact(&mut back).await.unwrap();
                h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
            }
            h
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for t in tasks {
        all.add(t.await.unwrap()).unwrap();
    }
    all
}

/// Round trips with `gap` of idle time before each: the no-toxic baseline at
/// the pace the latency toxic imposes (every hop wakes from idle, as it does
/// after a 100 ms hold), where back-to-back samples keep every thread hot.
async fn rtt_samples_paced(addr: SocketAddr, n: usize, gap: Duration) -> Vec<Duration> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut out = Vec::with_capacity(n);
    let mut back = [0u8; 16];
    for _ in 0..n {
        tokio::time::sleep(gap).await;
        let t = Instant::now();
        s.write_all(&[1u8; 16]).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        out.push(t.elapsed());
    }
    out
}

/// The nearest-rank quantile of sorted samples.
fn quantile<T: Copy>(sorted: &[T], q: f64) -> T {
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn rtt_samples(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut out = Vec::with_capacity(n);
    let mut back = [0u8; 16];
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&[1u8; 16]).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        out.push(t.elapsed());
    }
    out
}

/// RSS growth (KiB) of `pid` per connection over IDLE_CONNS idle connections.
async fn idle_rss_per_conn(addr: SocketAddr, pid: u32) -> f64 {
    // Warm up allocator and runtime so the delta is per-connection cost only.
    let mut warm = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"w").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        warm.push(s);
    }
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    let mut conns = Vec::with_capacity(IDLE_CONNS);
    for _ in 0..IDLE_CONNS {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // One round trip: the connection is fully set up on both sides.
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib(pid);
    drop(conns);
    (after.saturating_sub(before)) as f64 / IDLE_CONNS as f64
}

async fn api(api: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(api).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 2"),
        "API {method} {path} failed: {out}"
    );
    out
}

fn listen_of(resp: &str) -> SocketAddr {
    let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["listen"].as_str().unwrap().parse().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_haproxy(
    sink: SocketAddr,
    echo: SocketAddr,
) -> Option<(KillOnDrop, SocketAddr, SocketAddr)> {
    let (p1, p2) = (free_port(), free_port());
    let cfg = format!(
        "global\n  maxconn 8000\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
         listen bulk\n  bind 127.0.0.1:{p1}\n  server s1 {sink}\n\
         listen echo\n  bind 127.0.0.1:{p2}\n  server s1 {echo}\n"
    );
    let path = std::env::temp_dir().join(format!(
        "faultline-bench-haproxy-{}.cfg",
        std::process::id()
    ));
    std::fs::File::create(&path)
        .ok()?
        .write_all(cfg.as_bytes())
        .ok()?;
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let guard = KillOnDrop(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", p2)).is_ok() {
            return Some((
                guard,
                SocketAddr::from(([127, 0, 0, 1], p1)),
                SocketAddr::from(([127, 0, 0, 1], p2)),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// bench/proxy/sockmap in front of `echo`: it prints its listen address once
/// its BPF program is attached, or exits with the kernel's reason.
fn start_sockmap(bin: &std::ffi::OsStr, echo: SocketAddr) -> Option<(KillOnDrop, SocketAddr)> {
    let mut child = Command::new(bin)
        .arg(echo.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| eprintln!("sockmap forwarder {bin:?}: {e}"))
        .ok()?;
    let out = child.stdout.take()?;
    let guard = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).ok()?;
    Some((guard, line.trim().parse().ok()?))
}

/// A quantile of a histogram recorded in microseconds.
fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64
}

async fn run() {
    let sink = sink_server().await;
    let echo = echo_server().await;

    // faultline proxy in a child process, driven through its Toxiproxy API.
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .arg("--serve-proxy")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let fl_pid = child.id();
    let _fl = KillOnDrop(child);
    let api_addr: SocketAddr = line.trim().parse().unwrap();
    let fl_bulk = listen_of(
        &api(
            api_addr,
            "POST",
            "/proxies",
            &format!(r#"{{"name":"bulk","listen":"127.0.0.1:0","upstream":"{sink}"}}"#),
        )
        .await,
    );
    let fl_echo = listen_of(
        &api(
            api_addr,
            "POST",
            "/proxies",
            &format!(r#"{{"name":"echo","listen":"127.0.0.1:0","upstream":"{echo}"}}"#),
        )
        .await,
    );

    let haproxy = start_haproxy(sink, echo);
    if haproxy.is_none() {
        eprintln!("haproxy not found or failed to start: apt-get install -y haproxy");
    }

    let mut targets: Vec<(&str, SocketAddr, SocketAddr, Option<u32>)> = vec![
        ("direct loopback", sink, echo, None),
        ("faultline proxy", fl_bulk, fl_echo, Some(fl_pid)),
    ];
    if let Some((g, b, e)) = &haproxy {
        targets.push(("HAProxy 2.6 (Debian)", *b, *e, Some(g.0.id())));
    }

    // FAULTLINE_BENCH_ONLY=bulk|echo|latency|memory runs one section (profiling).
    let only = std::env::var("FAULTLINE_BENCH_ONLY").unwrap_or_default();
    let section = |name: &str| only.is_empty() || only == name;

    // Background load on a shared 2-core machine moves every figure, so the
    // paths are measured in interleaved rounds (A B C, A B C, ...) and each
    // path's figures come from all its rounds: a load spike hits all alike.
    if section("bulk") {
        println!(
            "## Bulk throughput ({} MiB per transfer, {BULK_ROUNDS} interleaved rounds, median)\n",
            BULK_BYTES >> 20
        );
        println!(
            "| path | MB/s (median) | min | max | ratio vs direct |\n|---|---:|---:|---:|---:|"
        );
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
        // CPU seconds per GB moved, all processes of the path together (this
        // process holds client and sink): less sensitive to other load than
        // wall-clock MB/s, and on 2 busy cores it bounds the throughput ratio.
        let me = std::process::id();
        let mut cpu: Vec<(u64, u64)> = vec![(0, 0); targets.len()];
        for _ in 0..BULK_ROUNDS {
            for (i, (_, b, _, pid)) in targets.iter().enumerate() {
                let (m0, p0) = (cpu_ns(me), pid.map_or(0, cpu_ns));
                runs[i].push(bulk(*b, BULK_BYTES).await);
                cpu[i].0 += cpu_ns(me) - m0;
                cpu[i].1 += pid.map_or(0, cpu_ns) - p0;
            }
        }
        let gb = (BULK_BYTES * BULK_ROUNDS as u64) as f64 / 1e9;
        let mut direct_bulk = 0.0;
        let mut direct_cpu = 0.0;
        let mut cpu_rows = String::new();
        for (i, (name, _, _, _)) in targets.iter().enumerate() {
            let v = &mut runs[i];
            v.sort_by(f64::total_cmp);
            let med = v[v.len() / 2];
            let total = (cpu[i].0 + cpu[i].1) as f64 / 1e9 / gb;
            let proxy = cpu[i].1 as f64 / 1e9 / gb;
            if i == 0 {
                direct_bulk = med;
                direct_cpu = total;
            }
            println!(
                "| {name} | {med:.0} | {:.0} | {:.0} | {:.2}x |",
                v[0],
                v[v.len() - 1],
                med / direct_bulk
            );
            cpu_rows.push_str(&format!(
                "| {name} | {total:.3} | {proxy:.3} | {:.2}x |\n",
                direct_cpu / total
            ));
        }
        println!(
            "\nCPU per GB (client + sink + proxy): \n\n| path | CPU s/GB total | of which proxy | direct/path (CPU-bound ratio) |\n|---|---:|---:|---:|\n{cpu_rows}"
        );
    }

    if section("echo") {
        println!(
            "\n## Echo, {ECHO_CONNS} concurrent connections, 64-byte ping-pong, {ECHO_ROUNDS} interleaved rounds of {ECHO_SECS} s\n"
        );
        println!(
            "| path | requests | p50 us | p99 us | p999 us | p50 ratio vs direct |\n|---|---:|---:|---:|---:|---:|"
        );
        let mut paths: Vec<(&str, SocketAddr, Option<u32>)> =
            targets.iter().map(|(n, _, e, p)| (*n, *e, *p)).collect();
        // FAULTLINE_BENCH_SOCKMAP_BIN (set by `FAULTLINE_BENCH_SOCKMAP=1
        // bench/proxy/run.sh`) adds a kernel-side forwarder, bench/proxy/sockmap
        // (needs root): the echo's cost when the proxy hop never enters user space.
        let sockmap = std::env::var_os("FAULTLINE_BENCH_SOCKMAP_BIN")
            .and_then(|bin| start_sockmap(&bin, echo));
        if let Some((g, a)) = &sockmap {
            paths.push(("BPF sockmap redirect (experiment)", *a, Some(g.0.id())));
        }
        let mut hists: Vec<Histogram<u64>> = paths
            .iter()
            .map(|_| Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap())
            .collect();
        let me = std::process::id();
        let mut cpu: Vec<(u64, u64)> = vec![(0, 0); paths.len()];
        let mut cost: Vec<Cost> = vec![Cost::default(); paths.len()];
        for _ in 0..ECHO_ROUNDS {
            for (i, (_, e, pid)) in paths.iter().enumerate() {
                let (m0, p0) = (cpu_ns(me), pid.map_or(0, cpu_ns));
                let c0 = Cost::now(*pid);
                let h = echo_load(*e).await;
                cost[i].add_since(&c0, *pid);
                cpu[i].0 += cpu_ns(me) - m0;
                cpu[i].1 += pid.map_or(0, cpu_ns) - p0;
                hists[i].add(h).unwrap();
            }
        }
        let mut direct_p50 = 0.0;
        let mut cpu_rows = String::new();
        let mut cost_rows = String::new();
        for (i, (name, _, _)) in paths.iter().enumerate() {
            let h = &hists[i];
            let p50 = us(h, 0.5);
            if i == 0 {
                direct_p50 = p50;
            }
            println!(
                "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.2}x |",
                h.len(),
                p50,
                us(h, 0.99),
                us(h, 0.999),
                p50 / direct_p50
            );
            let n = h.len().max(1) as f64;
            cpu_rows.push_str(&format!(
                "| {name} | {:.2} | {:.2} |\n",
                (cpu[i].0 + cpu[i].1) as f64 / 1e3 / n,
                cpu[i].1 as f64 / 1e3 / n
            ));
            let c = &cost[i];
            let kernel = match c.proxy_ticks {
                (0, 0) => "-".to_string(),
                (u, k) => format!("{:.0}%", 100.0 * k as f64 / (u + k) as f64),
            };
            let switches = paths[i].2.map_or("-".to_string(), |_| {
                format!("{:.3}", c.proxy_switches as f64 / n)
            });
            cost_rows.push_str(&format!(
                "| {name} | {:.2} | {kernel} | {:.2} | {switches} |\n",
                c.machine_ns as f64 / 1e3 / n,
                c.segments as f64 / n,
            ));
        }
        println!(
            "\nCPU per request (client + echo server + proxy):\n\n| path | CPU us/request total | of which proxy |\n|---|---:|---:|\n{cpu_rows}"
        );
        // What the proxy's CPU is spent on: the whole machine's busy time
        // (kworkers and softirq included, which no process is charged for),
        // the proxy's kernel share, TCP segments sent, and how often its
        // threads slept or were preempted.
        println!(
            "Where the CPU goes, per request:\n\n| path | machine CPU us | proxy CPU in kernel | TCP segments sent | proxy context switches |\n|---|---:|---:|---:|---:|\n{cost_rows}"
        );
        // One percentile can sit on either side of a two-mode distribution;
        // the whole shape and the mean (connections / throughput) tell more.
        const QS: [f64; 8] = [0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999];
        let head: Vec<String> = QS.iter().map(|q| format!("p{}", q * 100.0)).collect();
        println!(
            "Latency distribution, us:\n\n| path | {} | mean |\n|---|{}---:|",
            head.join(" | "),
            "---:|".repeat(QS.len())
        );
        for (i, (name, _, _)) in paths.iter().enumerate() {
            let h = &hists[i];
            let cells: Vec<String> = QS.iter().map(|q| format!("{:.0}", us(h, *q))).collect();
            println!("| {name} | {} | {:.0} |", cells.join(" | "), h.mean());
        }
    }

    if section("latency") {
        // 100 ms latency toxic on the echo proxy's downstream: the added delay.
        let mut hot = rtt_samples(fl_echo, 200).await;
        hot.sort();
        let base_med = quantile(&hot, 0.5);
        // The same round trip after 100 ms idle, on every path: a 100 ms hold
        // leaves every hop idle, so each wakes from idle as here. Its quantiles
        // are the no-toxic distribution at the toxic's pace.
        let gap = Duration::from_millis(100);
        let mut paced = Vec::new();
        for (name, _, e, _) in &targets {
            let mut v = rtt_samples_paced(*e, PACED_RTTS, gap).await;
            v.sort();
            paced.push((*name, v));
        }
        api(
            api_addr,
            "POST",
            "/proxies/echo/toxics",
            r#"{"name":"lat","type":"latency","stream":"downstream","attributes":{"latency":100}}"#,
        )
        .await;
        let mut slow = rtt_samples(fl_echo, TOXIC_RTTS).await;
        slow.sort();
        println!("\n## 100 ms latency toxic (faultline only; HAProxy has no such fault)\n");
        let idle: Vec<String> = paced
            .iter()
            .map(|(n, v)| {
                format!(
                    "{n} p50 {:.0} / p99 {:.0} us",
                    ms(quantile(v, 0.5)) * 1e3,
                    ms(quantile(v, 0.99)) * 1e3
                )
            })
            .collect();
        println!(
            "{TOXIC_RTTS} round trips through the toxic. No-toxic baselines: back to back, \
             median {:.0} us; after 100 ms idle ({PACED_RTTS} round trips each): {}.\n",
            base_med.as_secs_f64() * 1e6,
            idle.join(", "),
        );
        println!(
            "Each sample's excess over one baseline round trip (the toxic's 100 ms taken off):\n"
        );
        println!("| baseline | mean ms | p99 ms | min ms | max ms |\n|---|---:|---:|---:|---:|");
        let paced_med = quantile(&paced[1].1, 0.5);
        for (name, base) in [
            ("back to back, median", base_med),
            ("after 100 ms idle, median", paced_med),
        ] {
            // `slow` is sorted, so `added` is too: its quantile, first and
            // last below are the p99, min and max.
            let added: Vec<f64> = slow.iter().map(|d| ms(*d) - ms(base) - 100.0).collect();
            let mean = added.iter().sum::<f64>() / added.len() as f64;
            println!(
                "| {name} | {mean:+.3} | {:+.3} | {:+.3} | {:+.3} |",
                quantile(&added, 0.99),
                added[0],
                added[added.len() - 1]
            );
        }
        // What the toxic adds to each quantile of the path's own round trip at
        // the same pace: the path's idle wake-up tail is not the toxic's.
        let idle_fl = &paced[1].1;
        let mean_of = |v: &[Duration]| v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
        println!(
            "\nWhat the toxic adds to the proxy's own after-idle round trip, quantile by quantile \
             (toxic quantile - 100 ms - no-toxic quantile):\n\n\
             | mean ms | p50 ms | p99 ms |\n|---:|---:|---:|\n| {:+.3} | {:+.3} | {:+.3} |",
            mean_of(&slow) - 100.0 - mean_of(idle_fl),
            ms(quantile(&slow, 0.5)) - 100.0 - ms(quantile(idle_fl, 0.5)),
            ms(quantile(&slow, 0.99)) - 100.0 - ms(quantile(idle_fl, 0.99)),
        );
        // The tail is a handful of samples; show them rather than one number.
        let worst = |v: &[Duration], minus: f64| {
            let w: Vec<String> = v[v.len().saturating_sub(5)..]
                .iter()
                .map(|d| format!("{:.2}", ms(*d) - minus))
                .collect();
            w.join(" ")
        };
        println!(
            "\nThe 5 slowest, ms: through the toxic (100 ms taken off) {}; no toxic after idle {}.",
            worst(&slow, 100.0),
            worst(idle_fl, 0.0)
        );

        api(
            api_addr,
            "POST",
            "/proxies/bulk/toxics",
            r#"{"name":"lat","type":"latency","stream":"upstream","attributes":{"latency":100}}"#,
        )
        .await;
        let through = bulk_median(fl_bulk, LAT_BULK_BYTES, 3).await;
        println!(
            "\nBulk through the 100 ms toxic ({} MiB, median of 3, includes the first 100 ms): **{through:.0} MB/s**",
            LAT_BULK_BYTES >> 20
        );
        api(api_addr, "POST", "/reset", "").await;
    }

    if section("memory") {
        println!(
            "\n## Memory per idle proxied connection (RSS delta over {IDLE_CONNS} connections)\n"
        );
        println!("| proxy | KiB per connection |\n|---|---:|");
        for (name, _, e, pid) in &targets {
            if let Some(pid) = pid {
                let v = idle_rss_per_conn(*e, *pid).await;
                println!("| {name} | {v:.2} |");
            }
        }
    }
}
