//! `network.partition`: cut this host off from peers, silently (`drop`: timeouts) or
//! loudly (`reject`: TCP reset, ICMP unreachable for the rest).

use faultline_spec::fault::{NetworkPartition, PartitionAction};

use super::packet::{chains, parse_peers};
use super::table::NftTableFault;
use crate::InjectError;

const KIND: &str = "network.partition";

pub type NetworkPartitionFault = NftTableFault;

pub fn new(id: &str, params: &NetworkPartition) -> Result<NftTableFault, InjectError> {
    if params.peers.is_empty() {
        return Err(InjectError::InvalidParams {
            kind: KIND,
            reason: "`peers` must name at least one address or CIDR".into(),
        });
    }
    let peers = parse_peers(KIND, &params.peers)?;
    let (preamble, verdicts): (&[&str], &[&str]) = match params.action {
        PartitionAction::Drop => (&[], &["drop"]),
        // The resets nft sends back are themselves matched on their way in (the
        // local/remote port rules see both ends); let them through, or `reject`
        // would drop its own answer and the peer would time out instead.
        PartitionAction::Reject => (
            &["tcp flags & rst == rst accept"],
            &["meta l4proto tcp reject with tcp reset", "reject"],
        ),
    };
    let body = chains(&peers, &params.ports, params.direction, preamble, verdicts);
    Ok(NftTableFault::new(KIND, id, body))
}
