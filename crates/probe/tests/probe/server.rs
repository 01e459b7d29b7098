//! A real HTTP server on 127.0.0.1, port 0 (the accept loop is `sse::serve`), whose answers the path controls:
//! `/ok`, `/status/{code}`, `/sleep/{ms}`, `/close` (and close the connection), `/gate` (waits while the gate is closed,
//! to stall every request at once), `/api/v1/query` (a Prometheus-shaped answer).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::sync::{Mutex, RwLock};

#[derive(Debug, Default)]
pub struct State {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    /// Held for writing to stall `/gate`.
    pub gate: RwLock<()>,
    /// The last query string seen on `/api/v1/query`.
    pub last_query: Mutex<String>,
}

#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start() -> Server {
        let state = Arc::new(State::default());
        let (addr, task) = crate::sse::serve(
            Arc::clone(&state),
            |st| {
                st.connections.fetch_add(1, Ordering::Relaxed);
            },
            handle,
        )
        .await;
        Server { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }
}

async fn handle(
    st: Arc<State>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    st.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    let mut status = StatusCode::OK;
    let mut body = Bytes::from_static(b"ok");
    if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
    } else if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    } else if path == "/close" {
        let mut resp = Response::new(Full::new(body));
        resp.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        return Ok(resp);
    } else if path == "/gate" {
        drop(st.gate.read().await);
    } else if path == "/api/v1/query" {
        *st.last_query.lock().await = req.uri().query().unwrap_or_default().to_owned();
        body = Bytes::from_static(
            br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"0.25"]}]}}"#,
        );
    }
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    Ok(resp)
}
