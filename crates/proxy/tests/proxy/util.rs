//! Helpers: an echo server, a proxy server with its API on port 0, a small
//! HTTP client for the API, and timing of round trips.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use faultline_proxy::{ProxyServer, api};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every wait in these tests is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(5);

/// An echo server on 127.0.0.1:0; echoes until the client half-closes, then closes.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if sock.write_all(&buf[..n]).await.is_err() {
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

/// A proxy server and its Toxiproxy API on 127.0.0.1:0.
pub struct Harness {
    pub api: SocketAddr,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Harness {
    pub async fn start() -> Self {
        let server = ProxyServer::new().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap();
        tokio::spawn(api::serve(listener, server, std::future::pending()));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self { api, client }
    }

    /// Sends one API request; returns the status and the body parsed as JSON
    /// (Null when empty).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.api, path))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .unwrap();
        let resp = tokio::time::timeout(LIMIT, self.client.request(req))
            .await
            .expect("API answers within the limit")
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into())
            })
        };
        (status, json)
    }

    /// Creates a proxy to `upstream` through the API and returns its listen address.
    pub async fn proxy_to(&self, name: &str, upstream: SocketAddr) -> SocketAddr {
        let body = format!(r#"{{"name":"{name}","listen":"127.0.0.1:0","upstream":"{upstream}"}}"#);
        let (status, json) = self.call("POST", "/proxies", Some(&body)).await;
        assert_eq!(status, 201, "{json}");
        json["listen"].as_str().unwrap().parse().unwrap()
    }

    pub async fn add_toxic(&self, proxy: &str, toxic: &str) {
        let (status, json) = self
            .call("POST", &format!("/proxies/{proxy}/toxics"), Some(toxic))
            .await;
        assert_eq!(status, 200, "{json}");
    }

    pub async fn remove_toxic(&self, proxy: &str, toxic: &str) {
        let (status, json) = self
            .call("DELETE", &format!("/proxies/{proxy}/toxics/{toxic}"), None)
            .await;
        assert_eq!(status, 204, "{json}");
    }
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    let s = tokio::time::timeout(LIMIT, TcpStream::connect(addr))
        .await
        .expect("connect within the limit")
        .unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// One echo round trip of `msg`; returns its duration.
pub async fn round_trip(sock: &mut TcpStream, msg: &[u8]) -> Duration {
    let mut back = vec![0u8; msg.len()];
    let start = Instant::now();
    sock.write_all(msg).await.unwrap();
    tokio::time::timeout(LIMIT, sock.read_exact(&mut back))
        .await
        .expect("echo within the limit")
        .unwrap();
    let took = start.elapsed();
    assert_eq!(back, msg);
    took
}

/// Median of `n` round trips.
pub async fn median_rtt(sock: &mut TcpStream, n: usize) -> Duration {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        v.push(round_trip(sock, format!("ping-{i}").as_bytes()).await);
    }
    v.sort();
    v[n / 2]
}

/// Reads until EOF or error, bounded by LIMIT. Returns the bytes and the error.
pub async fn read_to_end(sock: &mut TcpStream) -> (Vec<u8>, Option<std::io::Error>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Err(_) => panic!("no EOF within {LIMIT:?} (got {} bytes)", out.len()),
            Ok(Ok(0)) => return (out, None),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (out, Some(e)),
        }
    }
}
