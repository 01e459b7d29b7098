//! gpu faults against real processes: a C program calling the CUDA driver API
//! (crates/cuda-shim/tests/fixtures/drvtest.c) through the preloaded shim, in
//! front of the fake driver, while `GpuShimFault` writes the state file; the
//! example `gpu_fault_holder` as the agent, SIGKILLed mid-fault; and `gpu.device_deny`
//! on a cgroup this test creates, judged by a process in it opening an NVIDIA
//! device node.
//!
//! The first test builds the shim and the fakes (`cargo build -p ...`, a no-op
//! when built) and compiles drvtest.c with `cc`. Each test has its own temporary
//! directory and state file, so the tests run in parallel.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use faultline_faults::gpu::{
    CgroupVersion, DeviceDenyFault, GpuFaultError, GpuShimFault, cgroup_version,
};
use faultline_spec::fault::{Devices, GpuCalls, GpuDeviceDeny, GpuError, GpuSlow, GpuUnavailable};
use faultline_spec::units::Duration as SpecDuration;

// The shim, the fake driver and drvtest, built as the interposer's own tests do.
#[path = "../../cuda-shim/tests/fixtures/build.rs"]
mod build;

use build::fixture;

/// drvtest linked against libcuda, the shim preloaded, the fake driver behind.
fn drvtest(state: &Path, args: &[&str]) -> Command {
    let f = fixture();
    let mut cmd = Command::new(&f.drvtest_direct);
    cmd.arg("direct")
        .args(args)
        .env("LD_LIBRARY_PATH", &f.fake_dir)
        .env("LD_PRELOAD", &f.shim)
        .env("FAULTLINE_REAL_LIBCUDA", &f.fake)
        .env("FAULTLINE_REAL_LIBNVML", &f.fake_nvml)
        .env("FAULTLINE_GPU_STATE", state)
        .env_remove("DRVTEST_STOP")
        .env_remove("DRVTEST_DEVICE")
        .env_remove("DRVTEST_NVML");
    cmd
}

fn parse(line: &str) -> Option<(String, i64)> {
    let (name, code) = line.split_once(' ')?;
    Some((name.to_string(), code.trim().parse().ok()?))
}

/// One run to the end: each call's code, and how long it took.
fn run_once(mut cmd: Command) -> (Vec<(String, i64)>, Duration, String) {
    let start = Instant::now();
    let out = cmd.output().expect("run drvtest");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        text.lines().filter_map(parse).collect(),
        start.elapsed(),
        text,
    )
}

fn code(calls: &[(String, i64)], name: &str, text: &str) -> i64 {
    calls
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, c)| *c)
        .unwrap_or_else(|| panic!("no {name} in output:\n{text}"))
}

/// drvtest looping launch + syncs every 10 ms until its stop file exists.
struct Live {
    child: Child,
    lines: Receiver<(String, i64)>,
    stop: PathBuf,
}

