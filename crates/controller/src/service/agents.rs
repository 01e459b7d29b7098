//! `GET /v1/agents`: every agent runs can reach, with what each holds now: the
//! agents that registered themselves (the live registry: state, last seen,
//! labels, capabilities, version, host), the inventory's, and the in-process
//! one. Alive agents are asked themselves (`GET /v1/health` and `GET
//! /v1/faults`, at most [`crate::engine::faults::FAN_OUT`] at once, each bounded
//! by the client's timeout), so the dashboard shows what is injected where even
//! for faults no run of this controller knows of (a killed controller's, a CLI
//! run's); a `lost` agent is not asked. Read-only: it never changes an agent.
//!
//! `GET /v1/fleet/snapshot` is what selection resolves against right now (the
//! inventory merged with the alive registered agents), so `faultline plan
//! --controller` picks what the service would.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use faultline_spec::{Inventory, LOCAL_AGENT};
use serde::Serialize;
use utoipa::ToSchema;

use crate::client::{AgentClient, FaultView};
use crate::connect::{Connector, merge};
use crate::engine::faults::FanOut;
use crate::store::{AgentSnapshot, AgentState, RegisteredAgent};

/// Where an agent comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentSource {
    /// It registered itself (`faultline agent --controller`).
    Registry,
    /// The inventory file names it.
    Inventory,
    /// The controller's in-process agent.
    Local,
}

/// One agent and its active faults.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentView {
    /// The registered id or inventory name; `local` is the in-process agent.
    #[schema(example = "gpu-1")]
    pub name: String,
    pub source: AgentSource,
    /// The agent's API; null for the in-process agent.
    pub url: Option<String>,
    /// Labels target selectors match.
    pub labels: BTreeMap<String, String>,
    /// Registered agents: `alive`, or `lost` after 3 missed heartbeats (never
    /// selected). Null for the others.
    pub state: Option<AgentState>,
    /// Registered agents: the last heartbeat or registration (RFC 3339, UTC).
    pub last_seen: Option<DateTime<Utc>>,
    /// Registered agents: the fault kinds it can inject on its host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Registered agents: hostname, os, kernel, cpus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<serde_json::Value>,
    /// Registered agents: its registration count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Whether it answered now.
    pub reachable: bool,
    /// Its version (as registered, or as it answered).
    pub version: Option<String>,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its active faults.
    pub faults: Vec<ActiveFault>,
}

/// A fault an agent holds now.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActiveFault {
    /// The fault's id; a run's faults carry the run id.
    pub id: String,
    #[schema(example = "network.latency")]
    pub kind: String,
    /// RFC 3339, UTC: when the agent reverts it unless renewed.
    pub expires_at: String,
    pub expires_in_ms: u64,
}

impl From<FaultView> for ActiveFault {
    fn from(f: FaultView) -> Self {
        ActiveFault {
            id: f.id,
            kind: f.kind,
            expires_at: f.expires_at,
            expires_in_ms: f.expires_in_ms,
        }
    }
}

fn registered_view(a: &RegisteredAgent) -> AgentView {
    AgentView {
        name: a.id.clone(),
        source: AgentSource::Registry,
        url: Some(a.url.clone()),
        labels: a.labels.clone(),
        state: Some(a.state),
        last_seen: Some(a.last_seen),
        capabilities: a.capabilities.clone(),
        host: Some(a.host.clone()),
        generation: Some(a.generation),
        reachable: false,
        version: Some(a.version.clone()),
        error: None,
        faults: Vec::new(),
    }
}

/// Asks one agent what it holds.
async fn ask(mut view: AgentView, client: Arc<dyn AgentClient>) -> AgentView {
    match client.health().await {
        Ok(h) => {
            view.reachable = true;
            view.version = Some(h.version);
        }
        Err(e) => {
            view.error = Some(e.to_string());
            return view;
        }
    }
    match client.list().await {
        Ok(faults) => view.faults = faults.into_iter().map(Into::into).collect(),
        Err(e) => view.error = Some(e.to_string()),
    }
    view
}

