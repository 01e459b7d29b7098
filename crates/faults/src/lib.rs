//! Faults a host can inject, each behind one [`Fault`] trait: inject -> guard ->
//! revert, where revert is idempotent and `verify_reverted` checks from outside
//! (the nft table is gone, no target is stopped, the lock session ended).
//! [`registry`] turns a `faultline_spec::FaultSpec` into an implementation with one
//! exhaustive match, and rebuilds a fault from its journaled recovery state alone so
//! that a restarted agent can revert what a crashed one injected.
//!
//! This crate never decides *when* a fault runs: leases, the journal and the API are
//! the agent's. It must never inject without being asked by a caller holding a lease,
//! never touch anything but the targets its parameters name, and never write user
//! data (db.lock's transactions always roll back; server-side dead man's switches
//! end its sessions where the resource lives elsewhere).

pub mod db;
pub mod error;
pub mod fault;
pub mod gpu;
pub mod http;
pub mod network;
pub mod process;
pub mod registry;

pub use error::{InjectError, RevertError};
pub use fault::{BoxFuture, Fault, Observation, revert_and_verify};
pub use registry::{build, capabilities, restore};
