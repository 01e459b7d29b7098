//! Runs a `gpu.memory_hog` or `gpu.compute_hog` for a while, for
//! scripts/gpu-check.sh on a machine with a GPU. Prints `held` once the hog is
//! in place and `released` after revert.
//!
//! Usage: gpu_hog memory DEVICE SIZE_OR_SHARE SECONDS   (e.g. `2GiB` or `50%`)
//!        gpu_hog compute DEVICE UTILIZATION SECONDS    (e.g. `80%`)

use std::time::Duration;

use faultline_faults::gpu::{ComputeHogFault, MemoryHogFault};
use faultline_spec::fault::{GpuComputeHog, GpuMemoryHog};

#[allow(clippy::print_stdout)]
fn say(what: &str) {
    println!("{what}");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, device, amount, secs] = args.as_slice() else {
        return Err("usage: gpu_hog memory|compute DEVICE AMOUNT SECONDS".into());
    };
    let device: u32 = device.parse()?;
    let hold = Duration::from_secs(secs.parse()?);
    match kind.as_str() {
        "memory" => {
            let (size, share) = if amount.ends_with('%') {
                (None, Some(amount.parse()?))
            } else {
                (Some(amount.parse()?), None)
            };
            let spec = GpuMemoryHog {
                device,
                size,
                share,
            };
            let f = MemoryHogFault::new("gpu-check-memory", &spec)?;
            f.inject()?;
            say(&format!("held {} bytes", f.status().bytes));
            std::thread::sleep(hold);
            f.revert()?;
            f.verify_reverted()?;
        }
        "compute" => {
            let spec = GpuComputeHog {
                device,
                utilization: amount.parse()?,
            };
            let f = ComputeHogFault::new("gpu-check-compute", &spec)?;
            f.inject()?;
            say("held");
            std::thread::sleep(hold);
            let kernels = f.status().kernels;
            f.revert()?;
            f.verify_reverted()?;
            say(&format!("kernels {kernels}"));
        }
        other => return Err(format!("unknown hog `{other}`: memory or compute").into()),
    }
    say("released");
    Ok(())
}
