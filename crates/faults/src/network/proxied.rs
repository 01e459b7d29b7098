//! `network.latency`, `network.drop` and `network.bandwidth` in proxy mode: a fault
//! proxy of the fault's own (crates/proxy, in this process) listens on `listen`, forwards to `upstream`,
//! and carries the toxic. Revert removes the proxy, closing its listener and its
//! connections; a killed agent takes the listener with it, so recovery has nothing
//! to undo but to check the listener is gone.
//!
//! Transparent mode (`port`): the proxy listens on an ephemeral port of every
//! address and forwards to the service on 127.0.0.1:`port`; an nftables table of
//! the fault's own (`faultline_tp_..`) redirects TCP traffic for `port`, from other
//! hosts (prerouting) and local clients (output), into it. The proxy's upstream
//! sockets carry [`TRANSPARENT_MARK`], which the redirect skips. The journal keeps
//! the table's name, so a restarted agent deletes a table its dead predecessor
//! left. `kill_existing` cuts the connections established before the redirect
//! (`ss -K`), so clients reconnect through the proxy.
//!
//! Transparent revert drains instead of breaking what is in flight: the toxics
//! go first (data a latency toxic holds is released at once), then the table's
//! rules (new connections go straight to the service, while the table's `nat`
//! chains keep the redirected ones translated), then the proxy closes each
//! connection gracefully once idle, within [`TRANSPARENT_DRAIN`], resetting what
//! is still busy at that deadline; then the table is deleted and the proxy
//! stopped. Keep-alive clients see an idle connection closed and reconnect
//! directly, instead of a request failing.

use std::net::SocketAddr;

use faultline_proxy::toxic::{Bandwidth, Latency, LimitData, Refuse, ResetPeer, Timeout};
use faultline_proxy::transparent::{Redirect, RedirectSpec, revert_table, table_exists};
use faultline_proxy::{ProxyConfig, ProxyServer, ServerOptions, Stream, Toxic, ToxicKind};
use faultline_spec::fault::{Direction, DropAction, NetworkBandwidth, NetworkDrop, NetworkLatency};
use serde::{Deserialize, Serialize};

use crate::{BoxFuture, Fault, InjectError, Observation, RevertError};

/// SO_MARK of a transparent proxy's upstream sockets: its redirect skips them, so
/// the proxy's own connection to the service is not captured again.
pub const TRANSPARENT_MARK: u32 = 0x0fa1_7000;

/// How long a transparent revert drains the proxy's connections before it
/// resets those still busy. Well under the engine's 1 s revert budget on abort.
pub const TRANSPARENT_DRAIN: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recovery {
    listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    table: Option<String>,
}

/// The redirect table of a transparent fault: nft table names here are at most 32
/// characters, so a short readable prefix of the id and a stable hash of all of it.
pub fn redirect_table(id: &str) -> String {
    let clean: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(10)
        .collect();
    let hash = id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("faultline_tp_{clean}_{hash:08x}")
}

/// Removes a fault's transparent redirect: the one it installed, or, for a fault
/// restored from the journal after a restart, its table by name. Shared by the
/// connection faults here and the L7 faults in `crate::http`.
pub(crate) fn remove_redirect(
    kind: &'static str,
    redirect: &mut Option<Redirect>,
    table: Option<&str>,
) -> Result<(), RevertError> {
    let removed = match (redirect.as_mut(), table) {
        (Some(r), _) => r.revert(),
        (None, Some(table)) => revert_table(None, table),
        (None, None) => Ok(()),
    };
    removed.map_err(|e| RevertError::Failed {
        kind,
        reason: e.to_string(),
        left: format!("nft table inet {}", table.unwrap_or_default()),
    })?;
    *redirect = None;
    Ok(())
}

/// Verifies from outside that a fault's redirect table is gone.
pub(crate) fn verify_no_redirect(
    kind: &'static str,
    table: Option<&str>,
) -> Result<(), RevertError> {
    let Some(table) = table else { return Ok(()) };
    match table_exists(None, table) {
        Ok(false) => Ok(()),
        Ok(true) => Err(RevertError::NotReverted {
            kind,
            left: format!("nft table inet {table}"),
        }),
        Err(e) => Err(RevertError::Failed {
            kind,
            reason: e.to_string(),
            left: format!("nft table inet {table}"),
        }),
    }
}

#[derive(Debug)]
pub struct ProxiedFault {
    kind: &'static str,
    name: String,
    listen: String,
    upstream: String,
    toxics: Vec<Toxic>,
    server: Option<ProxyServer>,
    bound: Option<SocketAddr>,
    /// Transparent mode: the captured port and the redirect's table.
    port: Option<u16>,
    table: Option<String>,
    redirect: Option<Redirect>,
    kill_existing: bool,
}

fn streams(direction: Direction) -> &'static [Stream] {
    match direction {
        Direction::Upstream => &[Stream::Upstream],
        Direction::Downstream => &[Stream::Downstream],
        Direction::Both => &[Stream::Upstream, Stream::Downstream],
    }
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

