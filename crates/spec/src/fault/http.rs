//! `http.*`: gateway faults at layer 7, injected by an HTTP-aware proxy in front of
//! the upstream: the overload and rate-limit case.
//!
//! Like the connection faults of `network.*`, they attach either as a proxy
//! (`listen` -> `upstream`) or transparently to a local `port`, whose traffic an
//! nftables table of the fault's own redirects into the proxy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::hundred_percent;
use crate::units::{Duration, Percent};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpError {
    /// Proxy mode: the address the gateway proxy listens on, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Proxy mode: the real gateway or service, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Transparent mode: the local TCP port whose HTTP requests are answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Status answered instead of forwarding: 4xx or 5xx (429, 503, ...).
    pub status: u16,
    /// Share of matching requests answered with `status`.
    #[serde(default = "hundred_percent")]
    pub probability: Percent,
    /// Only requests whose path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Only requests with this method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `Retry-After` sent with 429 and 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Duration>,
    /// Body answered instead of the default JSON error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpDelay {
    /// Proxy mode: the address the gateway proxy listens on, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Proxy mode: the real gateway or service, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Transparent mode: the local TCP port whose HTTP requests are delayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Queueing delay added before each matching request is forwarded.
    pub delay: Duration,
    /// Each delay is `delay` plus or minus up to `jitter`, uniformly.
    #[serde(default)]
    pub jitter: Duration,
    /// Share of matching requests delayed.
    #[serde(default = "hundred_percent")]
    pub probability: Percent,
    /// Only requests whose path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Only requests with this method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}
