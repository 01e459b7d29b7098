//! `http.*`: gateway faults at layer 7, injected by an HTTP-aware proxy in front of
//! the upstream: the overload and rate-limit case (`http.error`, `http.delay`,
//! `http.rate_limit`, `http.queue`) and faults on streamed responses, Server-Sent
//! Events and chunked bodies, as LLM completion APIs stream tokens
//! (`http.stream_stall`, `http.stream_slow`, `http.stream_truncate`).
//!
//! Like the connection faults of `network.*`, they attach either as a proxy
//! (`listen` -> `upstream`) or transparently to a local `port`, whose traffic an
//! nftables table of the fault's own redirects into the proxy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::hundred_percent;
use crate::units::{Duration, Percent, Rate};

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

/// What a stalled stream does once the hold is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StallThen {
    /// The stream goes on where it stopped.
    #[default]
    Continue,
    /// The connection is cut: the client sees the stream end mid-response.
    Cut,
}

/// Holds a streamed response (SSE or chunked) for `hold` after `after_events`
/// events or `after` a time, then lets it continue or cuts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpStreamStall {
    /// Proxy mode: the address the gateway proxy listens on, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Proxy mode: the real gateway or service, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Transparent mode: the local TCP port whose HTTP traffic is captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Stall after this many events (SSE events; lines of other chunked
    /// bodies). At most one of `after_events` and `after`; neither: before the
    /// first event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_events: Option<u64>,
    /// Stall at the first event boundary this long after the response began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Duration>,
    /// How long the stream is held.
    pub hold: Duration,
    /// `continue` (default) or `cut` once the hold is over.
    #[serde(default)]
    pub then: StallThen,
    /// Share of matching streams affected.
    #[serde(default = "hundred_percent")]
    pub probability: Percent,
    /// Only requests whose path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Paces the events of a streamed response to at most `rate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpStreamSlow {
    /// Proxy mode: the address the gateway proxy listens on, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Proxy mode: the real gateway or service, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Transparent mode: the local TCP port whose HTTP traffic is captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Events let through per unit of time, e.g. `5/s`.
    pub rate: Rate,
    /// Share of matching streams affected.
    #[serde(default = "hundred_percent")]
    pub probability: Percent,
    /// Only requests whose path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Ends a streamed response after `after_events` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpStreamTruncate {
    /// Proxy mode: the address the gateway proxy listens on, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Proxy mode: the real gateway or service, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Transparent mode: the local TCP port whose HTTP traffic is captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Events let through before the stream ends.
    pub after_events: u64,
    /// SSE only: end with `data: [DONE]` as if the completion were whole
    /// (default false: the stream just ends, without it).
    #[serde(default)]
    pub done: bool,
    /// Share of matching streams affected.
    #[serde(default = "hundred_percent")]
    pub probability: Percent,
    /// Only requests whose path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    /// One bucket per client address.
    #[default]
    ClientIp,
    /// One bucket per value of the request header named by `header` (an API key).
    Header,
    /// One bucket for every request.
    Global,
}

/// A token bucket per key: requests past it are answered 429 with `Retry-After`
/// and OpenAI-style `x-ratelimit-*-requests` headers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpRateLimit {
    /// Proxy mode: the address the gateway proxy listens on, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Proxy mode: the real gateway or service, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Transparent mode: the local TCP port whose HTTP traffic is captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Requests let through per key, e.g. `10/s` or `600/m`.
    pub rate: Rate,
    /// Bucket size: requests a key may send at once (default: one second of `rate`,
    /// at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// `client_ip` (default), `header` or `global`.
    #[serde(default)]
    pub key: RateLimitKey,
    /// `key: header` only: the header whose value is the key (`authorization`,
    /// `x-api-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Only requests whose path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Only requests with this method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A saturated gateway: at most `concurrency` requests are forwarded at once,
/// the rest wait in a FIFO queue of `queue` places for up to `timeout`, and are
/// answered 503 when it is full or their time is up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpQueue {
    /// Proxy mode: the address the gateway proxy listens on, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Proxy mode: the real gateway or service, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Transparent mode: the local TCP port whose HTTP traffic is captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Requests in flight upstream at once (until their response body ends).
    pub concurrency: u32,
    /// Requests that may wait for a slot; one more is answered 503 at once.
    #[serde(default = "default_queue")]
    pub queue: u32,
    /// Longest wait in the queue before a 503.
    pub timeout: Duration,
    /// Only requests whose path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Only requests with this method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

fn default_queue() -> u32 {
    100
}
