//! The gpu family behind the `Fault` trait, so the agent injects, renews, reverts
//! and recovers them like any other fault.
//!
//! Where the agent's files live: the interposer's state file defaults to
//! [`DEFAULT_STATE_FILE`] (a fault's `state_file` names another, one per target
//! process group), and `gpu.device_deny` keeps the rules it must give back under
//! [`DEFAULT_RECORD_DIR`] (the agent's state directory in the shipped unit and
//! DaemonSet), so a restarted agent reverts from the spec alone.

use std::path::Path;
use std::time::Duration;

use super::{ComputeHogFault, DeviceDenyFault, GpuFaultError, GpuShimFault, MemoryHogFault};
use crate::{BoxFuture, Fault, InjectError, Observation, RevertError};

/// The interposer state file a gpu.unavailable / gpu.slow fault writes when its
/// spec names none; shimmed processes run with `FAULTLINE_GPU_STATE` set to it.
pub const DEFAULT_STATE_FILE: &str = "/run/faultline/gpu/default.state";

/// Where gpu.device_deny records the rules it must give back.
pub const DEFAULT_RECORD_DIR: &str = "/var/lib/faultline/gpu";

fn inject_error(kind: &'static str, e: GpuFaultError) -> InjectError {
    let reason = e.to_string();
    match e {
        GpuFaultError::BadParams(_) => InjectError::InvalidParams { kind, reason },
        GpuFaultError::Unsupported { .. } | GpuFaultError::NoDriver { .. } => {
            InjectError::Unsupported { kind, reason }
        }
        GpuFaultError::Cgroup { .. } => InjectError::NoTarget { kind, reason },
        GpuFaultError::StateFile { .. }
        | GpuFaultError::Driver { .. }
        | GpuFaultError::NotReverted { .. } => InjectError::Failed {
            kind,
            action: "inject".into(),
            reason,
        },
    }
}

fn revert_error(kind: &'static str, left: String, e: GpuFaultError) -> RevertError {
    match e {
        GpuFaultError::NotReverted { .. } => RevertError::NotReverted {
            kind,
            left: format!("{e}; {left}"),
        },
        e => RevertError::Failed {
            kind,
            reason: e.to_string(),
            left,
        },
    }
}

/// One of the gpu faults, with its kind.
#[derive(Debug)]
pub enum GpuFault {
    Shim(&'static str, GpuShimFault),
    MemoryHog(MemoryHogFault),
    ComputeHog(ComputeHogFault),
    DeviceDeny(DeviceDenyFault),
}

impl GpuFault {
    pub fn unavailable(
        id: &str,
        spec: &faultline_spec::fault::GpuUnavailable,
        lease: Duration,
    ) -> Result<Self, InjectError> {
        GpuShimFault::unavailable(id, spec, lease, Path::new(DEFAULT_STATE_FILE))
            .map(|f| GpuFault::Shim("gpu.unavailable", f))
            .map_err(|e| inject_error("gpu.unavailable", e))
    }

    pub fn slow(
        id: &str,
        spec: &faultline_spec::fault::GpuSlow,
        lease: Duration,
    ) -> Result<Self, InjectError> {
        GpuShimFault::slow(id, spec, lease, Path::new(DEFAULT_STATE_FILE))
            .map(|f| GpuFault::Shim("gpu.slow", f))
            .map_err(|e| inject_error("gpu.slow", e))
    }

    pub fn memory_hog(
        id: &str,
        spec: &faultline_spec::fault::GpuMemoryHog,
    ) -> Result<Self, InjectError> {
        MemoryHogFault::new(id, spec)
            .map(GpuFault::MemoryHog)
            .map_err(|e| inject_error("gpu.memory_hog", e))
    }

    pub fn compute_hog(
        id: &str,
        spec: &faultline_spec::fault::GpuComputeHog,
    ) -> Result<Self, InjectError> {
        ComputeHogFault::new(id, spec)
            .map(GpuFault::ComputeHog)
            .map_err(|e| inject_error("gpu.compute_hog", e))
    }

