//! Gives the cdylib the driver's SONAME, so the dynamic loader treats it as
//! libcuda.so.1 (dlopen("libcuda.so.1") returns it once it is loaded).
#![forbid(unsafe_code)]

fn main() {
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo::rerun-if-changed=build.rs");
}
