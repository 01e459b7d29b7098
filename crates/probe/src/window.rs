//! Samples and the windows they are aggregated into.
//!
//! A probe produces one [`Sample`] per attempt: when it was *scheduled* (not when it
//! was sent), whether it succeeded, and its latency measured from the scheduled
//! instant. Measuring from the schedule is the coordinated-omission correction: a
//! server that stalls delays the answers to everything scheduled during the stall,
//! and each of those answers carries its wait, instead of the stall showing up as
//! one slow sample.
//!
//! Samples are counted into fixed-width buckets ([`Series`], 1 s by default) by their
//! scheduled instant; each bucket is a [`WindowStats`] (counts, failure reasons, an
//! HDR histogram of latencies in microseconds with 3 significant figures, the range
//! of measured values). Buckets merge into the stats of any window, and the series
//! stays available for a timeline.
//!
//! Which latencies enter the histogram: successes, and timeouts at their timeout (a
//! timed-out request is the slowest kind; leaving it out would hide a stall). Fast
//! failures (a 503 in 1 ms, a refused connect) are counted but kept out of the
//! latency figures, so that errors never flatter the percentiles. Requests refused
//! because the client was saturated were never sent and have no latency.
//!
//! Streamed completions (the llm probe) add [`StreamStats`] to a bucket: HDR
//! histograms of time to first token (from the scheduled instant, like latency),
//! of every gap between two consecutive tokens, and of each completed stream's
//! output tokens per second. A time to first token enters whatever became of the
//! stream after it (a stream cut short still had its first token when it had
//! one); a stream that timed out before its first token enters at its timeout, and
//! one that timed out mid-stream adds the gap from its last token to the timeout,
//! so that a stall is never hidden by the timeout that ended it. Tokens per second
//! enter for successes only.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// Significant figures kept by every latency histogram.
pub const SIGFIG: u8 = 3;

/// Why an attempt failed. Counted per kind in every bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// An answer that the success rule rejects (HTTP status, command exit status).
    Rejected,
    /// No answer within the probe's timeout.
    Timeout,
    /// The bound on requests in flight was reached at the scheduled instant; the
    /// request was not sent.
    Saturated,
    /// The connection could not be made (refused, reset, unreachable).
    Connect,
    /// A malformed or unexpected answer (protocol error, unparsable value).
    Protocol,
    /// Anything else (a query error, a command that could not start).
    Other,
    /// A streamed answer that ended before it was complete (no `data: [DONE]`, or
    /// `[DONE]` without a `finish_reason`), or that carried an error event.
    StreamCut,
    /// `stream: true` was asked for and the answer was not `text/event-stream`.
    NotEventStream,
}

impl FailureKind {
    pub const ALL: [FailureKind; 8] = [
        FailureKind::Rejected,
        FailureKind::Timeout,
        FailureKind::Saturated,
        FailureKind::Connect,
        FailureKind::Protocol,
        FailureKind::Other,
        FailureKind::StreamCut,
        FailureKind::NotEventStream,
    ];

    fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Rejected => "rejected",
            FailureKind::Timeout => "timeout",
            FailureKind::Saturated => "client saturated",
            FailureKind::Connect => "connect",
            FailureKind::Protocol => "protocol",
            FailureKind::Other => "other",
            FailureKind::StreamCut => "stream cut short",
            FailureKind::NotEventStream => "not an event stream",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Success,
    Failure(FailureKind),
}

/// One probe attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When the attempt was scheduled, as an offset from the clock's epoch.
    pub scheduled: Duration,
    pub outcome: Outcome,
    /// From the scheduled instant to the answer (`None`: never sent).
    pub latency: Option<Duration>,
    /// The measured value of a value probe (sql, prometheus).
    pub value: Option<f64>,
    /// From the moment the request was actually sent to the answer: what a
    /// closed-loop tool would report, without the client's own scheduling lag.
    /// Diagnostic only (it shows how late the client itself was); SLOs use
    /// `latency`.
    pub service: Option<Duration>,
    /// The figures of a completion (llm probe); its inter-token gaps are recorded
    /// with it ([`Recorder::record_stream`]).
    pub stream: Option<StreamFigures>,
}

