//! Test fixture: a fake NVML (`libnvidia-ml.so.1`, the real SONAME), the twin of
//! `crates/fake-cuda`. It answers the NVML calls the shim wraps with plausible
//! results for two devices ("Faultline Fake GPU 0/1", 16 GiB, 1 GiB used), and
//! has one entry point the shim does not wrap (`nvmlDeviceGetFanSpeed`), so tests
//! can show unwrapped calls still reach it.
//!
//! Limits: static answers; it shares nothing with the fake driver.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

type Handle = *mut c_void;

const SUCCESS: NvmlReturn = 0;
const DEVICES: c_int = 2;
const TOTAL_MEM: u64 = 16 << 30;
const USED_MEM: u64 = 1 << 30;

/// Writes `value` through an out-pointer, or reports INVALID_ARGUMENT for null.
///
/// # Safety
/// `ptr` is null or valid for a write of `T`.
unsafe fn put<T>(ptr: *mut T, value: T) -> NvmlReturn {
    if ptr.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: non-null and valid per the contract.
    unsafe { ptr.write(value) };
    SUCCESS
}

type NvmlReturn = c_uint;
const NVML_ERROR_UNINITIALIZED: NvmlReturn = 1;
const NVML_ERROR_INVALID_ARGUMENT: NvmlReturn = 2;
const NVML_ERROR_INSUFFICIENT_SIZE: NvmlReturn = 7;

static NVML_INIT: AtomicBool = AtomicBool::new(false);

/// nvmlMemory_t.
#[repr(C)]
struct NvmlMemory {
    total: u64,
    free: u64,
    used: u64,
}

/// nvmlUtilization_t.
#[repr(C)]
struct NvmlUtilization {
    gpu: c_uint,
    memory: c_uint,
}

fn nvml_device(device: Handle) -> Result<c_uint, NvmlReturn> {
    if !NVML_INIT.load(Ordering::Acquire) {
        return Err(NVML_ERROR_UNINITIALIZED);
    }
    let index = (device as usize)
        .checked_sub(1)
        .ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    c_uint::try_from(index)
        .ok()
        .filter(|i| (*i as c_int) < DEVICES)
        .ok_or(NVML_ERROR_INVALID_ARGUMENT)
}

/// Copies `text` and a NUL into `buf` of `len` bytes.
///
/// # Safety
/// `buf` is null or valid for `len` bytes of writes.
unsafe fn put_str(buf: *mut c_char, len: c_uint, text: &str) -> NvmlReturn {
    if buf.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if text.len() + 1 > len as usize {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    // SAFETY: `buf` holds at least text.len() + 1 bytes (checked above).
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr().cast::<c_char>(), buf, text.len());
        buf.add(text.len()).write(0);
    }
    SUCCESS
}

/// # Safety
/// C ABI fixture.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit_v2() -> NvmlReturn {
    NVML_INIT.store(true, Ordering::Release);
    SUCCESS
}

/// # Safety
/// C ABI fixture.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit() -> NvmlReturn {
    NVML_INIT.store(true, Ordering::Release);
    SUCCESS
}

/// # Safety
/// C ABI fixture.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> NvmlReturn {
    NVML_INIT.store(true, Ordering::Release);
    SUCCESS
}

/// # Safety
/// C ABI fixture.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlShutdown() -> NvmlReturn {
    NVML_INIT.store(false, Ordering::Release);
    SUCCESS
}

/// # Safety
/// C ABI fixture.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlErrorString(result: NvmlReturn) -> *const c_char {
    match result {
        0 => c"Success",
        1 => c"Uninitialized",
        2 => c"Invalid Argument",
        7 => c"Insufficient Size",
        15 => c"GPU is lost",
        _ => c"Unknown Error",
    }
    .as_ptr()
}

/// # Safety
/// `version` valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    len: c_uint,
) -> NvmlReturn {
    if !NVML_INIT.load(Ordering::Acquire) {
        return NVML_ERROR_UNINITIALIZED;
    }
    // SAFETY: caller's contract.
    unsafe { put_str(version, len, "550.00.fake") }
}

