//! The LLM-gateway faults against real sockets: a streaming upstream that writes
//! SSE and NDJSON by hand (chunked, one event per chunk at a chosen pace), and
//! clients that time every event as it arrives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use faultline_proxy::http::{HttpFault, HttpFaultKind, HttpProxy, RateKey};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::util::LIMIT;

// === the upstream ===

/// Query parameter `key` of `path` as a number.
fn param(path: &str, key: &str, default: u64) -> u64 {
    path.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

/// Writes one response for `path`:
/// - `/sse?n=N&gap_ms=G`: N SSE events `data: {"i":k}`, one chunk each, G ms
///   apart, then `data: [DONE]`;
/// - `/ndjson?n=N&gap_ms=G`: N JSON lines, chunked, not SSE;
/// - `/json`: a JSON body with a content-length;
/// - `/slow?ms=M`: answers after M ms, with a content-length.
async fn respond<W: AsyncWrite + Unpin>(w: &mut W, path: &str) -> std::io::Result<()> {
    let route = path.split('?').next().unwrap_or("");
    match route {
        "/sse" | "/ndjson" => {
            let sse = route == "/sse";
            let ctype = if sse {
                "text/event-stream"
            } else {
                "application/x-ndjson"
            };
            w.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ntransfer-encoding: chunked\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
            let (n, gap) = (param(path, "n", 5), param(path, "gap_ms", 10));
            for i in 0..n {
                if i > 0 && gap > 0 {
                    tokio::time::sleep(Duration::from_millis(gap)).await;
                }
                let event = if sse {
                    format!("data: {{\"i\":{i}}}\n\n")
                } else {
                    format!("{{\"i\":{i}}}\n")
                };
                w.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
                    .await?;
            }
            if sse {
                let done = "data: [DONE]\n\n";
                w.write_all(format!("{:x}\r\n{done}\r\n", done.len()).as_bytes())
                    .await?;
            }
            w.write_all(b"0\r\n\r\n").await
        }
        _ => {
            if route == "/slow" {
                tokio::time::sleep(Duration::from_millis(param(path, "ms", 100))).await;
            }
            let body = r#"{"choices":[{"message":{"content":"hello"}}]}"#;
            w.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
        }
    }
}

/// The upstream on 127.0.0.1:0, keep-alive; counts the requests it answered.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&served);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                // BufReader writes through to the socket.
                let mut r = BufReader::new(sock);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end().to_ascii_lowercase();
                        if h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    if respond(&mut r, &path).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, served)
}

// === clients ===

/// One streamed response as the client saw it.
#[derive(Debug)]
struct Seen {
    status: u16,
    headers: hyper::HeaderMap,
    /// Each event's text and when its last byte arrived, from the request.
    events: Vec<(String, Duration)>,
    /// The body ended with an error (cut), not cleanly.
    error: Option<String>,
    took: Duration,
}

impl Seen {
    fn gaps(&self) -> Vec<Duration> {
        self.events.windows(2).map(|w| w[1].1 - w[0].1).collect()
    }
    fn has_done(&self) -> bool {
        self.events.iter().any(|(e, _)| e.contains("[DONE]"))
    }
    fn data_events(&self) -> usize {
        self.events
            .iter()
            .filter(|(e, _)| !e.contains("[DONE]"))
            .count()
    }
}

/// GET `path` through `addr` on a connection of its own, splitting the body into
/// events (`sep`: "\n\n" for SSE, "\n" for lines) timed at arrival.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)], sep: &str) -> Seen {
    let sock = TcpStream::connect(addr).await.unwrap();
    sock.set_nodelay(true).unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().uri(path).header("host", "gateway");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let start = Instant::now();
    let resp = tokio::time::timeout(LIMIT, send.send_request(req))
        .await
        .expect("response head within the limit")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let (mut events, mut buf, mut error) = (Vec::new(), String::new(), None);
    loop {
        match tokio::time::timeout(LIMIT, body.frame()).await {
            Err(_) => panic!("body stalled past {LIMIT:?}"),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                error = Some(e.to_string());
                break;
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    let at = start.elapsed();
                    buf.push_str(&String::from_utf8_lossy(&data));
                    while let Some(i) = buf.find(sep) {
                        let event: String = buf.drain(..i + sep.len()).collect();
                        events.push((event, at));
                    }
                }
            }
        }
    }
    Seen {
        status,
        headers,
        events,
        error,
        took: start.elapsed(),
    }
}

