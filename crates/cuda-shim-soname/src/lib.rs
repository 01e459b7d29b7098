//! The faultline CUDA shim again, linked with SONAME `libcuda.so.1` (build.rs).
//! Installed as `libcuda.so.1` in a directory on LD_LIBRARY_PATH, or preloaded,
//! it is what a runtime gets when it dlopens the driver by name, which a plain
//! LD_PRELOAD cannot intercept. It forwards to the real driver, which it also
//! depends on under the name `libfaultline-real-cuda.so.1` (a symlink next to
//! it), so entry points it does not wrap still resolve.
//!
//! Limits: the shim's (docs/gpu.md); it does not load at all unless that symlink
//! exists next to the file it was loaded through; NVML users that dlopen
//! libnvidia-ml.so.1 need crates/nvml-shim-soname.
#![forbid(unsafe_code)]

// Linking the shim's rlib is enough: a cdylib exports every `#[no_mangle]`
// symbol of the crates it links.
pub use faultline_cuda_shim;
