//! A busy kernel for the agent's `gpu.compute_hog` (feature `hog`): the one
//! kernel launch the agent needs, behind a safe API, because cudarc's launch is
//! `unsafe` and the faults crate forbids `unsafe`.
//!
//! The kernel spins on the SM clock (`%clock64`) for a given number of cycles in
//! every thread: no memory access, no arguments but the cycle count, nothing the
//! JIT can optimise away. It is PTX text, compiled by the driver at load time,
//! so libnvrtc is never needed.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

const KERNEL: &str = "faultline_spin";

/// PTX ISA 6.0 for sm_50: every driver that runs CUDA 12 JIT-compiles it for
/// the device at hand.
const PTX: &str = r#"
.version 6.0
.target sm_50
.address_size 64

.visible .entry faultline_spin(.param .u64 cycles)
{
    .reg .pred %p<2>;
    .reg .b64 %rd<5>;
    ld.param.u64 %rd1, [cycles];
    mov.u64 %rd2, %clock64;
SPIN:
    mov.u64 %rd3, %clock64;
    sub.s64 %rd4, %rd3, %rd2;
    setp.lt.u64 %p1, %rd4, %rd1;
    @%p1 bra SPIN;
    ret;
}
"#;

/// The spin kernel loaded into a context, with its own stream.
#[derive(Debug)]
pub struct BusyKernel {
    stream: Arc<CudaStream>,
    func: CudaFunction,
    _module: Arc<CudaModule>,
    blocks: u32,
}

impl BusyKernel {
    /// Loads the kernel into `ctx`; launches cover every SM several times over.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<BusyKernel, DriverError> {
        let module = ctx.load_module(Ptx::from_src(PTX))?;
        let func = module.load_function(KERNEL)?;
        let sms = ctx.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )?;
        Ok(BusyKernel {
            stream: ctx.new_stream()?,
            func,
            _module: module,
            blocks: u32::try_from(sms.max(1)).unwrap_or(1).saturating_mul(4),
        })
    }

    /// Spins every SM for about `cycles` SM clock cycles and waits for it.
    pub fn spin(&self, cycles: u64) -> Result<(), DriverError> {
        let cfg = LaunchConfig {
            grid_dim: (self.blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.func);
        launch.arg(&cycles);
        // SAFETY: `faultline_spin` takes exactly one .u64 parameter, pushed above
        // by value; it reads no memory and writes none, so no buffer's lifetime
        // or aliasing is involved.
        unsafe { launch.launch(cfg) }?;
        self.stream.synchronize()
    }
}
