//! Holds a `gpu.unavailable` (ecc_uncorrectable, all devices) in an interposer
//! state file and renews its lease like the agent does, until killed: the
//! process the lease-lapse test SIGKILLs. Prints `held` once injected.
//!
//! Usage: gpu_fault_holder STATE_FILE LEASE_MS

use std::path::Path;
use std::time::{Duration, Instant};

use faultline_faults::gpu::GpuShimFault;
use faultline_spec::fault::{Devices, GpuError, GpuUnavailable};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [state, lease_ms] = args.as_slice() else {
        return Err("usage: gpu_fault_holder STATE_FILE LEASE_MS".into());
    };
    let lease = Duration::from_millis(lease_ms.parse()?);
    let spec = GpuUnavailable {
        devices: Devices::All,
        error: GpuError::EccUncorrectable,
        after_calls: None,
        state_file: None,
    };
    let fault = GpuShimFault::unavailable("agent", &spec, lease, Path::new(state))?;
    fault.inject()?;
    #[allow(clippy::print_stdout)]
    {
        println!("held");
    }
    // Renew a few times a lease until killed; bounded in case nobody does.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        std::thread::sleep(lease / 5);
        fault.renew(lease)?;
    }
    fault.revert()?;
    Ok(())
}