/// # Safety
/// `count` valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> NvmlReturn {
    if !NVML_INIT.load(Ordering::Acquire) {
        return NVML_ERROR_UNINITIALIZED;
    }
    // SAFETY: caller's contract.
    unsafe { put(count, DEVICES as c_uint) }
}

/// # Safety
/// `count` valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount(count: *mut c_uint) -> NvmlReturn {
    // SAFETY: same contract.
    unsafe { nvmlDeviceGetCount_v2(count) }
}

/// # Safety
/// `device` valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut Handle,
) -> NvmlReturn {
    if !NVML_INIT.load(Ordering::Acquire) {
        return NVML_ERROR_UNINITIALIZED;
    }
    if index >= DEVICES as c_uint {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: caller's contract.
    unsafe { put(device, (index as usize + 1) as Handle) }
}

/// # Safety
/// `device` valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(
    index: c_uint,
    device: *mut Handle,
) -> NvmlReturn {
    // SAFETY: same contract.
    unsafe { nvmlDeviceGetHandleByIndex_v2(index, device) }
}

/// # Safety
/// `index` valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: Handle, index: *mut c_uint) -> NvmlReturn {
    match nvml_device(device) {
        // SAFETY: caller's contract.
        Ok(i) => unsafe { put(index, i) },
        Err(e) => e,
    }
}

/// # Safety
/// `name` valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: Handle,
    name: *mut c_char,
    len: c_uint,
) -> NvmlReturn {
    match nvml_device(device) {
        // SAFETY: caller's contract.
        Ok(i) => unsafe { put_str(name, len, &format!("Faultline Fake GPU {i}")) },
        Err(e) => e,
    }
}

/// # Safety
/// `uuid` valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: Handle,
    uuid: *mut c_char,
    len: c_uint,
) -> NvmlReturn {
    match nvml_device(device) {
        // SAFETY: caller's contract.
        Ok(i) => unsafe {
            put_str(
                uuid,
                len,
                &format!("GPU-fa171e00-0000-4000-8000-00000000000{i}"),
            )
        },
        Err(e) => e,
    }
}

/// # Safety
/// `memory` points to an nvmlMemory_t.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: Handle,
    memory: *mut c_void,
) -> NvmlReturn {
    if let Err(e) = nvml_device(device) {
        return e;
    }
    let m = NvmlMemory {
        total: TOTAL_MEM,
        free: TOTAL_MEM - USED_MEM,
        used: USED_MEM,
    };
    // SAFETY: caller's contract.
    unsafe { put(memory.cast::<NvmlMemory>(), m) }
}

/// # Safety
/// `utilization` points to an nvmlUtilization_t.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: Handle,
    utilization: *mut c_void,
) -> NvmlReturn {
    if let Err(e) = nvml_device(device) {
        return e;
    }
    let u = NvmlUtilization { gpu: 0, memory: 0 };
    // SAFETY: caller's contract.
    unsafe { put(utilization.cast::<NvmlUtilization>(), u) }
}

/// # Safety
/// `temp` valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: Handle,
    _sensor: c_uint,
    temp: *mut c_uint,
) -> NvmlReturn {
    match nvml_device(device) {
        // SAFETY: caller's contract.
        Ok(_) => unsafe { put(temp, 40) },
        Err(e) => e,
    }
}

/// # Safety
/// `power` valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(device: Handle, power: *mut c_uint) -> NvmlReturn {
    match nvml_device(device) {
        // SAFETY: caller's contract.
        Ok(_) => unsafe { put(power, 75_000) },
        Err(e) => e,
    }
}

/// Not wrapped by the shim.
///
/// # Safety
/// `speed` valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFanSpeed(device: Handle, speed: *mut c_uint) -> NvmlReturn {
    match nvml_device(device) {
        // SAFETY: caller's contract.
        Ok(_) => unsafe { put(speed, 30) },
        Err(e) => e,
    }
}
