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
#[derive(Debug, Clone)]
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
///
/// Concurrent calls (a halt reverting a hundred faults) are coalesced into one
/// `nft -f -` transaction: one process instead of one per table, which is what
/// keeps a halt of many faults well under a second.
pub async fn delete_table(name: &str) -> Result<(), NftError> {
    static DELETES: Batch<Result<(), NftError>> = Batch::new();
    DELETES
        .run(name, |names| async move {
            // Declaring a table first makes deleting it succeed whether or not it
            // existed, so one missing table does not fail the whole transaction.
            let script: String = names
                .iter()
                .map(|n| format!("table inet {n}\ndelete table inet {n}\n"))
                .collect();
            let result = nft(&["-f", "-"], Some(&script)).await.map(drop);
            names.iter().map(|_| result.clone()).collect()
        })
        .await
}

/// Whether the table exists, asked of the kernel. Concurrent calls share one
/// `nft list tables`.
pub async fn table_exists(name: &str) -> Result<bool, NftError> {
    static LISTS: Batch<Result<bool, NftError>> = Batch::new();
    LISTS
        .run(name, |names| async move {
            match nft(&["list", "tables", "inet"], None).await {
                Ok(out) => {
                    let present: Vec<&str> = out
                        .lines()
                        .filter_map(|l| l.split_whitespace().nth(2))
                        .collect();
                    names
                        .iter()
                        .map(|n| Ok(present.contains(&n.as_str())))
                        .collect()
                }
                Err(e) => names.iter().map(|_| Err(e.clone())).collect(),
            }
        })
        .await
}

/// Coalesces concurrent requests: whoever holds the lock runs everything pending
/// in one go and answers every waiter.
struct Batch<R> {
    pending: std::sync::Mutex<Vec<(String, tokio::sync::oneshot::Sender<R>)>>,
    lock: tokio::sync::Mutex<()>,
}

impl<R: Send> Batch<R> {
    const fn new() -> Self {
        Self {
            pending: std::sync::Mutex::new(Vec::new()),
            lock: tokio::sync::Mutex::const_new(()),
        }
    }

    async fn run<F, Fut>(&self, name: &str, exec: F) -> R
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: std::future::Future<Output = Vec<R>>,
    {
        loop {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.lock_pending().push((name.to_owned(), tx));
            // Let the other reverts of the same halt queue up behind this one.
            tokio::task::yield_now().await;
            {
                let _guard = self.lock.lock().await;
                let batch = std::mem::take(&mut *self.lock_pending());
                if !batch.is_empty() {
                    let (names, senders): (Vec<String>, Vec<_>) = batch.into_iter().unzip();
                    for (tx, r) in senders.into_iter().zip(exec(names).await) {
                        let _ = tx.send(r);
                    }
                }
            }
            // Answered by the batch above or by an earlier one, both run under the
            // lock we just held.
            if let Ok(r) = rx.await {
                return r;
            }
            // The batch holding our entry was cancelled before answering: ask again.
        }
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<(String, tokio::sync::oneshot::Sender<R>)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
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
