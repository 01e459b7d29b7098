//! L7 HTTP faults for the gateway case: an HTTP-aware reverse proxy (hyper; the
//! server side speaks HTTP/1.1 and h2c, the client side pools keep-alive
//! connections to the upstream) that injects `http.error` (a status such as 429
//! with `Retry-After`, or 503, instead of forwarding), `http.delay` (a
//! queueing delay, with jitter, before forwarding), the gateway limits
//! `http.rate_limit` (a token bucket per key, 429 with OpenAI's
//! `x-ratelimit-*-requests` headers) and `http.queue` (a concurrency limit
//! with a bounded FIFO queue and a timeout, 503 past it; see `gateway.rs`), and
//! the stream faults `http.stream_stall`, `http.stream_slow` and
//! `http.stream_truncate` on SSE and chunked responses (see `stream.rs`), each
//! with a path-prefix/method match and, where it makes sense, a probability.
//! Counters ([`HttpStats`]) say how many requests came, matched, and what was
//! done to them; an optional SO_MARK on upstream sockets ([`HttpProxyOptions`])
//! lets a transparent redirect skip the proxy's own traffic.
//!
//! Limits: plain HTTP only (no TLS termination); the upstream is one
//! `host:port`; faults are evaluated per request in order: a rate limit that
//! denies answers at once, delays add up, the first matching error answers,
//! a queue admits what is left, and of each stream fault kind the first that
//! matches applies. Rate limits and queues keep their state with the fault
//! list: replacing the list starts them afresh. The fault list is an
//! immutable snapshot swapped atomically, so changing faults never disturbs
//! keep-alive connections in flight.
//!
//! Draining ([`HttpProxy::begin_drain`], [`HttpProxy::drain`]): the faults go,
//! requests held by a delay or a queue are forwarded at once and held streams
//! let go; then each connection
//! is shut down gracefully (HTTP/1: closed when idle, or after the response in
//! flight, which carries `connection: close`; h2: GOAWAY), within a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, watch};

use crate::error::ProxyError;
pub use crate::gateway::RateKey;
use crate::gateway::{Admission, Queue, RateLimiter, Verdict, limit_headers};
use crate::link::connect_upstream;
pub use crate::stream::BodyError;
use crate::stream::{FaultedStream, Framing, Stall, StreamCounters, StreamPlan, Truncate};

