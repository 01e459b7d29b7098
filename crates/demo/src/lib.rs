//! The embedded demo target of `faultline demo`: a small completion API of an AI
//! platform, in two hops, that faultline's faults can break in realistic ways.
//!
//! ```text
//! client ──> gateway (127.0.0.1:18080) ──keep-alive pool──> service (127.0.0.1:18081) ──> SQLite jobs.db
//!            concurrency limit -> 429                         POST /v1/complete
//!            upstream timeout  -> 504                         inserts a job, "infers", marks it done
//!            connect/reset     -> 502                         database locked too long -> 503
//! ```
//!
//! **The service** answers `POST /v1/complete` with a JSON body `{"prompt": "..."}`
//! (read as JSON whatever its `Content-Type` says; anything else is a `400`): it
//! inserts a `running` row into the `jobs` table (`id, prompt, status, created_at,
//! finished_at`) of the SQLite database at [`DemoConfig::db_path`] (its directory is
//! created; WAL journal), simulates inference for a lognormal latency around
//! [`DemoConfig::base_latency`] with a rare long tail (longer completions take
//! longer), marks the job `done` and answers `{"id": 1, "completion": "...",
//! "tokens": 24}`. A request abandoned on the way (client gone, gateway timeout)
//! leaves its job `running`, or unwritten. All SQLite work runs on one dedicated
//! writer thread that owns the connection, fed by a bounded queue, so the async
//! runtime never blocks. The connection waits up to [`DemoConfig::busy_timeout`]
//! for a lock another process holds (a `db.lock` fault's `BEGIN IMMEDIATE`): a stall
//! shorter than that shows as added latency, a longer one as `503` with
//! `Retry-After: 1`. A full job queue is a `503` too. `GET /healthz` answers
//! `{"status":"ok"}`.
//!
//! The service also speaks the OpenAI completion API: `POST /v1/chat/completions`
//! and `POST /v1/completions`, streamed as server-sent events with `"stream": true`
//! (the first token after the simulated inference latency, then one token per
//! [`DemoConfig::token_interval`], `usage` in the last chunk, `data: [DONE]`) or
//! answered whole. They do not touch the database.
//!
//! **The gateway** forwards every `/v1/*` request to the service over a keep-alive
//! hyper client pool. At most [`DemoConfig::concurrency`] requests are in flight;
//! one more is answered `429` with `Retry-After: 1` at once, as a real gateway's
//! rate limiter would. An exchange that takes longer than
//! [`DemoConfig::upstream_timeout`] is answered `504`; a connection that cannot be
//! made, is reset or closes mid-exchange is answered `502`. So that faults applied
//! transparently to the service's port (they act on *new* connections) keep
//! biting, the pool closes connections idle for a second, and one forwarded request
//! in [`DemoConfig::recycle_every`] asks the service to close its connection after
//! answering (`Connection: close`, like a max-requests-per-connection setting).
//! An event stream (`text/event-stream`) is passed on as it comes, chunk by chunk,
//! holding its place under the concurrency limit until it ends; the upstream
//! timeout then bounds the wait for its head, not the whole stream.
//! `GET /healthz` answers `{"status":"ok"}` without asking the service.
//!
//! **Fragile mode** ([`DemoConfig::fragile`]) is what `faultline demo --break` runs
//! to show a failing SLA gate: the database connection has no busy timeout (any
//! lock is an immediate `SQLITE_BUSY`, so every request during a stall is a `503`)
//! and the gateway lets only 16 requests in flight (half the default, so a slow
//! upstream turns into `429`s sooner). Fault-free, at the quickstart's 50
//! requests/s, it still meets its SLA, with room for a loaded machine's latency
//! spikes; the database stall is what breaks it.
//!
//! [`Demo::stats`] counts what happened ([`DemoStats`]); [`Demo::shutdown`] stops
//! both listeners gracefully and closes the database; dropping a [`Demo`] aborts
//! every task it started.
//!
//! Its limits: it is a *target*. It never injects a fault, never talks to an
//! agent, and depends on no faultline crate; faults reach it only from outside
//! (proxies, nftables, SQLite locks), exactly as they would reach a real service.
//!
//! ```no_run
//! # async fn demo() -> Result<(), faultline_demo::DemoError> {
//! use faultline_demo::{Demo, DemoConfig};
//! let demo = Demo::start(DemoConfig::default()).await?;
//! // POST http://{gateway}/v1/complete {"prompt":"hello"} ...
//! let _ = (demo.gateway_addr(), demo.stats());
//! demo.shutdown().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod chat;
mod db;
mod gateway;
mod inference;
mod server;
mod service;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;

