//! `network.*`: faults on connections and packets.
//!
//! Connection faults (latency, drop, bandwidth) attach either as a proxy
//! (`listen` -> `upstream`) or transparently to a local `port`, whose traffic an
//! nftables table of the fault's own redirects into the proxy. Packet faults (loss,
//! partition) are nftables rules matched by port and peer; `network.skew` is an
//! nftables destination NAT of a share of a port's new connections.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::hundred_percent;
use crate::units::{ByteRate, ByteSize, Duration, Percent};

/// Which way of a connection a toxic acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Client to server.
    Upstream,
    /// Server to client.
    Downstream,
    #[default]
    Both,
}

/// Which packets a packet fault matches, relative to this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PacketDirection {
    Ingress,
    Egress,
    #[default]
    Both,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkLatency {
    /// Proxy mode: the address the proxy listens on, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Proxy mode: where the proxy forwards to, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Transparent mode: the local TCP port whose traffic is delayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub delay: Duration,
    #[serde(default)]
    pub jitter: Duration,
    #[serde(default)]
    pub direction: Direction,
    /// Share of connections affected.
    #[serde(default = "hundred_percent")]
    pub probability: Percent,
}

/// What happens to a dropped connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DropAction {
    /// Reset the connection (RST).
    Reset,
    /// Accept and never answer.
    Blackhole,
    /// Refuse new connections.
    Refuse,
    /// Close after `after` bytes.
    CloseAfter,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkDrop {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub action: DropAction,
    /// `close_after` only: bytes let through before the close.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<ByteSize>,
    #[serde(default = "hundred_percent")]
    pub probability: Percent,
    /// Also cut connections already established (`ss -K`).
    #[serde(default)]
    pub kill_existing: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkBandwidth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub rate: ByteRate,
    #[serde(default)]
    pub direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkLoss {
    /// Share of matching packets dropped.
    pub probability: Percent,
    /// Local or remote ports matched; at least one of `ports` and `peers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Peer addresses or CIDRs matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    #[serde(default)]
    pub direction: PacketDirection,
}

/// How partitioned packets are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartitionAction {
    /// Silently dropped: peers see timeouts.
    #[default]
    Drop,
    /// Rejected: peers see connection refused / unreachable at once.
    Reject,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkPartition {
    /// Peer addresses or CIDRs cut off from this host.
    pub peers: Vec<String>,
    /// Only these ports (default: every port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub direction: PacketDirection,
    #[serde(default)]
    pub action: PartitionAction,
}

/// Load-balancer skew: a share of the new connections to a local `port` is sent
/// to one backend (`to`), whatever the balancer would have chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSkew {
    /// The balanced port on this host whose new TCP connections are skewed.
    pub port: u16,
    /// The hot backend, `ip:port` (an IP address, not a name).
    pub to: String,
    /// Share of the port's new connections sent to `to`.
    #[serde(default = "hundred_percent")]
    pub share: Percent,
}
