//! From a plan to the clients a run uses: one [`AgentClient`] per agent the
//! experiment's targets resolve to, over HTTP for inventory agents and for agents
//! that registered themselves (the live registry, `crate::fleet`: alive ones
//! only, with the api token the fleet secret gives them), and in this process
//! for `local`. Shared by `faultline run` and `faultline serve`, so both reach
//! agents the same way.
//!
//! Targets resolve against one merged inventory: the inventory file's agents,
//! then the registry snapshot's alive agents by id (an inventory name wins over
//! a registered agent of the same id). The same seed over the same snapshot
//! picks the same agents.
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
use crate::engine::faults::FanOut;
use crate::fleet::Registry;
use crate::select::{SelectError, Selection, resolve};
use crate::store::AgentSnapshot;

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
    registry: Option<Arc<Registry>>,
    local_state_dir: PathBuf,
    local: OnceCell<(Arc<LocalClient>, HaltReport)>,
}

/// The inventory file's agents plus the snapshot's alive ones (an inventory
/// name wins over a registered id).
pub fn merge(inventory: &Inventory, snapshot: Option<&AgentSnapshot>) -> Inventory {
    let mut merged = inventory.clone();
    for a in snapshot.into_iter().flat_map(AgentSnapshot::alive) {
        if a.id == LOCAL_AGENT || merged.agents.contains_key(&a.id) {
            continue;
        }
        merged.agents.insert(
            a.id.clone(),
            faultline_spec::inventory::AgentEntry {
                url: a.url.clone(),
                labels: a.labels.clone(),
                token_file: None,
            },
        );
    }
    merged
}

impl Connector {
    /// `local_state_dir` is where the in-process agent keeps its journal.
    pub fn new(inventory: Inventory, local_state_dir: PathBuf) -> Self {
        Connector {
            inventory,
            registry: None,
            local_state_dir,
            local: OnceCell::new(),
        }
    }

    /// Targets also resolve against the live registry's alive agents.
    pub fn with_registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    pub fn registry(&self) -> Option<&Arc<Registry>> {
        self.registry.as_ref()
    }

    /// The inventory file's agents only.
    pub fn static_inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// What targets resolve against now: the inventory plus the registry
    /// snapshot's alive agents.
    pub fn inventory(&self) -> Inventory {
        let snap = self.registry.as_ref().map(|r| r.snapshot());
        merge(&self.inventory, snap.as_deref())
    }

    /// The experiment's targets, resolved with `seed` against [`Self::inventory`].
    pub fn resolve(
        &self,
        exp: &Experiment,
        seed: u64,
    ) -> Result<IndexMap<String, Selection>, ConnectError> {
        resolve(exp, &self.inventory(), seed).map_err(ConnectError::Unresolved)
    }

    /// One client per agent the targets resolve to, in first-use order.
    pub async fn agents(&self, exp: &Experiment, seed: u64) -> Result<Agents, ConnectError> {
        Ok(self.connect(exp, seed).await?.0)
    }