impl Live {
    fn start(state: &Path, dir: &Path) -> Live {
        let stop = dir.join("drvtest.stop");
        let mut child = drvtest(state, &[])
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

    /// Waits for a `cuLaunchKernel` returning `code`; how long that took.
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

    /// Every launch seen during `span` returned `code`, and there were some.
    fn all_launches(&self, code: i64, span: Duration) {
        let start = Instant::now();
        let mut seen = 0;
        while let Some(left) = span.checked_sub(start.elapsed()) {
            match self.lines.recv_timeout(left) {
                Ok((name, c)) if name == "cuLaunchKernel" => {
                    assert_eq!(c, code, "a launch returned {c} while {code} was expected");
                    seen += 1;
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => panic!("drvtest exited early"),
            }
        }
        assert!(seen > 0, "no launch within {span:?}");
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop, b"");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unavailable(error: GpuError, devices: Devices) -> GpuUnavailable {
    GpuUnavailable {
        devices,
        error,
        after_calls: None,
        state_file: None,
    }
}

const LONG_LEASE: Duration = Duration::from_secs(60);

// === gpu.unavailable and gpu.slow through the shim ===

#[test]
fn a_running_program_gets_each_error_while_injected_and_success_after_revert() {
    let dir = tempfile::tempdir().unwrap();
    // The agent's default path, in a directory that does not exist yet.
    let state = dir.path().join("run/gpu/w1.state");
    let probe = GpuShimFault::unavailable(
        "probe",
        &unavailable(GpuError::NoDevice, Devices::All),
        LONG_LEASE,
        &state,
    )
    .unwrap();
    // The file must exist before the program's first call (the shim maps it once).
    probe.inject().unwrap();
    probe.revert().unwrap();
    let live = Live::start(&state, dir.path());
    live.wait_launch(0, Duration::from_secs(20));
    for (error, cuda) in [
        (GpuError::NoDevice, 100),
        (GpuError::DeviceUnavailable, 46),
        (GpuError::EccUncorrectable, 214),
        (GpuError::LaunchFailed, 719),
        (GpuError::GpuIsLost, 46),
    ] {
        let f =
            GpuShimFault::unavailable("f1", &unavailable(error, Devices::All), LONG_LEASE, &state)
                .unwrap();
        f.inject().unwrap();
        live.wait_launch(cuda, Duration::from_secs(5));
        assert!(f.status().active, "{error:?}");
        f.revert().unwrap();
        live.wait_launch(0, Duration::from_secs(5));
        f.verify_reverted().unwrap();
        f.revert().unwrap(); // again: a no-op
        f.verify_reverted().unwrap();
    }
    let status = probe.status();
    assert!(
        status.attached >= 1,
        "the program mapped the file: {status:?}"
    );
    assert!(
        status.faulted_calls > 0,
        "the shim counted faulted calls: {status:?}"
    );
}

#[test]
fn out_of_memory_fails_allocations_only_and_devices_select_ordinals() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("w1.state");
    let oom = GpuShimFault::unavailable(
        "oom",
        &unavailable(GpuError::OutOfMemory, Devices::All),
        LONG_LEASE,
        &state,
    )
    .unwrap();
    oom.inject().unwrap();
    let (calls, _, text) = run_once(drvtest(&state, &[]));
    assert_eq!(code(&calls, "cuMemAlloc", &text), 2, "{text}");
    assert_eq!(code(&calls, "cuLaunchKernel", &text), 0, "{text}");
    oom.revert().unwrap();

    // devices: [1] hits a program on device 1, not one on device 0.
    let one = GpuShimFault::unavailable(
        "dev1",
        &unavailable(GpuError::EccUncorrectable, Devices::List(vec![1])),
        LONG_LEASE,
        &state,
    )
    .unwrap();
    one.inject().unwrap();
    let (calls, _, text) = run_once(drvtest(&state, &[]));
    assert_eq!(
        code(&calls, "cuLaunchKernel", &text),
        0,
        "device 0:\n{text}"
    );
    let (calls, _, text) = run_once({
        let mut c = drvtest(&state, &[]);
        c.env("DRVTEST_DEVICE", "1");
        c
    });
    // Device 1 is lost from its first call that names it; without a context
    // the rest fail in the driver.
    assert_eq!(code(&calls, "cuDeviceGet", &text), 214, "device 1:\n{text}");
    assert_eq!(code(&calls, "cuCtxCreate", &text), 214, "device 1:\n{text}");
    assert_ne!(
        code(&calls, "cuLaunchKernel", &text),
        0,
        "device 1:\n{text}"
    );
    one.revert().unwrap();
    one.verify_reverted().unwrap();
}

#[test]
fn after_calls_lets_the_first_calls_through() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("w1.state");
    let spec = GpuUnavailable {
        after_calls: Some(3),
        ..unavailable(GpuError::DeviceUnavailable, Devices::All)
    };
    let f = GpuShimFault::unavailable("f1", &spec, LONG_LEASE, &state).unwrap();
    f.inject().unwrap();
    let (calls, _, text) = run_once(drvtest(&state, &[]));
    let cuda: Vec<i64> = calls
        .iter()
        .filter(|(n, _)| n.starts_with("cu") && n != "cuDriverGetVersion")
        .map(|(_, c)| *c)
        .collect();
    assert_eq!(&cuda[..3], &[0, 0, 0], "{text}");
    assert!(cuda[3..].iter().all(|c| *c == 46), "{text}");
    f.revert().unwrap();
}

#[test]
fn a_lease_that_is_not_renewed_lapses_in_the_running_program() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("w1.state");
    let lease = Duration::from_millis(800);
    let f = GpuShimFault::unavailable(
        "f1",
        &unavailable(GpuError::LaunchFailed, Devices::All),
        lease,
        &state,
    )
    .unwrap();
    f.inject().unwrap();
    f.revert().unwrap();
    let live = Live::start(&state, dir.path());
    live.wait_launch(0, Duration::from_secs(20));
    let injected = Instant::now();
    f.inject().unwrap();
    live.wait_launch(719, Duration::from_secs(5));
    // Never renewed, as if the agent had died: the shim drops it by itself.
    live.wait_launch(0, lease + Duration::from_secs(3));
    assert!(
        injected.elapsed() >= lease,
        "recovered before the lease ended"
    );
    f.verify_reverted().unwrap();
    // Renewing a lapsed fault is refused rather than silently re-armed.
    assert!(f.renew(lease).is_err());
    f.revert().unwrap();
}

