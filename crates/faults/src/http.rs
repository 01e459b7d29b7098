//! `http.*`: gateway faults at layer 7. Each fault runs an HTTP-aware fault
//! proxy of its own (crates/proxy's `HttpProxy`, in this process) that answers
//! matching requests with an error status (`http.error`: 429 with
//! `Retry-After`, 503, ...) instead of forwarding them, holds them back before
//! forwarding (`http.delay`), limits them as a gateway does (`http.rate_limit`:
//! a token bucket per key; `http.queue`: a concurrency limit with a bounded
//! queue), or acts on their streamed responses (`http.stream_stall`,
//! `http.stream_slow`, `http.stream_truncate`, on SSE and chunked bodies);
//! requests that do not match the path prefix and method, or that the
//! probability spares, pass through unchanged on pooled keep-alive
//! connections, and so do responses that are not streamed.
//!
//! Proxy mode (`listen` -> `upstream`): clients connect to `listen`. Transparent
//! mode (`port`): the proxy listens on an ephemeral port of every address and
//! forwards to the service on 127.0.0.1:`port`; an nftables table of the fault's
//! own redirects TCP traffic for `port` into it, exactly as for `network.latency`
//! (see `network::proxied`): the proxy's upstream sockets carry
//! [`TRANSPARENT_MARK`], which the redirect skips, and the journal keeps the
//! table's name so a restarted agent deletes a table its dead predecessor left.
//! Connections established before the redirect keep going straight to the
//! service until the client reconnects.
//!
//! Revert in transparent mode drains first, as `network::proxied` does: the
//! faults go (requests a delay holds are forwarded at once), the table's rules
//! go (new connections reach the service directly; the table's `nat` chains
//! keep redirected connections translated), and each client connection is
//! shut down gracefully (closed when idle, or after its response in flight,
//! sent with `connection: close`) within [`TRANSPARENT_DRAIN`]; connections
//! still open then are reset (`ss -K`). Then the table is deleted and the proxy
//! stopped (closing its listener and connections). A killed agent takes the
//! proxy with it, so recovery has the table to delete and the listener to find
//! gone.

use std::net::SocketAddr;
use std::time::Duration;

use faultline_proxy::http::{HttpFault, HttpFaultKind, HttpProxy, HttpProxyOptions, RateKey};
use faultline_proxy::transparent::{Redirect, RedirectSpec, table_exists};
use faultline_spec::fault::{
    HttpDelay, HttpError, HttpQueue, HttpRateLimit, HttpStreamSlow, HttpStreamStall,
    HttpStreamTruncate, RateLimitKey, StallThen,
};
use serde::{Deserialize, Serialize};

use crate::network::proxied::{
    TRANSPARENT_DRAIN, TRANSPARENT_MARK, redirect_table, remove_redirect, verify_no_redirect,
};
use crate::{BoxFuture, Fault, InjectError, Observation, RevertError};

/// What the journal keeps: where the proxy listened and the redirect's table.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recovery {
    listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    table: Option<String>,
}

/// One `http.*` fault on this host.
#[derive(Debug)]
pub struct HttpGatewayFault {
    kind: &'static str,
    listen: String,
    upstream: String,
    /// What the proxy injects; empty for a fault restored from the journal.
    faults: Vec<HttpFault>,
    proxy: Option<HttpProxy>,
    /// Transparent mode: the captured port and the redirect's table.
    port: Option<u16>,
    table: Option<String>,
    redirect: Option<Redirect>,
}