/// Registered agents by id, then the inventory's in its order, then `local`.
pub(crate) async fn list(connector: &Arc<Connector>) -> Vec<AgentView> {
    let snap = match connector.registry() {
        Some(r) => Some(r.refresh().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "registry: listing the last snapshot");
            r.snapshot()
        })),
        None => None,
    };
    let inventory = connector.static_inventory();
    let mut pending: Vec<(AgentView, bool)> = Vec::new();
    for a in snap.iter().flat_map(|s| s.agents.iter()) {
        if inventory.agents.contains_key(&a.id) || a.id == LOCAL_AGENT {
            continue;
        }
        let alive = a.state == AgentState::Alive;
        let mut view = registered_view(a);
        if !alive {
            view.error = Some(format!(
                "lost: no heartbeat since {} (3 heartbeats of {} ms)",
                a.last_seen.to_rfc3339(),
                a.heartbeat_ms
            ));
        }
        pending.push((view, alive));
    }
    for (n, e) in &inventory.agents {
        pending.push((
            AgentView {
                name: n.clone(),
                source: AgentSource::Inventory,
                url: Some(e.url.clone()),
                labels: e.labels.clone(),
                state: None,
                last_seen: None,
                capabilities: Vec::new(),
                host: None,
                generation: None,
                reachable: false,
                version: None,
                error: None,
                faults: Vec::new(),
            },
            true,
        ));
    }
    pending.push((
        AgentView {
            name: LOCAL_AGENT.to_owned(),
            source: AgentSource::Local,
            url: None,
            labels: BTreeMap::new(),
            state: None,
            last_seen: None,
            capabilities: Vec::new(),
            host: None,
            generation: None,
            reachable: false,
            version: None,
            error: None,
            faults: Vec::new(),
        },
        true,
    ));
    let fan_out = FanOut::default();
    let mut set = tokio::task::JoinSet::new();
    let mut out: Vec<Option<AgentView>> = Vec::with_capacity(pending.len());
    for (i, (mut view, ask_it)) in pending.into_iter().enumerate() {
        if !ask_it {
            out.push(Some(view));
            continue;
        }
        out.push(None);
        let client = match connector.client(&view.name).await {
            Ok(c) => c,
            Err(e) => {
                view.error = Some(e.to_string());
                out[i] = Some(view);
                continue;
            }
        };
        fan_out.spawn(&mut set, async move { (i, ask(view, client).await) });
    }
    while let Some(done) = set.join_next().await {
        match done {
            Ok((i, view)) => out[i] = Some(view),
            Err(e) => tracing::error!(error = %e, "asking an agent panicked"),
        }
    }
    out.into_iter().flatten().collect()
}

/// What selection resolves against now.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotView {
    /// The store's clock when the registry was read.
    pub at: Option<DateTime<Utc>>,
    /// The inventory's agents and the alive registered ones, in the inventory
    /// file format (`faultline plan --inventory`); token files are left out.
    #[schema(value_type = Object)]
    pub inventory: Inventory,
    /// Registered agents that are `lost` (never selected), by id.
    pub lost: Vec<String>,
}

pub(crate) async fn snapshot(
    connector: &Connector,
) -> Result<SnapshotView, crate::store::StoreError> {
    let snap: Option<Arc<AgentSnapshot>> = match connector.registry() {
        Some(r) => Some(r.refresh().await?),
        None => None,
    };
    let mut inventory = merge(connector.static_inventory(), snap.as_deref());
    for e in inventory.agents.values_mut() {
        e.token_file = None;
    }
    Ok(SnapshotView {
        at: snap.as_ref().map(|s| s.at),
        inventory,
        lost: snap
            .iter()
            .flat_map(|s| s.agents.iter())
            .filter(|a| a.state == AgentState::Lost)
            .map(|a| a.id.clone())
            .collect(),
    })
}
