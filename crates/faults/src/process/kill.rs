//! `process.kill`: send a signal (SIGKILL by default) to the targets. Lasting by
//! nature: revert has nothing to undo, so it is a no-op; bringing the process back is
//! its supervisor's job, and the experiment's hypotheses check that it does.

use faultline_spec::fault::{KillSignal, ProcessKill};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::target::{Proc, Selector, resolve};
use crate::{BoxFuture, Fault, InjectError, Observation, RevertError};

const KIND: &str = "process.kill";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recovery {
    procs: Vec<Proc>,
}

#[derive(Debug)]
pub struct ProcessKillFault {
    procs: Vec<Proc>,
    signal: Signal,
}

fn nix_signal(s: KillSignal) -> Signal {
    match s {
        KillSignal::Kill => Signal::SIGKILL,
        KillSignal::Term => Signal::SIGTERM,
        KillSignal::Int => Signal::SIGINT,
        KillSignal::Hup => Signal::SIGHUP,
        KillSignal::Quit => Signal::SIGQUIT,
    }
}

impl ProcessKillFault {
    pub fn new(params: &ProcessKill) -> Result<Self, InjectError> {
        let selector = Selector::from_params(
            KIND,
            params.pid,
            params.name.as_deref(),
            params.cgroup.as_deref(),
        )?;
        Ok(Self {
            procs: resolve(KIND, selector)?,
            signal: nix_signal(params.signal),
        })
    }

    /// Nothing to revert after a crash; the targets are kept for observation only.
    pub fn restore(
        params: &ProcessKill,
        recovery: &serde_json::Value,
    ) -> Result<Self, InjectError> {
        let r: Recovery =
            serde_json::from_value(recovery.clone()).map_err(|e| InjectError::BadRecovery {
                kind: KIND,
                reason: e.to_string(),
            })?;
        Ok(Self {
            procs: r.procs,
            signal: nix_signal(params.signal),
        })
    }
}

impl Fault for ProcessKillFault {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn recovery(&self) -> serde_json::Value {
        serde_json::json!({ "procs": self.procs })
    }

    fn inject(&mut self) -> BoxFuture<'_, Result<(), InjectError>> {
        Box::pin(async move {
            for p in &self.procs {
                if p.state().is_none() {
                    continue; // already gone: idempotent, and never a recycled pid
                }
                match kill(Pid::from_raw(p.pid), self.signal) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => {
                        return Err(InjectError::Failed {
                            kind: KIND,
                            action: format!("{} pid {}", self.signal, p.pid),
                            reason: e.to_string(),
                        });
                    }
                }
            }
            tracing::info!(signal = %self.signal, pids = ?self.procs.iter().map(|p| p.pid).collect::<Vec<_>>(), "signalled");
            Ok(())
        })
    }

    fn revert(&mut self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async { Ok(()) })
    }

    fn verify_reverted(&self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async { Ok(()) })
    }

    fn observe(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let alive = self.procs.iter().filter(|p| p.state().is_some()).count();
            Observation {
                figures: serde_json::Value::Null,
                active: alive < self.procs.len(),
                detail: format!("{alive} of {} targets alive", self.procs.len()),
            }
        })
    }

    fn lasting(&self) -> bool {
        true
    }
}
