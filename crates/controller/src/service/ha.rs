//! Several `faultline serve` replicas on one PostgreSQL store: this replica's id and
//! leases, and the task that keeps them.
//!
//! - Every replica heartbeats its `replicas` row and renews the run lease of every
//!   run it owns ([`super::Manager::tick_leases`]) every [`HaSettings::tick`]
//!   (a third of the run lease, at most 1 s, so an abort asked on another replica
//!   takes effect within a second).
//! - Every replica sweeps ([`RunStore::sweep_expired_runs`], every
//!   [`HaSettings::sweep_every`]): a run whose lease expired (its owner died or
//!   lost the store for longer than the lease) is marked `aborted`, with a reason
//!   that names the lost owner, an event and an audit entry. Its faults lapse on
//!   the agents by their own leases (the experiment's `safety.lease`), so with a
//!   `safety.lease` no longer than the run lease nothing of a dead replica's run is
//!   left anywhere a second after the run lease.
//! - One replica's scheduler fires (the lease row `scheduler`, see
//!   [`crate::schedule::Leadership`]); handover takes at most
//!   [`HaSettings::handover`] (leader lease + a third of it).
//!
//! On SQLite (one host, the single-node default) the same machinery runs with one
//! replica, and a start takes over every run in flight, whoever owned it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::manager::Manager;
use crate::schedule::Leadership;
use crate::store::RunStore;

/// The default run lease (`ha.run_lease`, `--run-lease`).
pub const DEFAULT_RUN_LEASE: Duration = Duration::from_secs(15);
/// The default scheduler leader lease (`ha.leader_lease`, `--leader-lease`).
pub const DEFAULT_LEADER_LEASE: Duration = Duration::from_secs(15);
/// The shortest lease accepted: renewals every third of it must fit.
pub const MIN_LEASE: Duration = Duration::from_millis(300);

/// This replica's identity and leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaSettings {
    /// Unique among the replicas on one store (two processes with one id take each
    /// other's runs for their own).
    pub replica_id: String,
    /// How long a run stays this replica's without a renewal.
    pub run_lease: Duration,
    /// How long the scheduler's leadership lasts without a renewal.
    pub leader_lease: Duration,
}

impl Default for HaSettings {
    fn default() -> Self {
        HaSettings {
            replica_id: default_replica_id(),
            run_lease: DEFAULT_RUN_LEASE,
            leader_lease: DEFAULT_LEADER_LEASE,
        }
    }
}

impl HaSettings {
    /// How often run leases are renewed (and abort requests looked for).
    pub fn tick(&self) -> Duration {
        (self.run_lease / 3).min(Duration::from_secs(1))
    }

    /// How often expired runs are swept.
    pub fn sweep_every(&self) -> Duration {
        (self.run_lease / 6).min(Duration::from_millis(500))
    }

    pub fn leadership(&self) -> Leadership {
        Leadership {
            replica: self.replica_id.clone(),
            lease: self.leader_lease,
        }
    }

    /// The longest a dead leader's schedules go unfired.
    pub fn handover(&self) -> Duration {
        self.leadership().handover()
    }

    /// Refuses leases too short to renew.
    pub fn check(&self) -> Result<(), String> {
        if self.replica_id.trim().is_empty() {
            return Err("ha.replica_id must not be empty".to_owned());
        }
        for (what, d) in [
            ("ha.run_lease", self.run_lease),
            ("ha.leader_lease", self.leader_lease),
        ] {
            if d < MIN_LEASE {
                return Err(format!("{what} is {d:?}: at least {MIN_LEASE:?}"));
            }
        }
        Ok(())
    }
}

/// `HOSTNAME-PID`: unique per process on a host, and per pod in Kubernetes (where
/// `--replica-id $(POD_NAME)` is the better choice: it survives a restart of the
/// container, so the replica aborts its own earlier runs at once).
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "faultline".to_owned());
    format!("{host}-{}", std::process::id())
}

/// The running lease task.
#[derive(Debug)]
pub struct HaHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HaHandle {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "lease task ended abnormally");
        }
    }
}

/// Starts heartbeats, run-lease renewals and the sweeper.
pub fn spawn(manager: Arc<Manager>) -> HaHandle {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let ha = manager.ha().clone();
        let store: Arc<dyn RunStore> = Arc::clone(manager.store());
        let version = env!("CARGO_PKG_VERSION");
        let mut tick = tokio::time::interval(ha.tick());
        let mut sweep = tokio::time::interval(ha.sweep_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(replica = %ha.replica_id, run_lease = ?ha.run_lease, leader_lease = ?ha.leader_lease, "replica leases started");
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = store.heartbeat_replica(&ha.replica_id, version).await {
                        tracing::warn!(error = %e, "replica heartbeat failed");
                    }
                    if let Err(e) = manager.tick_leases().await {
                        tracing::warn!(error = %e, "run lease renewal failed");
                    }
                }
                _ = sweep.tick() => match store.sweep_expired_runs(&ha.replica_id).await {
                    Ok(swept) => {
                        for s in swept {
                            tracing::warn!(run = %s.id, owner = ?s.owner, reason = %s.reason, "run of a lost replica marked aborted");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "sweeping expired runs failed"),
                },
                _ = stopped.changed() => break,
            }
        }
    });
    HaHandle { stop, task }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::config::ConfigFile;

    #[test]
    fn the_ha_keys_parse_and_unknown_ones_are_refused() {
        let file: ConfigFile = serde_yaml::from_str(
            "ha:\n  replica_id: pod-a\n  run_lease: 10s\n  leader_lease: 3s\n",
        )
        .expect("parses");
        assert_eq!(file.ha.replica_id.as_deref(), Some("pod-a"));
        assert_eq!(
            file.ha.run_lease.map(|d| d.0),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            file.ha.leader_lease.map(|d| d.0),
            Some(Duration::from_secs(3))
        );
        // What agents/controller.yaml on main writes.
        let file: ConfigFile = serde_yaml::from_str("ha:\n  run_lease: 15s\n").expect("parses");
        assert_eq!(file.ha.replica_id, None);
        let e = serde_yaml::from_str::<ConfigFile>("ha:\n  lease: 15s\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `lease`"), "{e}");
        let none: ConfigFile = serde_yaml::from_str("listen: 127.0.0.1:0\n").expect("parses");
        assert_eq!(none.ha.run_lease, None);
    }

    #[test]
    fn defaults_state_the_handover_and_short_leases_are_refused() {
        let d = HaSettings::default();
        assert_eq!(d.run_lease, Duration::from_secs(15));
        assert_eq!(d.leader_lease, Duration::from_secs(15));
        assert_eq!(d.handover(), Duration::from_secs(20));
        assert_eq!(d.tick(), Duration::from_secs(1));
        assert_eq!(d.sweep_every(), Duration::from_millis(500));
        assert!(d.replica_id.ends_with(&format!("-{}", std::process::id())));
        assert!(d.check().is_ok());
        let short = HaSettings {
            run_lease: Duration::from_millis(3_000),
            leader_lease: Duration::from_millis(2_000),
            ..d.clone()
        };
        assert_eq!(short.tick(), Duration::from_secs(1));
        assert_eq!(short.sweep_every(), Duration::from_millis(500));
        assert_eq!(short.handover().as_millis(), 2_666);
        let bad = HaSettings {
            run_lease: Duration::from_millis(100),
            ..d.clone()
        };
        assert!(bad.check().unwrap_err().contains("ha.run_lease"));
        let empty = HaSettings {
            replica_id: " ".to_owned(),
            ..d
        };
        assert!(empty.check().is_err());
    }
}
