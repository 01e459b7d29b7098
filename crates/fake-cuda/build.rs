//! Gives the fake driver the real driver's SONAME, so programs linked against it
//! record `libcuda.so.1` as their dependency, exactly as with the real driver,
//! and binds its own symbol references locally (-Bsymbolic): the addresses its
//! cuGetProcAddress hands out are its own functions even when a shim exporting
//! the same names is preloaded. That is the conservative model of a real driver;
//! without it, preloading alone would look like it catches dlopen users.
#![forbid(unsafe_code)]

fn main() {
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo::rustc-cdylib-link-arg=-Wl,-Bsymbolic");
    println!("cargo::rerun-if-changed=build.rs");
}
