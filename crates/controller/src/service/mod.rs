//! `faultline serve`: the controller as a service. An HTTP API (`api.rs`,
//! docs/http-api.md, OpenAPI 3.1 at `/v1/openapi.json`) over the run store, a run
//! manager (`manager.rs`) that runs experiments through the engine and keeps two
//! runs off one agent, live events as Server-Sent Events (`sse.rs`), API tokens
//! with roles (`auth.rs`), an allow-list for what untrusted experiments may do on
//! this host (`policy.rs`), the game-day scheduler, and the game-day dashboard
//! (`ui.rs`: static pages at `/` that use the same API with the same tokens).
//!
//! No run stays `running` past the process that owned it. On SQLite (one host) a
//! start marks every run the store still calls queued or running as aborted (their
//! controller is gone; the agents revert their faults when the leases lapse, and
//! the in-process agent's journal is replayed now). On PostgreSQL several replicas
//! may share the store (`ha.rs`): a start aborts only the runs this replica id
//! owned before, runs nobody owns and runs whose lease expired, and while it runs
//! every replica sweeps runs whose owner stopped renewing their lease.

mod agents;
pub mod api;
pub mod auth;
pub mod config;
mod fleet;
// === replicas (HA) ===
pub mod ha;
// === end replicas (HA) ===
pub mod manager;
mod metrics;
pub mod policy;
mod sse;
mod ui;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use auth::{ApiToken, Principal, Role, Tokens};
pub use config::{AllowList, ConcurrencyPolicy, ConfigFile, RunTuning, ServiceConfig};
pub use manager::{Manager, ManagerError};

use crate::connect::{ConnectError, Connector};
use crate::schedule::{
    FireAction, ScheduleFire, Scheduler, SchedulerHandle, TriggerError, trigger_fn,
};
use crate::store::{self, RunStore, SCHEDULER_ACTOR, StoreError};

/// The reason a restart gives the runs it finds in flight.
pub const RESTART_REASON: &str = "the controller restarted while this run was in flight; its faults were reverted when their leases lapsed (the in-process agent's at this start)";

/// The actor the audit log names for what the controller does on its own.
pub const CONTROLLER_ACTOR: &str = "controller";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "refusing to listen on {0} without API tokens: configure `tokens`, or listen on 127.0.0.1"
    )]
    Insecure(SocketAddr),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Server(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("fleet: {0}")]
    Fleet(String),
    // === replicas (HA) ===
    #[error("{0}")]
    Ha(String),
    // === end replicas (HA) ===
}

// === fleet (registry) ===

/// The registry: the join token and fleet secret read now (a bad file is a
/// configuration error at start, not a failing registration later).
async fn fleet_registry(
    config: &ServiceConfig,
    store: &Arc<dyn RunStore>,
) -> Result<Arc<crate::fleet::Registry>, ServiceError> {
    use crate::fleet::{FleetConfig, FleetSecret, JoinToken, Registry};
    let bad = |e: String| ServiceError::Fleet(e);
    let join_token = match &config.fleet.join_token_file {
        Some(f) => Some(faultline_agent::auth::read_token_file(f).map_err(bad)?),
        None => None,
    };
    if let Some(j) = &join_token
        && config.tokens.iter().any(|t| t.is_secret(j))
    {
        return Err(bad(
            "the join token is also an API token: a join token must only register agents; give it a secret of its own".to_owned(),
        ));
    }
    let secret = match &config.fleet.secret_file {
        Some(f) => FleetSecret::load(f),
        None => FleetSecret::load_or_create(&config.state_dir.join("fleet-secret")),
    }
    .map_err(|e| bad(e.to_string()))?;
    Registry::open(
        Arc::clone(store),
        FleetConfig {
            join_token: join_token.map(JoinToken::new),
            secret,
            heartbeat: config.fleet.heartbeat,
        },
    )
    .await
    .map_err(|e| bad(e.to_string()))
}

// === end fleet (registry) ===

/// The running service.
#[derive(Debug)]
pub struct Service {
    local_addr: SocketAddr,
    manager: Arc<Manager>,
    scheduler: Option<SchedulerHandle>,
    // === replicas (HA) ===
    leases: Option<ha::HaHandle>,
    // === end replicas (HA) ===
    server: Option<JoinHandle<std::io::Result<()>>>,
    stop: watch::Sender<bool>,
    grace: Duration,
    /// The runs this start found in flight and marked aborted.
    pub recovered: Vec<String>,
}

