//! `network.latency` and `network.drop` in proxy mode: a fault proxy of the fault's
//! own (crates/proxy, in this process) listens on `listen`, forwards to `upstream`,
//! and carries the toxic. Revert removes the proxy, closing its listener and its
//! connections; a killed agent takes the listener with it, so recovery has nothing
//! to undo but to check the listener is gone. Transparent mode (`port`) is not
//! wired yet.

use std::net::SocketAddr;

use faultline_proxy::toxic::{Latency, LimitData, Refuse, ResetPeer, Timeout};
use faultline_proxy::{ProxyConfig, ProxyServer, Stream, Toxic, ToxicKind};
use faultline_spec::fault::{Direction, DropAction, NetworkDrop, NetworkLatency};
use serde::{Deserialize, Serialize};

use crate::{BoxFuture, Fault, InjectError, Observation, RevertError};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recovery {
    listen: String,
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
        (None, None, Some(_)) => Err(InjectError::Unsupported {
            kind,
            reason: "transparent mode (`port`) is not wired to the agent yet; use proxy mode (`listen` + `upstream`)".into(),
        }),
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
        Ok(Self::new(KIND, id, listen, upstream, toxics))
    }

    pub fn drop(id: &str, p: &NetworkDrop) -> Result<Self, InjectError> {
        const KIND: &str = "network.drop";
        let (listen, upstream) = endpoints(KIND, &p.listen, &p.upstream, p.port)?;
        if p.kill_existing {
            return Err(InjectError::Unsupported {
                kind: KIND,
                reason: "`kill_existing` cuts connections that bypass the proxy, which needs transparent mode (`port`), not wired yet".into(),
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
        Ok(Self::new(KIND, id, listen, upstream, toxics))
    }

    fn new(
        kind: &'static str,
        id: &str,
        listen: String,
        upstream: String,
        toxics: Vec<Toxic>,
    ) -> Self {
        Self {
            kind,
            name: format!("faultline-{id}"),
            listen,
            upstream,
            toxics,
            server: None,
            bound: None,
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
        serde_json::json!({ "listen": self.listen })
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
            let server = ProxyServer::new().map_err(|e| failed("start the proxy", e))?;
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
            tracing::info!(kind = self.kind, listen = ?self.bound, upstream = %self.upstream, "proxy in place");
            Ok(())
        })
    }

    fn revert(&mut self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async move {
            if let Some(server) = self.server.take() {
                server.shutdown();
            }
            Ok(())
        })
    }

    fn verify_reverted(&self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async move {
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
