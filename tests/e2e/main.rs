//! End-to-end tests of the `faultline` binary: one test binary (cheap to link),
//! a module per area.

mod agent;
mod cli;
mod demo;
mod deploy;
mod guardian;
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

pub fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}
