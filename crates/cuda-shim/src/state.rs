//! The fault-state file shared by the agent (writer) and every shimmed process
//! (readers), format version 1.
//!
//! One small file per target, mapped `MAP_SHARED` by both sides. All fields are
//! naturally aligned little-endian words accessed only through atomics, so a
//! reader never sees a torn word and an unfaulted CUDA call costs one atomic load
//! (`mode == 0`).
//!
//! ```text
//! offset size field                 meaning
//!      0    4 magic                 0x5347_4c46 ("FLGS" in file order)
//!      4    4 version               1; readers ignore files with another version
//!      8    8 seq                   seqlock: odd while the writer is mid-update, +2 per update
//!     16    4 mode                  0 off, 1 unavailable, 2 slow
//!     20    4 cuda_error            CUresult returned while unavailable (0: CUDA untouched)
//!     24    4 nvml_error            nvmlReturn_t returned while unavailable (0: NVML untouched)
//!     28    4 reserved              0
//!     32    8 device_mask           bit i = device ordinal i; all ones = every device
//!     40    8 after_calls           per process, the first N matching calls still succeed
//!     48    8 delay_ns              slow: delay before each launch and synchronisation
//!     56    8 lease_expiry_unix_ns  CLOCK_REALTIME; at or past it the fault is off
//!     64    8 attached              processes that mapped the file (informational)
//!     72    8 faulted_calls         calls the shims failed or delayed (informational)
//!     80 ...  zero, up to STATE_FILE_LEN
//! ```
//!
//! Rules both sides keep: the file is created once at [`STATE_FILE_LEN`] bytes
//! and updated in place, never truncated or replaced (a shim keeps its first
//! mapping, and a shrunk file would fault the reader). There is one writer per
//! file. A missing, short or foreign file means pass-through, never an error in
//! the host process. A fault whose lease is not renewed switches itself off: a
//! dead agent leaves nothing behind for longer than its lease.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// File magic, the bytes "FLGS" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"FLGS");
/// Format version this crate reads and writes.
pub const VERSION: u32 = 1;
/// Size of the file: one page, so later versions can append fields.
pub const STATE_FILE_LEN: usize = 4096;
/// Environment variable naming the state file in shimmed processes.
pub const STATE_ENV: &str = "FAULTLINE_GPU_STATE";

const MODE_OFF: u32 = 0;
const MODE_UNAVAILABLE: u32 = 1;
const MODE_SLOW: u32 = 2;

/// CUDA driver errors a `gpu.unavailable` fault can return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuError {
    /// CUDA_ERROR_NO_DEVICE (100); NVML: GPU_IS_LOST.
    NoDevice,
    /// CUDA_ERROR_DEVICE_UNAVAILABLE (46); NVML: GPU_IS_LOST.
    DeviceUnavailable,
    /// CUDA_ERROR_ECC_UNCORRECTABLE (214); NVML: GPU_IS_LOST.
    EccUncorrectable,
    /// CUDA_ERROR_OUT_OF_MEMORY (2), on allocations only; NVML untouched.
    OutOfMemory,
    /// CUDA_ERROR_LAUNCH_FAILED (719); NVML untouched.
    LaunchFailed,
    /// NVML_ERROR_GPU_IS_LOST (15); CUDA: DEVICE_UNAVAILABLE (46).
    GpuIsLost,
}

impl GpuError {
    /// Every kind, in documentation order.
    pub const ALL: [GpuError; 6] = [
        GpuError::NoDevice,
        GpuError::DeviceUnavailable,
        GpuError::EccUncorrectable,
        GpuError::OutOfMemory,
        GpuError::LaunchFailed,
        GpuError::GpuIsLost,
    ];

    /// The name used in experiments (`error: device_unavailable`).
    pub fn name(self) -> &'static str {
        match self {
            GpuError::NoDevice => "no_device",
            GpuError::DeviceUnavailable => "device_unavailable",
            GpuError::EccUncorrectable => "ecc_uncorrectable",
            GpuError::OutOfMemory => "out_of_memory",
            GpuError::LaunchFailed => "launch_failed",
            GpuError::GpuIsLost => "gpu_is_lost",
        }
    }

    /// Parses [`GpuError::name`].
    pub fn from_name(name: &str) -> Option<GpuError> {
        GpuError::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The CUresult shimmed CUDA calls return.
    pub fn cuda_code(self) -> u32 {
        match self {
            GpuError::NoDevice => 100,
            GpuError::DeviceUnavailable | GpuError::GpuIsLost => 46,
            GpuError::EccUncorrectable => 214,
            GpuError::OutOfMemory => 2,
            GpuError::LaunchFailed => 719,
        }
    }

    /// The nvmlReturn_t shimmed NVML calls return; 0 leaves NVML alone (a full
    /// memory or a failed kernel does not make the board disappear).
    pub fn nvml_code(self) -> u32 {
        match self {
            GpuError::NoDevice
            | GpuError::DeviceUnavailable
            | GpuError::EccUncorrectable
            | GpuError::GpuIsLost => 15,
            GpuError::OutOfMemory | GpuError::LaunchFailed => 0,
        }
    }
}

