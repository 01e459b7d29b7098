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
    /// Open-loop completions against an OpenAI-compatible API, streamed (SSE) or
    /// not: time to first token, inter-token latency, tokens per second.
    Llm(LlmProbe),
}

impl Probe {
    pub const KINDS: &'static [&'static str] =
        &["http", "tcp", "sql", "prometheus", "command", "llm"];

    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Http(_) => "http",
            Probe::Tcp(_) => "tcp",
            Probe::Sql(_) => "sql",
            Probe::Prometheus(_) => "prometheus",
            Probe::Command(_) => "command",
            Probe::Llm(_) => "llm",
        }
    }

    /// Whether the probe times tokens of a stream (`ttft_*`, `itl_p99` apply).
    pub fn streams_tokens(&self) -> bool {
        matches!(self, Probe::Llm(l) if l.stream)
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

/// Which OpenAI-compatible endpoint an llm probe speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LlmApi {
    /// `/v1/chat/completions`: `messages`, answers in `choices[].delta.content`.
    Chat,
    /// `/v1/completions`: `prompt`, answers in `choices[].text`.
    Completions,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmProbe {
    /// `http://` URL of `/v1/chat/completions` or `/v1/completions`.
    pub url: String,
    /// The endpoint's request shape; inferred from the URL's path when it ends in
    /// `/chat/completions` or `/completions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<LlmApi>,
    /// The `model` field of every request.
    pub model: String,
    /// Prompts, sent in turn (request `i` sends prompt `i mod n`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    /// A file of prompts, one per line (blank lines skipped), read when the probe
    /// starts; instead of `prompts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts_file: Option<String>,
    /// `max_tokens` of every request.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Ask for a server-sent event stream (`stream: true`); default true.
    #[serde(default = "default_true")]
    pub stream: bool,
    /// Request headers (e.g. `authorization: "Bearer ${env:API_KEY}"`).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub headers: IndexMap<String, Secret>,
    /// Requests per second, sent open-loop (not waiting for answers).
    pub rate: Rate,
    /// A completion (its whole stream) slower than this counts as failed.
    #[serde(default = "default_llm_timeout")]
    pub timeout: Duration,
}

impl LlmProbe {
    /// The endpoint, as written or inferred from the URL's path.
    pub fn resolved_api(&self) -> Option<LlmApi> {
        self.api.or_else(|| {
            let path = self
                .url
                .split_once("://")
                .map_or(self.url.as_str(), |(_, r)| r)
                .split(['?', '#'])
                .next()
                .unwrap_or_default()
                .trim_end_matches('/');
            if path.ends_with("/chat/completions") {
                Some(LlmApi::Chat)
            } else if path.ends_with("/completions") {
                Some(LlmApi::Completions)
            } else {
                None
            }
        })
    }
}

fn default_max_tokens() -> u32 {
    64
}

fn default_true() -> bool {
    true
}

fn default_llm_timeout() -> Duration {
    Duration::from_secs(30)
}