use crate::server::Server;

/// Where the gateway listens by default.
pub const DEFAULT_GATEWAY_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 18080));
/// Where the service listens by default.
pub const DEFAULT_SERVICE_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 18081));
/// The jobs database by default (the quickstart game day's `db.lock` points here).
pub const DEFAULT_DB_PATH: &str = "/tmp/faultline-demo/jobs.db";

/// How the demo is set up. [`Default`] is the demo `faultline demo` runs;
/// [`DemoConfig::fragile`] the one `faultline demo --break` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoConfig {
    /// The gateway's listen address (port 0: any free port, see [`Demo::gateway_addr`]).
    pub gateway: SocketAddr,
    /// The service's listen address (port 0: any free port, see [`Demo::service_addr`]).
    pub service: SocketAddr,
    /// The SQLite database of jobs; its directory is created.
    pub db_path: PathBuf,
    /// Requests the gateway lets in flight at once; one more is answered 429. At least 1.
    pub concurrency: usize,
    /// Median simulated inference latency (0: none). The distribution is lognormal
    /// around it (p99 about 2.5x) with a 1 % tail of 3-8x, capped at 10x.
    pub base_latency: Duration,
    /// Between two tokens of a streamed OpenAI-style completion (the first comes
    /// after the simulated inference latency).
    pub token_interval: Duration,
    /// How long a database write waits for a lock someone else holds before the
    /// request fails with 503. Zero: it does not wait at all.
    pub busy_timeout: Duration,
    /// How long the gateway waits for the service's whole answer before it answers 504.
    pub upstream_timeout: Duration,
    /// One forwarded request in this many carries `Connection: close`, so that the
    /// gateway opens new upstream connections steadily. Zero: never.
    pub recycle_every: u32,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            gateway: DEFAULT_GATEWAY_ADDR,
            service: DEFAULT_SERVICE_ADDR,
            db_path: PathBuf::from(DEFAULT_DB_PATH),
            concurrency: 32,
            base_latency: Duration::from_millis(8),
            token_interval: Duration::from_millis(20),
            busy_timeout: Duration::from_secs(3),
            upstream_timeout: Duration::from_secs(5),
            recycle_every: 20,
        }
    }
}

