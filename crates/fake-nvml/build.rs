//! Gives the fake NVML the real library's SONAME and binds its own symbols
//! locally, like crates/fake-cuda does for the driver: the SONAME matters, since
//! the loader matches `dlopen("libnvidia-ml.so.1")` against loaded objects' SONAMEs.
#![forbid(unsafe_code)]

fn main() {
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
    println!("cargo::rustc-cdylib-link-arg=-Wl,-Bsymbolic");
    println!("cargo::rerun-if-changed=build.rs");
}