/// What one completion measured beyond its latency.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StreamFigures {
    /// From the scheduled instant to the first token (streamed answers only).
    pub ttft: Option<Duration>,
    /// Output tokens: the answer's `usage.completion_tokens` when it has one, else
    /// the token events counted.
    pub tokens: Option<u64>,
    /// Output tokens per second of a completed answer (see [`crate::llm`]).
    pub tokens_per_s: Option<f64>,
}

impl Sample {
    pub fn success(scheduled: Duration, latency: Duration) -> Self {
        Sample {
            scheduled,
            outcome: Outcome::Success,
            latency: Some(latency),
            value: None,
            service: None,
            stream: None,
        }
    }

    pub fn failure(scheduled: Duration, kind: FailureKind, latency: Option<Duration>) -> Self {
        Sample {
            scheduled,
            outcome: Outcome::Failure(kind),
            latency,
            value: None,
            service: None,
            stream: None,
        }
    }

    pub fn with_stream(mut self, figures: StreamFigures) -> Self {
        self.stream = Some(figures);
        self
    }

    pub fn with_service(mut self, service: Duration) -> Self {
        self.service = Some(service);
        self
    }

    pub fn with_value(mut self, value: f64) -> Self {
        self.value = Some(value);
        self
    }
}

/// The range of values measured by a value probe in a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueRange {
    pub min: f64,
    pub max: f64,
    /// The value of the latest sample (by scheduled instant) in the window.
    pub last: f64,
    last_at: Duration,
    pub count: u64,
}

impl ValueRange {
    fn single(v: f64, at: Duration) -> Self {
        ValueRange {
            min: v,
            max: v,
            last: v,
            last_at: at,
            count: 1,
        }
    }

    fn merge(&mut self, o: &ValueRange) {
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if o.last_at >= self.last_at {
            self.last = o.last;
            self.last_at = o.last_at;
        }
        self.count += o.count;
    }
}

// === impl WindowStats ===

/// Counts, failure reasons, latency histogram and value range over some span.
#[derive(Clone)]
pub struct WindowStats {
    pub successes: u64,
    failures: [u64; FailureKind::ALL.len()],
    /// Latencies in microseconds (see the module docs for which samples enter it).
    pub latency: Histogram<u64>,
    /// Service times in microseconds, of the samples that carry one (see
    /// [`Sample::service`]), under the same rule as `latency`.
    pub service: Histogram<u64>,
    pub values: Option<ValueRange>,
    /// Figures of streamed completions; `None` until one is recorded, so the
    /// other probes' buckets carry no histograms they never fill.
    pub stream: Option<Box<StreamStats>>,
}

/// Per-bucket figures of completions (see the module docs for what enters them).
#[derive(Clone)]
pub struct StreamStats {
    /// Times to first token, in microseconds.
    pub ttft: Histogram<u64>,
    /// Gaps between consecutive tokens, in microseconds.
    pub itl: Histogram<u64>,
    /// Output tokens per second of each completed answer, in thousandths.
    pub tokens_per_s: Histogram<u64>,
    /// Output tokens of every answer that reported or streamed any.
    pub tokens: u64,
}

impl fmt::Debug for StreamStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamStats")
            .field("ttft_count", &self.ttft.len())
            .field("itl_count", &self.itl.len())
            .field("tokens_per_s_count", &self.tokens_per_s.len())
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl StreamStats {
    fn new() -> Self {
        StreamStats {
            ttft: new_histogram(),
            itl: new_histogram(),
            tokens_per_s: new_histogram(),
            tokens: 0,
        }
    }

    fn merge(&mut self, o: &StreamStats) {
        if self.ttft.add(&o.ttft).is_err()
            || self.itl.add(&o.itl).is_err()
            || self.tokens_per_s.add(&o.tokens_per_s).is_err()
        {
            tracing::warn!("stream histogram overflowed while merging windows");
        }
        self.tokens += o.tokens;
    }

    /// The time to first token at quantile `q` (read like [`WindowStats::quantile`]).
    pub fn ttft_quantile(&self, q: f64) -> Option<Duration> {
        (!self.ttft.is_empty()).then(|| Duration::from_micros(self.ttft.value_at_quantile(q)))
    }

    /// The inter-token gap at quantile `q`.
    pub fn itl_quantile(&self, q: f64) -> Option<Duration> {
        (!self.itl.is_empty()).then(|| Duration::from_micros(self.itl.value_at_quantile(q)))
    }

    /// Tokens per second at quantile `q`. `upper`: the top of the value's HDR bucket
    /// (for an upper bound: never passed by rounding), else its bottom (for a
    /// lower bound, likewise).
    pub fn tokens_per_s_quantile(&self, q: f64, upper: bool) -> Option<f64> {
        if self.tokens_per_s.is_empty() {
            return None;
        }
        let v = self.tokens_per_s.value_at_quantile(q);
        let v = if upper {
            v
        } else {
            self.tokens_per_s.lowest_equivalent(v)
        };
        Some(v as f64 / 1000.0)
    }
}

