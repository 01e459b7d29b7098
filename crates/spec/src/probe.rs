//! Steady-state probes: what is measured to decide whether the SLA holds.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::units::{Duration, Rate};

/// One probe, written as `{ kind: { parameters } }`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// Open-loop HTTP load at a fixed rate.
    Http(HttpProbe),
    /// TCP connects at a fixed rate.
    Tcp(TcpProbe),
    /// A timed SQL query.
    Sql(SqlProbe),
    /// A Prometheus instant query; its value is compared with `value:` thresholds.
    Prometheus(PrometheusProbe),
    /// A command whose exit status is the verdict (0 = success).
    Command(CommandProbe),
}

impl Probe {
    pub const KINDS: &'static [&'static str] = &["http", "tcp", "sql", "prometheus", "command"];

    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Http(_) => "http",
            Probe::Tcp(_) => "tcp",
            Probe::Sql(_) => "sql",
            Probe::Prometheus(_) => "prometheus",
            Probe::Command(_) => "command",
        }
    }

    /// Whether the probe yields a value (for `value:` thresholds) rather than latencies.
    pub fn yields_value(&self) -> bool {
        matches!(self, Probe::Prometheus(_) | Probe::Sql(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    /// `http://` or `https://` URL.
    pub url: String,
    #[serde(default)]
    pub method: HttpMethod,
    /// Request headers; values may reference `${env:NAME}`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub headers: IndexMap<String, Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Requests per second, sent open-loop (not waiting for answers).
    pub rate: Rate,
    /// A request slower than this counts as failed.
    #[serde(default = "default_http_timeout")]
    pub timeout: Duration,
    /// Status codes that count as success: classes like `2xx` or exact codes like
    /// `404`. Default: `2xx` and `3xx`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success: Vec<String>,
}

fn default_http_timeout() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    /// `host:port`.
    pub address: String,
    #[serde(default = "default_slow_rate")]
    pub rate: Rate,
    #[serde(default = "default_short_timeout")]
    pub timeout: Duration,
}

fn default_slow_rate() -> Rate {
    Rate::slow_default()
}

fn default_short_timeout() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlProbe {
    /// `postgres://`, `mysql://` or `sqlite://` URL, or libpq `key=value` text.
    pub url: Secret,
    /// Needed only when the URL does not tell (e.g. it is all `${env:...}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<crate::fault::DbEngine>,
    #[serde(default = "default_query")]
    pub query: String,
    #[serde(default = "default_slow_rate")]
    pub rate: Rate,
    #[serde(default = "default_short_timeout")]
    pub timeout: Duration,
}

fn default_query() -> String {
    "SELECT 1".to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusProbe {
    /// Base URL of the Prometheus HTTP API.
    pub url: String,
    /// A PromQL expression that yields one sample.
    pub query: String,
    #[serde(default = "default_interval")]
    pub interval: Duration,
    #[serde(default = "default_short_timeout")]
    pub timeout: Duration,
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandProbe {
    /// Program and arguments, run without a shell.
    pub run: Vec<String>,
    #[serde(default = "default_interval")]
    pub interval: Duration,
    #[serde(default = "default_command_timeout")]
    pub timeout: Duration,
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(10)
}
