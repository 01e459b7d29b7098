//! The demo as a client sees it: real listeners on port 0, real HTTP, a real
//! SQLite database in a temporary directory, real locks held by another
//! connection. Every wait is bounded; nothing sleeps where readiness can be awaited.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use faultline_demo::{Demo, DemoConfig, DemoError};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generous: the machine is shared with other builds.
const PATIENCE: Duration = Duration::from_secs(15);

struct Fixture {
    demo: Demo,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

async fn start(config: DemoConfig) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state").join("jobs.db");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let demo = Demo::start(DemoConfig {
        gateway: any,
        service: any,
        db_path: db.clone(),
        ..config
    })
    .await
    .expect("demo starts");
    Fixture {
        demo,
        db,
        _dir: dir,
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    json: serde_json::Value,
    elapsed: Duration,
}

/// No `Content-Type`, as the quickstart's probe sends it.
async fn call(client: &HttpClient, method: Method, url: String, body: &str) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    send(client, request).await
}

async fn send(client: &HttpClient, request: Request<Full<Bytes>>) -> Answer {
    let started = Instant::now();
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("an answer in time")
        .expect("an HTTP answer");
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().expect("ascii").to_owned());
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let elapsed = started.elapsed();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        retry_after,
        json,
        elapsed,
    }
}

async fn complete(client: &HttpClient, addr: SocketAddr, prompt: &str) -> Answer {
    let body = serde_json::json!({ "prompt": prompt }).to_string();
    call(
        client,
        Method::POST,
        format!("http://{addr}/v1/complete"),
        &body,
    )
    .await
}

/// Another process's write lock, as a `db.lock` fault (`mode: immediate`) takes it.
fn lock(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).expect("open the jobs db");
    conn.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    conn
}

fn release(conn: rusqlite::Connection) {
    conn.execute_batch("ROLLBACK").expect("release the lock");
}

