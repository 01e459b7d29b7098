//! The controller: turns a validated experiment and an inventory into a plan
//! (which agents each step hits, when, and how much of the fleet is exposed), and
//! drives runs through agents.
//!
//! It talks to agents only through `AgentClient` (`client/`: HTTP and in-process);
//! it never injects a fault itself, and it never starts anything from `plan`.
//!
//! For `faultline serve`: `store` keeps experiments, runs, their event streams,
//! schedules and the audit log (one `RunStore` trait; SQLite and PostgreSQL), and
//! `schedule` decides when game days fire (cron with seconds, time zones, overlap,
//! blackouts, missed runs) and runs the `Scheduler` task over a store; `service`
//! is the HTTP API, run manager and SSE streams over both, and `connect` builds the
//! agent clients a run needs, for `faultline run` and the service alike.

pub mod client;
pub mod connect;
pub mod engine;
pub mod fleet;
pub mod journal;
pub mod plan;
pub mod report;
pub mod schedule;
pub mod select;
pub mod service;
pub mod store;

pub use plan::{Plan, plan};
pub use select::{SelectError, Selection, resolve};