/// Opens the store (migrating it), aborts what a previous controller left in
/// flight, starts the in-process agent (replaying its journal), the scheduler and
/// the HTTP server.
pub async fn start(config: ServiceConfig) -> Result<Service, ServiceError> {
    if config.tokens.is_empty() && !config.listen.ip().is_loopback() {
        return Err(ServiceError::Insecure(config.listen));
    }
    // Certificates are read before anything else starts: a bad one is a
    // configuration error, not a half-started service.
    let tls = match &config.tls {
        Some((cert, key)) => {
            Some(faultline_agent::tls::server_config(cert, key).map_err(ServiceError::Tls)?)
        }
        None => None,
    };
    config.ha.check().map_err(ServiceError::Ha)?;
    let store = store::open(&config.db).await?;
    // === replicas (HA) ===
    // SQLite is one host: whatever is in flight was a previous process's. A shared
    // store: only what this replica owned, nobody owns, or nobody renews.
    let recovered = if store.backend() == "sqlite" {
        store.abort_in_flight(RESTART_REASON).await?
    } else {
        store
            .abort_replica_in_flight(&config.ha.replica_id, RESTART_REASON)
            .await?
    };
    // === end replicas (HA) ===
    for id in &recovered {
        tracing::warn!(run = %id, "run was in flight when the previous controller stopped; marked aborted");
        let entry = store::NewAudit {
            actor: CONTROLLER_ACTOR.to_owned(),
            action: "run.abort".to_owned(),
            target: id.clone(),
            detail: json!({ "reason": RESTART_REASON }),
        };
        store.append_audit(&entry).await?;
    }
    // === fleet (registry) ===
    let registry = fleet_registry(&config, &store).await?;
    registry.spawn_refresh();
    let connector = Arc::new(
        Connector::new(
            config.inventory.clone(),
            config.state_dir.join("local-agent"),
        )
        .with_registry(registry),
    );
    // === end fleet (registry) ===
    // Now, not at the first run: what a killed controller left on this host is
    // reverted at start.
    connector.local().await?;
    let manager = Manager::with_ha(
        Arc::clone(&store),
        connector,
        config.concurrency,
        config.allow.clone(),
        config.tuning,
        config.ha.clone(),
    );
    // === replicas (HA) ===
    let leases = ha::spawn(Arc::clone(&manager));
    let scheduler = Scheduler::new(Arc::clone(&store), trigger(&manager))
        .with_leadership(config.ha.leadership())
        .spawn();
    tracing::info!(replica = %config.ha.replica_id, handover = ?config.ha.handover(), "replica started");
    // === end replicas (HA) ===

    let (router, openapi) = api::routes();
    let openapi_text = openapi
        .to_pretty_json()
        .map_err(|e| ServiceError::Server(format!("OpenAPI document: {e}")))?;
    let (stop, stop_rx) = watch::channel(false);
    let state = api::AppState {
        manager: Arc::clone(&manager),
        tokens: Arc::new(Tokens::new(config.tokens.clone())),
        schedules_changed: Some(scheduler.notifier()),
        docs: Arc::new(docs_page(&openapi)),
        openapi: Arc::new(openapi_text),
        stop: stop_rx.clone(),
    };
    let app = api::app(router, state);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServiceError::Listen {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ServiceError::Listen {
            addr: config.listen,
            source,
        })?;
    let mut stopped = stop_rx;
    let until_stopped = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let server = match tls {
        Some(tls) => {
            let listener =
                faultline_agent::tls::TlsListener::new(listener, tls).map_err(|source| {
                    ServiceError::Listen {
                        addr: config.listen,
                        source,
                    }
                })?;
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(until_stopped)
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(until_stopped)
                .await
        }),
    };
    tracing::info!(addr = %local_addr, store = store.backend(), tls = config.tls.is_some(), "controller listening");
    Ok(Service {
        local_addr,
        manager,
        scheduler: Some(scheduler),
        leases: Some(leases),
        server: Some(server),
        stop,
        grace: config.shutdown_grace,
        recovered,
    })
}

impl Service {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn store(&self) -> &Arc<dyn RunStore> {
        self.manager.store()
    }

