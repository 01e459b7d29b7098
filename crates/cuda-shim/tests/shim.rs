//! End to end, with real processes: a C program that calls the driver API like a
//! runtime does, the shim in front (preloaded or as libcuda.so.1), the fake
//! driver behind it, and the state file written by this test or by a separate
//! writer process that gets SIGKILLed.
//!
//! The first test to run builds the shim, its SONAME build and the fake driver
//! with the same cargo and profile (`cargo build -p ...`, a no-op when `cargo
//! test` already built them), and compiles tests/fixtures/drvtest.c with `cc`
//! into a temporary directory. Each test uses its own state file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use faultline_cuda_shim::state::{
    DeviceMask, Fault, FaultMode, GpuError, STATE_FILE_LEN, StateFile,
};

#[path = "fixtures/build.rs"]
mod build;

use build::fixture;

// === a target: one state file, programs run against it ===

/// How the program reaches the driver.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// No shim: the fake driver found as libcuda.so.1.
    Fake,
    /// The SONAME build installed as libcuda.so.1 on LD_LIBRARY_PATH; the
    /// program dlopens it and resolves through cuGetProcAddress_v2.
    Soname,
    /// Same, resolving each versioned symbol with dlsym.
    SonameDlsym,
    /// LD_PRELOAD of the plain shim; the program is linked against libcuda.
    PreloadLinked,
    /// LD_PRELOAD of the plain shim; the program dlopens libcuda.so.1.
    PreloadDlopen,
    /// LD_PRELOAD of both SONAME builds; the program dlopens libcuda.so.1 and
    /// libnvidia-ml.so.1, which LD_LIBRARY_PATH would resolve to the fakes.
    PreloadSoname,
}

struct Target {
    dir: tempfile::TempDir,
    state: StateFile,
}

impl Target {
    fn new() -> Target {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateFile::create(dir.path().join("gpu.state")).expect("state file");
        Target { dir, state }
    }

    fn path(&self) -> &Path {
        self.state.path()
    }

    fn set(&mut self, mode: FaultMode, devices: DeviceMask, after_calls: u64) {
        let fault = Fault {
            mode,
            devices,
            after_calls,
        };
        let expiry = SystemTime::now() + Duration::from_secs(600);
        self.state.set_fault(&fault, expiry).expect("set fault");
    }

    fn unavailable(&mut self, error: GpuError) {
        self.set(FaultMode::unavailable(error), DeviceMask::ALL, 0);
    }

    fn command(&self, via: Via, args: &[&str]) -> Command {
        command(via, Some(self.path()), args)
    }

    fn run(&self, via: Via, args: &[&str]) -> Run {
        run(self.command(via, args))
    }
}

fn command(via: Via, state: Option<&Path>, args: &[&str]) -> Command {
    let f = fixture();
    let both = format!(
        "{} {}",
        f.shim_dir.join("libcuda.so.1").display(),
        f.shim_dir.join("libnvidia-ml.so.1").display()
    );
    let plain = f.shim.display().to_string();
    let (program, lib_dir, preload) = match via {
        Via::Fake => (&f.drvtest, &f.fake_dir, None),
        Via::Soname | Via::SonameDlsym => (&f.drvtest, &f.shim_dir, None),
        Via::PreloadLinked => (&f.drvtest_direct, &f.fake_dir, Some(&plain)),
        Via::PreloadDlopen => (&f.drvtest, &f.fake_dir, Some(&plain)),
        Via::PreloadSoname => (&f.drvtest, &f.fake_dir, Some(&both)),
    };
    let mode = match via {
        Via::PreloadLinked => "direct",
        Via::SonameDlsym => "dlsym",
        _ => "runtime",
    };
    let mut cmd = Command::new(program);
    cmd.arg(mode)
        .args(args)
        .env("LD_LIBRARY_PATH", lib_dir)
        .env("FAULTLINE_REAL_LIBCUDA", &f.fake)
        .env("FAULTLINE_REAL_LIBNVML", &f.fake_nvml)
        .env_remove("LD_PRELOAD")
        .env_remove("FAULTLINE_GPU_STATE")
        .env_remove("DRVTEST_NVML")
        .env_remove("DRVTEST_STOP");
    if let Some(p) = preload {
        cmd.env("LD_PRELOAD", p);
    }
    if let Some(s) = state {
        cmd.env("FAULTLINE_GPU_STATE", s);
    }
    cmd
}

