//! `faultline demo`: the README's first command. On this machine (root, nftables
//! from scripts/setup.sh) the quickstart game day passes against the embedded
//! target and exits 0; `--break` runs it against the fragile build and exits 1.
//! `--experiment experiments/llm-game-day.yaml` streams completions through a
//! rate limit and stalled streams and passes with TTFT and ITL verdicts.
//! One test, run in order: all use the demo's database file; `--any-port` keeps
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

    llm_game_day_shows_the_stall_and_the_rate_limit(dir.path());
}

fn llm_game_day_shows_the_stall_and_the_rate_limit(dir: &std::path::Path) {
    let out = faultline()
        .args([
            "demo",
            "--any-port",
            "--quiet",
            "--output",
            "json",
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .args(["--experiment", "experiments/llm-game-day.yaml"])
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let journal: serde_json::Value = serde_json::from_slice(&out.stdout).expect("journal JSON");
    assert_eq!(journal["status"], "passed");
    let checks = crate::verdict_checks(&journal);
    let value = |phase: &str, metric: &str| {
        checks
            .iter()
            .find(|(p, m, _)| p == phase && m == metric)
            .map(|c| c.2)
            .unwrap_or_else(|| panic!("no {phase} {metric} verdict in {checks:?}"))
    };
    // TTFT and ITL were judged in every phase; the 1 s stalls show in the
    // fault phase's itl_p99, and the rate limit in its availability.
    for phase in ["baseline", "recovery"] {
        assert!(value(phase, "ttft_p99") < 300.0, "{checks:?}");
        assert!(value(phase, "itl_p99") < 150.0, "{checks:?}");
    }
    assert!(value("faults", "itl_p99") >= 900.0, "{checks:?}");
    assert!(value("faults", "availability") < 100.0, "{checks:?}");
    let faults = journal["faults"].as_array().expect("faults");
    let figure = |step: &str, name: &str| {
        faults
            .iter()
            .filter(|f| f["step"] == step)
            .flat_map(|f| f["observations"].as_array().into_iter().flatten())
            .filter_map(|o| o["figures"][name].as_u64())
            .max()
            .unwrap_or(0)
    };
    assert!(figure("rate-limit-key", "rate_limited") > 0, "{faults:#?}");
    assert!(figure("stall-streams", "stalled") > 0, "{faults:#?}");
    assert!(
        faults.iter().all(|f| f["revert_confirmed"] == true),
        "{faults:#?}"
    );
}
