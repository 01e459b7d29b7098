//! Starting and stopping probes: [`start`] turns a probe spec into a running task
//! that records samples into a [`Recorder`] the controller reads while it runs.
//!
//! HTTP and llm probes run the open-loop load generator ([`crate::http`],
//! [`crate::llm`], both on [`crate::load`]). The others share
//! one open-loop ticker: attempt `i` is due at `start + i * interval` (interval =
//! 1 / rate, or the probe's `interval`), runs on its own task with the probe's
//! timeout counted from its due instant, and at most `ceil(timeout / interval) + 1`
//! attempts are in flight (one more than can overlap when each takes its whole
//! timeout); an attempt due while that many are still
//! running is recorded as "client saturated".

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use faultline_spec::Probe;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ProbeError;
use crate::http::{HttpLoad, Limits, LoadReport};
use crate::prometheus::InstantQuery;
use crate::sql::SqlQuery;
use crate::window::{Clock, FailureKind, Recorder, Sample, Series};

/// A running probe.
#[derive(Debug)]
pub struct ProbeHandle {
    kind: &'static str,
    recorder: Recorder,
    cancel: CancellationToken,
    task: JoinHandle<LoadReport>,
}

impl ProbeHandle {
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The live series (read it with `with` or copy it with `snapshot`).
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    pub fn snapshot(&self) -> Series {
        self.recorder.snapshot()
    }

    /// Whether the probe has stopped on its own (its limits were reached).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops scheduling, waits for the attempts in flight (each ends by its
    /// timeout) and returns the final series and what the load did.
    pub async fn stop(self) -> (Series, LoadReport) {
        self.cancel.cancel();
        self.finish().await
    }

    /// Waits for the probe to reach its limits, then returns like [`Self::stop`].
    pub async fn finish(self) -> (Series, LoadReport) {
        let report = match self.task.await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(kind = self.kind, error = %e, "probe task ended abnormally");
                LoadReport::default()
            }
        };
        (self.recorder.snapshot(), report)
    }
}

/// Starts `spec` on the current tokio runtime, running until stopped.
pub fn start(spec: &Probe, clock: Clock) -> Result<ProbeHandle, ProbeError> {
    start_with(spec, clock, Limits::default())
}

/// Starts `spec` with limits on its duration or number of attempts.
pub fn start_with(spec: &Probe, clock: Clock, limits: Limits) -> Result<ProbeHandle, ProbeError> {
    let rt = tokio::runtime::Handle::try_current().map_err(|_| ProbeError::NoRuntime)?;
    let recorder = Recorder::new(clock.bucket);
    let cancel = limits.cancel.clone();
    let rec = recorder.clone();
    let task = match spec {
        Probe::Http(h) => {
            let load = HttpLoad::new(h)?;
            rt.spawn(load.run(clock, rec, limits))
        }
        Probe::Llm(l) => {
            let load = crate::llm::LlmLoad::new(l)?;
            rt.spawn(load.run(clock, rec, limits))
        }
        Probe::Tcp(t) => {
            let address: Arc<str> = t.address.as_str().into();
            let ticker = Ticker::every(t.rate.interval(), t.timeout.get(), "tcp")?;
            rt.spawn(ticker.run(clock, rec, limits, move || {
                let a = Arc::clone(&address);
                async move { crate::tcp::attempt(&a).await }
            }))
        }
        Probe::Sql(s) => {
            let q = Arc::new(SqlQuery::new(s)?);
            let ticker = Ticker::every(s.rate.interval(), s.timeout.get(), "sql")?;
            rt.spawn(ticker.run(clock, rec, limits, move || {
                let q = Arc::clone(&q);
                async move { q.attempt().await }
            }))
        }
        Probe::Prometheus(p) => {
            let q = Arc::new(InstantQuery::new(p)?);
            let ticker = Ticker::every(p.interval.get(), p.timeout.get(), "prometheus")?;
            rt.spawn(ticker.run(clock, rec, limits, move || {
                let q = Arc::clone(&q);
                async move { q.attempt().await }
            }))
        }
        Probe::Command(c) => {
            if c.run.is_empty() {
                return Err(ProbeError::EmptyCommand);
            }
            let run: Arc<[String]> = c.run.clone().into();
            let ticker = Ticker::every(c.interval.get(), c.timeout.get(), "command")?;
            rt.spawn(ticker.run(clock, rec, limits, move || {
                let r = Arc::clone(&run);
                async move { crate::command::attempt(&r).await }
            }))
        }
    };
    Ok(ProbeHandle {
        kind: spec.kind(),
        recorder,
        cancel,
        task,
    })
}

