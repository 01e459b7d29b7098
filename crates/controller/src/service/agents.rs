//! `GET /v1/agents`: every agent runs can reach (the inventory's and the
//! in-process one) with what each holds now, asked of the agents themselves
//! (`GET /v1/health` and `GET /v1/faults`, concurrently, each bounded by the
//! client's timeout), so the dashboard shows what is injected where even for
//! faults no run of this controller knows of (a killed controller's, a CLI run's).
//! Read-only: it never changes an agent.

use faultline_spec::LOCAL_AGENT;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

use crate::client::FaultView;
use crate::connect::Connector;

/// One agent and its active faults.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentView {
    /// The inventory name; `local` is the controller's in-process agent.
    #[schema(example = "gpu-1")]
    pub name: String,
    /// The agent's API; null for the in-process agent.
    pub url: Option<String>,
    /// Labels the inventory gives it (target selectors match these).
    pub labels: BTreeMap<String, String>,
    /// Whether it answered.
    pub reachable: bool,
    /// Its version, when it answered.
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

/// Every agent, inventory order, then `local`.
pub(crate) async fn list(connector: &Connector) -> Vec<AgentView> {
    let mut names: Vec<(String, Option<String>, BTreeMap<String, String>)> = connector
        .inventory()
        .agents
        .iter()
        .map(|(n, e)| (n.clone(), Some(e.url.clone()), e.labels.clone()))
        .collect();
    names.push((LOCAL_AGENT.to_owned(), None, BTreeMap::new()));
    let views = names.into_iter().map(|(name, url, labels)| async move {
        let mut view = AgentView {
            name: name.clone(),
            url,
            labels,
            reachable: false,
            version: None,
            error: None,
            faults: Vec::new(),
        };
        let client = match connector.client(&name).await {
            Ok(c) => c,
            Err(e) => {
                view.error = Some(e.to_string());
                return view;
            }
        };
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
    });
    futures_util::future::join_all(views).await
}
