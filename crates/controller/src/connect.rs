//! From a plan to the clients a run uses: one [`AgentClient`] per agent the
//! experiment's targets resolve to, over HTTP for inventory agents and in this
//! process for `local`. Shared by `faultline run` and `faultline serve`, so both
//! reach agents the same way.
//!
//! The in-process agent is started once per [`Connector`] and kept: its journal
//! under the state directory lets a restart revert what a killed process left, and
//! two managers on one journal would fight over it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use faultline_spec::{Experiment, Inventory, LOCAL_AGENT};
use indexmap::IndexMap;
use tokio::sync::OnceCell;

use crate::client::{AgentClient, ClientError, HaltReport, HttpClient, LocalClient};
use crate::engine::Agents;
use crate::select::{SelectError, Selection, resolve};

/// How long an inventory agent has to answer one control call.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A target does not resolve against the inventory (invalid input: exit 2).
    #[error("{}", join(.0))]
    Unresolved(Vec<SelectError>),
    /// An inventory entry cannot be turned into a client (its token file, its URL).
    #[error("agent {agent}: {reason}")]
    BadAgent { agent: String, reason: String },
    /// The in-process agent could not open its journal or recover from it.
    #[error("the in-process agent could not start: {0}")]
    Local(ClientError),
}

fn join(errors: &[SelectError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What halting one agent did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentHalt {
    pub agent: String,
    /// The agent's report; `None` when it could not be reached.
    pub report: Option<HaltReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Builds the agent clients of runs against one inventory.
#[derive(Debug)]
pub struct Connector {
    inventory: Inventory,
    local_state_dir: PathBuf,
    local: OnceCell<(Arc<LocalClient>, HaltReport)>,
}

impl Connector {
    /// `local_state_dir` is where the in-process agent keeps its journal.
    pub fn new(inventory: Inventory, local_state_dir: PathBuf) -> Self {
        Connector {
            inventory,
            local_state_dir,
            local: OnceCell::new(),
        }
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The experiment's targets, resolved with `seed`.
    pub fn resolve(
        &self,
        exp: &Experiment,
        seed: u64,
    ) -> Result<IndexMap<String, Selection>, ConnectError> {
        resolve(exp, &self.inventory, seed).map_err(ConnectError::Unresolved)
    }

    /// One client per agent the targets resolve to, in first-use order.
    pub async fn agents(&self, exp: &Experiment, seed: u64) -> Result<Agents, ConnectError> {
        let selections = self.resolve(exp, seed)?;
        let mut agents = Agents::new();
        for name in selections.values().flat_map(|s| s.agents.iter()) {
            if agents.contains_key(name) {
                continue;
            }
            let client = self.client(name).await?;
            agents.insert(name.clone(), client);
        }
        Ok(agents)
    }

    /// The client of one agent by inventory name (`local`: the in-process agent).
    pub async fn client(&self, name: &str) -> Result<Arc<dyn AgentClient>, ConnectError> {
        if name == LOCAL_AGENT {
            return Ok(self.local().await? as Arc<dyn AgentClient>);
        }
        let Some(entry) = self.inventory.agents.get(name) else {
            return Err(ConnectError::BadAgent {
                agent: name.to_owned(),
                reason: "not in the inventory".to_owned(),
            });
        };
        let bad = |reason: String| ConnectError::BadAgent {
            agent: name.to_owned(),
            reason,
        };
        let token = match &entry.token_file {
            Some(f) => {
                Some(faultline_agent::auth::read_token_file(std::path::Path::new(f)).map_err(bad)?)
            }
            None => None,
        };
        let client = HttpClient::new(name, &entry.url, token, None, AGENT_TIMEOUT)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Arc::new(client))
    }

    /// The in-process agent, started (journal opened, leftovers reverted) on first use.
    pub async fn local(&self) -> Result<Arc<LocalClient>, ConnectError> {
        let (client, _) = self
            .local
            .get_or_try_init(|| async {
                let (client, recovered) =
                    LocalClient::start(&self.local_state_dir, BTreeMap::new())
                        .await
                        .map_err(ConnectError::Local)?;
                for id in &recovered.reverted {
                    tracing::warn!(fault = %id, "in-process agent: reverted a fault left by a previous run");
                }
                for f in &recovered.failed {
                    tracing::error!(fault = %f.id, reason = %f.reason, "in-process agent: could NOT revert a fault left by a previous run");
                }
                Ok::<_, ConnectError>((Arc::new(client), recovered))
            })
            .await?;
        Ok(Arc::clone(client))
    }

    /// What starting the in-process agent reverted, once it has started.
    pub fn local_recovered(&self) -> Option<&HaltReport> {
        self.local.get().map(|(_, r)| r)
    }

    /// Halts the in-process agent if it was started: the engine reverted what it
    /// injected, and this also clears what a previous, killed run left that its
    /// lease still holds.
    pub async fn halt_local(&self) -> Option<HaltReport> {
        let (local, _) = self.local.get()?;
        local.halt().await.ok()
    }

    /// Halts every agent of the inventory and the in-process one, concurrently.
    pub async fn halt_all(&self) -> Vec<AgentHalt> {
        let mut names: Vec<String> = self.inventory.agents.keys().cloned().collect();
        names.push(LOCAL_AGENT.to_owned());
        let halts = names.into_iter().map(|name| async move {
            let client = match self.client(&name).await {
                Ok(c) => c,
                Err(e) => {
                    return AgentHalt {
                        agent: name,
                        report: None,
                        error: Some(e.to_string()),
                    };
                }
            };
            match client.halt().await {
                Ok(report) => AgentHalt {
                    agent: name,
                    report: Some(report),
                    error: None,
                },
                Err(e) => AgentHalt {
                    agent: name,
                    report: None,
                    error: Some(e.to_string()),
                },
            }
        });
        futures_util::future::join_all(halts).await
    }
}
