//! The in-process transport: the agent's manager (journal, leases, reaper) in this
//! process, for `agents: [local]`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use faultline_agent::api::ApiError;
use faultline_agent::{Manager, ManagerError};
use faultline_spec::units::Duration;

use super::{
    AgentClient, BoxFuture, ClientError, FaultRequest, FaultStatus, FaultView, HaltReport, Health,
    Observation,
};

#[derive(Debug)]
pub struct LocalClient {
    manager: Arc<Manager>,
    reaper: tokio::task::JoinHandle<()>,
}

impl LocalClient {
    /// Opens the journal under `state_dir`, reverts what it holds, starts the
    /// reaper. Must run inside a tokio runtime. Halt before dropping it: a dropped
    /// client stops guarding leases (the journal still lets the next start revert).
    pub async fn start(
        state_dir: &Path,
        labels: BTreeMap<String, String>,
    ) -> Result<(Self, HaltReport), ClientError> {
        let err = |e: faultline_agent::journal::JournalError| ClientError::Unreachable {
            agent: "local".into(),
            reason: e.to_string(),
        };
        let manager = Manager::open(state_dir, labels).map_err(err)?;
        let recovered = manager.recover().await.map_err(err)?;
        let reaper = faultline_agent::spawn_reaper(&manager);
        Ok((Self { manager, reaper }, recovered))
    }

    pub fn manager(&self) -> &Arc<Manager> {
        &self.manager
    }
}

impl Drop for LocalClient {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

/// The same status and code the HTTP API would answer.
fn rejected(e: ManagerError) -> ClientError {
    let api = ApiError::from(e);
    ClientError::Rejected {
        agent: "local".into(),
        status: api.status.as_u16(),
        error: api.error.to_owned(),
        reason: api.reason,
    }
}

impl AgentClient for LocalClient {
    fn name(&self) -> &str {
        "local"
    }

    fn health(&self) -> BoxFuture<'_, Result<Health, ClientError>> {
        Box::pin(async move { Ok(self.manager.health().await) })
    }

    fn put_fault<'a>(
        &'a self,
        id: &'a str,
        request: &'a FaultRequest,
    ) -> BoxFuture<'a, Result<FaultView, ClientError>> {
        Box::pin(async move {
            self.manager
                .put(id, request)
                .await
                .map(|(view, _)| view)
                .map_err(rejected)
        })
    }

    fn renew<'a>(
        &'a self,
        id: &'a str,
        lease: Option<Duration>,
    ) -> BoxFuture<'a, Result<FaultView, ClientError>> {
        Box::pin(async move { self.manager.renew(id, lease).await.map_err(rejected) })
    }

    fn delete_fault<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, ClientError>> {
        Box::pin(async move { self.manager.delete(id).await.map_err(rejected) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<FaultView>, ClientError>> {
        Box::pin(async move { Ok(self.manager.list().await) })
    }

    fn status<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<FaultStatus>, ClientError>> {
        Box::pin(async move {
            Ok(self.manager.status(id).await.map(|(view, o)| FaultStatus {
                view,
                observation: Observation {
                    active: o.active,
                    detail: o.detail,
                    figures: o.figures,
                },
            }))
        })
    }

    fn halt(&self) -> BoxFuture<'_, Result<HaltReport, ClientError>> {
        Box::pin(async move { Ok(self.manager.halt().await) })
    }
}
