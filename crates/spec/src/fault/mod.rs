//! The fault catalogue: one variant per fault kind, each with typed parameters.
//! Adding a kind starts here (see docs/adding-a-fault.md).

pub mod db;
pub mod gpu;
pub mod http;
pub mod network;
pub mod process;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use db::*;
pub use gpu::*;
pub use http::*;
pub use network::*;
pub use process::*;

/// A fault and its parameters, written `{ kind: { parameters } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum FaultSpec {
    #[serde(rename = "network.latency")]
    NetworkLatency(NetworkLatency),
    #[serde(rename = "network.drop")]
    NetworkDrop(NetworkDrop),
    #[serde(rename = "network.bandwidth")]
    NetworkBandwidth(NetworkBandwidth),
    #[serde(rename = "network.loss")]
    NetworkLoss(NetworkLoss),
    #[serde(rename = "network.partition")]
    NetworkPartition(NetworkPartition),
    #[serde(rename = "network.skew")]
    NetworkSkew(NetworkSkew),
    #[serde(rename = "http.error")]
    HttpError(HttpError),
    #[serde(rename = "http.delay")]
    HttpDelay(HttpDelay),
    #[serde(rename = "http.rate_limit")]
    HttpRateLimit(HttpRateLimit),
    #[serde(rename = "http.queue")]
    HttpQueue(HttpQueue),
    #[serde(rename = "http.stream_stall")]
    HttpStreamStall(HttpStreamStall),
    #[serde(rename = "http.stream_slow")]
    HttpStreamSlow(HttpStreamSlow),
    #[serde(rename = "http.stream_truncate")]
    HttpStreamTruncate(HttpStreamTruncate),
    #[serde(rename = "db.lock")]
    DbLock(DbLock),
    #[serde(rename = "gpu.unavailable")]
    GpuUnavailable(GpuUnavailable),
    #[serde(rename = "gpu.slow")]
    GpuSlow(GpuSlow),
    #[serde(rename = "gpu.memory_hog")]
    GpuMemoryHog(GpuMemoryHog),
    #[serde(rename = "gpu.compute_hog")]
    GpuComputeHog(GpuComputeHog),
    #[serde(rename = "gpu.device_deny")]
    GpuDeviceDeny(GpuDeviceDeny),
    #[serde(rename = "process.pause")]
    ProcessPause(ProcessPause),
    #[serde(rename = "process.kill")]
    ProcessKill(ProcessKill),
}

