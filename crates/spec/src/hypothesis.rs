//! Steady-state conditions: the SLA (`hypotheses`), the tolerances while faults are
//! active (`during`) and the abort conditions (`safety.abort_when`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{Duration, Number, Percent, Threshold};

/// Thresholds on one probe's window. Every threshold given must hold.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hypothesis {
    /// A key of `probes`.
    pub probe: String,
    /// Share of successful probe requests, e.g. `>= 99.9%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<Threshold<Percent>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50: Option<Threshold<Duration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p90: Option<Threshold<Duration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<Threshold<Duration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p999: Option<Threshold<Duration>>,
    /// llm probes with `stream: true`: median time to first token, from the
    /// request's scheduled instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p50: Option<Threshold<Duration>>,
    /// llm probes with `stream: true`: 99th percentile time to first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p99: Option<Threshold<Duration>>,
    /// llm probes with `stream: true`: 99th percentile of every gap between two
    /// consecutive tokens of every stream in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub itl_p99: Option<Threshold<Duration>>,
    /// llm probes: output tokens per second of each completed stream, judged at its
    /// 1st percentile for `>`/`>=` (99% of streams at least this fast) and at its
    /// 99th for `<`/`<=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<Threshold<Number>>,
    /// The SLO target that `burn_rate` is measured against, e.g. `99.9%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Percent>,
    /// Error-budget burn rate over the window: 1 spends the budget exactly by the end
    /// of the SLO period; e.g. `<= 10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_rate: Option<Threshold<Number>>,
    /// For value probes (prometheus, sql): the measured value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Threshold<Number>>,
    /// Window the figures are computed over (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    /// abort_when and during only: the condition must be violated (abort_when: met)
    /// continuously for this long before it counts.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub sustained: Option<Duration>,
}

impl Hypothesis {
    /// Every threshold key, in the order they are documented (for messages).
    pub const THRESHOLDS: &'static [&'static str] = &[
        "availability",
        "p50",
        "p90",
        "p99",
        "p999",
        "ttft_p50",
        "ttft_p99",
        "itl_p99",
        "tokens_per_s",
        "burn_rate",
        "value",
    ];

    /// Whether at least one threshold is given.
    pub fn has_criteria(&self) -> bool {
        self.availability.is_some()
            || self.p50.is_some()
            || self.p90.is_some()
            || self.p99.is_some()
            || self.p999.is_some()
            || self.ttft_p50.is_some()
            || self.ttft_p99.is_some()
            || self.itl_p99.is_some()
            || self.tokens_per_s.is_some()
            || self.burn_rate.is_some()
            || self.value.is_some()
    }
}
