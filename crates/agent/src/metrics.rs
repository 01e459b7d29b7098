//! The agent's Prometheus metrics, in a registry of its own (no global recorder:
//! several agents in one test process must not share counters).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub active: Gauge,
    pub injects: Counter,
    pub reverts: Counter,
    pub failures: Counter,
    pub lease_lapses: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("faultline_agent");
        let m = Self {
            active: Gauge::default(),
            injects: Counter::default(),
            reverts: Counter::default(),
            failures: Counter::default(),
            lease_lapses: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "active_faults",
            "Faults injected and not reverted",
            m.active.clone(),
        );
        registry.register("injects", "Faults injected", m.injects.clone());
        registry.register("reverts", "Faults reverted and verified", m.reverts.clone());
        registry.register(
            "failures",
            "Injects or reverts that failed",
            m.failures.clone(),
        );
        registry.register(
            "lease_lapses",
            "Faults reverted because their lease lapsed",
            m.lease_lapses.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
