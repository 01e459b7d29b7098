//! `network.loss`: drop a share of the matching packets (nftables `numgen random`).

use faultline_spec::fault::NetworkLoss;

use super::packet::{chains, parse_peers};
use super::table::NftTableFault;
use crate::InjectError;

const KIND: &str = "network.loss";

pub type NetworkLossFault = NftTableFault;

pub fn new(id: &str, params: &NetworkLoss) -> Result<NftTableFault, InjectError> {
    if params.ports.is_empty() && params.peers.is_empty() {
        return Err(InjectError::InvalidParams {
            kind: KIND,
            reason: "give `ports`, `peers` or both: loss on every packet of the host is not a fault this agent injects".into(),
        });
    }
    let peers = parse_peers(KIND, &params.peers)?;
    // Basis points: 0.01% resolution.
    let bp = (params.probability.ratio() * 10_000.0).round() as u32;
    let verdict = if bp >= 10_000 {
        "drop".to_owned()
    } else {
        format!("numgen random mod 10000 < {bp} drop")
    };
    let body = if bp == 0 {
        String::new()
    } else {
        chains(&peers, &params.ports, params.direction, &[], &[&verdict])
    };
    Ok(NftTableFault::new(KIND, id, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_spec::fault::PacketDirection;
    use faultline_spec::units::Percent;

    #[test]
    fn probability_is_in_basis_points() {
        let p = NetworkLoss {
            probability: Percent::new(12.5).expect("percent"),
            ports: vec![5432],
            peers: vec![],
            direction: PacketDirection::Ingress,
        };
        let f = new("x", &p).expect("builds");
        assert!(
            f.body()
                .expect("body")
                .contains("numgen random mod 10000 < 1250 drop")
        );
    }

    #[test]
    fn refuses_an_unscoped_loss() {
        let p = NetworkLoss {
            probability: Percent::HUNDRED,
            ports: vec![],
            peers: vec![],
            direction: PacketDirection::Both,
        };
        assert!(matches!(
            new("x", &p),
            Err(InjectError::InvalidParams { .. })
        ));
    }
}
