//! Open-loop completions against an OpenAI-compatible API: `/v1/chat/completions`
//! or `/v1/completions`, streamed (server-sent events) or not.
//!
//! The schedule, the workers, their keep-alive connections, the bound on requests
//! in flight and the coordinated-omission correction are the http probe's
//! ([`crate::load`]); this module is what a completion request is and how its
//! answer is read and timed. Request `i` sends prompt `i mod n` with the probe's
//! `model` and `max_tokens` (bodies prepared once, cloned as shared `Bytes`), and
//! with `stream: true` also `stream_options: {include_usage: true}`, so that an
//! OpenAI-style server reports `usage` in its last chunk.
//!
//! Per answer it records, into the bucket of the request's *scheduled* instant:
//!
//! - **latency**: from the scheduled instant to the end of the answer (for a stream,
//!   `data: [DONE]` and the end of the body);
//! - **time to first token** (streams): from the scheduled instant to the first
//!   event that carries text (`choices[0].delta.content` for chat,
//!   `choices[0].text` for completions; a role-only first chunk is not a token).
//!   Every event of one body frame carries the frame's arrival time;
//! - **inter-token latency** (streams): every gap between two consecutive token
//!   events; a stream that times out mid-way adds the gap from its last token to
//!   the timeout, so a stall longer than the timeout is not hidden by it;
//! - **tokens out**: `usage.completion_tokens` when the answer has it, else the
//!   token events counted (a non-streamed answer without `usage` has none);
//! - **tokens per second** (successes): for a stream, the decode rate after the
//!   first token, `(tokens - 1) / (last token - first token)` (the inverse of the
//!   time per output token; a stream whose tokens all came in one event has none);
//!   for a non-streamed answer, `tokens / (answer - send)`.
//!
//! What fails, and why: a status outside 2xx is "rejected"; with `stream: true`, an
//! answer that is not `text/event-stream` is "not an event stream" (its body is
//! read and dropped, never parsed as a stream); a stream whose body ends before
//! `data: [DONE]`, that reaches `[DONE]` without any `finish_reason`, or that
//! carries an `error` object is "stream cut short"; an event or body that is not
//! the JSON expected is "protocol"; no end within `timeout` of the scheduled
//! instant is "timeout". The reason is logged at debug level as well.
//!
//! Server-sent events are parsed by a small line parser that follows the WHATWG
//! rules the OpenAI streams use: lines end in LF, CRLF or CR (also split across
//! frames), `data:` lines (one leading space dropped) accumulate until an empty
//! line dispatches the event, comments (`:`) and other fields are ignored, and an
//! unterminated event at the end of the body is dropped. Its buffers are a worker's
//! and reused from one answer to the next.
//!
//! Limits: plain `http://` (as the http probe), `choices[0]` only (`n` > 1 is not
//! asked for), no tool calls or logprobs; a prompts file is read once, when the
//! probe starts.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use faultline_spec::probe::{LlmApi, LlmProbe};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response};
use serde::Deserialize;

use crate::error::ProbeError;
use crate::load::{Ended, Exchange, Limits, Load, LoadReport, Target, Timing};
use crate::window::{Clock, FailureKind, Recorder, Sample, StreamFigures};

/// The largest non-streamed answer read (a completion of many thousand tokens).
const MAX_BODY: usize = 8 << 20;
/// The longest SSE line kept; a longer one is a protocol error, not a memory leak.
const MAX_LINE: usize = 1 << 20;

// === impl LlmLoad ===

/// A prepared llm load.
#[derive(Debug)]
pub struct LlmLoad {
    load: Load<LlmExchange>,
}

#[derive(Debug)]
pub(crate) struct LlmExchange {
    template: Request<Full<Bytes>>,
    /// One prepared body per prompt.
    bodies: Vec<Bytes>,
    api: LlmApi,
    stream: bool,
}

