//! CUDA driver API exports (signatures from cuda.h, CUDA 12) and the
//! cuGetProcAddress interception that catches the CUDA 12 runtime.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::sync::OnceLock;

use crate::interpose::interpose;
use crate::real::{CUDA_CANDIDATES, Library, load_once};

pub(crate) type CUresult = c_uint;
type CUdevice = c_int;
type CUdeviceptr = u64;
type Handle = *mut c_void;

/// Environment variable: absolute path of the real libcuda.so.1.
pub const REAL_LIBCUDA_ENV: &str = "FAULTLINE_REAL_LIBCUDA";

const CUDA_SUCCESS: CUresult = 0;
/// What a process sees when no driver can be loaded: like a machine without one.
const CUDA_ERROR_NO_DEVICE: CUresult = 100;
const CUDA_ERROR_NOT_FOUND: CUresult = 500;
const CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM: u64 = 1 << 1;

interpose! {
    api = Cuda, fns = CudaFns, get = cuda_fns,
    no_library = CUDA_ERROR_NO_DEVICE, no_symbol = CUDA_ERROR_NOT_FOUND, ret = CUresult;

    fn cuInit(flags: c_uint) => Other, None;
    fn cuDriverGetVersion(version: *mut c_int) => Untouched, None;
    fn cuGetErrorString(error: CUresult, out: *mut *const c_char) => Untouched, None;
    fn cuGetErrorName(error: CUresult, out: *mut *const c_char) => Untouched, None;
    fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) => Other, Some(i64::from(ordinal));
    fn cuDeviceGetCount(count: *mut c_int) => Other, None;
    fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) => Other, Some(i64::from(dev));
    fn cuDeviceGetAttribute(value: *mut c_int, attrib: c_int, dev: CUdevice) => Other, Some(i64::from(dev));
    fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) => Other, Some(i64::from(dev));
    fn cuCtxCreate_v2(ctx: *mut Handle, flags: c_uint, dev: CUdevice) => Other, Some(i64::from(dev));
    fn cuCtxDestroy_v2(ctx: Handle) => Other, None;
    fn cuDevicePrimaryCtxRetain(ctx: *mut Handle, dev: CUdevice) => Other, Some(i64::from(dev));
    fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) => Other, Some(i64::from(dev));
    fn cuCtxSetCurrent(ctx: Handle) => Other, None;
    fn cuCtxGetCurrent(ctx: *mut Handle) => Other, ctx_device();
    fn cuCtxGetDevice(device: *mut CUdevice) => Other, ctx_device();
    fn cuCtxSynchronize() => Sync, ctx_device();
    fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, size: usize) => Alloc, ctx_device();
    fn cuMemAllocManaged(dptr: *mut CUdeviceptr, size: usize, flags: c_uint) => Alloc, ctx_device();
    fn cuMemAllocAsync(dptr: *mut CUdeviceptr, size: usize, stream: Handle) => Alloc, ctx_device();
    fn cuMemFree_v2(dptr: CUdeviceptr) => Other, ctx_device();
    fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) => Other, ctx_device();
    fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, size: usize) => Other, ctx_device();
    fn cuMemcpyAsync(dst: CUdeviceptr, src: CUdeviceptr, size: usize, stream: Handle) => Other, ctx_device();
    fn cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, size: usize) => Other, ctx_device();
    fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, size: usize) => Other, ctx_device();
    fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, size: usize) => Other, ctx_device();
    fn cuMemcpyHtoDAsync_v2(dst: CUdeviceptr, src: *const c_void, size: usize, stream: Handle) => Other, ctx_device();
    fn cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: CUdeviceptr, size: usize, stream: Handle) => Other, ctx_device();
    fn cuModuleLoadData(module: *mut Handle, image: *const c_void) => Other, ctx_device();
    fn cuModuleGetFunction(func: *mut Handle, module: Handle, name: *const c_char) => Other, ctx_device();
    fn cuLaunchKernel(
        func: Handle, grid_x: c_uint, grid_y: c_uint, grid_z: c_uint,
        block_x: c_uint, block_y: c_uint, block_z: c_uint, shared_mem: c_uint,
        stream: Handle, params: *mut *mut c_void, extra: *mut *mut c_void,
    ) => Launch, ctx_device();
    fn cuLaunchKernelEx(config: *const c_void, func: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) => Launch, ctx_device();
    fn cuStreamCreate(stream: *mut Handle, flags: c_uint) => Other, ctx_device();
    fn cuStreamDestroy_v2(stream: Handle) => Other, ctx_device();
    fn cuStreamSynchronize(stream: Handle) => Sync, ctx_device();
    fn cuEventSynchronize(event: Handle) => Sync, ctx_device();
}