#[test]
fn a_killed_agent_leaves_the_fault_for_at_most_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("w1.state");
    let lease = Duration::from_millis(1000);
    // Create the file first so the program maps it at its first call.
    let ours = GpuShimFault::unavailable(
        "agent",
        &unavailable(GpuError::EccUncorrectable, Devices::All),
        lease,
        &state,
    )
    .unwrap();
    ours.revert().unwrap();
    ours.inject().unwrap();
    ours.revert().unwrap();
    let live = Live::start(&state, dir.path());
    live.wait_launch(0, Duration::from_secs(20));

    // The agent stand-in: an example binary that injects and renews like the
    // agent, in a process of its own so it can be SIGKILLed.
    let holder = std::env::current_exe()
        .ok()
        .and_then(|e| {
            e.parent()?
                .parent()
                .map(|d| d.join("examples/gpu_fault_holder"))
        })
        .expect("target/<profile>/examples");
    let mut agent = Command::new(&holder)
        .arg(&state)
        .arg(lease.as_millis().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} (built by `cargo test`): {e}",
                holder.display()
            )
        });
    live.wait_launch(214, Duration::from_secs(10));
    // Longer than one lease: the agent's renewals keep it on.
    live.all_launches(214, lease + Duration::from_millis(500));
    agent.kill().expect("SIGKILL the agent");
    agent.wait().unwrap();
    let killed = Instant::now();
    live.wait_launch(0, lease + Duration::from_secs(3));
    let recovered = killed.elapsed();
    assert!(
        recovered <= lease + Duration::from_secs(2),
        "recovered {recovered:?} after the kill; lease {lease:?}"
    );
    // A restarted agent reverts from its journal with a fresh object.
    ours.revert().unwrap();
    ours.verify_reverted().unwrap();
}

#[test]
fn gpu_slow_delays_launches_and_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("w1.state");
    let delay = Duration::from_millis(30);
    let spec = GpuSlow {
        devices: Devices::All,
        delay: SpecDuration(delay),
        calls: GpuCalls::All,
        state_file: Some(state.display().to_string()),
    };
    let f = GpuShimFault::slow("slow", &spec, LONG_LEASE, Path::new("/nonexistent")).unwrap();
    f.inject().unwrap();
    f.revert().unwrap();
    let (_, baseline, text) = run_once(drvtest(&state, &["10"]));
    assert!(text.contains("cuLaunchKernel 0"), "{text}");
    f.inject().unwrap();
    // 10 rounds of launch + stream sync + context sync: 30 delayed calls.
    let (calls, slowed, text) = run_once(drvtest(&state, &["10"]));
    assert!(
        calls.iter().all(|(n, c)| *c == 0 || n == "count"),
        "slow never fails a call:\n{text}"
    );
    let floor = delay * 30;
    assert!(
        slowed >= floor,
        "slowed run took {slowed:?}, under {floor:?}"
    );
    assert!(
        slowed >= baseline + floor * 3 / 4,
        "slowed {slowed:?} vs baseline {baseline:?}"
    );
    f.revert().unwrap();
    f.verify_reverted().unwrap();
    let (_, after, _) = run_once(drvtest(&state, &["10"]));
    assert!(after < slowed, "after revert {after:?}, slowed {slowed:?}");
}

// === gpu.device_deny through the cgroup device controller ===

/// A v1 devices cgroup made for one test, removed on drop.
struct TestCgroup {
    dir: PathBuf,
    name: String,
}

