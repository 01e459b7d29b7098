//! The faultline/v1 experiment model: serde types for experiments, probes,
//! hypotheses and the whole fault catalogue; the units they are written in; and a
//! validator that reports every problem with file:line:col.
//!
//! Pure: it reads text and returns values or diagnostics. It never opens a socket,
//! starts a process, resolves a secret on its own or logs a secret's value.

pub mod diag;
pub mod experiment;
pub mod fault;
pub mod hypothesis;
pub mod inventory;
pub mod located;
pub mod probe;
pub mod schema;
pub mod secret;
pub mod target;
pub mod units;
pub mod validate;

pub use diag::{Diagnostic, Report, Severity};
pub use experiment::{Experiment, Recovery, Safety, Step, Version};
pub use fault::FaultSpec;
pub use hypothesis::Hypothesis;
pub use inventory::{AgentEntry, Inventory};
pub use probe::Probe;
pub use secret::Secret;
pub use target::{LOCAL_AGENT, Target};
pub use validate::{Loaded, load, load_file};