impl FaultSpec {
    /// Every kind, as written in experiments.
    pub const KINDS: &'static [&'static str] = &[
        "network.latency",
        "network.drop",
        "network.bandwidth",
        "network.loss",
        "network.partition",
        "network.skew",
        "http.error",
        "http.delay",
        "http.rate_limit",
        "http.queue",
        "http.stream_stall",
        "http.stream_slow",
        "http.stream_truncate",
        "db.lock",
        "gpu.unavailable",
        "gpu.slow",
        "gpu.memory_hog",
        "gpu.compute_hog",
        "gpu.device_deny",
        "process.pause",
        "process.kill",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            FaultSpec::NetworkLatency(_) => "network.latency",
            FaultSpec::NetworkDrop(_) => "network.drop",
            FaultSpec::NetworkBandwidth(_) => "network.bandwidth",
            FaultSpec::NetworkLoss(_) => "network.loss",
            FaultSpec::NetworkPartition(_) => "network.partition",
            FaultSpec::NetworkSkew(_) => "network.skew",
            FaultSpec::HttpError(_) => "http.error",
            FaultSpec::HttpDelay(_) => "http.delay",
            FaultSpec::HttpRateLimit(_) => "http.rate_limit",
            FaultSpec::HttpQueue(_) => "http.queue",
            FaultSpec::HttpStreamStall(_) => "http.stream_stall",
            FaultSpec::HttpStreamSlow(_) => "http.stream_slow",
            FaultSpec::HttpStreamTruncate(_) => "http.stream_truncate",
            FaultSpec::DbLock(_) => "db.lock",
            FaultSpec::GpuUnavailable(_) => "gpu.unavailable",
            FaultSpec::GpuSlow(_) => "gpu.slow",
            FaultSpec::GpuMemoryHog(_) => "gpu.memory_hog",
            FaultSpec::GpuComputeHog(_) => "gpu.compute_hog",
            FaultSpec::GpuDeviceDeny(_) => "gpu.device_deny",
            FaultSpec::ProcessPause(_) => "process.pause",
            FaultSpec::ProcessKill(_) => "process.kill",
        }
    }

    /// The family, the part before the dot: `network`, `http`, `db`, `gpu`, `process`.
    pub fn family(&self) -> &'static str {
        let kind = self.kind();
        kind.split_once('.').map_or(kind, |(family, _)| family)
    }

    /// The parameters as the agent API takes them (`params` of `PUT
    /// /v1/faults/{id}`): the inverse of [`Self::from_kind_and_params`]. Secrets go
    /// as written, `${env:...}` references unresolved, so the agent resolves them in
    /// its own environment and nothing secret is copied into a request log.
    pub fn params(&self) -> Result<serde_json::Value, serde_json::Error> {
        let whole =
            serde_yaml::with::singleton_map::serialize(self, serde_json::value::Serializer)?;
        let mut params = match whole {
            serde_json::Value::Object(mut m) => m.remove(self.kind()).unwrap_or_default(),
            other => other,
        };
        // `Secret` serialises redacted for logs and journals; the agent needs it
        // as written.
        if let (FaultSpec::DbLock(d), Some(obj)) = (self, params.as_object_mut()) {
            obj.insert(
                "url".to_owned(),
                serde_json::Value::String(d.url.as_written().to_owned()),
            );
        }
        Ok(params)
    }

    /// Builds a fault from its kind and a JSON parameter object, as the agent API
    /// receives it (`{"kind": "process.pause", "params": {"pid": 4242}}`).
    pub fn from_kind_and_params(
        kind: &str,
        params: serde_json::Value,
    ) -> Result<FaultSpec, serde_json::Error> {
        use serde::de::IntoDeserializer;
        let mut map = serde_json::Map::new();
        map.insert(kind.to_owned(), params);
        let value = serde_json::Value::Object(map);
        serde_yaml::with::singleton_map::deserialize(value.into_deserializer())
    }
}

fn hundred_percent() -> crate::units::Percent {
    crate::units::Percent::HUNDRED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_round_trip_with_secrets_as_written() {
        let spec: FaultSpec =
            serde_yaml::with::singleton_map::deserialize(serde_yaml::Deserializer::from_str(
                "db.lock: { url: 'postgres://app:hunter2@127.0.0.1/app', table: jobs, hold: 2s }",
            ))
            .expect("fault");
        let params = spec.params().expect("params");
        assert_eq!(params["url"], "postgres://app:hunter2@127.0.0.1/app");
        assert_eq!(params["table"], "jobs");
        let back = FaultSpec::from_kind_and_params(spec.kind(), params).expect("back");
        assert_eq!(back.kind(), "db.lock");

        let spec: FaultSpec = serde_yaml::with::singleton_map::deserialize(
            serde_yaml::Deserializer::from_str("process.pause: { pid: 42 }"),
        )
        .expect("fault");
        assert_eq!(spec.params().expect("params")["pid"], 42);
    }

    #[test]
    fn the_llm_gateway_kinds_round_trip_through_agent_params() {
        for yaml in [
            "http.rate_limit: { port: 8443, rate: 10/s, key: header, header: x-api-key }",
            "http.queue: { port: 8443, concurrency: 2, timeout: 2s }",
            "http.stream_stall: { port: 8443, after_events: 5, hold: 2s, then: cut }",
            "http.stream_slow: { port: 8443, rate: 5/s, probability: 50% }",
            "http.stream_truncate: { port: 8443, after_events: 3, done: true }",
            "network.skew: { port: 8080, to: '10.0.0.2:8000', share: 80% }",
        ] {
            let spec: FaultSpec = serde_yaml::with::singleton_map::deserialize(
                serde_yaml::Deserializer::from_str(yaml),
            )
            .expect(yaml);
            let back = FaultSpec::from_kind_and_params(spec.kind(), spec.params().expect("params"))
                .expect(yaml);
            assert_eq!(back, spec, "{yaml}");
            assert!(FaultSpec::KINDS.contains(&spec.kind()));
        }
    }
}
