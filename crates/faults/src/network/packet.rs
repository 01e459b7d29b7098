//! Matching packets by peer and port, shared by `network.loss` and
//! `network.partition`. Peers are parsed strictly (IP or CIDR) before anything
//! reaches nft, so no parameter can smuggle syntax into the ruleset.

use std::fmt::Write as _;
use std::net::IpAddr;

use faultline_spec::fault::PacketDirection;

use crate::InjectError;

/// Parsed peers, split by family (nft matches `ip` and `ip6` separately).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers {
    pub v4: Vec<String>,
    pub v6: Vec<String>,
}

pub fn parse_peers(kind: &'static str, peers: &[String]) -> Result<Peers, InjectError> {
    let mut out = Peers::default();
    for raw in peers {
        let bad = || InjectError::InvalidParams {
            kind,
            reason: format!("peer {raw:?} is not an IP address or CIDR"),
        };
        let (addr, len) = match raw.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
            None => (raw.as_str(), None),
        };
        let ip: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if len.is_some_and(|l| l > max) {
            return Err(bad());
        }
        let text = match len {
            Some(l) => format!("{ip}/{l}"),
            None => ip.to_string(),
        };
        if ip.is_ipv4() {
            out.v4.push(text);
        } else {
            out.v6.push(text);
        }
    }
    Ok(out)
}

/// The nft body (two base chains) applying `verdicts` to matching packets. Each
/// verdict is a statement list ending in a verdict (`drop`, `reject ...`), optionally
/// preceded by extra matches (`meta l4proto tcp`). `preamble` rules come first in
/// each chain, unmatched by peer or port.
pub fn chains(
    peers: &Peers,
    ports: &[u16],
    direction: PacketDirection,
    preamble: &[&str],
    verdicts: &[&str],
) -> String {
    let mut body = String::new();
    let hooks: &[(&str, &str, &str)] =
        &[("input", "saddr", "ingress"), ("output", "daddr", "egress")];
    for (hook, peer_field, which) in hooks {
        let wanted = match direction {
            PacketDirection::Both => true,
            PacketDirection::Ingress => *which == "ingress",
            PacketDirection::Egress => *which == "egress",
        };
        if !wanted {
            continue;
        }
        let _ = writeln!(
            body,
            "  chain {hook} {{\n    type filter hook {hook} priority -10; policy accept;"
        );
        for rule in preamble {
            let _ = writeln!(body, "    {rule}");
        }
        let mut addr_matches = Vec::new();
        if !peers.v4.is_empty() {
            addr_matches.push(format!("ip {peer_field} {{ {} }} ", peers.v4.join(", ")));
        }
        if !peers.v6.is_empty() {
            addr_matches.push(format!("ip6 {peer_field} {{ {} }} ", peers.v6.join(", ")));
        }
        if addr_matches.is_empty() {
            addr_matches.push(String::new());
        }
        let mut port_matches = Vec::new();
        if !ports.is_empty() {
            let set = ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            // Local or remote port: a packet matches on either end.
            for end in ["dport", "sport"] {
                port_matches.push(format!("meta l4proto {{ tcp, udp }} th {end} {{ {set} }} "));
            }
        } else {
            port_matches.push(String::new());
        }
        for a in &addr_matches {
            for p in &port_matches {
                for v in verdicts {
                    let _ = writeln!(body, "    {a}{p}{v}");
                }
            }
        }
        body.push_str("  }\n");
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_parsed_strictly() {
        let p = parse_peers("network.loss", &["10.0.0.1".into(), "fd00::/8".into()]).expect("ok");
        assert_eq!(p.v4, vec!["10.0.0.1"]);
        assert_eq!(p.v6, vec!["fd00::/8"]);
        for bad in [
            "10.0.0.1; flush ruleset",
            "10.0.0.0/33",
            "host",
            "1.2.3.4/x",
        ] {
            assert!(parse_peers("network.loss", &[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn chains_match_peers_and_both_port_ends() {
        let p = parse_peers("network.loss", &["127.0.0.9".into()]).expect("ok");
        let body = chains(&p, &[80], PacketDirection::Egress, &[], &["drop"]);
        assert!(!body.contains("hook input"));
        assert!(
            body.contains("ip daddr { 127.0.0.9 } meta l4proto { tcp, udp } th dport { 80 } drop")
        );
        assert!(body.contains("th sport { 80 } drop"));
    }
}
