//! Registration with a controller (`faultline agent --controller URL`): the
//! agent announces itself with the join token (`POST /v1/agents/register`: its
//! id, the URL the controller reaches it at, labels, host facts, the fault kinds
//! it can inject here, its version), keeps the `api_token` the answer carries as
//! the bearer token it accepts from the controller, and heartbeats with its own
//! `agent_token` at the interval the controller answers. A 401 on a heartbeat
//! (the controller forgot it, or another registration of the same id rotated its
//! token) re-registers; any other failure is logged and retried with a bounded
//! exponential backoff. It never stops trying while the agent runs.
//!
//! The wire types here are the protocol: the controller (a crate to the right)
//! uses the same structs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::Token;
use crate::manager::Manager;

/// The first retry waits this long; each failure doubles it up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// One call to the controller may take this long.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest and longest heartbeat interval the agent follows, whatever a
/// controller answers.
pub const HEARTBEAT_MIN: Duration = Duration::from_millis(50);
pub const HEARTBEAT_MAX: Duration = Duration::from_secs(300);

// === protocol ===

/// What the host is, as registration reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    /// `linux`, with the distribution's PRETTY_NAME when /etc/os-release has one.
    pub os: String,
    pub kernel: String,
    pub cpus: u32,
}

impl HostFacts {
    /// This host's facts, read from /proc and /etc/os-release (best effort: a
    /// fact that cannot be read is empty).
    pub fn of_this_host() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let pretty = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned());
        HostFacts {
            hostname: hostname(),
            os: match pretty {
                Some(p) => format!("{} ({p})", std::env::consts::OS),
                None => std::env::consts::OS.to_owned(),
            },
            kernel: read("/proc/sys/kernel/osrelease"),
            cpus: std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
                .unwrap_or(1),
        }
    }
}

/// This host's name (the kernel's), or `localhost` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `POST /v1/agents/register`, with `Authorization: Bearer <join token>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Unique in the fleet: `[A-Za-z0-9._-]`, 1 to 128 characters.
    pub id: String,
    /// Where the controller reaches this agent's API: `http://10.0.0.5:7600`.
    pub url: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The fault kinds this agent can inject on this host.
    #[serde(default)]
    pub capabilities: Vec<String>,
    pub version: String,
    #[serde(default)]
    pub host: HostFacts,
}

/// The answer to a registration. Both tokens are shown once, here.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub id: String,
    /// What the agent presents on its heartbeats (only its hash is stored).
    pub agent_token: String,
    /// What the controller presents to the agent's API.
    pub api_token: String,
    /// 1 at the first registration; each re-registration rotates both tokens.
    pub generation: i64,
    pub heartbeat_ms: u64,
}

impl std::fmt::Debug for RegisterResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a token.
        f.debug_struct("RegisterResponse")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .finish_non_exhaustive()
    }
}

/// `POST /v1/agents/{id}/heartbeat`, with `Authorization: Bearer <agent token>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Faults the agent holds now.
    #[serde(default)]
    pub active_faults: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// When to send the next heartbeat.
    pub heartbeat_ms: u64,
}

// === the registrar ===

/// Where and as whom to register.
#[derive(Clone)]
pub struct RegisterConfig {
    /// The controller's base URL: `https://controller:7700`.
    pub controller: String,
    pub join_token: String,
    /// This agent's id in the fleet.
    pub id: String,
    /// The URL the controller reaches this agent at (`--advertise` with the
    /// scheme); `None`: the address the agent listens on, which must then not be
    /// a wildcard.
    pub url: Option<String>,
    /// PEM CA that signed the controller's certificate; the platform roots without.
    pub controller_ca: Option<PathBuf>,
}

impl std::fmt::Debug for RegisterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterConfig")
            .field("controller", &self.controller)
            .field("id", &self.id)
            .field("url", &self.url)
            .field("controller_ca", &self.controller_ca)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("the controller client cannot be built: {0}")]
    Client(String),
    #[error("the controller refused the {what} (401): {reason}")]
    Unauthorized { what: &'static str, reason: String },
    #[error("the controller answered the {what} with {status}: {reason}")]
    Rejected {
        what: &'static str,
        status: u16,
        reason: String,
    },
    #[error("the controller is unreachable: {0}")]
    Unreachable(String),
}

