//! L7 HTTP faults for the gateway case: an HTTP-aware reverse proxy (hyper; the
//! server side speaks HTTP/1.1 and h2c, the client side pools keep-alive
//! connections to the upstream) that injects `http.error` (a status such as 429
//! with `Retry-After`, or 503, instead of forwarding) and `http.delay` (a
//! queueing delay, with jitter, before forwarding), each with a probability
//! and a path-prefix/method match. Counters ([`HttpStats`]) say how many
//! requests came, matched, and were answered with an error or delayed; an
//! optional SO_MARK on upstream sockets ([`HttpProxyOptions`]) lets a
//! transparent redirect skip the proxy's own traffic.
//!
//! Limits: plain HTTP only (no TLS termination); the upstream is one
//! `host:port`; faults are evaluated per request in order, delays add up, and
//! the first matching error answers. The fault list is an immutable snapshot
//! swapped atomically, so changing faults never disturbs keep-alive
//! connections in flight.
//!
//! Draining ([`HttpProxy::begin_drain`], [`HttpProxy::drain`]): the faults go
//! and requests held by a delay are forwarded at once; then each connection
//! is shut down gracefully (HTTP/1: closed when idle, or after the response in
//! flight, which carries `connection: close`; h2: GOAWAY), within a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::error::ProxyError;
use crate::link::connect_upstream;

/// What an HTTP fault does to a matching request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum HttpFaultKind {
    /// Answer with `status` instead of forwarding.
    #[serde(rename = "http.error")]
    Error {
        /// The status, e.g. 429 or 503.
        status: u16,
        /// `Retry-After` in seconds; a 429 without it gets `Retry-After: 1`.
        #[serde(default)]
        retry_after: Option<u64>,
        /// Body answered instead of the default JSON error; served as JSON when
        /// it starts with `{` or `[`, as plain text otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
    /// Hold the request this long before forwarding (queueing delay).
    #[serde(rename = "http.delay")]
    Delay {
        /// Milliseconds.
        delay_ms: u64,
        /// Each delay is `delay_ms` plus or minus up to this, uniformly.
        #[serde(default)]
        jitter_ms: u64,
    },
}

/// One HTTP fault: what it does and which requests it hits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpFault {
    /// The effect.
    #[serde(flatten)]
    pub kind: HttpFaultKind,
    /// Probability per matching request, in [0, 1] (default 1).
    #[serde(default = "one")]
    pub probability: f64,
    /// Only paths starting with this (default: all).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Only this method, case-insensitive (default: all).
    #[serde(default)]
    pub method: Option<String>,
}

fn one() -> f64 {
    1.0
}

impl HttpFault {
    /// A fault hitting every request.
    pub fn new(kind: HttpFaultKind) -> Self {
        Self {
            kind,
            probability: 1.0,
            path_prefix: None,
            method: None,
        }
    }

    fn matches(&self, method: &hyper::Method, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
    }

    fn validate(&self) -> Result<(), ProxyError> {
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(ProxyError::BadRequestBody(format!(
                "probability must be between 0 and 1, got {}",
                self.probability
            )));
        }
        if let HttpFaultKind::Error { status, .. } = self.kind
            && StatusCode::from_u16(status).is_err()
        {
            return Err(ProxyError::BadRequestBody(format!(
                "status {status} is not an HTTP status"
            )));
        }
        Ok(())
    }
}

type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Tuning of an [`HttpProxy`].
#[derive(Debug, Clone, Default)]
pub struct HttpProxyOptions {
    /// SO_MARK on upstream sockets, so an nftables redirect can exclude the
    /// proxy's own traffic (transparent mode).
    pub upstream_mark: Option<u32>,
}

/// What an [`HttpProxy`] did since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpStats {
    /// Requests received.
    pub requests: u64,
    /// Requests that matched the path and method of at least one fault.
    pub matched: u64,
    /// Requests answered with an injected error status.
    pub errors: u64,
    /// Requests held back by an injected delay.
    pub delayed: u64,
    /// Requests the upstream failed (answered 502).
    pub bad_gateway: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    matched: AtomicU64,
    errors: AtomicU64,
    delayed: AtomicU64,
    bad_gateway: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Connects to the upstream with the proxy's socket options (SO_MARK); the
/// connector hyper-util's pooled client uses.
#[derive(Debug, Clone)]
struct UpstreamConnector {
    mark: Option<u32>,
}

type ConnectFuture = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TcpStream>>> + Send>>;

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mark = self.mark;
        Box::pin(async move {
            let Some(authority) = uri.authority() else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("upstream URI {uri} has no host:port"),
                ));
            };
            let stream = connect_upstream(authority.as_str(), mark).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Drain states ([`Shared::drain`]).
