//! `ProxyServer` (a named collection of proxies) and `Proxy` (one listener ->
//! upstream with its toxics): the in-process API that the HTTP API and the
//! agent both drive. Semantics follow Toxiproxy 2.x: disabling or deleting a
//! proxy closes its connections; adding, updating or removing toxics never does.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::ProxyError;
use crate::link::{
    ActiveToxic, DRAIN_CLOSE, DRAIN_NONE, DRAIN_RELEASE, DRAIN_RESET, Live, ProxyShared, Snapshot,
    serve_connection,
};
use crate::pool::BufPool;
use crate::toxic::Toxic;

/// Tuning of a [`ProxyServer`]; the defaults suit bulk and latency work alike.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Size of one chunk buffer (and of the largest single read).
    pub buffer_size: usize,
    /// Free buffers kept for reuse across the server; more are freed.
    pub max_pooled_buffers: usize,
    /// Bytes one direction of one connection may hold in flight under toxics
    /// (the bandwidth-delay product: 500 MB/s through 100 ms needs 50 MB).
    pub max_queue_bytes: usize,
    /// SO_MARK on upstream sockets, so nftables redirects can exclude the
    /// proxy's own traffic (transparent mode).
    pub upstream_mark: Option<u32>,
    /// Move bulk data without toxics with splice(2) (zero-copy) instead of
    /// read/write. Each direction that carried bulk data then holds a pipe
    /// (two descriptors) for its lifetime.
    pub splice: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            buffer_size: 64 * 1024,
            max_pooled_buffers: 1024,
            max_queue_bytes: 64 * 1024 * 1024,
            upstream_mark: None,
            splice: true,
        }
    }
}

/// What it takes to create a proxy (Toxiproxy's create/populate body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyConfig {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// `IP:PORT` to listen on; port 0 picks a free one. Empty means 127.0.0.1:0.
    #[serde(default)]
    pub listen: String,
    /// `host:port` of the upstream server.
    #[serde(default)]
    pub upstream: String,
    /// Start listening at once (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

impl ProxyConfig {
    /// An enabled proxy config.
    pub fn new(
        name: impl Into<String>,
        listen: impl Into<String>,
        upstream: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            listen: listen.into(),
            upstream: upstream.into(),
            enabled: true,
        }
    }

    fn check(&self, position: Option<usize>) -> Result<(), ProxyError> {
        let at = position
            .map(|i| format!(" at proxy {}", i + 1))
            .unwrap_or_default();
        if self.name.is_empty() {
            return Err(ProxyError::MissingField(format!("name{at}")));
        }
        if self.upstream.is_empty() {
            return Err(ProxyError::MissingField(format!("upstream{at}")));
        }
        Ok(())
    }
}

/// A proxy as Toxiproxy shows it: `{name, listen, upstream, enabled, toxics}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyInfo {
    /// Name.
    pub name: String,
    /// The bound address once started (the port resolved), else as configured.
    pub listen: String,
    /// Upstream `host:port`.
    pub upstream: String,
    /// Listening or not.
    pub enabled: bool,
    /// Upstream toxics first, then downstream, each in creation order.
    pub toxics: Vec<Toxic>,
}

/// Partial update of a proxy (Toxiproxy's `POST /proxies/{name}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyUpdate {
    /// New listen address.
    #[serde(default)]
    pub listen: Option<String>,
    /// New upstream.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Enable or disable.
    #[serde(default)]
    pub enabled: Option<bool>,
}

// === impl ProxyServer ===

/// A set of named proxies sharing one buffer pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProxyServer {
    inner: Arc<ServerInner>,
}

