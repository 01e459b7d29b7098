//! The routes agents call: `POST /v1/agents/register` (the join token, and only
//! it) and `POST /v1/agents/{id}/heartbeat` (that agent's own token). Neither
//! takes an API token, and neither token works anywhere else: the API's
//! authentication lets exactly these two paths through to be checked here, and
//! refuses a join token on every other route.
//!
//! The bodies mirror `faultline_agent::register`'s protocol types (the agent
//! crate knows nothing of OpenAPI); a test below keeps the two in step.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use faultline_agent::register::{HeartbeatRequest, HostFacts, RegisterRequest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{ApiError, AppState, ErrorBody};
use crate::fleet::{FleetError, Registry};

/// The paths [`super::api`]'s authentication leaves to these handlers.
pub(crate) fn agent_route(method: &Method, path: &str) -> bool {
    if method != Method::POST {
        return false;
    }
    if path == "/v1/agents/register" {
        return true;
    }
    path.strip_prefix("/v1/agents/")
        .and_then(|rest| rest.strip_suffix("/heartbeat"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        let reason = e.to_string();
        match e {
            FleetError::Unauthorized(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", reason)
            }
            FleetError::Disabled => {
                ApiError::new(StatusCode::FORBIDDEN, "registration_disabled", reason)
            }
            FleetError::Invalid(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", reason),
            FleetError::Store(s) => s.into(),
            FleetError::Token(_) => {
                tracing::error!(error = %reason, "fleet token failure");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", reason)
            }
        }
    }
}

fn registry(s: &AppState) -> Result<&std::sync::Arc<Registry>, ApiError> {
    s.manager
        .connector()
        .registry()
        .ok_or_else(|| FleetError::Disabled.into())
}

fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid JSON body: {e}"),
        )
    })
}

/// A registration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// Unique in the fleet: 1 to 128 of `A-Z a-z 0-9 . _ -`.
    #[schema(example = "gpu-7")]
    pub id: String,
    /// Where the controller reaches the agent.
    #[schema(example = "http://10.0.0.7:7600")]
    pub url: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The fault kinds the agent can inject on its host.
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[schema(example = "0.1.0")]
    pub version: String,
    #[serde(default)]
    pub host: HostBody,
}

/// Facts about the agent's host.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostBody {
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub kernel: String,
    #[serde(default)]
    pub cpus: u32,
}

/// The answer to a registration: both tokens, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisteredBody {
    pub id: String,
    /// 256 random bits, hex; the agent's heartbeats carry it. Only its SHA-256
    /// is stored.
    pub agent_token: String,
    /// HMAC-SHA256(fleet secret, `faultline/agent-api/v1:<id>:<generation>`),
    /// hex: what the controller presents to the agent's API.
    pub api_token: String,
    /// 1 at the first registration, one more at each re-registration.
    pub generation: i64,
    /// The heartbeat interval; silent for 3 of them is `lost`.
    pub heartbeat_ms: u64,
}

/// A heartbeat.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    /// Faults the agent holds now.
    #[serde(default)]
    pub active_faults: u64,
}

/// The answer to a heartbeat.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatAnswer {
    /// When to send the next one.
    pub heartbeat_ms: u64,
}

/// An agent registers itself, or registers again (a new generation: both its
/// tokens rotate). Needs the join token (`Authorization: Bearer <join token>`);
/// API tokens are refused here. 403 when the controller has no join token.
#[utoipa::path(post, path = "/v1/agents/register", tag = "agents", request_body = RegisterBody,
    security(("join_token" = [])),
    responses(
        (status = 200, body = RegisteredBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "registration_disabled", body = ErrorBody),
    ))]
pub(crate) async fn register_agent(
    State(s): State<AppState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let registry = registry(&s)?;
    let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    // The token before the body: a caller without one learns nothing of the format.
    registry.check_join(given)?;
    let b: RegisterBody = body(&bytes)?;
    let req = RegisterRequest {
        id: b.id,
        url: b.url,
        labels: b.labels,
        capabilities: b.capabilities,
        version: b.version,
        host: HostFacts {
            hostname: b.host.hostname,
            os: b.host.os,
            kernel: b.host.kernel,
            cpus: b.host.cpus,
        },
    };
    let r = registry.register(given, req).await?;
    Ok(Json(RegisteredBody {
        id: r.id,
        agent_token: r.agent_token,
        api_token: r.api_token,
        generation: r.generation,
        heartbeat_ms: r.heartbeat_ms,
    })
    .into_response())
}

/// A registered agent's heartbeat, with its own agent token. 401 for an
/// unknown id or another token: the agent then registers again.
#[utoipa::path(post, path = "/v1/agents/{id}/heartbeat", tag = "agents", request_body = HeartbeatBody,
    params(("id" = String, Path, description = "the agent's id")),
    security(("agent_token" = [])),
    responses(
        (status = 200, body = HeartbeatAnswer),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    ))]
pub(crate) async fn agent_heartbeat(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let registry = registry(&s)?;
    let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let b: HeartbeatBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        HeartbeatBody::default()
    } else {
        body(&bytes)?
    };
    let answer = registry
        .heartbeat_of(
            &id,
            given,
            HeartbeatRequest {
                active_faults: b.active_faults,
            },
        )
        .await?;
    Ok(Json(HeartbeatAnswer {
        heartbeat_ms: answer.heartbeat_ms,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_two_agent_routes_skip_api_tokens() {
        assert!(agent_route(&Method::POST, "/v1/agents/register"));
        assert!(agent_route(&Method::POST, "/v1/agents/gpu-1/heartbeat"));
        assert!(!agent_route(&Method::GET, "/v1/agents/register"));
        assert!(!agent_route(&Method::GET, "/v1/agents"));
        assert!(!agent_route(&Method::POST, "/v1/agents"));
        assert!(!agent_route(&Method::POST, "/v1/agents//heartbeat"));
        assert!(!agent_route(&Method::POST, "/v1/agents/a/b/heartbeat"));
        assert!(!agent_route(&Method::POST, "/v1/halt"));
    }

    #[test]
    fn the_documented_bodies_are_the_protocol() {
        // What the agent sends parses as the documented body, and back.
        let req = RegisterRequest {
            id: "w1".into(),
            url: "http://10.0.0.1:7600".into(),
            labels: [("role".to_owned(), "gpu".to_owned())].into(),
            capabilities: vec!["network.loss".into()],
            version: "0.1.0".into(),
            host: HostFacts {
                hostname: "h".into(),
                os: "linux".into(),
                kernel: "6.1".into(),
                cpus: 4,
            },
        };
        let b: RegisterBody = serde_json::from_value(serde_json::to_value(&req).unwrap()).unwrap();
        assert_eq!((b.id.as_str(), b.host.cpus), ("w1", 4));
        let hb: HeartbeatBody = serde_json::from_value(
            serde_json::to_value(HeartbeatRequest { active_faults: 2 }).unwrap(),
        )
        .unwrap();
        assert_eq!(hb.active_faults, 2);
        let answer = serde_json::to_value(RegisteredBody {
            id: "w1".into(),
            agent_token: "a".into(),
            api_token: "b".into(),
            generation: 1,
            heartbeat_ms: 5000,
        })
        .unwrap();
        let back: faultline_agent::register::RegisterResponse =
            serde_json::from_value(answer).unwrap();
        assert_eq!(back.generation, 1);
    }
}
