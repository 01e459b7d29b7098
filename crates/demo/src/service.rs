//! The completion service: `POST /v1/complete`, the OpenAI-style endpoints of
//! `chat.rs` and `GET /healthz`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::Counters;
use crate::db::Db;
use crate::inference;

#[derive(Debug)]
struct Service {
    db: Db,
    base_latency: Duration,
    counters: Arc<Counters>,
}

#[derive(Debug, Deserialize)]
struct CompleteRequest {
    prompt: String,
}

#[derive(Debug, Serialize)]
struct CompleteResponse {
    id: i64,
    completion: String,
    tokens: u32,
}

pub(crate) fn router(
    db: Db,
    base_latency: Duration,
    token_interval: Duration,
    counters: Arc<Counters>,
) -> Router {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/complete", post(complete))
        .with_state(Arc::new(Service {
            db,
            base_latency,
            counters,
        }));
    crate::chat::routes(
        router,
        crate::chat::Chat {
            base_latency,
            token_interval,
        },
    )
}

pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// A JSON error body: `{"error": "..."}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// The body is read as JSON whatever its `Content-Type` says, or if it has none:
/// probes and `curl -d` often send none, and a demo should not answer them 415.
async fn complete(State(service): State<Arc<Service>>, body: Bytes) -> Response {
    let request: CompleteRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"prompt\": \"...\"}}: {err}"),
            );
        }
    };
    let id = match service.db.insert(request.prompt).await {
        Ok(id) => id,
        Err(err) => return err.into_response(),
    };
    Counters::bump(&service.counters.jobs_written);
    let inference = inference::infer(service.base_latency);
    if !inference.latency.is_zero() {
        tokio::time::sleep(inference.latency).await;
    }
    if let Err(err) = service.db.finish(id).await {
        return err.into_response();
    }
    Counters::bump(&service.counters.jobs_done);
    Json(CompleteResponse {
        id,
        completion: inference.completion,
        tokens: inference.tokens,
    })
    .into_response()
}