#[derive(Debug)]
struct ServerInner {
    proxies: Mutex<BTreeMap<String, Proxy>>,
    pool: Arc<BufPool>,
    opts: ServerOptions,
    handle: Handle,
    serial: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl ProxyServer {
    /// A server with default options. Must be called inside a tokio runtime,
    /// whose handle then runs every proxy.
    pub fn new() -> Result<Self, ProxyError> {
        Self::with_options(ServerOptions::default())
    }

    /// A server with the given options; see [`ProxyServer::new`].
    pub fn with_options(opts: ServerOptions) -> Result<Self, ProxyError> {
        let handle = Handle::try_current().map_err(|_| ProxyError::NoRuntime)?;
        Ok(Self {
            inner: Arc::new(ServerInner {
                proxies: Mutex::new(BTreeMap::new()),
                pool: Arc::new(BufPool::new(opts.buffer_size, opts.max_pooled_buffers)),
                opts,
                handle,
                serial: Arc::new(AtomicU64::new(1)),
            }),
        })
    }

    /// Creates a proxy; starts it when `enabled`.
    pub fn create(&self, config: ProxyConfig) -> Result<Proxy, ProxyError> {
        config.check(None)?;
        let mut proxies = lock(&self.inner.proxies);
        if proxies.contains_key(&config.name) {
            return Err(ProxyError::ProxyAlreadyExists);
        }
        let proxy = self.new_proxy(&config);
        if config.enabled {
            proxy.set_enabled(true)?;
        }
        proxies.insert(config.name.clone(), proxy.clone());
        Ok(proxy)
    }

    fn new_proxy(&self, config: &ProxyConfig) -> Proxy {
        let (changed, _) = watch::channel(());
        Proxy {
            inner: Arc::new(ProxyInner {
                name: config.name.clone(),
                handle: self.inner.handle.clone(),
                serial: Arc::clone(&self.inner.serial),
                shared: Arc::new(ProxyShared {
                    toxics: ArcSwap::from_pointee(Snapshot::default()),
                    generation: AtomicU64::new(0),
                    changed,
                    pool: Arc::clone(&self.inner.pool),
                    max_queue_bytes: self.inner.opts.max_queue_bytes,
                    upstream_mark: self.inner.opts.upstream_mark,
                    splice: self.inner.opts.splice,
                    drain: AtomicU8::new(DRAIN_NONE),
                    live: AtomicUsize::new(0),
                    none_live: tokio::sync::Notify::new(),
                    drain_span_ms: AtomicU64::new(0),
                    drained_closed: AtomicUsize::new(0),
                    drained_reset: AtomicUsize::new(0),
                }),
                state: Mutex::new(ProxyState {
                    listen: config.listen.clone(),
                    upstream: config.upstream.clone(),
                    enabled: false,
                    toxics: Vec::new(),
                    running: None,
                }),
            }),
        }
    }

    /// Creates or replaces proxies, Toxiproxy's `/populate`: all configs are
    /// checked first; a proxy with the same name, listen and upstream is kept
    /// as it is, one that differs is replaced. On error, the proxies done so far
    /// are returned with it.
    pub fn populate(
        &self,
        configs: Vec<ProxyConfig>,
    ) -> Result<Vec<Proxy>, (ProxyError, Vec<Proxy>)> {
        for (i, c) in configs.iter().enumerate() {
            c.check(Some(i)).map_err(|e| (e, Vec::new()))?;
        }
        let mut done = Vec::with_capacity(configs.len());
        for config in configs {
            let existing = lock(&self.inner.proxies).get(&config.name).cloned();
            if let Some(p) = existing {
                let info = p.info();
                if info.listen == config.listen && info.upstream == config.upstream {
                    done.push(p);
                    continue;
                }
                let _ = self.remove(&config.name);
            }
            match self.create(config) {
                Ok(p) => done.push(p),
                Err(e) => return Err((e, done)),
            }
        }
        Ok(done)
    }

    /// The proxy of that name.
    pub fn get(&self, name: &str) -> Result<Proxy, ProxyError> {
        lock(&self.inner.proxies)
            .get(name)
            .cloned()
            .ok_or(ProxyError::ProxyNotFound)
    }

    /// All proxies, by name.
    pub fn list(&self) -> Vec<Proxy> {
        lock(&self.inner.proxies).values().cloned().collect()
    }

    /// Stops and deletes a proxy; its connections are closed (as Toxiproxy).
    pub fn remove(&self, name: &str) -> Result<(), ProxyError> {
        let proxy = lock(&self.inner.proxies)
            .remove(name)
            .ok_or(ProxyError::ProxyNotFound)?;
        proxy.stop();
        Ok(())
    }

    /// Toxiproxy's `/reset`: every proxy enabled, every toxic removed.
    /// Established connections keep flowing.
    pub fn reset(&self) -> Result<(), ProxyError> {
        for proxy in self.list() {
            proxy.remove_all_toxics();
            proxy.set_enabled(true)?;
        }
        Ok(())
    }

    /// Stops every proxy and forgets them.
    pub fn shutdown(&self) {
        let proxies = std::mem::take(&mut *lock(&self.inner.proxies));
        for p in proxies.into_values() {
            p.stop();
        }
    }
}

// === impl Proxy ===

/// One proxy. Cheap to clone; all clones drive the same proxy.
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

#[derive(Debug)]
struct ProxyInner {
    name: String,
    handle: Handle,
    serial: Arc<AtomicU64>,
    shared: Arc<ProxyShared>,
    state: Mutex<ProxyState>,
}

#[derive(Debug)]
struct ProxyState {
    listen: String,
    upstream: String,
    enabled: bool,
    toxics: Vec<ActiveToxic>,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    addr: SocketAddr,
    /// Tells this run's connections to close (with a wake-up of all).
    killed: Arc<AtomicBool>,
    /// Absent while a `refuse` toxic holds the listener closed.
    accept: Option<Acceptor>,
}

#[derive(Debug)]
struct Acceptor {
    task: JoinHandle<()>,
    /// A second descriptor of the listening socket, to stop listening
    /// synchronously (the task drops its own a moment later).
    socket: socket2::Socket,
}

impl Acceptor {
    fn stop(self) {
        // shutdown() on a listening socket stops it listening at once: a connect
        // right after the API call returns is refused, not accepted.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        self.task.abort();
    }
}

fn parse_listen(listen: &str) -> Result<SocketAddr, ProxyError> {
    let text = if listen.is_empty() {
        "127.0.0.1:0"
    } else {
        listen
    };
    if let Ok(a) = text.parse() {
        return Ok(a);
    }
    text.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| ProxyError::BadListen(listen.to_owned()))
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ProxyError> {
    let err = |source| ProxyError::Bind {
        addr: addr.to_string(),
        source,
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    Ok(socket.into())
}

impl Proxy {
    /// The proxy's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The bound address while enabled.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.state().running.as_ref().map(|r| r.addr)
    }

    fn state(&self) -> MutexGuard<'_, ProxyState> {
        lock(&self.inner.state)
    }

