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
    let real = stub(out, "libfaultline-real-cuda.so.1");
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo::rustc-cdylib-link-arg=-Wl,--no-as-needed,{real},--as-needed");
    println!("cargo::rustc-cdylib-link-arg=-Wl,-rpath,$ORIGIN");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CC");
}
