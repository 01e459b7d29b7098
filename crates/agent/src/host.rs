//! What faultline has left on this host, seen from outside, and clearing it with no
//! agent running: `faultline status` and `faultline halt` on a state directory,
//! and the guardian's recovery once the run it watched died.
//!
//! The journal says what was meant to be there; every journaled fault is rebuilt
//! from it and asked, from outside, whether anything of it is still in place (the
//! same `verify_reverted` a revert ends with). The host is also searched for
//! nftables tables named `faultline_*` that no journal entry accounts for: a
//! journal lost or written by another state directory. Nothing here injects.

use std::path::{Path, PathBuf};

use faultline_faults::network::nft;
use faultline_spec::FaultSpec;
use faultline_spec::units::Duration;
use serde::{Deserialize, Serialize};

use crate::journal::{EntryState, Journal, JournalError};
use crate::manager::{Failure, Manager};

/// Where a fault was found: the journal, the host itself, or a live agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A journal entry under the state directory.
    Journal,
    /// Seen on the host with no journal entry: an nftables table `faultline_*`.
    Host,
    /// Held by a running agent, as its `GET /v1/faults` reports it.
    Agent,
}

/// One fault that is journaled, or seen on the host, or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leftover {
    pub id: String,
    pub kind: String,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<EntryState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Duration>,
    /// When its lease lapses (RFC 3339), as of the last inject or renewal. Only
    /// a live agent reverts a lapsed lease; past it, nothing does but a halt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Whether anything of it is still in place on the host, seen from outside.
    pub present: bool,
    /// What is seen (the table, the stopped pids, the lock session), or why
    /// nothing is.
    pub detail: String,
}

/// What a state directory's journal and the host hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Survey {
    pub state_dir: PathBuf,
    /// The live process that owns the journal (a run, an agent, `serve`), if any:
    /// its faults are guarded and will be reverted by it.
    pub owner: Option<u32>,
    pub faults: Vec<Leftover>,
    /// What could not be looked at, and why.
    pub problems: Vec<String>,
}

impl Survey {
    /// Nothing journaled, nothing seen, and nothing that could not be checked.
    pub fn is_clear(&self) -> bool {
        self.faults.is_empty() && self.problems.is_empty()
    }
}

/// What [`halt`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostHalt {
    pub reverted: Vec<String>,
    pub failed: Vec<Failure>,
    /// The survey after the halt: what is still journaled or seen.
    pub left: Survey,
}

impl HostHalt {
    /// Everything reverted and confirmed from outside.
    pub fn is_clear(&self) -> bool {
        self.failed.is_empty() && self.left.is_clear()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A live process owns the journal: it guards its faults, and reverting them
    /// under it would fight it.
    #[error(
        "the journal in {} is owned by a live faultline process (pid {pid}); stop it (SIGTERM reverts its faults) or halt it through its API",
        .state_dir.display()
    )]
    Owned { state_dir: PathBuf, pid: u32 },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Looks at the journal under `state_dir` (without taking it) and at the host.
pub async fn survey(state_dir: &Path) -> Survey {
    survey_with(state_dir, true).await
}

