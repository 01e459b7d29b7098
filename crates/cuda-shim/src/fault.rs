//! Per call: pass, fail with a code, or delay. The state file is opened once; an
//! unfaulted call costs the `OnceLock` check and one atomic load.

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::state::{FaultMode, Reader, STATE_ENV, unix_ns};

/// Which library the call belongs to: picks the error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Cuda,
    Nvml,
}

/// What a call does, for the rules below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Memory allocation: the only calls an out_of_memory fault fails.
    Alloc,
    /// Kernel launch: delayed by gpu.slow.
    Launch,
    /// Synchronisation: delayed by gpu.slow.
    Sync,
    /// Everything else a fault can fail.
    Other,
    /// Never faulted: version queries, symbol lookup, error strings, shutdown.
    Untouched,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Fail(u32),
    Delay(std::time::Duration),
}

const CUDA_ERROR_OUT_OF_MEMORY: u32 = 2;

static STATE: OnceLock<Option<Reader>> = OnceLock::new();

fn state() -> Option<&'static Reader> {
    STATE
        .get_or_init(|| {
            let path = std::env::var_os(STATE_ENV)?;
            Reader::open(Path::new(&path))
        })
        .as_ref()
}

/// Per process: the fault generation `CALLS` counts for, and the count, for
/// `after_calls`. Racy across threads by one or two calls, which is fine for
/// "after about N calls".
static CALLS_SEQ: AtomicU64 = AtomicU64::new(u64::MAX);
static CALLS: AtomicU64 = AtomicU64::new(0);

/// Decides one call. `device` names the device ordinal the call acts on; it is
/// only asked (it may call the driver) when a fault selects some devices.
#[inline(always)]
pub(crate) fn decide(api: Api, class: Class, device: impl FnOnce() -> Option<i64>) -> Verdict {
    if class == Class::Untouched {
        return Verdict::Pass;
    }
    match state() {
        Some(r) if r.armed() => decide_armed(r, api, class, device),
        _ => Verdict::Pass,
    }
}

#[cold]
#[inline(never)]
fn decide_armed(
    r: &Reader,
    api: Api,
    class: Class,
    device: impl FnOnce() -> Option<i64>,
) -> Verdict {
    let Some(snap) = r.snapshot() else {
        return Verdict::Pass;
    };
    let Some(now) = unix_ns(SystemTime::now()) else {
        return Verdict::Pass;
    };
    let Some(fault) = snap.active_at(now) else {
        return Verdict::Pass;
    };
    let verdict = match (fault.mode, api) {
        (FaultMode::Unavailable { cuda_error, .. }, Api::Cuda) => {
            if cuda_error == 0 || (cuda_error == CUDA_ERROR_OUT_OF_MEMORY && class != Class::Alloc)
            {
                return Verdict::Pass;
            }
            Verdict::Fail(cuda_error)
        }
        (FaultMode::Unavailable { nvml_error, .. }, Api::Nvml) => {
            if nvml_error == 0 {
                return Verdict::Pass;
            }
            Verdict::Fail(nvml_error)
        }
        (FaultMode::Slow { delay }, Api::Cuda) if matches!(class, Class::Launch | Class::Sync) => {
            Verdict::Delay(delay)
        }
        (FaultMode::Slow { .. }, _) => return Verdict::Pass,
    };
    if !fault.devices.is_all() {
        match device() {
            Some(d) if fault.devices.contains(d) => {}
            _ => return Verdict::Pass,
        }
    }
    if fault.after_calls > 0 {
        if CALLS_SEQ.swap(snap.seq, Ordering::Relaxed) != snap.seq {
            CALLS.store(0, Ordering::Relaxed);
        }
        if CALLS.fetch_add(1, Ordering::Relaxed) < fault.after_calls {
            return Verdict::Pass;
        }
    }
    r.count_faulted();
    verdict
}
