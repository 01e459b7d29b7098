//! Links the shim as `libnvidia-ml.so.1` (SONAME) with a dependency that stands
//! for the real NVML: `libfaultline-real-nvml.so.1`, found next to the shim
//! ($ORIGIN) where the installer symlinks it to the real libnvidia-ml.so.1.
//!
//! Why: as for crates/cuda-shim-soname. NVML users (pynvml, nvml-wrapper,
//! DCGM exporters) dlopen `libnvidia-ml.so.1` and dlsym from the handle; this
//! build is what they get, and its dependency answers what it does not wrap.
//! Its own SONAME makes dlopen("libnvidia-ml.so.1") return it once loaded
//! (preloaded, or loaded first), ahead of the real library it depends on.
#![forbid(unsafe_code)]

#[path = "../cuda-shim-soname/soname_link.rs"]
mod soname_link;

fn main() {
    soname_link::link_as("libnvidia-ml.so.1", "libfaultline-real-nvml.so.1");
}
