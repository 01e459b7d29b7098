//! `faultline serve [--listen ADDR] [--db URL] [--config F] [--state-dir DIR]`:
//! the controller service (HTTP API, run manager, scheduler).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use faultline_controller::service::{self, ConfigFile, ServiceConfig};

use super::exit;

/// Run the controller service: the HTTP API (docs/http-api.md) that stores
/// experiments, starts, streams and aborts runs, and fires scheduled game days.
/// Flags override the --config file.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Service config (YAML: listen, db, state_dir, inventory, tokens, allow,
    /// concurrency); see docs/operations.md.
    #[arg(long, value_name = "F")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7700]. Anything beyond loopback
    /// needs API tokens in the config.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The run store: sqlite:///abs/path/runs.db or
    /// postgres://user:password@host:port/database [default: sqlite under the state
    /// directory].
    #[arg(long, value_name = "URL", env = "FAULTLINE_DB")]
    db: Option<String>,
    /// Where the default SQLite store and the in-process agent's journal live
    /// [default: $XDG_STATE_HOME/faultline, /var/lib/faultline as root].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Agents runs may use (the `faultline run --inventory` format).
    #[arg(long, value_name = "F")]
    inventory: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (needs --tls-key).
    #[arg(long, value_name = "F", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "F", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    // === fleet (registry) ===
    /// The join token agents register with (`faultline agent --controller`);
    /// without one, registration is off [config: fleet.join_token_file].
    #[arg(long, value_name = "F")]
    join_token_file: Option<PathBuf>,
    /// The key of the api tokens the controller presents to registered agents;
    /// replicas must share it [config: fleet.secret_file; default:
    /// STATE_DIR/fleet-secret, created on first start].
    #[arg(long, value_name = "F")]
    fleet_secret_file: Option<PathBuf>,
    // === end fleet (registry) ===
    // === replicas (HA) ===
    /// This replica's id, unique among the replicas on one store (config
    /// `ha.replica_id`) [default: HOSTNAME-PID].
    #[arg(long, value_name = "ID")]
    replica_id: Option<String>,
    /// How long a run stays this replica's without a renewal; a survivor marks a
    /// dead replica's runs aborted once it lapses (config `ha.run_lease`)
    /// [default: 15s].
    #[arg(long, value_name = "DUR")]
    run_lease: Option<faultline_spec::units::Duration>,
    /// How long the scheduler's leadership lasts without a renewal; a dead leader is
    /// replaced within this plus a third of it (config `ha.leader_lease`)
    /// [default: 15s].
    #[arg(long, value_name = "DUR")]
    leader_lease: Option<faultline_spec::units::Duration>,
    // === end replicas (HA) ===
}

pub fn run(args: ServeArgs) -> anyhow::Result<u8> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let state_dir = absolute(
        args.state_dir
            .clone()
            .or_else(|| file.state_dir.clone())
            .unwrap_or_else(super::default_state_dir),
    )?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    let db = match args.db.clone().or_else(|| file.db.clone()) {
        Some(db) => db,
        None => format!("sqlite://{}", state_dir.join("runs.db").display()),
    };
    let inventory = match super::plan::load_inventory(
        args.inventory.as_deref().or(file.inventory.as_deref()),
    ) {
        Ok(inv) => inv,
        Err(code) => return Ok(code),
    };
    let mut config = ServiceConfig::new(db, state_dir);
    config.listen = args
        .listen
        .or(file.listen)
        .unwrap_or(service::config::DEFAULT_LISTEN);
    config.inventory = inventory;
    config.tokens = file.resolve_tokens()?;
    config.allow = file.allow.clone();
    config.concurrency = file.concurrency;
    // === fleet (registry) ===
    config.fleet = file.fleet.settings()?;
    if let Some(f) = args.join_token_file.clone() {
        config.fleet.join_token_file = Some(f);
    }
    if let Some(f) = args.fleet_secret_file.clone() {
        config.fleet.secret_file = Some(f);
    }
    // === end fleet (registry) ===
    config.tls = match (
        args.tls_cert.clone().or_else(|| file.tls_cert.clone()),
        args.tls_key.clone().or_else(|| file.tls_key.clone()),
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => bail!("TLS needs both a certificate and a key (tls_cert and tls_key)"),
    };
    // === replicas (HA) ===
    if let Some(id) = args
        .replica_id
        .clone()
        .or_else(|| file.ha.replica_id.clone())
    {
        config.ha.replica_id = id;
    }
    if let Some(d) = args.run_lease.or(file.ha.run_lease) {
        config.ha.run_lease = d.0;
    }
    if let Some(d) = args.leader_lease.or(file.ha.leader_lease) {
        config.ha.leader_lease = d.0;
    }
    if let Err(e) = config.ha.check() {
        bail!("{e}");
    }
    // === end replicas (HA) ===
    if config.tokens.is_empty() && !config.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {} without API tokens: add `tokens` to --config, or listen on 127.0.0.1",
            config.listen
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut svc = service::start(config).await?;
        for id in &svc.recovered {
            eprintln!("faultline serve: run {id} was in flight when the controller stopped; marked aborted");
        }
        eprintln!("faultline serve: listening on {}", svc.local_addr());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = svc.wait() => {
                r.context("the HTTP server stopped")?;
            }
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("faultline serve: shutting down; aborting runs in flight");
        svc.shutdown().await;
        Ok(exit::OK)
    })
}

fn absolute(p: PathBuf) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p);
    }
    Ok(std::env::current_dir()
        .context("reading the current directory")?
        .join(p))
}
