//! Test fixture: a fake CUDA driver (`libcuda.so.1`), so the shim can be tested
//! on machines without a GPU (its NVML twin is `crates/fake-nvml`). It answers the entry points
//! the shim wraps with plausible results: two devices ("Faultline Fake GPU 0/1",
//! 16 GiB each), contexts per device, host-backed device memory (so copies round
//! trip), kernels that "run" instantly, streams and events that are always done.
//!
//! Limits: no real execution; one flat address space; the current context is
//! per thread like the driver's, but primary contexts are not reference counted.
//! It validates what a driver validates cheaply (initialised, ordinals, copies
//! inside allocations) and returns the driver's error codes for those.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

type CUresult = c_uint;
type CUdevice = c_int;
type CUdeviceptr = u64;
type Handle = *mut c_void;

const SUCCESS: CUresult = 0;
const INVALID_VALUE: CUresult = 1;
const OUT_OF_MEMORY: CUresult = 2;
const NOT_INITIALIZED: CUresult = 3;
const INVALID_DEVICE: CUresult = 101;
const INVALID_CONTEXT: CUresult = 201;
const NOT_FOUND: CUresult = 500;

const DEVICES: c_int = 2;
const TOTAL_MEM: usize = 16 << 30;
const DRIVER_VERSION: c_int = 12040;

static INIT: AtomicBool = AtomicBool::new(false);
static USED: AtomicU64 = AtomicU64::new(0);
static NEXT_HANDLE: AtomicU64 = AtomicU64::new(0x10_0000);
/// Live allocations: device pointer (a malloc'd host address) -> size.
static ALLOCS: Mutex<BTreeMap<u64, usize>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// The calling thread's current context: device ordinal, or -1.
    static CURRENT: Cell<c_int> = const { Cell::new(-1) };
}

/// Writes `value` through an out-pointer, or reports INVALID_VALUE for null.
///
/// # Safety
/// `ptr` is null or valid for a write of `T`.
unsafe fn put<T>(ptr: *mut T, value: T) -> CUresult {
    if ptr.is_null() {
        return INVALID_VALUE;
    }
    // SAFETY: non-null and valid per the contract.
    unsafe { ptr.write(value) };
    SUCCESS
}

fn ready() -> Result<(), CUresult> {
    if INIT.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(NOT_INITIALIZED)
    }
}

fn device(dev: CUdevice) -> Result<(), CUresult> {
    ready()?;
    if (0..DEVICES).contains(&dev) {
        Ok(())
    } else {
        Err(INVALID_DEVICE)
    }
}

fn current() -> Result<c_int, CUresult> {
    ready()?;
    let dev = CURRENT.with(Cell::get);
    if dev < 0 {
        Err(INVALID_CONTEXT)
    } else {
        Ok(dev)
    }
}

fn ctx_handle(dev: CUdevice) -> Handle {
    // A context is its device ordinal plus one, as an opaque pointer value.
    ((dev as usize + 1) << 4) as Handle
}

fn ctx_device(ctx: Handle) -> Option<CUdevice> {
    let dev = (ctx as usize >> 4).checked_sub(1)?;
    c_int::try_from(dev).ok().filter(|d| *d < DEVICES)
}

fn new_handle() -> Handle {
    NEXT_HANDLE.fetch_add(0x10, Ordering::Relaxed) as usize as Handle
}

fn code(r: Result<(), CUresult>) -> CUresult {
    r.err().unwrap_or(SUCCESS)
}

/// Whether [ptr, ptr+len) lies inside one live allocation.
fn inside(ptr: u64, len: usize) -> bool {
    let Ok(allocs) = ALLOCS.lock() else {
        return false;
    };
    allocs
        .range(..=ptr)
        .next_back()
        .is_some_and(|(base, size)| ptr - base + len as u64 <= *size as u64)
}

// === driver: init, devices ===

/// # Safety
/// C ABI fixture.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    if flags != 0 {
        return INVALID_VALUE;
    }
    INIT.store(true, Ordering::Release);
    SUCCESS
}

/// # Safety
/// `version` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    // SAFETY: caller's contract.
    unsafe { put(version, DRIVER_VERSION) }
}

/// # Safety
/// `device` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGet(out: *mut CUdevice, ordinal: c_int) -> CUresult {
    if let Err(e) = device(ordinal) {
        return e;
    }
    // SAFETY: caller's contract.
    unsafe { put(out, ordinal) }
}

