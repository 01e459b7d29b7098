//! The llm probe's own overhead on time to first token (bench/llm/run.sh).
//!
//! A local streaming server (`tests/probe/sse.rs`, on a one-thread runtime of its
//! own) answers every request with its first token after a known delay, then a
//! few tokens at a steady pace; the probe (a two-worker runtime, as `faultline
//! run` has on two cores) streams from it open-loop at a fixed rate. The server
//! measures its own delay from a request's arrival to the write of its first
//! token, which is the nominal delay plus its timer's rounding (tokio sleeps to
//! the next millisecond). The probe's error is what it adds on top: its
//! scheduling lateness, the send, the loopback and the read, since it times from
//! the *scheduled* instant. Reported at p50/p99/p999/max as the probe's TTFT
//! quantile minus the server's own delay at the same quantile, and raw against
//! the nominal delay.
//!
//! Arguments: `--seconds N` (10), `--rate R` (200 streams/s), `--first-ms D` (50),
//! `--tokens N` (8), `--pace-ms P` (10). Prints a Markdown table on stdout.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a bench reports by printing

#[path = "../tests/probe/sse.rs"]
#[allow(dead_code)]
mod sse;

use std::time::Duration;

use faultline_probe::Recorder;
use faultline_probe::http::Limits;
use faultline_probe::llm::LlmLoad;
use faultline_probe::window::Clock;
use faultline_spec::probe::LlmProbe;

struct Args {
    seconds: u64,
    rate: u64,
    first_ms: u64,
    tokens: u64,
    pace_ms: u64,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 10,
        rate: 200,
        first_ms: 50,
        tokens: 8,
        pace_ms: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |d: u64| it.next().and_then(|s| s.parse().ok()).unwrap_or(d);
        match arg.as_str() {
            "--seconds" => a.seconds = num(a.seconds),
            "--rate" => a.rate = num(a.rate),
            "--first-ms" => a.first_ms = num(a.first_ms),
            "--tokens" => a.tokens = num(a.tokens),
            "--pace-ms" => a.pace_ms = num(a.pace_ms),
            _ => {} // `cargo bench` passes `--bench`
        }
    }
    a
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    let a = args();
    // The server on a runtime and thread of its own.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let srv = sse::SseServer::start().await;
            tx.send((srv.addr, std::sync::Arc::clone(&srv.state)))
                .expect("send addr");
            std::future::pending::<()>().await;
        });
    });
    let (addr, state) = rx.recv().expect("server address");
    let url = format!(
        "http://{addr}/v1/chat/completions?first_ms={}&tokens={}&pace_ms={}&usage={}",
        a.first_ms, a.tokens, a.pace_ms, a.tokens
    );
    let spec: LlmProbe = serde_yaml::from_str(&format!(
        "{{ url: '{url}', model: bench, prompts: [a, b, c], rate: {}/s, timeout: 5s }}",
        a.rate
    ))
    .expect("bench probe spec");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("probe runtime");
    let rec = Recorder::new(Duration::from_secs(1));
    let report = rt.block_on(async {
        let load = LlmLoad::new(&spec).expect("bench probe");
        let limits = Limits {
            duration: Some(Duration::from_secs(a.seconds)),
            ..Limits::default()
        };
        load.run(Clock::start(), rec.clone(), limits).await
    });
    let s = rec.snapshot();
    let w = s.window(Duration::ZERO, s.end());
    let st = w.stream.as_deref().expect("streams recorded");
    let mut own = state.first_delays_us.lock().expect("lock").clone();
    own.sort_unstable();
    let nominal_us = a.first_ms * 1000;
    eprintln!(
        "llm_ttft: {} scheduled, {} ok, {} failed, {} saturated, {} connections, {} server first tokens",
        report.scheduled,
        w.successes,
        w.failed(),
        report.saturated,
        report.connections,
        own.len()
    );
    println!(
        "| {} streams/s x {} s, first token after {} ms, {} tokens at {} ms | p50 | p99 | p999 | max |",
        a.rate, a.seconds, a.first_ms, a.tokens, a.pace_ms
    );
    println!("|---|---:|---:|---:|---:|");
    let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
    let signed = |us: i64| format!("{:+.3}", us as f64 / 1000.0);
    let qs = [0.5, 0.99, 0.999, 1.0];
    let probe: Vec<u64> = qs.iter().map(|q| st.ttft.value_at_quantile(*q)).collect();
    let server: Vec<u64> = qs.iter().map(|q| quantile(&own, *q)).collect();
    let row = |name: &str, v: Vec<String>| println!("| {name} | {} |", v.join(" | "));
    row(
        "probe TTFT, ms (from the schedule)",
        probe.iter().map(|u| ms(*u)).collect(),
    );
    row(
        "server's own first-token delay, ms",
        server.iter().map(|u| ms(*u)).collect(),
    );
    row(
        "**probe error**, ms (probe - server, same quantile)",
        probe
            .iter()
            .zip(&server)
            .map(|(p, s)| signed(*p as i64 - *s as i64))
            .collect(),
    );
    row(
        "raw error, ms (probe - nominal delay)",
        probe
            .iter()
            .map(|p| signed(*p as i64 - nominal_us as i64))
            .collect(),
    );
    // The client's own lateness (scheduled instant to send), as the gap between
    // the latency and the service time at the same quantile.
    println!(
        "\nclient lateness (latency - service time, same quantile): p50 {}, p99 {} ms",
        signed(w.latency.value_at_quantile(0.5) as i64 - w.service.value_at_quantile(0.5) as i64),
        signed(w.latency.value_at_quantile(0.99) as i64 - w.service.value_at_quantile(0.99) as i64),
    );
    println!(
        "\n{} of {} streams completed; ITL p50 {} ms, p99 {} ms (server pace {} ms); {} saturated.",
        w.successes,
        report.scheduled,
        ms(st.itl.value_at_quantile(0.5)),
        ms(st.itl.value_at_quantile(0.99)),
        a.pace_ms,
        report.saturated
    );
}