impl LlmLoad {
    /// Prepares the load: reads `prompts_file` if given, builds one body per
    /// prompt and resolves header secrets once (marked sensitive).
    pub fn new(spec: &LlmProbe) -> Result<Self, ProbeError> {
        let api = spec
            .resolved_api()
            .ok_or_else(|| ProbeError::LlmApi(spec.url.clone()))?;
        let prompts = match &spec.prompts_file {
            Some(path) => read_prompts(path)?,
            None => spec.prompts.clone(),
        };
        if prompts.is_empty() {
            return Err(ProbeError::NoPrompts);
        }
        let bodies = prompts
            .iter()
            .map(|p| body(api, &spec.model, p, spec.max_tokens, spec.stream))
            .collect();

        let target = Target::new(&spec.url, &spec.headers)?;
        let mut req = target.template.clone();
        *req.method_mut() = Method::POST;
        let h = req.headers_mut();
        if !h.contains_key(CONTENT_TYPE) {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if !h.contains_key(ACCEPT) {
            let accept = if spec.stream {
                "text/event-stream"
            } else {
                "application/json"
            };
            h.insert(ACCEPT, HeaderValue::from_static(accept));
        }

        let exchange = LlmExchange {
            template: req,
            bodies,
            api,
            stream: spec.stream,
        };
        Ok(LlmLoad {
            load: Load::new(&target, exchange, spec.rate, spec.timeout.get(), "llm")?,
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

    /// Runs the load until `limits` stop it (see [`crate::http::HttpLoad::run`]).
    pub async fn run(self, clock: Clock, recorder: Recorder, limits: Limits) -> LoadReport {
        self.load.run(clock, recorder, limits).await
    }
}

fn read_prompts(path: &str) -> Result<Vec<String>, ProbeError> {
    let text = std::fs::read_to_string(path).map_err(|e| ProbeError::Prompts {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn body(api: LlmApi, model: &str, prompt: &str, max_tokens: u32, stream: bool) -> Bytes {
    let mut v = match api {
        LlmApi::Chat => serde_json::json!({
            "model": model,
            "messages": [{ "role": "user", "content": prompt }],
        }),
        LlmApi::Completions => serde_json::json!({ "model": model, "prompt": prompt }),
    };
    v["max_tokens"] = max_tokens.into();
    v["stream"] = stream.into();
    if stream {
        v["stream_options"] = serde_json::json!({ "include_usage": true });
    }
    Bytes::from(v.to_string())
}

// === impl Scratch ===

/// A worker's buffers and the figures of the answer being read.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    sse: Sse,
    gaps: Vec<Duration>,
    /// Offsets on the load's clock of the first and the latest token event.
    first: Option<Duration>,
    last: Option<Duration>,
    events: u64,
    usage: Option<u64>,
    done: bool,
    finished: bool,
}

impl Scratch {
    fn clear(&mut self) {
        self.sse.clear();
        self.gaps.clear();
        self.first = None;
        self.last = None;
        self.events = 0;
        self.usage = None;
        self.done = false;
        self.finished = false;
    }

    fn token(&mut self, at: Duration) {
        if let Some(last) = self.last {
            self.gaps.push(at.saturating_sub(last));
        } else {
            self.first = Some(at);
        }
        self.last = Some(at);
        self.events += 1;
    }

    /// One event's data, arrived at `at`.
    fn event(&mut self, api: LlmApi, data: &[u8], at: Duration) -> Result<(), FailureKind> {
        if self.done {
            return Ok(());
        }
        if data == b"[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Chunk<'_> = serde_json::from_slice(data).map_err(|e| {
            tracing::debug!(error = %e, "llm probe: an event is not a completion chunk");
            FailureKind::Protocol
        })?;
        self.chunk(api, chunk, Some(at))
    }

    fn chunk(
        &mut self,
        api: LlmApi,
        c: Chunk<'_>,
        at: Option<Duration>,
    ) -> Result<(), FailureKind> {
        if c.error.is_some() {
            tracing::debug!("llm probe: the stream carried an error object");
            return Err(FailureKind::StreamCut);
        }
        if let Some(u) = c.usage.and_then(|u| u.completion_tokens) {
            self.usage = Some(u);
        }
        if let Some(choice) = c.choices.first() {
            let text = match api {
                LlmApi::Chat => choice
                    .delta
                    .as_ref()
                    .or(choice.message.as_ref())
                    .and_then(|d| d.content.as_deref()),
                LlmApi::Completions => choice.text.as_deref(),
            };
            if let (Some(at), Some(t)) = (at, text)
                && !t.is_empty()
            {
                self.token(at);
            }
            if choice.finish_reason.is_some() {
                self.finished = true;
            }
        }
        Ok(())
    }

    fn tokens(&self, stream: bool) -> Option<u64> {
        self.usage
            .or((stream && self.events > 0).then_some(self.events))
    }
}

/// The parts of a completion chunk (or a whole completion) that are timed or counted.
#[derive(Debug, Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    delta: Option<Message<'a>>,
    #[serde(default, borrow)]
    message: Option<Message<'a>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct Usage {
    #[serde(default)]
    completion_tokens: Option<u64>,
}

// === impl Exchange ===

impl Exchange for LlmExchange {
    type Scratch = Scratch;
    type Answer = ();

    fn request(&self, seq: u64) -> Request<Full<Bytes>> {
        let mut req = self.template.clone();
        // `bodies` is never empty (checked in `new`).
        let i = usize::try_from(seq % self.bodies.len() as u64).unwrap_or(0);
        *req.body_mut() = Full::new(self.bodies[i].clone());
        req
    }

    async fn read(
        &self,
        clock: Clock,
        _due: Duration,
        response: Response<Incoming>,
        s: &mut Scratch,
    ) -> Result<(), FailureKind> {
        let status = response.status();
        let event_stream = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
            });
        let mut body = response.into_body();
        if !status.is_success() || (self.stream && !event_stream) {
            // Read to the end so the connection can carry the next request.
            while let Some(frame) = body.frame().await {
                frame.map_err(|_| FailureKind::Protocol)?;
            }
            if !status.is_success() {
                return Err(FailureKind::Rejected);
            }
            tracing::debug!(%status, "llm probe: `stream: true` answered without text/event-stream");
            return Err(FailureKind::NotEventStream);
        }
        if !self.stream {
            let bytes = http_body_util::Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|_| FailureKind::Protocol)?
                .to_bytes();
            let chunk: Chunk<'_> = serde_json::from_slice(&bytes).map_err(|e| {
                tracing::debug!(error = %e, "llm probe: the answer is not a completion");
                FailureKind::Protocol
            })?;
            if chunk.choices.is_empty() && chunk.error.is_none() {
                tracing::debug!("llm probe: the answer has no choices");
                return Err(FailureKind::Protocol);
            }
            return s.chunk(self.api, chunk, None);
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                tracing::debug!("llm probe: the stream broke off");
                FailureKind::StreamCut
            })?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            let at = clock.now();
            let Scratch { sse, .. } = s;
            let mut events = std::mem::take(&mut sse.events);
            let parsed = sse.feed(data, &mut events);
            let mut result = parsed;
            if result.is_ok() {
                for data in events.iter() {
                    if let Err(e) = s.event(self.api, data, at) {
                        result = Err(e);
                        break;
                    }
                }
            }
            events.clear();
            s.sse.events = events;
            result?;
        }
        if !s.done {
            tracing::debug!("llm probe: the stream ended before `data: [DONE]`");
            return Err(FailureKind::StreamCut);
        }
        if !s.finished {
            tracing::debug!("llm probe: the stream reached [DONE] without a finish_reason");
            return Err(FailureKind::StreamCut);
        }
        Ok(())
    }

    fn finish(&self, recorder: &Recorder, t: Timing, ended: Ended<()>, s: &mut Scratch) {
        let latency = t.done.saturating_sub(t.due);
        let ttft = s.first.map(|f| f.saturating_sub(t.due));
        let tokens = s.tokens(self.stream);
        let sample = match ended {
            Ended::Answered(()) => {
                let service = t.sent.map_or(latency, |sent| t.done.saturating_sub(sent));
                let tokens_per_s = if self.stream {
                    match (tokens, s.first, s.last) {
                        (Some(n), Some(a), Some(b)) if n >= 2 && b > a => {
                            Some((n - 1) as f64 / (b - a).as_secs_f64())
                        }
                        _ => None,
                    }
                } else {
                    tokens
                        .filter(|_| !service.is_zero())
                        .map(|n| n as f64 / service.as_secs_f64())
                };
                Sample::success(t.due, latency)
                    .with_service(service)
                    .with_stream(StreamFigures {
                        ttft,
                        tokens,
                        tokens_per_s,
                    })
            }
            Ended::Failed(kind) => {
                Sample::failure(t.due, kind, Some(latency)).with_stream(StreamFigures {
                    ttft,
                    tokens,
                    tokens_per_s: None,
                })
            }
            Ended::TimedOut => {
                if self.stream
                    && let Some(last) = s.last
                {
                    // The stall that the timeout ended is a gap too.
                    s.gaps.push((t.due + t.timeout).saturating_sub(last));
                }
                let ttft = if self.stream {
                    ttft.or(Some(t.timeout))
                } else {
                    None
                };
                Sample::failure(t.due, FailureKind::Timeout, Some(t.timeout)).with_stream(
                    StreamFigures {
                        ttft,
                        tokens,
                        tokens_per_s: None,
                    },
                )
            }
        };
        recorder.record_stream(&sample, &s.gaps);
        s.clear();
    }
}

