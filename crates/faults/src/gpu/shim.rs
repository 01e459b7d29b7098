//! `gpu.unavailable` and `gpu.slow`: the fault goes into the interposer's state
//! file, which every shimmed process maps. The agent is the file's one writer.
//!
//! The file carries the lease expiry: shims treat a fault whose expiry has passed
//! as off, so an agent that dies leaves the fault on for at most one lease, with
//! nobody touching the file. Revert clears the fields; it needs nothing but the
//! path, so a restarted agent reverts from its journal alone.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faultline_cuda_shim::state::{self, DeviceMask, Fault, FaultMode, StateFile};
use faultline_spec::fault::{Devices, GpuCalls, GpuError, GpuSlow, GpuUnavailable};

use super::GpuFaultError;

/// Mode of a state file the agent creates: shimmed processes open it read-write
/// (they count the calls they faulted) and may run as any user. A file that
/// already exists keeps the mode its owner gave it.
const STATE_FILE_MODE: u32 = 0o666;
/// Mode of the directories the agent creates on the way to a state file.
const STATE_DIR_MODE: u32 = 0o755;

/// The state of a shim fault, for the agent's fault status and the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShimStatus {
    /// Whether shims apply this fault right now (set, and its lease unexpired).
    pub active: bool,
    /// When the fault switches itself off unless renewed.
    pub lease_expiry: Option<SystemTime>,
    /// Processes that mapped the state file since it was created.
    pub attached: u64,
    /// Calls the shims failed or delayed since the file was created.
    pub faulted_calls: u64,
}

/// A `gpu.unavailable` or `gpu.slow` fault on one target's state file.
#[derive(Debug)]
pub struct GpuShimFault {
    fault_id: String,
    kind: &'static str,
    fault: Fault,
    lease: Duration,
    path: PathBuf,
    file: Mutex<Option<StateFile>>,
}

impl GpuShimFault {
    /// `gpu.unavailable`. Checks the parameters; touches nothing. The state file
    /// is `spec.state_file`, or `default_state_file` (the agent's, per target).
    pub fn unavailable(
        fault_id: &str,
        spec: &GpuUnavailable,
        lease: Duration,
        default_state_file: &Path,
    ) -> Result<Self, GpuFaultError> {
        let fault = Fault {
            mode: FaultMode::unavailable(shim_error(spec.error)),
            devices: device_mask(&spec.devices)?,
            after_calls: spec.after_calls.unwrap_or(0),
        };
        Self::new(
            fault_id,
            "gpu.unavailable",
            fault,
            lease,
            spec.state_file.as_deref(),
            default_state_file,
        )
    }

    /// `gpu.slow`. Checks the parameters; touches nothing.
    pub fn slow(
        fault_id: &str,
        spec: &GpuSlow,
        lease: Duration,
        default_state_file: &Path,
    ) -> Result<Self, GpuFaultError> {
        if spec.calls != GpuCalls::All {
            // Format v1 has one delay for launches and synchronisations together;
            // delaying both when one was asked for would slow what the
            // experiment meant to leave alone.
            return Err(GpuFaultError::Unsupported {
                kind: "gpu.slow",
                reason: format!(
                    "`calls: {}`: the shim (state format v{}) delays kernel launches and \
                     synchronisations together; use `calls: all`",
                    match spec.calls {
                        GpuCalls::Launch => "launch",
                        GpuCalls::Sync => "sync",
                        GpuCalls::All => "all",
                    },
                    state::VERSION
                ),
            });
        }
        let fault = Fault {
            mode: FaultMode::Slow {
                delay: spec.delay.get(),
            },
            devices: device_mask(&spec.devices)?,
            after_calls: 0,
        };
        Self::new(
            fault_id,
            "gpu.slow",
            fault,
            lease,
            spec.state_file.as_deref(),
            default_state_file,
        )
    }

