//! Open-loop HTTP load at a fixed rate, timed from each request's scheduled instant.
//!
//! The schedule, the workers and their keep-alive connections, the bound on
//! requests in flight ("client saturated") and the coordinated-omission correction
//! are the shared load machinery of [`crate::load`]; this module is what an http
//! probe sends (one prepared request, cloned) and how it judges the answer (its
//! status, by the `success` rule; the body is read to its end so the connection
//! can carry the next request).
//!
//! Per request the generator allocates nothing of its own: the request is a clone of
//! one prepared template (the body is shared `Bytes`), the queue is a ring buffer
//! under a short lock, a parked worker is woken through a one-slot channel, and the
//! sample goes into a bucket under a short lock. What remains is what hyper needs
//! (the header map it takes ownership of, its dispatch).
//!
//! Each sample also carries its service time (from the moment its worker sent it),
//! what a closed-loop tool reports: the difference is the client's own lateness.
//!
//! Limits: those of [`crate::load`] (plain `http://`, a 1 ms timer).

use std::time::Duration;

use bytes::Bytes;
use faultline_spec::probe::{HttpMethod, HttpProbe};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};

use crate::error::ProbeError;
pub use crate::load::{DEFAULT_MAX_IN_FLIGHT, Limits, LoadReport};
use crate::load::{Ended, Exchange, Load, Target, Timing};
use crate::window::{Clock, FailureKind, Recorder, Sample};

// === impl StatusRule ===

/// Which HTTP status codes count as success: classes (`2xx`) and exact codes.
#[derive(Clone, PartialEq, Eq)]
pub struct StatusRule {
    // Bit `c` set: status `c` (100..=999) is a success.
    bits: [u64; 16],
}

impl std::fmt::Debug for StatusRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let codes: Vec<u16> = (100..1000).filter(|c| self.allows(*c)).collect();
        f.debug_struct("StatusRule").field("codes", &codes).finish()
    }
}

impl StatusRule {
    /// Parses `success:` entries; empty means `2xx` and `3xx`.
    pub fn parse(entries: &[String]) -> Result<Self, ProbeError> {
        let mut rule = StatusRule { bits: [0; 16] };
        if entries.is_empty() {
            rule.allow_range(200, 399);
            return Ok(rule);
        }
        for e in entries {
            let t = e.trim();
            let bad = || ProbeError::Success(t.to_owned());
            let b = t.as_bytes();
            if b.len() == 3 && b[0].is_ascii_digit() && b[1..].eq_ignore_ascii_case(b"xx") {
                let class = u16::from(b[0] - b'0');
                if !(1..=9).contains(&class) {
                    return Err(bad());
                }
                rule.allow_range(class * 100, class * 100 + 99);
            } else {
                let code: u16 = t.parse().map_err(|_| bad())?;
                if !(100..=999).contains(&code) {
                    return Err(bad());
                }
                rule.allow_range(code, code);
            }
        }
        Ok(rule)
    }

    fn allow_range(&mut self, lo: u16, hi: u16) {
        for c in lo..=hi {
            self.bits[usize::from(c / 64)] |= 1 << (c % 64);
        }
    }

    pub fn allows(&self, code: u16) -> bool {
        code < 1024 && self.bits[usize::from(code / 64)] & (1 << (code % 64)) != 0
    }
}

// === impl HttpLoad ===

/// A prepared HTTP load: target, request template, rate and bounds.
#[derive(Debug)]
pub struct HttpLoad {
    load: Load<HttpExchange>,
}

/// The http probe's exchange: one request template; success by status.
#[derive(Debug)]
pub(crate) struct HttpExchange {
    template: Request<Full<Bytes>>,
    success: StatusRule,
}

impl HttpLoad {
    /// Prepares the load. Header secrets are resolved here, once, and marked
    /// sensitive in the request so that hyper never logs them.
    pub fn new(spec: &HttpProbe) -> Result<Self, ProbeError> {
        let target = Target::new(&spec.url, &spec.headers)?;
        let mut req = target.template.clone();
        *req.method_mut() = method(spec.method);
        *req.body_mut() = Full::new(Bytes::from(spec.body.clone().unwrap_or_default()));
        let exchange = HttpExchange {
            template: req,
            success: StatusRule::parse(&spec.success)?,
        };
        Ok(HttpLoad {
            load: Load::new(&target, exchange, spec.rate, spec.timeout.get(), "http")?,
        })
    }

