//! The faults faultline injects on a host. Each fault is inject -> guard ->
//! revert: injecting acquires what the fault needs (a lock session, a table, a
//! stopped process), guarding keeps it while its lease lives, and revert gives it
//! back, idempotently, verified from outside.
//!
//! Limits: a fault never outlives its lease by design (server-side dead man's
//! switches where the resource lives elsewhere), and never writes user data.

pub mod db;
pub mod gpu;
