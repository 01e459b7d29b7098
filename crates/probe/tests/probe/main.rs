//! Integration tests of the probes against real local servers (127.0.0.1 only).
//! One test binary (cheap to link); every test is bounded in time.

mod http;
mod llm;
mod others;
mod server;
mod sse;

use std::future::Future;
use std::time::Duration;

/// Runs `f`, failing the test if it takes longer than `limit`.
pub async fn bounded<T>(limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"))
}

/// Held by the tests that measure time, so that they do not compete with each
/// other for the machine's two cores.
pub async fn timing() -> tokio::sync::MutexGuard<'static, ()> {
    static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TIMING.lock().await
}

pub fn spec<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    serde_yaml::from_str(yaml).expect("test spec parses")
}

/// A probe as written in an experiment: `{ kind: { parameters } }`.
pub fn probe(yaml: &str) -> faultline_spec::Probe {
    serde_yaml::with::singleton_map::deserialize(serde_yaml::Deserializer::from_str(yaml))
        .expect("test probe parses")
}

/// Limits that stop a load after `d`.
pub fn http_limits(d: Duration) -> faultline_probe::http::Limits {
    faultline_probe::http::Limits {
        duration: Some(d),
        ..Default::default()
    }
}
