//! The HTTP probe's maximum open-loop rate against a trivial local server, side by
//! side with oha on the same server in the same run (bench/probe/run.sh).
//!
//! 1. Finds the highest fixed rate the probe sustains (each rate tried up to three
//!    times, since the machine is shared): every request answered
//!    successfully, none refused as "client saturated", at least 99% of the rate
//!    achieved, and p99 under 50 ms (past capacity an open-loop schedule queues and
//!    the tail climbs to the timeout).
//! 2. Finds oha's highest sustained rate the same way (`-q R --latency-correction`,
//!    the same criteria on its own figures), and runs it closed-loop (`-c 50`, no
//!    rate limit) for its raw maximum throughput.
//! 3. Runs both at one equal fixed rate and compares p50/p99: the probe from the
//!    schedule (its SLO figure) and from the send (its service time, same run);
//!    oha with `-q R --latency-correction` (timed from its timer tick) and `-q R`
//!    (from the send).
//!
//! Prints a Markdown table to stdout. Arguments: `--oha PATH` (skip oha without it),
//! `--seconds N` per trial (default 3), `--equal-rate R` (default: 80% of the lower
//! of the two maxima, rounded down to 1000).

#![allow(clippy::print_stdout, clippy::print_stderr)] // a bench reports by printing

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use faultline_probe::Recorder;
use faultline_probe::http::{HttpLoad, Limits, LoadReport};
use faultline_probe::window::{Clock, WindowStats};
use faultline_spec::probe::HttpProbe;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Past capacity an open-loop schedule queues and p99 climbs to the timeout; under
/// this, the rate is carried. Generous, because the machine is shared.
const P99_LIMIT_MS: u64 = 50;

struct Args {
    oha: Option<String>,
    seconds: u64,
    equal_rate: Option<u64>,
}

fn args() -> Args {
    let mut a = Args {
        oha: None,
        seconds: 3,
        equal_rate: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--oha" => a.oha = it.next(),
            "--seconds" => a.seconds = it.next().and_then(|s| s.parse().ok()).unwrap_or(3),
            "--equal-rate" => a.equal_rate = it.next().and_then(|s| s.parse().ok()),
            _ => {} // `cargo bench` passes `--bench`
        }
    }
    a
}

/// The trivial server: `200 ok` to everything, keep-alive, on its own runtime.
fn serve() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr"))
                .expect("send addr");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    rx.recv().expect("server address")
}

struct Trial {
    rate: u64,
    report: LoadReport,
    stats: WindowStats,
    achieved: f64,
}

impl Trial {
    fn sustained(&self) -> bool {
        let total = self.stats.total();
        total > 0
            && self.stats.successes == total
            && self.report.saturated == 0
            && self.achieved >= self.rate as f64 * 0.99
            && self
                .stats
                .quantile(0.99)
                .is_some_and(|p| p < Duration::from_millis(P99_LIMIT_MS))
    }

    fn ms(&self, q: f64) -> f64 {
        self.stats
            .quantile(q)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }

    /// Service time (from the send, not the schedule).
    fn service_ms(&self, q: f64) -> f64 {
        if self.stats.service.is_empty() {
            return f64::NAN;
        }
        self.stats.service.value_at_quantile(q) as f64 / 1e3
    }
}

fn probe_at(rt: &tokio::runtime::Runtime, addr: SocketAddr, rate: u64, seconds: u64) -> Trial {
    let spec: HttpProbe = serde_yaml::from_str(&format!(
        "{{ url: 'http://{addr}/', rate: {rate}/s, timeout: 2s }}"
    ))
    .expect("spec");
    let load = HttpLoad::new(&spec).expect("load");
    let rec = Recorder::new(Duration::from_secs(1));
    let t0 = Instant::now();
    let report = rt.block_on(load.run(
        Clock::start(),
        rec.clone(),
        Limits {
            duration: Some(Duration::from_secs(seconds)),
            ..Limits::default()
        },
    ));
    let elapsed = t0.elapsed().as_secs_f64();
    let s = rec.snapshot();
    let stats = s.window(Duration::ZERO, s.end());
    let achieved = stats.successes as f64 / elapsed;
    let t = Trial {
        rate,
        report,
        stats,
        achieved,
    };
    eprintln!(
        "probe {rate:>6}/s: {:>8.0} ok/s, saturated {}, p50 {:.3} ms, p99 {:.3} ms, {} connections -> {}",
        t.achieved,
        t.report.saturated,
        t.ms(0.5),
        t.ms(0.99),
        t.report.connections,
        if t.sustained() {
            "sustained"
        } else {
            "not sustained"
        }
    );
    t
}

