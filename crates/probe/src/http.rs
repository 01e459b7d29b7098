//! Open-loop HTTP load at a fixed rate, timed from each request's scheduled instant.
//!
//! The schedule is fixed before anything is sent: request `i` is due at
//! `start + i / rate`, whatever the server does. A scheduler task puts each due
//! request on a queue that worker tasks take from; each worker owns one keep-alive
//! HTTP/1.1 connection (hyper's `client::conn::http1`, reconnecting after an error
//! or a timeout) and records the request's latency from its *scheduled* instant,
//! as wrk2 does. So a server that stalls for 500 ms inflates the latency of
//! everything scheduled in those 500 ms, instead of delaying the schedule and
//! hiding the stall; time spent waiting for a free connection counts too.
//!
//! Requests in flight (queued or being sent) are bounded by `max_in_flight`. A
//! request that comes due at the bound is not queued: it is recorded as failed,
//! "client saturated", so an overloaded client shows up in the figures rather than
//! silently lowering the rate. Workers (and so connections) are added when a
//! request finds none idle, one at a time: each opens its connection before the
//! next may start, so a burst never floods the server's accept backlog.
//!
//! Per request the generator allocates nothing of its own: the request is a clone of
//! one prepared template (the body is shared `Bytes`), the queue is a ring buffer
//! under a short lock, a parked worker is woken through a one-slot channel, and the
//! sample goes into a bucket under a short lock. What remains is what hyper needs
//! (the header map it takes ownership of, its dispatch).
//!
//! Each sample also carries its service time (from the moment its worker sent it),
//! what a closed-loop tool reports: the difference is the client's own lateness.
//!
//! Limits: plain `http://` only (no TLS yet). The scheduler sleeps on tokio's timer,
//! whose resolution is 1 ms: above 1000 req/s requests go out in small bursts, and
//! each is charged the wait from its exact scheduled instant to the tick that sent
//! it (0 to 1 ms, as in wrk2, whose send timer also rounds up to whole
//! milliseconds). A sleeping OS thread as pacer was tried: punctual on an idle
//! machine, but starved on a busy one, where it carried about half the rate.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use faultline_spec::probe::{HttpMethod, HttpProbe};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ProbeError;
use crate::window::{Clock, FailureKind, Recorder, Sample};

/// Most workers (connections, requests in flight) a load starts unless told.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

// === impl StatusRule ===

/// Which HTTP status codes count as success: classes (`2xx`) and exact codes.
#[derive(Clone, PartialEq, Eq)]
pub struct StatusRule {
    // Bit `c` set: status `c` (100..=999) is a success.
    bits: [u64; 16],
}

impl std::fmt::Debug for StatusRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let codes: Vec<u16> = (100..1000).filter(|c| self.allows(*c)).collect();
        f.debug_struct("StatusRule").field("codes", &codes).finish()
    }
}

impl StatusRule {
    /// Parses `success:` entries; empty means `2xx` and `3xx`.
    pub fn parse(entries: &[String]) -> Result<Self, ProbeError> {
        let mut rule = StatusRule { bits: [0; 16] };
        if entries.is_empty() {
            rule.allow_range(200, 399);
            return Ok(rule);
        }
        for e in entries {
            let t = e.trim();
            let bad = || ProbeError::Success(t.to_owned());
            let b = t.as_bytes();
            if b.len() == 3 && b[0].is_ascii_digit() && b[1..].eq_ignore_ascii_case(b"xx") {
                let class = u16::from(b[0] - b'0');
                if !(1..=9).contains(&class) {
                    return Err(bad());
                }
                rule.allow_range(class * 100, class * 100 + 99);
            } else {
                let code: u16 = t.parse().map_err(|_| bad())?;
                if !(100..=999).contains(&code) {
                    return Err(bad());
                }
                rule.allow_range(code, code);
            }
        }
        Ok(rule)
    }

