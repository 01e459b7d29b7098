//! `gpu.memory_hog` and `gpu.compute_hog` on a real device, through the CUDA
//! driver loaded at run time (cudarc, `dynamic-loading`).
//!
//! cudarc panics when it cannot load the driver, so every hog asks
//! [`faultline_cuda_shim::driver_present`] first and fails with
//! [`GpuFaultError::NoDriver`], holding nothing; driver calls also run under
//! `catch_unwind`, so a driver that loads but lacks a symbol cudarc wants is an
//! error, not a dead agent. Each hog lives on a thread of its own that owns the
//! CUDA context; revert stops the thread and joins it. What a hog holds dies with
//! the agent's process, so a revert after a crash has nothing left to undo.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cudarc::driver::CudaContext;
use faultline_spec::fault::{GpuComputeHog, GpuMemoryHog};

use super::GpuFaultError;

/// How long inject waits for the hog thread to take its share of the device.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The compute hog's duty cycle: busy for `utilization` of each period.
const PERIOD: Duration = Duration::from_millis(100);

/// What a hog holds, for the agent's fault status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HogStatus {
    /// Whether the hog thread is running.
    pub running: bool,
    /// Bytes held (memory hog).
    pub bytes: u64,
    /// Busy kernels completed (compute hog).
    pub kernels: u64,
    /// The error that stopped the hog thread early, if one did.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Holder {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

/// Shared by both hogs: a thread that takes something and keeps it until told.
#[derive(Debug)]
struct Hog {
    fault_id: String,
    kind: &'static str,
    device: u32,
    holder: Mutex<Option<Holder>>,
    status: Arc<Mutex<HogStatus>>,
}

type Work = Box<dyn FnOnce(&Sender<Result<(), String>>, &Receiver<()>, &Mutex<HogStatus>) + Send>;

impl Hog {
    fn new(fault_id: &str, kind: &'static str, device: u32) -> Hog {
        Hog {
            fault_id: fault_id.to_owned(),
            kind,
            device,
            holder: Mutex::new(None),
            status: Arc::new(Mutex::new(HogStatus::default())),
        }
    }

    fn inject(&self, work: Work) -> Result<(), GpuFaultError> {
        let mut holder = lock(&self.holder);
        if holder.as_ref().is_some_and(|h| !h.thread.is_finished()) {
            return Ok(());
        }
        if !faultline_cuda_shim::driver_present() {
            return Err(GpuFaultError::NoDriver { kind: self.kind });
        }
        let (stop_tx, stop_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let status = Arc::clone(&self.status);
        *lock(&status) = HogStatus::default();
        let thread = std::thread::Builder::new()
            .name(format!("faultline-{}", self.kind))
            .spawn(move || {
                let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    work(&ready_tx, &stop_rx, &status);
                }));
                if let Err(panic) = run {
                    let msg = panic_message(&panic);
                    let _ = ready_tx.send(Err(format!("the CUDA bindings panicked: {msg}")));
                    lock(&status).last_error = Some(msg);
                }
                lock(&status).running = false;
            })
            .map_err(|e| self.driver_err(format!("cannot start the hog thread: {e}")))?;
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(())) => {
                *holder = Some(Holder {
                    stop: stop_tx,
                    thread,
                });
                tracing::info!(fault = %self.fault_id, kind = self.kind, device = self.device, "gpu hog running");
                Ok(())
            }
            Ok(Err(reason)) => {
                let _ = thread.join();
                Err(self.driver_err(reason))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                Err(self.driver_err("the hog thread ended before it was ready"))
            }
            Err(RecvTimeoutError::Timeout) => {
                // Keep the holder so a revert stops it when it gets there.
                *holder = Some(Holder {
                    stop: stop_tx,
                    thread,
                });
                Err(self.driver_err(format!(
                    "not ready within {READY_TIMEOUT:?}; revert to stop it"
                )))
            }
        }
    }

    fn revert(&self) -> Result<(), GpuFaultError> {
        let Some(h) = lock(&self.holder).take() else {
            return Ok(());
        };
        let _ = h.stop.send(());
        h.thread.join().map_err(|_| GpuFaultError::NotReverted {
            what: format!("{} on device {}", self.kind, self.device),
            reason: "the hog thread panicked while stopping".into(),
        })?;
        tracing::info!(fault = %self.fault_id, kind = self.kind, "gpu hog stopped");
        Ok(())
    }

    fn verify_reverted(&self) -> Result<(), GpuFaultError> {
        let running = lock(&self.holder).is_some() || lock(&self.status).running;
        if running {
            return Err(GpuFaultError::NotReverted {
                what: format!("{} on device {}", self.kind, self.device),
                reason: "the hog thread still runs".into(),
            });
        }
        Ok(())
    }

    fn status(&self) -> HogStatus {
        lock(&self.status).clone()
    }

    fn driver_err(&self, reason: impl ToString) -> GpuFaultError {
        GpuFaultError::Driver {
            device: self.device,
            reason: reason.to_string(),
        }
    }
}