/// What the program printed: one (call, code) per line.
#[derive(Debug)]
struct Run {
    calls: Vec<(String, i64)>,
    exit: Option<i32>,
    elapsed: Duration,
    text: String,
}

fn parse(line: &str) -> Option<(String, i64)> {
    let (name, code) = line.split_once(' ')?;
    Some((name.to_string(), code.trim().parse().ok()?))
}

fn run(mut cmd: Command) -> Run {
    let start = Instant::now();
    let out = cmd.output().expect("run drvtest");
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.stderr.is_empty(),
        "the shim must never print; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Run {
        calls: text.lines().filter_map(parse).collect(),
        exit: out.status.code(),
        elapsed,
        text,
    }
}

impl Run {
    fn code(&self, name: &str) -> i64 {
        self.calls
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("no {name} in output:\n{}", self.text))
    }

    /// Driver API calls in order, as the shim counts them (not the version query).
    fn cuda_codes(&self) -> Vec<i64> {
        self.calls
            .iter()
            .filter(|(n, _)| n.starts_with("cu") && n != "cuDriverGetVersion")
            .map(|(_, c)| *c)
            .collect()
    }

    fn assert_all_ok(&self, what: &str) {
        assert_eq!(
            self.exit,
            Some(0),
            "{what}: expected success, got:\n{}",
            self.text
        );
        assert!(
            self.calls.iter().all(|(n, c)| *c == 0 || n == "count"),
            "{what}:\n{}",
            self.text
        );
        assert_eq!(self.code("count"), 2, "{what}");
        assert_eq!(self.code("roundtrip"), 0, "{what}: copies must round trip");
    }
}

// === a long-running program, flipped under its feet ===

/// drvtest looping launch + sync every 10 ms until `stop` exists.
struct Live {
    child: Child,
    lines: Receiver<(String, i64)>,
    stop: PathBuf,
}

impl Live {
    fn start(mut cmd: Command, dir: &Path, name: &str) -> Live {
        let stop = dir.join(format!("{name}.stop"));
        let mut child = cmd
            .env("DRVTEST_STOP", &stop)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn drvtest");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(call) = parse(&line)
                    && tx.send(call).is_err()
                {
                    break;
                }
            }
        });
        Live { child, lines, stop }
    }

    /// Waits for a `cuLaunchKernel` line with `code`; returns how long it took.
    fn wait_launch(&self, code: i64, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let left = within.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok((name, c)) if name == "cuLaunchKernel" && c == code => return start.elapsed(),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no cuLaunchKernel {code} within {within:?}")
                }
                Err(RecvTimeoutError::Disconnected) => panic!("drvtest exited early"),
            }
        }
    }

    fn stop(mut self) {
        std::fs::write(&self.stop, b"").expect("write stop file");
        let status = self.child.wait().expect("wait drvtest");
        assert!(status.code().is_some(), "drvtest crashed: {status}");
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop, b"");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === tests ===

/// What issue 7 requires the shim to export, besides everything it wraps.
const REQUIRED: &[&str] = &[
    "cuInit",
    "cuGetProcAddress",
    "cuGetProcAddress_v2",
    "cuDriverGetVersion",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceGetName",
    "cuDeviceGetAttribute",
    "cuDeviceTotalMem_v2",
    "cuCtxCreate_v2",
    "cuCtxDestroy_v2",
    "cuDevicePrimaryCtxRetain",
    "cuCtxSetCurrent",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemGetInfo_v2",
    "cuMemcpy",
    "cuMemcpyAsync",
    "cuMemcpyHtoD_v2",
    "cuMemcpyDtoH_v2",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuLaunchKernel",
    "cuStreamCreate",
    "cuStreamSynchronize",
    "cuCtxSynchronize",
    "nvmlInit_v2",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetMemoryInfo",
    "nvmlShutdown",
    "nvmlErrorString",
];

