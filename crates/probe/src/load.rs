//! The open-loop HTTP/1.1 load machinery that the http and llm probes share: a fixed
//! schedule, a queue of due requests, workers that each own one keep-alive
//! connection, and the bound on requests in flight.
//!
//! The schedule is fixed before anything is sent: request `i` is due at
//! `start + i / rate`, whatever the server does. A scheduler task puts each due
//! request on a queue that worker tasks take from; each worker owns one keep-alive
//! HTTP/1.1 connection (hyper's `client::conn::http1`, reconnecting after an error
//! or a timeout) and times the request from its *scheduled* instant, as wrk2 does.
//! So a server that stalls for 500 ms inflates the latency of everything scheduled
//! in those 500 ms, instead of delaying the schedule and hiding the stall; time
//! spent waiting for a free connection counts too.
//!
//! Requests in flight (queued or being sent) are bounded by `max_in_flight`. A
//! request that comes due at the bound is not queued: it is recorded as failed,
//! "client saturated", so an overloaded client shows up in the figures rather than
//! silently lowering the rate. Workers (and so connections) are added when a
//! request finds none idle, one at a time: each opens its connection before the
//! next may start, so a burst never floods the server's accept backlog.
//!
//! What a request is and what its answer means is an [`Exchange`]: the http probe
//! drains the body and judges the status, the llm probe reads a token stream. The
//! exchange builds each request from a prepared template (cheap clones of shared
//! `Bytes`), reads the answer while the worker drives the connection, and turns
//! how the attempt ended into samples.
//!
//! Pacing: tokio's timer has a resolution of 1 ms and, measured, fires 1-2 ms
//! after the instant asked for; every request would be charged that as latency
//! (the client's own lateness, not the server's), which is most of a TTFT error
//! budget of 0.5 ms. So at 500 req/s and below the scheduler asks the timer to wake
//! it 2 ms early and yields (`yield_now`, other tasks run) until the exact
//! instant: sends within tens of microseconds of the schedule, for at most about
//! 1 ms of yielding per request (measured in bench/RESULTS.md, `## llm probe`).
//! Above 500 req/s requests go out in small bursts on the timer's ticks, and each
//! is charged the wait from its exact scheduled instant to the tick that sent it
//! (as in wrk2, whose send timer also rounds up to whole milliseconds). A sleeping
//! OS thread as pacer was tried: punctual on an idle machine, but starved on a busy
//! one, where it carried about half the rate.
//!
//! Limits: plain `http://` only (no TLS yet).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use faultline_spec::secret::Secret;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use indexmap::IndexMap;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ProbeError;
use crate::window::{Clock, FailureKind, Recorder, Sample};

/// At schedules this sparse or sparser (500 req/s and below), the scheduler wakes
/// [`PRECISE_LEAD`] early on tokio's timer and yields its way to the exact
/// instant; denser schedules go out in 1 ms bursts (see the module docs).
pub const PRECISE_BELOW_INTERVAL: Duration = Duration::from_millis(2);
/// How early the timer is asked to wake a precise schedule: it fires on whole
/// milliseconds and, measured, 1-2 ms after the instant asked for.
pub const PRECISE_LEAD: Duration = Duration::from_millis(2);

/// Most workers (connections, requests in flight) a load starts unless told.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

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

// === impl Target ===

/// Where a load sends, and the request every attempt starts from: origin-form URI,
/// `Host`, and the probe's headers with their secrets resolved once and marked
/// sensitive so that hyper never logs them.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) template: Request<Full<Bytes>>,
}