// === impl MemoryHogFault ===

/// How much memory a memory hog takes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Amount {
    Bytes(u64),
    /// Of the device's total memory, 0..=1.
    Share(f64),
}

/// `gpu.memory_hog`: allocates `size`, or `share` of the device's total memory,
/// and holds it (zeroed, so the pages are really committed) until revert.
#[derive(Debug)]
pub struct MemoryHogFault {
    hog: Hog,
    amount: Amount,
}

impl MemoryHogFault {
    /// Checks the parameters; touches nothing (the driver is not even loaded).
    pub fn new(fault_id: &str, spec: &GpuMemoryHog) -> Result<Self, GpuFaultError> {
        let amount = match (spec.size, spec.share) {
            (Some(s), None) if s.bytes() > 0 => Amount::Bytes(s.bytes()),
            (None, Some(p)) if p.ratio() > 0.0 => Amount::Share(p.ratio()),
            _ => {
                return Err(GpuFaultError::BadParams(
                    "gpu.memory_hog needs exactly one of `size` and `share`, above zero".into(),
                ));
            }
        };
        Ok(MemoryHogFault {
            hog: Hog::new(fault_id, "gpu.memory_hog", spec.device),
            amount,
        })
    }

    /// Takes the memory; returns once it is allocated (or with the driver's
    /// error, e.g. out of memory, holding nothing).
    pub fn inject(&self) -> Result<(), GpuFaultError> {
        let (device, amount) = (self.hog.device, self.amount);
        self.hog.inject(Box::new(move |ready, stop, status| {
            let held = (|| {
                let ctx = CudaContext::new(device as usize).map_err(|e| e.to_string())?;
                let total = ctx.total_mem().map_err(|e| e.to_string())?;
                let bytes = match amount {
                    Amount::Bytes(b) => usize::try_from(b).unwrap_or(usize::MAX),
                    // Truncation is the intent: a share never rounds past the total.
                    Amount::Share(r) => (total as f64 * r) as usize,
                };
                if bytes > total {
                    return Err(format!(
                        "asked for {bytes} bytes; the device has {total} in all"
                    ));
                }
                let stream = ctx.default_stream();
                let buf = stream
                    .alloc_zeros::<u8>(bytes)
                    .map_err(|e| format!("allocating {bytes} bytes: {e}"))?;
                stream.synchronize().map_err(|e| e.to_string())?;
                Ok((ctx, buf, bytes))
            })();
            match held {
                Ok((_ctx, buf, bytes)) => {
                    {
                        let mut s = lock(status);
                        s.running = true;
                        s.bytes = bytes as u64;
                    }
                    let _ = ready.send(Ok(()));
                    // Held until revert (or the fault object is dropped).
                    let _ = stop.recv();
                    drop(buf);
                    lock(status).bytes = 0;
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        }))
    }

    /// Frees the memory. Idempotent; a fresh object has nothing to free (the
    /// memory of a dead agent died with it).
    pub fn revert(&self) -> Result<(), GpuFaultError> {
        self.hog.revert()
    }

    pub fn verify_reverted(&self) -> Result<(), GpuFaultError> {
        self.hog.verify_reverted()
    }

    pub fn status(&self) -> HogStatus {
        self.hog.status()
    }
}

// === impl ComputeHogFault ===

/// `gpu.compute_hog`: keeps every SM of the device spinning for `utilization`
/// of each 100 ms period, in kernels of at most 10 ms so revert is prompt.
#[derive(Debug)]
pub struct ComputeHogFault {
    hog: Hog,
    utilization: f64,
}

impl ComputeHogFault {
    /// Checks the parameters; touches nothing.
    pub fn new(fault_id: &str, spec: &GpuComputeHog) -> Result<Self, GpuFaultError> {
        let utilization = spec.utilization.ratio();
        if utilization <= 0.0 {
            return Err(GpuFaultError::BadParams(
                "gpu.compute_hog needs `utilization` above 0%".into(),
            ));
        }
        Ok(ComputeHogFault {
            hog: Hog::new(fault_id, "gpu.compute_hog", spec.device),
            utilization,
        })
    }

    /// Loads the busy kernel and starts the duty cycle.
    pub fn inject(&self) -> Result<(), GpuFaultError> {
        let (device, utilization) = (self.hog.device, self.utilization);
        self.hog.inject(Box::new(move |ready, stop, status| {
            let setup = (|| {
                let ctx = CudaContext::new(device as usize).map_err(|e| e.to_string())?;
                let khz = ctx
                    .attribute(
                        cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE,
                    )
                    .map_err(|e| e.to_string())?;
                let kernel = faultline_cuda_shim::busy::BusyKernel::load(&ctx)
                    .map_err(|e| format!("loading the busy kernel: {e}"))?;
                Ok((ctx, kernel, u64::try_from(khz.max(1)).unwrap_or(1)))
            })();
            let (_ctx, kernel, khz) = match setup {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            lock(status).running = true;
            let _ = ready.send(Ok(()));
            let busy = PERIOD.mul_f64(utilization.min(1.0));
            let chunk = Duration::from_millis(10);
            loop {
                let start = Instant::now();
                // Spin in chunks until this period's busy share is spent.
                while start.elapsed() < busy {
                    let left = (busy - start.elapsed()).min(chunk);
                    let cycles = khz.saturating_mul(left.as_micros() as u64) / 1000;
                    if let Err(e) = kernel.spin(cycles.max(1)) {
                        lock(status).last_error = Some(e.to_string());
                        tracing::warn!(device, error = %e, "compute hog kernel failed; the hog stops");
                        return;
                    }
                    lock(status).kernels += 1;
                }
                let idle = PERIOD.saturating_sub(start.elapsed());
                match stop.recv_timeout(idle) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        }))
    }

    /// Stops the kernels. Idempotent; a fresh object has nothing to stop.
    pub fn revert(&self) -> Result<(), GpuFaultError> {
        self.hog.revert()
    }

    pub fn verify_reverted(&self) -> Result<(), GpuFaultError> {
        self.hog.verify_reverted()
    }

    pub fn status(&self) -> HogStatus {
        self.hog.status()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_spec::units::{ByteSize, Percent};

    fn no_driver_here() -> bool {
        !faultline_cuda_shim::driver_present()
    }

    #[test]
    fn memory_hog_without_a_driver_fails_clearly_and_holds_nothing() {
        if !no_driver_here() {
            return; // scripts/gpu-check.sh covers hosts with a GPU
        }
        let spec = GpuMemoryHog {
            device: 0,
            size: Some(ByteSize(1 << 20)),
            share: None,
        };
        let f = MemoryHogFault::new("m1", &spec).unwrap();
        let err = f.inject().unwrap_err();
        assert!(matches!(err, GpuFaultError::NoDriver { .. }));
        assert_eq!(
            err.to_string(),
            "no NVIDIA driver (libcuda.so.1) on this host: gpu.memory_hog needs a real GPU"
        );
        assert_eq!(f.status(), HogStatus::default());
        f.verify_reverted().unwrap();
        f.revert().unwrap();
        f.revert().unwrap();
    }

    #[test]
    fn compute_hog_without_a_driver_fails_clearly() {
        if !no_driver_here() {
            return;
        }
        let spec = GpuComputeHog {
            device: 0,
            utilization: Percent::new(50.0).unwrap(),
        };
        let f = ComputeHogFault::new("c1", &spec).unwrap();
        let err = f.inject().unwrap_err().to_string();
        assert!(err.contains("gpu.compute_hog needs a real GPU"), "{err}");
        f.verify_reverted().unwrap();
        f.revert().unwrap();
    }

    #[test]
    fn parameters_are_checked_before_anything_is_loaded() {
        let both = GpuMemoryHog {
            device: 0,
            size: Some(ByteSize(1)),
            share: Some(Percent::new(10.0).unwrap()),
        };
        assert!(MemoryHogFault::new("m", &both).is_err());
        let zero = GpuComputeHog {
            device: 0,
            utilization: Percent::new(0.0).unwrap(),
        };
        assert!(ComputeHogFault::new("c", &zero).is_err());
    }
}
