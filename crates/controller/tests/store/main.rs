//! The run store (`store`) on both backends, and the scheduler task over a real
//! store (`scheduler`). PostgreSQL tests need the cluster `./scripts/setup.sh`
//! starts; without it they fail and say so.

mod agents;
mod common;
mod ha;
mod scheduler;
mod suite;