/// Which device ordinals a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMask(pub u64);

impl DeviceMask {
    /// Every device, including calls that name no device (cuInit, counts).
    pub const ALL: DeviceMask = DeviceMask(u64::MAX);

    /// The given ordinals; ordinals of 64 and above cannot be selected.
    pub fn ordinals(ordinals: impl IntoIterator<Item = u32>) -> DeviceMask {
        DeviceMask(
            ordinals
                .into_iter()
                .filter(|o| *o < 64)
                .fold(0, |m, o| m | (1 << o)),
        )
    }

    /// Whether calls that name no device are hit too.
    pub fn is_all(self) -> bool {
        self.0 == u64::MAX
    }

    /// Whether a call on `ordinal` is hit.
    pub fn contains(self, ordinal: i64) -> bool {
        self.is_all() || ((0..64).contains(&ordinal) && self.0 & (1 << ordinal) != 0)
    }
}

/// What the shims do while a fault is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// Return these codes instead of calling the driver (0: that API untouched).
    Unavailable { cuda_error: u32, nvml_error: u32 },
    /// Sleep this long before each kernel launch and synchronisation, then forward.
    Slow { delay: Duration },
}

impl FaultMode {
    /// `gpu.unavailable` with the codes [`GpuError`] maps to.
    pub fn unavailable(error: GpuError) -> FaultMode {
        FaultMode::Unavailable {
            cuda_error: error.cuda_code(),
            nvml_error: error.nvml_code(),
        }
    }
}

/// One fault, as the agent asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub mode: FaultMode,
    pub devices: DeviceMask,
    /// Per shimmed process, the first `after_calls` calls the fault would hit
    /// still succeed.
    pub after_calls: u64,
}

/// A consistent copy of the fields, as a reader saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub seq: u64,
    pub mode: u32,
    pub cuda_error: u32,
    pub nvml_error: u32,
    pub device_mask: u64,
    pub after_calls: u64,
    pub delay_ns: u64,
    pub lease_expiry_unix_ns: u64,
}

impl Snapshot {
    /// The fault this snapshot describes, if one is set and its lease has not
    /// lapsed at `now_unix_ns`.
    pub fn active_at(&self, now_unix_ns: u64) -> Option<Fault> {
        if now_unix_ns >= self.lease_expiry_unix_ns {
            return None;
        }
        let mode = match self.mode {
            MODE_UNAVAILABLE => FaultMode::Unavailable {
                cuda_error: self.cuda_error,
                nvml_error: self.nvml_error,
            },
            MODE_SLOW => FaultMode::Slow {
                delay: Duration::from_nanos(self.delay_ns),
            },
            _ => return None,
        };
        Some(Fault {
            mode,
            devices: DeviceMask(self.device_mask),
            after_calls: self.after_calls,
        })
    }
}