/// What an HTTP fault does to a matching request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// A token bucket per key: past it, 429 with `Retry-After` and
    /// `x-ratelimit-*-requests`. `probability` does not apply.
    #[serde(rename = "http.rate_limit")]
    RateLimit {
        /// Tokens added per second.
        rate_per_s: f64,
        /// Bucket size.
        burst: u32,
        /// What a bucket belongs to.
        #[serde(default)]
        key: RateKey,
    },
    /// At most `concurrency` requests forwarded at once, `queue` more waiting
    /// in arrival order for up to `timeout_ms`; the rest answered 503.
    /// `probability` does not apply.
    #[serde(rename = "http.queue")]
    Queue {
        /// Requests upstream at once, each until its response body ends.
        concurrency: u32,
        /// Places in the queue.
        queue: u32,
        /// Longest wait, in milliseconds.
        timeout_ms: u64,
    },
    /// Hold a streamed response after `after_events` events (or at the first
    /// event end `after_ms` into it) for `hold_ms`, then go on or cut it.
    #[serde(rename = "http.stream_stall")]
    StreamStall {
        /// Events passed before the hold (default 0: before the first).
        #[serde(default)]
        after_events: u64,
        /// Instead of a count: the first event end this long into the response.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_ms: Option<u64>,
        /// Milliseconds.
        hold_ms: u64,
        /// End the stream with an error after the hold.
        #[serde(default)]
        cut: bool,
    },
    /// Let the events of a streamed response through at most this fast.
    #[serde(rename = "http.stream_slow")]
    StreamSlow {
        /// Events per second.
        events_per_s: f64,
    },
    /// End a streamed response after `after_events` events.
    #[serde(rename = "http.stream_truncate")]
    StreamTruncate {
        /// Events passed before the end.
        after_events: u64,
        /// SSE: send `data: [DONE]` before ending.
        #[serde(default)]
        done: bool,
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

    /// Checks the parameters as [`HttpProxy::start`] and
    /// [`HttpProxy::set_faults`] do.
    pub fn check(&self) -> Result<(), ProxyError> {
        self.validate()
    }

    fn validate(&self) -> Result<(), ProxyError> {
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(ProxyError::BadRequestBody(format!(
                "probability must be between 0 and 1, got {}",
                self.probability
            )));
        }
        let bad = |m: String| Err(ProxyError::BadRequestBody(m));
        match &self.kind {
            HttpFaultKind::Error { status, .. } if StatusCode::from_u16(*status).is_err() => {
                bad(format!("status {status} is not an HTTP status"))
            }
            HttpFaultKind::RateLimit { rate_per_s, .. }
                if !(rate_per_s.is_finite() && *rate_per_s > 0.0) =>
            {
                bad(format!("rate_per_s must be positive, got {rate_per_s}"))
            }
            HttpFaultKind::RateLimit { burst: 0, .. } => bad("burst must be at least 1".into()),
            HttpFaultKind::RateLimit {
                key: RateKey::Header(h),
                ..
            } if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_err() => {
                bad(format!("{h:?} is not a header name"))
            }
            HttpFaultKind::Queue { concurrency: 0, .. } => {
                bad("concurrency must be at least 1".into())
            }
            HttpFaultKind::Queue { timeout_ms: 0, .. } => bad("timeout_ms must be positive".into()),
            HttpFaultKind::StreamSlow { events_per_s }
                if !(events_per_s.is_finite() && *events_per_s > 0.0) =>
            {
                bad(format!("events_per_s must be positive, got {events_per_s}"))
            }
            _ => Ok(()),
        }
    }
}

/// The faults and the state the stateful ones keep (buckets, queues), swapped
/// as one snapshot: a new fault list starts with fresh state.
#[derive(Debug)]
struct Active {
    faults: Vec<HttpFault>,
    limiters: Vec<Option<RateLimiter>>,
    queues: Vec<Option<Queue>>,
}

