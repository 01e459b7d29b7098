//! Links the shim as `libcuda.so.1` (SONAME) with two dependencies that stand
//! for the real libraries: `libfaultline-real-cuda.so.1` and
//! `libfaultline-real-nvml.so.1`, found next to the shim ($ORIGIN) where the
//! installer symlinks them to the real libcuda.so.1 and libnvidia-ml.so.1.
//!
//! Why: a runtime that dlopens libcuda.so.1 gets the shim, and `dlsym` on that
//! handle searches the shim and then its dependencies. Entry points the shim
//! wraps resolve to the shim; the hundreds it does not wrap resolve to the real
//! driver instead of failing. The same holds for libraries linked against
//! libcuda.so.1 when the shim is preloaded: its dependencies join the global
//! scope after it.
//!
//! The two stand-ins are empty shared objects built here with `cc`; only their
//! SONAMEs matter (they become the DT_NEEDED entries).
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
    let cuda = stub(out, "libfaultline-real-cuda.so.1");
    let nvml = stub(out, "libfaultline-real-nvml.so.1");
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo::rustc-cdylib-link-arg=-Wl,--no-as-needed,{cuda},{nvml},--as-needed");
    println!("cargo::rustc-cdylib-link-arg=-Wl,-rpath,$ORIGIN");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CC");
}