const DRAIN_NONE: u8 = 0;
/// Faults removed; delayed requests forwarded at once.
const DRAIN_RELEASE: u8 = 1;
/// Connections shut down gracefully.
const DRAIN_CLOSE: u8 = 2;

struct Shared {
    upstream: String,
    faults: ArcSwap<Vec<HttpFault>>,
    client: Client<UpstreamConnector, Incoming>,
    counters: Counters,
    /// One of `DRAIN_*`.
    drain: watch::Sender<u8>,
    /// Client connections being served, and a signal when none is.
    live: AtomicUsize,
    none_live: Notify,
}

/// One live client connection, counted until its task ends.
struct Live(Arc<Shared>);

impl Live {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.live.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(shared))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_live.notify_waiters();
        }
    }
}

/// A running HTTP fault proxy. Stops when dropped or on [`HttpProxy::stop`].
#[derive(Debug)]
pub struct HttpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl HttpProxy {
    /// Listens on `listen` and forwards to `upstream` (`host:port`).
    pub async fn start(
        listen: SocketAddr,
        upstream: impl Into<String>,
        faults: Vec<HttpFault>,
    ) -> Result<Self, ProxyError> {
        Self::start_with(listen, upstream, faults, HttpProxyOptions::default()).await
    }

    /// [`HttpProxy::start`] with options (the upstream sockets' mark).
    pub async fn start_with(
        listen: SocketAddr,
        upstream: impl Into<String>,
        faults: Vec<HttpFault>,
        options: HttpProxyOptions,
    ) -> Result<Self, ProxyError> {
        for f in &faults {
            f.validate()?;
        }
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ProxyError::Http {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ProxyError::Http {
            addr: listen,
            source,
        })?;
        let connector = UpstreamConnector {
            mark: options.upstream_mark,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let shared = Arc::new(Shared {
            upstream: upstream.into(),
            faults: ArcSwap::from_pointee(faults),
            client,
            counters: Counters::default(),
            drain: watch::channel(DRAIN_NONE).0,
            live: AtomicUsize::new(0),
            none_live: Notify::new(),
        });
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop_rx));
        tracing::info!(listen = %addr, upstream = %shared.upstream, "http fault proxy started");
        Ok(Self { addr, shared, stop })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the faults; requests already waiting keep theirs.
    pub fn set_faults(&self, faults: Vec<HttpFault>) -> Result<(), ProxyError> {
        for f in &faults {
            f.validate()?;
        }
        self.shared.faults.store(Arc::new(faults));
        Ok(())
    }

    /// The current faults.
    pub fn faults(&self) -> Vec<HttpFault> {
        self.shared.faults.load().as_ref().clone()
    }

    /// What the proxy did since it started.
    pub fn stats(&self) -> HttpStats {
        let c = &self.shared.counters;
        HttpStats {
            requests: c.requests.load(Ordering::Relaxed),
            matched: c.matched.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
            bad_gateway: c.bad_gateway.load(Ordering::Relaxed),
        }
    }

    /// First step of a drain: removes every fault and forwards the requests a
    /// delay holds at once, so requests in flight finish without the fault.
    pub fn begin_drain(&self) {
        self.shared.faults.store(Arc::new(Vec::new()));
        self.shared.drain.send_if_modified(|s| {
            let was = *s;
            *s = (*s).max(DRAIN_RELEASE);
            *s != was
        });
    }

    /// Shuts every client connection down gracefully (HTTP/1: closed at once
    /// when idle, else after the response in flight, sent with `connection:
    /// close`; h2: GOAWAY) and waits for them to end until `deadline`. Returns
    /// how many are still open then; [`HttpProxy::stop`] ends those. Begins
    /// the drain if [`HttpProxy::begin_drain`] was not called. The listener
    /// keeps accepting: connections already redirected to it are drained too.
    pub async fn drain(&self, deadline: std::time::Instant) -> usize {
        self.begin_drain();
        self.shared.drain.send_replace(DRAIN_CLOSE);
        let deadline = tokio::time::Instant::from_std(deadline);
        let shared = &self.shared;
        loop {
            let notified = shared.none_live.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let live = shared.live.load(Ordering::Acquire);
            if live == 0 || tokio::time::timeout_at(deadline, notified).await.is_err() {
                let left = shared.live.load(Ordering::Acquire);
                tracing::info!(listen = %self.addr, left, "http fault proxy drained");
                return left;
            }
        }
    }

