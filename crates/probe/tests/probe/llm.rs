//! The llm probe against a real streaming completion server (`sse.rs`).

use std::time::Duration;

use faultline_probe::llm::LlmLoad;
use faultline_probe::slo::{Observed, evaluate};
use faultline_probe::window::{StreamStats, WindowStats};
use faultline_probe::{Clock, FailureKind, ProbeError, Recorder};
use faultline_spec::Hypothesis;
use faultline_spec::probe::LlmProbe;

use crate::http_limits as for_;
use crate::sse::SseServer;
use crate::{bounded, spec};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Runs an llm probe at `rate` for `secs` against `url` and returns every bucket merged.
async fn run(url: &str, extra: &str, rate: &str, dur: Duration) -> WindowStats {
    let l = LlmLoad::new(&spec::<LlmProbe>(&format!(
        "{{ url: '{url}', model: m, prompts: [hello, world], rate: {rate}, timeout: 5s {extra} }}"
    )))
    .expect("valid llm probe");
    let rec = Recorder::new(Duration::from_secs(1));
    let report = bounded(
        Duration::from_secs(20),
        l.run(Clock::start(), rec.clone(), for_(dur)),
    )
    .await;
    let s = rec.snapshot();
    let w = s.window(Duration::ZERO, s.end());
    assert_eq!(w.total(), report.scheduled, "{w:?} {report:?}");
    w
}

