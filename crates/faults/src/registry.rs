//! From a `FaultSpec` to its implementation: one exhaustive match, so a new kind in
//! the spec does not compile until it has an arm here (docs/adding-a-fault.md).

use std::time::Duration;

use faultline_spec::FaultSpec;

use crate::db::DbLockFault;

use crate::gpu::GpuFault;
use crate::http::HttpGatewayFault;
use crate::network::proxied::ProxiedFault;
use crate::network::{NftTableFault, loss, partition, skew};
use crate::process::{ProcessKillFault, ProcessPauseFault};
use crate::{Fault, InjectError};

/// Kinds that exist in the format but not in this agent yet, and the issue or part
/// that brings each; `capabilities()` is every other kind. Empty: every kind of
/// faultline/v1 is wired. A kind added to the format before its implementation
/// goes here, and its arm below returns `InjectError::Unsupported` with the reason.
const UNSUPPORTED: &[(&str, &str)] = &[];

/// The kinds this agent can inject (its `/v1/health` capabilities).
pub fn capabilities() -> Vec<&'static str> {
    FaultSpec::KINDS
        .iter()
        .copied()
        .filter(|k| !UNSUPPORTED.iter().any(|(u, _)| u == k))
        .collect()
}

/// Builds fault `id` under a lease of `lease`, resolving its targets now (the pids
/// to stop, the table name). Nothing is injected: the caller journals `recovery()`
/// first. The lease sizes server-side dead man's switches (db.lock); the caller
/// still owns the lease itself.
pub fn build(id: &str, spec: &FaultSpec, lease: Duration) -> Result<Box<dyn Fault>, InjectError> {
    construct(id, spec, lease, None)
}

/// Rebuilds fault `id` from its journaled spec, lease and recovery state, for
/// revert only.
pub fn restore(
    id: &str,
    spec: &FaultSpec,
    lease: Duration,
    recovery: &serde_json::Value,
) -> Result<Box<dyn Fault>, InjectError> {
    construct(id, spec, lease, Some(recovery))
}