impl ProxiedFault {
    pub fn latency(id: &str, p: &NetworkLatency) -> Result<Self, InjectError> {
        const KIND: &str = "network.latency";
        let (listen, upstream) = endpoints(KIND, &p.listen, &p.upstream, p.port)?;
        let toxic = ToxicKind::Latency(Latency {
            latency: p.delay.get().as_millis() as u64,
            jitter: p.jitter.get().as_millis() as u64,
        });
        let toxics = streams(p.direction)
            .iter()
            .map(|s| Toxic::new(toxic, *s).with_toxicity(p.probability.ratio() as f32))
            .collect();
        Ok(Self::new(KIND, id, listen, upstream, toxics, p.port, false))
    }

    pub fn bandwidth(id: &str, p: &NetworkBandwidth) -> Result<Self, InjectError> {
        const KIND: &str = "network.bandwidth";
        let (listen, upstream) = endpoints(KIND, &p.listen, &p.upstream, p.port)?;
        // The toxic counts whole KB/s (1000 bytes), and 0 would stop the stream
        // rather than slow it.
        let kb = p.rate.bytes_per_second().saturating_add(500) / 1000;
        if kb == 0 {
            return Err(InjectError::InvalidParams {
                kind: KIND,
                reason: format!(
                    "`rate` {} B/s is below the proxy's 1KB/s granularity",
                    p.rate.bytes_per_second()
                ),
            });
        }
        let toxic = ToxicKind::Bandwidth(Bandwidth { rate: kb });
        let toxics = streams(p.direction)
            .iter()
            .map(|s| Toxic::new(toxic, *s))
            .collect();
        Ok(Self::new(KIND, id, listen, upstream, toxics, p.port, false))
    }

    pub fn drop(id: &str, p: &NetworkDrop) -> Result<Self, InjectError> {
        const KIND: &str = "network.drop";
        let (listen, upstream) = endpoints(KIND, &p.listen, &p.upstream, p.port)?;
        if p.kill_existing && p.port.is_none() {
            return Err(InjectError::InvalidParams {
                kind: KIND,
                reason: "`kill_existing` cuts connections established before the fault, which only transparent mode (`port`) captures; in proxy mode clients connect to `listen` anyway".into(),
            });
        }
        let (toxic, stream) = match p.action {
            DropAction::Reset => (
                ToxicKind::ResetPeer(ResetPeer { timeout: 0 }),
                Stream::Upstream,
            ),
            DropAction::Blackhole => (ToxicKind::Timeout(Timeout { timeout: 0 }), Stream::Upstream),
            DropAction::Refuse => (ToxicKind::Refuse(Refuse {}), Stream::Upstream),
            DropAction::CloseAfter => {
                let Some(after) = p.after else {
                    return Err(InjectError::InvalidParams {
                        kind: KIND,
                        reason: "`close_after` needs `after` (a size)".into(),
                    });
                };
                (
                    ToxicKind::LimitData(LimitData {
                        bytes: after.bytes(),
                    }),
                    Stream::Downstream,
                )
            }
        };
        let toxics = vec![Toxic::new(toxic, stream).with_toxicity(p.probability.ratio() as f32)];
        Ok(Self::new(
            KIND,
            id,
            listen,
            upstream,
            toxics,
            p.port,
            p.kill_existing,
        ))
    }

    fn new(
        kind: &'static str,
        id: &str,
        listen: String,
        upstream: String,
        toxics: Vec<Toxic>,
        port: Option<u16>,
        kill_existing: bool,
    ) -> Self {
        Self {
            kind,
            name: format!("faultline-{id}"),
            listen,
            upstream,
            toxics,
            server: None,
            bound: None,
            port,
            table: port.map(|_| redirect_table(id)),
            redirect: None,
            kill_existing,
        }
    }

    /// A fault rebuilt from the journal: its proxy died with the agent that ran it.
    pub fn restore(kind: &'static str, recovery: &serde_json::Value) -> Result<Self, InjectError> {
        let r: Recovery =
            serde_json::from_value(recovery.clone()).map_err(|e| InjectError::BadRecovery {
                kind,
                reason: e.to_string(),
            })?;
        Ok(Self {
            kind,
            name: String::new(),
            listen: r.listen,
            upstream: String::new(),
            toxics: Vec::new(),
            server: None,
            bound: None,
            port: None,
            table: r.table,
            redirect: None,
            kill_existing: false,
        })
    }

