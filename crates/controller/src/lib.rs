//! The controller: turns a validated experiment and an inventory into a plan
//! (which agents each step hits, when, and how much of the fleet is exposed), and
//! drives runs through agents.
//!
//! It talks to agents only through `AgentClient` (`client/`: HTTP and in-process);
//! it never injects a fault itself, and it never starts anything from `plan`.

pub mod client;
pub mod engine;
pub mod journal;
pub mod plan;
pub mod report;
pub mod select;

pub use plan::{Plan, plan};
pub use select::{SelectError, Selection, resolve};
