//! The per-host agent: an HTTP API (axum) over a fault manager that journals every
//! intent to disk (fsync) before injecting, holds every fault as a lease that a
//! reaper reverts within a second of lapsing, and reverts whatever its journal holds
//! when it starts. Bearer-token auth compared in constant time; TLS via rustls.
//!
//! It must never inject before the intent is journaled, keep a fault beyond its
//! lease, or listen beyond loopback without a token. It knows nothing of
//! experiments: the controller decides what to inject and when.

pub mod api;
pub mod auth;
pub mod host;
pub mod journal;
pub mod manager;
pub mod metrics;
pub mod register;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use auth::Token;
pub use manager::{
    FaultRequest, FaultView, HaltReport, Health, Manager, ManagerError, spawn_reaper,
};

/// How an agent runs: what `faultline agent` parses its flags into.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    pub token: Token,
    pub state_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// PEM certificate chain and key; plain HTTP without.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Register with a controller and heartbeat (`--controller`); the token the
    /// controller issues is then accepted besides `token`.
    pub register: Option<register::RegisterConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "refusing to listen on {0} without a token: give --token-file, or listen on loopback (127.0.0.1, ::1)"
    )]
    NoToken(SocketAddr),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error(
        "listening on {0}, a wildcard address, the controller cannot be told where this agent is: give --advertise HOST:PORT"
    )]
    Advertise(SocketAddr),
    #[error("registration: {0}")]
    Register(#[from] register::RegisterError),
}

/// A started agent: its journal recovered, its reaper and server running.
#[derive(Debug)]
pub struct RunningAgent {
    pub manager: Arc<Manager>,
    pub local_addr: SocketAddr,
    /// What recovery reverted at start.
    pub recovered: HaltReport,
    /// The token requests are checked against (with the controller-issued one).
    pub token: Token,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    reaper: tokio::task::JoinHandle<()>,
    registrar: Option<tokio::task::JoinHandle<()>>,
}

impl RunningAgent {
    /// Stops serving and reverts every active fault (an agent that stops cannot
    /// guard leases any more).
    pub async fn shutdown(self) -> HaltReport {
        self.server.abort();
        self.reaper.abort();
        if let Some(r) = &self.registrar {
            r.abort();
        }
        self.manager.halt().await
    }

    /// Waits until the server ends (it only ends on error).
    pub async fn wait(&mut self) -> std::io::Result<()> {
        match (&mut self.server).await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Checks the config, reverts what the journal holds, then serves.
pub async fn start(config: AgentConfig) -> Result<RunningAgent, AgentError> {
    if !config.token.is_set() && !config.listen.ip().is_loopback() {
        return Err(AgentError::NoToken(config.listen));
    }
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls::server_config(cert, key).map_err(AgentError::Tls)?),
        None => None,
    };
    let manager = Manager::open(&config.state_dir, config.labels.clone())?;
    let recovered = manager.recover().await?;
    let reaper = spawn_reaper(&manager);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| AgentError::Listen {
        addr: config.listen,
        source,
    })?;
    // With a controller, requests are refused until registration issued a token
    // (or the static one matches): never an open API beyond loopback.
    let token = if config.register.is_some() {
        config.token.for_controller()
    } else {
        config.token.clone()
    };
    let app = api::router(manager.clone(), token.clone());
    let server = match tls {
        Some(tls) => {
            let listener =
                tls::TlsListener::new(listener, tls).map_err(|source| AgentError::Listen {
                    addr: config.listen,
                    source,
                })?;
            tokio::spawn(async move { axum::serve(listener, app).await })
        }
        None => tokio::spawn(async move { axum::serve(listener, app).await }),
    };
    tracing::info!(addr = %local_addr, tls = config.tls.is_some(), "agent listening");
    // Registration starts once the API serves: the controller may call it at once.
    let registrar = match config.register {
        Some(r) => {
            let url = match &r.url {
                Some(u) => u.clone(),
                None if local_addr.ip().is_unspecified() => {
                    return Err(AgentError::Advertise(local_addr));
                }
                None => format!(
                    "{}://{local_addr}",
                    if config.tls.is_some() {
                        "https"
                    } else {
                        "http"
                    }
                ),
            };
            Some(register::spawn(r, url, manager.clone(), token.clone())?)
        }
        None => None,
    };
    Ok(RunningAgent {
        manager,
        local_addr,
        recovered,
        token,
        server,
        reaper,
        registrar,
    })
}