impl Target {
    pub(crate) fn new(url: &str, headers: &IndexMap<String, Secret>) -> Result<Self, ProbeError> {
        let url_err = |why: &str| ProbeError::Url {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|e| url_err(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(ProbeError::HttpsUnsupported(url.to_owned())),
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

        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = origin_form;
        let h = req.headers_mut();
        let host_value =
            HeaderValue::from_str(authority.as_str()).map_err(|e| url_err(&format!("{e}")))?;
        h.insert(HOST, host_value);
        for (name, value) in headers {
            let hdr_err = |why: String| ProbeError::Header {
                name: name.clone(),
                why,
            };
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| hdr_err(e.to_string()))?;
            let mut v = HeaderValue::from_str(&value.expose()?)
                .map_err(|_| hdr_err("the value holds characters a header cannot carry".into()))?;
            v.set_sensitive(true);
            h.append(n, v);
        }
        Ok(Target {
            host,
            port,
            template: req,
        })
    }
}

impl<E> Load<E> {
    /// A load of `exchange` against `target`'s host at `rate`, with enough workers
    /// for every request to take its whole timeout (plus one for the worker that
    /// is still recording as the next request comes due), capped.
    pub(crate) fn new(
        target: &Target,
        exchange: E,
        rate: faultline_spec::units::Rate,
        timeout: Duration,
        kind: &'static str,
    ) -> Result<Self, ProbeError> {
        let rate = rate.per_second();
        if !(rate.is_finite() && rate > 0.0) {
            return Err(ProbeError::Rate { kind });
        }
        let needed = (rate * timeout.as_secs_f64()).ceil() + 1.0;
        let max_in_flight = if needed >= DEFAULT_MAX_IN_FLIGHT as f64 {
            DEFAULT_MAX_IN_FLIGHT
        } else {
            (needed as usize).max(1)
        };
        Ok(Load {
            host: target.host.clone(),
            port: target.port,
            exchange,
            rate,
            timeout,
            max_in_flight,
        })
    }
}

// === impl Exchange ===

/// When an attempt was due, sent (`None`: never sent, it waited out its timeout
/// in the queue) and over, as offsets of the load's clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) due: Duration,
    pub(crate) sent: Option<Duration>,
    pub(crate) done: Duration,
    pub(crate) timeout: Duration,
}

/// How an attempt ended.
#[derive(Debug)]
pub(crate) enum Ended<A> {
    /// The answer was read to its end.
    Answered(A),
    /// It failed before or while the answer was read.
    Failed(FailureKind),
    /// Its timeout, counted from its scheduled instant, ran out.
    TimedOut,
}

/// What one kind of load sends and how it reads and records the answer.
pub(crate) trait Exchange: Send + Sync + 'static {
    /// A worker's own state across its attempts: buffers reused from one answer
    /// to the next, and the partial figures a timed-out attempt leaves behind.
    type Scratch: Default + Send;
    /// What a fully read answer yields.
    type Answer: Send;

    /// The request of attempt number `seq` (a clone of a prepared template).
    fn request(&self, seq: u64) -> Request<Full<Bytes>>;

    /// Reads the answer to its end, timing what it needs on `clock`.
    fn read(
        &self,
        clock: Clock,
        due: Duration,
        response: Response<Incoming>,
        scratch: &mut Self::Scratch,
    ) -> impl Future<Output = Result<Self::Answer, FailureKind>> + Send;

    /// Records the attempt; leaves `scratch` ready for the next one.
    fn finish(
        &self,
        recorder: &Recorder,
        timing: Timing,
        ended: Ended<Self::Answer>,
        scratch: &mut Self::Scratch,
    );
}

// === impl Load ===

/// A prepared load: where, what, how fast, and its bounds.
#[derive(Debug)]
pub(crate) struct Load<E> {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) exchange: E,
    pub(crate) rate: f64,
    pub(crate) timeout: Duration,
    pub(crate) max_in_flight: usize,
}

impl<E: Exchange> Load<E> {
    /// Runs the load until `limits` stop it, recording one sample per scheduled
    /// request into `recorder`, then waits for the requests in flight (each ends by
    /// its timeout) and marks everything scheduled as settled.
    pub(crate) async fn run(self, clock: Clock, recorder: Recorder, limits: Limits) -> LoadReport {
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
        let precise = interval_ns >= PRECISE_BELOW_INTERVAL.as_nanos() as f64;

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
                let wake = if precise {
                    due_at.checked_sub(PRECISE_LEAD).unwrap_or(due_at)
                } else {
                    due_at
                };
                if Instant::now() < wake {
                    sleep.as_mut().reset(wake);
                    tokio::select! {
                        biased;
                        _ = limits.cancel.cancelled() => break,
                        _ = sleep.as_mut() => {}
                    }
                }
                // The rest of the way by yielding: other tasks run meanwhile.
                while precise && Instant::now() < due_at {
                    if limits.cancel.is_cancelled() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                if limits.cancel.is_cancelled() {
                    break;
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
                    q.due.push_back((i, due));
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
                tracing::warn!(error = %e, "probe load worker ended abnormally");
            }
        }
        report.connections = shared.connections.load(Ordering::Relaxed);
        let scheduled_until =
            start + Duration::from_nanos((report.scheduled as f64 * interval_ns) as u64);
        shared.recorder.set_settled(scheduled_until);
        report
    }
}