    /// Caps the requests in flight (and so the connections) at `n` (at least 1).
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.load.max_in_flight = n.max(1);
        self
    }

    pub fn max_in_flight(&self) -> usize {
        self.load.max_in_flight
    }

    pub fn rate(&self) -> f64 {
        self.load.rate
    }

    /// Runs the load until `limits` stop it, recording one sample per scheduled
    /// request into `recorder`, then waits for the requests in flight (each ends by
    /// its timeout) and marks everything scheduled as settled.
    pub async fn run(self, clock: Clock, recorder: Recorder, limits: Limits) -> LoadReport {
        self.load.run(clock, recorder, limits).await
    }
}

impl Exchange for HttpExchange {
    type Scratch = ();
    type Answer = u16;

    fn request(&self, _seq: u64) -> Request<Full<Bytes>> {
        self.template.clone()
    }

    async fn read(
        &self,
        _clock: Clock,
        _due: Duration,
        response: Response<Incoming>,
        _scratch: &mut (),
    ) -> Result<u16, FailureKind> {
        let status = response.status().as_u16();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(|_| FailureKind::Protocol)?;
        }
        Ok(status)
    }

    fn finish(&self, recorder: &Recorder, t: Timing, ended: Ended<u16>, _scratch: &mut ()) {
        let latency = t.done.saturating_sub(t.due);
        let service = t.sent.map(|s| t.done.saturating_sub(s));
        let sample = match ended {
            Ended::Answered(status) if self.success.allows(status) => {
                Sample::success(t.due, latency).with_service(service.unwrap_or(latency))
            }
            Ended::Answered(_) => Sample::failure(t.due, FailureKind::Rejected, Some(latency)),
            Ended::Failed(kind) => Sample::failure(t.due, kind, Some(latency)),
            Ended::TimedOut => {
                let s = Sample::failure(t.due, FailureKind::Timeout, Some(t.timeout));
                match service {
                    Some(service) => s.with_service(service),
                    None => s,
                }
            }
        };
        recorder.record(&sample);
    }
}

fn method(m: HttpMethod) -> Method {
    match m {
        HttpMethod::Get => Method::GET,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_rules() {
        let d = StatusRule::parse(&[]).unwrap();
        assert!(d.allows(200) && d.allows(204) && d.allows(301) && d.allows(399));
        assert!(!d.allows(199) && !d.allows(404) && !d.allows(500));
        let r = StatusRule::parse(&["2xx".into(), "404".into(), "5XX".into()]).unwrap();
        assert!(r.allows(250) && r.allows(404) && r.allows(503));
        assert!(!r.allows(302) && !r.allows(403));
        for bad in ["0xx", "2x", "99", "1000", "abc", ""] {
            assert!(StatusRule::parse(&[bad.into()]).is_err(), "{bad:?}");
        }
    }

    fn spec(yaml: &str) -> HttpProbe {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn prepares_an_origin_form_request_with_host() {
        let l = HttpLoad::new(&spec(
            "{ url: 'http://127.0.0.1:8080/v1/x?q=1', method: POST, body: 'hi', rate: 200/s, \
               headers: { x-token: abc } }",
        ))
        .unwrap();
        assert_eq!((l.load.host.as_str(), l.load.port), ("127.0.0.1", 8080));
        let t = &l.load.exchange.template;
        assert_eq!(t.uri(), "/v1/x?q=1");
        assert_eq!(t.method(), Method::POST);
        assert_eq!(t.headers()[hyper::header::HOST], "127.0.0.1:8080");
        assert!(t.headers()["x-token"].is_sensitive());
        // 200/s for the default 2 s timeout.
        assert_eq!(l.max_in_flight(), 401);
        assert!(matches!(
            HttpLoad::new(&spec("{ url: 'https://x/', rate: 1/s }")),
            Err(ProbeError::HttpsUnsupported(_))
        ));
        assert!(HttpLoad::new(&spec("{ url: 'ftp://x/', rate: 1/s }")).is_err());
    }
}