/// # Safety
/// `count` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    if let Err(e) = ready() {
        return e;
    }
    // SAFETY: caller's contract.
    unsafe { put(count, DEVICES) }
}

/// # Safety
/// `name` is valid for `len` bytes of writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    if let Err(e) = device(dev) {
        return e;
    }
    let text = format!("Faultline Fake GPU {dev}\0");
    let Ok(len) = usize::try_from(len) else {
        return INVALID_VALUE;
    };
    if name.is_null() || len == 0 {
        return INVALID_VALUE;
    }
    let n = text.len().min(len);
    // SAFETY: `name` holds `len` >= n bytes; the source is a fresh String. The
    // last byte written is forced to NUL, truncating like the driver does.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr().cast::<c_char>(), name, n);
        name.add(n - 1).write(0);
    }
    SUCCESS
}

/// # Safety
/// `value` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    value: *mut c_int,
    attrib: c_int,
    dev: CUdevice,
) -> CUresult {
    if let Err(e) = device(dev) {
        return e;
    }
    let v = match attrib {
        1 => 1024, // MAX_THREADS_PER_BLOCK
        16 => 132, // MULTIPROCESSOR_COUNT
        75 => 9,   // COMPUTE_CAPABILITY_MAJOR
        76 => 0,   // COMPUTE_CAPABILITY_MINOR
        _ => 0,
    };
    // SAFETY: caller's contract.
    unsafe { put(value, v) }
}

/// # Safety
/// `bytes` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    if let Err(e) = device(dev) {
        return e;
    }
    // SAFETY: caller's contract.
    unsafe { put(bytes, TOTAL_MEM) }
}

/// Not wrapped by the shim: tests use it to show that unwrapped entry points
/// still reach the driver through the shim's SONAME build.
///
/// # Safety
/// `flags` and `active` are valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxGetState(
    dev: CUdevice,
    flags: *mut c_uint,
    active: *mut c_int,
) -> CUresult {
    if let Err(e) = device(dev) {
        return e;
    }
    // SAFETY: caller's contract.
    let rc = unsafe { put(flags, 0) };
    if rc != SUCCESS {
        return rc;
    }
    // SAFETY: caller's contract.
    unsafe { put(active, 1) }
}

// === driver: contexts ===

/// # Safety
/// `ctx` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v2(
    ctx: *mut Handle,
    _flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    if let Err(e) = device(dev) {
        return e;
    }
    CURRENT.with(|c| c.set(dev));
    // SAFETY: caller's contract.
    unsafe { put(ctx, ctx_handle(dev)) }
}

/// # Safety
/// C ABI fixture.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: Handle) -> CUresult {
    if let Err(e) = ready() {
        return e;
    }
    let Some(dev) = ctx_device(ctx) else {
        return INVALID_CONTEXT;
    };
    CURRENT.with(|c| {
        if c.get() == dev {
            c.set(-1);
        }
    });
    SUCCESS
}

/// # Safety
/// `ctx` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut Handle, dev: CUdevice) -> CUresult {
    if let Err(e) = device(dev) {
        return e;
    }
    // SAFETY: caller's contract.
    unsafe { put(ctx, ctx_handle(dev)) }
}

/// # Safety
/// C ABI fixture.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    code(device(dev))
}

/// # Safety
/// C ABI fixture.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: Handle) -> CUresult {
    if let Err(e) = ready() {
        return e;
    }
    if ctx.is_null() {
        CURRENT.with(|c| c.set(-1));
        return SUCCESS;
    }
    match ctx_device(ctx) {
        Some(dev) => {
            CURRENT.with(|c| c.set(dev));
            SUCCESS
        }
        None => INVALID_CONTEXT,
    }
}

/// # Safety
/// `ctx` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut Handle) -> CUresult {
    if let Err(e) = ready() {
        return e;
    }
    let dev = CURRENT.with(Cell::get);
    let h = if dev < 0 {
        std::ptr::null_mut()
    } else {
        ctx_handle(dev)
    };
    // SAFETY: caller's contract.
    unsafe { put(ctx, h) }
}

/// # Safety
/// `out` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetDevice(out: *mut CUdevice) -> CUresult {
    match current() {
        // SAFETY: caller's contract.
        Ok(dev) => unsafe { put(out, dev) },
        Err(e) => e,
    }
}

/// # Safety
/// C ABI fixture.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    code(current().map(drop))
}

// === driver: memory ===

