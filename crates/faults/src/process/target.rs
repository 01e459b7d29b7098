//! Resolving `pid` / `name` / `cgroup` into concrete processes, read from /proc and
//! cgroupfs.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::InjectError;

/// A process as it was when chosen: the start time (field 22 of /proc/<pid>/stat,
/// in clock ticks since boot) tells it apart from a later process with the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    pub pid: i32,
    pub start_time: u64,
}

/// The fields of /proc/<pid>/stat we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `T` (stopped), `t` (traced), `Z` (zombie), ...
    pub state: char,
    pub start_time: u64,
}

/// Reads /proc/<pid>/stat; `None` when the process does not exist (any more).
pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name is in parentheses and may itself contain spaces and ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some(Stat { state, start_time })
}

impl Proc {
    /// The current state of this very process, or `None` when it is gone (or its pid
    /// now belongs to another process). Zombies count as gone: they only wait to be
    /// reaped.
    pub fn state(&self) -> Option<char> {
        stat(self.pid)
            .filter(|s| s.start_time == self.start_time && s.state != 'Z' && s.state != 'X')
            .map(|s| s.state)
    }
}

/// The one selector `process.*` parameters give.
#[derive(Debug, Clone, Copy)]
pub enum Selector<'a> {
    Pid(u32),
    Name(&'a str),
    Cgroup(&'a str),
}

impl<'a> Selector<'a> {
    pub fn from_params(
        kind: &'static str,
        pid: Option<u32>,
        name: Option<&'a str>,
        cgroup: Option<&'a str>,
    ) -> Result<Self, InjectError> {
        match (pid, name, cgroup) {
            (Some(p), None, None) => Ok(Selector::Pid(p)),
            (None, Some(n), None) => Ok(Selector::Name(n)),
            (None, None, Some(c)) => Ok(Selector::Cgroup(c)),
            _ => Err(InjectError::InvalidParams {
                kind,
                reason: "give exactly one of `pid`, `name` and `cgroup`".into(),
            }),
        }
    }
}

/// Resolves a selector into the processes it names now. Refuses pid 1 and the agent
/// itself: stopping either would take down what is supposed to revert the fault.
pub fn resolve(kind: &'static str, selector: Selector<'_>) -> Result<Vec<Proc>, InjectError> {
    let own = std::process::id() as i32;
    let pids: Vec<i32> = match selector {
        Selector::Pid(p) => {
            let pid = i32::try_from(p).map_err(|_| InjectError::InvalidParams {
                kind,
                reason: format!("pid {p} is out of range"),
            })?;
            vec![pid]
        }
        Selector::Name(name) => by_name(name),
        Selector::Cgroup(cg) => by_cgroup(kind, cg)?,
    };
    let mut procs = Vec::new();
    for pid in pids {
        if pid <= 1 || pid == own {
            if matches!(selector, Selector::Pid(_)) {
                return Err(InjectError::InvalidParams {
                    kind,
                    reason: format!("refusing to signal pid {pid} (init or this agent)"),
                });
            }
            continue;
        }
        if let Some(s) = stat(pid).filter(|s| s.state != 'Z' && s.state != 'X') {
            procs.push(Proc {
                pid,
                start_time: s.start_time,
            });
        }
    }
    if procs.is_empty() {
        return Err(InjectError::NoTarget {
            kind,
            reason: match selector {
                Selector::Pid(p) => format!("no process with pid {p}"),
                Selector::Name(n) => format!("no process named {n:?} (comm)"),
                Selector::Cgroup(c) => format!("no process in cgroup {c:?}"),
            },
        });
    }
    Ok(procs)
}

fn by_name(name: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end_matches('\n') == name)
        })
        .collect()
}

/// The cgroup v2 directory of a `cgroup` parameter: relative to /sys/fs/cgroup, or
/// absolute under it; never above it.
pub fn cgroup_dir(kind: &'static str, cgroup: &str) -> Result<PathBuf, InjectError> {
    let root = Path::new("/sys/fs/cgroup");
    let path = Path::new(cgroup);
    let rel = path.strip_prefix(root).unwrap_or(path);
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(InjectError::InvalidParams {
            kind,
            reason: format!("cgroup {cgroup:?} must be a path under /sys/fs/cgroup without `..`"),
        });
    }
    Ok(root.join(rel))
}

fn by_cgroup(kind: &'static str, cgroup: &str) -> Result<Vec<i32>, InjectError> {
    let file = cgroup_dir(kind, cgroup)?.join("cgroup.procs");
    let text = std::fs::read_to_string(&file).map_err(|e| InjectError::NoTarget {
        kind,
        reason: format!("cannot read {}: {e}", file.display()),
    })?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_names_with_parentheses_and_spaces() {
        let line = "4242 (we ird) (x)) T 1 4242 4242 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.state, 'T');
        assert_eq!(s.start_time, 987654);
    }

    #[test]
    fn own_process_is_readable() {
        let s = stat(std::process::id() as i32).expect("own stat");
        assert_ne!(s.state, 'T');
    }

    #[test]
    fn selectors_need_exactly_one() {
        assert!(Selector::from_params("process.pause", Some(1), Some("x"), None).is_err());
        assert!(Selector::from_params("process.pause", None, None, None).is_err());
    }

    #[test]
    fn refuses_init_self_and_missing() {
        assert!(matches!(
            resolve("process.kill", Selector::Pid(1)),
            Err(InjectError::InvalidParams { .. })
        ));
        assert!(matches!(
            resolve("process.kill", Selector::Pid(std::process::id())),
            Err(InjectError::InvalidParams { .. })
        ));
        assert!(matches!(
            resolve("process.kill", Selector::Pid(i32::MAX as u32)),
            Err(InjectError::NoTarget { .. })
        ));
        assert!(matches!(
            resolve("process.kill", Selector::Name("no-such-comm-xyz")),
            Err(InjectError::NoTarget { .. })
        ));
    }

    #[test]
    fn cgroup_paths_stay_under_cgroupfs() {
        assert!(cgroup_dir("process.pause", "../etc").is_err());
        assert_eq!(
            cgroup_dir("process.pause", "/sys/fs/cgroup/a/b").expect("ok"),
            Path::new("/sys/fs/cgroup/a/b")
        );
        assert_eq!(
            cgroup_dir("process.pause", "a/b").expect("ok"),
            Path::new("/sys/fs/cgroup/a/b")
        );
    }
}
