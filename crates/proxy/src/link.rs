//! The data path: one task per proxied connection, driving both directions.
//!
//! Each direction builds its toxic chain from an immutable snapshot of the
//! proxy's toxics (an `ArcSwap`, loaded lock-free) when it starts and whenever
//! the proxy signals a change, so updating toxics never locks the data path per
//! chunk, and a removed toxic never drops a connection: the connection just
//! continues with the new chain.
//!
//! With no toxic active a direction is a plain read/write loop. With toxics, each
//! chunk is stamped on arrival and queued with its release instant (arrival +
//! latency ± jitter); a bounded queue keeps many chunks in flight, so a 100 ms
//! latency toxic delays data without capping throughput. Buffers come from a
//! shared pool and go back to it when a direction goes idle: idle connections
//! hold no buffer.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use rand::Rng;
use tokio::io::Interest;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};

use crate::pool::BufPool;
use crate::timer;
use crate::toxic::{Slicer, Stream, Toxic, ToxicKind};

/// Chunks arriving within this window are appended to the previous chunk's
/// buffer (their release moves to the later stamp), so trickles of small writes
/// under a latency toxic do not pin one pool buffer each.
const MERGE_WINDOW: Duration = Duration::from_micros(100);

/// How early the timer wakes a direction with few chunks in flight, which then
/// yields until the exact release instant.
const SPIN_WINDOW: Duration = Duration::from_micros(300);

/// Reads per wake before giving other tasks a turn.
const READS_PER_TURN: usize = 16;

/// While a proxy drains, a connection is closed once it has been idle this
/// long: both directions waiting for data, nothing held, and the last bytes
/// went downstream (a response, not a request still waiting for its answer).
pub const DRAIN_QUIET: Duration = Duration::from_millis(50);

/// How often a draining connection looks at its activity.
const DRAIN_TICK: Duration = Duration::from_millis(10);

/// In the second half of a drain, a connection that never stays quiet for
/// [`DRAIN_QUIET`] (a keep-alive connection reused at once) is closed after a
/// shorter quiet, looked at more often: right after a response beats a reset
/// at the deadline, which would fail the request in flight for certain.
const DRAIN_QUIET_LATE: Duration = Duration::from_millis(5);
const DRAIN_TICK_LATE: Duration = Duration::from_millis(1);

/// Drain states of a proxy ([`ProxyShared::drain`]).
pub(crate) const DRAIN_NONE: u8 = 0;
/// Toxics removed; data they held is released at once.
pub(crate) const DRAIN_RELEASE: u8 = 1;
/// Idle connections are closed gracefully (FIN both ways).
pub(crate) const DRAIN_CLOSE: u8 = 2;
/// The drain's deadline passed: every connection left is reset.
pub(crate) const DRAIN_RESET: u8 = 3;

/// A toxic as held in a snapshot, with a serial that changes on every add or
/// update, so per-connection rolls and timers restart exactly when it changes.
#[derive(Debug, Clone)]
pub(crate) struct ActiveToxic {
    pub(crate) toxic: Toxic,
    pub(crate) serial: u64,
}

/// The immutable set of toxics of a proxy at one instant.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) toxics: Vec<ActiveToxic>,
}

impl Snapshot {
    /// Toxicity of a `refuse` toxic, the highest if several.
    pub(crate) fn refuse(&self) -> Option<f32> {
        self.toxics
            .iter()
            .filter(|t| matches!(t.toxic.kind, ToxicKind::Refuse(_)))
            .map(|t| t.toxic.toxicity)
            .reduce(f32::max)
    }
}

/// State shared by a proxy's listener and its connections.
#[derive(Debug)]
pub(crate) struct ProxyShared {
    pub(crate) toxics: ArcSwap<Snapshot>,
    /// Bumped after every change of `toxics` (and on kill); directions compare
    /// it on every wake-up, an atomic load.
    pub(crate) generation: AtomicU64,
    /// Signalled after `generation` moved. Only the connection task waits on it,
    /// with one registration kept across wake-ups; its wake-up makes both
    /// directions look at `generation`.
    pub(crate) changed: watch::Sender<()>,
    pub(crate) pool: Arc<BufPool>,
    pub(crate) max_queue_bytes: usize,
    /// SO_MARK for upstream sockets (transparent mode excludes them by mark).
    pub(crate) upstream_mark: Option<u32>,
    /// Bulk pass-through uses splice(2) instead of copying through user space.
    pub(crate) splice: bool,
    /// One of `DRAIN_*`; read by connections on a wake-up, never per chunk.
    pub(crate) drain: AtomicU8,
    /// Connections being served (accepted and not yet ended).
    pub(crate) live: AtomicUsize,
    /// Notified when `live` drops to zero.
    pub(crate) none_live: Notify,
    /// The running drain's span (start to deadline), in ms.
    pub(crate) drain_span_ms: AtomicU64,
    /// Connections a drain closed gracefully / reset at its deadline.
    pub(crate) drained_closed: AtomicUsize,
    pub(crate) drained_reset: AtomicUsize,
}