async fn proxy(up: SocketAddr, faults: Vec<HttpFault>) -> HttpProxy {
    HttpProxy::start("127.0.0.1:0".parse().unwrap(), up.to_string(), faults)
        .await
        .unwrap()
}

fn stall(after_events: u64, hold_ms: u64, cut: bool) -> HttpFault {
    HttpFault::new(HttpFaultKind::StreamStall {
        after_events,
        after_ms: None,
        hold_ms,
        cut,
    })
}

// === http.stream_stall ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_stall_holds_an_sse_stream_for_its_hold_then_continues() {
    let (up, _) = upstream().await;
    let p = proxy(up, vec![stall(2, 2000, false)]).await;
    let seen = get(p.local_addr(), "/sse?n=6&gap_ms=20", &[], "\n\n").await;
    assert_eq!(seen.status, 200);
    assert!(seen.error.is_none(), "{seen:?}");
    assert_eq!((seen.data_events(), seen.has_done()), (6, true), "{seen:?}");
    let gaps = seen.gaps();
    // The gap between event 2 and 3 is the hold; floors for the hold, loose
    // ceilings for a loaded machine.
    assert!(
        gaps[1] >= Duration::from_millis(1990) && gaps[1] < Duration::from_millis(2600),
        "{gaps:?}"
    );
    for (i, g) in gaps.iter().enumerate().filter(|(i, _)| *i != 1) {
        assert!(*g < Duration::from_millis(500), "gap {i}: {gaps:?}");
    }
    let s = p.stats();
    assert_eq!((s.streams, s.stalled, s.cut), (1, 1, 0), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_stall_then_cut_ends_the_stream_mid_response() {
    let (up, _) = upstream().await;
    let p = proxy(up, vec![stall(2, 2000, true)]).await;
    let seen = get(p.local_addr(), "/sse?n=6&gap_ms=20", &[], "\n\n").await;
    assert_eq!(seen.status, 200);
    assert_eq!(
        (seen.data_events(), seen.has_done()),
        (2, false),
        "{seen:?}"
    );
    assert!(seen.error.is_some(), "a cut is not a clean end: {seen:?}");
    assert!(
        seen.took >= Duration::from_millis(1990) && seen.took < Duration::from_millis(2600),
        "{seen:?}"
    );
    assert_eq!(p.stats().cut, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_stall_after_a_time_and_before_the_first_event() {
    let (up, _) = upstream().await;
    // Before the first event: the headers come at once, the first token late.
    let p = proxy(up, vec![stall(0, 300, false)]).await;
    let seen = get(p.local_addr(), "/sse?n=3&gap_ms=0", &[], "\n\n").await;
    assert_eq!((seen.data_events(), seen.has_done()), (3, true), "{seen:?}");
    assert!(seen.events[0].1 >= Duration::from_millis(295), "{seen:?}");
    // At the first event end 150 ms into the stream.
    p.set_faults(vec![HttpFault::new(HttpFaultKind::StreamStall {
        after_events: 0,
        after_ms: Some(150),
        hold_ms: 400,
        cut: false,
    })])
    .unwrap();
    let seen = get(p.local_addr(), "/sse?n=6&gap_ms=50", &[], "\n\n").await;
    assert_eq!(seen.data_events(), 6, "{seen:?}");
    let big: Vec<_> = seen
        .gaps()
        .into_iter()
        .filter(|g| *g >= Duration::from_millis(395))
        .collect();
    assert_eq!(big.len(), 1, "one hold: {:?}", seen.gaps());
}

// === http.stream_slow ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_slow_paces_events_to_its_rate() {
    let (up, _) = upstream().await;
    let p = proxy(
        up,
        vec![HttpFault::new(HttpFaultKind::StreamSlow {
            events_per_s: 20.0,
        })],
    )
    .await;
    // The upstream sends 10 events at once; the client gets one every 50 ms.
    let seen = get(p.local_addr(), "/sse?n=10&gap_ms=0", &[], "\n\n").await;
    assert_eq!(
        (seen.data_events(), seen.has_done()),
        (10, true),
        "{seen:?}"
    );
    for g in seen.gaps() {
        assert!(g >= Duration::from_millis(45), "{:?}", seen.gaps());
    }
    let span = seen.events.last().unwrap().1 - seen.events[0].1;
    // 11 events (with [DONE]): 10 intervals of 50 ms.
    assert!(
        span >= Duration::from_millis(490) && span < Duration::from_millis(1200),
        "{span:?}"
    );
    // An upstream slower than the pace is not slowed further.
    let seen = get(p.local_addr(), "/sse?n=5&gap_ms=100", &[], "\n\n").await;
    let span = seen.events.last().unwrap().1 - seen.events[0].1;
    assert!(span < Duration::from_millis(700), "{span:?}");
}

// === http.stream_truncate ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_truncate_ends_after_n_events_with_or_without_done() {
    let (up, _) = upstream().await;
    let truncate = |done| {
        HttpFault::new(HttpFaultKind::StreamTruncate {
            after_events: 3,
            done,
        })
    };
    let p = proxy(up, vec![truncate(false)]).await;
    let seen = get(p.local_addr(), "/sse?n=8&gap_ms=5", &[], "\n\n").await;
    assert_eq!(
        (seen.data_events(), seen.has_done()),
        (3, false),
        "{seen:?}"
    );
    assert!(seen.error.is_none(), "ends cleanly: {seen:?}");
    p.set_faults(vec![truncate(true)]).unwrap();
    let seen = get(p.local_addr(), "/sse?n=8&gap_ms=5", &[], "\n\n").await;
    assert_eq!((seen.data_events(), seen.has_done()), (3, true), "{seen:?}");
    assert!(seen.events.last().unwrap().0.contains("[DONE]"));
    // Chunked bodies that are not SSE count lines, and get no [DONE].
    let seen = get(p.local_addr(), "/ndjson?n=8&gap_ms=5", &[], "\n").await;
    assert_eq!(
        (seen.data_events(), seen.has_done()),
        (3, false),
        "{seen:?}"
    );
    // A stream shorter than the truncation is whole.
    let seen = get(p.local_addr(), "/sse?n=1&gap_ms=5", &[], "\n\n").await;
    assert_eq!((seen.data_events(), seen.has_done()), (1, true), "{seen:?}");
    assert_eq!(p.stats().truncated, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_faults_pass_non_streamed_responses_through_unchanged() {
    let (up, _) = upstream().await;
    let p = proxy(
        up,
        vec![
            stall(0, 2000, true),
            HttpFault::new(HttpFaultKind::StreamTruncate {
                after_events: 0,
                done: false,
            }),
        ],
    )
    .await;
    let direct = get(up, "/json", &[], "\n").await;
    let seen = get(p.local_addr(), "/json", &[], "\n").await;
    assert_eq!(seen.status, 200);
    assert!(seen.took < Duration::from_millis(500), "{seen:?}");
    assert_eq!(
        seen.headers.get("content-length"),
        direct.headers.get("content-length")
    );
    assert_eq!(seen.error, None);
    // The body, which has no newline, is the one the upstream sent.
    assert_eq!(seen.events.len(), 0);
    assert_eq!(p.stats().streams, 0);
    let whole = {
        let sock = TcpStream::connect(p.local_addr()).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/json")
            .header("host", "g")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    };
    assert_eq!(
        &whole[..],
        br#"{"choices":[{"message":{"content":"hello"}}]}"#
    );
}

// === http.rate_limit ===

fn header(seen: &Seen, name: &str) -> Option<String> {
    seen.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_lets_its_rate_through_and_answers_429_with_headers() {
    let (up, served) = upstream().await;
    let p = proxy(
        up,
        vec![HttpFault::new(HttpFaultKind::RateLimit {
            rate_per_s: 10.0,
            burst: 10,
            key: RateKey::ClientIp,
        })],
    )
    .await;
    // Empty the bucket: its burst goes through, then 429.
    let mut burst = 0;
    loop {
        let seen = get(p.local_addr(), "/json", &[], "\n").await;
        if seen.status == 429 {
            break;
        }
        assert_eq!(seen.status, 200);
        burst += 1;
        assert!(burst <= 12, "the bucket never emptied");
    }
    assert!((10..=11).contains(&burst), "{burst}");
    // Then offer 40/s for 2 s: 10 +- 1 a second get through.
    let start = Instant::now();
    let (mut ok, mut limited) = (0u32, 0u32);
    let mut last_429 = None;
    for i in 0..80u32 {
        let due = start + Duration::from_millis(25) * i;
        tokio::time::sleep_until(due.into()).await;
        let seen = get(p.local_addr(), "/json", &[], "\n").await;
        match seen.status {
            200 => {
                ok += 1;
                assert!(header(&seen, "x-ratelimit-remaining-requests").is_some());
            }
            429 => {
                limited += 1;
                last_429 = Some(seen);
            }
            s => panic!("status {s}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let per_s = f64::from(ok) / secs;
    assert!((9.0..=11.0).contains(&per_s), "{ok} in {secs:.2} s");
    assert_eq!(ok + limited, 80);
    let r = last_429.expect("a 429");
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert_eq!(retry, 1, "a tenth of a second, rounded up");
    let retry_ms: u64 = header(&r, "retry-after-ms").unwrap().parse().unwrap();
    assert!((1..=100).contains(&retry_ms), "{retry_ms}");
    assert_eq!(
        header(&r, "x-ratelimit-limit-requests").as_deref(),
        Some("10")
    );
    assert_eq!(
        header(&r, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    let reset = header(&r, "x-ratelimit-reset-requests").unwrap();
    assert!(reset.ends_with("ms") || reset.ends_with('s'), "{reset}");
    // The upstream saw exactly what was let through.
    assert_eq!(served.load(Ordering::SeqCst), burst + ok as usize);
    assert_eq!(p.stats().rate_limited, u64::from(limited) + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_by_header_keeps_a_bucket_per_api_key() {
    let (up, _) = upstream().await;
    let p = proxy(
        up,
        vec![HttpFault::new(HttpFaultKind::RateLimit {
            rate_per_s: 0.5,
            burst: 2,
            key: RateKey::Header("x-api-key".into()),
        })],
    )
    .await;
    let status = |key: &'static str| {
        let addr = p.local_addr();
        async move { get(addr, "/json", &[("x-api-key", key)], "\n").await.status }
    };
    assert_eq!(status("a").await, 200);
    assert_eq!(status("a").await, 200);
    assert_eq!(status("a").await, 429);
    // Another key, another bucket.
    assert_eq!(status("b").await, 200);
    let r = get(p.local_addr(), "/json", &[("x-api-key", "a")], "\n").await;
    assert_eq!(r.status, 429);
    // 2 s to the next token at 0.5/s.
    assert_eq!(header(&r, "retry-after").as_deref(), Some("2"));
}

// === http.queue ===

/// `n` requests at once to `/slow?ms=100`; each one's status and latency.
async fn burst(addr: SocketAddr, n: usize) -> Vec<(u16, Duration)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let seen = get(addr, "/slow?ms=100", &[], "\n").await;
                (seen.status, seen.took)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn mean(v: &[(u16, Duration)]) -> Duration {
    v.iter().map(|(_, d)| *d).sum::<Duration>() / v.len() as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_delay_grows_with_offered_load_and_times_out_with_503() {
    let (up, _) = upstream().await;
    let queue = |timeout_ms, queue| {
        HttpFault::new(HttpFaultKind::Queue {
            concurrency: 2,
            queue,
            timeout_ms,
        })
    };
    let p = proxy(up, vec![queue(5000, 100)]).await;
    // Service time 100 ms, two slots: 2, 4 and 8 at once wait 0, 1 and 3 rounds.
    let mut means = Vec::new();
    for n in [2, 4, 8] {
        let r = burst(p.local_addr(), n).await;
        assert!(r.iter().all(|(s, _)| *s == 200), "{r:?}");
        let slowest = r.iter().map(|(_, d)| *d).max().unwrap();
        let rounds = n as u32 / 2;
        assert!(
            slowest >= Duration::from_millis(100) * rounds - Duration::from_millis(10),
            "{n} at once: {r:?}"
        );
        means.push(mean(&r));
    }
    assert!(means[0] < means[1] && means[1] < means[2], "{means:?}");
    assert!(means[2] >= Duration::from_millis(200), "{means:?}");
    assert_eq!(p.stats().queued, 2 + 6);

    // A queue timeout of 250 ms: of 8 at once, those that would wait 300 ms get 503.
    p.set_faults(vec![queue(250, 100)]).unwrap();
    let r = burst(p.local_addr(), 8).await;
    let rejected: Vec<_> = r.iter().filter(|(s, _)| *s == 503).collect();
    assert!((1..=4).contains(&rejected.len()), "{r:?}");
    assert!(
        rejected
            .iter()
            .all(|(_, d)| *d >= Duration::from_millis(245)),
        "{r:?}"
    );
    assert!(r.iter().all(|(s, _)| *s == 200 || *s == 503), "{r:?}");

    // A full queue answers at once: 2 in flight, 1 waiting, the 4th is turned away.
    p.set_faults(vec![queue(5000, 1)]).unwrap();
    let r = burst(p.local_addr(), 4).await;
    let full: Vec<_> = r.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(full.len(), 1, "{r:?}");
    assert!(full[0].1 < Duration::from_millis(90), "{r:?}");
    assert_eq!(p.stats().queue_waiting, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_slot_is_held_until_a_streamed_body_ends() {
    let (up, served) = upstream().await;
    let p = proxy(
        up,
        vec![HttpFault::new(HttpFaultKind::Queue {
            concurrency: 1,
            queue: 10,
            timeout_ms: 5000,
        })],
    )
    .await;
    let addr = p.local_addr();
    let long = tokio::spawn(async move { get(addr, "/sse?n=5&gap_ms=60", &[], "\n\n").await });
    // Let the stream take the slot.
    let deadline = Instant::now() + LIMIT;
    while served.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the stream never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let short = get(addr, "/json", &[], "\n").await;
    let long = long.await.unwrap();
    assert_eq!((long.status, short.status), (200, 200));
    // The short request waited for the whole stream (about 240 ms).
    assert!(short.took >= Duration::from_millis(200), "{short:?}");
}

// === drain ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_held_streams_and_queued_requests_go_at_once() {
    let (up, served) = upstream().await;
    let p = Arc::new(
        proxy(
            up,
            vec![
                stall(1, 10_000, true),
                HttpFault::new(HttpFaultKind::Queue {
                    concurrency: 1,
                    queue: 10,
                    timeout_ms: 10_000,
                }),
            ],
        )
        .await,
    );
    let addr = p.local_addr();
    let stream = tokio::spawn(async move { get(addr, "/sse?n=4&gap_ms=0", &[], "\n\n").await });
    // The stream holds the only slot; a second request queues behind it.
    let deadline = Instant::now() + LIMIT;
    while served.load(Ordering::SeqCst) == 0 || p.stats().stalled == 0 {
        assert!(Instant::now() < deadline, "the stream never stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queued = tokio::spawn(async move { get(addr, "/json", &[], "\n").await });
    while p.stats().queue_waiting == 0 {
        assert!(Instant::now() < deadline, "nothing queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = Instant::now();
    p.begin_drain();
    let (stream, queued) = (stream.await.unwrap(), queued.await.unwrap());
    // Neither waited for its 10 s; the stream was neither held nor cut.
    assert!(
        drained.elapsed() < Duration::from_secs(2),
        "{:?}",
        drained.elapsed()
    );
    assert_eq!(
        (stream.data_events(), stream.has_done()),
        (4, true),
        "{stream:?}"
    );
    assert!(stream.error.is_none(), "{stream:?}");
    assert_eq!(queued.status, 200);
    assert_eq!(p.stats().cut, 0);
}
