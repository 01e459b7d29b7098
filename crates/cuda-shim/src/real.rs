//! Finding and opening the real driver libraries behind the shim.
//!
//! The real library is opened by absolute path with `RTLD_LOCAL`, so its symbols
//! do not enter the global scope where the shim's own exports live. Any candidate
//! that turns out to be a faultline shim (it exports [`MARKER`]) is skipped: with
//! the SONAME variant installed as `libcuda.so.1`, a search by name would
//! otherwise find the shim itself and forward to itself forever.

use std::cell::Cell;
use std::ffi::{CStr, CString, c_void};
use std::sync::OnceLock;

/// Exported by every build of the shim; never by a real driver.
pub(crate) const MARKER: &CStr = c"faultline_cuda_shim_marker";

/// Where distributions and containers put the real libraries.
pub(crate) const CUDA_CANDIDATES: &[&str] = &[
    // The SONAME build's own dependency (see crates/cuda-shim-soname/build.rs):
    // already loaded, so this names exactly the driver the installer chose.
    "libfaultline-real-cuda.so.1",
    "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
    "/usr/lib64/libcuda.so.1",
    "/usr/lib/aarch64-linux-gnu/libcuda.so.1",
    "/usr/local/nvidia/lib64/libcuda.so.1",
    "/usr/lib/wsl/lib/libcuda.so.1",
    "/usr/lib/libcuda.so.1",
    "libcuda.so.1",
];
pub(crate) const NVML_CANDIDATES: &[&str] = &[
    "libfaultline-real-nvml.so.1",
    "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
    "/usr/lib64/libnvidia-ml.so.1",
    "/usr/lib/aarch64-linux-gnu/libnvidia-ml.so.1",
    "/usr/local/nvidia/lib64/libnvidia-ml.so.1",
    "/usr/lib/wsl/lib/libnvidia-ml.so.1",
    "/usr/lib/libnvidia-ml.so.1",
    "libnvidia-ml.so.1",
];

/// A dlopen handle, never closed: the function pointers taken from it live as
/// long as the process.
#[derive(Debug)]
pub(crate) struct Library(*mut c_void);

// SAFETY: a dlopen handle is a process-wide token; dlsym is thread-safe.
unsafe impl Send for Library {}
// SAFETY: as above.
unsafe impl Sync for Library {}

impl Library {
    /// Opens the library named by `env` if set (and only that), else the first
    /// candidate that exists and is not a shim.
    pub(crate) fn find(env: &str, candidates: &[&str]) -> Option<Library> {
        if let Some(path) = std::env::var_os(env) {
            let path =
                CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())).ok()?;
            return Library::open_real(&path);
        }
        candidates
            .iter()
            .filter_map(|c| CString::new(*c).ok())
            .find_map(|c| Library::open_real(&c))
    }

    fn open_real(path: &CStr) -> Option<Library> {
        // SAFETY: `path` is NUL-terminated; dlopen runs the library's constructors,
        // which is what loading a driver library means.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return None;
        }
        let lib = Library(handle);
        if !lib.sym(MARKER).is_null() {
            // Ourselves (or another shim copy): drop the extra reference.
            // SAFETY: `handle` came from the successful dlopen above and no symbol
            // taken from it is kept.
            unsafe { libc::dlclose(handle) };
            return None;
        }
        Some(lib)
    }

    /// The address of `name` in this library only (null if absent).
    pub(crate) fn sym(&self, name: &CStr) -> *mut c_void {
        // dlerror state is per thread and we never read it; a null result is the
        // only signal we need.
        // SAFETY: a live handle and a NUL-terminated name.
        unsafe { libc::dlsym(self.0, name.as_ptr()) }
    }
}

thread_local! {
    /// Set while this thread is loading a real library.
    static LOADING: Cell<bool> = const { Cell::new(false) };
}

/// `cell.get_or_init(load)`, except that a call made on the same thread while
/// `load` runs (a real library whose constructor calls back into an exported
/// entry point) gets `None` ("no library") instead of re-entering the
/// `OnceLock`, which would deadlock the host process.
pub(crate) fn load_once<T>(
    cell: &'static OnceLock<Option<T>>,
    load: impl FnOnce() -> Option<T>,
) -> Option<&'static T> {
    if let Some(loaded) = cell.get() {
        return loaded.as_ref();
    }
    if LOADING.with(Cell::get) {
        return None;
    }
    LOADING.with(|l| l.set(true));
    let loaded = cell.get_or_init(load);
    LOADING.with(|l| l.set(false));
    loaded.as_ref()
}