// === impl Sse ===

/// A server-sent events line parser (see the module docs). Events' data are
/// collected into `events`, whose buffers are kept for the next frame.
#[derive(Debug, Default)]
struct Sse {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    /// The previous byte was a CR: an LF right after it ends no second line.
    after_cr: bool,
    /// Dispatched events of the current frame (reused buffers).
    events: Events,
}

/// A list of byte strings that keeps its buffers when cleared.
#[derive(Debug, Default)]
struct Events {
    bufs: Vec<Vec<u8>>,
    len: usize,
}

impl Events {
    fn push(&mut self, data: &[u8]) {
        if self.len == self.bufs.len() {
            self.bufs.push(Vec::new());
        }
        let b = &mut self.bufs[self.len];
        b.clear();
        b.extend_from_slice(data);
        self.len += 1;
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs[..self.len].iter().map(Vec::as_slice)
    }
}

impl Sse {
    fn clear(&mut self) {
        self.line.clear();
        self.data.clear();
        self.has_data = false;
        self.after_cr = false;
        self.events.clear();
    }

    /// Feeds one frame; complete events go to `out`.
    fn feed(&mut self, bytes: &[u8], out: &mut Events) -> Result<(), FailureKind> {
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    self.end_line(out);
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() >= MAX_LINE {
                        tracing::debug!("llm probe: an event stream line is over 1 MiB");
                        return Err(FailureKind::Protocol);
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(())
    }

    fn end_line(&mut self, out: &mut Events) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if self.has_data {
                if self.data.last() == Some(&b'\n') {
                    self.data.pop();
                }
                out.push(&self.data);
            }
            self.data.clear();
            self.has_data = false;
        } else if line[0] != b':' {
            let (field, value) = match line.iter().position(|&c| c == b':') {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (&line[..], &[][..]),
            };
            if field == b"data" {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
                self.has_data = true;
            }
        }
        self.line = line;
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(frames: &[&str]) -> Vec<String> {
        let mut sse = Sse::default();
        let mut out = Events::default();
        let mut all = Vec::new();
        for f in frames {
            sse.feed(f.as_bytes(), &mut out).unwrap();
            all.extend(out.iter().map(|d| String::from_utf8_lossy(d).into_owned()));
            out.clear();
        }
        all
    }