    pub fn manager(&self) -> &Arc<Manager> {
        &self.manager
    }

    /// Waits until the HTTP server stops on its own (it only does on error).
    pub async fn wait(&mut self) -> Result<(), ServiceError> {
        match self.server.as_mut() {
            Some(h) => match h.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServiceError::Server(e.to_string())),
                Err(e) => Err(ServiceError::Server(e.to_string())),
            },
            None => Ok(()),
        }
    }

    /// Stops the scheduler, aborts every run and waits for them to revert (within
    /// the configured grace), closes event streams and stops the server.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.scheduler.take() {
            s.shutdown().await;
        }
        self.manager.shutdown(self.grace).await;
        // After the runs ended: their leases are renewed while they revert.
        if let Some(l) = self.leases.take() {
            l.shutdown().await;
        }
        let _ = self.stop.send(true);
        if let Some(mut server) = self.server.take() {
            match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server stopped with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
                Err(_) => {
                    tracing::warn!("HTTP connections did not close in 5 s; dropping them");
                    server.abort();
                }
            }
        }
    }
}

/// The scheduler's trigger: a run of the schedule's experiment, requested by the
/// scheduler, one per slot (the fire's idempotency key). `queue` and `replace`
/// queue behind the schedule's run in flight; `replace` aborts that one first.
fn trigger(manager: &Arc<Manager>) -> crate::schedule::Trigger {
    let manager = Arc::clone(manager);
    trigger_fn(move |fire: ScheduleFire| {
        let manager = Arc::clone(&manager);
        async move {
            let prepared = manager
                .stored(&fire.experiment_id)
                .await
                .map_err(|e| TriggerError(e.to_string()))?;
            if fire.action == FireAction::Replace {
                let reason = format!(
                    "replaced by the next fire of schedule `{}`",
                    fire.schedule_name
                );
                let aborted = manager.abort_schedule(&fire.schedule_id, &reason).await;
                for id in &aborted {
                    manager
                        .audit(
                            SCHEDULER_ACTOR,
                            "run.abort",
                            id,
                            json!({ "reason": reason, "schedule_id": fire.schedule_id }),
                        )
                        .await;
                }
            }
            // Claims the slot, creates the run and records the fire in one
            // transaction: a slot another replica fired is refused here.
            let sub = manager
                .submit_fire(
                    prepared,
                    manager::Submit {
                        requested_by: SCHEDULER_ACTOR.to_owned(),
                        idempotency_key: Some(fire.idempotency_key()),
                        schedule_id: Some(fire.schedule_id.clone()),
                        queue: fire.action != FireAction::Start,
                    },
                    &fire,
                )
                .await
                .map_err(|e| TriggerError(e.to_string()))?;
            Ok(sub.run.id)
        }
    })
}

/// A self-contained page (no script, no external asset) listing every operation
/// of the OpenAPI document, with a link to the document itself.
fn docs_page(api: &utoipa::openapi::OpenApi) -> String {
    let mut rows = String::new();
    for (path, item) in &api.paths.paths {
        let ops = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ];
        for (method, op) in ops {
            let Some(op) = op else { continue };
            let summary = op.summary.as_deref().unwrap_or("");
            let description = op.description.as_deref().unwrap_or("");
            let _ = writeln!(
                rows,
                "<tr><td class=m>{method}</td><td><code>{}</code></td><td><b>{}</b> {}</td></tr>",
                escape(path),
                escape(summary),
                escape(description)
            );
        }
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>faultline controller API</title>
<style>
body{{font:15px/1.45 system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;width:100%}}td{{border-top:1px solid #ddd;padding:.4em .6em;vertical-align:top}}
td.m{{font-weight:bold;font-family:monospace}}code{{white-space:nowrap}}
</style></head><body>
<h1>faultline controller API</h1>
<p>Version {version}. The machine-readable description is the OpenAPI 3.1 document at
<a href="/v1/openapi.json">/v1/openapi.json</a>. Every endpoint but <code>/v1/health</code>,
the document and this page needs <code>Authorization: Bearer &lt;token&gt;</code>; roles are
viewer (read), operator (run, abort) and admin (schedules, halt, audit, command probes).
Errors are JSON: <code>{{"error": code, "reason": text}}</code>.</p>
<table>
{rows}</table>
</body></html>
"#,
        version = env!("CARGO_PKG_VERSION"),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
