//! Gives the fake driver the real driver's SONAME, so programs linked against it
//! record `libcuda.so.1` as their dependency, exactly as with the real driver.
#![forbid(unsafe_code)]

fn main() {
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo::rerun-if-changed=build.rs");
}