impl DemoConfig {
    /// The demo that degrades badly under faults (`faultline demo --break`): no busy
    /// timeout (a held lock is an immediate 503) and a gateway limit of 16 requests in
    /// flight (added latency becomes 429s). Everything else as [`Default`].
    pub fn fragile() -> Self {
        Self {
            busy_timeout: Duration::ZERO,
            concurrency: 16,
            ..Self::default()
        }
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A listener could not be bound (the port is taken, the address is not local).
    #[error("cannot listen on {addr} for the demo {what}: {source}")]
    Bind {
        /// `gateway` or `service`.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's answer.
        #[source]
        source: std::io::Error,
    },
    /// The database's directory could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The operating system's answer.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened or set up.
    #[error("cannot set up the jobs database {}: {source}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// SQLite's answer.
        #[source]
        source: rusqlite::Error,
    },
    /// The database writer thread could not be started.
    #[error("cannot start the demo's database writer thread: {0}")]
    Writer(#[source] std::io::Error),
    /// The configuration cannot work.
    #[error("invalid demo configuration: {0}")]
    Config(&'static str),
}

/// What the demo has seen so far ([`Demo::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DemoStats {
    /// `/v1/*` requests the gateway received (health checks are not counted).
    pub requests: u64,
    /// Of those, answered 2xx.
    pub ok: u64,
    /// Answered 429: the gateway's concurrency limit (or the service's own 429).
    pub rate_limited: u64,
    /// Answered 5xx: 502 and 504 from the gateway, 503 and 500 from the service.
    pub server_errors: u64,
    /// `/v1/*` requests the gateway is forwarding right now.
    pub in_flight: u64,
    /// Job rows inserted into the database.
    pub jobs_written: u64,
    /// Job rows marked done.
    pub jobs_done: u64,
    /// TCP connections the service accepted (the gateway's pool opening new ones).
    pub service_connections: u64,
}

/// The counters behind [`DemoStats`], shared by the gateway and the service.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    rate_limited: AtomicU64,
    server_errors: AtomicU64,
    jobs_written: AtomicU64,
    jobs_done: AtomicU64,
    service_connections: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The running demo: a gateway and a service on their own listeners, and the
/// database writer thread.
#[derive(Debug)]
pub struct Demo {
    gateway_addr: SocketAddr,
    service_addr: SocketAddr,
    counters: Arc<Counters>,
    limit: Arc<tokio::sync::Semaphore>,
    concurrency: usize,
    gateway: Option<Server>,
    service: Option<Server>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// How long [`Demo::shutdown`] lets in-flight requests finish before it aborts them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Demo {
    /// Binds both listeners, opens (and creates) the database and starts serving.
    /// Returns once both listeners accept connections.
    pub async fn start(config: DemoConfig) -> Result<Demo, DemoError> {
        if config.concurrency == 0 {
            return Err(DemoError::Config("concurrency must be at least 1"));
        }
        let service_listener = bind("service", config.service).await?;
        let gateway_listener = bind("gateway", config.gateway).await?;
        let service_addr = local_addr("service", config.service, &service_listener)?;
        let gateway_addr = local_addr("gateway", config.gateway, &gateway_listener)?;

        let path = config.db_path.clone();
        let busy_timeout = config.busy_timeout;
        let (db, writer) =
            match tokio::task::spawn_blocking(move || db::Db::open(&path, busy_timeout)).await {
                Ok(opened) => opened?,
                Err(join) => std::panic::resume_unwind(join.into_panic()),
            };

        let counters = Arc::new(Counters::default());
        let service = Server::start(
            service_listener,
            service::router(
                db,
                config.base_latency,
                config.token_interval,
                Arc::clone(&counters),
            ),
            Some(Arc::clone(&counters)),
        );
        let limit = Arc::new(tokio::sync::Semaphore::new(config.concurrency));
        let gateway = Server::start(
            gateway_listener,
            gateway::router(gateway::Gateway::new(
                service_addr,
                Arc::clone(&limit),
                config.upstream_timeout,
                config.recycle_every,
                Arc::clone(&counters),
            )),
            None,
        );
        tracing::info!(%gateway_addr, %service_addr, db = %config.db_path.display(),
            concurrency = config.concurrency, busy_timeout = ?config.busy_timeout,
            "demo completion API started");
        Ok(Demo {
            gateway_addr,
            service_addr,
            counters,
            limit,
            concurrency: config.concurrency,
            gateway: Some(gateway),
            service: Some(service),
            writer: Some(writer),
        })
    }

    /// Where the gateway listens (the address clients and probes use).
    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway_addr
    }

    /// Where the service listens (the port network faults are applied to).
    pub fn service_addr(&self) -> SocketAddr {
        self.service_addr
    }

    /// The counters so far.
    pub fn stats(&self) -> DemoStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let free = self.limit.available_permits();
        DemoStats {
            requests: get(&c.requests),
            ok: get(&c.ok),
            rate_limited: get(&c.rate_limited),
            server_errors: get(&c.server_errors),
            in_flight: self.concurrency.saturating_sub(free) as u64,
            jobs_written: get(&c.jobs_written),
            jobs_done: get(&c.jobs_done),
            service_connections: get(&c.service_connections),
        }
    }

    /// Stops accepting, lets in-flight requests finish (the gateway's first, then
    /// the service's; at most a few seconds each, then they are aborted), and closes
    /// the database. Both ports are free when it returns.
    pub async fn shutdown(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.stop(SHUTDOWN_GRACE).await;
        }
        if let Some(service) = self.service.take() {
            service.stop(SHUTDOWN_GRACE).await;
        }
        if let Some(writer) = self.writer.take() {
            // Every handle on the queue is gone with the service, so the writer
            // finishes the statement it is in (bounded by the busy timeout) and ends.
            let joined = tokio::task::spawn_blocking(move || writer.join());
            if tokio::time::timeout(SHUTDOWN_GRACE, joined).await.is_err() {
                tracing::warn!("the demo's database writer did not end in time; left to finish");
            }
        }
        tracing::info!(gateway = %self.gateway_addr, service = %self.service_addr,
            "demo completion API stopped");
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // Aborting the servers drops their connections and, with them, every handle
        // on the database queue: the writer thread ends on its own.
        if let Some(gateway) = self.gateway.take() {
            gateway.abort();
        }
        if let Some(service) = self.service.take() {
            service.abort();
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, DemoError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DemoError::Bind { what, addr, source })
}

fn local_addr(
    what: &'static str,
    addr: SocketAddr,
    listener: &TcpListener,
) -> Result<SocketAddr, DemoError> {
    listener
        .local_addr()
        .map_err(|source| DemoError::Bind { what, addr, source })
}
