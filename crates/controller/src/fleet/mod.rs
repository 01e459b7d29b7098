//! The live registry of agents that registered themselves (`faultline agent
//! --controller URL`): registration and heartbeats (the protocol types are the
//! agent crate's, `faultline_agent::register`), the tokens of `tokens.rs`, and a
//! snapshot of the store's `agents` table that target selection reads.
//!
//! The store is the truth (every replica shares it); the snapshot is this
//! process's copy, refreshed every third of a heartbeat (at most every second)
//! and at the start of every run, so a `lost` agent leaves selection within one
//! refresh. `lost` is decided by the store's clock ([`crate::store::agent_state`]).

pub mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use faultline_agent::register::{
    HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse,
};

use crate::client::{AgentClient, HttpClient};
use crate::store::{AgentRegistration, AgentSnapshot, RegisteredAgent, RunStore, StoreError};
pub use tokens::{FleetSecret, JoinToken, TokenError};

/// The heartbeat interval agents are told when the config names none.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a controller waits for a registered agent's answer.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Missing, unknown or the wrong kind of token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// This controller has no join token: registration is off (403).
    #[error(
        "agent registration is off: start the controller with --join-token-file (fleet.join_token_file)"
    )]
    Disabled,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// What the registry is configured with.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// `None`: registration is refused.
    pub join_token: Option<JoinToken>,
    pub secret: FleetSecret,
    pub heartbeat: Duration,
}

/// The registry of one controller process.
pub struct Registry {
    store: Arc<dyn RunStore>,
    config: FleetConfig,
    snapshot: ArcSwap<AgentSnapshot>,
    /// One client per registered agent and generation, reused across runs.
    clients: Mutex<HashMap<String, CachedClient>>,
}

/// A registered agent's client, valid for its generation and URL.
struct CachedClient {
    generation: i64,
    url: String,
    client: Arc<HttpClient>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("store", &self.store.backend())
            .field("heartbeat", &self.config.heartbeat)
            .field("agents", &self.snapshot.load().agents.len())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry over `store`, with its first snapshot read.
    pub async fn open(
        store: Arc<dyn RunStore>,
        config: FleetConfig,
    ) -> Result<Arc<Registry>, FleetError> {
        if config.heartbeat.is_zero() {
            return Err(FleetError::Invalid(
                "fleet.heartbeat must be more than 0".to_owned(),
            ));
        }
        let first = store.list_agents().await?;
        Ok(Arc::new(Registry {
            store,
            config,
            snapshot: ArcSwap::from_pointee(first),
            clients: Mutex::new(HashMap::new()),
        }))
    }

    pub fn heartbeat(&self) -> Duration {
        self.config.heartbeat
    }

    fn heartbeat_ms(&self) -> u64 {
        u64::try_from(self.config.heartbeat.as_millis()).unwrap_or(u64::MAX)
    }