    /// Refreshes the registry snapshot, resolves the targets against it and
    /// answers one client per chosen agent together with the inventory the
    /// selection was made over (what the engine resolves against again, so both
    /// see one snapshot).
    pub async fn connect(
        &self,
        exp: &Experiment,
        seed: u64,
    ) -> Result<(Agents, Inventory), ConnectError> {
        let snap = match &self.registry {
            Some(r) => Some(match r.refresh().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "registry: using the last snapshot");
                    r.snapshot()
                }
            }),
            None => None,
        };
        let inventory = merge(&self.inventory, snap.as_deref());
        let selections = resolve(exp, &inventory, seed).map_err(ConnectError::Unresolved)?;
        let mut agents = Agents::new();
        for name in selections.values().flat_map(|s| s.agents.iter()) {
            if agents.contains_key(name) {
                continue;
            }
            let client = self.client_in(name, snap.as_deref()).await?;
            agents.insert(name.clone(), client);
        }
        Ok((agents, inventory))
    }

    /// The client of one agent by inventory name or registered id (`local`: the
    /// in-process agent).
    pub async fn client(&self, name: &str) -> Result<Arc<dyn AgentClient>, ConnectError> {
        let snap = self.registry.as_ref().map(|r| r.snapshot());
        self.client_in(name, snap.as_deref()).await
    }

    async fn client_in(
        &self,
        name: &str,
        snap: Option<&AgentSnapshot>,
    ) -> Result<Arc<dyn AgentClient>, ConnectError> {
        if name == LOCAL_AGENT {
            return Ok(self.local().await? as Arc<dyn AgentClient>);
        }
        let Some(entry) = self.inventory.agents.get(name) else {
            let registered = snap
                .zip(self.registry.as_ref())
                .and_then(|(s, r)| s.alive().find(|a| a.id == name).map(|a| (a, r)));
            return match registered {
                Some((agent, registry)) => {
                    registry
                        .client(agent)
                        .map_err(|reason| ConnectError::BadAgent {
                            agent: name.to_owned(),
                            reason,
                        })
                }
                None => Err(ConnectError::BadAgent {
                    agent: name.to_owned(),
                    reason: "neither in the inventory nor an alive registered agent".to_owned(),
                }),
            };
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

    /// Halts every agent of the inventory, every alive registered agent (the
    /// store's now, not the last snapshot) and the in-process one, at most
    /// [`crate::engine::faults::FAN_OUT`] at once.
    pub async fn halt_all(self: &Arc<Self>) -> Vec<AgentHalt> {
        let snap = match &self.registry {
            Some(r) => match r.refresh().await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "registry: halting the agents of the last snapshot");
                    Some(r.snapshot())
                }
            },
            None => None,
        };
        let mut names: Vec<String> = self.inventory.agents.keys().cloned().collect();
        for a in snap.iter().flat_map(|s| s.alive()) {
            if !self.inventory.agents.contains_key(&a.id) && a.id != LOCAL_AGENT {
                names.push(a.id.clone());
            }
        }
        names.push(LOCAL_AGENT.to_owned());
        let fan_out = FanOut::default();
        let mut set = tokio::task::JoinSet::new();
        for (i, name) in names.into_iter().enumerate() {
            let this = Arc::clone(self);
            let snap = snap.clone();
            fan_out.spawn(&mut set, async move {
                let halt = match this.client_in(&name, snap.as_deref()).await {
                    Ok(client) => match client.halt().await {
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
                    },
                    Err(e) => AgentHalt {
                        agent: name,
                        report: None,
                        error: Some(e.to_string()),
                    },
                };
                (i, halt)
            });
        }
        let mut out: Vec<(usize, AgentHalt)> = Vec::new();
        while let Some(done) = set.join_next().await {
            match done {
                Ok(h) => out.push(h),
                Err(e) => tracing::error!(error = %e, "a halt call panicked"),
            }
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, h)| h).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AgentState, RegisteredAgent};

    fn agent(id: &str, role: &str, state: AgentState) -> RegisteredAgent {
        let now = chrono::Utc::now();
        RegisteredAgent {
            id: id.to_owned(),
            url: format!("http://10.0.0.1:7600/{id}"),
            labels: [("role".to_owned(), role.to_owned())].into(),
            capabilities: Vec::new(),
            version: "0.1.0".to_owned(),
            host: serde_json::Value::Null,
            generation: 1,
            heartbeat_ms: 1000,
            active_faults: 0,
            registered_at: now,
            last_seen: now,
            state,
        }
    }

    fn snapshot(n: usize, lost: &[usize]) -> AgentSnapshot {
        AgentSnapshot {
            at: chrono::Utc::now(),
            agents: (0..n)
                .map(|i| {
                    let state = if lost.contains(&i) {
                        AgentState::Lost
                    } else {
                        AgentState::Alive
                    };
                    agent(&format!("w{i:02}"), "worker", state)
                })
                .collect(),
        }
    }

    fn experiment(mode: &str) -> Experiment {
        let text = format!(
            "version: faultline/v1\nname: t\ntargets:\n  t: {{ selector: {{ role: worker }}, mode: {mode} }}\nmethod:\n  - {{ name: s, target: t, fault: {{ process.pause: {{ pid: 1 }} }}, duration: 1s }}\n"
        );
        faultline_spec::load("t.yaml", &text)
            .experiment
            .expect("valid")
    }

    #[test]
    fn selection_over_a_snapshot_is_reproducible_and_skips_lost_agents() {
        let snap = snapshot(50, &[7, 13]);
        let inv = merge(&Inventory::default(), Some(&snap));
        assert_eq!(inv.agents.len(), 48, "lost agents are never candidates");
        assert!(!inv.agents.contains_key("w07") && !inv.agents.contains_key("w13"));
        let exp = experiment("percent(20%)");
        let a = resolve(&exp, &inv, 42).unwrap();
        // The same seed over the same snapshot, rebuilt, in another order.
        let mut shuffled = snap.clone();
        shuffled.agents.reverse();
        let b = resolve(&exp, &merge(&Inventory::default(), Some(&shuffled)), 42).unwrap();
        assert_eq!(a["t"].agents, b["t"].agents);
        assert_eq!(a["t"].agents.len(), 10, "ceil(20% of 48)");
        assert!(!a["t"].agents.iter().any(|x| x == "w07" || x == "w13"));
        let all = resolve(&experiment("all"), &inv, 0).unwrap();
        assert_eq!(all["t"].agents.len(), 48);
    }

    #[test]
    fn inventory_names_win_over_registered_ids() {
        let inv = Inventory::parse(
            "inv.yaml",
            "agents:\n  w01: { url: \"http://static:7600\", labels: { role: db } }\n",
        )
        .expect("inventory");
        let merged = merge(&inv, Some(&snapshot(3, &[])));
        assert_eq!(merged.agents.len(), 3);
        assert_eq!(merged.agents["w01"].url, "http://static:7600");
        assert_eq!(merged.agents["w02"].labels["role"], "worker");
        assert_eq!(merge(&inv, None).agents.len(), 1);
    }
}