// === impl Shared ===

struct Shared<E> {
    load: Load<E>,
    clock: Clock,
    recorder: Recorder,
    queue: Mutex<Queue>,
    connections: AtomicU64,
}

/// Requests due but not yet taken by a worker, and the workers waiting for one.
#[derive(Default)]
struct Queue {
    /// Sequence numbers and scheduled instants, oldest first.
    due: VecDeque<(u64, Duration)>,
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

impl<E> Shared<E> {
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

async fn worker<E: Exchange>(shared: Arc<Shared<E>>, id: usize, mut wake: mpsc::Receiver<()>) {
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
    let mut scratch = E::Scratch::default();
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
        let Some((seq, due)) = next else {
            // Woken for a request, or the scheduler is gone (the queue then reads
            // closed): either way, look at the queue again.
            let _ = wake.recv().await;
            continue;
        };
        finished_one = true;
        let ex = &shared.load.exchange;
        let sent = shared.clock.now();
        if sent >= due + timeout {
            // It waited its whole timeout in the queue: do not send it late.
            let timing = Timing {
                due,
                sent: None,
                done: sent,
                timeout,
            };
            ex.finish(&shared.recorder, timing, Ended::TimedOut, &mut scratch);
            continue;
        }
        let deadline = shared.clock.epoch + due + timeout;
        let result = tokio::time::timeout_at(
            deadline,
            request(&shared, &mut conn, seq, due, &mut scratch),
        )
        .await;
        let timing = Timing {
            due,
            sent: Some(sent),
            done: shared.clock.now(),
            timeout,
        };
        let ended = match result {
            Ok(Ok(answer)) => Ended::Answered(answer),
            Ok(Err(kind)) => {
                conn = None;
                Ended::Failed(kind)
            }
            Err(_elapsed) => {
                conn = None;
                Ended::TimedOut
            }
        };
        if conn.as_ref().is_some_and(|c| c.done) {
            conn = None;
        }
        ex.finish(&shared.recorder, timing, ended, &mut scratch);
    }
}

/// Sends one request on the worker's connection (opening one if needed) and reads
/// the whole answer, so the connection can carry the next request. A kept-alive
/// connection that the server closed while idle is only found out when used; if
/// the request provably was not sent on it, it is sent once more on a new one.
async fn request<E: Exchange>(
    shared: &Shared<E>,
    conn: &mut Option<Conn>,
    seq: u64,
    due: Duration,
    scratch: &mut E::Scratch,
) -> Result<E::Answer, FailureKind> {
    let reused = conn
        .as_ref()
        .is_some_and(|c| !c.done && !c.sender.is_closed());
    match exchange(shared, conn, seq, due, scratch).await {
        Err(Attempt::NotSent) if reused => {
            *conn = None;
            exchange(shared, conn, seq, due, scratch)
                .await
                .map_err(Attempt::kind)
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

async fn exchange<E: Exchange>(
    shared: &Shared<E>,
    conn: &mut Option<Conn>,
    seq: u64,
    due: Duration,
    scratch: &mut E::Scratch,
) -> Result<E::Answer, Attempt> {
    let c = match conn {
        Some(c) if !c.done && !c.sender.is_closed() => c,
        _ => conn.insert(connect(shared).await.map_err(Attempt::Failed)?),
    };
    let Conn {
        sender,
        connection,
        done,
    } = c;
    let ex = &shared.load.exchange;
    let clock = shared.clock;
    let exchange = async {
        sender.ready().await.map_err(|_| Attempt::NotSent)?;
        let resp = sender.send_request(ex.request(seq)).await.map_err(|e| {
            if e.is_canceled() {
                Attempt::NotSent
            } else if e.is_closed() {
                Attempt::Failed(FailureKind::Connect)
            } else {
                Attempt::Failed(FailureKind::Protocol)
            }
        })?;
        ex.read(clock, due, resp, scratch)
            .await
            .map_err(Attempt::Failed)
    };
    let mut exchange = pin!(exchange);
    tokio::select! {
        biased;
        r = &mut exchange => return r,
        r = &mut *connection => {
            *done = true;
            if let Err(e) = r {
                tracing::debug!(error = %e, "probe connection ended");
            }
        }
    }
    // The connection ended (e.g. `Connection: close`); the answer may still be
    // complete in the body channel, and if not this fails at once.
    exchange.await
}

async fn connect<E>(shared: &Shared<E>) -> Result<Conn, FailureKind> {
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