/// # Safety
/// `dptr` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, size: usize) -> CUresult {
    if let Err(e) = current() {
        return e;
    }
    if size == 0 || dptr.is_null() {
        return INVALID_VALUE;
    }
    if USED.load(Ordering::Relaxed) + size as u64 > TOTAL_MEM as u64 {
        return OUT_OF_MEMORY;
    }
    // SAFETY: plain allocation; freed in cuMemFree_v2.
    let p = unsafe { libc::malloc(size) };
    if p.is_null() {
        return OUT_OF_MEMORY;
    }
    let Ok(mut allocs) = ALLOCS.lock() else {
        // SAFETY: `p` came from malloc above and was never handed out.
        unsafe { libc::free(p) };
        return OUT_OF_MEMORY;
    };
    allocs.insert(p as u64, size);
    USED.fetch_add(size as u64, Ordering::Relaxed);
    // SAFETY: caller's contract.
    unsafe { put(dptr, p as u64) }
}

/// # Safety
/// `dptr` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocManaged(
    dptr: *mut CUdeviceptr,
    size: usize,
    _flags: c_uint,
) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuMemAlloc_v2(dptr, size) }
}

/// # Safety
/// `dptr` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    size: usize,
    _stream: Handle,
) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuMemAlloc_v2(dptr, size) }
}

/// # Safety
/// C ABI fixture.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    if let Err(e) = current() {
        return e;
    }
    let Ok(mut allocs) = ALLOCS.lock() else {
        return INVALID_VALUE;
    };
    match allocs.remove(&dptr) {
        Some(size) => {
            USED.fetch_sub(size as u64, Ordering::Relaxed);
            // SAFETY: `dptr` was returned by malloc in cuMemAlloc_v2 and just
            // removed from the live set, so it is freed once.
            unsafe { libc::free(dptr as usize as *mut c_void) };
            SUCCESS
        }
        None => INVALID_VALUE,
    }
}

/// # Safety
/// `free` and `total` are valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    if let Err(e) = current() {
        return e;
    }
    let used = USED.load(Ordering::Relaxed) as usize;
    // SAFETY: caller's contract.
    let rc = unsafe { put(free, TOTAL_MEM - used.min(TOTAL_MEM)) };
    if rc != SUCCESS {
        return rc;
    }
    // SAFETY: caller's contract.
    unsafe { put(total, TOTAL_MEM) }
}

/// Copies between host and fake device memory after checking device ranges.
///
/// # Safety
/// Host pointers are valid for `size` bytes.
unsafe fn copy(dst: u64, dst_dev: bool, src: u64, src_dev: bool, size: usize) -> CUresult {
    if let Err(e) = current() {
        return e;
    }
    if (dst_dev && !inside(dst, size)) || (src_dev && !inside(src, size)) || dst == 0 || src == 0 {
        return INVALID_VALUE;
    }
    // SAFETY: device ranges lie inside live allocations (checked above); host
    // ranges are valid per the caller's contract.
    unsafe { std::ptr::copy(src as usize as *const u8, dst as usize as *mut u8, size) };
    SUCCESS
}

/// # Safety
/// Device pointers from cuMemAlloc.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, size: usize) -> CUresult {
    // SAFETY: both device ranges are checked.
    unsafe { copy(dst, true, src, true, size) }
}

/// # Safety
/// Device pointers from cuMemAlloc.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyAsync(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    size: usize,
    _s: Handle,
) -> CUresult {
    // SAFETY: both device ranges are checked.
    unsafe { copy(dst, true, src, true, size) }
}

/// # Safety
/// Device pointers from cuMemAlloc.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    size: usize,
) -> CUresult {
    // SAFETY: both device ranges are checked.
    unsafe { copy(dst, true, src, true, size) }
}

/// # Safety
/// `src` is valid for `size` bytes of reads.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    size: usize,
) -> CUresult {
    // SAFETY: caller's contract for the host side.
    unsafe { copy(dst, true, src as usize as u64, false, size) }
}

/// # Safety
/// `dst` is valid for `size` bytes of writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    size: usize,
) -> CUresult {
    // SAFETY: caller's contract for the host side.
    unsafe { copy(dst as usize as u64, false, src, true, size) }
}

/// # Safety
/// `src` is valid for `size` bytes of reads.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    size: usize,
    _s: Handle,
) -> CUresult {
    // SAFETY: caller's contract for the host side.
    unsafe { copy(dst, true, src as usize as u64, false, size) }
}

