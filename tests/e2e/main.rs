//! End-to-end tests of the `faultline` binary: one test binary (cheap to link),
//! a module per area.

mod agent;
mod cli;
mod demo;
mod deploy;
mod fleet;
mod guardian;
mod ha;
mod llm;
mod run;
mod serve;
mod tidy;
mod ui;

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `faultline` command run from the repository root.
pub fn faultline() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("faultline").expect("binary is built");
    cmd.current_dir(root());
    cmd.env_remove("FAULTLINE_LOG");
    cmd
}

/// Files in `dir` (relative to the root) ending in `.ext`, sorted.
pub fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .expect("directory exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// The verdicts in a run's journal JSON that `keep` picks.
pub fn verdicts(
    journal: &serde_json::Value,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Vec<&serde_json::Value> {
    journal["verdicts"]
        .as_array()
        .expect("the journal has verdicts")
        .iter()
        .filter(|v| keep(v))
        .collect()
}

/// The verdicts in a run's journal JSON that did not hold.
pub fn failed_verdicts(journal: &serde_json::Value) -> Vec<&serde_json::Value> {
    verdicts(journal, |v| v["holds"] == false)
}

/// Every check of every verdict in a run's journal JSON: (phase, metric, value).
pub fn verdict_checks(journal: &serde_json::Value) -> Vec<(String, String, f64)> {
    verdicts(journal, |_| true)
        .into_iter()
        .flat_map(|v| {
            let phase = v["phase"].as_str().unwrap_or_default().to_owned();
            v["checks"].as_array().into_iter().flatten().map(move |c| {
                (
                    phase.clone(),
                    c["metric"].as_str().unwrap_or_default().to_owned(),
                    c["value"].as_f64().unwrap_or(f64::NAN),
                )
            })
        })
        .collect()
}

pub fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}
