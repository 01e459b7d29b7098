//! `gpu.*`: GPU faults on a host.
//!
//! - [`GpuShimFault`] (`gpu.unavailable`, `gpu.slow`) writes the fault into the
//!   CUDA/NVML interposer's state file (`crates/cuda-shim`); processes started
//!   with the shim fail or slow their driver calls while it is set. The file
//!   carries the lease: a dead agent's fault switches itself off.
//! - [`MemoryHogFault`] and [`ComputeHogFault`] (`gpu.memory_hog`,
//!   `gpu.compute_hog`) take memory or compute on a real device through the
//!   driver, loaded at run time; without a driver they fail with
//!   [`GpuFaultError::NoDriver`] and hold nothing.
//! - [`DeviceDenyFault`] (`gpu.device_deny`) takes the NVIDIA device nodes away
//!   from a cgroup through the cgroup v1 device controller; cgroup v2 needs an
//!   eBPF device program and is refused with [`GpuFaultError::Unsupported`].
//!
//! Limits: the shim faults reach only processes started with the shim; hogs and
//! device denial have no dead man's switch of their own (they live in the agent's
//! process or in the kernel), so they rely on the agent's lease and journal.

mod deny;
mod fault;
mod hog;
mod shim;

use std::path::PathBuf;

pub use deny::{CgroupVersion, DeviceDenyFault, DeviceDenyStatus, cgroup_version};
pub use fault::{DEFAULT_RECORD_DIR, DEFAULT_STATE_FILE, GpuFault};
pub use hog::{ComputeHogFault, HogStatus, MemoryHogFault};
pub use shim::{GpuShimFault, ShimStatus};

/// What went wrong with a gpu fault. Each message says what failed, on what,
/// and what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GpuFaultError {
    #[error("bad parameters: {0}")]
    BadParams(String),
    #[error("GPU fault state file {path}: {reason}")]
    StateFile { path: PathBuf, reason: String },
    #[error("no NVIDIA driver (libcuda.so.1) on this host: {kind} needs a real GPU")]
    NoDriver { kind: &'static str },
    #[error("CUDA driver on device {device}: {reason}")]
    Driver { device: u32, reason: String },
    #[error("{kind} is not supported here: {reason}")]
    Unsupported { kind: &'static str, reason: String },
    #[error("cgroup {cgroup}: {reason}")]
    Cgroup { cgroup: String, reason: String },
    #[error("revert not confirmed for {what}: {reason}")]
    NotReverted { what: String, reason: String },
}