/// # Safety
/// `dst` is valid for `size` bytes of writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    size: usize,
    _s: Handle,
) -> CUresult {
    // SAFETY: caller's contract for the host side.
    unsafe { copy(dst as usize as u64, false, src, true, size) }
}

// === driver: modules, launches, streams ===

/// # Safety
/// `module` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut Handle, image: *const c_void) -> CUresult {
    if let Err(e) = current() {
        return e;
    }
    if image.is_null() {
        return INVALID_VALUE;
    }
    // SAFETY: caller's contract.
    unsafe { put(module, new_handle()) }
}

/// # Safety
/// `func` is valid for writes, `name` a C string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleGetFunction(
    func: *mut Handle,
    module: Handle,
    name: *const c_char,
) -> CUresult {
    if let Err(e) = current() {
        return e;
    }
    if module.is_null() || name.is_null() {
        return INVALID_VALUE;
    }
    // SAFETY: caller's contract.
    unsafe { put(func, new_handle()) }
}

/// # Safety
/// C ABI fixture; parameters are not read.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cuLaunchKernel(
    func: Handle,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    _shared_mem: c_uint,
    _stream: Handle,
    _params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    if let Err(e) = current() {
        return e;
    }
    if func.is_null() || [grid_x, grid_y, grid_z, block_x, block_y, block_z].contains(&0) {
        return INVALID_VALUE;
    }
    SUCCESS
}

/// # Safety
/// C ABI fixture; parameters are not read.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernelEx(
    config: *const c_void,
    func: Handle,
    _params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    if let Err(e) = current() {
        return e;
    }
    if config.is_null() || func.is_null() {
        return INVALID_VALUE;
    }
    SUCCESS
}

/// # Safety
/// `stream` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreate(stream: *mut Handle, _flags: c_uint) -> CUresult {
    if let Err(e) = current() {
        return e;
    }
    // SAFETY: caller's contract.
    unsafe { put(stream, new_handle()) }
}

/// # Safety
/// C ABI fixture.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamDestroy_v2(_stream: Handle) -> CUresult {
    code(current().map(drop))
}

/// # Safety
/// C ABI fixture.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamSynchronize(_stream: Handle) -> CUresult {
    code(current().map(drop))
}

/// # Safety
/// C ABI fixture.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventSynchronize(event: Handle) -> CUresult {
    if let Err(e) = current() {
        return e;
    }
    if event.is_null() {
        INVALID_VALUE
    } else {
        SUCCESS
    }
}

// === driver: errors, entry points ===

fn error_text(error: CUresult) -> Option<(&'static CStr, &'static CStr)> {
    Some(match error {
        0 => (c"CUDA_SUCCESS", c"no error"),
        1 => (c"CUDA_ERROR_INVALID_VALUE", c"invalid argument"),
        2 => (c"CUDA_ERROR_OUT_OF_MEMORY", c"out of memory"),
        3 => (c"CUDA_ERROR_NOT_INITIALIZED", c"initialization error"),
        46 => (
            c"CUDA_ERROR_DEVICE_UNAVAILABLE",
            c"CUDA-capable device(s) is/are busy or unavailable",
        ),
        100 => (
            c"CUDA_ERROR_NO_DEVICE",
            c"no CUDA-capable device is detected",
        ),
        101 => (c"CUDA_ERROR_INVALID_DEVICE", c"invalid device ordinal"),
        201 => (c"CUDA_ERROR_INVALID_CONTEXT", c"invalid device context"),
        214 => (
            c"CUDA_ERROR_ECC_UNCORRECTABLE",
            c"uncorrectable ECC error encountered",
        ),
        500 => (c"CUDA_ERROR_NOT_FOUND", c"named symbol not found"),
        719 => (c"CUDA_ERROR_LAUNCH_FAILED", c"unspecified launch failure"),
        _ => return None,
    })
}

/// # Safety
/// `out` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorName(error: CUresult, out: *mut *const c_char) -> CUresult {
    match error_text(error) {
        // SAFETY: caller's contract; the strings are 'static.
        Some((name, _)) => unsafe { put(out, name.as_ptr()) },
        None => INVALID_VALUE,
    }
}

/// # Safety
/// `out` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorString(error: CUresult, out: *mut *const c_char) -> CUresult {
    match error_text(error) {
        // SAFETY: caller's contract; the strings are 'static.
        Some((_, text)) => unsafe { put(out, text.as_ptr()) },
        None => INVALID_VALUE,
    }
}

