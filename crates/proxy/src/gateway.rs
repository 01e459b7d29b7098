//! Gateway faults with state: `http.rate_limit` (a token bucket per key) and
//! `http.queue` (a concurrency limit with a bounded FIFO queue and a queue
//! timeout), modelled on what an API gateway in front of an LLM platform does
//! when it is the bottleneck.
//!
//! Limits: a rate limit takes one short lock per request (never per byte) on its
//! bucket map; the map holds at most [`MAX_KEYS`] keys, and past that buckets
//! that refilled completely are forgotten (a forgotten bucket is a full one, so
//! nothing changes for its key). Requests without the key's header share one
//! bucket. The queue is tokio's semaphore, which is fair: slots go to waiters in
//! arrival order, and a request only takes a slot ahead of the queue when
//! nobody waits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Keys a rate limit remembers before it forgets full buckets.
pub const MAX_KEYS: usize = 65_536;

/// What a rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateKey {
    /// The client's address (in transparent mode too: the redirect keeps it).
    #[default]
    ClientIp,
    /// The value of this request header (an API key, `authorization`).
    Header(String),
    /// One bucket for all.
    Global,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket per key.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    key: RateKey,
    header: Option<HeaderName>,
    buckets: Mutex<HashMap<Vec<u8>, Bucket>>,
}

/// The answer of a rate limit to one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Verdict {
    pub allowed: bool,
    /// Bucket size, the `x-ratelimit-limit-requests`.
    pub limit: u32,
    /// Whole tokens left after this request.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// Denied: until the next token.
    pub retry: Duration,
}

impl RateLimiter {
    pub(crate) fn new(rate: f64, burst: u32, key: RateKey) -> Self {
        let header = match &key {
            RateKey::Header(h) => HeaderName::from_bytes(h.as_bytes()).ok(),
            _ => None,
        };
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            key,
            header,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for the request from `peer` with `headers`, if there is one.
    pub(crate) fn check(&self, peer: IpAddr, headers: &HeaderMap) -> Verdict {
        let octets;
        let key: &[u8] = match (&self.key, peer) {
            (RateKey::Global, _) => b"",
            (RateKey::ClientIp, IpAddr::V4(v4)) => {
                octets = v4.to_ipv6_mapped().octets();
                &octets
            }
            (RateKey::ClientIp, IpAddr::V6(v6)) => {
                octets = v6.octets();
                &octets
            }
            (RateKey::Header(_), _) => self
                .header
                .as_ref()
                .and_then(|h| headers.get(h))
                .map_or(b"".as_slice(), HeaderValue::as_bytes),
        };
        self.take(key, Instant::now())
    }

    fn take(&self, key: &[u8], now: Instant) -> Verdict {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let bucket = match buckets.get_mut(key) {
            Some(b) => b,
            None => buckets.entry(key.to_vec()).or_insert(Bucket {
                tokens: self.burst,
                at: now,
            }),
        };
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        let secs = |t: f64| Duration::from_secs_f64((t / self.rate).max(0.0));
        Verdict {
            allowed,
            limit: self.burst as u32,
            remaining: bucket.tokens.floor() as u64,
            reset: secs(self.burst - bucket.tokens),
            retry: if allowed {
                Duration::ZERO
            } else {
                secs(1.0 - bucket.tokens)
            },
        }
    }
}

/// OpenAI's way of writing a reset time: `20ms`, `1s`, `1.5s`, `6m0s`.
pub(crate) fn reset_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{}ms", ms.max(1))
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// Adds the `x-ratelimit-*-requests` headers of `v`.
pub(crate) fn limit_headers(headers: &mut HeaderMap, v: &Verdict) {
    headers.insert(
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderValue::from(v.limit),
    );
    headers.insert(
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderValue::from(v.remaining),
    );
    if let Ok(reset) = HeaderValue::from_str(&reset_text(v.reset)) {
        headers.insert(HeaderName::from_static("x-ratelimit-reset-requests"), reset);
    }
}

/// A concurrency limit with a bounded FIFO queue.
#[derive(Debug)]
pub(crate) struct Queue {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    places: usize,
    timeout: Duration,
}

/// How a request got past a queue.
#[derive(Debug)]
pub(crate) enum Admission {
    /// A slot, held until the response body ends; `waited` says whether it queued.
    Slot {
        permit: OwnedSemaphorePermit,
        waited: bool,
    },
    /// The queue was full: answered 503 at once.
    Full,
    /// No slot within the queue timeout: answered 503.
    TimedOut,
    /// The proxy drains: forwarded without a slot.
    Released,
}

/// Counts a waiter for as long as it waits, even when its request is dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Queue {
    pub(crate) fn new(concurrency: u32, places: u32, timeout: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(concurrency.max(1) as usize)),
            waiting: AtomicUsize::new(0),
            places: places as usize,
            timeout,
        }
    }

    /// Requests waiting now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Waits for a slot, in arrival order, until the queue timeout or a drain
    /// (`drain` reaching `release`).
    pub(crate) async fn admit(&self, mut drain: watch::Receiver<u8>, release: u8) -> Admission {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Admission::Slot {
                permit,
                waited: false,
            };
        }
        // Claim a place, or find the queue full.
        let claimed = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.places).then_some(n + 1)
            });
        if claimed.is_err() {
            return Admission::Full;
        }
        let _place = Waiting(&self.waiting);
        let slot = Arc::clone(&self.slots).acquire_owned();
        tokio::select! {
            r = tokio::time::timeout(self.timeout, slot) => match r {
                Ok(Ok(permit)) => Admission::Slot { permit, waited: true },
                // The semaphore is never closed; treat it as a timeout if it were.
                Ok(Err(_)) | Err(_) => Admission::TimedOut,
            },
            _ = drain.wait_for(|s| *s >= release) => Admission::Released,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_and_says_when() {
        let l = RateLimiter::new(10.0, 2, RateKey::Global);
        let t0 = Instant::now();
        let a = l.take(b"", t0);
        assert!(a.allowed && a.remaining == 1 && a.limit == 2);
        assert!(l.take(b"", t0).allowed);
        let denied = l.take(b"", t0);
        assert!(!denied.allowed);
        assert_eq!(denied.retry, Duration::from_millis(100));
        assert_eq!(denied.reset, Duration::from_millis(200));
        assert!(l.take(b"", t0 + Duration::from_millis(100)).allowed);
        // Another key has its own bucket.
        assert!(l.take(b"k", t0).allowed);
    }

    #[test]
    fn buckets_are_bounded() {
        let l = RateLimiter::new(1000.0, 1, RateKey::Global);
        let t0 = Instant::now();
        for i in 0..MAX_KEYS as u32 {
            l.take(&i.to_be_bytes(), t0);
        }
        l.take(b"late", t0 + Duration::from_secs(1));
        let n = l.buckets.lock().unwrap().len();
        assert!(n <= 2, "{n} buckets kept");
    }

    #[test]
    fn reset_is_written_like_openai() {
        assert_eq!(reset_text(Duration::from_millis(20)), "20ms");
        assert_eq!(reset_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(reset_text(Duration::from_secs(1)), "1s");
        assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
    }
}
