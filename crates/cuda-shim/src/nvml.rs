//! NVML exports (signatures from nvml.h): what nvidia-smi, DCGM exporters and
//! schedulers' health checks call to see whether a GPU is there.

use std::ffi::{c_char, c_uint, c_void};
use std::sync::OnceLock;

use crate::interpose::interpose;
use crate::real::{Library, NVML_CANDIDATES, load_once};

type NvmlReturn = c_uint;
type Device = *mut c_void;

/// Environment variable: absolute path of the real libnvidia-ml.so.1.
pub const REAL_LIBNVML_ENV: &str = "FAULTLINE_REAL_LIBNVML";

const NVML_SUCCESS: NvmlReturn = 0;
const NVML_ERROR_LIBRARY_NOT_FOUND: NvmlReturn = 12;
const NVML_ERROR_FUNCTION_NOT_FOUND: NvmlReturn = 13;

interpose! {
    api = Nvml, fns = NvmlFns, get = nvml_fns,
    no_library = NVML_ERROR_LIBRARY_NOT_FOUND, no_symbol = NVML_ERROR_FUNCTION_NOT_FOUND,
    ret = NvmlReturn;

    fn nvmlInit() => Other, None;
    fn nvmlInit_v2() => Other, None;
    fn nvmlInitWithFlags(flags: c_uint) => Other, None;
    fn nvmlShutdown() => Untouched, None;
    fn nvmlSystemGetDriverVersion(version: *mut c_char, len: c_uint) => Other, None;
    fn nvmlDeviceGetCount(count: *mut c_uint) => Other, None;
    fn nvmlDeviceGetCount_v2(count: *mut c_uint) => Other, None;
    fn nvmlDeviceGetHandleByIndex(index: c_uint, device: *mut Device) => Other, Some(i64::from(index));
    fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut Device) => Other, Some(i64::from(index));
    fn nvmlDeviceGetIndex(device: Device, index: *mut c_uint) => Other, handle_index(device);
    fn nvmlDeviceGetName(device: Device, name: *mut c_char, len: c_uint) => Other, handle_index(device);
    fn nvmlDeviceGetUUID(device: Device, uuid: *mut c_char, len: c_uint) => Other, handle_index(device);
    fn nvmlDeviceGetMemoryInfo(device: Device, memory: *mut c_void) => Other, handle_index(device);
    fn nvmlDeviceGetUtilizationRates(device: Device, utilization: *mut c_void) => Other, handle_index(device);
    fn nvmlDeviceGetTemperature(device: Device, sensor: c_uint, temp: *mut c_uint) => Other, handle_index(device);
    fn nvmlDeviceGetPowerUsage(device: Device, power: *mut c_uint) => Other, handle_index(device);
    fn nvmlDeviceGetPciInfo_v3(device: Device, pci: *mut c_void) => Other, handle_index(device);
}

type ErrorString = unsafe extern "C" fn(NvmlReturn) -> *const c_char;

#[derive(Debug)]
struct Nvml {
    fns: NvmlFns,
    error_string: Option<ErrorString>,
    _lib: Library,
}

static NVML: OnceLock<Option<Nvml>> = OnceLock::new();

fn nvml() -> Option<&'static Nvml> {
    load_once(&NVML, || {
        let lib = Library::find(REAL_LIBNVML_ENV, NVML_CANDIDATES)?;
        // SAFETY: null or the real nvmlErrorString, `const char *(nvmlReturn_t)`.
        let error_string = unsafe {
            std::mem::transmute::<*mut c_void, Option<ErrorString>>(lib.sym(c"nvmlErrorString"))
        };
        Some(Nvml {
            fns: NvmlFns::load(&lib),
            error_string,
            _lib: lib,
        })
    })
}

fn nvml_fns() -> Option<&'static NvmlFns> {
    nvml().map(|n| &n.fns)
}

/// The ordinal behind an NVML handle, asked of the real library.
fn handle_index(device: Device) -> Option<i64> {
    let get = nvml_fns()?.nvmlDeviceGetIndex?;
    let mut index: c_uint = 0;
    // SAFETY: the real nvmlDeviceGetIndex with the caller's handle and a valid
    // out-pointer.
    let rc = unsafe { get(device, &mut index) };
    (rc == NVML_SUCCESS).then_some(i64::from(index))
}

/// nvmlErrorString, forwarded (never faulted): callers format our injected codes
/// with it.
///
/// # Safety
/// None beyond NVML's: any code is accepted.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn nvmlErrorString(result: NvmlReturn) -> *const c_char {
    match nvml().and_then(|n| n.error_string) {
        // SAFETY: the real function, which accepts any code.
        Some(f) => unsafe { f(result) },
        None => c"faultline shim: real NVML library not found".as_ptr(),
    }
}

/// Every NVML symbol the shim exports.
pub fn exported_symbols() -> impl Iterator<Item = &'static str> {
    NvmlFns::NAMES.iter().copied().chain(["nvmlErrorString"])
}