    #[test]
    fn sse_lines_split_anywhere_with_any_line_end() {
        assert_eq!(
            parse(&[
                "data: a\n\ndata: b\r\n\r\nda",
                "ta:c\r",
                "\r: comment\ndata: d\n",
                "data: e\n\n"
            ]),
            vec!["a", "b", "c", "d\ne"]
        );
        // A CR at the end of one frame and the LF at the start of the next are one
        // line end, not two (which would dispatch an empty event early).
        assert_eq!(parse(&["data: x\r", "\ndata: y\r\n\r\n"]), vec!["x\ny"]);
        // Other fields are ignored; an event without data is not dispatched; an
        // unterminated event is not dispatched.
        assert_eq!(
            parse(&["event: ping\nid: 3\n\nretry: 10\n\ndata: [DONE]\n\ndata: tail"]),
            vec!["[DONE]"]
        );
    }

    #[test]
    fn chunks_count_text_and_usage() {
        let mut s = Scratch::default();
        let ms = Duration::from_millis;
        let chat = LlmApi::Chat;
        s.event(
            chat,
            br#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            ms(5),
        )
        .unwrap();
        assert_eq!(s.first, None);
        s.event(chat, br#"{"choices":[{"delta":{"content":"Hi"}}]}"#, ms(10))
            .unwrap();
        s.event(
            chat,
            br#"{"choices":[{"delta":{"content":" there"},"finish_reason":null}]}"#,
            ms(35),
        )
        .unwrap();
        s.event(
            chat,
            br#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
            ms(40),
        )
        .unwrap();
        assert_eq!((s.events, s.tokens(true), s.finished), (2, Some(2), true));
        s.event(
            chat,
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}"#,
            ms(41),
        )
        .unwrap();
        s.event(chat, b"[DONE]", ms(41)).unwrap();
        assert_eq!((s.tokens(true), s.done), (Some(7), true));
        assert_eq!((s.first, s.gaps.as_slice()), (Some(ms(10)), &[ms(25)][..]));
        assert_eq!(
            s.event(chat, br#"{"error":{"message":"overloaded"}}"#, ms(50)),
            Ok(()),
            "after [DONE] nothing counts"
        );
        s.clear();
        assert_eq!(
            s.event(chat, br#"{"error":{"message":"overloaded"}}"#, ms(50)),
            Err(FailureKind::StreamCut)
        );
        assert_eq!(
            s.event(chat, b"not json", ms(50)),
            Err(FailureKind::Protocol)
        );
        let mut s = Scratch::default();
        s.event(
            LlmApi::Completions,
            br#"{"choices":[{"text":"a","index":0}]}"#,
            ms(1),
        )
        .unwrap();
        assert_eq!(s.tokens(true), Some(1));
    }

    #[test]
    fn bodies_follow_the_api() {
        let b = body(LlmApi::Chat, "m", "hi", 16, true);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(
            (v["max_tokens"].as_u64(), v["stream"].as_bool()),
            (Some(16), Some(true))
        );
        assert_eq!(v["stream_options"]["include_usage"], true);
        let b = body(LlmApi::Completions, "m", "hi", 16, false);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            (v["prompt"].as_str(), v.get("stream_options")),
            (Some("hi"), None)
        );
    }
}