impl ProxyShared {
    pub(crate) fn publish(&self, snapshot: Snapshot) {
        self.toxics.store(Arc::new(snapshot));
        self.wake_connections();
    }

    /// Makes every connection re-read its state (toxics, kill flag).
    pub(crate) fn wake_connections(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changed.send_replace(());
    }

    pub(crate) fn drain_state(&self) -> u8 {
        self.drain.load(Ordering::Acquire)
    }
}

/// One live connection of a proxy; counted from accept until its task ends.
#[derive(Debug)]
pub(crate) struct Live(Arc<ProxyShared>);

impl Live {
    pub(crate) fn new(shared: &Arc<ProxyShared>) -> Self {
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

/// What a connection's directions tell a drain, without a clock read or a
/// lock on the data path: `moved` is the last direction's own read count
/// (shifted left) with bit 0 set for downstream, stored after every read
/// (each value is stored once, so an unchanged load means nothing moved),
/// and each direction says whether it waits for data holding nothing.
#[derive(Debug, Default)]
struct Activity {
    moved: AtomicU64,
    parked: [AtomicBool; 2],
}

impl Activity {
    /// Whether the last bytes read went upstream (a request not yet answered).
    fn last_was_upstream(sample: u64) -> bool {
        sample != 0 && sample & 1 == 0
    }
}

fn stream_index(stream: Stream) -> usize {
    match stream {
        Stream::Upstream => 0,
        Stream::Downstream => 1,
    }
}

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirEnd {
    /// Source closed; the FIN was forwarded. The other direction goes on.
    Eof,
    /// Close the whole connection (limit reached, timeout expired, I/O error).
    Close,
    /// Reset the whole connection (linger 0 already set on both sockets).
    Reset,
}

pub(crate) async fn connect_upstream(upstream: &str, mark: Option<u32>) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "upstream resolved to no address");
    for addr in tokio::net::lookup_host(upstream).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(mark) = mark {
            socket2::SockRef::from(&socket).set_mark(mark)?;
        }
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

type Wake = Pin<Box<dyn Future<Output = watch::Receiver<()>> + Send>>;

fn wait_change(mut rx: watch::Receiver<()>) -> Wake {
    Box::pin(async move {
        if rx.changed().await.is_err() {
            // The sender lives as long as the proxy; never spin on a closed one.
            std::future::pending::<()>().await;
        }
        rx
    })
}

/// Drives one accepted client connection until both directions ended, the
/// connection was closed or reset by a toxic, or `killed` is set.
pub(crate) async fn serve_connection(
    client: TcpStream,
    upstream: Arc<str>,
    shared: Arc<ProxyShared>,
    killed: Arc<AtomicBool>,
    _live: Live,
) {
    let mut wake = wait_change(shared.changed.subscribe());
    let connect = connect_upstream(&upstream, shared.upstream_mark);
    tokio::pin!(connect);
    let server = loop {
        if killed.load(Ordering::Acquire) {
            return;
        }
        if shared.drain_state() == DRAIN_RESET {
            set_reset(&client);
            shared.drained_reset.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tokio::select! {
            r = &mut connect => match r {
                Ok(s) => break s,
                Err(e) => {
                    tracing::debug!(upstream = %upstream, error = %e, "upstream connect failed; closing client");
                    return;
                }
            },
            rx = &mut wake => wake = wait_change(rx),
        }
    };
    // Small writes must not wait for Nagle on either side of the proxy.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let seed: u64 = rand::random();

    let activity = Activity::default();
    let up = Direction::new(Stream::Upstream, &client, &server, &shared, seed, &activity).run();
    let down = Direction::new(
        Stream::Downstream,
        &server,
        &client,
        &shared,
        seed,
        &activity,
    )
    .run();
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    // Only while the proxy drains: a tick, and the activity seen at the last
    // tick with the instant it was first seen.
    let mut tick: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut quiet_since = (u64::MAX, Instant::now());
    let mut late_at = Instant::now();
    while !(up_done && down_done) {
        if tick.is_none() && shared.drain_state() >= DRAIN_CLOSE {
            tick = Some(Box::pin(tokio::time::sleep(Duration::ZERO)));
            let span = Duration::from_millis(shared.drain_span_ms.load(Ordering::Relaxed));
            late_at = Instant::now() + span / 2;
        }
        // Directions first: data that woke the task with the tick counts.
        let end = tokio::select! {
            biased;
            end = &mut up, if !up_done => { up_done = true; end }
            end = &mut down, if !down_done => { down_done = true; end }
            rx = &mut wake => {
                wake = wait_change(rx);
                if killed.load(Ordering::Acquire) {
                    DirEnd::Close
                } else if shared.drain_state() == DRAIN_RESET {
                    DirEnd::Reset
                } else {
                    DirEnd::Eof
                }
            }
            () = OptSleep(&mut tick) => {
                let now = Instant::now();
                let sample = activity.moved.load(Ordering::Relaxed);
                if sample != quiet_since.0 {
                    quiet_since = (sample, now);
                }
                let parked = |i: usize, done: bool| done || activity.parked[i].load(Ordering::Relaxed);
                let (quiet, every) = if now >= late_at {
                    (DRAIN_QUIET_LATE, DRAIN_TICK_LATE)
                } else {
                    (DRAIN_QUIET, DRAIN_TICK)
                };
                let idle = parked(0, up_done)
                    && parked(1, down_done)
                    && !Activity::last_was_upstream(sample)
                    && now.duration_since(quiet_since.1) >= quiet;
                if idle {
                    close_gracefully(&client, &server, &shared, &killed, &mut wake).await;
                    return;
                }
                if let Some(t) = tick.as_mut() {
                    t.as_mut().reset((now + every).into());
                }
                DirEnd::Eof
            }
        };
        match end {
            DirEnd::Eof => {}
            DirEnd::Reset => {
                if shared.drain_state() == DRAIN_RESET {
                    set_reset(&client);
                    set_reset(&server);
                    shared.drained_reset.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            DirEnd::Close => break,
        }
    }
    // Dropping the sockets closes them: FIN, or RST where linger 0 was set.
}

/// A draining connection found idle: FIN to both peers, then wait for theirs.
/// Data arriving meanwhile (a request that crossed the FIN) cannot be answered
/// any more: the connection is reset, so that client fails at once instead of
/// waiting. The drain's deadline resets a peer that never closes.
async fn close_gracefully(
    client: &TcpStream,
    server: &TcpStream,
    shared: &ProxyShared,
    killed: &AtomicBool,
    wake: &mut Wake,
) {
    let _ = socket2::SockRef::from(client).shutdown(Shutdown::Write);
    let _ = socket2::SockRef::from(server).shutdown(Shutdown::Write);
    let (mut client_eof, mut server_eof) = (false, false);
    while !(client_eof && server_eof) {
        let clean = tokio::select! {
            clean = await_eof(client), if !client_eof => { client_eof = true; clean }
            clean = await_eof(server), if !server_eof => { server_eof = true; clean }
            rx = &mut *wake => {
                *wake = wait_change(rx);
                if killed.load(Ordering::Acquire) {
                    return;
                }
                shared.drain_state() != DRAIN_RESET
            }
        };
        if !clean {
            set_reset(client);
            set_reset(server);
            shared.drained_reset.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    shared.drained_closed.fetch_add(1, Ordering::Relaxed);
}

/// Waits for the peer's FIN: `true` on EOF, `false` on data or an error.
async fn await_eof(sock: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    loop {
        if sock.readable().await.is_err() {
            return false;
        }
        match sock.try_read(&mut byte) {
            Ok(0) => return true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Ok(_) | Err(_) => return false,
        }
    }
}

/// A sleep that exists only while a drain runs; pending otherwise.
struct OptSleep<'a>(&'a mut Option<Pin<Box<tokio::time::Sleep>>>);

impl Future for OptSleep<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.as_mut() {
            Some(s) => s.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// Ready once the proxy's generation moved past `seen`. Registers no waker:
/// the connection task's `wake` future does, and any wake-up of the task
/// polls this again.
struct GenChanged<'a> {
    generation: &'a AtomicU64,
    seen: u64,
}

impl Future for GenChanged<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if self.generation.load(Ordering::Acquire) == self.seen {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

#[derive(Debug, Default)]
struct Chain {
    delay: Duration,
    jitter: Duration,
    /// Bytes per second.
    rate: Option<u64>,
    slow_close: Option<Duration>,
    /// `Some(None)`: blackhole forever; `Some(Some(t))`: close at t.
    blackhole: Option<Option<Instant>>,
    reset_at: Option<Instant>,
    /// Close once this many bytes were read on this direction.
    limit_at: Option<u64>,
    slicer: Option<Slicer>,
}

impl Chain {
    fn is_passthrough(&self) -> bool {
        self.delay.is_zero()
            && self.jitter.is_zero()
            && self.rate.is_none()
            && self.slow_close.is_none()
            && self.blackhole.is_none()
            && self.reset_at.is_none()
            && self.limit_at.is_none()
            && self.slicer.is_none()
    }
}

#[derive(Debug, Clone, Copy)]
struct Applied {
    serial: u64,
    since: Instant,
    bytes_at: u64,
}

#[derive(Debug)]
struct Chunk {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    arrived: Instant,
    release: Instant,
}

enum ReadOutcome {
    Blocked,
    More,
    Stop,
    Eof,
}

/// Deterministic per (connection, toxic serial) roll, so a toxic's decision for
/// a connection is stable until that toxic changes.
fn rolled(seed: u64, serial: u64, toxicity: f32) -> bool {
    if toxicity >= 1.0 {
        return true;
    }
    if toxicity <= 0.0 {
        return false;
    }
    let mut z = seed ^ serial.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    #[allow(clippy::cast_precision_loss)]
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
    unit < f64::from(toxicity)
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn min_opt<T: Ord>(a: Option<T>, b: T) -> Option<T> {
    Some(match a {
        Some(a) => a.min(b),
        None => b,
    })
}

fn set_reset(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

struct Direction<'a> {
    stream: Stream,
    reader: &'a TcpStream,
    writer: &'a TcpStream,
    shared: &'a ProxyShared,
    seen_gen: u64,
    seed: u64,
    chain: Chain,
    applied: Vec<Applied>,
    queue: VecDeque<Chunk>,
    queued: usize,
    total_in: u64,
    spare: Option<Vec<u8>>,
    eof_at: Option<Instant>,
    next_write_at: Option<Instant>,
    last_release: Option<Instant>,
    timer_armed: Option<Instant>,
    /// The reactor timer for deadlines, while the direction has toxics.
    /// Boxed: a connection task holds two directions inline.
    release_timer: Option<Box<timer::ReleaseTimer>>,
    release_timer_failed: bool,
    /// Set once the direction carried bulk data without toxics.
    pipe: Option<Pipe>,
    splice_failed: bool,
    /// What a drain reads of this connection; `reads` is this direction's
    /// count of reads that moved bytes.
    activity: &'a Activity,
    reads: u64,
}

/// A pipe for splice(2); kept by a direction once it saw bulk data.
#[derive(Debug)]
struct Pipe {
    read: std::fs::File,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // A bigger pipe moves more per syscall; the default (64 KiB) still works.
        let size = fcntl(&write, FcntlArg::F_SETPIPE_SZ(1 << 20))
            .ok()
            .and_then(|s| usize::try_from(s).ok())
            .unwrap_or(64 * 1024);
        Ok(Self {
            read: std::fs::File::from(read),
            write,
            size,
        })
    }

    /// Socket -> pipe. Called with an empty pipe, so EAGAIN means "socket empty".
    fn fill_from(&self, sock: &TcpStream) -> io::Result<usize> {
        Ok(splice(
            sock,
            None,
            &self.write,
            None,
            self.size,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        )?)
    }

    /// Pipe -> socket, at most `len` bytes.
    fn drain_to(&self, sock: &TcpStream, len: usize) -> io::Result<usize> {
        Ok(splice(
            &self.read,
            None,
            sock,
            None,
            len,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        )?)
    }
}

impl<'a> Direction<'a> {
    fn new(
        stream: Stream,
        reader: &'a TcpStream,
        writer: &'a TcpStream,
        shared: &'a ProxyShared,
        seed: u64,
        activity: &'a Activity,
    ) -> Self {
        Self {
            stream,
            reader,
            writer,
            shared,
            seen_gen: 0,
            seed,
            chain: Chain::default(),
            applied: Vec::new(),
            queue: VecDeque::new(),
            queued: 0,
            total_in: 0,
            spare: None,
            eof_at: None,
            next_write_at: None,
            last_release: None,
            timer_armed: None,
            release_timer: None,
            release_timer_failed: false,
            pipe: None,
            splice_failed: false,
            activity,
            reads: 0,
        }
    }

    /// Bytes were read: one relaxed store of a value never stored before.
    fn touch(&mut self) {
        self.reads += 1;
        let down = u64::from(self.stream == Stream::Downstream);
        self.activity
            .moved
            .store((self.reads << 1) | down, Ordering::Relaxed);
    }

    /// Whether this direction waits for data holding nothing (per wake-up).
    fn set_parked(&self, parked: bool) {
        self.activity.parked[stream_index(self.stream)].store(parked, Ordering::Relaxed);
    }

    async fn run(mut self) -> DirEnd {
        self.rebuild();
        let end = loop {
            if self.chain.is_passthrough() && self.queue.is_empty() && self.eof_at.is_none() {
                // No deadlines without toxics: the timer descriptor goes.
                self.release_timer = None;
                if let Some(end) = self.pass_through().await {
                    break end;
                }
                self.rebuild();
                continue;
            }
            if let Some(end) = self.step().await {
                break end;
            }
        };
        self.recycle_all();
        end
    }

    fn gen_changed(&self) -> bool {
        self.shared.generation.load(Ordering::Acquire) != self.seen_gen
    }

    fn changed(&self) -> GenChanged<'_> {
        GenChanged {
            generation: &self.shared.generation,
            seen: self.seen_gen,
        }
    }

    fn recycle_all(&mut self) {
        for c in self.queue.drain(..) {
            self.shared.pool.put(c.buf);
        }
        self.queued = 0;
        if let Some(b) = self.spare.take() {
            self.shared.pool.put(b);
        }
    }

    fn rebuild(&mut self) {
        // Generation first: a publish racing with this load is seen again later.
        self.seen_gen = self.shared.generation.load(Ordering::Acquire);
        let snapshot = self.shared.toxics.load_full();
        let now = Instant::now();
        let mut chain = Chain::default();
        let mut applied = Vec::new();
        for t in snapshot
            .toxics
            .iter()
            .filter(|t| t.toxic.stream == self.stream)
        {
            if !rolled(self.seed, t.serial, t.toxic.toxicity) {
                continue;
            }
            let prev = self.applied.iter().find(|a| a.serial == t.serial).copied();
            let a = prev.unwrap_or(Applied {
                serial: t.serial,
                since: now,
                bytes_at: self.total_in,
            });
            applied.push(a);
            match t.toxic.kind {
                ToxicKind::Latency(l) => {
                    chain.delay += ms(l.latency);
                    chain.jitter += ms(l.jitter);
                }
                ToxicKind::Bandwidth(b) => {
                    chain.rate = min_opt(chain.rate, b.rate.saturating_mul(1000));
                }
                ToxicKind::SlowClose(s) => {
                    chain.slow_close = Some(chain.slow_close.unwrap_or_default().max(ms(s.delay)));
                }
                ToxicKind::Timeout(to) => {
                    let at = (to.timeout > 0).then(|| a.since + ms(to.timeout));
                    chain.blackhole = Some(match (chain.blackhole.flatten(), at) {
                        (Some(x), Some(y)) => Some(x.min(y)),
                        (x, y) => x.or(y),
                    });
                }
                ToxicKind::ResetPeer(r) => {
                    chain.reset_at = min_opt(chain.reset_at, a.since + ms(r.timeout));
                }
                ToxicKind::LimitData(l) => {
                    chain.limit_at = min_opt(chain.limit_at, a.bytes_at.saturating_add(l.bytes));
                }
                ToxicKind::Slicer(s) => chain.slicer = Some(s),
                ToxicKind::Refuse(_) | ToxicKind::Noop(_) => {}
            }
        }
        self.chain = chain;
        self.applied = applied;
        self.next_write_at = None;
        if self.shared.drain_state() != DRAIN_NONE {
            // A drain stops the fault's effect at once: data a latency toxic
            // still holds goes out now, in order.
            for c in &mut self.queue {
                c.release = c.release.min(now);
            }
            self.last_release = None;
        }
    }

    /// The no-toxic loop. Returns `None` when the toxics changed.
    ///
    /// A read shorter than the buffer means the socket is drained, so readiness
    /// is cleared right away (tokio ignores the clear if a new event came in
    /// meanwhile, and never clears EOF), saving the EAGAIN read per message.
    /// A read that fills the buffer means bulk: the direction moves to splice.
    async fn pass_through(&mut self) -> Option<DirEnd> {
        loop {
            if self.pipe.is_some() {
                return self.splice_through().await;
            }
            self.set_parked(true);
            tokio::select! {
                biased;
                () = self.changed() => {
                    self.set_parked(false);
                    return None;
                }
                r = self.reader.readable() => if r.is_err() { return Some(DirEnd::Close) },
            }
            self.set_parked(false);
            let mut buf = self.shared.pool.get_local();
            let mut turns = 0usize;
            let mut bulk = false;
            let outcome = loop {
                let mut short = 0usize;
                let reader = self.reader;
                let r = reader.try_io(Interest::READABLE, || match reader.try_read(&mut buf) {
                    Ok(n) if n > 0 && n < buf.len() => {
                        short = n;
                        Err(io::ErrorKind::WouldBlock.into())
                    }
                    other => other,
                });
                let n = match r {
                    Ok(0) => break Some(self.forward_eof()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => short,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                    Err(_) => break Some(DirEnd::Close),
                };
                self.total_in += n as u64;
                self.touch();
                match self.write_or_park(&buf[..n]).await {
                    Ok(None) => {}
                    Ok(Some(written)) => {
                        // Toxics changed while the peer was not reading: the
                        // rest goes through the new chain (a reset or timeout
                        // must not wait for a stalled reader).
                        self.park(buf, written, n);
                        return None;
                    }
                    Err(_) => break Some(DirEnd::Close),
                }
                if short > 0 {
                    break None;
                }
                if self.gen_changed() {
                    self.shared.pool.put_local(buf);
                    return None;
                }
                if self.shared.splice && !self.splice_failed {
                    bulk = true;
                    break None;
                }
                turns += 1;
                if turns.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            };
            // Idle again: the buffer goes back, an idle connection holds none.
            self.shared.pool.put_local(buf);
            if outcome.is_some() {
                return outcome;
            }
            if bulk {
                match Pipe::new() {
                    Ok(p) => self.pipe = Some(p),
                    Err(e) => {
                        tracing::debug!(error = %e, "no pipe for splice; copying");
                        self.splice_failed = true;
                    }
                }
            }
        }
    }

    /// Zero-copy pass-through (socket -> pipe -> socket) for bulk streams.
    /// Returns `None` when the toxics changed (the pipe is empty then).
    async fn splice_through(&mut self) -> Option<DirEnd> {
        let pipe = self.pipe.as_ref()?;
        let mut turns = 0usize;
        loop {
            let reader = self.reader;
            let r = reader.try_io(Interest::READABLE, || pipe.fill_from(reader));
            let n = match r {
                Ok(0) => return Some(self.forward_eof()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.set_parked(true);
                    let mut changed = false;
                    tokio::select! {
                        biased;
                        () = self.changed() => changed = true,
                        r = self.reader.readable() => if r.is_err() { return Some(DirEnd::Close) },
                    }
                    self.set_parked(false);
                    if changed {
                        return None;
                    }
                    continue;
                }
                Err(_) => return Some(DirEnd::Close),
            };
            self.total_in += n as u64;
            self.reads += 1;
            let down = u64::from(self.stream == Stream::Downstream);
            self.activity
                .moved
                .store((self.reads << 1) | down, Ordering::Relaxed);
            let mut left = n;
            while left > 0 {
                let writer = self.writer;
                match writer.try_io(Interest::WRITABLE, || pipe.drain_to(writer, left)) {
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let mut changed = false;
                        tokio::select! {
                            biased;
                            () = self.changed() => changed = true,
                            r = self.writer.writable() => if r.is_err() { return Some(DirEnd::Close) },
                        }
                        if changed {
                            // The reader stalled and the toxics changed: move
                            // what the pipe holds into the queue, under the new chain.
                            return match self.unpipe(left) {
                                Ok(()) => None,
                                Err(_) => Some(DirEnd::Close),
                            };
                        }
                    }
                    Err(_) => return Some(DirEnd::Close),
                }
            }
            if self.gen_changed() {
                return None;
            }
            turns += 1;
            if turns.is_multiple_of(64) {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Writes `data`; `Ok(Some(written))` when the socket was full and the
    /// toxics changed before all of it went out.
    async fn write_or_park(&self, data: &[u8]) -> io::Result<Option<usize>> {
        let mut off = 0;
        while off < data.len() {
            match self.writer.try_write(&data[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::select! {
                        biased;
                        () = self.changed() => return Ok(Some(off)),
                        r = self.writer.writable() => r?,
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Queues the unwritten part of a pass-through buffer, due at once.
    fn park(&mut self, buf: Vec<u8>, start: usize, end: usize) {
        let now = Instant::now();
        self.queued += end - start;
        self.queue.push_back(Chunk {
            buf,
            start,
            end,
            arrived: now,
            release: now,
        });
    }

    /// Moves `left` bytes out of the splice pipe into queued buffers.
    fn unpipe(&mut self, mut left: usize) -> io::Result<()> {
        use std::io::Read;
        while left > 0 {
            let mut buf = self.shared.pool.get();
            let want = left.min(buf.len());
            let Some(pipe) = self.pipe.as_ref() else {
                return Err(io::ErrorKind::BrokenPipe.into());
            };
            let n = (&pipe.read).read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            left -= n;
            self.park(buf, 0, n);
        }
        Ok(())
    }

    fn forward_eof(&self) -> DirEnd {
        let _ = socket2::SockRef::from(self.writer).shutdown(Shutdown::Write);
        DirEnd::Eof
    }

    fn reset_both(&self) -> DirEnd {
        set_reset(self.reader);
        set_reset(self.writer);
        DirEnd::Reset
    }

    fn release_for(&mut self, now: Instant) -> Instant {
        let mut release = now + self.chain.delay;
        if !self.chain.jitter.is_zero() {
            let j = u64::try_from(self.chain.jitter.as_micros()).unwrap_or(u64::MAX);
            let offset = rand::rng().random_range(0..=j.saturating_mul(2));
            release = if offset >= j {
                release + Duration::from_micros(offset - j)
            } else {
                release
                    .checked_sub(Duration::from_micros(j - offset))
                    .unwrap_or(now)
                    .max(now)
            };
        }
        // Jitter never reorders the stream.
        if let Some(last) = self.last_release {
            release = release.max(last);
        }
        self.last_release = Some(release);
        release
    }

    /// One turn of the toxic path. `Some` ends the direction.
    async fn step(&mut self) -> Option<DirEnd> {
        let now = Instant::now();
        if self.chain.reset_at.is_some_and(|at| at <= now) {
            return Some(self.reset_both());
        }
        if let Some(Some(at)) = self.chain.blackhole
            && at <= now
        {
            return Some(DirEnd::Close);
        }
        let blackholed = self.chain.blackhole.is_some();

        let mut write_blocked = false;
        if !blackholed {
            match self.flush_due(now) {
                Ok(blocked) => write_blocked = blocked,
                Err(_) => return Some(DirEnd::Close),
            }
        }
        let limit_hit = self.chain.limit_at.is_some_and(|l| self.total_in >= l);
        if limit_hit && self.queue.is_empty() {
            return Some(DirEnd::Close);
        }
        let mut close_at = None;
        if let Some(eof_at) = self.eof_at
            && self.queue.is_empty()
            && !blackholed
        {
            let at = eof_at + self.chain.slow_close.unwrap_or_default();
            if at <= now {
                return Some(self.forward_eof());
            }
            close_at = Some(at);
        }

        let can_read = !blackholed
            && self.eof_at.is_none()
            && !limit_hit
            && self.queued < self.shared.max_queue_bytes;
        if can_read {
            match self.read_available(now) {
                Ok(ReadOutcome::Blocked) => {}
                Ok(ReadOutcome::More) => {
                    tokio::task::yield_now().await;
                    return None;
                }
                Ok(ReadOutcome::Stop) => return None,
                Ok(ReadOutcome::Eof) => {
                    self.eof_at = Some(now);
                    return None;
                }
                Err(_) => return Some(DirEnd::Close),
            }
        }
        if self.queue.is_empty()
            && let Some(b) = self.spare.take()
        {
            self.shared.pool.put(b);
        }

        let mut deadline: Option<Instant> = None;
        let mut merge = |t: Instant| deadline = min_opt(deadline, t);
        if let Some(at) = self.chain.reset_at {
            merge(at);
        }
        if let Some(Some(at)) = self.chain.blackhole {
            merge(at);
        }
        if let Some(at) = close_at {
            merge(at);
        }
        let stalled = self.chain.rate == Some(0);
        if !blackholed
            && !write_blocked
            && !stalled
            && let Some(head) = self.queue.front()
        {
            merge(
                self.next_write_at
                    .map_or(head.release, |t| t.max(head.release)),
            );
        }
        // A deadline is released on the reactor (a timerfd of this
        // direction's own, made the first time one is needed).
        if deadline.is_some() && self.release_timer.is_none() && !self.release_timer_failed {
            match timer::ReleaseTimer::new() {
                Ok(t) => self.release_timer = Some(Box::new(t)),
                Err(e) => {
                    tracing::debug!(error = %e, "no timerfd; releasing from the timer thread");
                    self.release_timer_failed = true;
                }
            }
        }
        // Waking a task takes time: 0.07-0.1 ms at the median from the
        // reactor's timerfd, 0.11-0.12 ms from the fallback timer thread, and
        // whatever the scheduler adds when other processes hold the cores. For
        // request/response traffic (few chunks in flight) the timer fires
        // that much early and the task yields until the exact instant; bulk
        // streams (many chunks) skip the spin, whose CPU they cannot afford
        // and whose precision they do not need.
        let spin = self.queue.len() <= 2;
        let sleep = deadline.map(|d| {
            let wake_at = if spin {
                d.checked_sub(SPIN_WINDOW).unwrap_or(d)
            } else {
                d
            };
            let fallback = match self.release_timer.as_mut().map(|t| t.arm(wake_at)) {
                Some(Ok(())) => None,
                other => {
                    if let Some(Err(e)) = other {
                        tracing::debug!(error = %e, "timerfd_settime failed; using the timer thread");
                        self.release_timer = None;
                        self.release_timer_failed = true;
                    }
                    let armed = self.timer_armed == Some(wake_at);
                    self.timer_armed = Some(wake_at);
                    Some(timer::sleep_until_armed(wake_at, armed))
                }
            };
            (fallback, d)
        });
        let reactor_timer = self.release_timer.as_deref();
        let mut changed = false;
        tokio::select! {
            biased;
            () = self.changed() => changed = true,
            () = async {
                if let Some((fallback, d)) = sleep {
                    match (fallback, reactor_timer) {
                        (Some(s), _) => s.await,
                        (None, Some(t)) => t.expired().await,
                        (None, None) => {}
                    }
                    while Instant::now() < d {
                        tokio::task::yield_now().await;
                    }
                }
            }, if deadline.is_some() => {}
            r = self.writer.writable(), if write_blocked => if r.is_err() { return Some(DirEnd::Close) },
            r = self.reader.readable(), if can_read => if r.is_err() { return Some(DirEnd::Close) },
        }
        if changed {
            self.rebuild();
        }
        None
    }

    /// Writes every chunk whose release time came. `Ok(true)`: the socket is full.
    fn flush_due(&mut self, now: Instant) -> io::Result<bool> {
        loop {
            let Some(head) = self.queue.front_mut() else {
                return Ok(false);
            };
            if head.release > now || self.next_write_at.is_some_and(|t| t > now) {
                return Ok(false);
            }
            let mut len = head.end - head.start;
            if let Some(s) = self.chain.slicer {
                let avg = s.average_size.max(1);
                let var = s.size_variation.min(avg - 1);
                let size = if var == 0 {
                    avg
                } else {
                    rand::rng().random_range(avg - var..=avg + var)
                };
                len = len.min(usize::try_from(size).unwrap_or(usize::MAX));
            }
            if let Some(rate) = self.chain.rate {
                if rate == 0 {
                    return Ok(false);
                }
                // At most 10 ms worth per write, then wait for the bucket.
                len = len.min(usize::try_from((rate / 100).max(1)).unwrap_or(usize::MAX));
            }
            let n = match self
                .writer
                .try_write(&head.buf[head.start..head.start + len])
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            };
            head.start += n;
            self.queued -= n;
            if head.start == head.end
                && let Some(done) = self.queue.pop_front()
            {
                if self.spare.is_none() {
                    self.spare = Some(done.buf);
                } else {
                    self.shared.pool.put(done.buf);
                }
            }
            let mut gate: Option<Instant> = None;
            if let Some(s) = self.chain.slicer {
                gate = Some(now + Duration::from_micros(s.delay));
            }
            if let Some(rate) = self.chain.rate {
                let secs = n as f64 / rate as f64;
                let t = now + Duration::from_secs_f64(secs);
                gate = Some(gate.map_or(t, |g| g.max(t)));
            }
            if gate.is_some() {
                self.next_write_at = gate;
                return Ok(false);
            }
        }
    }

    fn read_available(&mut self, now: Instant) -> io::Result<ReadOutcome> {
        let size = self.shared.pool.buf_size();
        for _ in 0..READS_PER_TURN {
            if self.queued >= self.shared.max_queue_bytes {
                return Ok(ReadOutcome::Stop);
            }
            let remaining_limit = self.chain.limit_at.map(|l| l.saturating_sub(self.total_in));
            let mergeable = self
                .queue
                .back()
                .is_some_and(|c| c.end < size && now.duration_since(c.arrived) <= MERGE_WINDOW);
            let read = if mergeable {
                match self.queue.back_mut() {
                    Some(c) => self.reader.try_read(&mut c.buf[c.end..]),
                    None => Ok(0),
                }
            } else {
                let mut buf = self.spare.take().unwrap_or_else(|| self.shared.pool.get());
                let r = self.reader.try_read(&mut buf);
                match r {
                    Ok(n) if n > 0 => {
                        let release = self.release_for(now);
                        self.queue.push_back(Chunk {
                            buf,
                            start: 0,
                            end: 0,
                            arrived: now,
                            release,
                        });
                    }
                    _ => self.spare = Some(buf),
                }
                r
            };
            match read {
                Ok(0) => return Ok(ReadOutcome::Eof),
                Ok(n) => {
                    self.total_in += n as u64;
                    self.touch();
                    let keep = remaining_limit
                        .map_or(n, |r| n.min(usize::try_from(r).unwrap_or(usize::MAX)));
                    if mergeable {
                        let release = self.release_for(now);
                        if let Some(c) = self.queue.back_mut() {
                            c.end += keep;
                            c.release = c.release.max(release);
                        }
                    } else if let Some(c) = self.queue.back_mut() {
                        c.end = keep;
                    }
                    // Only bytes past the limit: drop the empty chunk.
                    if keep == 0
                        && self.queue.back().is_some_and(|c| c.start == c.end)
                        && let Some(c) = self.queue.pop_back()
                    {
                        self.shared.pool.put(c.buf);
                    }
                    self.queued += keep;
                    if remaining_limit.is_some_and(|r| n as u64 >= r) {
                        return Ok(ReadOutcome::Stop);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadOutcome::Blocked);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(ReadOutcome::More)
    }
}

#[cfg(test)]
mod tests {
    use super::rolled;

    #[test]
    fn rolls_follow_toxicity() {
        let hits = (0..10_000u64)
            .filter(|s| rolled(s.wrapping_mul(7919), 42, 0.3))
            .count();
        assert!((2500..3500).contains(&hits), "{hits}");
        assert!(rolled(1, 2, 1.0));
        assert!(!rolled(1, 2, 0.0));
    }
}