type GetProcAddressV1 =
    unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64) -> CUresult;
type GetProcAddressV2 =
    unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int) -> CUresult;

/// The real driver, opened on the first call.
#[derive(Debug)]
struct Cuda {
    fns: CudaFns,
    get_proc_address: Option<GetProcAddressV1>,
    get_proc_address_v2: Option<GetProcAddressV2>,
    _lib: Library,
}

static CUDA: OnceLock<Option<Cuda>> = OnceLock::new();

fn cuda() -> Option<&'static Cuda> {
    load_once(&CUDA, || {
        let lib = Library::find(REAL_LIBCUDA_ENV, CUDA_CANDIDATES)?;
        // SAFETY: null or the real cuGetProcAddress, whose C signature (CUDA 11.3)
        // is GetProcAddressV1; null becomes None.
        let get_proc_address = unsafe {
            std::mem::transmute::<*mut c_void, Option<GetProcAddressV1>>(
                lib.sym(c"cuGetProcAddress"),
            )
        };
        // SAFETY: null or the real cuGetProcAddress_v2 (CUDA 12.0), signature
        // GetProcAddressV2.
        let get_proc_address_v2 = unsafe {
            std::mem::transmute::<*mut c_void, Option<GetProcAddressV2>>(
                lib.sym(c"cuGetProcAddress_v2"),
            )
        };
        Some(Cuda {
            fns: CudaFns::load(&lib),
            get_proc_address,
            get_proc_address_v2,
            _lib: lib,
        })
    })
}

fn cuda_fns() -> Option<&'static CudaFns> {
    cuda().map(|c| &c.fns)
}

/// The ordinal of the current context's device, asked of the real driver (never
/// of our own wrapper, which would recurse into the fault check).
fn ctx_device() -> Option<i64> {
    let get = cuda_fns()?.cuCtxGetDevice?;
    let mut dev: CUdevice = -1;
    // SAFETY: the real cuCtxGetDevice with a valid out-pointer.
    let rc = unsafe { get(&mut dev) };
    (rc == CUDA_SUCCESS).then_some(i64::from(dev))
}

