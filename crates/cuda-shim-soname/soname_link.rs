//! Shared by the build scripts of crates/cuda-shim-soname and
//! crates/nvml-shim-soname: link the shim's cdylib under a library's SONAME, with
//! a DT_NEEDED stand-in for the real library found next to it ($ORIGIN).

use std::path::Path;
use std::process::Command;

/// Builds an empty shared object whose only content that matters is its SONAME
/// (it becomes the DT_NEEDED entry), and returns its path.
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

/// Emits the link arguments: SONAME `soname`, a dependency on `real_soname`
/// resolved through `$ORIGIN`.
pub fn link_as(soname: &str, real_soname: &str) {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let real = stub(Path::new(&out), real_soname);
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    println!("cargo::rustc-cdylib-link-arg=-Wl,--no-as-needed,{real},--as-needed");
    println!("cargo::rustc-cdylib-link-arg=-Wl,-rpath,$ORIGIN");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=../cuda-shim-soname/soname_link.rs");
    println!("cargo::rerun-if-env-changed=CC");
}