impl Active {
    fn new(faults: Vec<HttpFault>) -> Self {
        let limiters = faults
            .iter()
            .map(|f| match &f.kind {
                HttpFaultKind::RateLimit {
                    rate_per_s,
                    burst,
                    key,
                } => Some(RateLimiter::new(*rate_per_s, *burst, key.clone())),
                _ => None,
            })
            .collect();
        let queues = faults
            .iter()
            .map(|f| match f.kind {
                HttpFaultKind::Queue {
                    concurrency,
                    queue,
                    timeout_ms,
                } => Some(Queue::new(
                    concurrency,
                    queue,
                    Duration::from_millis(timeout_ms),
                )),
                _ => None,
            })
            .collect();
        Self {
            faults,
            limiters,
            queues,
        }
    }
}

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
    /// Requests a rate limit answered 429.
    pub rate_limited: u64,
    /// Requests that waited in a queue for a slot.
    pub queued: u64,
    /// Requests a queue answered 503 (full, or no slot within the timeout).
    pub queue_rejected: u64,
    /// Requests waiting in a queue now.
    pub queue_waiting: u64,
    /// Streamed responses a stream fault was applied to.
    pub streams: u64,
    /// Streams held by `http.stream_stall`.
    pub stalled: u64,
    /// Streams cut after a stall.
    pub cut: u64,
    /// Streams ended early by `http.stream_truncate`.
    pub truncated: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    matched: AtomicU64,
    errors: AtomicU64,
    delayed: AtomicU64,
    bad_gateway: AtomicU64,
    rate_limited: AtomicU64,
    queued: AtomicU64,
    queue_rejected: AtomicU64,
    streams: Arc<StreamCounters>,
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
    active: ArcSwap<Active>,
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
            active: ArcSwap::from_pointee(Active::new(faults)),
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
        self.shared.active.store(Arc::new(Active::new(faults)));
        Ok(())
    }

    /// The current faults.
    pub fn faults(&self) -> Vec<HttpFault> {
        self.shared.active.load().faults.clone()
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
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            queued: c.queued.load(Ordering::Relaxed),
            queue_rejected: c.queue_rejected.load(Ordering::Relaxed),
            queue_waiting: self
                .shared
                .active
                .load()
                .queues
                .iter()
                .flatten()
                .map(|q| q.waiting() as u64)
                .sum(),
            streams: c.streams.streams.load(Ordering::Relaxed),
            stalled: c.streams.stalled.load(Ordering::Relaxed),
            cut: c.streams.cut.load(Ordering::Relaxed),
            truncated: c.streams.truncated.load(Ordering::Relaxed),
        }
    }

    /// First step of a drain: removes every fault and forwards the requests a
    /// delay or a queue holds at once, and lets held streams go, so requests
    /// in flight finish without the fault.
    pub fn begin_drain(&self) {
        self.shared.active.store(Arc::new(Active::new(Vec::new())));
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
        let (sock, peer) = tokio::select! {
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
            let service =
                hyper::service::service_fn(move |req| handle(Arc::clone(&shared), peer.ip(), req));
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

/// A response body: the upstream's as it is, one the proxy answers itself, or
/// the upstream's with stream faults; it holds the request's queue slot, if
/// any, until it ends.
#[derive(Debug)]
pub struct ProxyBody {
    inner: BodyInner,
    slot: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
enum BodyInner {
    Upstream(Incoming),
    Local(Full<Bytes>),
    Faulted(FaultedStream),
}

impl ProxyBody {
    fn local(body: Full<Bytes>) -> Self {
        Self {
            inner: BodyInner::Local(body),
            slot: None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            BodyInner::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::Upstream),
            BodyInner::Local(b) => Pin::new(b).poll_frame(cx).map_err(|e| match e {}),
            BodyInner::Faulted(b) => Pin::new(b).poll_frame(cx),
        };
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // The response is over: its queue slot goes to the next in line.
            this.slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            BodyInner::Upstream(b) => b.is_end_stream(),
            BodyInner::Local(b) => b.is_end_stream(),
            BodyInner::Faulted(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match &self.inner {
            BodyInner::Upstream(b) => b.size_hint(),
            BodyInner::Local(b) => b.size_hint(),
            BodyInner::Faulted(b) => b.size_hint(),
        }
    }
}

/// What the faults decided for one request, before anything waits.
#[derive(Default)]
struct Decision<'a> {
    matched: bool,
    delay: Duration,
    error: Option<&'a HttpFault>,
    limited: Option<Verdict>,
    queue: Option<&'a Queue>,
    plan: StreamPlan,
}

fn decide<'a>(active: &'a Active, peer: IpAddr, req: &Request<Incoming>) -> Decision<'a> {
    let path = req.uri().path();
    let mut rng = rand::rng();
    let mut d = Decision::default();
    for (i, f) in active.faults.iter().enumerate() {
        if !f.matches(req.method(), path) {
            continue;
        }
        d.matched = true;
        // Gateway limits hold for every matching request.
        match &f.kind {
            HttpFaultKind::RateLimit { .. } => {
                if let Some(limiter) = &active.limiters[i] {
                    let v = limiter.check(peer, req.headers());
                    let denied = !v.allowed;
                    // The tightest answer is the one the client sees.
                    if d.limited.is_none_or(|old| old.allowed || denied) {
                        d.limited = Some(v);
                    }
                    if denied {
                        return d;
                    }
                }
                continue;
            }
            HttpFaultKind::Queue { .. } => {
                d.queue = d.queue.or(active.queues[i].as_ref());
                continue;
            }
            _ => {}
        }
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
                d.delay += Duration::from_millis(ms);
            }
            HttpFaultKind::Error { .. } => {
                d.error = Some(f);
                break;
            }
            HttpFaultKind::StreamStall {
                after_events,
                after_ms,
                hold_ms,
                cut,
            } => {
                d.plan.stall = d.plan.stall.or(Some(Stall {
                    after_events,
                    after: after_ms.map(Duration::from_millis),
                    hold: Duration::from_millis(hold_ms),
                    cut,
                }));
            }
            HttpFaultKind::StreamSlow { events_per_s } => {
                d.plan.pace = d
                    .plan
                    .pace
                    .or(Some(Duration::from_secs_f64(1.0 / events_per_s)));
            }
            HttpFaultKind::StreamTruncate { after_events, done } => {
                d.plan.truncate = d.plan.truncate.or(Some(Truncate { after_events, done }));
            }
            HttpFaultKind::RateLimit { .. } | HttpFaultKind::Queue { .. } => {}
        }
    }
    d
}

