//! Links the shim as `libcuda.so.1` (SONAME) with a dependency that stands for
//! the real driver: `libfaultline-real-cuda.so.1`, found next to the shim
//! ($ORIGIN) where the installer symlinks it to the real libcuda.so.1.
//!
//! Why: a runtime that dlopens libcuda.so.1 gets the shim, and `dlsym` on that
//! handle searches the shim and then its dependencies. Entry points the shim
//! wraps resolve to the shim; the hundreds it does not wrap resolve to the real
//! driver instead of failing. The same holds for libraries linked against
//! libcuda.so.1 when the shim is preloaded: its dependencies join the global
//! scope after it.
//!
//! The stand-in is an empty shared object built here with `cc`; only its SONAME
//! matters (it becomes the DT_NEEDED entry). NVML is not a dependency here: a
//! loaded real NVML would answer every later dlopen("libnvidia-ml.so.1") by its
//! SONAME, ahead of the shim's NVML build (crates/nvml-shim-soname).
#![forbid(unsafe_code)]

#[path = "soname_link.rs"]
mod soname_link;

fn main() {
    soname_link::link_as("libcuda.so.1", "libfaultline-real-cuda.so.1");
}
