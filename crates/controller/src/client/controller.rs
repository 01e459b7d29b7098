//! A client of a controller's HTTP API (docs/http-api.md), for the command line:
//! `faultline agents`, `plan --controller` and `run --controller`. JSON calls
//! and a Server-Sent Events reader for `GET /v1/runs/{id}/events` that resumes
//! after the last event it saw (`Last-Event-ID`) when the connection drops.

use std::path::Path;
use std::time::Duration;

pub use reqwest::Method;
use serde_json::Value;

use super::ClientError;

/// Reconnections of one event stream at most, before giving up.
pub const SSE_RECONNECTS: u32 = 20;

#[derive(Clone)]
pub struct ControllerClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    timeout: Duration,
}

impl std::fmt::Debug for ControllerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("ControllerClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

impl ControllerClient {
    /// `timeout` bounds each JSON call; event streams are bounded by the run.
    pub fn new(
        base: &str,
        token: Option<String>,
        ca_pem: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        // The same TLS setup as the agent client (rustls, ring, an optional CA),
        // without an overall timeout: an event stream lasts as long as its run.
        let http = super::http::reqwest_client("controller", ca_pem, None, timeout)?;
        Ok(ControllerClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
            timeout,
        })
    }

    fn fail(&self, reason: String) -> ClientError {
        ClientError::Unreachable {
            agent: format!("controller {}", self.base),
            reason,
        }
    }

    /// A JSON call; the status and the JSON answer (errors are answers too).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(self.timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.fail(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| self.fail(e.to_string()))?;
        let v = serde_json::from_slice(&bytes).map_err(|_| ClientError::Protocol {
            agent: format!("controller {}", self.base),
            reason: format!("{status} without a JSON body"),
        })?;
        Ok((status, v))
    }

    /// `GET path`, refused unless 2xx.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        let (status, v) = self.call(Method::GET, path, None).await?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(ClientError::Rejected {
                agent: format!("controller {}", self.base),
                status,
                error: v["error"].as_str().unwrap_or("unknown").to_owned(),
                reason: v["reason"].as_str().unwrap_or_default().to_owned(),
            })
        }
    }

    /// Follows a run's events from after `after` until the stream's `end` event
    /// (or `on_event` answers false), reconnecting after the last event seen at
    /// most [`SSE_RECONNECTS`] times.
    pub async fn follow_events(
        &self,
        run_id: &str,
        mut after: i64,
        mut on_event: impl FnMut(&SseEvent) -> bool,
    ) -> Result<(), ClientError> {
        let mut failures = 0u32;
        loop {
            let mut req = self
                .http
                .get(format!("{}/v1/runs/{run_id}/events", self.base))
                .header("Last-Event-ID", after.to_string())
                .header("Accept", "text/event-stream");
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let outcome = match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    read_stream(resp, &mut after, &mut on_event).await
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    return Err(ClientError::Rejected {
                        agent: format!("controller {}", self.base),
                        status,
                        error: "events".to_owned(),
                        reason: format!("the event stream answered {status}"),
                    });
                }
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(true) => return Ok(()),
                Ok(false) | Err(_) if failures >= SSE_RECONNECTS => {
                    return Err(self.fail(format!(
                        "the event stream of {run_id} dropped {failures} times"
                    )));
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(run = %run_id, error = %e, "event stream dropped; resuming")
                }
            }
            failures += 1;
            tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(10)))).await;
        }
    }
}

/// Reads one connection's events; true once finished (`end`, or the caller
/// stopped), false when the connection closed first.
async fn read_stream(
    mut resp: reqwest::Response,
    after: &mut i64,
    on_event: &mut impl FnMut(&SseEvent) -> bool,
) -> Result<bool, String> {
    let mut buf: Vec<u8> = Vec::new();
    let mut parser = SseParser::default();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(ev) = parser.line(line.trim_end_matches(['\n', '\r'])) {
                if let Some(id) = ev.id {
                    *after = id;
                }
                if ev.event == "end" || !on_event(&ev) {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// The `text/event-stream` format, line by line.
#[derive(Debug, Default)]
pub struct SseParser {
    id: Option<i64>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds one line (without its newline); answers an event at a blank line.
    pub fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if self.data.is_empty() && self.event.is_none() {
                return None;
            }
            let text = self.data.join("\n");
            let ev = SseEvent {
                id: self.id.take(),
                event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                data: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            };
            self.data.clear();
            return Some(ev);
        }
        if line.starts_with(':') {
            return None; // a comment: keep-alive
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.id = value.parse().ok(),
            "event" => self.event = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_lines_make_events() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for l in [
            ": keep-alive",
            "",
            "id: 3",
            "event: phase",
            "data: {\"phase\":\"baseline\"}",
            "",
            "event: end",
            "data: {}",
            "",
        ] {
            out.extend(p.line(l));
        }
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].id, Some(3));
        assert_eq!(out[0].event, "phase");
        assert_eq!(out[0].data["phase"], "baseline");
        assert_eq!((out[1].id, out[1].event.as_str()), (None, "end"));
    }
}
