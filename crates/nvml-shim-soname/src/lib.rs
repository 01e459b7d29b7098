//! The faultline CUDA/NVML shim again, linked with SONAME `libnvidia-ml.so.1`
//! (build.rs).
//! Installed as `libnvidia-ml.so.1` in a directory on LD_LIBRARY_PATH, or
//! preloaded, it is what NVML users get when they dlopen NVML by name. It
//! forwards to the real NVML, which it also depends on under the name
//! `libfaultline-real-nvml.so.1` (a symlink next to it), so NVML calls it does
//! not wrap still resolve.
//!
//! Limits: the shim's (docs/gpu.md); it does not load at all unless that symlink
//! exists next to the file it was loaded through.
#![forbid(unsafe_code)]

// Linking the shim's rlib is enough: a cdylib exports every `#[no_mangle]`
// symbol of the crates it links.
pub use faultline_cuda_shim;
