//! Draining a proxy (`Proxy::begin_drain`, `Proxy::drain`), seen from real
//! client sockets: held data released at once, idle connections closed with a
//! FIN, a request awaiting its answer left to finish, a busy connection reset
//! at the deadline. Bounds are loose: the machine is shared and loaded.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use faultline_proxy::toxic::Latency;
use faultline_proxy::{Proxy, ProxyConfig, ProxyServer, Stream, Toxic, ToxicKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::util::{LIMIT, connect, echo_server, read_to_end};

fn proxy_to(server: &ProxyServer, name: &str, upstream: SocketAddr) -> (Proxy, SocketAddr) {
    let proxy = server
        .create(ProxyConfig::new(name, "127.0.0.1:0", upstream.to_string()))
        .unwrap();
    let listen = proxy.listen_addr().unwrap();
    (proxy, listen)
}

fn latency(ms: u64) -> Toxic {
    Toxic::new(
        ToxicKind::Latency(Latency {
            latency: ms,
            jitter: 0,
        }),
        Stream::Downstream,
    )
}

/// A server answering each message with `pong` after `delay`.
async fn slow_server(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    if sock.write_all(b"pong").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_releases_held_data_then_closes_the_idle_connection_with_a_fin() {
    let server = ProxyServer::new().unwrap();
    let (proxy, listen) = proxy_to(&server, "drain-idle", echo_server().await);
    proxy.add_toxic(latency(600)).unwrap();
    let mut sock = connect(listen).await;
    let sent = Instant::now();
    sock.write_all(b"request").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // The echo is held for 600 ms; the drain releases it now.
    proxy.begin_drain();
    let mut back = [0u8; 7];
    tokio::time::timeout(LIMIT, sock.read_exact(&mut back))
        .await
        .expect("the held echo within the limit")
        .unwrap();
    let took = sent.elapsed();
    assert_eq!(&back, b"request");
    assert!(
        took < Duration::from_millis(400),
        "held data released at once, not at its 600 ms release: {took:?}"
    );

    // Idle now: the drain closes it with a FIN, and ends once this client
    // closes its side too.
    let started = Instant::now();
    let drain = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.drain(Instant::now() + Duration::from_secs(2)).await })
    };
    let (rest, err) = read_to_end(&mut sock).await;
    assert!(
        rest.is_empty() && err.is_none(),
        "a clean EOF: {rest:?} {err:?}"
    );
    let eof_after = started.elapsed();
    assert!(
        eof_after >= Duration::from_millis(45),
        "closed only after the quiet period: {eof_after:?}"
    );
    drop(sock);
    let report = tokio::time::timeout(LIMIT, drain).await.unwrap().unwrap();
    assert_eq!((report.closed, report.reset, report.left), (1, 0, 0));
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "done long before the deadline: {:?}",
        started.elapsed()
    );
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_a_request_awaiting_its_answer_finish() {
    let server = ProxyServer::new().unwrap();
    let (proxy, listen) = proxy_to(
        &server,
        "drain-wait",
        slow_server(Duration::from_millis(300)).await,
    );
    let mut sock = connect(listen).await;
    sock.write_all(b"ping").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // No bytes move for 300 ms, but the last went upstream: a request the
    // server still works on. The drain must not close it under the request.
    let started = Instant::now();
    let drain = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.drain(Instant::now() + Duration::from_secs(2)).await })
    };
    let mut back = [0u8; 4];
    tokio::time::timeout(LIMIT, sock.read_exact(&mut back))
        .await
        .expect("the answer within the limit")
        .expect("the answer, not a close");
    assert_eq!(&back, b"pong");
    let (rest, err) = read_to_end(&mut sock).await;
    assert!(
        rest.is_empty() && err.is_none(),
        "then a clean EOF: {rest:?} {err:?}"
    );
    drop(sock);
    let report = tokio::time::timeout(LIMIT, drain).await.unwrap().unwrap();
    assert_eq!((report.closed, report.reset), (1, 0));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "closed after the answer, before the deadline: {took:?}"
    );
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_resets_a_connection_still_busy_at_the_deadline() {
    let server = ProxyServer::new().unwrap();
    // A request the server works on past the deadline: never idle.
    let (proxy, listen) = proxy_to(
        &server,
        "drain-busy",
        slow_server(Duration::from_secs(10)).await,
    );
    let mut sock = connect(listen).await;
    sock.write_all(b"ping").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let bound = Duration::from_millis(300);
    let started = Instant::now();
    let report = proxy.drain(started + bound).await;
    let took = started.elapsed();
    assert_eq!((report.closed, report.reset, report.left), (0, 1, 0));
    assert!(
        took >= bound - Duration::from_millis(10) && took < bound + Duration::from_millis(400),
        "bounded by the deadline: {took:?}"
    );
    let mut buf = [0u8; 4];
    let seen = tokio::time::timeout(LIMIT, sock.read(&mut buf))
        .await
        .expect("the client learns at once");
    assert!(
        matches!(seen, Err(ref e) if e.kind() == ErrorKind::ConnectionReset),
        "the busy client is reset, not closed: {seen:?}"
    );
    server.shutdown();
}
