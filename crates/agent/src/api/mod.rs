//! The agent's HTTP API (docs/agent-api.md): health, faults, halt, metrics, all
//! behind the bearer token.

pub mod error;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use faultline_spec::units::Duration;
use serde::Deserialize;

pub use error::ApiError;

use crate::auth::Token;
use crate::manager::{FaultRequest, Manager};

#[derive(Debug, Clone)]
struct AppState {
    manager: Arc<Manager>,
    token: Token,
}

/// The router, with authentication on every route.
pub fn router(manager: Arc<Manager>, token: Token) -> Router {
    let state = AppState { manager, token };
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/faults", get(list))
        .route(
            "/v1/faults/{id}",
            get(get_fault).put(put_fault).delete(delete_fault),
        )
        .route("/v1/faults/{id}/renew", post(renew))
        .route("/v1/halt", post(halt))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see docs/agent-api.md",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if state.token.allows(given) {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

async fn health(State(s): State<AppState>) -> Response {
    Json(s.manager.health().await).into_response()
}

async fn list(State(s): State<AppState>) -> Response {
    Json(s.manager.list().await).into_response()
}

/// One active fault with what it looks like from outside now (`observation`,
/// with the kind's figures: for db.lock the sessions it blocks).
async fn get_fault(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some((view, observation)) = s.manager.status(&id).await else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no active fault {id:?}"),
        ));
    };
    let mut body = serde_json::to_value(view)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    if let Some(obj) = body.as_object_mut() {
        obj.insert(
            "observation".into(),
            serde_json::to_value(observation).map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?,
        );
    }
    Ok(Json(body).into_response())
}

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid JSON body: {e}"),
        )
    })
}

async fn put_fault(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: FaultRequest = json_body(&body)?;
    let (view, created) = s.manager.put(&id, &req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    lease: Option<Duration>,
}

async fn renew(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let lease = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        json_body::<RenewBody>(&body)?.lease
    };
    Ok(Json(s.manager.renew(&id, lease).await?).into_response())
}

async fn delete_fault(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let reverted = s.manager.delete(&id).await?;
    Ok(Json(serde_json::json!({ "id": id, "reverted": reverted })).into_response())
}

async fn halt(State(s): State<AppState>) -> Response {
    let report = s.manager.halt().await;
    let status = if report.failed.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (status, Json(report)).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.manager.metrics.encode(),
    )
        .into_response()
}