/// Errors of the writer side.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open GPU fault state file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot size GPU fault state file {path} to {STATE_FILE_LEN} bytes: {source}")]
    Size {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot map GPU fault state file {path}: {source}")]
    Map {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a faultline GPU state file of version {VERSION} \
         (magic {magic:#x}, version {version}); remove it and let the agent recreate it"
    )]
    Foreign {
        path: PathBuf,
        magic: u32,
        version: u32,
    },
    #[error("lease expiry {0:?} is before the Unix epoch")]
    Expiry(SystemTime),
}

/// The words of the file, in file order (see the module docs).
#[repr(C)]
struct Words {
    magic: AtomicU32,
    version: AtomicU32,
    seq: AtomicU64,
    mode: AtomicU32,
    cuda_error: AtomicU32,
    nvml_error: AtomicU32,
    reserved: AtomicU32,
    device_mask: AtomicU64,
    after_calls: AtomicU64,
    delay_ns: AtomicU64,
    lease_expiry_unix_ns: AtomicU64,
    attached: AtomicU64,
    faulted_calls: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Words>() == 80);
const _: () = assert!(std::mem::size_of::<Words>() <= STATE_FILE_LEN);

// === impl Mapping ===

/// A `MAP_SHARED` mapping of a whole state file.
struct Mapping {
    ptr: NonNull<Words>,
}

// SAFETY: the mapping is only accessed through the atomics in `Words`, which are
// Sync; the pointer stays valid until Drop, which needs `&mut self`.
unsafe impl Send for Mapping {}
// SAFETY: as above, shared access is atomics only.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `file`, which the caller checked to be at least STATE_FILE_LEN bytes.
    fn new(file: &std::fs::File) -> std::io::Result<Mapping> {
        // SAFETY: a fresh shared read/write mapping of an open fd; no existing Rust
        // memory is aliased. The fd may be closed afterwards, the mapping stays.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STATE_FILE_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        NonNull::new(ptr.cast::<Words>())
            .map(|ptr| Mapping { ptr })
            .ok_or_else(|| std::io::Error::other("mmap returned null"))
    }

    fn words(&self) -> &Words {
        // SAFETY: the mapping is page aligned, STATE_FILE_LEN >= size_of::<Words>()
        // bytes long and lives as long as `self`; all fields are atomics, so
        // concurrent writes by other processes are not data races.
        unsafe { self.ptr.as_ref() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `new`; no reference into it
        // outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), STATE_FILE_LEN);
        }
    }
}

fn snapshot_of(w: &Words) -> Option<Snapshot> {
    // A seqlock read: retry while the writer is mid-update. Bounded, because a
    // writer killed mid-update leaves `seq` odd forever; then the fault is off.
    for _ in 0..64 {
        let seq = w.seq.load(Ordering::Acquire);
        if seq & 1 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let snap = Snapshot {
            seq,
            mode: w.mode.load(Ordering::Relaxed),
            cuda_error: w.cuda_error.load(Ordering::Relaxed),
            nvml_error: w.nvml_error.load(Ordering::Relaxed),
            device_mask: w.device_mask.load(Ordering::Relaxed),
            after_calls: w.after_calls.load(Ordering::Relaxed),
            delay_ns: w.delay_ns.load(Ordering::Relaxed),
            lease_expiry_unix_ns: w.lease_expiry_unix_ns.load(Ordering::Relaxed),
        };
        fence(Ordering::Acquire);
        if w.seq.load(Ordering::Relaxed) == seq {
            return Some(snap);
        }
    }
    None
}

/// Nanoseconds since the Unix epoch (`None` before it; saturates in 2554).
pub fn unix_ns(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

// === impl Reader ===

/// The shim's view of a state file: opened once, never fails the host process.
#[derive(Debug)]
pub struct Reader {
    map: Mapping,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping").field("ptr", &self.ptr).finish()
    }
}

impl Reader {
    /// Maps `path` if it is a state file of this version; `None` otherwise
    /// (missing, unreadable, short, foreign): the shim then passes everything
    /// through.
    pub fn open(path: &Path) -> Option<Reader> {
        let file = OpenOptions::new().read(true).write(true).open(path).ok()?;
        let len = file.metadata().ok()?.len();
        if len < STATE_FILE_LEN as u64 {
            return None;
        }
        let map = Mapping::new(&file).ok()?;
        let w = map.words();
        if w.magic.load(Ordering::Acquire) != MAGIC || w.version.load(Ordering::Acquire) != VERSION
        {
            return None;
        }
        w.attached.fetch_add(1, Ordering::Relaxed);
        Some(Reader { map })
    }

    /// The hot-path check: whether any fault is set at all. One atomic load.
    #[inline(always)]
    pub fn armed(&self) -> bool {
        self.map.words().mode.load(Ordering::Acquire) != MODE_OFF
    }

    /// A consistent copy of the fields (`None` if the writer is stuck mid-update).
    pub fn snapshot(&self) -> Option<Snapshot> {
        snapshot_of(self.map.words())
    }

    /// Counts one failed or delayed call, so the agent can see the fault land.
    pub fn count_faulted(&self) {
        self.map
            .words()
            .faulted_calls
            .fetch_add(1, Ordering::Relaxed);
    }
}

// === impl StateFile ===

/// The writer side, for the agent's gpu faults. One writer per file.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    map: Mapping,
}

