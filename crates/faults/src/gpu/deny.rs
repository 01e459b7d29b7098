//! `gpu.device_deny`: the NVIDIA device nodes are taken away from a cgroup, so
//! its processes get `EPERM` opening `/dev/nvidia*` (what a GPU lost to the
//! container looks like to the runtime). Through the cgroup v1 device controller
//! only: `devices.deny` to take, `devices.allow` to give back.
//!
//! The controller keeps either a default-allow list with deny exceptions (then
//! `devices.list` shows just `a *:* rwm`) or a default-deny list with allow
//! exceptions (containers: the runtime allows each device it hands out). In the
//! first case the fault denies `c 195:* rwm` and the NVIDIA majors from
//! /proc/devices; in the second it removes the allow entries for those devices.
//! Either way the rules to give back are written to a record file (fsynced)
//! before anything is denied, so a restarted agent reverts from the record.
//!
//! cgroup v2 has no device files: access is decided by eBPF programs of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the cgroup, so it is refused with
//! [`GpuFaultError::Unsupported`] (docs/gpu.md says why).
//!
//! No dead man's switch: the kernel keeps the rules until someone writes them
//! back, so this fault relies on the agent's lease and journal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use faultline_spec::fault::{Devices, GpuDeviceDeny};

use super::GpuFaultError;

/// Major number of `/dev/nvidia<N>` and `/dev/nvidiactl` (fixed by the driver).
pub const NVIDIA_MAJOR: u32 = 195;
/// /proc/devices names of the NVIDIA driver's dynamically numbered devices.
const DYNAMIC_NVIDIA: &[&str] = &[
    "nvidia-uvm",
    "nvidia-uvm-tools",
    "nvidia-caps",
    "nvidia-nvswitch",
];
const ALLOW_ALL: &str = "a *:* rwm";

/// Which cgroup hierarchy governs devices on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The v1 devices controller, mounted here.
    V1 { devices_mount: PathBuf },
    /// The unified hierarchy, mounted here, and no v1 devices controller.
    V2 { mount: PathBuf },
}

/// Reads /proc/self/mounts: a v1 `devices` controller wins (hybrid hosts keep
/// device control in v1); `None` when neither is mounted.
pub fn cgroup_version() -> Option<CgroupVersion> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    parse_mounts(&mounts)
}

fn parse_mounts(mounts: &str) -> Option<CgroupVersion> {
    let mut v2 = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        if f[2] == "cgroup" && f[3].split(',').any(|o| o == "devices") {
            return Some(CgroupVersion::V1 {
                devices_mount: PathBuf::from(f[1]),
            });
        }
        if f[2] == "cgroup2" && v2.is_none() {
            v2 = Some(CgroupVersion::V2 {
                mount: PathBuf::from(f[1]),
            });
        }
    }
    v2
}

/// What a device-deny fault has taken, for the agent's fault status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceDenyStatus {
    /// The cgroup directory the rules were written to.
    pub cgroup_dir: Option<PathBuf>,
    /// The rules written to `devices.deny`, given back on revert.
    pub denied: Vec<String>,
}

/// A `gpu.device_deny` fault on one cgroup.
#[derive(Debug)]
pub struct DeviceDenyFault {
    fault_id: String,
    cgroup: String,
    devices: Devices,
    record: PathBuf,
    applied: Mutex<DeviceDenyStatus>,
}