    pub fn device_deny(
        id: &str,
        spec: &faultline_spec::fault::GpuDeviceDeny,
    ) -> Result<Self, InjectError> {
        DeviceDenyFault::new(id, spec, Path::new(DEFAULT_RECORD_DIR))
            .map(GpuFault::DeviceDeny)
            .map_err(|e| inject_error("gpu.device_deny", e))
    }

    fn left(&self) -> String {
        match self {
            GpuFault::Shim(_, f) => format!("the fault in state file {}", f.state_file().display()),
            GpuFault::MemoryHog(_) | GpuFault::ComputeHog(_) => {
                "the hog thread in the agent process".into()
            }
            GpuFault::DeviceDeny(f) => {
                format!("the device rules recorded in {}", f.record_file().display())
            }
        }
    }
}

impl Fault for GpuFault {
    fn kind(&self) -> &'static str {
        match self {
            GpuFault::Shim(kind, _) => kind,
            GpuFault::MemoryHog(_) => "gpu.memory_hog",
            GpuFault::ComputeHog(_) => "gpu.compute_hog",
            GpuFault::DeviceDeny(_) => "gpu.device_deny",
        }
    }

    fn recovery(&self) -> serde_json::Value {
        // Each reverts from its spec alone: the state file path and the deny
        // record are derived from it; a hog dies with the agent process.
        match self {
            GpuFault::Shim(_, f) => serde_json::json!({ "state_file": f.state_file() }),
            GpuFault::DeviceDeny(f) => serde_json::json!({ "record_file": f.record_file() }),
            GpuFault::MemoryHog(_) | GpuFault::ComputeHog(_) => serde_json::json!({}),
        }
    }

    fn inject(&mut self) -> BoxFuture<'_, Result<(), InjectError>> {
        Box::pin(async move {
            let kind = self.kind();
            let r = match self {
                GpuFault::Shim(_, f) => f.inject(),
                GpuFault::MemoryHog(f) => f.inject(),
                GpuFault::ComputeHog(f) => f.inject(),
                GpuFault::DeviceDeny(f) => f.inject(),
            };
            r.map_err(|e| inject_error(kind, e))
        })
    }

    fn renew(&mut self, lease: Duration) -> BoxFuture<'_, Result<(), InjectError>> {
        Box::pin(async move {
            match self {
                // The shim turns a fault off at the expiry stamped in its file.
                GpuFault::Shim(kind, f) => f.renew(lease).map_err(|e| inject_error(kind, e)),
                _ => Ok(()),
            }
        })
    }

    fn revert(&mut self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async move {
            let (kind, left) = (self.kind(), self.left());
            let r = match self {
                GpuFault::Shim(_, f) => f.revert(),
                GpuFault::MemoryHog(f) => f.revert(),
                GpuFault::ComputeHog(f) => f.revert(),
                GpuFault::DeviceDeny(f) => f.revert(),
            };
            r.map_err(|e| revert_error(kind, left, e))
        })
    }

    fn verify_reverted(&self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async move {
            let (kind, left) = (self.kind(), self.left());
            let r = match self {
                GpuFault::Shim(_, f) => f.verify_reverted(),
                GpuFault::MemoryHog(f) => f.verify_reverted(),
                GpuFault::ComputeHog(f) => f.verify_reverted(),
                GpuFault::DeviceDeny(f) => f.verify_reverted(),
            };
            r.map_err(|e| revert_error(kind, left, e))
        })
    }

    fn observe(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            match self {
                GpuFault::Shim(_, f) => {
                    let s = f.status();
                    Observation {
                        figures: serde_json::Value::Null,
                        active: s.active,
                        detail: format!("{s:?}"),
                    }
                }
                GpuFault::MemoryHog(f) => {
                    let s = f.status();
                    Observation {
                        figures: serde_json::Value::Null,
                        active: s.running,
                        detail: format!("{s:?}"),
                    }
                }
                GpuFault::ComputeHog(f) => {
                    let s = f.status();
                    Observation {
                        figures: serde_json::Value::Null,
                        active: s.running,
                        detail: format!("{s:?}"),
                    }
                }
                GpuFault::DeviceDeny(f) => {
                    let s = f.status();
                    Observation {
                        figures: serde_json::Value::Null,
                        active: !s.denied.is_empty(),
                        detail: format!("{s:?}"),
                    }
                }
            }
        })
    }
}