async fn handle(
    shared: Arc<Shared>,
    peer: IpAddr,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let counters = &shared.counters;
    bump(&counters.requests);
    let active = shared.active.load_full();
    let d = decide(&active, peer, &req);
    if d.matched {
        bump(&counters.matched);
    }
    if let Some(v) = d.limited.filter(|v| !v.allowed) {
        bump(&counters.rate_limited);
        return Ok(rate_limited(&v));
    }
    if !d.delay.is_zero() {
        bump(&counters.delayed);
        // A drain forwards the request at once.
        let mut drain = shared.drain.subscribe();
        tokio::select! {
            () = tokio::time::sleep(d.delay) => {}
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
    }) = d.error
    {
        bump(&counters.errors);
        return Ok(injected(*status, *retry_after, body.as_deref()));
    }
    let mut slot = None;
    if let Some(queue) = d.queue {
        match queue.admit(shared.drain.subscribe(), DRAIN_RELEASE).await {
            Admission::Slot { permit, waited } => {
                if waited {
                    bump(&counters.queued);
                }
                slot = Some(permit);
            }
            Admission::Released => {}
            Admission::Full => {
                bump(&counters.queue_rejected);
                return Ok(overloaded("queue full: injected by faultline http.queue"));
            }
            Admission::TimedOut => {
                bump(&counters.queued);
                bump(&counters.queue_rejected);
                return Ok(overloaded(
                    "queue timeout: injected by faultline http.queue",
                ));
            }
        }
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
            // Before the hop-by-hop headers go: chunked says it streams.
            let framing = (!d.plan.is_empty())
                .then(|| Framing::of(&parts.headers))
                .flatten();
            for h in &HOP_BY_HOP {
                parts.headers.remove(h);
            }
            if let Some(v) = &d.limited {
                limit_headers(&mut parts.headers, v);
            }
            let inner = match framing {
                Some(framing) => {
                    let mut drain = shared.drain.subscribe();
                    let release = Box::pin(async move {
                        let _ = drain.wait_for(|s| *s >= DRAIN_RELEASE).await;
                    });
                    BodyInner::Faulted(FaultedStream::new(
                        body,
                        framing,
                        d.plan,
                        Arc::clone(&counters.streams),
                        release,
                    ))
                }
                None => BodyInner::Upstream(body),
            };
            Ok(Response::from_parts(parts, ProxyBody { inner, slot }))
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
    let mut resp = Response::new(ProxyBody::local(body));
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

/// The 429 of a rate limit, as OpenAI answers it.
fn rate_limited(v: &Verdict) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": {
        "message": format!(
            "Rate limit reached for requests: limit {}, retry in {}. Injected by faultline http.rate_limit.",
            v.limit,
            crate::gateway::reset_text(v.retry)
        ),
        "type": "requests",
        "code": "rate_limit_exceeded",
    }});
    let mut resp = Response::new(ProxyBody::local(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Whole seconds, rounded up, never 0; the exact wait in `retry-after-ms`.
    let ms = u64::try_from(v.retry.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    h.insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000)));
    h.insert(
        header::HeaderName::from_static("retry-after-ms"),
        HeaderValue::from(ms),
    );
    limit_headers(h, v);
    resp
}

/// The 503 of a saturated queue.
fn overloaded(detail: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(json_body(503, detail)));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
    resp
}

fn bad_gateway(detail: &str) -> Response<ProxyBody> {
    tracing::debug!(detail, "http fault proxy: bad gateway");
    let mut resp = Response::new(ProxyBody::local(json_body(502, detail)));
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