impl DeviceDenyFault {
    /// Checks the parameters; touches nothing. `record_dir` (the agent's state
    /// directory) keeps the rules to give back while the fault is active.
    pub fn new(
        fault_id: &str,
        spec: &GpuDeviceDeny,
        record_dir: &Path,
    ) -> Result<Self, GpuFaultError> {
        let cgroup = spec.cgroup.trim_matches('/');
        // `devices/x` names the v1 devices hierarchy's `x`; `devices` alone, its root.
        let cgroup = match cgroup {
            "devices" => "",
            c => c.strip_prefix("devices/").unwrap_or(c),
        }
        .to_owned();
        if cgroup.is_empty()
            || cgroup
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(GpuFaultError::BadParams(format!(
                "cgroup `{}`: expected a path under /sys/fs/cgroup like `kubepods/pod1/ctr`, \
                 not the root and without `..`",
                spec.cgroup
            )));
        }
        let clean: String = fault_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Ok(DeviceDenyFault {
            fault_id: fault_id.to_owned(),
            cgroup,
            devices: spec.devices.clone(),
            record: record_dir.join(format!("{clean}.gpu-device-deny")),
            applied: Mutex::new(DeviceDenyStatus::default()),
        })
    }

    /// The record file of rules to give back.
    pub fn record_file(&self) -> &Path {
        &self.record
    }

    /// Denies the devices. Idempotent: a fault already applied (its record
    /// exists) is left as it is.
    pub fn inject(&self) -> Result<(), GpuFaultError> {
        let dir = self.cgroup_dir()?;
        if self.record.exists() {
            return Ok(());
        }
        let list = read(&dir.join("devices.list")).map_err(|e| self.cg_err(e))?;
        let majors = nvidia_majors();
        let rules = rules_to_deny(&list, &self.devices, &majors).map_err(|reason| {
            GpuFaultError::Unsupported {
                kind: "gpu.device_deny",
                reason: format!("cgroup {}: {reason}", self.cgroup),
            }
        })?;
        if rules.is_empty() {
            return Err(self.cg_err(
                "the cgroup has no access to the NVIDIA devices asked for: nothing to deny",
            ));
        }
        self.write_record(&dir, &rules)?;
        for rule in &rules {
            if let Err(e) = write(&dir.join("devices.deny"), rule) {
                // Give back what was taken before failing.
                let _ = self.revert();
                return Err(self.cg_err(format!("writing `{rule}` to devices.deny: {e}")));
            }
        }
        *lock(&self.applied) = DeviceDenyStatus {
            cgroup_dir: Some(dir),
            denied: rules.clone(),
        };
        tracing::info!(fault = %self.fault_id, cgroup = %self.cgroup, ?rules, "gpu devices denied");
        Ok(())
    }

    /// Gives the rules in the record back through `devices.allow`. Idempotent,
    /// and works from a fresh object: the record says what to give back. A
    /// cgroup that is gone (its container ended) has nothing left to give.
    pub fn revert(&self) -> Result<(), GpuFaultError> {
        let text = match std::fs::read_to_string(&self.record) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.cg_err(format!("reading {}: {e}", self.record.display()))),
        };
        let (dir, rules) = parse_record(&text).ok_or_else(|| {
            self.cg_err(format!(
                "{} is not a device-deny record",
                self.record.display()
            ))
        })?;
        if dir.join("devices.allow").exists() {
            for rule in &rules {
                write(&dir.join("devices.allow"), rule)
                    .map_err(|e| self.cg_err(format!("writing `{rule}` to devices.allow: {e}")))?;
            }
        } else {
            tracing::info!(cgroup = %dir.display(), "cgroup gone; nothing to give back");
        }
        std::fs::remove_file(&self.record)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| self.cg_err(format!("removing {}: {e}", self.record.display())))?;
        tracing::info!(fault = %self.fault_id, cgroup = %dir.display(), "gpu devices allowed again");
        Ok(())
    }

    /// No record left, and on a default-deny cgroup every rule taken is listed
    /// again. (A default-allow cgroup lists only `a *:* rwm`, exceptions
    /// hidden: there the record's removal after successful writes is the check.)
    pub fn verify_reverted(&self) -> Result<(), GpuFaultError> {
        if self.record.exists() {
            return Err(GpuFaultError::NotReverted {
                what: format!("gpu.device_deny on cgroup {}", self.cgroup),
                reason: format!("{} still lists rules to give back", self.record.display()),
            });
        }
        let applied = lock(&self.applied).clone();
        let Some(dir) = applied.cgroup_dir else {
            return Ok(());
        };
        let Ok(list) = read(&dir.join("devices.list")) else {
            return Ok(()); // cgroup gone
        };
        if list.lines().any(|l| l.trim() == ALLOW_ALL) {
            return Ok(());
        }
        let missing: Vec<&String> = applied
            .denied
            .iter()
            .filter(|r| !list.lines().any(|l| l.trim() == r.as_str()))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(GpuFaultError::NotReverted {
                what: format!("gpu.device_deny on cgroup {}", self.cgroup),
                reason: format!("devices.list lacks {missing:?}"),
            })
        }
    }

    pub fn status(&self) -> DeviceDenyStatus {
        lock(&self.applied).clone()
    }

    fn cgroup_dir(&self) -> Result<PathBuf, GpuFaultError> {
        match cgroup_version() {
            Some(CgroupVersion::V1 { devices_mount }) => {
                let dir = devices_mount.join(&self.cgroup);
                if dir.join("devices.deny").exists() {
                    Ok(dir)
                } else {
                    Err(self.cg_err(format!(
                        "{} does not exist (or is not a devices cgroup)",
                        dir.display()
                    )))
                }
            }
            Some(CgroupVersion::V2 { mount }) => Err(GpuFaultError::Unsupported {
                kind: "gpu.device_deny",
                reason: format!(
                    "this host uses cgroup v2 ({}), which has no devices.deny: device access is \
                     decided by eBPF programs (BPF_PROG_TYPE_CGROUP_DEVICE) attached to the \
                     cgroup, next to the container runtime's own; faultline does not load eBPF \
                     programs. Use gpu.unavailable through the shim instead (docs/gpu.md)",
                    mount.display()
                ),
            }),
            None => Err(GpuFaultError::Unsupported {
                kind: "gpu.device_deny",
                reason: "no cgroup hierarchy is mounted on this host".into(),
            }),
        }
    }

    fn write_record(&self, dir: &Path, rules: &[String]) -> Result<(), GpuFaultError> {
        let mut text = format!("cgroup {}\n", dir.display());
        for r in rules {
            text.push_str(&format!("allow {r}\n"));
        }
        let tmp = self.record.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            if let Some(parent) = self.record.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.record)?;
            if let Some(parent) = self.record.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(())
        };
        write()
            .map_err(|e| self.cg_err(format!("writing the record {}: {e}", self.record.display())))
    }

    fn cg_err(&self, reason: impl ToString) -> GpuFaultError {
        GpuFaultError::Cgroup {
            cgroup: self.cgroup.clone(),
            reason: reason.to_string(),
        }
    }
}

