//! Running `nft`: one named table per fault.

use std::process::Stdio;

use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

/// The table of fault `id`: `faultline_` + the id with every character outside
/// `[A-Za-z0-9_]` replaced by `_`, + a short hash of the raw id so that `a.b` and
/// `a-b` never share a table.
pub fn table_name(id: &str) -> String {
    let clean: String = id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // FNV-1a, 32 bits: stable across builds, unlike std's hasher.
    let hash = id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("faultline_{clean}_{hash:08x}")
}

/// Why `nft` failed, with its stderr.
#[derive(Debug)]
pub struct NftError(pub String);

impl std::fmt::Display for NftError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

async fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        NftError(if e.kind() == std::io::ErrorKind::NotFound {
            "`nft` not found: install nftables (scripts/setup.sh does)".into()
        } else {
            format!("cannot run nft: {e}")
        })
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| NftError(format!("writing to nft: {e}")))?;
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NftError(format!("waiting for nft: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// Creates or replaces table `inet <name>` with `body` (chains and rules), in one
/// transaction: declaring, deleting and declaring again is nft's atomic replace.
pub async fn replace_table(name: &str, body: &str) -> Result<(), NftError> {
    let script =
        format!("table inet {name}\ndelete table inet {name}\ntable inet {name} {{\n{body}}}\n");
    nft(&["-f", "-"], Some(&script)).await.map(drop)
}

/// Deletes the table; a table that is not there is success (revert is idempotent).
pub async fn delete_table(name: &str) -> Result<(), NftError> {
    match nft(&["delete", "table", "inet", name], None).await {
        Ok(_) => Ok(()),
        Err(NftError(e)) if e.contains("No such file or directory") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the table exists, asked of the kernel.
pub async fn table_exists(name: &str) -> Result<bool, NftError> {
    match nft(&["list", "table", "inet", name], None).await {
        Ok(_) => Ok(true),
        Err(NftError(e)) if e.contains("No such file or directory") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every table named `faultline_*` (any family), for checks that nothing is left.
pub async fn faultline_tables() -> Result<Vec<String>, NftError> {
    let out = nft(&["list", "tables"], None).await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|n| n.starts_with("faultline_"))
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_safe_and_distinct() {
        let a = table_name("run-1.step/a b;x");
        assert!(a.starts_with("faultline_run_1_step_a_b_x_"), "{a}");
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert_ne!(table_name("a.b"), table_name("a-b"));
        assert_eq!(table_name("x"), table_name("x"));
    }
}