// === impl Ticker ===

/// The open-loop schedule of the low-rate probes.
#[derive(Debug, Clone, Copy)]
pub struct Ticker {
    interval: Duration,
    timeout: Duration,
    max_in_flight: usize,
}

impl Ticker {
    pub fn every(
        interval: Duration,
        timeout: Duration,
        kind: &'static str,
    ) -> Result<Self, ProbeError> {
        if interval.is_zero() {
            return Err(ProbeError::Rate { kind });
        }
        let n = timeout
            .as_nanos()
            .div_ceil(interval.as_nanos())
            .saturating_add(1)
            .min(1024);
        Ok(Ticker {
            interval,
            timeout,
            max_in_flight: usize::try_from(n).unwrap_or(1024),
        })
    }

    /// Runs `attempt` on the schedule until `limits` stop it. Each attempt yields
    /// `Ok(value)` or the kind of its failure; the ticker times it.
    pub async fn run<F, Fut>(
        self,
        clock: Clock,
        recorder: Recorder,
        limits: Limits,
        attempt: F,
    ) -> LoadReport
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<f64>, FailureKind>> + Send + 'static,
    {
        let permits = Arc::new(Semaphore::new(self.max_in_flight));
        let mut report = LoadReport::default();
        let start = clock.now();
        let end = limits.duration.map(|d| start + d);
        let mut sleep = pin!(tokio::time::sleep_until(clock.epoch + start));
        let mut due = start;
        for i in 0u64.. {
            if limits.requests.is_some_and(|n| i >= n) || end.is_some_and(|e| due >= e) {
                break;
            }
            let due_at = clock.epoch + due;
            if Instant::now() < due_at {
                sleep.as_mut().reset(due_at);
                tokio::select! {
                    biased;
                    _ = limits.cancel.cancelled() => break,
                    _ = sleep.as_mut() => {}
                }
            } else if limits.cancel.is_cancelled() {
                break;
            }
            report.scheduled += 1;
            recorder.set_settled(due.saturating_sub(self.timeout + Duration::from_millis(10)));
            match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => {
                    let fut = attempt();
                    let rec = recorder.clone();
                    let timeout = self.timeout;
                    tokio::spawn(async move {
                        let r = tokio::time::timeout_at(clock.epoch + due + timeout, fut).await;
                        let latency = clock.now().saturating_sub(due);
                        let sample = match r {
                            Ok(Ok(v)) => {
                                let s = Sample::success(due, latency);
                                match v {
                                    Some(v) => s.with_value(v),
                                    None => s,
                                }
                            }
                            Ok(Err(kind)) => Sample::failure(due, kind, Some(latency)),
                            Err(_) => Sample::failure(due, FailureKind::Timeout, Some(timeout)),
                        };
                        rec.record(&sample);
                        drop(permit);
                    });
                }
                Err(_) => {
                    report.saturated += 1;
                    recorder.record(&Sample::failure(due, FailureKind::Saturated, None));
                }
            }
            due = start
                + self
                    .interval
                    .saturating_mul(u32::try_from(i + 1).unwrap_or(u32::MAX));
        }
        // Every attempt in flight gives its permit back by its timeout.
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        if permits.acquire_many(all).await.is_err() {
            tracing::warn!("probe attempts could not be awaited");
        }
        report.workers = self.max_in_flight;
        recorder.set_settled(due);
        report
    }
}