/// For the runtime's cuGetProcAddress("cuMemAlloc", 12040, ...) when the driver
/// hands back an address we cannot match to an exported symbol: base name, the
/// oldest cudaVersion the mapping holds for, and our export with that ABI. Only
/// used below CUDA 13, whose cuda.h changed some of these (e.g. cuCtxCreate);
/// cuCtxCreate is left out for the same reason (v3 and v4 share the base name).
const BY_BASE_NAME: &[(&str, c_int, &str)] = &[
    ("cuInit", 2000, "cuInit"),
    ("cuDriverGetVersion", 2020, "cuDriverGetVersion"),
    ("cuGetErrorString", 6000, "cuGetErrorString"),
    ("cuGetErrorName", 6000, "cuGetErrorName"),
    ("cuDeviceGet", 2000, "cuDeviceGet"),
    ("cuDeviceGetCount", 2000, "cuDeviceGetCount"),
    ("cuDeviceGetName", 2000, "cuDeviceGetName"),
    ("cuDeviceGetAttribute", 2000, "cuDeviceGetAttribute"),
    ("cuDeviceTotalMem", 3020, "cuDeviceTotalMem_v2"),
    ("cuCtxDestroy", 4000, "cuCtxDestroy_v2"),
    ("cuDevicePrimaryCtxRetain", 7000, "cuDevicePrimaryCtxRetain"),
    (
        "cuDevicePrimaryCtxRelease",
        11000,
        "cuDevicePrimaryCtxRelease_v2",
    ),
    ("cuCtxSetCurrent", 4000, "cuCtxSetCurrent"),
    ("cuCtxGetCurrent", 4000, "cuCtxGetCurrent"),
    ("cuCtxGetDevice", 2000, "cuCtxGetDevice"),
    ("cuCtxSynchronize", 2000, "cuCtxSynchronize"),
    ("cuMemAlloc", 3020, "cuMemAlloc_v2"),
    ("cuMemAllocManaged", 6000, "cuMemAllocManaged"),
    ("cuMemAllocAsync", 11020, "cuMemAllocAsync"),
    ("cuMemFree", 3020, "cuMemFree_v2"),
    ("cuMemGetInfo", 3020, "cuMemGetInfo_v2"),
    ("cuMemcpy", 4000, "cuMemcpy"),
    ("cuMemcpyAsync", 4000, "cuMemcpyAsync"),
    ("cuMemcpyHtoD", 3020, "cuMemcpyHtoD_v2"),
    ("cuMemcpyDtoH", 3020, "cuMemcpyDtoH_v2"),
    ("cuMemcpyDtoD", 3020, "cuMemcpyDtoD_v2"),
    ("cuMemcpyHtoDAsync", 3020, "cuMemcpyHtoDAsync_v2"),
    ("cuMemcpyDtoHAsync", 3020, "cuMemcpyDtoHAsync_v2"),
    ("cuModuleLoadData", 2000, "cuModuleLoadData"),
    ("cuModuleGetFunction", 2000, "cuModuleGetFunction"),
    ("cuLaunchKernel", 4000, "cuLaunchKernel"),
    ("cuLaunchKernelEx", 11060, "cuLaunchKernelEx"),
    ("cuStreamCreate", 2000, "cuStreamCreate"),
    ("cuStreamDestroy", 4000, "cuStreamDestroy_v2"),
    ("cuStreamSynchronize", 2000, "cuStreamSynchronize"),
    ("cuEventSynchronize", 2000, "cuEventSynchronize"),
    ("cuGetProcAddress", 12000, "cuGetProcAddress_v2"),
    ("cuGetProcAddress", 11030, "cuGetProcAddress"),
];

/// Our wrapper for what the real cuGetProcAddress returned, if we wrap it.
fn substitute(
    cuda: &Cuda,
    symbol: *const c_char,
    real: *mut c_void,
    cuda_version: c_int,
    flags: u64,
) -> Option<*mut c_void> {
    if real.is_null() {
        return None;
    }
    // Exact: the driver returned the very function we resolved by name.
    if let Some(ours) = cuda.fns.ours_for_real(real) {
        return Some(ours);
    }
    if cuda
        .get_proc_address
        .is_some_and(|f| f as *mut c_void == real)
    {
        return Some(cuGetProcAddress as GetProcAddressV1 as *mut c_void);
    }
    if cuda
        .get_proc_address_v2
        .is_some_and(|f| f as *mut c_void == real)
    {
        return Some(cuGetProcAddress_v2 as GetProcAddressV2 as *mut c_void);
    }
    // By name, where the ABI behind the base name is known. Per-thread-stream
    // variants (_ptsz/_ptds) are not wrapped: the real pointer goes back.
    if symbol.is_null()
        || flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM != 0
        || cuda_version >= 13000
    {
        return None;
    }
    // SAFETY: non-null, and the driver just accepted it as a C string.
    let name = unsafe { CStr::from_ptr(symbol) }.to_bytes();
    let (_, _, export) = BY_BASE_NAME
        .iter()
        .find(|(base, since, _)| base.as_bytes() == name && cuda_version >= *since)?;
    match *export {
        "cuGetProcAddress" => Some(cuGetProcAddress as GetProcAddressV1 as *mut c_void),
        "cuGetProcAddress_v2" => Some(cuGetProcAddress_v2 as GetProcAddressV2 as *mut c_void),
        other => CudaFns::ours_by_name(other.as_bytes()),
    }
}