/// The driver's answer to cuGetProcAddress: base name (plus the exact versioned
/// names) to the function for a CUDA 12 caller.
fn proc_address(name: &[u8]) -> Option<*mut c_void> {
    macro_rules! table {
        ($( $($key:literal)|+ => $f:ident : $t:ty ),* $(,)?) => {
            match name {
                $( $($key)|+ => Some($f as $t as *mut c_void), )*
                _ => None,
            }
        };
    }
    type F0 = unsafe extern "C" fn() -> CUresult;
    type F1<A> = unsafe extern "C" fn(A) -> CUresult;
    type F2<A, B> = unsafe extern "C" fn(A, B) -> CUresult;
    type F3<A, B, C> = unsafe extern "C" fn(A, B, C) -> CUresult;
    type F4<A, B, C, D> = unsafe extern "C" fn(A, B, C, D) -> CUresult;
    type F5<A, B, C, D, E> = unsafe extern "C" fn(A, B, C, D, E) -> CUresult;
    type Launch = unsafe extern "C" fn(
        Handle,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        Handle,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CUresult;
    table! {
        b"cuInit" => cuInit: F1<c_uint>,
        b"cuDriverGetVersion" => cuDriverGetVersion: F1<*mut c_int>,
        b"cuGetErrorName" => cuGetErrorName: F2<CUresult, *mut *const c_char>,
        b"cuGetErrorString" => cuGetErrorString: F2<CUresult, *mut *const c_char>,
        b"cuDeviceGet" => cuDeviceGet: F2<*mut CUdevice, c_int>,
        b"cuDeviceGetCount" => cuDeviceGetCount: F1<*mut c_int>,
        b"cuDeviceGetName" => cuDeviceGetName: F3<*mut c_char, c_int, CUdevice>,
        b"cuDeviceGetAttribute" => cuDeviceGetAttribute: F3<*mut c_int, c_int, CUdevice>,
        b"cuDeviceTotalMem" | b"cuDeviceTotalMem_v2" => cuDeviceTotalMem_v2: F2<*mut usize, CUdevice>,
        b"cuCtxCreate" | b"cuCtxCreate_v2" => cuCtxCreate_v2: F3<*mut Handle, c_uint, CUdevice>,
        b"cuCtxDestroy" | b"cuCtxDestroy_v2" => cuCtxDestroy_v2: F1<Handle>,
        b"cuDevicePrimaryCtxRetain" => cuDevicePrimaryCtxRetain: F2<*mut Handle, CUdevice>,
        b"cuDevicePrimaryCtxGetState" => cuDevicePrimaryCtxGetState: F3<CUdevice, *mut c_uint, *mut c_int>,
        b"cuDevicePrimaryCtxRelease" | b"cuDevicePrimaryCtxRelease_v2" => cuDevicePrimaryCtxRelease_v2: F1<CUdevice>,
        b"cuCtxSetCurrent" => cuCtxSetCurrent: F1<Handle>,
        b"cuCtxGetCurrent" => cuCtxGetCurrent: F1<*mut Handle>,
        b"cuCtxGetDevice" => cuCtxGetDevice: F1<*mut CUdevice>,
        b"cuCtxSynchronize" => cuCtxSynchronize: F0,
        b"cuMemAlloc" | b"cuMemAlloc_v2" => cuMemAlloc_v2: F2<*mut CUdeviceptr, usize>,
        b"cuMemAllocManaged" => cuMemAllocManaged: F3<*mut CUdeviceptr, usize, c_uint>,
        b"cuMemAllocAsync" => cuMemAllocAsync: F3<*mut CUdeviceptr, usize, Handle>,
        b"cuMemFree" | b"cuMemFree_v2" => cuMemFree_v2: F1<CUdeviceptr>,
        b"cuMemGetInfo" | b"cuMemGetInfo_v2" => cuMemGetInfo_v2: F2<*mut usize, *mut usize>,
        b"cuMemcpy" => cuMemcpy: F3<CUdeviceptr, CUdeviceptr, usize>,
        b"cuMemcpyAsync" => cuMemcpyAsync: F4<CUdeviceptr, CUdeviceptr, usize, Handle>,
        b"cuMemcpyDtoD" | b"cuMemcpyDtoD_v2" => cuMemcpyDtoD_v2: F3<CUdeviceptr, CUdeviceptr, usize>,
        b"cuMemcpyHtoD" | b"cuMemcpyHtoD_v2" => cuMemcpyHtoD_v2: F3<CUdeviceptr, *const c_void, usize>,
        b"cuMemcpyDtoH" | b"cuMemcpyDtoH_v2" => cuMemcpyDtoH_v2: F3<*mut c_void, CUdeviceptr, usize>,
        b"cuMemcpyHtoDAsync" | b"cuMemcpyHtoDAsync_v2" => cuMemcpyHtoDAsync_v2: F4<CUdeviceptr, *const c_void, usize, Handle>,
        b"cuMemcpyDtoHAsync" | b"cuMemcpyDtoHAsync_v2" => cuMemcpyDtoHAsync_v2: F4<*mut c_void, CUdeviceptr, usize, Handle>,
        b"cuModuleLoadData" => cuModuleLoadData: F2<*mut Handle, *const c_void>,
        b"cuModuleGetFunction" => cuModuleGetFunction: F3<*mut Handle, Handle, *const c_char>,
        b"cuLaunchKernel" => cuLaunchKernel: Launch,
        b"cuLaunchKernelEx" => cuLaunchKernelEx: F4<*const c_void, Handle, *mut *mut c_void, *mut *mut c_void>,
        b"cuStreamCreate" => cuStreamCreate: F2<*mut Handle, c_uint>,
        b"cuStreamDestroy" | b"cuStreamDestroy_v2" => cuStreamDestroy_v2: F1<Handle>,
        b"cuStreamSynchronize" => cuStreamSynchronize: F1<Handle>,
        b"cuEventSynchronize" => cuEventSynchronize: F1<Handle>,
        b"cuGetProcAddress" => cuGetProcAddress_v2: F5<*const c_char, *mut *mut c_void, c_int, u64, *mut c_int>,
    }
}

/// # Safety
/// `symbol` is a C string, `pfn` valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    flags: u64,
) -> CUresult {
    // SAFETY: same contract, no status out-param.
    unsafe { cuGetProcAddress_v2(symbol, pfn, cuda_version, flags, std::ptr::null_mut()) }
}

