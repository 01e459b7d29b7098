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

use std::path::Path;
use std::process::Command;

fn stub(out: &Path, soname: &str) -> String {
    let path = out.join(soname);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let status = Command::new(&cc)
        .args(["-shared", "-nostdlib", "-x", "c", "/dev/null", "-o"])
        .arg(&path)
        .arg(format!("-Wl,-soname,{soname}"))
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!("building the {soname} stand-in with {cc} failed: {other:?}"),
    }
    path.display().to_string()
}

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let out = Path::new(&out);
    let real = stub(out, "libfaultline-real-nvml.so.1");
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
    println!("cargo::rustc-cdylib-link-arg=-Wl,--no-as-needed,{real},--as-needed");
    println!("cargo::rustc-cdylib-link-arg=-Wl,-rpath,$ORIGIN");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CC");
}
