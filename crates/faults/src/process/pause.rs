//! `process.pause`: SIGSTOP the targets; revert is SIGCONT, verified by the state in
//! /proc/<pid>/stat no longer being `T`.

use std::time::{Duration, Instant};

use faultline_spec::fault::ProcessPause;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::target::{Proc, Selector, resolve};
use crate::{BoxFuture, Fault, InjectError, Observation, RevertError};

const KIND: &str = "process.pause";

/// What the journal keeps: the very processes stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recovery {
    procs: Vec<Proc>,
}

#[derive(Debug)]
pub struct ProcessPauseFault {
    procs: Vec<Proc>,
}

impl ProcessPauseFault {
    /// Resolves the targets now; `inject` stops exactly these.
    pub fn new(params: &ProcessPause) -> Result<Self, InjectError> {
        let selector = Selector::from_params(
            KIND,
            params.pid,
            params.name.as_deref(),
            params.cgroup.as_deref(),
        )?;
        Ok(Self {
            procs: resolve(KIND, selector)?,
        })
    }

    pub fn restore(recovery: &serde_json::Value) -> Result<Self, InjectError> {
        let r: Recovery =
            serde_json::from_value(recovery.clone()).map_err(|e| InjectError::BadRecovery {
                kind: KIND,
                reason: e.to_string(),
            })?;
        Ok(Self { procs: r.procs })
    }

    fn stopped(&self) -> Vec<i32> {
        self.procs
            .iter()
            .filter(|p| p.state() == Some('T'))
            .map(|p| p.pid)
            .collect()
    }
}

fn signal(p: &Proc, sig: Signal) -> Result<(), Errno> {
    // Only the process we chose: a recycled pid has another start time.
    if p.state().is_none() {
        return Ok(());
    }
    match kill(Pid::from_raw(p.pid), sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Fault for ProcessPauseFault {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn recovery(&self) -> serde_json::Value {
        serde_json::json!({ "procs": self.procs })
    }

    fn inject(&mut self) -> BoxFuture<'_, Result<(), InjectError>> {
        Box::pin(async move {
            for p in &self.procs {
                if let Err(e) = signal(p, Signal::SIGSTOP) {
                    // Leave nothing half-done: continue what was already stopped.
                    for q in &self.procs {
                        let _ = signal(q, Signal::SIGCONT);
                    }
                    return Err(InjectError::Failed {
                        kind: KIND,
                        action: format!("SIGSTOP pid {}", p.pid),
                        reason: e.to_string(),
                    });
                }
            }
            // SIGSTOP is delivered asynchronously: return once the targets are seen
            // stopped, so whoever injected it (the engine, an event, a test) can rely
            // on it. A target in uninterruptible sleep stops when it leaves it; that
            // may take longer than this bounded wait, which then only warns.
            let deadline = Instant::now() + Duration::from_millis(500);
            loop {
                let running: Vec<i32> = self
                    .procs
                    .iter()
                    .filter(|p| p.state().is_some_and(|s| s != 'T' && s != 't'))
                    .map(|p| p.pid)
                    .collect();
                if running.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(pids = ?running, "SIGSTOP sent, not yet stopped");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tracing::info!(pids = ?self.procs.iter().map(|p| p.pid).collect::<Vec<_>>(), "paused");
            Ok(())
        })
    }

    fn revert(&mut self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async move {
            let mut failed = Vec::new();
            for p in &self.procs {
                if let Err(e) = signal(p, Signal::SIGCONT) {
                    failed.push(format!("pid {}: {e}", p.pid));
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(RevertError::Failed {
                    kind: KIND,
                    reason: format!("SIGCONT failed for {}", failed.join(", ")),
                    left: "those processes may still be stopped (state T in /proc/<pid>/stat)"
                        .into(),
                })
            }
        })
    }

    fn verify_reverted(&self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async move {
            // SIGCONT is delivered asynchronously; give the kernel a moment.
            let deadline = Instant::now() + Duration::from_millis(500);
            loop {
                let stopped = self.stopped();
                if stopped.is_empty() {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(RevertError::NotReverted {
                        kind: KIND,
                        left: format!("pids {stopped:?} are still stopped"),
                    });
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    }

    fn observe(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let stopped = self.stopped();
            Observation {
                figures: serde_json::Value::Null,
                active: !stopped.is_empty(),
                detail: format!("{} of {} targets stopped", stopped.len(), self.procs.len()),
            }
        })
    }
}