/// A rate is tried up to this many times: the machine is shared, and one stall of
/// another process must not end the search.
const TRIES: usize = 3;

/// Highest rate at which `trial` reports sustained: doubling from 5k, then
/// bisecting to 1k; each rate tried up to `TRIES` times.
fn search<T>(mut trial: impl FnMut(u64) -> (bool, T)) -> Option<(u64, T)> {
    let mut attempt = |rate: u64| {
        let mut last = trial(rate);
        for _ in 1..TRIES {
            if last.0 {
                break;
            }
            last = trial(rate);
        }
        last
    };
    let mut best: Option<(u64, T)> = None;
    let mut rate = 5_000;
    let mut ceiling = None;
    while rate <= 320_000 {
        match attempt(rate) {
            (true, t) => {
                best = Some((rate, t));
                rate *= 2;
            }
            (false, _) => {
                ceiling = Some(rate);
                break;
            }
        }
    }
    let (mut lo, mut hi) = (best.as_ref().map_or(0, |b| b.0), ceiling?);
    while hi - lo > 1_000 {
        let mid = (lo + hi) / 2 / 1_000 * 1_000;
        if mid <= lo {
            break;
        }
        match attempt(mid) {
            (true, t) => {
                lo = mid;
                best = Some((mid, t));
            }
            (false, _) => hi = mid,
        }
    }
    best
}

fn probe_max(rt: &tokio::runtime::Runtime, addr: SocketAddr, seconds: u64) -> Option<Trial> {
    search(|rate| {
        let t = probe_at(rt, addr, rate, seconds);
        (t.sustained(), t)
    })
    .map(|(_, t)| t)
}

fn oha_max_open(path: &str, addr: SocketAddr, seconds: u64) -> Option<(u64, OhaRun)> {
    search(|rate| match oha(path, addr, seconds, Some(rate), true) {
        Some(o) => (o.sustained(rate), Some(o)),
        None => (false, None),
    })
    .and_then(|(rate, o)| Some((rate, o?)))
}

struct OhaRun {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    ok: u64,
    total: u64,
}

impl OhaRun {
    /// The probe's criteria, with oha's own figures (p99 from its timer tick).
    fn sustained(&self, rate: u64) -> bool {
        self.total > 0
            && self.ok == self.total
            && self.rps >= rate as f64 * 0.99
            && self.p99_ms < P99_LIMIT_MS as f64
    }
}

fn oha(
    path: &str,
    addr: SocketAddr,
    seconds: u64,
    rate: Option<u64>,
    correction: bool,
) -> Option<OhaRun> {
    let mut cmd = Command::new(path);
    // -w: requests in flight at the deadline are awaited, not counted as errors
    // (the probe awaits its own too).
    cmd.args(["--no-tui", "-w", "--output-format", "json", "-z"])
        .arg(format!("{seconds}s"))
        .args(["-c", "50"]);
    if let Some(r) = rate {
        cmd.args(["-q", &r.to_string()]);
        if correction {
            cmd.arg("--latency-correction");
        }
    }
    cmd.arg(format!("http://{addr}/"));
    let out = cmd.output().ok()?;
    if !out.status.success() {
        eprintln!("oha failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let pct = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1e3;
    let codes = &v["statusCodeDistribution"];
    let ok = codes["200"].as_u64().unwrap_or(0);
    let total = codes
        .as_object()
        .map_or(0, |m| m.values().filter_map(|c| c.as_u64()).sum::<u64>())
        + v["errorDistribution"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|c| c.as_u64()).sum::<u64>());
    let run = OhaRun {
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN),
        p50_ms: pct("p50"),
        p99_ms: pct("p99"),
        ok,
        total,
    };
    eprintln!(
        "oha {}{}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {}/{} ok",
        rate.map_or("max".to_owned(), |r| format!("{r}/s")),
        if correction { " corrected" } else { "" },
        run.rps,
        run.p50_ms,
        run.p99_ms,
        run.ok,
        run.total
    );
    Some(run)
}

