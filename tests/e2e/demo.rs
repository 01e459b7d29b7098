//! `faultline demo`: the README's first command. On this machine (root, nftables
//! from scripts/setup.sh) the quickstart game day passes against the embedded
//! target and exits 0; `--break` runs it against the fragile build and exits 1.
//! One test, run in order: both use the demo's database file; `--any-port` keeps
//! them off the fixed ports a developer's own demo may hold.

use crate::faultline;

#[test]
fn demo_passes_and_demo_break_fails_the_gate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = faultline()
        .args(["demo", "--any-port", "--quiet", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--report")
        .arg(dir.path().join("report"))
        .arg("--junit")
        .arg(dir.path().join("junit.xml"))
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("PASSED (exit 0)"), "{stdout}");
    // Every step of the quickstart went in and came out.
    for step in [
        "slow-network",
        "drop-connections",
        "rate-limit-burst",
        "stall-jobs-table",
    ] {
        assert!(stdout.contains(step), "{step} missing from\n{stdout}");
    }
    assert!(stdout.contains("report: "), "{stdout}");
    assert!(dir.path().join("report/index.html").exists());

    let out = faultline()
        .args(["demo", "--break", "--any-port", "--quiet", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--output")
        .arg("json")
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let journal: serde_json::Value = serde_json::from_slice(&out.stdout).expect("journal JSON");
    assert_eq!(journal["status"], "failed");
    assert!(
        journal["reason"]
            .as_str()
            .unwrap_or("")
            .contains("api: availability >= 90%"),
        "{}",
        journal["reason"]
    );
}