/// # Safety
/// `symbol` is a C string, `pfn` valid for writes, `status` null or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    _cuda_version: c_int,
    _flags: u64,
    status: *mut c_int,
) -> CUresult {
    if symbol.is_null() || pfn.is_null() {
        return INVALID_VALUE;
    }
    // SAFETY: non-null C string per the contract.
    let name = unsafe { CStr::from_ptr(symbol) }.to_bytes();
    let found = proc_address(name);
    // SAFETY: `pfn` valid per the contract; `status` checked for null.
    unsafe {
        pfn.write(found.unwrap_or(std::ptr::null_mut()));
        if !status.is_null() {
            status.write(if found.is_some() { 0 } else { 1 });
        }
    }
    if found.is_some() { SUCCESS } else { NOT_FOUND }
}

// === a constructor that calls back into the driver API ===

/// With `FAKE_CUDA_CTOR_CALLBACK=1`, the fake's load-time constructor calls
/// `cuDeviceGetCount` through the global symbol scope, as a driver (or a library
/// it loads) might. Under the shim that call arrives while the shim is still
/// dlopening the fake: the shim must neither deadlock nor abort.
extern "C" fn ctor_callback() {
    if std::env::var_os("FAKE_CUDA_CTOR_CALLBACK").is_none() {
        return;
    }
    // The main program's handle: its lookups search the global scope (program,
    // preloads), unaffected by this library's own -Bsymbolic binding, which
    // would make RTLD_DEFAULT find our own cuDeviceGetCount first.
    // SAFETY: dlopen(NULL) returns the main program's handle.
    let main = unsafe { libc::dlopen(std::ptr::null(), libc::RTLD_NOW) };
    if main.is_null() {
        return;
    }
    // SAFETY: a live handle and a NUL-terminated name.
    let f = unsafe { libc::dlsym(main, c"cuDeviceGetCount".as_ptr()) };
    if f.is_null() {
        return;
    }
    // SAFETY: the global cuDeviceGetCount has this C signature.
    let f = unsafe {
        std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_int) -> CUresult>(f)
    };
    let mut n = 0;
    // SAFETY: a valid out-pointer.
    unsafe { f(&mut n) };
}

#[used]
#[unsafe(link_section = ".init_array")]
static CTOR_CALLBACK: extern "C" fn() = ctor_callback;
