//! The gateway: a concurrency limit in front of a keep-alive client pool to the
//! service. 429 past the limit, 504 past the upstream timeout, 502 when the
//! upstream connection fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::{any, get};
use http_body_util::{BodyExt, Full, LengthLimitError};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::Counters;
use crate::service::{error, healthz};

/// Upstream connections idle this long are closed, so new ones are made often.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest request body the gateway forwards.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct Gateway {
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: String,
    limit: Arc<Semaphore>,
    timeout: Duration,
    recycle_every: u32,
    forwarded: AtomicU64,
    counters: Arc<Counters>,
}

impl Gateway {
    pub(crate) fn new(
        upstream: SocketAddr,
        limit: Arc<Semaphore>,
        timeout: Duration,
        recycle_every: u32,
        counters: Arc<Counters>,
    ) -> Gateway {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Gateway {
            client,
            upstream: upstream.to_string(),
            limit,
            timeout,
            recycle_every,
            forwarded: AtomicU64::new(0),
            counters,
        }
    }
}

pub(crate) fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/{*rest}", any(forward))
        .with_state(Arc::new(gateway))
}

async fn forward(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let counters = &gateway.counters;
    Counters::bump(&counters.requests);
    let response = match Arc::clone(&gateway.limit).try_acquire_owned() {
        Ok(permit) => exchange(&gateway, request, permit).await,
        Err(_) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests in flight; retry later",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    };
    let status = response.status();
    if status.is_success() {
        Counters::bump(&counters.ok);
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        Counters::bump(&counters.rate_limited);
    } else if status.is_server_error() {
        Counters::bump(&counters.server_errors);
    }
    response
}

/// One request to the service and its whole answer, within the upstream timeout;
/// an event stream is passed on as it comes, holding `permit` until it ends.
async fn exchange(gateway: &Gateway, request: Request, permit: OwnedSemaphorePermit) -> Response {
    let (parts, body) = request.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) if err.is::<LengthLimitError>() => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        Err(_) => return error(StatusCode::BAD_REQUEST, "request body could not be read"),
    };
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let Ok(uri) = format!("http://{}{path}", gateway.upstream).parse::<Uri>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "request target cannot be forwarded",
        );
    };
    let mut upstream = hyper::Request::new(Full::new(body));
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = end_to_end(parts.headers);
    if gateway.recycle_every > 0 {
        let n = gateway.forwarded.fetch_add(1, Ordering::Relaxed);
        if n % u64::from(gateway.recycle_every) == u64::from(gateway.recycle_every) - 1 {
            upstream
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }

    let answer = async {
        let response = gateway.client.request(upstream).await?;
        let (parts, body) = response.into_parts();
        if is_event_stream(&parts.headers) {
            return Ok((parts, Answer::Stream(body)));
        }
        let body = body.collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts, Answer::Whole(body)))
    };
    match tokio::time::timeout(gateway.timeout, answer).await {
        Ok(Ok((parts, body))) => {
            let body = match body {
                Answer::Whole(bytes) => {
                    drop(permit);
                    Body::from(bytes)
                }
                Answer::Stream(incoming) => Body::new(Held {
                    body: incoming,
                    _permit: permit,
                }),
            };
            let mut response = Response::new(body);
            *response.status_mut() = parts.status;
            *response.headers_mut() = end_to_end(parts.headers);
            response
        }
        Ok(Err(err)) => {
            tracing::debug!(%err, "demo gateway: upstream failed");
            error(StatusCode::BAD_GATEWAY, "upstream connection failed")
        }
        Err(_) => error(StatusCode::GATEWAY_TIMEOUT, "upstream timed out"),
    }
}

/// An upstream answer: read whole, or a stream to pass on as it comes.
enum Answer {
    Whole(Bytes),
    Stream(hyper::body::Incoming),
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// A streamed upstream body that keeps its place under the concurrency limit
/// until it ends or the client goes away.
struct Held {
    body: hyper::body::Incoming,
    _permit: OwnedSemaphorePermit,
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }
}

/// The headers a proxy passes on: hop-by-hop ones (RFC 9110 7.6.1, and any the
/// `Connection` header names) dropped, `Host` and `Content-Length` left to the
/// client and server that set them for the next hop.
fn end_to_end(mut headers: HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::HOST,
        header::CONTENT_LENGTH,
    ] {
        headers.remove(name);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Server;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A gateway in front of `upstream`; the status of one POST through it.
    async fn through_gateway(upstream: SocketAddr) -> (StatusCode, Duration) {
        let counters = Arc::new(Counters::default());
        let gateway = Gateway::new(
            upstream,
            Arc::new(Semaphore::new(4)),
            Duration::from_secs(10),
            0,
            Arc::clone(&counters),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = Server::start(listener, router(gateway), None);
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let request = hyper::Request::post(format!("http://{addr}/v1/complete"))
            .body(Full::new(Bytes::from_static(br#"{"prompt":"x"}"#)))
            .expect("request");
        let started = std::time::Instant::now();
        let response = client.request(request).await.expect("an answer");
        let elapsed = started.elapsed();
        server.stop(Duration::from_secs(5)).await;
        assert_eq!(counters.server_errors.load(Ordering::Relaxed), 1);
        (response.status(), elapsed)
    }

    #[tokio::test]
    async fn a_refused_upstream_connection_is_a_502() {
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = closed.local_addr().expect("addr");
        drop(closed);
        let (status, _) = through_gateway(upstream).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn an_upstream_that_hangs_up_mid_exchange_is_a_502_not_a_timeout() {
        // Accepts, reads the request, closes without answering (a reset fault's
        // view from the gateway).
        let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = upstream.local_addr().expect("addr");
        let hang_up = tokio::spawn(async move {
            let (mut conn, _) = upstream.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
        });
        let (status, elapsed) = through_gateway(addr).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
        hang_up.await.expect("upstream task");
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:18080"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        let kept = end_to_end(headers);
        let mut names: Vec<&str> = kept.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-request-id"]);
    }
}