impl TestCgroup {
    fn new(mount: &Path, tag: &str) -> TestCgroup {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "faultline-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = mount.join(&name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot create the cgroup {} ({e}): gpu.device_deny tests need root \
                 (run `sudo cargo test -p faultline-faults --test gpu`)",
                dir.display()
            )
        });
        TestCgroup { dir, name }
    }

    fn write(&self, file: &str, rule: &str) {
        std::fs::write(self.dir.join(file), rule).unwrap();
    }

    fn list(&self) -> String {
        std::fs::read_to_string(self.dir.join("devices.list")).unwrap()
    }

    /// Opens `node` from a process inside the cgroup: the open's error text.
    fn open_from_inside(&self, node: &Path) -> String {
        let script = format!(
            "echo $$ > '{}' && exec head -c 1 '{}'",
            self.dir.join("cgroup.procs").display(),
            node.display()
        );
        let out = Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("run sh");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The processes it held have exited; an empty cgroup can be removed.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// /dev/nvidia0's numbers, in a temporary directory: without a driver, opening
/// it fails with ENXIO when the cgroup allows it and EPERM when it does not.
fn nvidia_node(dir: &Path) -> PathBuf {
    let node = dir.join("nvidia0");
    let st = Command::new("mknod")
        .arg(&node)
        .args(["c", "195", "0"])
        .status()
        .expect("run mknod");
    assert!(st.success(), "mknod failed (needs root)");
    node
}

const DENIED: &str = "Operation not permitted";

fn v1_mount_or_check_v2_refusal() -> Option<PathBuf> {
    match cgroup_version() {
        Some(CgroupVersion::V1 { devices_mount }) => Some(devices_mount),
        Some(CgroupVersion::V2 { .. }) => {
            let records = tempfile::tempdir().unwrap();
            let spec = GpuDeviceDeny {
                cgroup: "faultline-test".into(),
                devices: Devices::All,
            };
            let f = DeviceDenyFault::new("d", &spec, records.path()).unwrap();
            let err = f.inject().unwrap_err();
            assert!(matches!(err, GpuFaultError::Unsupported { .. }), "{err}");
            assert!(err.to_string().contains("cgroup v2"), "{err}");
            f.revert().unwrap();
            f.verify_reverted().unwrap();
            None
        }
        None => panic!("no cgroup hierarchy is mounted: mount cgroup2 on /sys/fs/cgroup"),
    }
}

#[test]
fn device_deny_on_a_default_allow_cgroup() {
    let Some(mount) = v1_mount_or_check_v2_refusal() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let node = nvidia_node(tmp.path());
    let cg = TestCgroup::new(&mount, "allow");
    assert!(
        !cg.open_from_inside(&node).contains(DENIED),
        "allowed before the fault"
    );
    let spec = GpuDeviceDeny {
        cgroup: cg.name.clone(),
        devices: Devices::All,
    };
    let records = tmp.path().join("records");
    let f = DeviceDenyFault::new("deny-1", &spec, &records).unwrap();
    f.inject().unwrap();
    f.inject().unwrap(); // idempotent
    assert!(f.record_file().exists());
    assert!(
        cg.open_from_inside(&node).contains(DENIED),
        "denied while injected"
    );
    // A fresh object (a restarted agent) reverts from the record alone.
    let fresh = DeviceDenyFault::new("deny-1", &spec, &records).unwrap();
    fresh.revert().unwrap();
    fresh.verify_reverted().unwrap();
    fresh.revert().unwrap();
    let after = cg.open_from_inside(&node);
    assert!(
        !after.contains(DENIED) && !after.is_empty(),
        "allowed after revert: {after}"
    );
}

#[test]
fn device_deny_on_a_default_deny_cgroup_gives_back_exactly_its_rules() {
    let Some(mount) = v1_mount_or_check_v2_refusal() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let node = nvidia_node(tmp.path());
    let cg = TestCgroup::new(&mount, "deny");
    // Like a container runtime: deny everything, allow what the container gets.
    cg.write("devices.deny", "a");
    for rule in ["c 1:3 rwm", "c 195:0 rwm", "c 195:1 rw", "c 195:255 rwm"] {
        cg.write("devices.allow", rule);
    }
    let before = cg.list();
    assert!(!cg.open_from_inside(&node).contains(DENIED));
    let spec = GpuDeviceDeny {
        cgroup: format!("devices/{}", cg.name),
        devices: Devices::List(vec![0]),
    };
    let f = DeviceDenyFault::new("deny-2", &spec, tmp.path()).unwrap();
    f.inject().unwrap();
    assert!(cg.open_from_inside(&node).contains(DENIED));
    let during = cg.list();
    assert!(!during.contains("c 195:0 rwm"), "{during}");
    assert!(during.contains("c 195:1 rw"), "other GPUs stay: {during}");
    f.revert().unwrap();
    f.verify_reverted().unwrap();
    let mut a: Vec<&str> = before.lines().collect();
    let after = cg.list();
    let mut b: Vec<&str> = after.lines().collect();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, "the list is as it was");
    assert!(!cg.open_from_inside(&node).contains(DENIED));
}

#[test]
fn device_deny_on_a_missing_cgroup_is_a_clear_error() {
    let Some(_) = v1_mount_or_check_v2_refusal() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let spec = GpuDeviceDeny {
        cgroup: "faultline-no-such-cgroup".into(),
        devices: Devices::All,
    };
    let f = DeviceDenyFault::new("d", &spec, tmp.path()).unwrap();
    let err = f.inject().unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
    f.revert().unwrap();
    f.verify_reverted().unwrap();
}
