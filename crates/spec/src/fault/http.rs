//! `http.*`: gateway faults at layer 7, injected by an HTTP-aware proxy in front of
//! the upstream: the overload and rate-limit case.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::hundred_percent;
use crate::units::{Duration, Percent};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpError {
    /// The address the gateway proxy listens on, `host:port`.
    pub listen: String,
    /// The real gateway or service, `host:port`.
    pub upstream: String,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpDelay {
    pub listen: String,
    pub upstream: String,
    /// Queueing delay added before each matching request is forwarded.
    pub delay: Duration,
    #[serde(default)]
    pub jitter: Duration,
    #[serde(default = "hundred_percent")]
    pub probability: Percent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}