    fn new(
        fault_id: &str,
        kind: &'static str,
        fault: Fault,
        lease: Duration,
        state_file: Option<&str>,
        default_state_file: &Path,
    ) -> Result<Self, GpuFaultError> {
        if lease.is_zero() {
            return Err(GpuFaultError::BadParams(format!(
                "{kind} needs a lease longer than zero"
            )));
        }
        let path = state_file.map_or_else(|| default_state_file.to_path_buf(), PathBuf::from);
        if !path.is_absolute() {
            return Err(GpuFaultError::BadParams(format!(
                "state_file `{}` must be an absolute path: shimmed processes and the agent \
                 must name the same file",
                path.display()
            )));
        }
        Ok(GpuShimFault {
            fault_id: fault_id.to_owned(),
            kind,
            fault,
            lease,
            path,
            file: Mutex::new(None),
        })
    }

    /// The state file this fault writes.
    pub fn state_file(&self) -> &Path {
        &self.path
    }

    /// The fault as the shims will see it.
    pub fn shim_fault(&self) -> Fault {
        self.fault
    }

    /// Sets the fault with a lease of `lease` from now, creating the state file
    /// if needed. Injecting again while this fault is active only renews it (a
    /// repeated PUT must not restart `after_calls`). Refuses to overwrite a
    /// different active fault: one state file carries one fault.
    pub fn inject(&self) -> Result<(), GpuFaultError> {
        let mut guard = self.lock();
        if guard.is_none() {
            *guard = Some(self.create()?);
        }
        let Some(file) = guard.as_mut() else {
            return Err(self.err("state file not open"));
        };
        let expiry = SystemTime::now() + self.lease;
        match file.active_fault() {
            Some(active) if active == self.fault => {
                file.renew(expiry).map_err(|e| self.err(e))?;
            }
            Some(other) => {
                return Err(self.err(format!(
                    "it already carries another active fault ({other:?}); one state file holds \
                     one fault: revert that one first or give this fault its own `state_file`"
                )));
            }
            None => file
                .set_fault(&self.fault, expiry)
                .map_err(|e| self.err(e))?,
        }
        tracing::info!(
            fault = %self.fault_id, kind = self.kind, state_file = %self.path.display(),
            lease_ms = self.lease.as_millis() as u64, "gpu fault set in the shim state file"
        );
        Ok(())
    }

    /// Extends the lease to `lease` from now (the agent's lease renewal).
    pub fn renew(&self, lease: Duration) -> Result<(), GpuFaultError> {
        let guard = self.lock();
        let Some(file) = guard.as_ref() else {
            return Err(self.err("cannot renew a fault that was not injected"));
        };
        if file.active_fault() != Some(self.fault) {
            // Lapsed (the renewal came too late) or replaced: renewing would
            // bring back a fault that shims have already dropped, unannounced.
            return Err(self.err("the fault is no longer active (its lease lapsed); inject again"));
        }
        file.renew(SystemTime::now() + lease)
            .map_err(|e| self.err(e))
    }

    /// Turns the fault off. Idempotent; works from a fresh object (an agent
    /// restarted from its journal): a missing file has nothing to revert. A
    /// different fault found in the file (another fault's) is left alone.
    pub fn revert(&self) -> Result<(), GpuFaultError> {
        let mut guard = self.lock();
        if guard.is_none() {
            if !self.path.exists() {
                return Ok(());
            }
            *guard = Some(StateFile::create(&self.path).map_err(|e| self.err(e))?);
        }
        let Some(file) = guard.as_mut() else {
            return Ok(());
        };
        match set_fault(file) {
            Some(f) if f != self.fault => {
                tracing::warn!(
                    fault = %self.fault_id, state_file = %self.path.display(),
                    "the state file carries another fault; left in place"
                );
            }
            _ => {
                file.clear();
                tracing::info!(fault = %self.fault_id, kind = self.kind, "gpu fault cleared");
            }
        }
        Ok(())
    }

    /// Reads the file back: no shim applies this fault any more.
    pub fn verify_reverted(&self) -> Result<(), GpuFaultError> {
        if !self.path.exists() {
            return Ok(());
        }
        let file = StateFile::create(&self.path).map_err(|e| self.err(e))?;
        match file.active_fault() {
            Some(f) if f == self.fault => Err(GpuFaultError::NotReverted {
                what: format!("{} in {}", self.kind, self.path.display()),
                reason: "the state file still carries the fault with an unexpired lease".into(),
            }),
            _ => Ok(()),
        }
    }