fn main() {
    let a = args();
    let addr = serve();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("probe runtime");
    // Warm the server and the connections up.
    probe_at(&rt, addr, 1_000, 1);

    let best = probe_max(&rt, addr, a.seconds);
    let oha_max = a
        .oha
        .as_deref()
        .and_then(|p| oha(p, addr, a.seconds, None, false));
    let oha_open = a
        .oha
        .as_deref()
        .and_then(|p| oha_max_open(p, addr, a.seconds));

    let probe_max_rate = best.as_ref().map_or(0.0, |t| t.achieved);
    let lower = oha_open
        .as_ref()
        .map_or(probe_max_rate, |(_, o)| o.rps.min(probe_max_rate));
    let equal = a
        .equal_rate
        .unwrap_or(((lower * 0.8) as u64 / 1_000 * 1_000).max(1_000));
    let probe_eq = probe_at(&rt, addr, equal, a.seconds);
    let oha_eq = a
        .oha
        .as_deref()
        .and_then(|p| oha(p, addr, a.seconds, Some(equal), true));
    let oha_eq_plain = a
        .oha
        .as_deref()
        .and_then(|p| oha(p, addr, a.seconds, Some(equal), false));

    println!("| run | rate asked | req/s achieved | p50 ms | p99 ms | ok / total |");
    println!("|---|---|---|---|---|---|");
    if let Some(t) = &best {
        println!(
            "| faultline probe, max open-loop rate | {}/s | {:.0} | {:.3} | {:.3} | {} / {} |",
            t.rate,
            t.achieved,
            t.ms(0.5),
            t.ms(0.99),
            t.stats.successes,
            t.stats.total()
        );
    }
    if let Some((rate, o)) = &oha_open {
        println!(
            "| oha, max open-loop rate (-q, --latency-correction) | {rate}/s | {:.0} | {:.3} | {:.3} | {} / {} |",
            o.rps, o.p50_ms, o.p99_ms, o.ok, o.total
        );
    }
    if let Some(o) = &oha_max {
        println!(
            "| oha, max closed loop (-c 50, no rate) | unlimited | {:.0} | {:.3} | {:.3} | {} / {} |",
            o.rps, o.p50_ms, o.p99_ms, o.ok, o.total
        );
    }
    println!(
        "| faultline probe, equal rate, from the schedule | {equal}/s | {:.0} | {:.3} | {:.3} | {} / {} |",
        probe_eq.achieved,
        probe_eq.ms(0.5),
        probe_eq.ms(0.99),
        probe_eq.stats.successes,
        probe_eq.stats.total()
    );
    println!(
        "| faultline probe, same run, from the send | {equal}/s | {:.0} | {:.3} | {:.3} | {} / {} |",
        probe_eq.achieved,
        probe_eq.service_ms(0.5),
        probe_eq.service_ms(0.99),
        probe_eq.stats.successes,
        probe_eq.stats.total()
    );
    if let Some(o) = &oha_eq {
        println!(
            "| oha, equal rate, -q --latency-correction | {equal}/s | {:.0} | {:.3} | {:.3} | {} / {} |",
            o.rps, o.p50_ms, o.p99_ms, o.ok, o.total
        );
    }
    if let Some(o) = &oha_eq_plain {
        println!(
            "| oha, equal rate, -q | {equal}/s | {:.0} | {:.3} | {:.3} | {} / {} |",
            o.rps, o.p50_ms, o.p99_ms, o.ok, o.total
        );
    }
}
