//! The service's Prometheus metrics (`GET /metrics`), in a registry of its own:
//! several services in one test process must not share counters.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type ByStatus = Family<Vec<(String, String)>, Counter>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub runs_started: Counter,
    finished: ByStatus,
    pub runs_running: Gauge,
    pub runs_queued: Gauge,
    pub refused: Counter,
    pub halts: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("faultline_controller");
        let m = Metrics {
            registry: Registry::default(),
            runs_started: Counter::default(),
            finished: ByStatus::default(),
            runs_running: Gauge::default(),
            runs_queued: Gauge::default(),
            refused: Counter::default(),
            halts: Counter::default(),
        };
        registry.register(
            "runs_started",
            "Runs the engine started",
            m.runs_started.clone(),
        );
        registry.register(
            "runs_finished",
            "Runs that ended, by final status",
            m.finished.clone(),
        );
        registry.register(
            "runs_running",
            "Runs in the engine now",
            m.runs_running.clone(),
        );
        registry.register(
            "runs_queued",
            "Runs waiting for their agents",
            m.runs_queued.clone(),
        );
        registry.register(
            "runs_refused",
            "Runs refused because their agents were busy",
            m.refused.clone(),
        );
        registry.register("halts", "POST /v1/halt calls", m.halts.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn finished(&self, status: &str) {
        self.finished
            .get_or_create(&vec![("status".to_owned(), status.to_owned())])
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