    /// The Toxiproxy JSON view.
    pub fn info(&self) -> ProxyInfo {
        let st = self.state();
        ProxyInfo {
            name: self.inner.name.clone(),
            listen: st.listen.clone(),
            upstream: st.upstream.clone(),
            enabled: st.enabled,
            toxics: ordered(&st.toxics),
        }
    }

    /// Enables (binds and accepts) or disables (stops listening, closes its
    /// connections) the proxy.
    pub fn set_enabled(&self, enabled: bool) -> Result<(), ProxyError> {
        let mut st = self.state();
        if enabled == st.enabled {
            return Ok(());
        }
        if enabled {
            self.start(&mut st)
        } else {
            self.stop_locked(&mut st);
            Ok(())
        }
    }

    /// Applies a Toxiproxy-style update: a changed listen or upstream restarts
    /// the proxy (closing its connections), as in Toxiproxy.
    pub fn update(&self, update: ProxyUpdate) -> Result<(), ProxyError> {
        let mut st = self.state();
        let listen = update.listen.unwrap_or_else(|| st.listen.clone());
        let upstream = update.upstream.unwrap_or_else(|| st.upstream.clone());
        let enabled = update.enabled.unwrap_or(st.enabled);
        if listen != st.listen || upstream != st.upstream {
            self.stop_locked(&mut st);
            st.listen = listen;
            st.upstream = upstream;
        }
        if enabled != st.enabled {
            if enabled {
                self.start(&mut st)?;
            } else {
                self.stop_locked(&mut st);
            }
        }
        Ok(())
    }

