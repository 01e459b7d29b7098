//! `network.skew`: one hot backend. A share of the new TCP connections to a
//! local `port` (the load balancer's) is sent straight to one chosen backend
//! by destination NAT (nftables `numgen random` + `dnat`), whatever the
//! balancer would have chosen; the rest reach the balancer as before.
//!
//! The table's nat chains (prerouting for clients on other hosts, output for
//! local ones) run at priority -110, before the usual dstnat (-100): the first
//! nat chain to translate a connection wins, so a balancer built on nftables or
//! iptables DNAT is overridden too. Only connections to a local address match
//! (`fib daddr type local`), so the balancer's own connections to backends on
//! the same port number are left alone. Revert deletes the table: new
//! connections are balanced again; connections it translated keep their
//! backend until they close (conntrack keeps the translation).
//!
//! Limits: TCP only; the backend is an IP address and port (no name to
//! resolve); a local client that connects through 127.0.0.1 cannot be sent to
//! a remote backend (the kernel does not route loopback sources off the host).

use std::net::SocketAddr;

use faultline_spec::fault::NetworkSkew;

use super::table::NftTableFault;
use crate::InjectError;

const KIND: &str = "network.skew";

pub type NetworkSkewFault = NftTableFault;

pub fn new(id: &str, p: &NetworkSkew) -> Result<NftTableFault, InjectError> {
    let invalid = |reason: String| InjectError::InvalidParams { kind: KIND, reason };
    if p.port == 0 {
        return Err(invalid("`port` must be between 1 and 65535".into()));
    }
    // Parsed, not pasted: nothing but an address reaches the ruleset.
    let to: SocketAddr =
        p.to.parse()
            .map_err(|_| invalid(format!("`to` {:?} is not `ip:port`", p.to)))?;
    let bp = (p.share.ratio() * 10_000.0).round() as u32;
    if bp == 0 {
        return Err(invalid("`share` must be above 0%".into()));
    }
    let (family, target) = match to {
        SocketAddr::V4(a) => ("ipv4", format!("ip to {a}")),
        SocketAddr::V6(a) => ("ipv6", format!("ip6 to {a}")),
    };
    let pick = if bp >= 10_000 {
        String::new()
    } else {
        format!("numgen random mod 10000 < {bp} ")
    };
    let rule = format!(
        "meta nfproto {family} tcp dport {} fib daddr type local {pick}dnat {target}",
        p.port
    );
    let body = ["prerouting", "output"]
        .iter()
        .map(|hook| {
            format!(
                "  chain {hook} {{\n    type nat hook {hook} priority -110; policy accept;\n    {rule}\n  }}\n"
            )
        })
        .collect();
    Ok(NftTableFault::new(KIND, id, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_spec::units::Percent;

    fn skew(to: &str, share: f64) -> NetworkSkew {
        NetworkSkew {
            port: 8080,
            to: to.into(),
            share: Percent::new(share).expect("percent"),
        }
    }

    #[test]
    fn a_share_is_in_basis_points_and_all_needs_no_numgen() {
        let f = new("x", &skew("10.0.0.2:9000", 25.0)).expect("builds");
        let body = f.body().expect("body");
        assert!(
            body.contains("tcp dport 8080 fib daddr type local numgen random mod 10000 < 2500 dnat ip to 10.0.0.2:9000"),
            "{body}"
        );
        assert!(body.contains("hook prerouting") && body.contains("hook output"));
        let f = new("x", &skew("[fd00::2]:9000", 100.0)).expect("builds");
        let body = f.body().expect("body");
        assert!(
            body.contains(
                "meta nfproto ipv6 tcp dport 8080 fib daddr type local dnat ip6 to [fd00::2]:9000"
            ),
            "{body}"
        );
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for bad in ["backend-2:8080", "10.0.0.2", "10.0.0.2:8080; flush ruleset"] {
            assert!(new("x", &skew(bad, 100.0)).is_err(), "{bad}");
        }
        assert!(new("x", &skew("10.0.0.2:1", 0.0)).is_err());
    }
}