fn stream(w: &WindowStats) -> &StreamStats {
    w.stream.as_deref().expect("stream figures recorded")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttft_of_a_200ms_first_token_is_measured_within_200_to_205ms() {
    let _serial = crate::timing().await;
    let srv = SseServer::start().await;
    let w = run(
        &srv.url("first_ms=200&pace_ms=5&tokens=4"),
        "",
        "10/s",
        ms(1000),
    )
    .await;
    assert_eq!(w.successes, 10, "{w:?}");
    assert_eq!(
        srv.state
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        10
    );
    let own = srv.state.first_delays_us.lock().expect("lock").clone();
    assert!(own.iter().all(|us| *us >= 200_000), "{own:?}");
    let st = stream(&w);
    assert_eq!(st.ttft.len(), 10);
    // The floor: the fastest first token of all, as HDR's bucket bounds of it.
    let lo = Duration::from_micros(st.ttft.min());
    let hi = Duration::from_micros(st.ttft.highest_equivalent(st.ttft.min()));
    assert!(lo >= ms(200) && hi <= ms(205), "ttft floor {lo:?}..{hi:?}");
    // Latency runs to the end of the stream: after the first token and 3 gaps.
    assert!(w.quantile(0.0).is_some_and(|l| l >= ms(215)), "{w:?}");
    let h: Hypothesis = spec("{ probe: llm, ttft_p50: '<= 260ms', ttft_p99: '<= 400ms' }");
    assert!(evaluate(&h, &w).holds, "{:?}", evaluate(&h, &w));
    let h: Hypothesis = spec("{ probe: llm, ttft_p50: '< 200ms' }");
    assert!(!evaluate(&h, &w).holds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn itl_is_every_gap_at_the_server_pace() {
    let _serial = crate::timing().await;
    let srv = SseServer::start().await;
    let w = run(&srv.url("pace_ms=40&tokens=6"), "", "5/s", ms(1000)).await;
    assert_eq!(w.successes, 5, "{w:?}");
    let st = stream(&w);
    // Five gaps per stream of six tokens.
    assert_eq!(st.itl.len(), 25);
    let p50 = Duration::from_micros(st.itl.value_at_quantile(0.5));
    assert!(p50 >= ms(40) && p50 <= ms(46), "itl p50 {p50:?}");
    // Tokens counted (no usage): six per stream; the decode rate is 5 tokens over
    // 5 gaps of 40 ms, 25/s, or a little less.
    assert_eq!(st.tokens, 30);
    let p50 = st.tokens_per_s_quantile(0.5, true).expect("rates");
    assert!((20.0..=25.1).contains(&p50), "tokens/s {p50}");
    let h: Hypothesis = spec("{ probe: llm, itl_p99: '<= 100ms', tokens_per_s: '>= 15' }");
    assert!(evaluate(&h, &w).holds, "{:?}", evaluate(&h, &w));
    let h: Hypothesis = spec("{ probe: llm, tokens_per_s: '>= 40' }");
    let v = evaluate(&h, &w);
    assert!(!v.holds);
    assert!(matches!(v.checks[0].observed, Some(Observed::TokensPerSecond(r)) if r < 25.1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_come_from_usage_when_present_else_from_counted_events() {
    let srv = SseServer::start().await;
    let w = run(&srv.url("pace_ms=1&tokens=3&usage=42"), "", "10/s", ms(300)).await;
    assert_eq!((w.successes, stream(&w).tokens), (3, 3 * 42), "{w:?}");
    let w = run(&srv.url("pace_ms=1&tokens=3"), "", "10/s", ms(300)).await;
    assert_eq!((w.successes, stream(&w).tokens), (3, 3 * 3), "{w:?}");
    // Not streamed: usage is all there is; no first token, no gaps.
    let w = run(
        &srv.url("stream=0&usage=9"),
        ", stream: false",
        "10/s",
        ms(300),
    )
    .await;
    let st = stream(&w);
    assert_eq!((w.successes, st.tokens), (3, 27), "{w:?}");
    assert_eq!(
        (st.ttft.len(), st.itl.len(), st.tokens_per_s.len()),
        (0, 0, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_short_is_a_failure_with_its_reason() {
    let srv = SseServer::start().await;
    for query in [
        "tokens=3&pace_ms=1&done=0",
        "tokens=5&pace_ms=1&cut_after=2",
        "tokens=2&finish=0",
    ] {
        let w = run(&srv.url(query), "", "10/s", ms(300)).await;
        assert_eq!(w.failures(FailureKind::StreamCut), 3, "{query}: {w:?}");
        assert_eq!(w.successes, 0);
        // What came before the cut is still measured.
        assert_eq!(stream(&w).ttft.len(), 3, "{query}");
        assert_eq!(stream(&w).tokens_per_s.len(), 0, "{query}");
    }
    let h: Hypothesis = spec("{ probe: llm, availability: '>= 99%' }");
    let w = run(&srv.url("done=0"), "", "10/s", ms(300)).await;
    assert_eq!(
        evaluate(&h, &w).reason.as_deref(),
        Some("availability 0% (needs >= 99%)")
    );
    assert_eq!(FailureKind::StreamCut.as_str(), "stream cut short");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_json_answer_to_stream_true_is_a_failure_not_a_panic() {
    let srv = SseServer::start().await;
    let w = run(&srv.url("sse=0"), "", "10/s", ms(300)).await;
    assert_eq!(w.failures(FailureKind::NotEventStream), 3, "{w:?}");
    assert_eq!(FailureKind::NotEventStream.as_str(), "not an event stream");
    // The same answer is what `stream: false` expects.
    let w = run(&srv.url("sse=0"), ", stream: false", "10/s", ms(300)).await;
    assert_eq!(w.successes, 3, "{w:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2s_gap_fails_an_itl_p99_of_500ms() {
    let _serial = crate::timing().await;
    let srv = SseServer::start().await;
    // Every stream holds for 2 s after its third token: one gap in seven.
    let w = run(
        &srv.url("tokens=8&pace_ms=10&stall_after=3&stall_ms=2000"),
        "",
        "4/s",
        ms(1000),
    )
    .await;
    assert_eq!(w.successes, 4, "{w:?}");
    let h: Hypothesis = spec("{ probe: llm, itl_p99: '<= 500ms' }");
    let v = evaluate(&h, &w);
    assert!(!v.holds, "{v:?}");
    let Some(Observed::Latency(p99)) = v.checks[0].observed else {
        panic!("{v:?}")
    };
    assert!(p99 >= ms(2000) && p99 < ms(2100), "itl p99 {p99:?}");
    assert!(
        v.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("itl_p99 2s")),
        "{v:?}"
    );
    // A stall past the timeout is a gap too, up to the timeout.
    let l = LlmLoad::new(&spec::<LlmProbe>(&format!(
        "{{ url: '{}', model: m, prompts: [x], rate: 2/s, timeout: 1s }}",
        srv.url("tokens=8&pace_ms=10&stall_after=3&stall_ms=3000")
    )))
    .expect("valid");
    let rec = Recorder::new(Duration::from_secs(1));
    bounded(
        Duration::from_secs(10),
        l.run(Clock::start(), rec.clone(), for_(ms(500))),
    )
    .await;
    let s = rec.snapshot();
    let w = s.window(Duration::ZERO, s.end());
    assert_eq!(w.failures(FailureKind::Timeout), 1, "{w:?}");
    let max = Duration::from_micros(stream(&w).itl.max());
    assert!(max >= ms(900) && max <= ms(1000), "open gap {max:?}");
}

#[tokio::test]
async fn prompts_come_from_a_file_or_the_start_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("prompts.txt");
    std::fs::write(&path, "first\n\n  second  \n").expect("write");
    let yaml = |file: &str| {
        format!(
            "{{ url: 'http://127.0.0.1:1/v1/completions', model: m, prompts_file: '{file}', rate: 1/s }}"
        )
    };
    assert!(LlmLoad::new(&spec::<LlmProbe>(&yaml(&path.display().to_string()))).is_ok());
    let missing = dir.path().join("none.txt").display().to_string();
    assert!(matches!(
        LlmLoad::new(&spec::<LlmProbe>(&yaml(&missing))),
        Err(ProbeError::Prompts { .. })
    ));
    std::fs::write(&path, "\n \n").expect("write");
    assert!(matches!(
        LlmLoad::new(&spec::<LlmProbe>(&yaml(&path.display().to_string()))),
        Err(ProbeError::NoPrompts)
    ));
}
