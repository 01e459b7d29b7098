//! Prometheus probe: an instant query (`GET /api/v1/query?query=...`) whose single
//! sample is the measured value.
//!
//! An answer that is not `status: success`, or that holds no sample or several, is a
//! failed attempt ("protocol"): a threshold on "the" value means nothing when the
//! query does not yield exactly one. NaN and infinities are failures too.

use bytes::Bytes;
use faultline_spec::probe::PrometheusProbe;
use http_body_util::{BodyExt, Empty};
use hyper::header::{ACCEPT, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::error::ProbeError;
use crate::window::FailureKind;

/// A prepared instant query.
#[derive(Debug, Clone)]
pub struct InstantQuery {
    host: String,
    port: u16,
    authority: String,
    path_and_query: String,
}

impl InstantQuery {
    pub fn new(spec: &PrometheusProbe) -> Result<Self, ProbeError> {
        let url_err = |why: String| ProbeError::Url {
            url: spec.url.clone(),
            why,
        };
        let uri: Uri = spec.url.parse().map_err(|e| url_err(format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(ProbeError::HttpsUnsupported(spec.url.clone())),
            _ => return Err(url_err("expected an http:// URL".into())),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| url_err("expected a host".into()))?;
        let base = uri.path().trim_end_matches('/');
        Ok(InstantQuery {
            host: authority.host().trim_matches(['[', ']']).to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            path_and_query: format!("{base}/api/v1/query?query={}", encode(&spec.query)),
        })
    }

    /// The request path, for logs and tests.
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// Runs the query once (on a fresh connection: queries are seconds apart).
    pub async fn attempt(&self) -> Result<Option<f64>, FailureKind> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|_| FailureKind::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| FailureKind::Connect)?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "prometheus probe connection ended");
            }
        });
        let req = Request::get(self.path_and_query.as_str())
            .header(HOST, self.authority.as_str())
            .header(ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|_| FailureKind::Protocol)?;
        let result = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|_| FailureKind::Protocol)?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|_| FailureKind::Protocol)?
                .to_bytes();
            if !status.is_success() {
                tracing::debug!(status = status.as_u16(), "prometheus answered an error");
                return Err(FailureKind::Rejected);
            }
            parse_instant(&body).map(Some)
        }
        .await;
        driver.abort();
        result
    }
}

/// The one value of an instant-query answer (a vector of one sample, or a scalar).
pub fn parse_instant(body: &[u8]) -> Result<f64, FailureKind> {
    let bad = |why: &str| {
        tracing::debug!(why, "unexpected prometheus answer");
        FailureKind::Protocol
    };
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    if v.get("status").and_then(Value::as_str) != Some("success") {
        return Err(bad("status is not success"));
    }
    let data = v.get("data").ok_or_else(|| bad("no data"))?;
    let result = data.get("result").ok_or_else(|| bad("no result"))?;
    let pair = match data.get("resultType").and_then(Value::as_str) {
        Some("vector") => match result.as_array().map(Vec::as_slice) {
            Some([one]) => one
                .get("value")
                .ok_or_else(|| bad("sample without value"))?,
            _ => return Err(bad("expected exactly one sample")),
        },
        Some("scalar") => result,
        _ => return Err(bad("expected a vector or a scalar")),
    };
    let value = pair
        .as_array()
        .and_then(|p| p.get(1))
        .and_then(Value::as_str)
        .ok_or_else(|| bad("expected [time, \"value\"]"))?;
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| bad("value is not a finite number"))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vectors_and_scalars() {
        let one = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"api"},"value":[1700000000.5,"0.25"]}]}}"#;
        assert_eq!(parse_instant(one), Ok(0.25));
        let scalar =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"42"]}}"#;
        assert_eq!(parse_instant(scalar), Ok(42.0));
        let none = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_instant(none), Err(FailureKind::Protocol));
        let nan = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#;
        assert_eq!(parse_instant(nan), Err(FailureKind::Protocol));
        let err = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert_eq!(parse_instant(err), Err(FailureKind::Protocol));
        assert_eq!(parse_instant(b"<html>"), Err(FailureKind::Protocol));
    }

    #[test]
    fn encodes_the_query() {
        let q: PrometheusProbe = serde_yaml::from_str(
            "{ url: 'http://127.0.0.1:9090/prom/', query: 'sum(rate(x{job=\"a b\"}[5m]))' }",
        )
        .unwrap();
        let q = InstantQuery::new(&q).unwrap();
        assert_eq!(
            q.path_and_query(),
            "/prom/api/v1/query?query=sum%28rate%28x%7Bjob%3D%22a%20b%22%7D%5B5m%5D%29%29"
        );
    }
}