/// Swaps `*pfn` for our wrapper after a successful real lookup.
///
/// # Safety
/// `pfn` is null or valid for reads and writes of a pointer.
unsafe fn rewrite(
    cuda: &Cuda,
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) {
    if pfn.is_null() {
        return;
    }
    // SAFETY: non-null and valid per this function's contract.
    let real = unsafe { *pfn };
    if let Some(ours) = substitute(cuda, symbol, real, version, flags) {
        // SAFETY: as above.
        unsafe { *pfn = ours };
    }
}

/// cuGetProcAddress (CUDA 11.3 signature): the real lookup, then our wrapper in
/// place of every function the shim wraps.
///
/// # Safety
/// The contract of the driver's cuGetProcAddress.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    flags: u64,
) -> CUresult {
    let Some(cuda) = cuda() else {
        return CUDA_ERROR_NO_DEVICE;
    };
    let Some(real) = cuda.get_proc_address else {
        return CUDA_ERROR_NOT_FOUND;
    };
    // SAFETY: the caller's arguments, unchanged, to the real function.
    let rc = unsafe { real(symbol, pfn, cuda_version, flags) };
    if rc == CUDA_SUCCESS {
        // SAFETY: the real call succeeded, so `pfn` was a valid out-pointer.
        unsafe { rewrite(cuda, symbol, pfn, cuda_version, flags) };
    }
    rc
}

/// cuGetProcAddress_v2 (CUDA 12.0 signature, with the symbol-status out-param):
/// the entry point the CUDA 12 runtime resolves everything else through.
///
/// # Safety
/// The contract of the driver's cuGetProcAddress_v2.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    flags: u64,
    symbol_status: *mut c_int,
) -> CUresult {
    let Some(cuda) = cuda() else {
        return CUDA_ERROR_NO_DEVICE;
    };
    let Some(real) = cuda.get_proc_address_v2 else {
        return CUDA_ERROR_NOT_FOUND;
    };
    // SAFETY: the caller's arguments, unchanged, to the real function.
    let rc = unsafe { real(symbol, pfn, cuda_version, flags, symbol_status) };
    if rc == CUDA_SUCCESS {
        // SAFETY: the real call succeeded, so `pfn` was a valid out-pointer.
        unsafe { rewrite(cuda, symbol, pfn, cuda_version, flags) };
    }
    rc
}

/// Every CUDA symbol the shim exports.
pub fn exported_symbols() -> impl Iterator<Item = &'static str> {
    CudaFns::NAMES
        .iter()
        .copied()
        .chain(["cuGetProcAddress", "cuGetProcAddress_v2"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_base_name_fallback_points_at_an_export() {
        let exports: Vec<&str> = exported_symbols().collect();
        for (base, since, export) in BY_BASE_NAME {
            assert!(
                exports.contains(export),
                "{base} -> {export} is not exported"
            );
            assert!(*since >= 2000 && *since < 13000, "{base}: {since}");
            assert!(export.starts_with(base), "{base} -> {export}");
        }
    }

    #[test]
    fn wrappers_resolve_by_exported_name() {
        for name in CudaFns::NAMES {
            assert!(CudaFns::ours_by_name(name.as_bytes()).is_some(), "{name}");
        }
        assert!(CudaFns::ours_by_name(b"cuNotAThing").is_none());
    }
}
