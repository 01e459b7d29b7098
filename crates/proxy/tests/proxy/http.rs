//! L7 faults with real HTTP requests through a hyper upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use faultline_proxy::http::{HttpFault, HttpFaultKind, HttpProxy};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::util::LIMIT;

/// An HTTP/1.1 upstream answering `ok <method> <path>`; counts its TCP connections.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&conns);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let text = format!("ok {} {}", req.method(), req.uri().path());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (addr, conns)
}

/// One client connection (keep-alive) to `addr`.
async fn client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let sock = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn send(
    c: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    method: &str,
    path: &str,
) -> (u16, Option<String>, String) {
    c.ready().await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway")
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(LIMIT, c.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, retry, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_error_matches_path_method_and_sets_retry_after() {
    let (up, _) = upstream().await;
    let fault: HttpFault = serde_json::from_str(
        r#"{"type":"http.error","status":429,"path_prefix":"/v1/","method":"POST"}"#,
    )
    .unwrap();
    let proxy = HttpProxy::start("127.0.0.1:0".parse().unwrap(), up.to_string(), vec![fault])
        .await
        .unwrap();
    let mut c = client(proxy.local_addr()).await;
    let (s, retry, body) = send(&mut c, "POST", "/v1/complete").await;
    assert_eq!((s, retry.as_deref()), (429, Some("1")), "{body}");
    // Same keep-alive connection: non-matching method and path pass through.
    assert_eq!(
        send(&mut c, "GET", "/v1/complete").await.2,
        "ok GET /v1/complete"
    );
    assert_eq!(send(&mut c, "POST", "/health").await.2, "ok POST /health");

    // 503 with an explicit Retry-After, then removal restores service on the same connection.
    proxy
        .set_faults(vec![HttpFault::new(HttpFaultKind::Error {
            status: 503,
            retry_after: Some(7),
            body: None,
        })])
        .unwrap();
    let (s, retry, _) = send(&mut c, "GET", "/x").await;
    assert_eq!((s, retry.as_deref()), (503, Some("7")));
    proxy.set_faults(Vec::new()).unwrap();
    assert_eq!(send(&mut c, "GET", "/x").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_error_probability_is_per_request() {
    let (up, _) = upstream().await;
    let fault: HttpFault =
        serde_json::from_str(r#"{"type":"http.error","status":503,"probability":0.5}"#).unwrap();
    let proxy = HttpProxy::start("127.0.0.1:0".parse().unwrap(), up.to_string(), vec![fault])
        .await
        .unwrap();
    let mut c = client(proxy.local_addr()).await;
    let mut errors = 0;
    for _ in 0..200 {
        if send(&mut c, "GET", "/p").await.0 == 503 {
            errors += 1;
        }
    }
    assert!((60..=140).contains(&errors), "{errors} of 200 at p=0.5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_delay_keeps_keep_alive_connections() {
    let (up, upstream_conns) = upstream().await;
    let fault: HttpFault =
        serde_json::from_str(r#"{"type":"http.delay","delay_ms":100,"path_prefix":"/slow"}"#)
            .unwrap();
    let proxy = HttpProxy::start("127.0.0.1:0".parse().unwrap(), up.to_string(), vec![fault])
        .await
        .unwrap();
    let mut c = client(proxy.local_addr()).await;
    let start = Instant::now();
    assert_eq!(send(&mut c, "GET", "/fast").await.0, 200);
    assert!(start.elapsed() < Duration::from_millis(90));
    for _ in 0..3 {
        let start = Instant::now();
        let (s, _, body) = send(&mut c, "GET", "/slow/q").await;
        assert_eq!((s, body.as_str()), (200, "ok GET /slow/q"));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_millis(400),
            "{took:?}"
        );
    }
    // Four requests, one client connection, one pooled upstream connection.
    assert_eq!(upstream_conns.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_stats_count_requests_matches_errors_and_delays() {
    let (up, _) = upstream().await;
    let faults: Vec<HttpFault> = serde_json::from_str(
        r#"[{"type":"http.delay","delay_ms":20,"jitter_ms":10,"path_prefix":"/slow"},
            {"type":"http.error","status":429,"body":"slow down","path_prefix":"/busy"}]"#,
    )
    .unwrap();
    let proxy = HttpProxy::start("127.0.0.1:0".parse().unwrap(), up.to_string(), faults)
        .await
        .unwrap();
    let mut c = client(proxy.local_addr()).await;
    assert_eq!(send(&mut c, "GET", "/other").await.0, 200);
    for _ in 0..3 {
        let start = Instant::now();
        assert_eq!(send(&mut c, "GET", "/slow").await.0, 200);
        // 20 ms +- 10 ms: never under 10 ms.
        assert!(start.elapsed() >= Duration::from_millis(10));
    }
    let (s, retry, body) = send(&mut c, "POST", "/busy").await;
    assert_eq!(
        (s, retry.as_deref(), body.as_str()),
        (429, Some("1"), "slow down")
    );
    assert_eq!(
        proxy.stats(),
        faultline_proxy::http::HttpStats {
            requests: 5,
            matched: 4,
            errors: 1,
            delayed: 3,
            bad_gateway: 0,
            ..Default::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_forwards_delayed_requests_and_closes_keep_alive_connections() {
    let (up, _) = upstream().await;
    let delay = HttpFault::new(HttpFaultKind::Delay {
        delay_ms: 2000,
        jitter_ms: 0,
    });
    let proxy = HttpProxy::start("127.0.0.1:0".parse().unwrap(), up.to_string(), vec![delay])
        .await
        .unwrap();
    let addr = proxy.local_addr();
    // One connection with a request held by the 2 s delay, one idle.
    let mut busy = client(addr).await;
    let mut idle = client(addr).await;
    let started = Instant::now();
    let held = tokio::spawn(async move {
        let r = send(&mut busy, "GET", "/held").await;
        (r, busy)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    proxy.begin_drain();
    let ((status, _, body), busy) = tokio::time::timeout(LIMIT, held).await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (200, "ok GET /held"));
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "the held request is forwarded at once: {:?}",
        started.elapsed()
    );
    // Without the fault, requests pass at once.
    let (status, _, _) = send(&mut idle, "GET", "/after").await;
    assert_eq!(status, 200);

    let drained = Instant::now();
    let left = proxy.drain(Instant::now() + Duration::from_secs(2)).await;
    assert_eq!(left, 0, "both keep-alive connections closed");
    assert!(drained.elapsed() < Duration::from_millis(1000));
    // Each client sees its idle connection closed, not a failed request.
    let until = Instant::now() + LIMIT;
    while !(busy.is_closed() && idle.is_closed()) {
        assert!(Instant::now() < until, "the clients' connections stay open");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
