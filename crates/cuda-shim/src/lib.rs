//! faultline's CUDA/NVML interposer: a library loaded in front of the real
//! driver (LD_PRELOAD, or installed as `libcuda.so.1` / `libnvidia-ml.so.1`
//! through the `faultline-cuda-shim-soname` / `faultline-nvml-shim-soname`
//! builds of this crate) that forwards every CUDA driver API and
//! NVML call it exports to the real library, and while the agent has set a fault
//! in the shared state file ([`state`]), fails those calls with the chosen error
//! or delays launches and synchronisations.
//!
//! Limits: it sees only calls that reach it. LD_PRELOAD catches programs linked
//! against libcuda; cuGetProcAddress interception catches the CUDA 12 runtime once
//! it has the shim's cuGetProcAddress; programs that dlopen `libcuda.so.1` and
//! dlsym from that handle need a SONAME build (docs/gpu.md has the table).
//! Per-thread-default-stream variants (`_ptsz`, `_ptds`) and calls it does not
//! export go straight to the driver. It never panics across the C ABI and never
//! prints: an unusable state file means pass-through, a missing driver means
//! CUDA_ERROR_NO_DEVICE / NVML_ERROR_LIBRARY_NOT_FOUND, as without the shim.
//!
//! The rlib half exports [`state`], the file format and its writer, for the
//! agent's gpu faults, and [`driver_present`], a safe probe for the driver.

#[cfg(feature = "hog")]
pub mod busy;
mod cuda;
mod fault;
mod interpose;
mod nvml;
mod probe;
mod real;
pub mod state;

pub use probe::driver_present;

pub use cuda::REAL_LIBCUDA_ENV;
pub use nvml::REAL_LIBNVML_ENV;
pub use state::STATE_ENV;

/// Marks a library as a faultline shim, so the loader never forwards to a shim
/// (itself, or another copy found by name). Its value is the state format version.
#[unsafe(no_mangle)]
#[used]
pub static faultline_cuda_shim_marker: u32 = state::VERSION;

/// Every CUDA driver API and NVML symbol the shim exports (for tests and docs).
pub fn exported_symbols() -> Vec<&'static str> {
    cuda::exported_symbols()
        .chain(nvml::exported_symbols())
        .collect()
}