fn endpoints(
    kind: &'static str,
    listen: &Option<String>,
    upstream: &Option<String>,
    port: Option<u16>,
) -> Result<(String, String), InjectError> {
    match (listen, upstream, port) {
        (Some(l), Some(u), None) => Ok((l.clone(), u.clone())),
        // Every address, so redirected traffic from any interface lands on it.
        (None, None, Some(p)) if p > 0 => Ok(("0.0.0.0:0".to_owned(), format!("127.0.0.1:{p}"))),
        _ => Err(InjectError::InvalidParams {
            kind,
            reason: "give `listen` and `upstream` (proxy mode) or `port` (transparent mode)".into(),
        }),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What every `http.*` kind shares: where the proxy sits (proxy or transparent
/// mode) and which requests it picks.
struct Scope<'a> {
    listen: &'a Option<String>,
    upstream: &'a Option<String>,
    port: Option<u16>,
    probability: f64,
    path: &'a Option<String>,
    method: Option<&'a String>,
}

/// The [`Scope`] of an `http.*` parameter struct (they all name these fields
/// alike); `method:` for the kinds that match one.
macro_rules! scope {
    ($p:expr, probability: $prob:expr) => {
        scope!($p, probability: $prob, method: None)
    };
    ($p:expr, probability: $prob:expr, method: $method:expr) => {
        Scope {
            listen: &$p.listen,
            upstream: &$p.upstream,
            port: $p.port,
            probability: $prob,
            path: &$p.path,
            method: $method,
        }
    };
}

impl HttpGatewayFault {
    pub fn error(id: &str, p: &HttpError) -> Result<Self, InjectError> {
        const KIND: &str = "http.error";
        if !(400..=599).contains(&p.status) {
            return Err(InjectError::InvalidParams {
                kind: KIND,
                reason: format!(
                    "`status` must be an error status (400-599), not {}",
                    p.status
                ),
            });
        }
        // Retry-After is whole seconds: round a fraction up, never to 0.
        let retry_after = p.retry_after.map(|d| {
            let d = d.get();
            (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
        });
        let what = HttpFaultKind::Error {
            status: p.status,
            retry_after,
            body: p.body.clone(),
        };
        let scope = scope!(p, probability: p.probability.ratio(), method: p.method.as_ref());
        Self::build(KIND, id, scope, what)
    }

    pub fn delay(id: &str, p: &HttpDelay) -> Result<Self, InjectError> {
        const KIND: &str = "http.delay";
        if p.delay.is_zero() {
            return Err(InjectError::InvalidParams {
                kind: KIND,
                reason: "`delay` must be positive".into(),
            });
        }
        let what = HttpFaultKind::Delay {
            delay_ms: millis(p.delay.get()),
            jitter_ms: millis(p.jitter.get()),
        };
        let scope = scope!(p, probability: p.probability.ratio(), method: p.method.as_ref());
        Self::build(KIND, id, scope, what)
    }

    pub fn rate_limit(id: &str, p: &HttpRateLimit) -> Result<Self, InjectError> {
        const KIND: &str = "http.rate_limit";
        let invalid = |reason: String| InjectError::InvalidParams { kind: KIND, reason };
        let rate = p.rate.per_second();
        // One second of the rate, as a gateway configured "10/s" lets 10 at once.
        let burst = match p.burst {
            Some(0) => return Err(invalid("`burst` must be at least 1".into())),
            Some(b) => b,
            None => (rate.ceil() as u32).max(1),
        };
        let key = match (p.key, &p.header) {
            (RateLimitKey::ClientIp, None) => RateKey::ClientIp,
            (RateLimitKey::Global, None) => RateKey::Global,
            (RateLimitKey::Header, Some(h)) => RateKey::Header(h.to_ascii_lowercase()),
            (RateLimitKey::Header, None) => {
                return Err(invalid("`key: header` needs `header`".into()));
            }
            (_, Some(_)) => {
                return Err(invalid("`header` only applies to `key: header`".into()));
            }
        };
        let what = HttpFaultKind::RateLimit {
            rate_per_s: rate,
            burst,
            key,
        };
        Self::build(
            KIND,
            id,
            scope!(p, probability: 1.0, method: p.method.as_ref()),
            what,
        )
    }

    pub fn queue(id: &str, p: &HttpQueue) -> Result<Self, InjectError> {
        let what = HttpFaultKind::Queue {
            concurrency: p.concurrency,
            queue: p.queue,
            timeout_ms: millis(p.timeout.get()),
        };
        let scope = scope!(p, probability: 1.0, method: p.method.as_ref());
        Self::build("http.queue", id, scope, what)
    }

    pub fn stream_stall(id: &str, p: &HttpStreamStall) -> Result<Self, InjectError> {
        const KIND: &str = "http.stream_stall";
        if p.after_events.is_some() && p.after.is_some() {
            return Err(InjectError::InvalidParams {
                kind: KIND,
                reason: "give at most one of `after_events` and `after`".into(),
            });
        }
        if p.hold.is_zero() {
            return Err(InjectError::InvalidParams {
                kind: KIND,
                reason: "`hold` must be positive".into(),
            });
        }
        let what = HttpFaultKind::StreamStall {
            after_events: p.after_events.unwrap_or(0),
            after_ms: p.after.map(|d| millis(d.get())),
            hold_ms: millis(p.hold.get()),
            cut: p.then == StallThen::Cut,
        };
        Self::build(
            KIND,
            id,
            scope!(p, probability: p.probability.ratio()),
            what,
        )
    }

    pub fn stream_slow(id: &str, p: &HttpStreamSlow) -> Result<Self, InjectError> {
        let what = HttpFaultKind::StreamSlow {
            events_per_s: p.rate.per_second(),
        };
        let scope = scope!(p, probability: p.probability.ratio());
        Self::build("http.stream_slow", id, scope, what)
    }

    pub fn stream_truncate(id: &str, p: &HttpStreamTruncate) -> Result<Self, InjectError> {
        let what = HttpFaultKind::StreamTruncate {
            after_events: p.after_events,
            done: p.done,
        };
        let scope = scope!(p, probability: p.probability.ratio());
        Self::build("http.stream_truncate", id, scope, what)
    }

    /// The fault `what` within `scope`, after the checks every kind shares.
    fn build(
        kind: &'static str,
        id: &str,
        scope: Scope<'_>,
        what: HttpFaultKind,
    ) -> Result<Self, InjectError> {
        let (listen, upstream) = endpoints(kind, scope.listen, scope.upstream, scope.port)?;
        let fault = HttpFault {
            kind: what,
            probability: scope.probability,
            path_prefix: scope.path.clone(),
            method: scope.method.cloned(),
        };
        Self::checked(kind, id, listen, upstream, fault, scope.port)
    }

    /// [`Self::new`] after the proxy's own check of the parameters, so a bad
    /// one is refused at build, before anything is journaled.
    fn checked(
        kind: &'static str,
        id: &str,
        listen: String,
        upstream: String,
        fault: HttpFault,
        port: Option<u16>,
    ) -> Result<Self, InjectError> {
        HttpFault::check(&fault).map_err(|e| InjectError::InvalidParams {
            kind,
            reason: e.to_string(),
        })?;
        Ok(Self::new(kind, id, listen, upstream, fault, port))
    }

    fn new(
        kind: &'static str,
        id: &str,
        listen: String,
        upstream: String,
        fault: HttpFault,
        port: Option<u16>,
    ) -> Self {
        Self {
            kind,
            listen,
            upstream,
            faults: vec![fault],
            proxy: None,
            port,
            table: port.map(|_| redirect_table(id)),
            redirect: None,
        }
    }

    /// A fault rebuilt from the journal, for revert only: its proxy died with the
    /// agent that ran it.
    pub fn restore(kind: &'static str, recovery: &serde_json::Value) -> Result<Self, InjectError> {
        let r: Recovery =
            serde_json::from_value(recovery.clone()).map_err(|e| InjectError::BadRecovery {
                kind,
                reason: e.to_string(),
            })?;
        Ok(Self {
            kind,
            listen: r.listen,
            upstream: String::new(),
            faults: Vec::new(),
            proxy: None,
            port: None,
            table: r.table,
            redirect: None,
        })
    }

    /// Where the proxy listens: the bound address once injected.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.proxy
            .as_ref()
            .map(HttpProxy::local_addr)
            .or_else(|| self.listen.parse().ok())
    }

    /// Whether something accepts connections on the proxy's address, seen from
    /// outside: a refused or unanswered connect says no.
    async fn listener_up(&self) -> bool {
        let Some(addr) = self.listen_addr() else {
            return false;
        };
        if addr.port() == 0 {
            return false;
        }
        // A proxy on every address is reached on loopback.
        let addr = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        matches!(
            tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(addr)
            )
            .await,
            Ok(Ok(_))
        )
    }

    async fn resolve_listen(&self) -> Result<SocketAddr, InjectError> {
        let failed = |reason: String| InjectError::Failed {
            kind: self.kind,
            action: format!("resolve `listen` {}", self.listen),
            reason,
        };
        if let Ok(a) = self.listen.parse() {
            return Ok(a);
        }
        tokio::net::lookup_host(self.listen.as_str())
            .await
            .map_err(|e| failed(e.to_string()))?
            .next()
            .ok_or_else(|| failed("resolved to no address".into()))
    }

    fn stop_proxy(&mut self) {
        if let Some(proxy) = self.proxy.take() {
            proxy.stop();
        }
    }
}

/// Transparent revert, before the table goes: the faults, then the redirect of
/// new connections, then the connections already redirected, gracefully while
/// their packets are still translated.
async fn drain(kind: &'static str, redirect: &Redirect, proxy: &HttpProxy) {
    let deadline = std::time::Instant::now() + TRANSPARENT_DRAIN;
    let port = proxy.local_addr().port();
    proxy.begin_drain();
    if let Err(e) = redirect.stop_redirecting() {
        // Still redirecting: a connection closed now could come straight back.
        tracing::warn!(kind, error = %e, "cannot stop the redirect; resetting its connections");
        crate::network::ss::cut_redirected(kind, port).await;
        return;
    }
    if proxy.drain(deadline).await > 0 {
        crate::network::ss::cut_redirected(kind, port).await;
    }
}

impl Fault for HttpGatewayFault {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn recovery(&self) -> serde_json::Value {
        serde_json::to_value(Recovery {
            listen: self.listen.clone(),
            table: self.table.clone(),
        })
        .unwrap_or_else(|_| serde_json::json!({ "listen": self.listen }))
    }

    fn inject(&mut self) -> BoxFuture<'_, Result<(), InjectError>> {
        Box::pin(async move {
            if self.proxy.is_some() {
                return Ok(());
            }
            if self.faults.is_empty() {
                return Err(InjectError::BadRecovery {
                    kind: self.kind,
                    reason: "a fault restored from the journal can only be reverted".into(),
                });
            }
            let listen = self.resolve_listen().await?;
            let options = HttpProxyOptions {
                upstream_mark: self.port.map(|_| TRANSPARENT_MARK),
            };
            // Bound before it returns: connections queue on the listener at once.
            let proxy =
                HttpProxy::start_with(listen, self.upstream.clone(), self.faults.clone(), options)
                    .await
                    .map_err(|e| InjectError::Failed {
                        kind: self.kind,
                        action: format!(
                            "start the HTTP proxy ({} -> {})",
                            self.listen, self.upstream
                        ),
                        reason: e.to_string(),
                    })?;
            let bound = proxy.local_addr();
            self.proxy = Some(proxy);
            if let (Some(port), Some(table)) = (self.port, self.table.clone()) {
                let mut spec = RedirectSpec::new(table, port, bound.port());
                spec.exclude_mark = Some(TRANSPARENT_MARK);
                match Redirect::install(&spec) {
                    Ok(r) => self.redirect = Some(r),
                    Err(e) => {
                        self.stop_proxy();
                        return Err(InjectError::Failed {
                            kind: self.kind,
                            action: format!("redirect port {port} into the HTTP proxy"),
                            reason: e.to_string(),
                        });
                    }
                }
            }
            tracing::info!(kind = self.kind, listen = %bound, upstream = %self.upstream, port = ?self.port, "HTTP fault proxy in place");
            Ok(())
        })
    }

    fn revert(&mut self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async move {
            if let (Some(redirect), Some(proxy)) = (&self.redirect, &self.proxy) {
                drain(self.kind, redirect, proxy).await;
            }
            // The redirect first: traffic must not be sent to a proxy that is gone.
            remove_redirect(self.kind, &mut self.redirect, self.table.as_deref())?;
            if let Some(proxy) = &self.proxy {
                tracing::info!(kind = self.kind, stats = ?proxy.stats(), "HTTP fault proxy stopping");
            }
            self.stop_proxy();
            Ok(())
        })
    }

    fn verify_reverted(&self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async move {
            verify_no_redirect(self.kind, self.table.as_deref())?;
            // The proxy's accept loop ends on its next poll after stop.
            let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
            while self.listener_up().await {
                if tokio::time::Instant::now() >= deadline {
                    return Err(RevertError::NotReverted {
                        kind: self.kind,
                        left: format!("something still listens on {}", self.listen),
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        })
    }

    fn observe(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let Some(proxy) = &self.proxy else {
                return Observation {
                    active: false,
                    detail: format!(
                        "HTTP proxy {} -> {}: not running",
                        self.listen, self.upstream
                    ),
                    figures: serde_json::Value::Null,
                };
            };
            let up = self.listener_up().await;
            let redirected = match &self.table {
                None => true,
                Some(t) => table_exists(None, t).unwrap_or(false),
            };
            let s = proxy.stats();
            let figures = serde_json::json!({
                "requests": s.requests,
                "matched": s.matched,
                "errors": s.errors,
                "delayed": s.delayed,
                "bad_gateway": s.bad_gateway,
                "rate_limited": s.rate_limited,
                "queued": s.queued,
                "queue_rejected": s.queue_rejected,
                "queue_waiting": s.queue_waiting,
                "streams": s.streams,
                "stalled": s.stalled,
                "cut": s.cut,
                "truncated": s.truncated,
            });
            let what = match self.port {
                Some(p) => format!(
                    "port {p} {} into HTTP proxy {}",
                    if redirected {
                        "redirected"
                    } else {
                        "NOT redirected"
                    },
                    proxy.local_addr()
                ),
                None => format!("HTTP proxy {} -> {}", proxy.local_addr(), self.upstream),
            };
            Observation {
                active: up && redirected,
                detail: format!(
                    "{what}: {}; {} requests, {} matched, {} answered with an error, {} delayed, {} rate limited, {} queued, {} turned away by the queue, {} streams faulted",
                    if up { "listening" } else { "not listening" },
                    s.requests,
                    s.matched,
                    s.errors,
                    s.delayed,
                    s.rate_limited,
                    s.queued,
                    s.queue_rejected,
                    s.streams
                ),
                figures,
            }
        })
    }
}
