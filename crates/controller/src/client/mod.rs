//! `AgentClient`: the only way the controller reaches an agent. Two transports with
//! one contract: [`http::HttpClient`] for agents on other hosts, and
//! [`local::LocalClient`] for `agents: [local]`, the agent's manager in this
//! process, so a laptop or CI job needs no daemon. Both report refusals with the
//! same status and error code.

pub mod controller;
pub mod http;
pub mod local;

use std::future::Future;
use std::pin::Pin;

pub use faultline_agent::{FaultRequest, FaultView, HaltReport, Health};
use faultline_spec::units::Duration;
use serde::{Deserialize, Serialize};

/// `GET /v1/faults/{id}`: the fault as listed, with its observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultStatus {
    #[serde(flatten)]
    pub view: FaultView,
    pub observation: Observation,
}

/// What a fault looks like from outside (the agent's `Fault::observe`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub active: bool,
    pub detail: String,
    #[serde(default)]
    pub figures: serde_json::Value,
}

pub use controller::{ControllerClient, SseEvent};
pub use http::HttpClient;
pub use local::LocalClient;

/// A boxed future: the trait is used as `dyn AgentClient`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent answered and refused: the API's status, code and reason.
    #[error("agent {agent} refused ({status} {error}): {reason}")]
    Rejected {
        agent: String,
        status: u16,
        error: String,
        reason: String,
    },
    /// The agent could not be reached or did not answer in time.
    #[error("agent {agent} unreachable: {reason}")]
    Unreachable { agent: String, reason: String },
    /// The agent answered something that is not the API.
    #[error("agent {agent} answered unexpectedly: {reason}")]
    Protocol { agent: String, reason: String },
}

impl ClientError {
    /// The API error code (`conflict`, `unknown_kind`, ...) of a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Rejected { error, .. } => Some(error),
            _ => None,
        }
    }
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The agent API, as the controller uses it (docs/agent-api.md).
pub trait AgentClient: Send + Sync + std::fmt::Debug {
    /// The agent's name in the inventory (`local` for the in-process one).
    fn name(&self) -> &str;
    fn health(&self) -> BoxFuture<'_, Result<Health, ClientError>>;
    /// Injects (or, same id and body, renews) a fault.
    fn put_fault<'a>(
        &'a self,
        id: &'a str,
        request: &'a FaultRequest,
    ) -> BoxFuture<'a, Result<FaultView, ClientError>>;
    fn renew<'a>(
        &'a self,
        id: &'a str,
        lease: Option<Duration>,
    ) -> BoxFuture<'a, Result<FaultView, ClientError>>;
    /// Reverts a fault; false when there was none.
    fn delete_fault<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, ClientError>>;
    fn list(&self) -> BoxFuture<'_, Result<Vec<FaultView>, ClientError>>;
    /// One active fault and what it looks like from outside now; `None` when the
    /// agent has no such fault.
    fn status<'a>(&'a self, id: &'a str)
    -> BoxFuture<'a, Result<Option<FaultStatus>, ClientError>>;
    /// Reverts everything on the agent.
    fn halt(&self) -> BoxFuture<'_, Result<HaltReport, ClientError>>;
}