    fn allow_range(&mut self, lo: u16, hi: u16) {
        for c in lo..=hi {
            self.bits[usize::from(c / 64)] |= 1 << (c % 64);
        }
    }

    pub fn allows(&self, code: u16) -> bool {
        code < 1024 && self.bits[usize::from(code / 64)] & (1 << (code % 64)) != 0
    }
}

// === impl HttpLoad ===

/// A prepared HTTP load: target, request template, rate and bounds.
#[derive(Debug)]
pub struct HttpLoad {
    host: String,
    port: u16,
    template: Request<Full<Bytes>>,
    success: StatusRule,
    rate: f64,
    timeout: Duration,
    max_in_flight: usize,
}

/// When a load stops: whichever comes first. Without any, it runs until cancelled.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Stop scheduling after this long.
    pub duration: Option<Duration>,
    /// Stop after scheduling this many requests.
    pub requests: Option<u64>,
    pub cancel: CancellationToken,
}

/// What a finished load did, beyond the samples it recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// Requests scheduled (sent or refused as "client saturated").
    pub scheduled: u64,
    /// Requests refused ("client saturated") because `max_in_flight` requests
    /// were already queued or being sent.
    pub saturated: u64,
    /// TCP connections opened (one per worker unless a connection broke).
    pub connections: u64,
    /// Workers started, each with its own connection: the most requests that
    /// were ever being sent at once.
    pub workers: usize,
}

