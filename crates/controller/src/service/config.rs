//! The service's settings: what `faultline serve --config F` reads (YAML,
//! [`ConfigFile`]) and what [`super::start`] takes ([`ServiceConfig`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use faultline_spec::Inventory;
use serde::{Deserialize, Serialize};

use super::auth::{ApiToken, Role};

/// The default listen address: loopback, so a token-less start is safe.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7700);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The `--config` file. Flags given on the command line win over it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<SocketAddr>,
    /// `sqlite:///abs/path/runs.db` or `postgres://user:pass@host:port/db`.
    pub db: Option<String>,
    pub state_dir: Option<PathBuf>,
    /// The agents runs may use (the `faultline run --inventory` format).
    pub inventory: Option<PathBuf>,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    #[serde(default)]
    pub allow: AllowList,
    #[serde(default)]
    pub concurrency: ConcurrencyPolicy,
    /// PEM certificate chain and key: serve HTTPS (rustls) instead of HTTP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    // === fleet (registry) ===
    /// Agents that register themselves (`faultline agent --controller`).
    #[serde(default)]
    pub fleet: FleetFile,
    // === end fleet (registry) ===
    // === replicas (HA) ===
    /// Several replicas on one PostgreSQL store.
    #[serde(default)]
    pub ha: HaConfig,
    // === end replicas (HA) ===
}

// === fleet (registry) ===

/// The `fleet:` block of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// The join token agents register with; without one, registration is off.
    pub join_token_file: Option<PathBuf>,
    /// The key of the api tokens the controller presents to agents; every
    /// replica must read the same one [default: STATE_DIR/fleet-secret, created].
    pub secret_file: Option<PathBuf>,
    /// The heartbeat interval agents are told; silent for 3 of them is `lost`
    /// [default: 5s].
    pub heartbeat: Option<faultline_spec::units::Duration>,
}

/// The fleet settings [`super::start`] takes (files not yet read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    pub join_token_file: Option<PathBuf>,
    pub secret_file: Option<PathBuf>,
    pub heartbeat: Duration,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            join_token_file: None,
            secret_file: None,
            heartbeat: crate::fleet::DEFAULT_HEARTBEAT,
        }
    }
}

impl FleetFile {
    /// The settings this block gives, with defaults.
    pub fn settings(&self) -> Result<FleetSettings, ConfigError> {
        let heartbeat = match self.heartbeat {
            Some(h) if h.is_zero() => {
                return Err(ConfigError::Invalid(
                    "fleet.heartbeat must be more than 0".to_owned(),
                ));
            }
            Some(h) => h.get(),
            None => crate::fleet::DEFAULT_HEARTBEAT,
        };
        Ok(FleetSettings {
            join_token_file: self.join_token_file.clone(),
            secret_file: self.secret_file.clone(),
            heartbeat,
        })
    }
}

// === end fleet (registry) ===

// === replicas (HA) ===
/// `ha:` in the service config: `{replica_id, run_lease, leader_lease}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// Unique per replica [default: HOSTNAME-PID].
    pub replica_id: Option<String>,
    /// How long a run stays its replica's without a renewal [default: 15s].
    pub run_lease: Option<faultline_spec::units::Duration>,
    /// How long the scheduler's leadership lasts without a renewal [default: 15s].
    pub leader_lease: Option<faultline_spec::units::Duration>,
}
// === end replicas (HA) ===

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            what: "service config",
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        serde_yaml::from_str(&text)
            .map_err(|e| ConfigError::Invalid(format!("service config {}: {e}", path.display())))
    }

    /// Every token with its secret read.
    pub fn resolve_tokens(&self) -> Result<Vec<ApiToken>, ConfigError> {
        let mut out: Vec<ApiToken> = Vec::with_capacity(self.tokens.len());
        for t in &self.tokens {
            if out.iter().any(|o| o.name == t.name) {
                return Err(ConfigError::Invalid(format!(
                    "token name `{}` is used twice; the audit log names tokens, so names must be unique",
                    t.name
                )));
            }
            out.push(t.resolve()?);
        }
        Ok(out)
    }
}

/// One API token: who it is (in the audit log), what it may do, and where its
/// secret is. The secret itself is never in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub role: Role,
    /// A file holding the token (whitespace trimmed).
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the token.
    pub token_env: Option<String>,
}

