//! Faults on streamed responses: a body wrapper that counts events as they pass
//! and holds, paces or ends the stream at event boundaries
//! (`http.stream_stall`, `http.stream_slow`, `http.stream_truncate`).
//!
//! An event is what a streaming client consumes as one unit: an SSE event (lines
//! up to a blank line) for `text/event-stream`, a line for any other chunked
//! body (NDJSON, as Ollama-style APIs stream). A response that is neither, or
//! has a `content-length`, is never wrapped: stream faults pass it through.
//!
//! Limits of the data path: frames from the upstream are forwarded as they come,
//! split only where a fault acts (after the Nth event, or after every event when
//! pacing), with `Bytes::split_off`, which shares the frame's buffer instead of
//! copying it; scanning is a byte loop with no lock. A stream's timer is boxed
//! once, the first time it holds, and re-armed after that. Time is measured
//! from the release of the previous event, so a pace never adds up with an
//! upstream that is slower than it (pipelined, like the latency toxic).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderMap};
use tokio::time::{Instant, Sleep};

/// The last event an OpenAI-style stream sends.
const DONE: &[u8] = b"data: [DONE]\n\n";

/// Why a response body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The upstream's body failed.
    #[error("upstream body: {0}")]
    Upstream(#[from] hyper::Error),
    /// `http.stream_stall` with `cut` ended the stream after its hold.
    #[error("stream cut by faultline http.stream_stall")]
    Cut,
}

/// How a streamed body is divided into events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Server-Sent Events: an event ends at a blank line.
    Sse,
    /// Any other chunked body: an event is a line.
    Lines,
}

impl Framing {
    /// The framing of a response, or `None` when it is not streamed (it has a
    /// length, or is not chunked): stream faults leave those alone.
    pub(crate) fn of(headers: &HeaderMap) -> Option<Framing> {
        // A body of a known length is whole before it is read: not a stream,
        // and changing it would contradict its header.
        if headers.contains_key(header::CONTENT_LENGTH) {
            return None;
        }
        let is_sse = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .get(..17)
                    .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
            });
        if is_sse {
            return Some(Framing::Sse);
        }
        let chunked = headers.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
            v.as_bytes()
                .windows(7)
                .any(|w| w.eq_ignore_ascii_case(b"chunked"))
        });
        chunked.then_some(Framing::Lines)
    }
}

/// Finds event ends across frame boundaries.
#[derive(Debug, Clone, Copy)]
struct Scanner {
    framing: Framing,
    /// The last byte seen ended a line.
    at_line_start: bool,
    /// The current event has a byte that is not a line end (blank lines before
    /// an event are not an event).
    has_content: bool,
}

impl Scanner {
    fn new(framing: Framing) -> Self {
        Self {
            framing,
            at_line_start: true,
            has_content: false,
        }
    }

    /// The index just past the first event end in `buf`, if there is one.
    fn next_end(&mut self, buf: &[u8]) -> Option<usize> {
        for (i, &b) in buf.iter().enumerate() {
            match b {
                b'\n' => {
                    let ends = match self.framing {
                        Framing::Sse => self.at_line_start && self.has_content,
                        Framing::Lines => self.has_content,
                    };
                    self.at_line_start = true;
                    if ends {
                        self.has_content = false;
                        return Some(i + 1);
                    }
                }
                // CRLF line ends: the LF decides.
                b'\r' => {}
                _ => {
                    self.at_line_start = false;
                    self.has_content = true;
                }
            }
        }
        None
    }
}

/// `http.stream_stall` as the data path applies it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stall {
    /// Events before the hold (used when `after` is `None`).
    pub after_events: u64,
    /// Hold at the first event end this long after the response began.
    pub after: Option<Duration>,
    pub hold: Duration,
    /// End the stream with an error after the hold.
    pub cut: bool,
}

/// `http.stream_truncate` as the data path applies it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Truncate {
    pub after_events: u64,
    /// SSE: send `data: [DONE]` before ending.
    pub done: bool,
}

/// The stream faults one response gets: the first of each kind that matched
/// and won its probability.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct StreamPlan {
    pub stall: Option<Stall>,
    /// Least time between two events.
    pub pace: Option<Duration>,
    pub truncate: Option<Truncate>,
}

impl StreamPlan {
    pub(crate) fn is_empty(&self) -> bool {
        self.stall.is_none() && self.pace.is_none() && self.truncate.is_none()
    }
}

/// What stream faults did, for [`crate::http::HttpStats`].
#[derive(Debug, Default)]
pub(crate) struct StreamCounters {
    pub streams: AtomicU64,
    pub stalled: AtomicU64,
    pub cut: AtomicU64,
    pub truncated: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Still streaming.
    No,
    /// Truncated: `[DONE]` goes next, then the end.
    Done,
    /// Truncated or finished: nothing more.
    Over,
}

