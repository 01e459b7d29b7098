//! A real OpenAI-style completion server on 127.0.0.1, port 0, whose stream the
//! query string shapes (shared with `benches/llm_ttft.rs`):
//!
//! `POST /v1/chat/completions?first_ms=200&pace_ms=20&tokens=8&stall_after=3&stall_ms=2000&usage=1&done=1&finish=1&sse=1&stream=1`
//!
//! - `first_ms`: delay before the first token; `pace_ms`: between tokens;
//!   `tokens`: how many (each one event with one word);
//! - `stall_after` / `stall_ms`: after that many tokens, hold the stream that long;
//! - `usage=N`: the last chunk reports `usage.completion_tokens: N` (0: no usage);
//! - `done=0`: end the body without `data: [DONE]` (a stream cut short);
//!   `finish=0`: no `finish_reason`; `cut_after=N`: end the body after N tokens;
//! - `sse=0`: answer `application/json` whatever was asked;
//! - `stream=0`: a non-streamed completion after `first_ms`.
//!
//! The server measures its own delay from a request's arrival to the moment its
//! first token is handed to hyper to write ([`SseState::first_delays_us`]), so a benchmark can take the
//! server's timer out of the probe's error.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[derive(Debug, Default)]
pub struct SseState {
    pub requests: AtomicU64,
    /// Arrival to the write of the first token, per streamed request, in µs.
    pub first_delays_us: Mutex<Vec<u64>>,
}

#[derive(Debug)]
pub struct SseServer {
    pub addr: SocketAddr,
    pub state: Arc<SseState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SseServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SseServer {
    /// Binds and accepts on the current runtime; it is ready when this returns.
    pub async fn start() -> SseServer {
        let state = Arc::new(SseState::default());
        let (addr, task) = serve(Arc::clone(&state), |_| {}, handle).await;
        SseServer { addr, state, task }
    }

    pub fn url(&self, query: &str) -> String {
        format!("http://{}/v1/chat/completions?{query}", self.addr)
    }
}

/// Binds 127.0.0.1:0 and serves every connection (HTTP/1.1 keep-alive, no Nagle)
/// with `handle(state, request)` on the current runtime until the task is
/// aborted; `accepted` is told of each connection. Ready when it returns.
pub async fn serve<St, H, Fut, B>(
    state: Arc<St>,
    accepted: fn(&St),
    handle: H,
) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    St: Send + Sync + 'static,
    H: Fn(Arc<St>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted(&state);
            let _ = stream.set_nodelay(true);
            let st = Arc::clone(&state);
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(Arc::clone(&st), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    first: Duration,
    pace: Duration,
    tokens: u64,
    stall_after: Option<u64>,
    stall: Duration,
    usage: u64,
    done: bool,
    finish: bool,
    sse: bool,
    stream: bool,
    cut_after: Option<u64>,
}

fn shape(query: &str) -> Shape {
    let mut s = Shape {
        first: Duration::ZERO,
        pace: Duration::from_millis(10),
        tokens: 5,
        stall_after: None,
        stall: Duration::ZERO,
        usage: 0,
        done: true,
        finish: true,
        sse: true,
        stream: true,
        cut_after: None,
    };
    for pair in query.split('&') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let n: u64 = v.parse().unwrap_or(0);
        let ms = Duration::from_millis(n);
        match k {
            "first_ms" => s.first = ms,
            "pace_ms" => s.pace = ms,
            "tokens" => s.tokens = n,
            "stall_after" => s.stall_after = Some(n),
            "stall_ms" => s.stall = ms,
            "usage" => s.usage = n,
            "done" => s.done = n != 0,
            "finish" => s.finish = n != 0,
            "sse" => s.sse = n != 0,
            "stream" => s.stream = n != 0,
            "cut_after" => s.cut_after = Some(n),
            _ => {}
        }
    }
    s
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(st: Arc<SseState>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let arrived = Instant::now();
    st.requests.fetch_add(1, Ordering::Relaxed);
    let s = shape(req.uri().query().unwrap_or_default());
    // Read the request body before answering, as a real server does.
    let _ = req.into_body().collect().await;
    if !s.stream || !s.sse {
        tokio::time::sleep(s.first).await;
        let body = format!(
            r#"{{"id":"x","object":"chat.completion","choices":[{{"index":0,"message":{{"role":"assistant","content":"hello world"}},"finish_reason":"stop"}}]{}}}"#,
            if s.usage > 0 {
                format!(r#","usage":{{"completion_tokens":{}}}"#, s.usage)
            } else {
                String::new()
            }
        );
        let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
        resp.headers_mut()
            .insert("content-type", "application/json".parse().expect("header"));
        return Ok(resp);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(stream(s, arrived, tx));
    let body = ChannelBody {
        rx,
        arrived,
        frames: 0,
        state: st,
    }
    .boxed();
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert("content-type", "text/event-stream".parse().expect("header"));
    Ok(resp)
}

async fn stream(s: Shape, arrived: Instant, tx: mpsc::Sender<Bytes>) {
    let chunk = |content: &str| {
        Bytes::from(format!(
            "data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":null}}]}}\n\n"
        ))
    };
    // A role-only first chunk, as OpenAI sends: not a token.
    let role = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
    if tx.send(Bytes::from_static(role.as_bytes())).await.is_err() {
        return;
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(arrived) + s.first).await;
    for i in 0..s.tokens {
        if i > 0 {
            tokio::time::sleep(s.pace).await;
        }
        if s.stall_after == Some(i) {
            tokio::time::sleep(s.stall).await;
        }
        if s.cut_after == Some(i) {
            return;
        }
        if tx.send(chunk(&format!(" w{i}"))).await.is_err() {
            return;
        }
    }
    if s.finish {
        let end = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
        let _ = tx.send(Bytes::from_static(end.as_bytes())).await;
    }
    if s.usage > 0 {
        let u = format!(
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":{}}}}}\n\n",
            s.usage
        );
        let _ = tx.send(Bytes::from(u)).await;
    }
    if s.done {
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    }
}

/// The receiving half of a channel as a body of data frames. The moment it hands
/// its second frame (the first token, after the role chunk) to hyper to write is
/// the server's first-token delay.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    arrived: Instant,
    frames: u64,
    state: Arc<SseState>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let polled = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(_)) = &polled {
            self.frames += 1;
            if self.frames == 2 {
                let us = u64::try_from(self.arrived.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.state.first_delays_us.lock().expect("lock").push(us);
            }
        }
        polled.map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}
