//! The faultline CUDA shim again, linked with SONAME `libcuda.so.1` (build.rs).
//! Installed as `libcuda.so.1` in a directory on LD_LIBRARY_PATH (or preloaded),
//! it is what a runtime gets when it dlopens the driver by name, which plain
//! LD_PRELOAD cannot intercept. It forwards to the real driver by absolute path
//! (FAULTLINE_REAL_LIBCUDA or the usual driver directories) and skips itself.
//! Limits: the same as the shim's; NVML users that dlopen libnvidia-ml.so.1 are
//! not covered by this build.
#![forbid(unsafe_code)]

// Linking the shim's rlib is enough: a cdylib exports every `#[no_mangle]`
// symbol of the crates it links.
pub use faultline_cuda_shim;