    /// What the state file says now.
    pub fn status(&self) -> ShimStatus {
        let guard = self.lock();
        let opened;
        let file = match guard.as_ref() {
            Some(f) => f,
            // Only an existing file: asking for status must not create one.
            None if !self.path.exists() => return ShimStatus::default(),
            None => match StateFile::create(&self.path) {
                Ok(f) => {
                    opened = f;
                    &opened
                }
                Err(_) => return ShimStatus::default(),
            },
        };
        let (attached, faulted_calls) = file.counters();
        let active = file.active_fault() == Some(self.fault);
        let lease_expiry = file
            .snapshot()
            .filter(|_| active)
            .map(|s| UNIX_EPOCH + Duration::from_nanos(s.lease_expiry_unix_ns));
        ShimStatus {
            active,
            lease_expiry,
            attached,
            faulted_calls,
        }
    }

    /// Opens the state file, creating it and its directory so that shimmed
    /// processes of any user can map it.
    fn create(&self) -> Result<StateFile, GpuFaultError> {
        if let Some(dir) = self.path.parent()
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(STATE_DIR_MODE)
                .create(dir)
                .map_err(|e| self.err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let existed = self.path.exists();
        let file = StateFile::create(&self.path).map_err(|e| self.err(e))?;
        if !existed {
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(STATE_FILE_MODE))
                .map_err(|e| {
                    self.err(format!(
                        "cannot make it writable for shimmed processes: {e}"
                    ))
                })?;
        }
        Ok(file)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<StateFile>> {
        // A panic while holding the lock leaves a StateFile that is still valid.
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn err(&self, reason: impl ToString) -> GpuFaultError {
        GpuFaultError::StateFile {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }
}

/// The fault set in the file, whether or not its lease has lapsed.
fn set_fault(file: &StateFile) -> Option<Fault> {
    let snap = file.snapshot()?;
    // Judged at time 0, the lease never lapses: only `mode` decides.
    state::Snapshot {
        lease_expiry_unix_ns: u64::MAX,
        ..snap
    }
    .active_at(0)
}

/// The spec's error names map one to one onto the shim's.
fn shim_error(e: GpuError) -> state::GpuError {
    match e {
        GpuError::NoDevice => state::GpuError::NoDevice,
        GpuError::DeviceUnavailable => state::GpuError::DeviceUnavailable,
        GpuError::EccUncorrectable => state::GpuError::EccUncorrectable,
        GpuError::OutOfMemory => state::GpuError::OutOfMemory,
        GpuError::LaunchFailed => state::GpuError::LaunchFailed,
        GpuError::GpuIsLost => state::GpuError::GpuIsLost,
    }
}

fn device_mask(devices: &Devices) -> Result<DeviceMask, GpuFaultError> {
    match devices {
        Devices::All => Ok(DeviceMask::ALL),
        Devices::List(list) => {
            if let Some(big) = list.iter().find(|o| **o >= 64) {
                return Err(GpuFaultError::BadParams(format!(
                    "device {big}: the shim selects devices 0 to 63; use `devices: all`"
                )));
            }
            if list.is_empty() {
                return Err(GpuFaultError::BadParams(
                    "`devices` lists no device".to_owned(),
                ));
            }
            Ok(DeviceMask::ordinals(list.iter().copied()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_spec::units::Duration as SpecDuration;

    fn unavailable(error: GpuError, devices: Devices) -> GpuUnavailable {
        GpuUnavailable {
            devices,
            error,
            after_calls: None,
            state_file: None,
        }
    }

    #[test]
    fn every_spec_error_maps_to_the_shim_code_the_spec_documents() {
        for e in [
            GpuError::NoDevice,
            GpuError::DeviceUnavailable,
            GpuError::EccUncorrectable,
            GpuError::OutOfMemory,
            GpuError::LaunchFailed,
            GpuError::GpuIsLost,
        ] {
            assert_eq!(shim_error(e).cuda_code(), e.cuda_code(), "{e:?}");
        }
    }

    #[test]
    fn devices_map_to_masks() {
        assert_eq!(device_mask(&Devices::All).unwrap(), DeviceMask::ALL);
        assert_eq!(
            device_mask(&Devices::List(vec![0, 2])).unwrap(),
            DeviceMask(0b101)
        );
        assert!(matches!(
            device_mask(&Devices::List(vec![64])),
            Err(GpuFaultError::BadParams(_))
        ));
    }

    #[test]
    fn inject_renew_revert_verify_on_a_file_it_creates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/w1.state");
        let spec = GpuUnavailable {
            after_calls: Some(3),
            ..unavailable(GpuError::EccUncorrectable, Devices::List(vec![1]))
        };
        let f = GpuShimFault::unavailable("f1", &spec, Duration::from_secs(30), &path).unwrap();
        assert!(!path.exists(), "new touches nothing");
        assert_eq!(f.status(), ShimStatus::default());
        assert!(!path.exists(), "status touches nothing");
        f.inject().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, STATE_FILE_MODE);
        let active = StateFile::create(&path).unwrap().active_fault().unwrap();
        assert_eq!(active.devices, DeviceMask(0b10));
        assert_eq!(active.after_calls, 3);
        assert_eq!(
            active.mode,
            FaultMode::Unavailable {
                cuda_error: 214,
                nvml_error: 15
            }
        );
        assert!(f.status().active);
        f.renew(Duration::from_secs(60)).unwrap();
        assert!(f.verify_reverted().is_err());
        f.revert().unwrap();
        f.verify_reverted().unwrap();
        f.revert().unwrap();
        assert!(!f.status().active);
    }

    #[test]
    fn a_fresh_object_reverts_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w1.state");
        let spec = GpuSlow {
            devices: Devices::All,
            delay: SpecDuration(Duration::from_millis(5)),
            calls: GpuCalls::All,
            state_file: Some(path.display().to_string()),
        };
        let other = Path::new("/nonexistent/default.state");
        let first = GpuShimFault::slow("f1", &spec, Duration::from_secs(30), other).unwrap();
        first.inject().unwrap();
        drop(first);
        let fresh = GpuShimFault::slow("f1", &spec, Duration::from_secs(30), other).unwrap();
        assert!(fresh.verify_reverted().is_err());
        fresh.revert().unwrap();
        fresh.verify_reverted().unwrap();
        // Nothing there at all: nothing to revert.
        let missing = GpuShimFault::unavailable(
            "f2",
            &unavailable(GpuError::NoDevice, Devices::All),
            Duration::from_secs(1),
            &dir.path().join("never.state"),
        )
        .unwrap();
        missing.revert().unwrap();
        missing.verify_reverted().unwrap();
        assert!(!dir.path().join("never.state").exists());
    }

    #[test]
    fn one_file_carries_one_fault() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w1.state");
        let lease = Duration::from_secs(30);
        let a = GpuShimFault::unavailable(
            "a",
            &unavailable(GpuError::NoDevice, Devices::All),
            lease,
            &path,
        )
        .unwrap();
        let b = GpuShimFault::unavailable(
            "b",
            &unavailable(GpuError::LaunchFailed, Devices::All),
            lease,
            &path,
        )
        .unwrap();
        a.inject().unwrap();
        a.inject().unwrap(); // again: a renewal
        assert!(matches!(b.inject(), Err(GpuFaultError::StateFile { .. })));
        // b's revert leaves a's fault alone.
        b.revert().unwrap();
        assert!(a.status().active);
        a.revert().unwrap();
        b.inject().unwrap();
        b.revert().unwrap();
    }

    #[test]
    fn rejected_parameters() {
        let p = Path::new("/run/x.state");
        let slow = |calls| GpuSlow {
            devices: Devices::All,
            delay: SpecDuration(Duration::from_millis(5)),
            calls,
            state_file: None,
        };
        assert!(matches!(
            GpuShimFault::slow("f", &slow(GpuCalls::Launch), Duration::from_secs(1), p),
            Err(GpuFaultError::Unsupported { .. })
        ));
        let rel = GpuUnavailable {
            state_file: Some("rel/x.state".into()),
            ..unavailable(GpuError::NoDevice, Devices::All)
        };
        assert!(GpuShimFault::unavailable("f", &rel, Duration::from_secs(1), p).is_err());
        assert!(
            GpuShimFault::unavailable(
                "f",
                &unavailable(GpuError::NoDevice, Devices::All),
                Duration::ZERO,
                p
            )
            .is_err()
        );
    }
}