/// Builds the HTTP client registration uses (rustls, ring provider).
pub fn client(ca: Option<&std::path::Path>) -> Result<reqwest::Client, RegisterError> {
    let fail = |r: String| RegisterError::Client(r);
    let mut builder = reqwest::Client::builder()
        .timeout(CALL_TIMEOUT)
        .connect_timeout(Duration::from_secs(5));
    match ca {
        Some(path) => {
            use rustls_pki_types::CertificateDer;
            use rustls_pki_types::pem::PemObject as _;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| fail(format!("cannot read CA {}: {e}", path.display())))?
            {
                let cert = cert.map_err(|e| fail(format!("CA {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| fail(format!("CA {}: {e}", path.display())))?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| fail(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder = builder.tls_backend_preconfigured(config);
        }
        None => {
            let _ = rustls::crypto::CryptoProvider::install_default(
                rustls::crypto::ring::default_provider(),
            );
        }
    }
    builder.build().map_err(|e| fail(e.to_string()))
}

/// Registers and heartbeats for as long as the returned task runs.
/// `url` is where the controller reaches this agent.
pub fn spawn(
    config: RegisterConfig,
    url: String,
    manager: Arc<Manager>,
    token: Token,
) -> Result<tokio::task::JoinHandle<()>, RegisterError> {
    let http = client(config.controller_ca.as_deref())?;
    let registrar = Registrar {
        base: config.controller.trim_end_matches('/').to_owned(),
        url,
        config,
        http,
        manager,
        token,
    };
    Ok(tokio::spawn(registrar.run()))
}

struct Registrar {
    base: String,
    url: String,
    config: RegisterConfig,
    http: reqwest::Client,
    manager: Arc<Manager>,
    token: Token,
}

/// The next wait after a failure: doubled, within the bounds.
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
}

fn heartbeat_interval(ms: u64) -> Duration {
    Duration::from_millis(ms).clamp(HEARTBEAT_MIN, HEARTBEAT_MAX)
}

impl Registrar {
    async fn run(self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let registered = match self.register().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(controller = %self.base, error = %e, retry_in = ?backoff, "registration failed");
                    tokio::time::sleep(backoff).await;
                    backoff = next_backoff(backoff);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            self.token.set_issued(Some(registered.api_token.clone()));
            tracing::info!(
                controller = %self.base,
                id = %registered.id,
                generation = registered.generation,
                heartbeat_ms = registered.heartbeat_ms,
                "registered with the controller"
            );
            self.heartbeat_until_refused(&registered).await;
        }
    }

    /// Heartbeats until the controller answers 401 (then the caller registers again).
    async fn heartbeat_until_refused(&self, registered: &RegisterResponse) {
        let mut interval = heartbeat_interval(registered.heartbeat_ms);
        let mut failing = Duration::ZERO;
        loop {
            // After a failure, retry sooner than a whole interval (bounded by it),
            // so a brief outage costs no more than one missed heartbeat.
            let wait = if failing.is_zero() {
                interval
            } else {
                failing.min(interval)
            };
            tokio::time::sleep(wait).await;
            match self.heartbeat(&registered.agent_token).await {
                Ok(answer) => {
                    interval = heartbeat_interval(answer.heartbeat_ms);
                    if !failing.is_zero() {
                        tracing::info!(controller = %self.base, "heartbeats answered again");
                    }
                    failing = Duration::ZERO;
                }
                Err(RegisterError::Unauthorized { reason, .. }) => {
                    tracing::warn!(controller = %self.base, %reason, "the controller no longer knows this agent's token; registering again");
                    return;
                }
                Err(e) => {
                    failing = if failing.is_zero() {
                        BACKOFF_MIN
                    } else {
                        next_backoff(failing)
                    };
                    tracing::warn!(controller = %self.base, error = %e, retry_in = ?failing.min(interval), "heartbeat failed");
                }
            }
        }
    }

    async fn register(&self) -> Result<RegisterResponse, RegisterError> {
        let health = self.manager.health().await;
        let body = RegisterRequest {
            id: self.config.id.clone(),
            url: self.url.clone(),
            labels: health.labels,
            capabilities: health.capabilities,
            version: health.version,
            host: HostFacts::of_this_host(),
        };
        self.post(
            "registration",
            "/v1/agents/register",
            &self.config.join_token,
            &body,
        )
        .await
    }

    async fn heartbeat(&self, agent_token: &str) -> Result<HeartbeatResponse, RegisterError> {
        let body = HeartbeatRequest {
            active_faults: self.manager.active_count().await,
        };
        self.post(
            "heartbeat",
            &format!("/v1/agents/{}/heartbeat", self.config.id),
            agent_token,
            &body,
        )
        .await
    }

    async fn post<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        bearer: &str,
        body: &B,
    ) -> Result<T, RegisterError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(bearer)
            .json(body)
            .send()
            .await
            .map_err(|e| RegisterError::Unreachable(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| RegisterError::Unreachable(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| RegisterError::Rejected {
                what,
                status: status.as_u16(),
                reason: format!("unreadable answer: {e}"),
            });
        }
        let reason = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        if status.as_u16() == 401 {
            Err(RegisterError::Unauthorized { what, reason })
        } else {
            Err(RegisterError::Rejected {
                what,
                status: status.as_u16(),
                reason,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_bounds() {
        let mut b = BACKOFF_MIN;
        let mut seen = vec![b];
        for _ in 0..20 {
            b = next_backoff(b);
            seen.push(b);
        }
        assert_eq!(seen[1], BACKOFF_MIN * 2);
        assert!(seen.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*seen.last().unwrap(), BACKOFF_MAX);
        assert_eq!(heartbeat_interval(0), HEARTBEAT_MIN);
        assert_eq!(heartbeat_interval(u64::MAX), HEARTBEAT_MAX);
    }

    #[test]
    fn host_facts_are_read() {
        let h = HostFacts::of_this_host();
        assert!(!h.hostname.is_empty() && h.cpus >= 1);
        assert!(h.os.starts_with("linux"));
    }

    #[test]
    fn the_register_answer_never_prints_tokens() {
        let r = RegisterResponse {
            id: "a".into(),
            agent_token: "agent-secret".into(),
            api_token: "api-secret".into(),
            generation: 1,
            heartbeat_ms: 5000,
        };
        let text = format!("{r:?}");
        assert!(!text.contains("secret"), "{text}");
    }
}