impl WindowStats {
    fn stream_mut(&mut self) -> &mut StreamStats {
        self.stream
            .get_or_insert_with(|| Box::new(StreamStats::new()))
    }

    /// Adds the inter-token gaps of one completion.
    pub fn record_gaps(&mut self, gaps: &[Duration]) {
        if gaps.is_empty() {
            return;
        }
        let st = self.stream_mut();
        for g in gaps {
            record(&mut st.itl, *g);
        }
    }
}

impl fmt::Debug for WindowStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowStats")
            .field("successes", &self.successes)
            .field("failures", &self.failures)
            .field("latency_count", &self.latency.len())
            .field("service_count", &self.service.len())
            .field("values", &self.values)
            .finish()
    }
}

impl Default for WindowStats {
    fn default() -> Self {
        WindowStats::new()
    }
}

impl WindowStats {
    pub fn new() -> Self {
        WindowStats {
            successes: 0,
            failures: [0; FailureKind::ALL.len()],
            latency: new_histogram(),
            service: new_histogram(),
            values: None,
            stream: None,
        }
    }

    pub fn record(&mut self, s: &Sample) {
        if let Some(f) = s.stream {
            let success = s.outcome == Outcome::Success;
            let st = self.stream_mut();
            if let Some(t) = f.ttft {
                record(&mut st.ttft, t);
            }
            st.tokens += f.tokens.unwrap_or(0);
            if let (true, Some(r)) = (success, f.tokens_per_s)
                && r.is_finite()
                && r > 0.0
            {
                // Thousandths, at least 1: the histogram's lowest value.
                let milli = (r * 1000.0).round().clamp(1.0, u64::MAX as f64) as u64;
                if st.tokens_per_s.record(milli).is_err() {
                    st.tokens_per_s.saturating_record(milli);
                }
            }
        }
        let into_histogram = match s.outcome {
            Outcome::Success => {
                self.successes += 1;
                true
            }
            Outcome::Failure(kind) => {
                self.failures[kind.index()] += 1;
                kind == FailureKind::Timeout
            }
        };
        if into_histogram {
            if let Some(l) = s.latency {
                record(&mut self.latency, l);
            }
            if let Some(l) = s.service {
                record(&mut self.service, l);
            }
        }
        if let Some(v) = s.value {
            let r = ValueRange::single(v, s.scheduled);
            match &mut self.values {
                Some(cur) => cur.merge(&r),
                None => self.values = Some(r),
            }
        }
    }

    /// Adds another window's figures to this one.
    pub fn merge(&mut self, o: &WindowStats) {
        self.successes += o.successes;
        for (a, b) in self.failures.iter_mut().zip(o.failures) {
            *a += b;
        }
        // Both histograms auto-resize and share the same precision, so `add` only
        // fails on a count overflow, which saturates instead.
        if self.latency.add(&o.latency).is_err() || self.service.add(&o.service).is_err() {
            tracing::warn!("latency histogram overflowed while merging windows");
        }
        match (&mut self.values, &o.values) {
            (Some(a), Some(b)) => a.merge(b),
            (None, Some(b)) => self.values = Some(*b),
            _ => {}
        }
        if let Some(b) = &o.stream {
            match &mut self.stream {
                Some(a) => a.merge(b),
                None => self.stream = Some(b.clone()),
            }
        }
    }