/// Waits (bounded) until `ready` holds; the demo has no event to await for these.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_through_the_gateway_write_job_rows() {
    let f = start(DemoConfig::default()).await;
    let http = client();
    let mut ids = Vec::new();
    for i in 0..5 {
        let answer = complete(&http, f.demo.gateway_addr(), &format!("prompt {i}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        let tokens = answer.json["tokens"].as_u64().expect("tokens");
        let completion = answer.json["completion"].as_str().expect("completion");
        assert!(tokens >= 1);
        assert_eq!(completion.split(' ').count() as u64, tokens);
        ids.push(answer.json["id"].as_i64().expect("id"));
    }
    // The service answers directly as well, to a client that says what it sends.
    let request = Request::post(format!("http://{}/v1/complete", f.demo.service_addr()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(br#"{"prompt":"direct"}"#)))
        .expect("request");
    let direct = send(&http, request).await;
    assert_eq!(direct.status, StatusCode::OK, "{direct:?}");

    let conn = rusqlite::Connection::open(&f.db).expect("open");
    let mut stmt = conn
        .prepare("SELECT id, prompt, status, created_at, finished_at FROM jobs ORDER BY id")
        .expect("prepare");
    let rows: Vec<(i64, String, String, String, Option<String>)> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows.len(), 6);
    for (i, (id, prompt, status, created, finished)) in rows.iter().take(5).enumerate() {
        assert_eq!(*id, ids[i]);
        assert_eq!(prompt, &format!("prompt {i}"));
        assert_eq!(status, "done");
        let finished = finished.as_deref().expect("finished_at set");
        assert!(created.as_str() <= finished, "{created} <= {finished}");
    }
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal mode");
    assert_eq!(journal, "wal");

    let stats = f.demo.stats();
    assert_eq!(
        (
            stats.requests,
            stats.ok,
            stats.rate_limited,
            stats.server_errors,
            stats.in_flight
        ),
        (5, 5, 0, 0, 0),
        "{stats:?}"
    );
    assert_eq!((stats.jobs_written, stats.jobs_done), (6, 6), "{stats:?}");
    assert!(stats.service_connections >= 2, "{stats:?}");

    for addr in [f.demo.gateway_addr(), f.demo.service_addr()] {
        let health = call(&http, Method::GET, format!("http://{addr}/healthz"), "").await;
        assert_eq!(health.status, StatusCode::OK);
        assert_eq!(health.json["status"], "ok");
    }
    // A request the service rejects is passed back as it is, and writes nothing.
    let bad = call(
        &http,
        Method::POST,
        format!("http://{}/v1/complete", f.demo.gateway_addr()),
        r#"{"nope":1}"#,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{bad:?}");
    assert!(
        bad.json["error"]
            .as_str()
            .expect("error")
            .contains("prompt")
    );
    let unknown = call(
        &http,
        Method::GET,
        format!("http://{}/v1/nothing", f.demo.gateway_addr()),
        "",
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(f.demo.stats().jobs_written, 6);
    f.demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_concurrency_limit_the_gateway_answers_429_at_once() {
    let f = start(DemoConfig {
        concurrency: 2,
        busy_timeout: Duration::from_secs(30),
        ..DemoConfig::default()
    })
    .await;
    let http = client();
    let gateway = f.demo.gateway_addr();
    // Two requests stuck behind a database lock fill the gateway's two slots.
    let held = lock(&f.db);
    let stuck: Vec<_> = (0..2)
        .map(|i| {
            let http = http.clone();
            tokio::spawn(async move { complete(&http, gateway, &format!("stuck {i}")).await })
        })
        .collect();
    until("two requests in flight", || f.demo.stats().in_flight == 2).await;

    let excess: Vec<_> = (0..5)
        .map(|i| {
            let http = http.clone();
            tokio::spawn(async move { complete(&http, gateway, &format!("excess {i}")).await })
        })
        .collect();
    for task in excess {
        let answer = task.await.expect("task");
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{answer:?}");
        assert_eq!(answer.retry_after.as_deref(), Some("1"));
        // At once, while the lock is still held: nothing queued.
        assert!(answer.elapsed < Duration::from_secs(5), "{answer:?}");
    }
    assert_eq!(f.demo.stats().rate_limited, 5);

    release(held);
    for task in stuck {
        let answer = task.await.expect("task");
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    let stats = f.demo.stats();
    assert_eq!(
        (
            stats.requests,
            stats.ok,
            stats.rate_limited,
            stats.in_flight,
            stats.jobs_done
        ),
        (7, 2, 5, 0, 2),
        "{stats:?}"
    );
    f.demo.shutdown().await;
}

const HOLD: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_shorter_than_the_busy_timeout_shows_as_latency() {
    let f = start(DemoConfig {
        busy_timeout: Duration::from_secs(30),
        ..DemoConfig::default()
    })
    .await;
    let http = client();
    let gateway = f.demo.gateway_addr();
    let held = lock(&f.db);
    let started = Instant::now();
    let request = tokio::spawn(async move { complete(&http, gateway, "stalled").await });
    // The hold itself is the fault: a timed wait is the point here.
    tokio::time::sleep(HOLD).await;
    release(held);
    let answer = request.await.expect("task");
    let elapsed = started.elapsed();
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(elapsed >= HOLD, "answered {elapsed:?} into a {HOLD:?} lock");
    assert!(elapsed < HOLD + Duration::from_secs(8), "{elapsed:?}");
    assert_eq!(f.demo.stats().jobs_done, 1);
    f.demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_past_the_busy_timeout_is_a_503() {
    let busy_timeout = Duration::from_millis(300);
    let f = start(DemoConfig {
        busy_timeout,
        ..DemoConfig::default()
    })
    .await;
    let http = client();
    let held = lock(&f.db);
    // Held until the answer is in: the service gives up on its own.
    let answer = complete(&http, f.demo.gateway_addr(), "stalled").await;
    release(held);
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}");
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    assert_eq!(answer.json["error"], "database is locked");
    assert!(answer.elapsed >= busy_timeout, "{answer:?}");
    let stats = f.demo.stats();
    assert_eq!(
        (stats.server_errors, stats.jobs_written),
        (1, 0),
        "{stats:?}"
    );

    // And once the lock is gone the service is healthy again.
    let answer = complete(&http, f.demo.gateway_addr(), "after").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    f.demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragile_mode_fails_at_once_under_the_same_lock() {
    let fragile = DemoConfig::fragile();
    assert_eq!(fragile.busy_timeout, Duration::ZERO);
    assert_eq!(fragile.concurrency, 16);
    let f = start(fragile).await;
    let http = client();
    // Fault-free, it works.
    let answer = complete(&http, f.demo.gateway_addr(), "calm").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");

    let held = lock(&f.db);
    let answer = complete(&http, f.demo.gateway_addr(), "stalled").await;
    release(held);
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}");
    assert_eq!(answer.json["error"], "database is locked");
    // No waiting at all: far below the default busy timeout of 3 s.
    assert!(answer.elapsed < Duration::from_secs(2), "{answer:?}");
    f.demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_the_timeout_is_a_504() {
    let timeout = Duration::from_millis(300);
    let f = start(DemoConfig {
        upstream_timeout: timeout,
        busy_timeout: Duration::from_secs(30),
        ..DemoConfig::default()
    })
    .await;
    let http = client();
    let held = lock(&f.db);
    let answer = complete(&http, f.demo.gateway_addr(), "slow").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{answer:?}");
    assert!(answer.elapsed >= timeout, "{answer:?}");
    assert!(f.demo.stats().server_errors == 1);
    release(held);
    // Once the lock is gone the next request goes through.
    let answer = complete(&http, f.demo.gateway_addr(), "after").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    f.demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_makes_the_gateway_open_new_upstream_connections() {
    let f = start(DemoConfig {
        recycle_every: 2,
        ..DemoConfig::default()
    })
    .await;
    let http = client();
    for i in 0..10 {
        let answer = complete(&http, f.demo.gateway_addr(), &format!("{i}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    // Every second request closes its connection: at least five were opened.
    let stats = f.demo.stats();
    assert!(stats.service_connections >= 5, "{stats:?}");
    f.demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_frees_both_ports() {
    let f = start(DemoConfig::default()).await;
    let http = client();
    let answer = complete(&http, f.demo.gateway_addr(), "bye").await;
    assert_eq!(answer.status, StatusCode::OK);
    let (gateway, service) = (f.demo.gateway_addr(), f.demo.service_addr());
    // The client still holds a keep-alive connection to the gateway: shutdown
    // closes it rather than waiting for it.
    tokio::time::timeout(PATIENCE, f.demo.shutdown())
        .await
        .expect("shutdown in time");
    for addr in [gateway, service] {
        let refused = tokio::net::TcpStream::connect(addr).await;
        assert!(refused.is_err(), "{addr} still accepts");
        tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("{addr} is free after shutdown: {e}"));
    }
    drop(f._dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_demo_ends_open_connections() {
    let f = start(DemoConfig::default()).await;
    let mut stream = tokio::net::TcpStream::connect(f.demo.gateway_addr())
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: demo\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains(r#"{"status":"ok"}"#) {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "closed before the answer");
        seen.extend_from_slice(&buf[..n]);
    }
    // A keep-alive connection is open now; dropping the demo aborts it.
    drop(f.demo);
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .expect("the connection ends in time");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_or_a_zero_limit_is_refused() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Demo::start(DemoConfig {
        gateway: taken.local_addr().expect("addr"),
        service: "127.0.0.1:0".parse().expect("addr"),
        db_path: dir.path().join("jobs.db"),
        ..DemoConfig::default()
    })
    .await
    .expect_err("the gateway port is taken");
    assert!(
        matches!(
            err,
            DemoError::Bind {
                what: "gateway",
                ..
            }
        ),
        "{err}"
    );

    let err = Demo::start(DemoConfig {
        concurrency: 0,
        ..DemoConfig::default()
    })
    .await
    .expect_err("no concurrency");
    assert!(matches!(err, DemoError::Config(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_stream_through_the_gateway_at_a_steady_pace() {
    let f = start(DemoConfig {
        token_interval: Duration::from_millis(30),
        base_latency: Duration::from_millis(5),
        ..DemoConfig::default()
    })
    .await;
    let client = client();
    let body = serde_json::json!({
        "model": "demo", "max_tokens": 6, "stream": true,
        "messages": [{ "role": "user", "content": "say something" }],
    });
    let request = Request::post(format!(
        "http://{}/v1/chat/completions",
        f.demo.gateway_addr()
    ))
    .body(Full::new(Bytes::from(body.to_string())))
    .expect("request");
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("an answer in time")
        .expect("an HTTP answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    // Frames arrive as the service writes them: the gateway does not buffer.
    let mut body = response.into_body();
    let mut text = String::new();
    let mut token_times = Vec::new();
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("a frame in time")
    {
        let frame = frame.expect("frame");
        if let Some(d) = frame.data_ref() {
            let s = String::from_utf8_lossy(d);
            if s.contains("\"content\":\"") && !s.contains("\"content\":\"\"") {
                token_times.push(Instant::now());
            }
            text.push_str(&s);
        }
    }
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let last: serde_json::Value =
        serde_json::from_str(events[events.len() - 2]).expect("last chunk is JSON");
    let n = token_times.len() as u64;
    assert!((1..=6).contains(&n), "{text}");
    assert_eq!(last["usage"]["completion_tokens"], n, "{text}");
    assert!(last["choices"][0]["finish_reason"].is_string(), "{text}");
    for pair in token_times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(20) && gap <= Duration::from_millis(200),
            "gap {gap:?}"
        );
    }
    // The stream held its place under the gateway limit until it ended.
    until("the stream's place released", || {
        f.demo.stats().in_flight == 0
    })
    .await;

    // Not streamed: one JSON completion with usage.
    let body = serde_json::json!({ "model": "demo", "prompt": "hi", "max_tokens": 3 });
    let a = call(
        &client,
        Method::POST,
        format!("http://{}/v1/completions", f.demo.gateway_addr()),
        &body.to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.json);
    assert!(a.json["choices"][0]["text"].is_string(), "{:?}", a.json);
    assert!(
        a.json["usage"]["completion_tokens"]
            .as_u64()
            .is_some_and(|n| (1..=3).contains(&n))
    );
}