impl HttpLoad {
    /// Prepares the load. Header secrets are resolved here, once, and marked
    /// sensitive in the request so that hyper never logs them.
    pub fn new(spec: &HttpProbe) -> Result<Self, ProbeError> {
        let url_err = |why: &str| ProbeError::Url {
            url: spec.url.clone(),
            why: why.to_owned(),
        };
        let uri: Uri = spec.url.parse().map_err(|e| url_err(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(ProbeError::HttpsUnsupported(spec.url.clone())),
            _ => return Err(url_err("expected an http:// URL")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| url_err("expected a host"))?
            .clone();
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        let port = authority.port_u16().unwrap_or(80);
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        let origin_form: Uri = path.parse().map_err(|e| url_err(&format!("{e}")))?;

        let body = Bytes::from(spec.body.clone().unwrap_or_default());
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method(spec.method);
        *req.uri_mut() = origin_form;
        let headers = req.headers_mut();
        let host_value =
            HeaderValue::from_str(authority.as_str()).map_err(|e| url_err(&format!("{e}")))?;
        headers.insert(HOST, host_value);
        for (name, value) in &spec.headers {
            let hdr_err = |why: String| ProbeError::Header {
                name: name.clone(),
                why,
            };
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| hdr_err(e.to_string()))?;
            let mut v = HeaderValue::from_str(&value.expose()?)
                .map_err(|_| hdr_err("the value holds characters a header cannot carry".into()))?;
            v.set_sensitive(true);
            headers.append(n, v);
        }

        let rate = spec.rate.per_second();
        if !(rate.is_finite() && rate > 0.0) {
            return Err(ProbeError::Rate { kind: "http" });
        }
        let timeout = spec.timeout.get();
        // Enough workers for every request to take its whole timeout (plus one for
        // the worker that is still recording as the next request comes due), capped.
        let needed = (rate * timeout.as_secs_f64()).ceil() + 1.0;
        let max_in_flight = if needed >= DEFAULT_MAX_IN_FLIGHT as f64 {
            DEFAULT_MAX_IN_FLIGHT
        } else {
            (needed as usize).max(1)
        };
        Ok(HttpLoad {
            host,
            port,
            template: req,
            success: StatusRule::parse(&spec.success)?,
            rate,
            timeout,
            max_in_flight,
        })
    }

    /// Caps the requests in flight (and so the connections) at `n` (at least 1).
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Runs the load until `limits` stop it, recording one sample per scheduled
    /// request into `recorder`, then waits for the requests in flight (each ends by
    /// its timeout) and marks everything scheduled as settled.
    pub async fn run(self, clock: Clock, recorder: Recorder, limits: Limits) -> LoadReport {
        let shared = Arc::new(Shared {
            load: self,
            clock,
            recorder,
            queue: Mutex::new(Queue::default()),
            connections: AtomicU64::new(0),
        });
        let max = shared.load.max_in_flight;
        let mut wakers: Vec<mpsc::Sender<()>> = Vec::new();
        let mut handles: Vec<JoinHandle<()>> = Vec::new();
        let mut report = LoadReport::default();

        let start = clock.now();
        let interval_ns = 1e9 / shared.load.rate;
        let end = limits.duration.map(|d| start + d);
        let timeout = shared.load.timeout;
        let mut sleep = pin!(tokio::time::sleep_until(clock.epoch + start));
        let mut last_settle = start;

        for i in 0u64.. {
            if limits.requests.is_some_and(|n| i >= n) {
                break;
            }
            // From the index, not by adding intervals: no drift over long runs.
            let due = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
            if end.is_some_and(|e| due >= e) {
                break;
            }
            let due_at = clock.epoch + due;
            if Instant::now() < due_at {
                sleep.as_mut().reset(due_at);
                tokio::select! {
                    biased;
                    _ = limits.cancel.cancelled() => break,
                    _ = sleep.as_mut() => {}
                }
            } else if limits.cancel.is_cancelled() {
                break;
            }
            report.scheduled += 1;
            let (accepted, wake, grow) = {
                let mut q = shared.lock();
                if q.in_flight >= max {
                    (false, None, false)
                } else {
                    q.in_flight += 1;
                    q.due.push_back(due);
                    let wake = q.idle.pop();
                    let grow = wake.is_none() && !q.growing && wakers.len() < max;
                    q.growing |= grow;
                    (true, wake, grow)
                }
            };
            if !accepted {
                report.saturated += 1;
                shared
                    .recorder
                    .record(&Sample::failure(due, FailureKind::Saturated, None));
            }
            if let Some(w) = wake {
                // The worker is parked on this one-slot channel: it cannot be full.
                let _ = wakers[w].try_send(());
            }
            if grow {
                let (tx, rx) = mpsc::channel(1);
                handles.push(tokio::spawn(worker(Arc::clone(&shared), wakers.len(), rx)));
                wakers.push(tx);
            }
            // Everything scheduled a timeout ago has an answer or has timed out.
            if due.saturating_sub(last_settle) >= Duration::from_millis(100) {
                last_settle = due;
                shared
                    .recorder
                    .set_settled(due.saturating_sub(timeout + Duration::from_millis(10)));
            }
        }

        report.workers = wakers.len();
        // Workers drain the queue, then see it closed (or their channel gone) and exit.
        shared.lock().closed = true;
        drop(wakers);
        for h in handles {
            if let Err(e) = h.await {
                tracing::warn!(error = %e, "http probe worker ended abnormally");
            }
        }
        report.connections = shared.connections.load(Ordering::Relaxed);
        let scheduled_until =
            start + Duration::from_nanos((report.scheduled as f64 * interval_ns) as u64);
        shared.recorder.set_settled(scheduled_until);
        report
    }
}

fn method(m: HttpMethod) -> Method {
    match m {
        HttpMethod::Get => Method::GET,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
    }
}

// === impl Shared ===

struct Shared {
    load: HttpLoad,
    clock: Clock,
    recorder: Recorder,
    queue: Mutex<Queue>,
    connections: AtomicU64,
}

/// Requests due but not yet taken by a worker, and the workers waiting for one.
#[derive(Default)]
struct Queue {
    /// Scheduled instants, oldest first.
    due: VecDeque<Duration>,
    /// Parked workers, the most recently busy last (its connection is warm).
    idle: Vec<usize>,
    /// Requests queued or being sent: the bound `max_in_flight` applies to this.
    in_flight: usize,
    /// A new worker is opening its connection. Workers are added one at a time,
    /// so a burst never opens hundreds of connections at once (a SYN flood that
    /// overflows the server's backlog and costs each a 1 s retransmit).
    growing: bool,
    /// The schedule ended: workers exit once the queue is empty.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One keep-alive connection. The worker drives it itself, while a request is
/// pending: no separate task, so a request costs no hand-off between threads.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    connection: http1::Connection<TokioIo<TcpStream>, Full<Bytes>>,
    /// The connection future finished (closed by the server, or an error).
    done: bool,
}

async fn worker(shared: Arc<Shared>, id: usize, mut wake: mpsc::Receiver<()>) {
    // Dropping the connection (after an error, a timeout or at the end) closes the
    // socket: a request abandoned mid-flight leaves it in an unknown state.
    // The connection is opened before taking work; then the next worker may grow.
    // Bounded like a request: a stopped server whose accept queue is full leaves
    // a connect hanging in SYN retries for minutes, and a stopping load waits
    // for every worker.
    let timeout = shared.load.timeout;
    let mut conn: Option<Conn> = tokio::time::timeout(timeout, connect(&shared))
        .await
        .ok()
        .and_then(Result::ok);
    shared.lock().growing = false;
    let mut finished_one = false;
    loop {
        let next = {
            let mut q = shared.lock();
            if finished_one {
                q.in_flight -= 1;
                finished_one = false;
            }
            match q.due.pop_front() {
                Some(due) => Some(due),
                None if q.closed => return,
                None => {
                    q.idle.push(id);
                    None
                }
            }
        };
        let Some(due) = next else {
            // Woken for a request, or the scheduler is gone (the queue then reads
            // closed): either way, look at the queue again.
            let _ = wake.recv().await;
            continue;
        };
        finished_one = true;
        let sent = shared.clock.now();
        if sent >= due + timeout {
            // It waited its whole timeout in the queue: do not send it late.
            shared
                .recorder
                .record(&Sample::failure(due, FailureKind::Timeout, Some(timeout)));
            continue;
        }
        let deadline = shared.clock.epoch + due + timeout;
        let result = tokio::time::timeout_at(deadline, request(&shared, &mut conn)).await;
        let done = shared.clock.now();
        let latency = done.saturating_sub(due);
        let service = done.saturating_sub(sent);
        let sample = match result {
            Ok(Ok(status)) if shared.load.success.allows(status) => {
                Sample::success(due, latency).with_service(service)
            }
            Ok(Ok(_)) => Sample::failure(due, FailureKind::Rejected, Some(latency)),
            Ok(Err(kind)) => {
                conn = None;
                Sample::failure(due, kind, Some(latency))
            }
            Err(_elapsed) => {
                conn = None;
                Sample::failure(due, FailureKind::Timeout, Some(timeout)).with_service(service)
            }
        };
        if conn.as_ref().is_some_and(|c| c.done) {
            conn = None;
        }
        shared.recorder.record(&sample);
    }
}

/// Sends one request on the worker's connection (opening one if needed) and reads
/// the whole answer, so the connection can carry the next request. A kept-alive
/// connection that the server closed while idle is only found out when used; if
/// the request provably was not sent on it, it is sent once more on a new one.
async fn request(shared: &Shared, conn: &mut Option<Conn>) -> Result<u16, FailureKind> {
    let reused = conn
        .as_ref()
        .is_some_and(|c| !c.done && !c.sender.is_closed());
    match exchange(shared, conn).await {
        Err(Attempt::NotSent) if reused => {
            *conn = None;
            exchange(shared, conn).await.map_err(Attempt::kind)
        }
        r => r.map_err(Attempt::kind),
    }
}

/// Why one exchange failed.
enum Attempt {
    /// hyper guarantees the request was not written: safe to send again.
    NotSent,
    Failed(FailureKind),
}

impl Attempt {
    fn kind(self) -> FailureKind {
        match self {
            Attempt::NotSent => FailureKind::Connect,
            Attempt::Failed(k) => k,
        }
    }
}

async fn exchange(shared: &Shared, conn: &mut Option<Conn>) -> Result<u16, Attempt> {
    let c = match conn {
        Some(c) if !c.done && !c.sender.is_closed() => c,
        _ => conn.insert(connect(shared).await.map_err(Attempt::Failed)?),
    };
    let Conn {
        sender,
        connection,
        done,
    } = c;
    let exchange = async {
        sender.ready().await.map_err(|_| Attempt::NotSent)?;
        let resp = sender
            .send_request(shared.load.template.clone())
            .await
            .map_err(|e| {
                if e.is_canceled() {
                    Attempt::NotSent
                } else if e.is_closed() {
                    Attempt::Failed(FailureKind::Connect)
                } else {
                    Attempt::Failed(FailureKind::Protocol)
                }
            })?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(|_| Attempt::Failed(FailureKind::Protocol))?;
        }
        Ok(status)
    };
    let mut exchange = pin!(exchange);
    tokio::select! {
        biased;
        r = &mut exchange => return r,
        r = &mut *connection => {
            *done = true;
            if let Err(e) = r {
                tracing::debug!(error = %e, "http probe connection ended");
            }
        }
    }
    // The connection ended (e.g. `Connection: close`); the answer may still be
    // complete in the body channel, and if not this fails at once.
    exchange.await
}