    pub fn failures(&self, kind: FailureKind) -> u64 {
        self.failures[kind.index()]
    }

    pub fn failed(&self) -> u64 {
        self.failures.iter().sum()
    }

    pub fn total(&self) -> u64 {
        self.successes + self.failed()
    }

    /// Successes over attempts, 0..=1; `None` without attempts.
    pub fn availability(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| self.successes as f64 / total as f64)
    }

    /// The latency at quantile `q` (0..=1), `None` without latencies. Like every HDR
    /// histogram it reads the top of the value's bucket: at most 0.1% above the
    /// recorded value, never below it, so a bound is never passed by rounding.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        (!self.latency.is_empty()).then(|| Duration::from_micros(self.latency.value_at_quantile(q)))
    }
}

fn new_histogram() -> Histogram<u64> {
    // Auto-resizing, so an idle bucket costs little and no latency is out of range.
    // SIGFIG is a constant in 0..=5, for which `new` cannot fail.
    Histogram::new(SIGFIG).expect("3 significant figures are valid")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    // `record` grows the auto-resizing histogram; clamp only if it cannot.
    let us = micros(d);
    if h.record(us).is_err() {
        h.saturating_record(us);
    }
}

fn micros(d: Duration) -> u64 {
    // The histogram's lowest discernible value is 1 µs.
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

// === impl Clock ===

/// The time base shared by a run: bucket offsets count from `epoch`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub epoch: Instant,
    pub bucket: Duration,
}

impl Clock {
    pub const DEFAULT_BUCKET: Duration = Duration::from_secs(1);

    /// A clock starting now with 1 s buckets.
    pub fn start() -> Self {
        Clock {
            epoch: Instant::now(),
            bucket: Self::DEFAULT_BUCKET,
        }
    }

    pub fn with_bucket(mut self, bucket: Duration) -> Self {
        self.bucket = bucket.max(Duration::from_millis(1));
        self
    }

    /// `at` as an offset from the epoch (zero before it).
    pub fn offset(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.epoch)
    }

    pub fn now(&self) -> Duration {
        self.offset(Instant::now())
    }
}

// === impl Series ===

/// Per-bucket statistics from the epoch on. Bucket `i` covers
/// `[i * width, (i + 1) * width)` of scheduled time.
#[derive(Debug, Clone)]
pub struct Series {
    pub width: Duration,
    buckets: Vec<WindowStats>,
    /// Samples scheduled before this offset have all been recorded: their buckets
    /// are final. Later buckets may still receive answers.
    pub settled: Duration,
}

impl Series {
    pub fn new(width: Duration) -> Self {
        Series {
            width: width.max(Duration::from_millis(1)),
            buckets: Vec::new(),
            settled: Duration::ZERO,
        }
    }

    pub fn record(&mut self, s: &Sample) {
        let i = self.index(s.scheduled);
        if self.buckets.len() <= i {
            self.buckets.resize_with(i + 1, WindowStats::new);
        }
        self.buckets[i].record(s);
    }

    /// Records one completion and its inter-token gaps into its bucket.
    pub fn record_stream(&mut self, s: &Sample, gaps: &[Duration]) {
        self.record(s);
        let i = self.index(s.scheduled);
        self.buckets[i].record_gaps(gaps);
    }

    /// The bucket that holds `at`.
    pub(crate) fn index(&self, at: Duration) -> usize {
        usize::try_from(at.as_nanos() / self.width.as_nanos()).unwrap_or(usize::MAX)
    }

    /// The buckets, from the epoch's on (empty ones included).
    pub fn buckets(&self) -> &[WindowStats] {
        &self.buckets
    }

    /// Start offset of bucket `i`.
    pub fn bucket_start(&self, i: usize) -> Duration {
        self.width
            .saturating_mul(u32::try_from(i).unwrap_or(u32::MAX))
    }

    /// The end of the last bucket that holds samples.
    pub fn end(&self) -> Duration {
        self.bucket_start(self.buckets.len())
    }