impl StateFile {
    /// Opens `path` as a state file, creating it (fault off) if it does not exist
    /// or is empty. An existing state file keeps its contents, so an agent that
    /// restarts finds the fault it must revert.
    pub fn create(path: impl AsRef<Path>) -> Result<StateFile, StateError> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| StateError::Open {
                path: path.clone(),
                source,
            })?;
        let len = file
            .metadata()
            .map_err(|source| StateError::Open {
                path: path.clone(),
                source,
            })?
            .len();
        if len == 0 {
            file.set_len(STATE_FILE_LEN as u64)
                .map_err(|source| StateError::Size {
                    path: path.clone(),
                    source,
                })?;
        } else if len < STATE_FILE_LEN as u64 {
            return Err(StateError::Foreign {
                path,
                magic: 0,
                version: 0,
            });
        }
        let map = Mapping::new(&file).map_err(|source| StateError::Map {
            path: path.clone(),
            source,
        })?;
        let w = map.words();
        let (magic, version) = (
            w.magic.load(Ordering::Acquire),
            w.version.load(Ordering::Acquire),
        );
        if magic == 0 && version == 0 {
            // Fresh file: fields are zero (fault off); publish the header last so a
            // reader never accepts a half-initialised file.
            w.version.store(VERSION, Ordering::Release);
            w.magic.store(MAGIC, Ordering::Release);
        } else if magic != MAGIC || version != VERSION {
            return Err(StateError::Foreign {
                path,
                magic,
                version,
            });
        }
        Ok(StateFile { path, map })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn update(&mut self, f: impl FnOnce(&Words)) {
        let w = self.map.words();
        let seq = w.seq.load(Ordering::Relaxed);
        // A writer killed mid-update left `seq` odd; continue from the next even.
        let start = seq | 1;
        w.seq.store(start, Ordering::Relaxed);
        fence(Ordering::Release);
        f(w);
        w.seq.store(start.wrapping_add(1), Ordering::Release);
    }

    /// Activates `fault` until `lease_expiry` (renew before then).
    pub fn set_fault(&mut self, fault: &Fault, lease_expiry: SystemTime) -> Result<(), StateError> {
        let expiry = unix_ns(lease_expiry).ok_or(StateError::Expiry(lease_expiry))?;
        let (mode, cuda_error, nvml_error, delay_ns) = match fault.mode {
            FaultMode::Unavailable {
                cuda_error,
                nvml_error,
            } => (MODE_UNAVAILABLE, cuda_error, nvml_error, 0),
            FaultMode::Slow { delay } => (
                MODE_SLOW,
                0,
                0,
                u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX),
            ),
        };
        self.update(|w| {
            w.cuda_error.store(cuda_error, Ordering::Relaxed);
            w.nvml_error.store(nvml_error, Ordering::Relaxed);
            w.device_mask.store(fault.devices.0, Ordering::Relaxed);
            w.after_calls.store(fault.after_calls, Ordering::Relaxed);
            w.delay_ns.store(delay_ns, Ordering::Relaxed);
            w.lease_expiry_unix_ns.store(expiry, Ordering::Relaxed);
            // `mode` is the hot-path word; it goes last so a reader that sees it
            // armed and then reads under the seqlock gets the new fields.
            w.mode.store(mode, Ordering::Relaxed);
        });
        Ok(())
    }

    /// Extends the active fault's lease. One atomic store: no seqlock needed.
    pub fn renew(&self, lease_expiry: SystemTime) -> Result<(), StateError> {
        let expiry = unix_ns(lease_expiry).ok_or(StateError::Expiry(lease_expiry))?;
        self.map
            .words()
            .lease_expiry_unix_ns
            .store(expiry, Ordering::Release);
        Ok(())
    }

    /// Turns every fault off (revert). Idempotent.
    pub fn clear(&mut self) {
        self.update(|w| {
            w.mode.store(MODE_OFF, Ordering::Relaxed);
            w.cuda_error.store(0, Ordering::Relaxed);
            w.nvml_error.store(0, Ordering::Relaxed);
            w.device_mask.store(0, Ordering::Relaxed);
            w.after_calls.store(0, Ordering::Relaxed);
            w.delay_ns.store(0, Ordering::Relaxed);
            w.lease_expiry_unix_ns.store(0, Ordering::Relaxed);
        });
    }

    /// A consistent copy of the fields.
    pub fn snapshot(&self) -> Option<Snapshot> {
        snapshot_of(self.map.words())
    }

    /// The fault shims would apply now, if any (revert verification).
    pub fn active_fault(&self) -> Option<Fault> {
        let now = unix_ns(SystemTime::now())?;
        self.snapshot()?.active_at(now)
    }

    /// How many processes mapped the file, and how many calls they failed or
    /// delayed, since it was created.
    pub fn counters(&self) -> (u64, u64) {
        let w = self.map.words();
        (
            w.attached.load(Ordering::Relaxed),
            w.faulted_calls.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> SystemTime {
        SystemTime::now() + Duration::from_secs(3600)
    }

    #[test]
    fn fresh_file_is_off_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpu.state");
        let sf = StateFile::create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            STATE_FILE_LEN as u64
        );
        let r = Reader::open(&path).unwrap();
        assert!(!r.armed());
        assert_eq!(sf.active_fault(), None);
        assert_eq!(sf.counters().0, 1);
    }

    #[test]
    fn set_renew_clear_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpu.state");
        let mut sf = StateFile::create(&path).unwrap();
        let r = Reader::open(&path).unwrap();
        let fault = Fault {
            mode: FaultMode::unavailable(GpuError::EccUncorrectable),
            devices: DeviceMask::ordinals([1, 3]),
            after_calls: 5,
        };
        sf.set_fault(&fault, far()).unwrap();
        assert!(r.armed());
        let now = unix_ns(SystemTime::now()).unwrap();
        assert_eq!(r.snapshot().unwrap().active_at(now), Some(fault));
        assert_eq!(sf.active_fault(), Some(fault));

        // An expired lease is off even though the mode is still set.
        sf.renew(SystemTime::now() - Duration::from_secs(1))
            .unwrap();
        assert!(r.armed());
        assert_eq!(sf.active_fault(), None);
        sf.renew(far()).unwrap();
        assert_eq!(sf.active_fault(), Some(fault));

        sf.clear();
        assert!(!r.armed());
        assert_eq!(sf.active_fault(), None);
        sf.clear();
        assert_eq!(r.snapshot().unwrap().seq, 6);
    }

    #[test]
    fn reopening_keeps_the_fault_for_a_restarted_agent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpu.state");
        let fault = Fault {
            mode: FaultMode::Slow {
                delay: Duration::from_millis(7),
            },
            devices: DeviceMask::ALL,
            after_calls: 0,
        };
        StateFile::create(&path)
            .unwrap()
            .set_fault(&fault, far())
            .unwrap();
        assert_eq!(
            StateFile::create(&path).unwrap().active_fault(),
            Some(fault)
        );
    }

    #[test]
    fn foreign_or_short_files_are_refused_by_writer_and_ignored_by_reader() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, b"hello").unwrap();
        assert!(Reader::open(&short).is_none());
        assert!(matches!(
            StateFile::create(&short),
            Err(StateError::Foreign { .. })
        ));
        let foreign = dir.path().join("foreign");
        std::fs::write(&foreign, vec![0xab; STATE_FILE_LEN]).unwrap();
        assert!(Reader::open(&foreign).is_none());
        assert!(matches!(
            StateFile::create(&foreign),
            Err(StateError::Foreign { .. })
        ));
        assert!(Reader::open(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn writer_killed_mid_update_leaves_fault_off_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpu.state");
        let mut sf = StateFile::create(&path).unwrap();
        let r = Reader::open(&path).unwrap();
        sf.map.words().seq.store(3, Ordering::Release);
        assert_eq!(r.snapshot(), None);
        sf.clear();
        assert_eq!(r.snapshot().unwrap().seq, 4);
    }

    #[test]
    fn device_masks() {
        assert!(DeviceMask::ALL.contains(63));
        assert!(DeviceMask::ALL.contains(-1));
        let m = DeviceMask::ordinals([0, 2, 99]);
        assert_eq!(m.0, 0b101);
        assert!(m.contains(2) && !m.contains(1) && !m.contains(-1) && !m.contains(64));
        assert!(!m.is_all());
    }

    #[test]
    fn error_names_and_codes() {
        for e in GpuError::ALL {
            assert_eq!(GpuError::from_name(e.name()), Some(e));
        }
        assert_eq!(GpuError::DeviceUnavailable.cuda_code(), 46);
        assert_eq!(GpuError::GpuIsLost.nvml_code(), 15);
        assert_eq!(GpuError::OutOfMemory.nvml_code(), 0);
    }
}