    /// Where the proxy listens (the bound address once injected).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.bound.or_else(|| self.listen.parse().ok())
    }

    /// Whether something listens on the address: a refused or unanswered connect
    /// says no; a connect the proxy resets at once (a reset toxic) still says yes.
    fn listener_up(&self) -> bool {
        let Some(addr) = self.listen_addr() else {
            return false;
        };
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

impl ProxiedFault {
    /// Transparent revert, before the table goes: stop the fault's effect, stop
    /// redirecting new connections, and drain the redirected ones while their
    /// packets are still translated (see the module notes).
    async fn drain(&self, redirect: &Redirect, server: &ProxyServer) {
        let deadline = std::time::Instant::now() + TRANSPARENT_DRAIN;
        let proxy = server.get(&self.name).ok();
        if let Some(p) = &proxy {
            p.begin_drain();
        }
        let port = self.bound.map(|b| b.port());
        if let Err(e) = redirect.stop_redirecting() {
            // Still redirecting: a connection closed now could come straight
            // back. Reset them instead, as the table goes next.
            tracing::warn!(kind = self.kind, error = %e, "cannot stop the redirect; resetting its connections");
            if let Some(port) = port {
                super::ss::cut_redirected(self.kind, port).await;
            }
            return;
        }
        let Some(p) = proxy else { return };
        let report = p.drain(deadline).await;
        if report.left > 0
            && let Some(port) = port
        {
            super::ss::cut_redirected(self.kind, port).await;
        }
    }
}

impl Drop for ProxiedFault {
    fn drop(&mut self) {
        // The proxy lives in this process: like a killed agent, a dropped fault
        // takes its listener with it.
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

impl Fault for ProxiedFault {
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
            if self.server.is_some() {
                return Ok(());
            }
            if self.toxics.is_empty() {
                return Err(InjectError::BadRecovery {
                    kind: self.kind,
                    reason: "a fault restored from the journal can only be reverted".into(),
                });
            }
            let failed = |action: &str, e: faultline_proxy::ProxyError| InjectError::Failed {
                kind: self.kind,
                action: format!("{action} ({} -> {})", self.listen, self.upstream),
                reason: e.to_string(),
            };
            let options = ServerOptions {
                upstream_mark: self.port.map(|_| TRANSPARENT_MARK),
                ..ServerOptions::default()
            };
            let server =
                ProxyServer::with_options(options).map_err(|e| failed("start the proxy", e))?;
            let proxy = server
                .create(ProxyConfig::new(&self.name, &self.listen, &self.upstream))
                .map_err(|e| failed("listen", e))?;
            for t in &self.toxics {
                if let Err(e) = proxy.add_toxic(t.clone()) {
                    server.shutdown();
                    return Err(failed("add the toxic", e));
                }
            }
            self.bound = proxy.listen_addr();
            self.server = Some(server);
            // Return once the fault is in effect: the listener answers.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while !self.listener_up() {
                if std::time::Instant::now() >= deadline {
                    if let Some(server) = self.server.take() {
                        server.shutdown();
                    }
                    return Err(InjectError::Failed {
                        kind: self.kind,
                        action: format!("listen on {}", self.listen),
                        reason: "the proxy did not start listening within 2 s".into(),
                    });
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            if let (Some(port), Some(table), Some(bound)) =
                (self.port, self.table.clone(), self.bound)
            {
                let mut spec = RedirectSpec::new(table, port, bound.port());
                spec.exclude_mark = Some(TRANSPARENT_MARK);
                match Redirect::install(&spec) {
                    Ok(r) => self.redirect = Some(r),
                    Err(e) => {
                        if let Some(server) = self.server.take() {
                            server.shutdown();
                        }
                        return Err(failed("redirect the port", e));
                    }
                }
                if self.kill_existing {
                    let cut = super::ss::kill_connections(&super::ss::Filter::Port(port))
                        .await
                        .map_err(|reason| InjectError::Failed {
                            kind: self.kind,
                            action: format!("cut established connections of port {port} (ss -K)"),
                            reason,
                        })?;
                    tracing::info!(kind = self.kind, port, cut, "established connections cut");
                }
            }
            tracing::info!(kind = self.kind, listen = ?self.bound, upstream = %self.upstream, "proxy in place");
            Ok(())
        })
    }

    fn revert(&mut self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async move {
            if let (Some(redirect), Some(server)) = (&self.redirect, &self.server) {
                self.drain(redirect, server).await;
            }
            // The redirect first: traffic must not be sent to a proxy that is gone.
            remove_redirect(self.kind, &mut self.redirect, self.table.as_deref())?;
            if let Some(server) = self.server.take() {
                server.shutdown();
            }
            Ok(())
        })
    }

    fn verify_reverted(&self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async move {
            verify_no_redirect(self.kind, self.table.as_deref())?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
            while self.listener_up() {
                if std::time::Instant::now() >= deadline {
                    return Err(RevertError::NotReverted {
                        kind: self.kind,
                        left: format!("something still listens on {}", self.listen),
                    });
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Ok(())
        })
    }

    fn observe(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let up = self.server.is_some() && self.listener_up();
            Observation {
                figures: serde_json::Value::Null,
                active: up,
                detail: format!(
                    "proxy {} -> {}: {}",
                    self.listen,
                    self.upstream,
                    if up { "listening" } else { "not listening" }
                ),
            }
        })
    }
}
