//! The intent journal: one JSON file per fault under `<state-dir>/journal/`, written
//! and fsynced (file, then directory) *before* the fault is injected, updated once
//! it is active, and removed once its revert is verified. Whatever is in the
//! directory at start is what a crashed agent may have left on the host.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use faultline_spec::units::Duration;
use serde::{Deserialize, Serialize};

/// Where a fault is in its life; recovery reverts every state alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// Journaled, inject not known to have finished.
    Intent,
    /// Injected.
    Active,
    /// Revert begun, not yet verified.
    Reverting,
}

/// One journaled fault: enough to rebuild and revert it with nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub id: String,
    pub kind: String,
    pub params: serde_json::Value,
    pub lease: Duration,
    pub state: EntryState,
    /// The fault's own recovery state (`Fault::recovery`): stopped pids, table name.
    pub recovery: serde_json::Value,
    /// When the lease lapses (RFC 3339, UTC), as of the last inject or renewal:
    /// what `faultline status` shows for a fault nobody guards any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("journal {path}: {source}")]
pub struct JournalError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError {
        path: path.to_owned(),
        source,
    }
}

/// What [`Journal::load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub entries: Vec<Entry>,
    /// Files that could not be read as an entry, and why: kept on disk, reported.
    pub unreadable: Vec<(PathBuf, String)>,
}

#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// An exclusive lock on `<state_dir>/journal.lock`, held for the journal's
    /// life: two owners of one journal (two agents, or `faultline run` beside
    /// `faultline serve` on one state directory) would each revert the other's
    /// active faults as "left by a crash" when they start. The kernel drops it
    /// when the process dies, so kill -9 never leaves a stale lock.
    _lock: nix::fcntl::Flock<File>,
}

impl Journal {
    /// Opens (creating) `<state_dir>/journal`.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let dir = state_dir.join("journal");
        fs::create_dir_all(&dir).map_err(err(&dir))?;
        let lock = lock_owner(
            &state_dir.join("journal.lock"),
            "give each agent its own state directory",
        )?;
        Ok(Self { dir, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of fault `id` (ids are checked by the API: `[A-Za-z0-9._-]`, no
    /// leading dot).
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes the entry atomically (temp file, fsync, rename); with `durable`, also
    /// fsyncs the directory so the rename itself survives a crash.
    pub fn write(&self, entry: &Entry, durable: bool) -> Result<(), JournalError> {
        let path = self.path(&entry.id);
        let tmp = self.dir.join(format!("{}.json.tmp", entry.id));
        let text = serde_json::to_vec_pretty(entry).map_err(|e| JournalError {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let mut f = File::create(&tmp).map_err(err(&tmp))?;
        f.write_all(&text).map_err(err(&tmp))?;
        if durable {
            f.sync_all().map_err(err(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(err(&path))?;
        if durable {
            self.sync_dir()?;
        }
        Ok(())
    }

    /// Removes the entry of a fault whose revert is verified. The caller syncs the
    /// directory (once per batch: halt removes many).
    pub fn remove(&self, id: &str) -> Result<(), JournalError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(&path)(e)),
        }
    }

    pub fn sync_dir(&self) -> Result<(), JournalError> {
        OpenOptions::new()
            .read(true)
            .open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err(&self.dir))
    }

    /// Every entry, and the files that could not be read as one (kept, reported).
    pub fn load(&self) -> Result<Loaded, JournalError> {
        read_entries(&self.dir, true)
    }

    /// The entries under `<state_dir>/journal` as they are on disk, without taking
    /// the owner lock or tidying anything: what `faultline status` reads while a
    /// run or an agent may still own the journal. A missing directory is an empty
    /// journal.
    pub fn peek(state_dir: &Path) -> Result<Loaded, JournalError> {
        let dir = state_dir.join("journal");
        if !dir.exists() {
            return Ok(Loaded::default());
        }
        read_entries(&dir, false)
    }

    /// The pid that holds `<state_dir>/journal.lock` now, if a live process does.
    pub fn owner(state_dir: &Path) -> Option<u32> {
        let path = state_dir.join("journal.lock");
        let file = OpenOptions::new().read(true).open(&path).ok()?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
            // Nobody holds it; dropping the flock releases it again at once.
            Ok(_) => None,
            Err(_) => fs::read_to_string(&path).ok()?.trim().parse().ok(),
        }
    }
}

/// Takes an exclusive, non-blocking `flock` on `path` (created if missing) and
/// writes this process's pid into it, for the next claimant's error message. The
/// kernel drops the lock when the process dies, so kill -9 leaves no stale lock.
/// `hint` tells a refused claimant what to do.
pub fn lock_owner(path: &Path, hint: &str) -> Result<nix::fcntl::Flock<File>, JournalError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err(path))?;
    let mut lock = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
    {
        Ok(l) => l,
        Err((_, errno)) => {
            let holder = fs::read_to_string(path).unwrap_or_default();
            let holder = holder.trim();
            let reason = if errno == nix::errno::Errno::EWOULDBLOCK {
                format!(
                    "in use by another faultline process{}; {hint}",
                    if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {holder})")
                    }
                )
            } else {
                format!("cannot lock: {errno}")
            };
            return Err(JournalError {
                path: path.to_owned(),
                source: std::io::Error::other(reason),
            });
        }
    };
    let _ = lock.set_len(0);
    let _ = writeln!(&mut *lock, "{}", std::process::id());
    Ok(lock)
}

fn read_entries(dir: &Path, tidy: bool) -> Result<Loaded, JournalError> {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for item in fs::read_dir(dir).map_err(err(dir))? {
        let path = item.map_err(err(dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".json.tmp") {
            // A write cut short: the rename never happened, so the previous
            // state (or none, before the first fsync) is the truth.
            if tidy {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        match fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()))
        {
            Ok(e) => entries.push(e),
            Err(e) => bad.push((path, e)),
        }
    }
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Loaded {
        entries,
        unreadable: bad,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_journal_has_one_owner_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Journal::open(dir.path()).expect("first owner");
        let err = Journal::open(dir.path()).expect_err("second owner refused");
        let text = err.to_string();
        assert!(
            text.contains("in use by another faultline process")
                && text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        Journal::open(dir.path()).expect("free again once the owner is gone");
    }

    fn entry(id: &str) -> Entry {
        Entry {
            id: id.into(),
            kind: "process.pause".into(),
            params: serde_json::json!({"pid": 42}),
            lease: Duration::from_secs(2),
            state: EntryState::Intent,
            recovery: serde_json::json!({"procs": []}),
            expires_at: None,
        }
    }

    #[test]
    fn write_load_remove_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path()).expect("open");
        j.write(&entry("b"), true).expect("write");
        let mut a = entry("a");
        j.write(&a, true).expect("write");
        a.state = EntryState::Active;
        j.write(&a, true).expect("overwrite");
        std::fs::write(j.dir().join("c.json.tmp"), "{").expect("stray tmp");
        std::fs::write(j.dir().join("d.json"), "not json").expect("bad file");
        let Loaded {
            entries,
            unreadable: bad,
        } = j.load().expect("load");
        assert_eq!(
            entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(entries[0].state, EntryState::Active);
        assert_eq!(bad.len(), 1);
        assert!(!j.dir().join("c.json.tmp").exists());
        j.remove("a").expect("remove");
        j.remove("a").expect("remove twice");
        assert_eq!(j.load().expect("load").entries.len(), 1);
    }
}