    fn start(&self, st: &mut ProxyState) -> Result<(), ProxyError> {
        let addr = parse_listen(&st.listen)?;
        let listener = bind(addr)?;
        let bound = listener.local_addr().map_err(|source| ProxyError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let mut running = Running {
            // Rebinding after `refuse` must get the same port back.
            addr: bound,
            killed: Arc::new(AtomicBool::new(false)),
            accept: None,
        };
        let accept = self.spawn_acceptor(listener, &running, &st.upstream)?;
        running.accept = Some(accept);
        self.inner.shared.drain.store(DRAIN_NONE, Ordering::Release);
        st.listen = bound.to_string();
        st.enabled = true;
        st.running = Some(running);
        tracing::info!(proxy = %self.inner.name, listen = %bound, upstream = %st.upstream, "proxy started");
        self.sync_refuse(st);
        Ok(())
    }

    fn spawn_acceptor(
        &self,
        listener: std::net::TcpListener,
        running: &Running,
        upstream: &str,
    ) -> Result<Acceptor, ProxyError> {
        let bind_err = |source| ProxyError::Bind {
            addr: running.addr.to_string(),
            source,
        };
        let dup = socket2::Socket::from(listener.try_clone().map_err(bind_err)?);
        let listener = {
            let _rt = self.inner.handle.enter();
            tokio::net::TcpListener::from_std(listener).map_err(bind_err)?
        };
        let task = self.inner.handle.spawn(accept_loop(
            listener,
            Arc::from(upstream),
            Arc::clone(&self.inner.shared),
            Arc::clone(&running.killed),
            self.inner.handle.clone(),
        ));
        Ok(Acceptor { task, socket: dup })
    }

    fn stop_locked(&self, st: &mut ProxyState) {
        if let Some(running) = st.running.take() {
            if let Some(a) = running.accept {
                a.stop();
            }
            running.killed.store(true, Ordering::Release);
            self.inner.shared.wake_connections();
        }
        st.enabled = false;
    }

    fn stop(&self) {
        self.stop_locked(&mut self.state());
    }

    /// Closes the listener while a `refuse` toxic with toxicity 1 exists, and
    /// reopens it (same address) when it is gone.
    fn sync_refuse(&self, st: &mut ProxyState) {
        let refuse_all = self
            .inner
            .shared
            .toxics
            .load()
            .refuse()
            .is_some_and(|p| p >= 1.0);
        let upstream = st.upstream.clone();
        let Some(running) = st.running.as_mut() else {
            return;
        };
        match (refuse_all, running.accept.is_some()) {
            (true, true) => {
                if let Some(a) = running.accept.take() {
                    a.stop();
                }
            }
            (false, false) => match bind(running.addr) {
                Ok(l) => match self.spawn_acceptor(l, running, &upstream) {
                    Ok(a) => running.accept = Some(a),
                    Err(e) => {
                        tracing::warn!(proxy = %self.inner.name, error = %e, "cannot reopen listener")
                    }
                },
                Err(e) => {
                    tracing::warn!(proxy = %self.inner.name, error = %e, "cannot reopen listener after refuse");
                }
            },
            _ => {}
        }
    }

    fn publish(&self, st: &mut ProxyState) {
        self.inner.shared.publish(Snapshot {
            toxics: st.toxics.clone(),
        });
        self.sync_refuse(st);
    }

    fn next_serial(&self) -> u64 {
        self.inner.serial.fetch_add(1, Ordering::Relaxed)
    }

    /// Toxics, upstream first then downstream, each in creation order.
    pub fn toxics(&self) -> Vec<Toxic> {
        ordered(&self.state().toxics)
    }

    /// The toxic of that name.
    pub fn toxic(&self, name: &str) -> Result<Toxic, ProxyError> {
        self.state()
            .toxics
            .iter()
            .find(|t| t.toxic.name == name)
            .map(|t| t.toxic.clone())
            .ok_or(ProxyError::ToxicNotFound)
    }

    /// Adds a toxic; established connections pick it up at once.
    pub fn add_toxic(&self, toxic: Toxic) -> Result<Toxic, ProxyError> {
        if !(0.0..=1.0).contains(&toxic.toxicity) {
            return Err(ProxyError::BadRequestBody(format!(
                "toxicity must be between 0 and 1, got {}",
                toxic.toxicity
            )));
        }
        let mut st = self.state();
        if st.toxics.iter().any(|t| t.toxic.name == toxic.name) {
            return Err(ProxyError::ToxicAlreadyExists);
        }
        let serial = self.next_serial();
        st.toxics.push(ActiveToxic {
            toxic: toxic.clone(),
            serial,
        });
        self.publish(&mut st);
        tracing::info!(proxy = %self.inner.name, toxic = %toxic.name, kind = toxic.kind.type_name(), "toxic added");
        Ok(toxic)
    }

    /// Replaces a toxic by name with `f(current)`.
    pub fn update_toxic(
        &self,
        name: &str,
        f: impl FnOnce(&Toxic) -> Result<Toxic, ProxyError>,
    ) -> Result<Toxic, ProxyError> {
        let mut st = self.state();
        let serial = self.next_serial();
        let slot = st
            .toxics
            .iter_mut()
            .find(|t| t.toxic.name == name)
            .ok_or(ProxyError::ToxicNotFound)?;
        let updated = f(&slot.toxic)?;
        *slot = ActiveToxic {
            toxic: updated.clone(),
            serial,
        };
        self.publish(&mut st);
        Ok(updated)
    }

    /// Removes a toxic; connections keep flowing without it.
    pub fn remove_toxic(&self, name: &str) -> Result<(), ProxyError> {
        let mut st = self.state();
        let before = st.toxics.len();
        st.toxics.retain(|t| t.toxic.name != name);
        if st.toxics.len() == before {
            return Err(ProxyError::ToxicNotFound);
        }
        self.publish(&mut st);
        tracing::info!(proxy = %self.inner.name, toxic = %name, "toxic removed");
        Ok(())
    }

    /// Removes every toxic.
    pub fn remove_all_toxics(&self) {
        let mut st = self.state();
        st.toxics.clear();
        self.publish(&mut st);
    }

    /// First step of a drain: removes every toxic and releases the data they
    /// hold at once (a latency toxic's queued chunks go out now, in order), so
    /// requests in flight finish without the fault. Connections stay open.
    pub fn begin_drain(&self) {
        let shared = &self.inner.shared;
        // Before the publish: connections rebuilding on it see the drain.
        let _ = shared.drain.compare_exchange(
            DRAIN_NONE,
            DRAIN_RELEASE,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.remove_all_toxics();
    }

    /// Drains the proxy's connections by `deadline`: each is closed gracefully
    /// (FIN to both peers, then their FINs awaited) once idle, that is both
    /// directions wait for data with nothing held, the last bytes went
    /// downstream (a response, not a request awaiting one) and nothing moved
    /// for [`crate::DRAIN_QUIET`] (5 ms in the second half of the drain, for
    /// keep-alive connections reused at once). Whatever is still open at the deadline
    /// is reset (RST both ways). Begins the drain if [`Proxy::begin_drain`] was
    /// not called. The listener keeps accepting (connections already redirected
    /// to it are served and drained too); stop the proxy afterwards.
    pub async fn drain(&self, deadline: std::time::Instant) -> DrainReport {
        let shared = &self.inner.shared;
        if shared.drain_state() == DRAIN_NONE {
            self.begin_drain();
        }
        let closed_before = shared.drained_closed.load(Ordering::Relaxed);
        let reset_before = shared.drained_reset.load(Ordering::Relaxed);
        let span = deadline.saturating_duration_since(std::time::Instant::now());
        shared.drain_span_ms.store(
            u64::try_from(span.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        shared.drain.store(DRAIN_CLOSE, Ordering::Release);
        shared.wake_connections();
        let mut drained = self.none_live(deadline.into()).await;
        if !drained {
            shared.drain.store(DRAIN_RESET, Ordering::Release);
            shared.wake_connections();
            // Resetting takes one poll of each connection task.
            drained = self
                .none_live(tokio::time::Instant::now() + RESET_GRACE)
                .await;
        }
        let report = DrainReport {
            closed: shared.drained_closed.load(Ordering::Relaxed) - closed_before,
            reset: shared.drained_reset.load(Ordering::Relaxed) - reset_before,
            left: if drained {
                0
            } else {
                shared.live.load(Ordering::Acquire)
            },
        };
        tracing::info!(proxy = %self.inner.name, closed = report.closed, reset = report.reset, left = report.left, "proxy drained");
        report
    }

    /// Waits until no connection is live or `deadline`; whether none is.
    async fn none_live(&self, deadline: tokio::time::Instant) -> bool {
        let shared = &self.inner.shared;
        loop {
            let notified = shared.none_live.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if shared.live.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return shared.live.load(Ordering::Acquire) == 0;
            }
        }
    }
}

/// How long a drain waits for reset connections to end after its deadline.
const RESET_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// What [`Proxy::drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections closed gracefully (FIN both ways) once idle.
    pub closed: usize,
    /// Connections reset: busy at the deadline, or data crossed the close.
    pub reset: usize,
    /// Connections still open after the reset (their tasks did not end).
    pub left: usize,
}

fn ordered(toxics: &[ActiveToxic]) -> Vec<Toxic> {
    let mut out: Vec<Toxic> = Vec::with_capacity(toxics.len());
    for stream in [
        crate::toxic::Stream::Upstream,
        crate::toxic::Stream::Downstream,
    ] {
        out.extend(
            toxics
                .iter()
                .filter(|t| t.toxic.stream == stream)
                .map(|t| t.toxic.clone()),
        );
    }
    out
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    upstream: Arc<str>,
    shared: Arc<ProxyShared>,
    killed: Arc<AtomicBool>,
    handle: Handle,
) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // The listener was shut down (disable, refuse) or the process is
                // out of descriptors; either way, don't spin.
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Some(p) = shared.toxics.load().refuse()
            && rand::random::<f32>() < p
        {
            tracing::debug!(%peer, "refuse toxic: resetting new connection");
            let _ = socket2::SockRef::from(&sock).set_linger(Some(std::time::Duration::ZERO));
            drop(sock);
            continue;
        }
        let live = Live::new(&shared);
        handle.spawn(serve_connection(
            sock,
            Arc::clone(&upstream),
            Arc::clone(&shared),
            Arc::clone(&killed),
            live,
        ));
    }
}
