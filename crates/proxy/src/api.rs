//! The Toxiproxy 2.x compatible HTTP API: same paths, JSON shapes, status codes
//! and error bodies (`{"error": "...", "status": N}`), so existing Toxiproxy
//! clients in any language drive faultline unchanged.
//!
//! Bodies are read as raw bytes and parsed here rather than through axum's
//! `Json` extractor, because Toxiproxy clients do not always send a
//! `Content-Type`, and because errors must read exactly as Toxiproxy's.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use crate::error::ProxyError;
use crate::server::{ProxyConfig, ProxyInfo, ProxyServer, ProxyUpdate};
use crate::toxic::Toxic;

/// The Toxiproxy version this API imitates, reported by `/version`.
pub const TOXIPROXY_COMPAT_VERSION: &str = "2.12.0";

/// The router of the Toxiproxy-compatible API over `server`.
pub fn router(server: ProxyServer) -> Router {
    Router::new()
        .route("/reset", post(reset))
        .route("/proxies", get(proxy_index).post(proxy_create))
        .route("/populate", post(populate))
        .route(
            "/proxies/{proxy}",
            get(proxy_show)
                .post(proxy_update)
                .patch(proxy_update)
                .delete(proxy_delete),
        )
        .route(
            "/proxies/{proxy}/toxics",
            get(toxic_index).post(toxic_create),
        )
        .route(
            "/proxies/{proxy}/toxics/{toxic}",
            get(toxic_show)
                .post(toxic_update)
                .patch(toxic_update)
                .delete(toxic_delete),
        )
        .route("/version", get(version))
        .layer(middleware::from_fn(stop_browsers))
        .with_state(server)
}

/// Toxiproxy refuses browsers, so a web page cannot drive it cross-site.
async fn stop_browsers(req: Request, next: Next) -> Response {
    let browser = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("Mozilla/"));
    if browser {
        return (StatusCode::FORBIDDEN, "User agent not allowed\n").into_response();
    }
    next.run(req).await
}

/// An API error rendered as Toxiproxy renders it.
#[derive(Debug)]
pub struct ApiError(pub ProxyError);

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> Self {
        Self(e)
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
    status: u16,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if status >= 500 {
            tracing::warn!(error = %self.0, "toxiproxy api error");
        }
        json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &ErrorBody {
                error: self.0.to_string(),
                status,
            },
        )
    }
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut r = (status, body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

type ApiResult = Result<Response, ApiError>;

fn bad_body(e: &serde_json::Error) -> ApiError {
    ApiError(ProxyError::BadRequestBody(e.to_string()))
}

async fn reset(State(s): State<ProxyServer>) -> ApiResult {
    s.reset()?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn proxy_index(State(s): State<ProxyServer>) -> ApiResult {
    let map: std::collections::BTreeMap<String, ProxyInfo> = s
        .list()
        .into_iter()
        .map(|p| (p.name().to_owned(), p.info()))
        .collect();
    Ok(json_response(StatusCode::OK, &map))
}

async fn proxy_create(State(s): State<ProxyServer>, body: Bytes) -> ApiResult {
    let config: ProxyConfig = serde_json::from_slice(&body).map_err(|e| bad_body(&e))?;
    let proxy = s.create(config)?;
    Ok(json_response(StatusCode::CREATED, &proxy.info()))
}

async fn populate(State(s): State<ProxyServer>, body: Bytes) -> ApiResult {
    #[derive(Serialize)]
    struct Populated {
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        proxies: Vec<ProxyInfo>,
    }
    let configs: Vec<ProxyConfig> = serde_json::from_slice(&body).map_err(|e| bad_body(&e))?;
    let (err, proxies) = match s.populate(configs) {
        Ok(p) => (None, p),
        Err((e, p)) => (Some(e), p),
    };
    let status = err.as_ref().map_or(201, ProxyError::status);
    let body = Populated {
        error: err.as_ref().map(ToString::to_string),
        status: err.as_ref().map(ProxyError::status),
        proxies: proxies.iter().map(crate::server::Proxy::info).collect(),
    };
    Ok(json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    ))
}

async fn proxy_show(State(s): State<ProxyServer>, Path(name): Path<String>) -> ApiResult {
    Ok(json_response(StatusCode::OK, &s.get(&name)?.info()))
}

async fn proxy_update(
    State(s): State<ProxyServer>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let proxy = s.get(&name)?;
    let update: ProxyUpdate = serde_json::from_slice(&body).map_err(|e| bad_body(&e))?;
    proxy.update(update)?;
    Ok(json_response(StatusCode::OK, &proxy.info()))
}

async fn proxy_delete(State(s): State<ProxyServer>, Path(name): Path<String>) -> ApiResult {
    s.remove(&name)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn toxic_index(State(s): State<ProxyServer>, Path(name): Path<String>) -> ApiResult {
    Ok(json_response(StatusCode::OK, &s.get(&name)?.toxics()))
}

async fn toxic_create(
    State(s): State<ProxyServer>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let proxy = s.get(&name)?;
    let toxic = Toxic::from_create_json(&body)?;
    let toxic = proxy.add_toxic(toxic)?;
    Ok(json_response(StatusCode::OK, &toxic))
}

async fn toxic_show(
    State(s): State<ProxyServer>,
    Path((name, toxic)): Path<(String, String)>,
) -> ApiResult {
    Ok(json_response(StatusCode::OK, &s.get(&name)?.toxic(&toxic)?))
}

async fn toxic_update(
    State(s): State<ProxyServer>,
    Path((name, toxic)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let proxy = s.get(&name)?;
    let updated = proxy.update_toxic(&toxic, |t| t.updated_from_json(&body))?;
    Ok(json_response(StatusCode::OK, &updated))
}

async fn toxic_delete(
    State(s): State<ProxyServer>,
    Path((name, toxic)): Path<(String, String)>,
) -> ApiResult {
    s.get(&name)?.remove_toxic(&toxic)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn version() -> Response {
    let mut r = format!("{{\"version\": \"{TOXIPROXY_COMPAT_VERSION}\"}}\n").into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=utf-8"),
    );
    r
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: ProxyServer,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(server))
        .with_graceful_shutdown(shutdown)
        .await
}
