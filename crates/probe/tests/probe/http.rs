//! The open-loop HTTP load generator against a real server.

use std::time::{Duration, Instant};

use faultline_probe::http::{HttpLoad, Limits};
use faultline_probe::slo::{Observed, evaluate};
use faultline_probe::{Clock, FailureKind, Recorder};
use faultline_spec::Hypothesis;
use faultline_spec::probe::HttpProbe;

use crate::server::Server;
use crate::{bounded, spec};

fn load(yaml: &str) -> HttpLoad {
    HttpLoad::new(&spec::<HttpProbe>(yaml)).expect("valid http probe")
}

fn for_(d: Duration) -> Limits {
    Limits {
        duration: Some(d),
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_rate_and_reuses_connections() {
    let _serial = crate::timing().await;
    let srv = Server::start().await;
    let l = load(&format!("{{ url: '{}', rate: 1000/s }}", srv.url("/ok")));
    let rec = Recorder::new(Duration::from_millis(250));
    let t0 = Instant::now();
    let report = bounded(
        Duration::from_secs(10),
        l.run(Clock::start(), rec.clone(), for_(Duration::from_secs(1))),
    )
    .await;
    let elapsed = t0.elapsed();
    // The schedule is fixed: exactly rate x duration requests, over about a second.
    assert_eq!(report.scheduled, 1000);
    assert!(
        elapsed >= Duration::from_millis(990) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    let s = rec.snapshot();
    let w = s.window(Duration::ZERO, s.end());
    assert_eq!(w.total(), 1000);
    assert!(w.successes >= 990, "{w:?}, {report:?}");
    assert_eq!(srv.requests(), 1000 - report.saturated);
    // Every success also carries its service time, never longer than its latency.
    assert_eq!(w.service.len(), w.successes);
    assert!(w.service.value_at_quantile(0.5) <= w.latency.value_at_quantile(0.5));
    // Four 250 ms buckets of 250 requests each: the rate held throughout.
    let per_bucket: Vec<u64> = s.buckets().iter().map(|b| b.total()).collect();
    assert_eq!(per_bucket, vec![250, 250, 250, 250]);
    // Keep-alive: each worker opened one connection and carried all its requests
    // on it (how many workers a busy machine needs varies; that they never
    // reconnect does not).
    assert_eq!(srv.connections(), report.connections);
    assert_eq!(report.connections, report.workers as u64, "{report:?}");
    assert!(report.connections <= 500, "{report:?}");
    // Everything scheduled is settled once the load has finished.
    assert!(s.settled >= Duration::from_secs(1) - Duration::from_millis(1));
    let h: Hypothesis = spec("{ probe: api, availability: '>= 99%', p99: '<= 200ms' }");
    let v = evaluate(&h, &w);
    assert!(v.holds, "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_inflates_the_latency_of_everything_scheduled_during_it() {
    let _serial = crate::timing().await;
    let srv = Server::start().await;
    let l = load(&format!("{{ url: '{}', rate: 200/s }}", srv.url("/gate")));
    let rec = Recorder::new(Duration::from_secs(1));
    let clock = Clock::start();
    let stall = {
        let st = srv.state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _closed = st.gate.write().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        })
    };
    let report = bounded(
        Duration::from_secs(10),
        l.run(clock, rec.clone(), for_(Duration::from_millis(1500))),
    )
    .await;
    stall.await.expect("stall task");
    assert_eq!(report.scheduled, 300);
    let s = rec.snapshot();
    let w = s.window(Duration::ZERO, s.end());
    assert_eq!(w.successes, 300, "{w:?}");
    // About 100 requests were scheduled during the 500 ms stall; each waits for
    // its end, so their latencies spread from 500 ms down to 0. Measured from the
    // schedule, that is a third of all samples, and the tail shows it: p99 is
    // close to the stall. A closed-loop client would have recorded one slow request.
    let p99 = w.quantile(0.99).expect("latencies");
    assert!(p99 >= Duration::from_millis(400), "p99 {p99:?}");
    let slow = w.latency.count_between(250_000, 10_000_000);
    assert!(slow >= 40, "only {slow} samples waited 250 ms or more");
    let p50 = w.quantile(0.5).expect("latencies");
    assert!(p50 < Duration::from_millis(100), "p50 {p50:?}");
    let h: Hypothesis = spec("{ probe: api, p99: '<= 100ms' }");
    let v = evaluate(&h, &w);
    assert!(!v.holds);
    assert!(matches!(v.checks[0].observed, Some(Observed::Latency(d)) if d == p99));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_timeouts_count_as_failures() {
    let srv = Server::start().await;
    let rec = Recorder::new(Duration::from_secs(1));
    let l = load(&format!(
        "{{ url: '{}', rate: 100/s }}",
        srv.url("/status/503")
    ));
    let r = bounded(
        Duration::from_secs(10),
        l.run(
            Clock::start(),
            rec.clone(),
            for_(Duration::from_millis(300)),
        ),
    )
    .await;
    let w = rec
        .snapshot()
        .window(Duration::ZERO, Duration::from_secs(5));
    assert_eq!(w.failures(FailureKind::Rejected), r.scheduled);
    assert_eq!(w.successes, 0);
    // Fast errors stay out of the latency figures.
    assert_eq!(w.latency.len(), 0);

    // The success rule is configurable: here 503 is what the probe expects.
    let rec = Recorder::new(Duration::from_secs(1));
    let l = load(&format!(
        "{{ url: '{}', rate: 100/s, success: [5xx] }}",
        srv.url("/status/503")
    ));
    let r = bounded(
        Duration::from_secs(10),
        l.run(
            Clock::start(),
            rec.clone(),
            for_(Duration::from_millis(300)),
        ),
    )
    .await;
    let w = rec
        .snapshot()
        .window(Duration::ZERO, Duration::from_secs(5));
    assert_eq!(w.successes, r.scheduled);

    // A server slower than the timeout: every request times out, at the timeout.
    let rec = Recorder::new(Duration::from_secs(1));
    let l = load(&format!(
        "{{ url: '{}', rate: 20/s, timeout: 200ms }}",
        srv.url("/sleep/3000")
    ));
    let t0 = Instant::now();
    let r = bounded(
        Duration::from_secs(10),
        l.run(
            Clock::start(),
            rec.clone(),
            for_(Duration::from_millis(500)),
        ),
    )
    .await;
    // The last request is abandoned at its timeout, not when the server answers.
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    let w = rec
        .snapshot()
        .window(Duration::ZERO, Duration::from_secs(5));
    assert_eq!(r.scheduled, 10);
    assert_eq!(w.failures(FailureKind::Timeout), 10);
    assert_eq!(w.latency.len(), 10);
    let p50 = w.quantile(0.5).expect("timeouts are in the histogram");
    assert!(p50 >= Duration::from_millis(200) && p50 <= Duration::from_millis(201));
    let h: Hypothesis = spec("{ probe: api, availability: '>= 1%' }");
    assert_eq!(
        evaluate(&h, &w).reason.as_deref(),
        Some("availability 0% (needs >= 1%)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_client_fails_requests_instead_of_delaying_the_schedule() {
    let srv = Server::start().await;
    let rec = Recorder::new(Duration::from_secs(1));
    let l = load(&format!(
        "{{ url: '{}', rate: 100/s }}",
        srv.url("/sleep/250")
    ))
    .with_max_in_flight(2);
    let r = bounded(
        Duration::from_secs(10),
        l.run(
            Clock::start(),
            rec.clone(),
            for_(Duration::from_millis(500)),
        ),
    )
    .await;
    assert_eq!(r.scheduled, 50);
    assert_eq!(r.workers, 2);
    let w = rec
        .snapshot()
        .window(Duration::ZERO, Duration::from_secs(5));
    // Two workers, 250 ms per request, 500 ms of schedule: at most 6 sent.
    assert!(w.successes <= 6, "{w:?}");
    assert_eq!(w.failures(FailureKind::Saturated), r.saturated);
    assert_eq!(w.total(), 50);
    assert!(r.saturated >= 44, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_a_connect_failure_and_cancel_stops() {
    // A port that was just closed: connects are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let rec = Recorder::new(Duration::from_secs(1));
    let l = load(&format!(
        "{{ url: 'http://127.0.0.1:{port}/', rate: 50/s }}"
    ));
    let limits = Limits::default();
    let cancel = limits.cancel.clone();
    let run = tokio::spawn(l.run(Clock::start(), rec.clone(), limits));
    // Cancel once something was recorded (bounded: 200 x 10 ms).
    for _ in 0..200 {
        if rec.with(|s| s.window(Duration::ZERO, Duration::from_secs(60)).total()) >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    let r = bounded(Duration::from_secs(5), run).await.expect("run");
    let w = rec
        .snapshot()
        .window(Duration::ZERO, Duration::from_secs(60));
    assert!(r.scheduled >= 5);
    assert_eq!(w.failures(FailureKind::Connect), r.scheduled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_each_connection_gets_a_new_one() {
    let srv = Server::start().await;
    let rec = Recorder::new(Duration::from_secs(1));
    let l = load(&format!("{{ url: '{}', rate: 100/s }}", srv.url("/close")));
    let r = bounded(
        Duration::from_secs(10),
        l.run(
            Clock::start(),
            rec.clone(),
            for_(Duration::from_millis(300)),
        ),
    )
    .await;
    let w = rec
        .snapshot()
        .window(Duration::ZERO, Duration::from_secs(5));
    assert_eq!(r.scheduled, 30);
    assert_eq!(w.successes, 30, "{w:?}");
    assert_eq!(srv.connections(), 30);
}
