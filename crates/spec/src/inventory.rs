//! The inventory: which agents exist, where they listen and which labels they carry.
//! Target selectors match these labels.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::Report;
use crate::target::LOCAL_AGENT;

/// `agents:` by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    #[serde(default)]
    pub agents: IndexMap<String, AgentEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// The agent's API, e.g. `https://10.0.0.5:7600`.
    pub url: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// File holding the bearer token for this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

impl Inventory {
    /// Parses an inventory file with a located error.
    pub fn parse(file: &str, text: &str) -> Result<Inventory, Report> {
        let inv: Inventory = crate::validate::load_document(file, text)?;
        if inv.agents.contains_key(LOCAL_AGENT) {
            let mut report = Report::new(file, text);
            report.push(
                crate::diag::Severity::Error,
                (1, 1),
                format!("agents.{LOCAL_AGENT}"),
                format!(
                    "`{LOCAL_AGENT}` is reserved for the in-process agent; choose another name"
                ),
                None,
            );
            return Err(report);
        }
        Ok(inv)
    }
}
