//! `network.*`: packet faults as nftables tables, one per fault, and cutting
//! established connections with `ss -K`.
//!
//! Each nftables fault lives in its own table `inet faultline_<id>`: inject replaces
//! the table atomically (`nft -f -`), revert is `delete table`, and a leftover is
//! visible by name in `nft list tables`. Connection faults (latency, drop,
//! bandwidth) run a
//! fault proxy of their own (crates/proxy), in proxy or transparent mode
//! (`proxied.rs`). `network.skew` is a nat table of the same kind: a share
//! of a port's new connections to one backend (`skew.rs`). The L7 gateway faults
//! (`http.*`) live in `crate::http` and share the transparent redirect.

pub mod loss;
pub mod nft;
pub mod packet;
pub mod partition;
pub mod proxied;
pub mod skew;
pub mod ss;
pub mod table;

pub use loss::NetworkLossFault;
pub use partition::NetworkPartitionFault;
pub use skew::NetworkSkewFault;
pub use table::NftTableFault;