fn construct(
    id: &str,
    spec: &FaultSpec,
    lease: Duration,
    recovery: Option<&serde_json::Value>,
) -> Result<Box<dyn Fault>, InjectError> {
    let kind = spec.kind();
    Ok(match spec {
        // The lock session is found by name at revert: nothing else to restore.
        FaultSpec::DbLock(p) => {
            Box::new(
                DbLockFault::new(id, p, lease).map_err(|e| InjectError::InvalidParams {
                    kind,
                    reason: e.to_string(),
                })?,
            )
        }
        FaultSpec::NetworkLoss(p) => match recovery {
            Some(r) => Box::new(NftTableFault::restore(kind, r)?),
            None => Box::new(loss::new(id, p)?),
        },
        FaultSpec::NetworkPartition(p) => match recovery {
            Some(r) => Box::new(NftTableFault::restore(kind, r)?),
            None => Box::new(partition::new(id, p)?),
        },
        FaultSpec::NetworkSkew(p) => match recovery {
            Some(r) => Box::new(NftTableFault::restore(kind, r)?),
            None => Box::new(skew::new(id, p)?),
        },
        FaultSpec::ProcessPause(p) => match recovery {
            Some(r) => Box::new(ProcessPauseFault::restore(r)?),
            None => Box::new(ProcessPauseFault::new(p)?),
        },
        FaultSpec::ProcessKill(p) => match recovery {
            Some(r) => Box::new(ProcessKillFault::restore(p, r)?),
            None => Box::new(ProcessKillFault::new(p)?),
        },
        FaultSpec::NetworkLatency(p) => match recovery {
            Some(r) => Box::new(ProxiedFault::restore(kind, r)?),
            None => Box::new(ProxiedFault::latency(id, p)?),
        },
        FaultSpec::NetworkDrop(p) => match recovery {
            Some(r) => Box::new(ProxiedFault::restore(kind, r)?),
            None => Box::new(ProxiedFault::drop(id, p)?),
        },
        // Each reverts from its spec alone (state file, deny record); see gpu/fault.rs.
        FaultSpec::GpuUnavailable(p) => Box::new(GpuFault::unavailable(id, p, lease)?),
        FaultSpec::GpuSlow(p) => Box::new(GpuFault::slow(id, p, lease)?),
        FaultSpec::GpuMemoryHog(p) => Box::new(GpuFault::memory_hog(id, p)?),
        FaultSpec::GpuComputeHog(p) => Box::new(GpuFault::compute_hog(id, p)?),
        FaultSpec::GpuDeviceDeny(p) => Box::new(GpuFault::device_deny(id, p)?),
        FaultSpec::HttpError(p) => match recovery {
            Some(r) => Box::new(HttpGatewayFault::restore(kind, r)?),
            None => Box::new(HttpGatewayFault::error(id, p)?),
        },
        FaultSpec::HttpDelay(p) => match recovery {
            Some(r) => Box::new(HttpGatewayFault::restore(kind, r)?),
            None => Box::new(HttpGatewayFault::delay(id, p)?),
        },
        FaultSpec::HttpRateLimit(p) => match recovery {
            Some(r) => Box::new(HttpGatewayFault::restore(kind, r)?),
            None => Box::new(HttpGatewayFault::rate_limit(id, p)?),
        },
        FaultSpec::HttpQueue(p) => match recovery {
            Some(r) => Box::new(HttpGatewayFault::restore(kind, r)?),
            None => Box::new(HttpGatewayFault::queue(id, p)?),
        },
        FaultSpec::HttpStreamStall(p) => match recovery {
            Some(r) => Box::new(HttpGatewayFault::restore(kind, r)?),
            None => Box::new(HttpGatewayFault::stream_stall(id, p)?),
        },
        FaultSpec::HttpStreamSlow(p) => match recovery {
            Some(r) => Box::new(HttpGatewayFault::restore(kind, r)?),
            None => Box::new(HttpGatewayFault::stream_slow(id, p)?),
        },
        FaultSpec::HttpStreamTruncate(p) => match recovery {
            Some(r) => Box::new(HttpGatewayFault::restore(kind, r)?),
            None => Box::new(HttpGatewayFault::stream_truncate(id, p)?),
        },
        FaultSpec::NetworkBandwidth(p) => match recovery {
            Some(r) => Box::new(ProxiedFault::restore(kind, r)?),
            None => Box::new(ProxiedFault::bandwidth(id, p)?),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_either_capable_or_says_why_not() {
        for kind in FaultSpec::KINDS {
            let capable = capabilities().contains(kind);
            let listed = UNSUPPORTED.iter().any(|(k, _)| k == kind);
            assert!(capable != listed, "{kind}");
        }
        assert_eq!(
            capabilities().len() + UNSUPPORTED.len(),
            FaultSpec::KINDS.len()
        );
    }

    #[test]
    fn a_bandwidth_below_the_proxy_granularity_is_refused_not_zero() {
        let spec = FaultSpec::from_kind_and_params(
            "network.bandwidth",
            serde_json::json!({"listen": "127.0.0.1:1", "upstream": "127.0.0.1:2", "rate": "100B/s"}),
        )
        .expect("valid spec");
        let err = build("x", &spec, Duration::from_secs(1)).expect_err("too slow to express");
        assert!(
            matches!(err, InjectError::InvalidParams { .. }) && err.to_string().contains("1KB/s"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_parameters_of_a_supported_kind_are_unsupported() {
        // What the agent answers 422 `unsupported` now that every kind is wired.
        let spec = FaultSpec::from_kind_and_params(
            "gpu.slow",
            serde_json::json!({"devices": "all", "delay": "10ms", "calls": "launch"}),
        )
        .expect("valid spec");
        let err = build("x", &spec, Duration::from_secs(1)).expect_err("unsupported");
        assert!(
            matches!(err, InjectError::Unsupported { .. })
                && err.to_string().contains("calls: all"),
            "{err}"
        );
    }
}