fn dynamic_symbols(lib: &Path) -> Vec<String> {
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(lib)
        .output()
        .expect("run nm (binutils)");
    assert!(out.status.success(), "nm {}", lib.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect()
}

fn soname(lib: &Path) -> Option<String> {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(lib)
        .output()
        .expect("run readelf (binutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("(SONAME)"))?;
    Some(line.split('[').nth(1)?.trim_end_matches(']').to_string())
}

fn needed(lib: &Path) -> Vec<String> {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(lib)
        .output()
        .expect("run readelf (binutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_string()))
        .collect()
}

#[test]
fn both_builds_export_every_entry_point() {
    let f = fixture();
    for lib in [&f.shim, &f.soname, &f.nvml_soname] {
        let syms = dynamic_symbols(lib);
        let wrapped = faultline_cuda_shim::exported_symbols();
        for name in REQUIRED.iter().chain(wrapped.iter()) {
            assert!(
                syms.iter().any(|s| s == name),
                "{} lacks {name}",
                lib.display()
            );
        }
        assert!(syms.iter().any(|s| s == "faultline_cuda_shim_marker"));
    }
    assert_eq!(soname(&f.soname).as_deref(), Some("libcuda.so.1"));
    assert_eq!(soname(&f.nvml_soname).as_deref(), Some("libnvidia-ml.so.1"));
    assert_eq!(soname(&f.fake_nvml).as_deref(), Some("libnvidia-ml.so.1"));
    for (lib, dep) in [
        (&f.soname, "libfaultline-real-cuda.so.1"),
        (&f.nvml_soname, "libfaultline-real-nvml.so.1"),
    ] {
        let needed = needed(lib);
        assert!(
            needed.iter().any(|n| n == dep),
            "{} lacks {dep}: {needed:?}",
            lib.display()
        );
    }
    assert_eq!(soname(&f.shim), None);
    assert_eq!(soname(&f.fake).as_deref(), Some("libcuda.so.1"));
}

#[test]
fn without_a_fault_every_call_succeeds_through_every_method() {
    let t = Target::new();
    for via in [
        Via::Fake,
        Via::Soname,
        Via::SonameDlsym,
        Via::PreloadLinked,
        Via::PreloadDlopen,
        Via::PreloadSoname,
    ] {
        t.run(via, &["3"]).assert_all_ok(&format!("{via:?}"));
    }
    assert!(
        t.state.counters().0 >= 4,
        "shimmed processes map the state file"
    );
    assert_eq!(t.state.counters().1, 0, "nothing was faulted");
}

#[test]
fn each_error_kind_is_returned_while_active_and_success_after_clear() {
    let mut t = Target::new();
    for error in GpuError::ALL {
        t.unavailable(error);
        for via in [Via::Soname, Via::PreloadSoname] {
            let r = t.run(via, &[]);
            let (cuda, nvml) = (i64::from(error.cuda_code()), i64::from(error.nvml_code()));
            assert_eq!(r.exit, Some(1), "{via:?} {error:?}");
            assert_eq!(
                r.code("cuDriverGetVersion"),
                0,
                "version queries stay untouched"
            );
            if error == GpuError::OutOfMemory {
                assert_eq!(r.code("cuMemAlloc"), 2, "{via:?} {error:?}");
                for call in [
                    "cuInit",
                    "cuCtxCreate",
                    "cuLaunchKernel",
                    "cuStreamSynchronize",
                ] {
                    assert_eq!(
                        r.code(call),
                        0,
                        "{via:?} {error:?}: only allocations fail: {call}"
                    );
                }
            } else {
                for call in [
                    "cuInit",
                    "cuDeviceGetCount",
                    "cuCtxCreate",
                    "cuMemAlloc",
                    "cuMemcpyHtoD",
                    "cuLaunchKernel",
                    "cuStreamSynchronize",
                    "cuCtxSynchronize",
                ] {
                    assert_eq!(r.code(call), cuda, "{via:?} {error:?}: {call}\n{}", r.text);
                }
            }
            for call in ["nvmlInit", "nvmlDeviceGetCount", "nvmlDeviceGetMemoryInfo"] {
                assert_eq!(r.code(call), nvml, "{via:?} {error:?}: {call}\n{}", r.text);
            }
            assert_eq!(r.code("nvmlShutdown"), 0);
        }

        t.state.clear();
        t.run(Via::Soname, &[])
            .assert_all_ok(&format!("after clearing {error:?}"));
    }
    assert!(t.state.counters().1 > 0, "faulted calls are counted");
}

#[test]
fn ld_preload_catches_linked_programs() {
    let mut t = Target::new();
    t.unavailable(GpuError::DeviceUnavailable);
    let r = t.run(Via::PreloadLinked, &[]);
    assert_eq!(r.code("cuInit"), 46);
    assert_eq!(r.code("cuLaunchKernel"), 46);
    assert_eq!(r.code("nvmlDeviceGetHandleByIndex"), 15);
    t.state.clear();
    t.run(Via::PreloadLinked, &[]).assert_all_ok("after clear");
}

#[test]
fn soname_build_catches_dlopen_users_that_plain_preload_misses() {
    let mut t = Target::new();
    t.unavailable(GpuError::NoDevice);
    for via in [Via::Soname, Via::SonameDlsym, Via::PreloadSoname] {
        let r = t.run(via, &[]);
        assert_eq!(r.code("cuInit"), 100, "{via:?}:\n{}", r.text);
        assert_eq!(r.code("cuLaunchKernel"), 100, "{via:?}");
    }
    // The limitation docs/gpu.md describes: dlopen + dlsym from that handle
    // bypasses a preloaded library that is not libcuda.so.1.
    t.run(Via::PreloadDlopen, &[])
        .assert_all_ok("plain preload, dlopen user");
}

#[test]
fn unwrapped_entry_points_still_reach_the_driver() {
    let mut t = Target::new();
    // out_of_memory leaves cuInit alone, so the fake driver is initialised.
    t.unavailable(GpuError::OutOfMemory);
    for via in [
        Via::Soname,
        Via::SonameDlsym,
        Via::PreloadSoname,
        Via::PreloadLinked,
    ] {
        let r = t.run(via, &[]);
        assert_eq!(
            r.code("unwrapped:cuDevicePrimaryCtxGetState"),
            0,
            "{via:?}: dlsym/cuGetProcAddress of an entry point the shim does not wrap\n{}",
            r.text
        );
        assert_eq!(
            r.code("unwrapped:nvmlDeviceGetFanSpeed"),
            0,
            "{via:?}\n{}",
            r.text
        );
        assert_eq!(r.code("cuMemAlloc"), 2, "{via:?}");
    }
}

#[test]
fn a_running_process_sees_inject_and_revert() {
    let mut t = Target::new();
    let live = Live::start(t.command(Via::Soname, &[]), t.dir.path(), "live");
    live.wait_launch(0, Duration::from_secs(10));
    t.unavailable(GpuError::LaunchFailed);
    live.wait_launch(719, Duration::from_secs(5));
    t.state.clear();
    live.wait_launch(0, Duration::from_secs(5));
    live.stop();
}

#[test]
fn a_killed_writer_lets_the_lease_lapse_and_faults_turn_off() {
    let t = Target::new();
    let live = Live::start(t.command(Via::Soname, &[]), t.dir.path(), "live");
    live.wait_launch(0, Duration::from_secs(10));

    let lease = Duration::from_millis(800);
    let mut writer = Command::new(env!("CARGO_BIN_EXE_faultline-gpu-state"))
        .arg("hold")
        .arg(t.path())
        .args([
            "--error",
            "ecc_uncorrectable",
            "--lease-ms",
            "800",
            "--renew-ms",
            "100",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn faultline-gpu-state");
    let mut first = String::new();
    BufReader::new(writer.stdout.take().expect("piped"))
        .read_line(&mut first)
        .expect("read writer");
    assert_eq!(first.trim(), "holding");

    live.wait_launch(214, Duration::from_secs(5));
    // Held past several leases by renewal.
    std::thread::sleep(lease * 2);
    assert_eq!(
        t.run(Via::Soname, &[]).code("cuInit"),
        214,
        "renewed lease holds"
    );

    writer.kill().expect("SIGKILL the writer");
    writer.wait().expect("reap writer");
    let killed = Instant::now();
    live.wait_launch(0, lease + Duration::from_secs(3));
    let recovered = killed.elapsed();
    assert!(
        recovered <= lease + Duration::from_secs(1),
        "took {recovered:?}"
    );
    t.run(Via::Soname, &[])
        .assert_all_ok("new process after lapse");
    assert!(
        t.state.snapshot().expect("snapshot").mode != 0,
        "mode still set: the lease alone turned it off"
    );
    live.stop();
}

#[test]
fn after_calls_lets_the_first_calls_through() {
    let mut t = Target::new();
    t.set(
        FaultMode::unavailable(GpuError::DeviceUnavailable),
        DeviceMask::ALL,
        5,
    );
    let codes = t.run(Via::Soname, &[]).cuda_codes();
    assert_eq!(codes[..5], [0; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|c| *c == 46), "{codes:?}");
}

#[test]
fn a_device_mask_fails_only_the_chosen_devices() {
    let mut t = Target::new();
    let state = t.path().to_path_buf();
    let dev = |ordinal: &str| {
        let mut cmd = command(Via::Soname, Some(&state), &[]);
        cmd.env("DRVTEST_DEVICE", ordinal);
        cmd
    };
    let live0 = Live::start(dev("0"), t.dir.path(), "dev0");
    let live1 = Live::start(dev("1"), t.dir.path(), "dev1");
    live0.wait_launch(0, Duration::from_secs(10));
    live1.wait_launch(0, Duration::from_secs(10));

    t.set(
        FaultMode::unavailable(GpuError::EccUncorrectable),
        DeviceMask::ordinals([1]),
        0,
    );
    // Context calls find their device through the current context.
    live1.wait_launch(214, Duration::from_secs(5));
    live0.wait_launch(0, Duration::from_secs(5));

    let r0 = run(dev("0"));
    r0.assert_all_ok("device 0 is not selected");
    let r1 = run(dev("1"));
    assert_eq!(
        r1.code("cuInit"),
        0,
        "calls without a device need devices: all"
    );
    assert_eq!(r1.code("cuDeviceGet"), 214);
    assert_eq!(r1.code("cuCtxCreate"), 214);
    assert_eq!(r1.code("nvmlDeviceGetHandleByIndex"), 15);
    t.state.clear();
    live1.wait_launch(0, Duration::from_secs(5));
    live0.stop();
    live1.stop();
}

#[test]
fn slow_delays_launches_and_syncs_and_still_succeeds() {
    let mut t = Target::new();
    let base = t.run(Via::Soname, &["4"]);
    base.assert_all_ok("baseline");
    t.set(
        FaultMode::Slow {
            delay: Duration::from_millis(50),
        },
        DeviceMask::ALL,
        0,
    );
    let slow = t.run(Via::Soname, &["4"]);
    slow.assert_all_ok("slow");
    // 4 rounds of launch + stream sync + context sync = 12 delayed calls. Sleeps
    // are lower bounds, so this holds on a loaded machine; a comparison with the
    // baseline's time would not.
    assert!(
        slow.elapsed >= Duration::from_millis(600),
        "slow run took {:?} (baseline {:?})",
        slow.elapsed,
        base.elapsed
    );
    assert_eq!(
        t.state.counters().1,
        12,
        "only launches and syncs are delayed"
    );
}

#[test]
fn an_unusable_state_file_means_pass_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short");
    std::fs::write(&short, b"FLGS").expect("write");
    let foreign = dir.path().join("foreign");
    std::fs::write(&foreign, vec![0x5a; STATE_FILE_LEN]).expect("write");
    let missing = dir.path().join("missing");
    for state in [
        None,
        Some(&short),
        Some(&foreign),
        Some(&missing),
        Some(&dir.path().to_path_buf()),
    ] {
        let r = run(command(Via::Soname, state.map(PathBuf::as_path), &[]));
        r.assert_all_ok(&format!("state {state:?}"));
    }
}

#[test]
fn a_driver_calling_back_while_being_loaded_neither_hangs_nor_aborts() {
    let t = Target::new();
    // Preloaded, so the shim is in the global scope the fake's constructor searches.
    let mut cmd = t.command(Via::PreloadSoname, &[]);
    cmd.env("FAKE_CUDA_CTOR_CALLBACK", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn drvtest");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait drvtest") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("drvtest hung while the shim loaded a driver that calls back");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn a_missing_real_driver_looks_like_a_machine_without_one() {
    let t = Target::new();
    let mut cmd = t.command(Via::Soname, &[]);
    cmd.env(
        "FAULTLINE_REAL_LIBCUDA",
        t.dir.path().join("no-such-libcuda.so.1"),
    );
    let r = run(cmd);
    assert_eq!(r.exit, Some(3), "{}", r.text);
    assert_eq!(r.code("resolve:cuDriverGetVersion"), 100);
}