/// Majors of the NVIDIA devices: 195, plus the dynamic ones in /proc/devices.
fn nvidia_majors() -> Vec<u32> {
    let text = std::fs::read_to_string("/proc/devices").unwrap_or_default();
    let mut majors = vec![NVIDIA_MAJOR];
    majors.extend(parse_proc_devices(&text));
    majors.dedup();
    majors
}

fn parse_proc_devices(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let mut in_char = false;
    for line in text.lines() {
        match line.trim() {
            "Character devices:" => in_char = true,
            "Block devices:" => in_char = false,
            l if in_char => {
                if let Some((major, name)) = l.split_once(' ')
                    && DYNAMIC_NVIDIA.contains(&name.trim())
                    && let Ok(m) = major.trim().parse()
                {
                    out.push(m);
                }
            }
            _ => {}
        }
    }
    out
}

/// The rules to write to devices.deny, from the cgroup's current devices.list.
fn rules_to_deny(list: &str, devices: &Devices, majors: &[u32]) -> Result<Vec<String>, String> {
    let default_allow = list.lines().any(|l| l.trim() == ALLOW_ALL);
    if default_allow {
        return Ok(match devices {
            Devices::All => majors.iter().map(|m| format!("c {m}:* rwm")).collect(),
            // Per-GPU nodes only: nvidiactl (195:255) and UVM serve every GPU.
            Devices::List(l) => l
                .iter()
                .map(|n| format!("c {NVIDIA_MAJOR}:{n} rwm"))
                .collect(),
        });
    }
    let mut rules = Vec::new();
    for entry in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut f = entry.split_whitespace();
        let (Some(kind), Some(numbers)) = (f.next(), f.next()) else {
            continue;
        };
        let Some((major, minor)) = numbers.split_once(':') else {
            continue;
        };
        if kind != "c" {
            if kind == "a" || major == "*" {
                return Err(format!(
                    "`{entry}` allows every device; cannot take the GPUs out of it"
                ));
            }
            continue;
        }
        if major == "*" {
            return Err(format!(
                "`{entry}` allows every character device; cannot take the GPUs out of it"
            ));
        }
        let Ok(major) = major.parse::<u32>() else {
            continue;
        };
        let hit = match devices {
            Devices::All => majors.contains(&major),
            Devices::List(l) if major == NVIDIA_MAJOR => match minor.parse::<u32>() {
                Ok(n) => l.contains(&n),
                Err(_) => {
                    return Err(format!(
                        "`{entry}` allows every NVIDIA device in one rule; a device list needs \
                         one rule per GPU (use `devices: all`)"
                    ));
                }
            },
            Devices::List(_) => false,
        };
        if hit {
            rules.push(entry.to_owned());
        }
    }
    Ok(rules)
}

