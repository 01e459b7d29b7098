//! Command probe: runs a program (no shell); exit status 0 is success.
//!
//! The child is killed when the attempt is abandoned (its timeout passed or the
//! probe stopped), so a hung check never outlives the probe. Its output is
//! discarded. Whether commands may run at all is decided above this crate (the
//! controller's HTTP API refuses them).

use std::process::Stdio;

use tokio::process::Command;

use crate::window::FailureKind;

/// Runs `run[0]` with `run[1..]` as arguments and waits for it.
pub async fn attempt(run: &[String]) -> Result<Option<f64>, FailureKind> {
    let Some((program, args)) = run.split_first() else {
        return Err(FailureKind::Other);
    };
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| {
            tracing::debug!(program = %program, error = %e, "command probe could not start");
            FailureKind::Other
        })?;
    if status.success() {
        Ok(None)
    } else {
        Err(FailureKind::Rejected)
    }
}