    /// Merged stats of the buckets that start in `[from, to)` (bucket-aligned: a
    /// partial bucket at either edge is counted whole).
    pub fn window(&self, from: Duration, to: Duration) -> WindowStats {
        let mut out = WindowStats::new();
        let (a, b) = (self.index(from), self.index_ceil(to));
        for s in self.buckets.iter().take(b).skip(a) {
            out.merge(s);
        }
        out
    }

    /// Number of whole buckets covering `span` (at least one).
    pub fn buckets_in(&self, span: Duration) -> usize {
        self.index_ceil(span).max(1)
    }

    /// The first bucket that starts at or after `at`.
    pub(crate) fn index_ceil(&self, at: Duration) -> usize {
        let w = self.width.as_nanos();
        usize::try_from(at.as_nanos().div_ceil(w)).unwrap_or(usize::MAX)
    }

    /// Merges `other` (same width) into this series.
    pub fn merge(&mut self, other: &Series) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets
                .resize_with(other.buckets.len(), WindowStats::new);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            a.merge(b);
        }
        self.settled = self.settled.min(other.settled);
    }
}

/// Shared, lockable series that a running probe records into and the controller
/// reads. The lock is held for one record (tens of nanoseconds), never across I/O.
#[derive(Debug, Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Series>>,
}

impl Recorder {
    pub fn new(width: Duration) -> Self {
        Recorder {
            inner: Arc::new(Mutex::new(Series::new(width))),
        }
    }

    pub fn record(&self, s: &Sample) {
        self.lock().record(s);
    }

    /// Records a completion and its inter-token gaps under one lock.
    pub fn record_stream(&self, s: &Sample, gaps: &[Duration]) {
        self.lock().record_stream(s, gaps);
    }

    pub fn set_settled(&self, settled: Duration) {
        let mut g = self.lock();
        g.settled = g.settled.max(settled);
    }

    /// A copy of the series as it stands.
    pub fn snapshot(&self) -> Series {
        self.lock().clone()
    }

    /// Reads the series without copying it.
    pub fn with<R>(&self, f: impl FnOnce(&Series) -> R) -> R {
        f(&self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        // A panic while recording leaves counts that are still valid counts.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn buckets_by_scheduled_instant_and_merges_windows() {
        let mut s = Series::new(ms(1000));
        s.record(&Sample::success(ms(10), ms(5)));
        s.record(&Sample::success(ms(999), ms(7)));
        s.record(&Sample::failure(
            ms(1000),
            FailureKind::Rejected,
            Some(ms(1)),
        ));
        s.record(&Sample::failure(
            ms(2500),
            FailureKind::Timeout,
            Some(ms(2000)),
        ));
        s.record(&Sample::failure(ms(2600), FailureKind::Saturated, None));
        assert_eq!(s.buckets().len(), 3);
        assert_eq!(s.buckets()[0].total(), 2);
        assert_eq!(s.buckets()[1].failures(FailureKind::Rejected), 1);
        // The rejected answer is counted but not in the latency histogram.
        assert_eq!(s.buckets()[1].latency.len(), 0);
        let w = s.window(ms(0), ms(3000));
        assert_eq!((w.total(), w.successes, w.failed()), (5, 2, 3));
        assert_eq!(w.latency.len(), 3); // 5 ms, 7 ms, and the 2 s timeout
        assert_eq!(w.availability(), Some(0.4));
        // HDR keeps 3 significant figures and reports the top of the value's bucket.
        let max = w.quantile(1.0).unwrap();
        assert!(max >= ms(2000) && max <= ms(2002), "{max:?}");
        // A window edge inside a bucket takes the whole bucket.
        assert_eq!(s.window(ms(1500), ms(2001)).total(), 3);
        assert_eq!(s.window(ms(3000), ms(9000)).total(), 0);
    }

    #[test]
    fn value_range_keeps_min_max_and_latest() {
        let mut w = WindowStats::new();
        w.record(&Sample::success(ms(2), ms(1)).with_value(5.0));
        w.record(&Sample::success(ms(1), ms(1)).with_value(-1.0));
        w.record(&Sample::success(ms(3), ms(1)).with_value(2.0));
        let v = w.values.unwrap();
        assert_eq!((v.min, v.max, v.last, v.count), (-1.0, 5.0, 2.0, 3));
    }
}
