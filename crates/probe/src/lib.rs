//! Steady-state probes and SLO evaluation: the measuring half of faultline.
//!
//! A probe ([`runner::start`]) turns a `faultline_spec::probe::Probe` into attempts on
//! an open-loop schedule (HTTP load at a fixed rate, TCP connects, timed SQL queries,
//! Prometheus instant queries, commands, streamed LLM completions) and records each attempt as a sample, timed
//! from its *scheduled* instant so that a stalled target inflates latency instead of
//! hiding it (the coordinated-omission correction). Samples land in per-second
//! buckets of counts and HDR histograms ([`window`]), and [`slo`] decides whether a
//! `Hypothesis` holds over a window: availability, p50..p999, time to first token,
//! inter-token latency, tokens per second, error-budget burn rate, values, `for`,
//! and time to recover.
//!
//! Its limits: it knows nothing of faults, agents or experiments' timelines; it
//! measures what it is pointed at and says whether thresholds hold. It never decides
//! to abort or revert (the controller does, from these verdicts), never logs a
//! secret (header values and SQL URLs are exposed only when a request is built), and
//! refuses nothing on policy grounds: where command probes are forbidden (the HTTP
//! API) is the controller's call.

#![forbid(unsafe_code)]

pub mod command;
pub mod error;
pub mod http;
pub mod llm;
mod load;
pub mod prometheus;
pub mod runner;
pub mod slo;
pub mod sql;
pub mod tcp;
pub mod window;

pub use error::ProbeError;
pub use runner::{ProbeHandle, start};
pub use slo::{Verdict, evaluate};
pub use window::{Clock, FailureKind, Outcome, Recorder, Sample, Series, WindowStats};
