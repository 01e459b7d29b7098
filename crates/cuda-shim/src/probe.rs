//! Is there a CUDA driver on this host? A safe question for crates that must
//! not use `unsafe` themselves (the agent's gpu hogs): cudarc panics when it
//! cannot load the driver, so they ask here first.

use std::ffi::CStr;

/// The names a dynamic loader of the driver (cudarc included) tries.
const DRIVER_NAMES: &[&CStr] = &[c"libcuda.so.1", c"libcuda.so"];

/// Whether `libcuda.so.1` (or `libcuda.so`) loads in this process and exports
/// `cuInit`. The library is closed again; nothing stays loaded.
pub fn driver_present() -> bool {
    DRIVER_NAMES.iter().any(|name| loads_with(name, c"cuInit"))
}

fn loads_with(name: &CStr, symbol: &CStr) -> bool {
    // SAFETY: dlopen with a NUL-terminated name; RTLD_LOCAL keeps the library's
    // symbols out of the global scope. Running its constructors is what loading
    // a driver means; a real libcuda's constructors do not touch the GPU.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return false;
    }
    // SAFETY: a live handle from dlopen and a NUL-terminated symbol name; the
    // address is only compared with null, never called.
    let found = !unsafe { libc::dlsym(handle, symbol.as_ptr()) }.is_null();
    // SAFETY: closes the handle opened above exactly once; nothing taken from
    // it outlives this function.
    unsafe { libc::dlclose(handle) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_not_present() {
        assert!(!loads_with(c"libfaultline-no-such-driver.so.1", c"cuInit"));
    }

    #[test]
    fn a_library_without_the_symbol_is_not_a_driver() {
        // libc loads everywhere and has no cuInit.
        assert!(!loads_with(c"libc.so.6", c"cuInit"));
        assert!(loads_with(c"libc.so.6", c"malloc"));
    }
}