    /// How often the snapshot is refreshed in the background.
    pub fn refresh_every(&self) -> Duration {
        (self.config.heartbeat / 3).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// Refreshes the snapshot until the registry is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Registry> = Arc::downgrade(self);
        let every = self.refresh_every();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = registry.refresh().await {
                    tracing::warn!(error = %e, "registry: cannot read the agents from the store");
                }
            }
        })
    }

    /// Reads the store's agents now.
    pub async fn refresh(&self) -> Result<Arc<AgentSnapshot>, StoreError> {
        let snap = Arc::new(self.store.list_agents().await?);
        self.snapshot.store(Arc::clone(&snap));
        Ok(snap)
    }

    /// The last snapshot read.
    pub fn snapshot(&self) -> Arc<AgentSnapshot> {
        self.snapshot.load_full()
    }

    /// Whether an `Authorization` value carries the join token.
    pub fn is_join_token(&self, header: Option<&[u8]>) -> bool {
        match (&self.config.join_token, tokens::bearer(header)) {
            (Some(j), Some(given)) => j.matches(given),
            _ => false,
        }
    }

    /// Refuses anything but the join token (403 when there is none).
    pub fn check_join(&self, header: Option<&[u8]>) -> Result<(), FleetError> {
        if self.config.join_token.is_none() {
            return Err(FleetError::Disabled);
        }
        if !self.is_join_token(header) {
            return Err(FleetError::Unauthorized(
                "registration needs the join token (Authorization: Bearer <join token>); API tokens do not register agents".to_owned(),
            ));
        }
        Ok(())
    }

    /// A registration (or re-registration): the agent is stored with a new
    /// agent token's hash and a bumped generation; the answer carries both
    /// tokens, once.
    pub async fn register(
        &self,
        header: Option<&[u8]>,
        req: RegisterRequest,
    ) -> Result<RegisterResponse, FleetError> {
        self.check_join(header)?;
        check_url(&req.url)?;
        let agent_token = tokens::new_agent_token()?;
        let reg = AgentRegistration {
            id: req.id,
            url: req.url.trim_end_matches('/').to_owned(),
            labels: req.labels,
            capabilities: req.capabilities,
            version: req.version,
            host: serde_json::to_value(&req.host)
                .map_err(|e| FleetError::Invalid(format!("host facts: {e}")))?,
            token_hash: tokens::token_hash(&agent_token),
            heartbeat_ms: self.heartbeat_ms(),
        };
        let agent = self
            .store
            .register_agent(&reg, &format!("agent:{}", reg.id))
            .await
            .map_err(|e| match e {
                StoreError::Invalid { field, reason } => {
                    FleetError::Invalid(format!("{field}: {reason}"))
                }
                e => e.into(),
            })?;
        tracing::info!(agent = %agent.id, url = %agent.url, generation = agent.generation, "agent registered");
        // Selection sees it at once in this process, not at the next refresh.
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "registry: refresh after a registration failed");
        }
        Ok(RegisterResponse {
            api_token: self.config.secret.api_token(&agent.id, agent.generation),
            id: agent.id,
            agent_token,
            generation: agent.generation,
            heartbeat_ms: agent.heartbeat_ms,
        })
    }

    /// A heartbeat of agent `id` with its agent token.
    pub async fn heartbeat_of(
        &self,
        id: &str,
        header: Option<&[u8]>,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, FleetError> {
        let refused = || {
            FleetError::Unauthorized(format!(
                "agent `{id}` is not registered with this token; register again with the join token"
            ))
        };
        let Some(given) = tokens::bearer(header) else {
            return Err(refused());
        };
        let given = std::str::from_utf8(given).map_err(|_| refused())?;
        match self
            .store
            .heartbeat_agent(
                id,
                &tokens::token_hash(given),
                req.active_faults,
                self.heartbeat_ms(),
            )
            .await?
        {
            Some(_) => Ok(HeartbeatResponse {
                heartbeat_ms: self.heartbeat_ms(),
            }),
            None => Err(refused()),
        }
    }

    /// The api token the controller presents to an agent.
    pub fn api_token(&self, agent: &RegisteredAgent) -> String {
        self.config.secret.api_token(&agent.id, agent.generation)
    }

    /// The client of a registered agent: its URL, its api token.
    pub fn client(&self, agent: &RegisteredAgent) -> Result<Arc<dyn AgentClient>, String> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get(&agent.id)
            && c.generation == agent.generation
            && c.url == agent.url
        {
            return Ok(Arc::clone(&c.client) as Arc<dyn AgentClient>);
        }
        let client = Arc::new(
            HttpClient::new(
                &agent.id,
                &agent.url,
                Some(self.api_token(agent)),
                None,
                AGENT_TIMEOUT,
            )
            .map_err(|e| e.to_string())?,
        );
        clients.insert(
            agent.id.clone(),
            CachedClient {
                generation: agent.generation,
                url: agent.url.clone(),
                client: Arc::clone(&client),
            },
        );
        Ok(client)
    }
}

/// An agent's URL must be http(s) with a host: the controller calls it.
fn check_url(url: &str) -> Result<(), FleetError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(()),
        _ => Err(FleetError::Invalid(format!(
            "url {url:?}: expected http://HOST:PORT or https://HOST:PORT"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AgentState, agent_state};

    #[test]
    fn lost_means_silent_for_more_than_three_heartbeats() {
        let seen = chrono::Utc::now();
        let at = |ms: i64| seen + chrono::Duration::milliseconds(ms);
        assert_eq!(agent_state(seen, 1000, at(0)), AgentState::Alive);
        assert_eq!(agent_state(seen, 1000, at(2999)), AgentState::Alive);
        assert_eq!(
            agent_state(seen, 1000, at(3000)),
            AgentState::Alive,
            "3 missed is the limit"
        );
        assert_eq!(agent_state(seen, 1000, at(3001)), AgentState::Lost);
        assert_eq!(agent_state(seen, 300, at(901)), AgentState::Lost);
        // A clock that moved back (another replica's) never makes an agent lost.
        assert_eq!(agent_state(seen, 1000, at(-5000)), AgentState::Alive);
        assert_eq!(
            agent_state(seen, u64::MAX, at(i64::from(i32::MAX))),
            AgentState::Alive
        );
    }

    #[test]
    fn agent_urls_are_checked() {
        assert!(check_url("http://10.0.0.5:7600").is_ok());
        assert!(check_url("https://gpu-1.internal:7600").is_ok());
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("http://").is_err());
        assert!(check_url("10.0.0.5:7600").is_err());
    }
}