/// [`survey`]; `scan_host` false looks at the journal's faults only.
async fn survey_with(state_dir: &Path, scan_host: bool) -> Survey {
    let mut survey = Survey {
        state_dir: state_dir.to_owned(),
        owner: Journal::owner(state_dir),
        ..Survey::default()
    };
    let loaded = match Journal::peek(state_dir) {
        Ok(l) => l,
        Err(e) => {
            survey.problems.push(e.to_string());
            Default::default()
        }
    };
    for (path, reason) in &loaded.unreadable {
        survey.problems.push(format!(
            "unreadable journal entry {}: {reason}",
            path.display()
        ));
    }
    let checks = loaded.entries.iter().map(|entry| async move {
        let seen = async {
            let spec = FaultSpec::from_kind_and_params(&entry.kind, entry.params.clone())
                .map_err(|e| format!("cannot read its parameters: {e}"))?;
            let fault =
                faultline_faults::restore(&entry.id, &spec, entry.lease.get(), &entry.recovery)
                    .map_err(|e| format!("cannot rebuild it: {e}"))?;
            fault.verify_reverted().await.map_err(|e| e.to_string())
        }
        .await;
        let (present, detail) = match seen {
            Ok(()) => (
                false,
                "journaled; nothing of it is seen on the host".to_owned(),
            ),
            Err(left) => (true, left),
        };
        Leftover {
            id: entry.id.clone(),
            kind: entry.kind.clone(),
            source: Source::Journal,
            state: Some(entry.state),
            lease: Some(entry.lease),
            expires_at: entry.expires_at.clone(),
            present,
            detail,
        }
    });
    survey.faults.extend(crate::manager::join_all(checks).await);
    if !scan_host {
        return survey;
    }
    match orphan_tables(&loaded.entries).await {
        Ok(tables) => survey
            .faults
            .extend(tables.into_iter().map(|table| Leftover {
                detail: format!(
                    "nftables table {table} is in place and no journal entry here made it"
                ),
                id: table,
                kind: "nftables table".to_owned(),
                source: Source::Host,
                state: None,
                lease: None,
                expires_at: None,
                present: true,
            })),
        Err(e) => survey
            .problems
            .push(format!("cannot list nftables tables: {e}")),
    }
    survey
}

/// `faultline_*` tables that no entry's recovery state names.
async fn orphan_tables(entries: &[crate::journal::Entry]) -> Result<Vec<String>, nft::NftError> {
    let known: Vec<String> = entries.iter().map(|e| e.recovery.to_string()).collect();
    let mut tables = nft::faultline_tables().await?;
    tables.retain(|t| !known.iter().any(|k| k.contains(&format!("\"{t}\""))));
    tables.sort();
    tables.dedup();
    Ok(tables)
}

/// Reverts everything the journal under `state_dir` holds (taking it, so it is
/// refused while a live process owns it) and, with `orphans`, deletes the
/// `faultline_*` nftables tables no entry accounts for; then surveys again, so
/// that what is reported left is what is seen, not what was hoped. Without
/// `orphans` (the guardian: what its run journaled is all it answers for) the
/// host is not searched.
pub async fn halt(state_dir: &Path, orphans: bool) -> Result<HostHalt, HostError> {
    let mut out = HostHalt::default();
    if state_dir.join("journal").exists() {
        let manager = match Manager::open(state_dir, Default::default()) {
            Ok(m) => m,
            Err(e) => {
                return Err(match Journal::owner(state_dir) {
                    Some(pid) => HostError::Owned {
                        state_dir: state_dir.to_owned(),
                        pid,
                    },
                    None => HostError::Journal(e),
                });
            }
        };
        let report = manager.recover().await?;
        out.reverted = report.reverted;
        out.failed = report.failed;
        if orphans {
            let entries = Journal::peek(state_dir)?.entries;
            delete_orphans(&entries, &mut out).await;
        }
        // Surveyed while still holding the journal, so nobody injects between.
        out.left = survey_with(state_dir, orphans).await;
        out.left.owner = None;
        drop(manager);
    } else {
        if orphans {
            delete_orphans(&[], &mut out).await;
        }
        out.left = survey_with(state_dir, orphans).await;
    }
    Ok(out)
}

async fn delete_orphans(entries: &[crate::journal::Entry], out: &mut HostHalt) {
    let Ok(tables) = orphan_tables(entries).await else {
        // The survey after the halt reports why nft could not be listed.
        return;
    };
    for table in tables {
        match nft::delete_table(&table).await {
            Ok(()) => {
                tracing::warn!(%table, "deleted an nftables table no journal entry accounts for");
                out.reverted.push(format!("nftables table {table}"));
            }
            Err(e) => out.failed.push(Failure {
                id: format!("nftables table {table}"),
                reason: e.to_string(),
            }),
        }
    }
}