impl TokenConfig {
    pub fn resolve(&self) -> Result<ApiToken, ConfigError> {
        let secret = match (&self.token_file, &self.token_env) {
            (Some(f), None) => {
                faultline_agent::auth::read_token_file(f).map_err(|reason| ConfigError::Read {
                    what: "token file",
                    path: f.clone(),
                    reason,
                })?
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "token `{}`: environment variable {var} is unset or empty",
                        self.name
                    )));
                }
            },
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "token `{}`: give exactly one of token_file and token_env",
                    self.name
                )));
            }
        };
        Ok(ApiToken::new(&self.name, self.role, secret))
    }
}

/// What experiments arriving over the API may do on the controller's own host.
/// Anything not named here is refused (422 `not_allowed`, located like a
/// validation error).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowList {
    /// Programs a `command` probe may run (its `run[0]`, exactly as written), or
    /// `"*"` for any. Probes run in the controller's process.
    #[serde(default)]
    pub commands: Vec<String>,
    /// Processes a `process.pause` / `process.kill` step may target on the
    /// in-process agent (`agents: [local]`, the controller's own host):
    /// `name:COMM`, `pid:N`, `cgroup:PATH`, with `*` as the whole value for any
    /// (`pid:*`), or `"*"` for every process.
    #[serde(default)]
    pub local_processes: Vec<String>,
}

/// Two runs whose targets share an agent: refuse the second (409) or queue it
/// until the first is done. Never both at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyPolicy {
    #[default]
    Refuse,
    Queue,
}

/// How runs are paced: the engine's defaults, shortened by tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunTuning {
    pub bucket: Duration,
    pub tick: Duration,
    pub observe_every: Duration,
}

impl Default for RunTuning {
    fn default() -> Self {
        let d = crate::engine::RunOptions::new("", 0);
        RunTuning {
            bucket: d.bucket,
            tick: d.tick,
            observe_every: d.observe_every,
        }
    }
}

/// Everything [`super::start`] needs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub listen: SocketAddr,
    /// The store URL (see [`crate::store::open`]).
    pub db: String,
    /// The in-process agent's journal lives under `STATE_DIR/local-agent`.
    pub state_dir: PathBuf,
    pub inventory: Inventory,
    /// No tokens: every request acts as `anonymous` admin, and only loopback is
    /// allowed as the listen address.
    pub tokens: Vec<ApiToken>,
    pub allow: AllowList,
    pub concurrency: ConcurrencyPolicy,
    pub tuning: RunTuning,
    /// How long a shutdown waits for aborted runs to revert and finish.
    pub shutdown_grace: Duration,
    /// PEM certificate chain and key: HTTPS (rustls, ring) instead of HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    // === fleet (registry) ===
    pub fleet: FleetSettings,
    // === end fleet (registry) ===
    // === replicas (HA) ===
    /// This replica's id and leases.
    pub ha: super::ha::HaSettings,
    // === end replicas (HA) ===
}

impl ServiceConfig {
    /// Loopback, no tokens, nothing allowed, runs refused on busy agents.
    pub fn new(db: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        ServiceConfig {
            listen: DEFAULT_LISTEN,
            db: db.into(),
            state_dir: state_dir.into(),
            inventory: Inventory::default(),
            tokens: Vec::new(),
            allow: AllowList::default(),
            concurrency: ConcurrencyPolicy::default(),
            tuning: RunTuning::default(),
            shutdown_grace: Duration::from_secs(30),
            tls: None,
            fleet: FleetSettings::default(),
            ha: super::ha::HaSettings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Kubernetes Deployment's serve.yaml is a config this build accepts
    /// (unknown keys are errors), with the fleet and HA settings it documents.
    #[test]
    fn the_controller_deployment_config_map_holds_a_valid_config() {
        use serde::Deserialize as _;
        let text = include_str!("../../../../agents/controller.yaml");
        let mut found = false;
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v = serde_yaml::Value::deserialize(doc).expect("manifest is YAML");
            if let Some(cfg) = v["data"]["serve.yaml"].as_str() {
                let c: ConfigFile = serde_yaml::from_str(cfg).expect("serve.yaml parses");
                assert!(c.db.is_none(), "the URL comes from the Secret, not the map");
                let fleet = c.fleet.settings().expect("fleet settings");
                assert!(fleet.join_token_file.is_some() && fleet.secret_file.is_some());
                assert!(c.ha.run_lease.is_some(), "{:?}", c.ha);
                assert!(!c.tokens.is_empty(), "it listens beyond loopback");
                found = true;
            }
        }
        assert!(found, "no serve.yaml in the ConfigMap");
    }
}