/// Resolves once the proxy drains: the stream's faults are lifted then.
pub(crate) type Release = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A streamed upstream body (hyper's `Incoming`; any body of `Bytes` frames
/// in tests) with stream faults applied.
pub(crate) struct FaultedStream<B = Incoming> {
    inner: Option<B>,
    scanner: Scanner,
    plan: StreamPlan,
    counters: Arc<StreamCounters>,
    /// Events passed on whole.
    events: u64,
    started: Instant,
    /// The rest of a frame that was split at an event end.
    pending: Bytes,
    /// Nothing more goes out before this; then the stream is cut if `cut`.
    hold: Option<Instant>,
    cut: bool,
    timer: Option<Pin<Box<Sleep>>>,
    release: Option<Release>,
    ending: Ending,
}

impl<B> std::fmt::Debug for FaultedStream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultedStream")
            .field("plan", &self.plan)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl<B> FaultedStream<B> {
    pub(crate) fn new(
        inner: B,
        framing: Framing,
        plan: StreamPlan,
        counters: Arc<StreamCounters>,
        release: Release,
    ) -> Self {
        bump(&counters.streams);
        let mut s = Self {
            inner: Some(inner),
            scanner: Scanner::new(framing),
            plan,
            counters,
            events: 0,
            started: Instant::now(),
            pending: Bytes::new(),
            hold: None,
            cut: false,
            timer: None,
            release: Some(release),
            ending: Ending::No,
        };
        // Gates at event 0: before the first byte of the body.
        s.gate(false);
        s
    }

    /// Applies what happens once `events` events went out (`after_event`: one
    /// just did). Returns whether the stream must pause or end here.
    fn gate(&mut self, after_event: bool) -> bool {
        let now = Instant::now();
        let mut stop = false;
        if let Some(t) = self.plan.truncate
            && self.events >= t.after_events
        {
            self.plan = StreamPlan::default();
            self.inner = None;
            self.pending = Bytes::new();
            self.ending = if t.done && self.scanner.framing == Framing::Sse {
                Ending::Done
            } else {
                Ending::Over
            };
            bump(&self.counters.truncated);
            return true;
        }
        if let Some(s) = self.plan.stall {
            let due = match s.after {
                Some(after) => after_event && now.duration_since(self.started) >= after,
                None => self.events >= s.after_events,
            };
            if due {
                self.plan.stall = None;
                self.hold = Some(self.hold.map_or(now + s.hold, |h| h.max(now + s.hold)));
                self.cut |= s.cut;
                bump(&self.counters.stalled);
                stop = true;
            }
        }
        if let (Some(pace), true) = (self.plan.pace, after_event) {
            self.hold = Some(self.hold.map_or(now + pace, |h| h.max(now + pace)));
            stop = true;
        }
        stop
    }

    /// The proxy drains: whatever holds the stream lets go, and it passes on
    /// unchanged (a truncation already made stays made).
    fn lift(&mut self) {
        self.plan = StreamPlan::default();
        self.hold = None;
        self.cut = false;
    }
}

impl<B> Body for FaultedStream<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(release) = &mut this.release
            && release.as_mut().poll(cx).is_ready()
        {
            this.release = None;
            this.lift();
        }
        loop {
            if let Some(until) = this.hold {
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                if timer.deadline() != until {
                    timer.as_mut().reset(until);
                }
                ready!(timer.as_mut().poll(cx));
                this.hold = None;
                if std::mem::take(&mut this.cut) {
                    this.inner = None;
                    this.pending = Bytes::new();
                    this.ending = Ending::Over;
                    bump(&this.counters.cut);
                    return Poll::Ready(Some(Err(BodyError::Cut)));
                }
            }
            match this.ending {
                Ending::No => {}
                Ending::Done => {
                    this.ending = Ending::Over;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(DONE)))));
                }
                Ending::Over => return Poll::Ready(None),
            }
            let mut bytes = if this.pending.is_empty() {
                let Some(inner) = &mut this.inner else {
                    return Poll::Ready(None);
                };
                match ready!(Pin::new(inner).poll_frame(cx)) {
                    None => {
                        this.inner = None;
                        this.ending = Ending::Over;
                        return Poll::Ready(None);
                    }
                    Some(Err(e)) => return Poll::Ready(Some(Err(BodyError::Upstream(e)))),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(b) => b,
                        // Trailers pass as they are.
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    },
                }
            } else {
                std::mem::take(&mut this.pending)
            };
            if bytes.is_empty() {
                continue;
            }
            if this.plan.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            let mut offset = 0;
            while let Some(n) = this.scanner.next_end(&bytes[offset..]) {
                offset += n;
                this.events += 1;
                if this.gate(true) {
                    let rest = bytes.split_off(offset);
                    if this.ending == Ending::No {
                        this.pending = rest;
                    }
                    break;
                }
            }
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ending == Ending::Over && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// An upstream body of ready frames, each a slice of one shared buffer, as
    /// hyper's decoder hands them out.
    struct Frames(VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = hyper::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    const EVENT: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}]}\n\n";

    fn frames(n: usize) -> Frames {
        let one = EVENT;
        let mut buf = bytes::BytesMut::with_capacity(one.len() * 2 * n);
        let mut out = VecDeque::with_capacity(n);
        for _ in 0..n {
            // Two events a frame, so pacing splits every frame.
            buf.extend_from_slice(one);
            buf.extend_from_slice(one);
            out.push_back(buf.split().freeze());
        }
        Frames(out)
    }

    /// Polls `stream` to its end: the frames and bytes it gave.
    fn drain<B>(mut stream: FaultedStream<B>) -> (usize, usize)
    where
        B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
    {
        use http_body_util::BodyExt as _;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut frames, mut bytes) = (0, 0);
            while let Some(f) = stream.frame().await {
                frames += 1;
                bytes += f.unwrap().into_data().map_or(0, |b| b.len());
            }
            (frames, bytes)
        })
    }

    #[test]
    fn frames_are_split_only_where_a_fault_acts() {
        let counters = Arc::new(StreamCounters::default());
        let release = || -> Release { Box::pin(std::future::pending()) };
        let one = EVENT.len();
        // Scanned, stalled once, truncated late: 2000 frames.
        let plan = StreamPlan {
            stall: Some(Stall {
                after_events: 1,
                after: None,
                hold: Duration::from_millis(1),
                cut: false,
            }),
            pace: None,
            truncate: Some(Truncate {
                after_events: 3000,
                done: true,
            }),
        };
        let s = FaultedStream::new(
            frames(2000),
            Framing::Sse,
            plan,
            Arc::clone(&counters),
            release(),
        );
        // Split after event 1 (the stall) and event 3000 (the end, frame
        // 1500), plus the [DONE]: 1500 + 1 + 1 frames, the rest whole.
        assert_eq!(drain(s), (1502, 3000 * one + DONE.len()));
        // Paced: every frame split in two, each event waits.
        let plan = StreamPlan {
            pace: Some(Duration::from_micros(200)),
            ..StreamPlan::default()
        };
        let s = FaultedStream::new(
            frames(50),
            Framing::Sse,
            plan,
            Arc::clone(&counters),
            release(),
        );
        assert_eq!(drain(s), (100, 100 * one), "one frame an event");
        // Nothing to do: frames pass as they come.
        let plan = StreamPlan {
            truncate: Some(Truncate {
                after_events: 1_000,
                done: false,
            }),
            ..StreamPlan::default()
        };
        let s = FaultedStream::new(frames(50), Framing::Sse, plan, counters, release());
        assert_eq!(drain(s), (50, 100 * one));
    }

    fn ends(framing: Framing, chunks: &[&[u8]]) -> Vec<(usize, usize)> {
        let mut s = Scanner::new(framing);
        let mut out = Vec::new();
        for (c, chunk) in chunks.iter().enumerate() {
            let mut at = 0;
            while let Some(n) = s.next_end(&chunk[at..]) {
                at += n;
                out.push((c, at));
            }
        }
        out
    }

    #[test]
    fn sse_events_end_at_a_blank_line_across_frames() {
        assert_eq!(
            ends(Framing::Sse, &[b"data: a\n\ndata: b\n", b"\n", b"\r\n"]),
            vec![(0, 9), (1, 1)]
        );
        assert_eq!(
            ends(Framing::Sse, &[b"event: x\r\ndata: y\r\n\r\n"]),
            vec![(0, 21)]
        );
        // Leading blank lines are no event.
        assert_eq!(ends(Framing::Sse, &[b"\n\ndata: a\n\n"]), vec![(0, 11)]);
    }

    #[test]
    fn other_chunked_bodies_count_lines() {
        assert_eq!(
            ends(Framing::Lines, &[b"{\"a\":1}\n{\"b\"", b":2}\n\n"]),
            vec![(0, 8), (1, 4)]
        );
    }

    #[test]
    fn framing_needs_sse_or_chunked_without_length() {
        let mut h = HeaderMap::new();
        assert_eq!(Framing::of(&h), None);
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        assert_eq!(Framing::of(&h), Some(Framing::Lines));
        h.insert(
            header::CONTENT_TYPE,
            "Text/Event-Stream; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(Framing::of(&h), Some(Framing::Sse));
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "12".parse().unwrap());
        assert_eq!(Framing::of(&h), None);
        h.insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
        assert_eq!(
            Framing::of(&h),
            None,
            "an event stream with a length is whole"
        );
    }
}