    /// Stops listening and closes its connections.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let (sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "http proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = sock.set_nodelay(true);
        let live = Live::new(&shared);
        let mut drain = shared.drain.subscribe();
        let shared = Arc::clone(&shared);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _live = live;
            let service = hyper::service::service_fn(move |req| handle(Arc::clone(&shared), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(sock), service);
            tokio::pin!(conn);
            let mut closing = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "http proxy connection ended with an error");
                        }
                        return;
                    }
                    _ = stop.changed() => return,
                    r = drain.wait_for(|s| *s >= DRAIN_CLOSE), if !closing => {
                        closing = true;
                        if r.is_ok() {
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
}

const HOP_BY_HOP: [header::HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let counters = &shared.counters;
    bump(&counters.requests);
    let faults = shared.faults.load_full();
    let mut delay = Duration::ZERO;
    let mut error: Option<&HttpFault> = None;
    {
        let path = req.uri().path();
        let mut rng = rand::rng();
        let mut matched = false;
        for f in faults.iter().filter(|f| f.matches(req.method(), path)) {
            matched = true;
            if f.probability < 1.0 && rng.random::<f64>() >= f.probability {
                continue;
            }
            match f.kind {
                HttpFaultKind::Delay {
                    delay_ms,
                    jitter_ms,
                } => {
                    let ms = if jitter_ms == 0 {
                        delay_ms
                    } else {
                        let low = delay_ms.saturating_sub(jitter_ms);
                        rng.random_range(low..=delay_ms.saturating_add(jitter_ms))
                    };
                    delay += Duration::from_millis(ms);
                }
                HttpFaultKind::Error { .. } => {
                    error = Some(f);
                    break;
                }
            }
        }
        if matched {
            bump(&counters.matched);
        }
    }
    if !delay.is_zero() {
        bump(&counters.delayed);
        // A drain forwards the request at once.
        let mut drain = shared.drain.subscribe();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = drain.wait_for(|s| *s >= DRAIN_RELEASE) => {}
        }
    }
    if let Some(HttpFault {
        kind:
            HttpFaultKind::Error {
                status,
                retry_after,
                body,
            },
        ..
    }) = error
    {
        bump(&counters.errors);
        return Ok(injected(*status, *retry_after, body.as_deref()));
    }

    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or("/", hyper::http::uri::PathAndQuery::as_str)
        .to_owned();
    let uri = match Uri::builder()
        .scheme("http")
        .authority(shared.upstream.as_str())
        .path_and_query(path_and_query)
        .build()
    {
        Ok(u) => u,
        Err(e) => {
            bump(&counters.bad_gateway);
            return Ok(bad_gateway(&format!(
                "bad upstream {}: {e}",
                shared.upstream
            )));
        }
    };
    *req.uri_mut() = uri;
    *req.version_mut() = hyper::Version::HTTP_11;
    for h in &HOP_BY_HOP {
        req.headers_mut().remove(h);
    }
    match shared.client.request(req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            for h in &HOP_BY_HOP {
                parts.headers.remove(h);
            }
            Ok(Response::from_parts(parts, Either::Left(body)))
        }
        Err(e) => {
            bump(&counters.bad_gateway);
            Ok(bad_gateway(&format!("upstream {}: {e}", shared.upstream)))
        }
    }
}

fn json_body(status: u16, error: &str) -> Full<Bytes> {
    let body = serde_json::json!({ "error": error, "status": status });
    Full::new(Bytes::from(body.to_string()))
}

fn injected(status: u16, retry_after: Option<u64>, body: Option<&str>) -> Response<ProxyBody> {
    let (body, content_type) = match body {
        None => (
            json_body(status, "injected by faultline http.error"),
            "application/json",
        ),
        Some(b) => {
            let json = b.trim_start().starts_with(['{', '[']);
            (
                Full::new(Bytes::copy_from_slice(b.as_bytes())),
                if json {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                },
            )
        }
    };
    let mut resp = Response::new(Either::Right(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let retry_after = retry_after.or((status == 429).then_some(1));
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn bad_gateway(detail: &str) -> Response<ProxyBody> {
    tracing::debug!(detail, "http fault proxy: bad gateway");
    let mut resp = Response::new(Either::Right(json_body(502, detail)));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_json_shape() {
        let f: HttpFault = serde_json::from_str(
            r#"{"type":"http.error","status":429,"probability":0.5,"path_prefix":"/v1","method":"POST"}"#,
        )
        .unwrap();
        assert_eq!(
            f.kind,
            HttpFaultKind::Error {
                status: 429,
                retry_after: None,
                body: None,
            }
        );
        assert!(f.matches(&hyper::Method::POST, "/v1/complete"));
        assert!(!f.matches(&hyper::Method::GET, "/v1/complete"));
        assert!(!f.matches(&hyper::Method::POST, "/v2"));
        let d: HttpFault = serde_json::from_str(r#"{"type":"http.delay","delay_ms":50}"#).unwrap();
        assert!(d.matches(&hyper::Method::GET, "/anything"));
        assert!((d.probability - 1.0).abs() < f64::EPSILON);
    }
}