fn parse_record(text: &str) -> Option<(PathBuf, Vec<String>)> {
    let mut lines = text.lines();
    let dir = PathBuf::from(lines.next()?.strip_prefix("cgroup ")?);
    let rules = lines
        .filter_map(|l| l.strip_prefix("allow "))
        .map(str::to_owned)
        .collect();
    Some((dir, rules))
}

fn read(p: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(p)
}

/// One rule per write: the kernel parses one rule per write(2).
fn write(p: &Path, rule: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(p)?;
    f.write_all(rule.as_bytes())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_pick_the_v1_devices_controller_over_v2() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
                      cgroup /sys/fs/cgroup/devices cgroup rw,relatime,devices 0 0\n";
        assert_eq!(
            parse_mounts(hybrid),
            Some(CgroupVersion::V1 {
                devices_mount: "/sys/fs/cgroup/devices".into()
            })
        );
        let v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            parse_mounts(v2),
            Some(CgroupVersion::V2 {
                mount: "/sys/fs/cgroup".into()
            })
        );
        assert_eq!(parse_mounts("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn proc_devices_names_the_dynamic_majors() {
        let text = "Character devices:\n  1 mem\n195 nvidia-frontend\n509 nvidia-uvm\n510 nvidia-caps\n\nBlock devices:\n509 nvidia-uvm\n";
        assert_eq!(parse_proc_devices(text), vec![509, 510]);
    }

    #[test]
    fn rules_on_default_allow_and_default_deny_lists() {
        let majors = [195, 509];
        assert_eq!(
            rules_to_deny("a *:* rwm\n", &Devices::All, &majors).unwrap(),
            vec!["c 195:* rwm", "c 509:* rwm"]
        );
        assert_eq!(
            rules_to_deny("a *:* rwm\n", &Devices::List(vec![1]), &majors).unwrap(),
            vec!["c 195:1 rwm"]
        );
        let docker =
            "c 1:3 rwm\nc 195:0 rwm\nc 195:1 rw\nc 195:255 rwm\nc 509:0 rwm\nc 136:* rwm\n";
        assert_eq!(
            rules_to_deny(docker, &Devices::All, &majors).unwrap(),
            vec!["c 195:0 rwm", "c 195:1 rw", "c 195:255 rwm", "c 509:0 rwm"]
        );
        assert_eq!(
            rules_to_deny(docker, &Devices::List(vec![1]), &majors).unwrap(),
            vec!["c 195:1 rw"]
        );
        assert!(rules_to_deny("c 195:* rwm\n", &Devices::List(vec![0]), &majors).is_err());
        assert!(rules_to_deny("c *:* rwm\n", &Devices::All, &majors).is_err());
    }

    #[test]
    fn bad_cgroup_paths_are_refused() {
        let dir = Path::new("/tmp");
        for bad in ["", "/", "a/../b", "devices/"] {
            let spec = GpuDeviceDeny {
                cgroup: bad.into(),
                devices: Devices::All,
            };
            assert!(DeviceDenyFault::new("f", &spec, dir).is_err(), "{bad:?}");
        }
        let spec = GpuDeviceDeny {
            cgroup: "/devices/kubepods/x".into(),
            devices: Devices::All,
        };
        assert_eq!(
            DeviceDenyFault::new("f", &spec, dir).unwrap().cgroup,
            "kubepods/x"
        );
    }

    #[test]
    fn record_round_trip() {
        let (dir, rules) =
            parse_record("cgroup /sys/fs/cgroup/devices/x\nallow c 195:* rwm\n").unwrap();
        assert_eq!(dir, Path::new("/sys/fs/cgroup/devices/x"));
        assert_eq!(rules, vec!["c 195:* rwm"]);
    }
}
