//! Targets: which agents a step injects into.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::SelectMode;

/// Agents chosen by label selector or by name, then narrowed by `mode`.
/// Exactly one of `selector` and `agents`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Labels an agent must carry, all of them (as in the inventory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// Agent names from the inventory; `local` is the in-process agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<String>>,
    /// `all` (default), `count(n)` or `percent(p)`.
    #[serde(default)]
    pub mode: SelectMode,
}

/// The name of the in-process agent, which needs no daemon.
pub const LOCAL_AGENT: &str = "local";