async fn connect(shared: &Shared) -> Result<Conn, FailureKind> {
    let load = &shared.load;
    let stream = TcpStream::connect((load.host.as_str(), load.port))
        .await
        .map_err(|_| FailureKind::Connect)?;
    // Requests are small and latency is what is measured: no Nagle delay.
    let _ = stream.set_nodelay(true);
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| FailureKind::Connect)?;
    Ok(Conn {
        sender,
        connection,
        done: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_rules() {
        let d = StatusRule::parse(&[]).unwrap();
        assert!(d.allows(200) && d.allows(204) && d.allows(301) && d.allows(399));
        assert!(!d.allows(199) && !d.allows(404) && !d.allows(500));
        let r = StatusRule::parse(&["2xx".into(), "404".into(), "5XX".into()]).unwrap();
        assert!(r.allows(250) && r.allows(404) && r.allows(503));
        assert!(!r.allows(302) && !r.allows(403));
        for bad in ["0xx", "2x", "99", "1000", "abc", ""] {
            assert!(StatusRule::parse(&[bad.into()]).is_err(), "{bad:?}");
        }
    }

    fn spec(yaml: &str) -> HttpProbe {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn prepares_an_origin_form_request_with_host() {
        let l = HttpLoad::new(&spec(
            "{ url: 'http://127.0.0.1:8080/v1/x?q=1', method: POST, body: 'hi', rate: 200/s, \
               headers: { x-token: abc } }",
        ))
        .unwrap();
        assert_eq!((l.host.as_str(), l.port), ("127.0.0.1", 8080));
        assert_eq!(l.template.uri(), "/v1/x?q=1");
        assert_eq!(l.template.method(), Method::POST);
        assert_eq!(l.template.headers()[HOST], "127.0.0.1:8080");
        assert!(l.template.headers()["x-token"].is_sensitive());
        // 200/s for the default 2 s timeout.
        assert_eq!(l.max_in_flight(), 401);
        assert!(matches!(
            HttpLoad::new(&spec("{ url: 'https://x/', rate: 1/s }")),
            Err(ProbeError::HttpsUnsupported(_))
        ));
        assert!(HttpLoad::new(&spec("{ url: 'ftp://x/', rate: 1/s }")).is_err());
    }
}
