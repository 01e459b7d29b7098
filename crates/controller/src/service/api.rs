//! The HTTP API (docs/http-api.md): routes, their OpenAPI descriptions, the
//! bodies they take and answer, and the one error type. Every route but health,
//! the OpenAPI document and the docs page needs a bearer token; each handler
//! names the role it needs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use faultline_spec::Report;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Principal, Role, Tokens};
use super::manager::{Live, Manager, ManagerError, Prepared, Submit};
use super::policy;
use crate::schedule::{Blackout, MissedRunPolicy, OverlapPolicy, ScheduleSpec};
use crate::store::{self, AuditQuery, MAX_LIMIT, RunQuery, RunStatus, ScheduleDef, StoreError};

/// The longest list one call answers.
const PAGE_MAX: u32 = 1000;
/// An Idempotency-Key longer than this is refused.
const KEY_MAX: usize = 255;

#[derive(Clone)]
pub(crate) struct AppState {
    pub manager: Arc<Manager>,
    pub tokens: Arc<Tokens>,
    pub schedules_changed: Option<Arc<Notify>>,
    pub openapi: Arc<String>,
    pub docs: Arc<String>,
    pub stop: tokio::sync::watch::Receiver<bool>,
}

// === errors ===

/// The one error type: a status and `{"error", "reason"}` (and, for experiments
/// that do not validate or are not allowed, the located `diagnostics`).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub reason: String,
    pub diagnostics: Option<Vec<faultline_spec::Diagnostic>>,
}

/// An error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable code: `bad_request`, `unauthorized`,
    /// `forbidden`, `not_found`, `conflict`, `agent_busy`, `invalid_experiment`,
    /// `not_allowed`, `invalid_schedule`, `unknown_experiment`, `internal`, ...
    #[schema(example = "forbidden")]
    pub error: String,
    /// What went wrong and what to do, for people.
    pub reason: String,
    /// For `invalid_experiment` and `not_allowed`: every problem, located.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<Vec<DiagnosticBody>>,
}

/// One located problem, as `faultline validate --output json` prints it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiagnosticBody {
    #[schema(example = "error")]
    pub severity: String,
    pub file: String,
    pub line: usize,
    pub column: usize,
    #[schema(example = "method[0].fault")]
    pub path: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            reason: reason.into(),
            diagnostics: None,
        }
    }
    fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }
    fn not_found(kind: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{kind} `{id}` not found"),
        )
    }
    fn located(status: StatusCode, error: &'static str, report: Report) -> Self {
        let n = report.error_count();
        let first = report
            .diagnostics
            .iter()
            .find(|d| d.severity == faultline_spec::Severity::Error)
            .map(|d| format!(": {}:{}:{}: {}", d.file, d.line, d.column, d.message))
            .unwrap_or_default();
        ApiError {
            status,
            error,
            reason: format!("{n} error(s){first}"),
            diagnostics: Some(report.diagnostics),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let reason = e.to_string();
        match e {
            StoreError::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "not_found", reason),
            StoreError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", reason),
            StoreError::Invalid { .. } => Self::new(StatusCode::BAD_REQUEST, "bad_request", reason),
            _ => {
                tracing::error!(error = %reason, "store failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store",
                    format!("the run store failed: {reason}"),
                )
            }
        }
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        let reason = e.to_string();
        match e {
            ManagerError::Invalid(r) => {
                Self::located(StatusCode::UNPROCESSABLE_ENTITY, "invalid_experiment", r)
            }
            ManagerError::NotAllowed(r) => {
                Self::located(StatusCode::UNPROCESSABLE_ENTITY, "not_allowed", r)
            }
            ManagerError::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "not_found", reason),
            ManagerError::UnknownExperiment(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_experiment",
                reason,
            ),
            ManagerError::Busy { .. } => Self::new(StatusCode::CONFLICT, "agent_busy", reason),
            ManagerError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", reason),
            ManagerError::ShuttingDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", reason)
            }
            ManagerError::Store(s) => s.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error, "reason": self.reason });
        if let (Some(d), Some(obj)) = (self.diagnostics, body.as_object_mut()) {
            obj.insert("diagnostics".to_owned(), json!(d));
        }
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn require(p: &Principal, role: Role) -> ApiResult<()> {
    if p.may(role) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token `{}` has the {} role; this needs {}",
                p.name, p.role, role
            ),
        ))
    }
}

/// A JSON body of `T`; 400 for anything else. NUL characters are refused:
/// PostgreSQL cannot store them, and no field has a use for them.
fn json_body<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if has_nul(&value) {
        return Err(ApiError::bad_request(
            "strings in the body must not contain NUL characters",
        ));
    }
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Query parameters of `T`; 400 (as JSON) for anything else.
fn query<T: DeserializeOwned>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
}

/// Ids are `prefix_` and base32; anything else names nothing (and never reaches
/// the store).
fn plausible_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

fn limit(l: Option<u32>, default: u32) -> ApiResult<u32> {
    match l.unwrap_or(default) {
        0 => Err(ApiError::bad_request("limit must be at least 1")),
        n if n > PAGE_MAX => Err(ApiError::bad_request(format!(
            "limit must be at most {PAGE_MAX}"
        ))),
        n => Ok(n),
    }
}

// === views ===

/// A stored experiment.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentView {
    #[schema(example = "exp_0123456789abcdef")]
    pub id: String,
    pub name: String,
    pub yaml: String,
    pub created_at: DateTime<Utc>,
    /// The token that stored it.
    pub created_by: String,
}

impl From<store::Experiment> for ExperimentView {
    fn from(e: store::Experiment) -> Self {
        ExperimentView {
            id: e.id,
            name: e.name,
            yaml: e.yaml,
            created_at: e.created_at,
            created_by: e.created_by,
        }
    }
}

/// A run. Lists leave out `yaml` and `journal`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    #[schema(example = "run_0123456789abcdef")]
    pub id: String,
    pub experiment_id: Option<String>,
    pub experiment_name: String,
    pub status: RunStatus,
    /// The `faultline run` exit code of the final status (0 passed, 1 failed,
    /// 2 invalid, 3 aborted, 4 revert unconfirmed).
    pub exit_code: Option<i32>,
    /// Status, reason and every verdict; `{}` until the run ends.
    pub summary: Value,
    /// The run's journal (phases, verdicts, faults, probe timelines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yaml: Option<String>,
    /// Why the run ended as it did when the controller decided it (a restart).
    pub reason: Option<String>,
    pub requested_by: String,
    pub idempotency_key: Option<String>,
    pub schedule_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl RunView {
    fn full(r: store::Run) -> Self {
        let mut v = Self::brief(r.clone());
        v.journal = r.journal;
        v.yaml = Some(r.yaml);
        v
    }
    fn brief(r: store::Run) -> Self {
        RunView {
            id: r.id,
            experiment_id: r.experiment_id,
            experiment_name: r.experiment_name,
            status: r.status,
            exit_code: r.exit_code,
            summary: r.summary,
            journal: None,
            yaml: None,
            reason: r.reason,
            requested_by: r.requested_by,
            idempotency_key: r.idempotency_key,
            schedule_id: r.schedule_id,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// A game-day schedule.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    #[schema(example = "sch_0123456789abcdef")]
    pub id: String,
    pub name: String,
    pub experiment_id: String,
    #[schema(example = "0 0 14 * * TUE")]
    pub cron: String,
    #[schema(example = "Europe/Berlin")]
    pub time_zone: String,
    pub overlap: OverlapPolicy,
    pub blackouts: Vec<Blackout>,
    pub missed: MissedRunPolicy,
    pub enabled: bool,
    pub last_fired_at: Option<DateTime<Utc>>,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<store::Schedule> for ScheduleView {
    fn from(s: store::Schedule) -> Self {
        ScheduleView {
            id: s.id,
            name: s.name,
            experiment_id: s.experiment_id,
            cron: s.spec.cron,
            time_zone: s.spec.time_zone,
            overlap: s.spec.overlap,
            blackouts: s.spec.blackouts,
            missed: s.spec.missed,
            enabled: s.enabled,
            last_fired_at: s.last_fired_at,
            next_fire_at: s.next_fire_at,
            created_by: s.created_by,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A schedule as created or replaced.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    pub name: String,
    pub experiment_id: String,
    /// 5 fields, or 6 with seconds first (croner's dialect).
    #[schema(example = "0 0 14 * * TUE")]
    pub cron: String,
    /// An IANA zone name; UTC when left out.
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub overlap: OverlapPolicy,
    #[serde(default)]
    pub blackouts: Vec<Blackout>,
    #[serde(default)]
    pub missed: MissedRunPolicy,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl ScheduleBody {
    fn def(self) -> ScheduleDef {
        let mut spec = ScheduleSpec::new(&self.cron);
        if let Some(tz) = self.time_zone {
            spec.time_zone = tz;
        }
        spec.overlap = self.overlap;
        spec.blackouts = self.blackouts;
        spec.missed = self.missed;
        ScheduleDef {
            name: self.name,
            experiment_id: self.experiment_id,
            spec,
            enabled: self.enabled,
        }
    }
}

/// One audit log entry: who started, aborted or halted what.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    #[schema(example = "run.start")]
    pub action: String,
    pub target: String,
    pub detail: Value,
}

/// `POST /v1/experiments` as JSON (`application/yaml` bodies are the YAML itself).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExperimentBody {
    /// A faultline/v1 experiment.
    pub yaml: String,
}

/// `POST /v1/runs`: exactly one of `experiment_id` and `yaml`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    #[serde(default)]
    pub experiment_id: Option<String>,
    /// Inline faultline/v1 YAML, validated like `POST /v1/experiments`.
    #[serde(default)]
    pub yaml: Option<String>,
    /// The selection seed (`count`/`percent` targets pick the same agents for
    /// the same seed over the same registry snapshot); default: random.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// `GET /v1/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthView {
    #[schema(example = "ok")]
    pub status: String,
    pub version: String,
    /// `sqlite` or `postgres`.
    pub store: String,
    pub schema_version: i64,
    pub running: usize,
    pub queued: usize,
}

/// `GET /v1/me`: the token's name (what the audit log records) and role.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeView {
    #[schema(example = "dashboard")]
    pub name: String,
    pub role: Role,
}

/// `POST /v1/halt`: the runs aborted and what each agent reverted.
#[derive(Debug, Serialize, ToSchema)]
pub struct HaltView {
    pub aborted: Vec<String>,
    /// Per agent: `{agent, report: {reverted, failed}, error}`.
    pub agents: Vec<Value>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Comma-separated statuses: queued, running, passed, failed, aborted,
    /// revert_unconfirmed, invalid, error.
    pub status: Option<String>,
    pub experiment_id: Option<String>,
    pub schedule_id: Option<String>,
    /// 1..=1000, default 50.
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// 1..=1000, default 50.
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    pub actor: Option<String>,
    pub target: Option<String>,
    /// 1..=1000, default 100.
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Replay events after this sequence number (like `Last-Event-ID`).
    pub after: Option<i64>,
}

// === the router ===

#[derive(OpenApi)]
#[openapi(
    info(
        title = "faultline controller",
        description = "Runs chaos experiments through agents, keeps their results, schedules game days. See docs/http-api.md.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "runs", description = "Start, watch and abort runs"),
        (name = "experiments", description = "Stored, validated experiments"),
        (name = "schedules", description = "Game days on cron"),
        (name = "operations", description = "Health, halt, metrics, audit"),
        (name = "agents", description = "The fleet: agents that register and heartbeat"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token from the server config; its role decides what it may do.",
                    ))
                    .build(),
            ),
        );
        // === fleet (registry) ===
        components.add_security_scheme(
            "join_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The fleet's join token (fleet.join_token_file): registers agents, nothing else.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "agent_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The agent token a registration answered: that agent's heartbeats, nothing else.",
                    ))
                    .build(),
            ),
        );
        // === end fleet (registry) ===
    }
}

/// The routes and the OpenAPI document they describe.
pub(crate) fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(create_experiment, list_experiments))
        .routes(routes!(get_experiment))
        .routes(routes!(create_run, list_runs))
        .routes(routes!(get_run))
        .routes(routes!(run_events))
        .routes(routes!(abort_run))
        .routes(routes!(halt))
        .routes(routes!(create_schedule, list_schedules))
        .routes(routes!(get_schedule, update_schedule, delete_schedule))
        .routes(routes!(audit))
        .routes(routes!(metrics))
        .routes(routes!(me))
        .routes(routes!(agents))
        // === fleet (registry) ===
        .routes(routes!(super::fleet::register_agent))
        .routes(routes!(super::fleet::agent_heartbeat))
        .routes(routes!(fleet_snapshot))
        // === end fleet (registry) ===
        .split_for_parts()
}

/// The whole app, with authentication and JSON 404/405s.
pub(crate) fn app(router: Router<AppState>, state: AppState) -> Router {
    router
        .route("/v1/openapi.json", axum::routing::get(openapi_json))
        .route("/docs", axum::routing::get(docs_page))
        .merge(super::ui::routes())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see /docs or docs/http-api.md",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method; see /docs",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

/// Paths anyone may read: load balancers, API clients discovering the API, and
/// the dashboard's static assets (the browser loads them before anyone signs in;
/// they hold no data: every figure they show comes from the API, with a token).
fn public(path: &str) -> bool {
    matches!(path, "/v1/health" | "/v1/openapi.json" | "/" | "/docs") || super::ui::serves(path)
}

async fn authenticate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    // === fleet (registry) ===
    // The agents' routes check their own tokens (join, agent); a join token is
    // refused everywhere else, also on a token-less loopback controller.
    if super::fleet::agent_route(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    if s.manager
        .connector()
        .registry()
        .is_some_and(|r| r.is_join_token(given))
    {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a join token only registers agents (POST /v1/agents/register); use an API token",
        )
        .into_response();
    }
    // === end fleet (registry) ===
    match s.tokens.authenticate(given) {
        Some(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        None if public(req.uri().path()) => next.run(req).await,
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown bearer token (Authorization: Bearer <token>)",
        )
        .into_response(),
    }
}

async fn openapi_json(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi.as_str().to_owned(),
    )
        .into_response()
}

async fn docs_page(State(s): State<AppState>) -> Html<String> {
    Html(s.docs.as_str().to_owned())
}

// === handlers ===

/// Whether the controller and its store answer. No token needed.
#[utoipa::path(get, path = "/v1/health", tag = "operations", security(()),
    responses((status = 200, body = HealthView), (status = 500, body = ErrorBody)))]
async fn health(State(s): State<AppState>) -> ApiResult<Json<HealthView>> {
    let store = s.manager.store();
    let schema_version = store.schema_version().await?;
    let (running, queued) = s.manager.counts().await;
    Ok(Json(HealthView {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        store: store.backend().to_owned(),
        schema_version,
        running,
        queued,
    }))
}

/// Stores an experiment after validating it. Operator; admin when it has a
/// command probe. Takes JSON `{"yaml": ...}` or the YAML itself
/// (`Content-Type: application/yaml`).
#[utoipa::path(post, path = "/v1/experiments", tag = "experiments",
    request_body(content(
        (ExperimentBody = "application/json"),
        (String = "application/yaml"),
    )),
    responses(
        (status = 201, body = ExperimentView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 422, description = "invalid_experiment or not_allowed, with located diagnostics", body = ErrorBody),
    ))]
async fn create_experiment(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    require(&p, Role::Operator)?;
    let yaml = experiment_text(&headers, &body)?;
    let prepared = Manager::parse(&yaml)?;
    check_untrusted(&s, &p, &prepared)?;
    let e = s
        .manager
        .store()
        .create_experiment(&store::NewExperiment {
            name: prepared.experiment.name.clone(),
            yaml,
            created_by: p.name.clone(),
        })
        .await?;
    s.manager
        .audit(
            &p.name,
            "experiment.create",
            &e.id,
            json!({ "name": e.name }),
        )
        .await;
    Ok((StatusCode::CREATED, Json(ExperimentView::from(e))).into_response())
}

fn experiment_text(headers: &HeaderMap, body: &Bytes) -> ApiResult<String> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let yamlish = [
        "application/yaml",
        "application/x-yaml",
        "text/yaml",
        "text/plain",
    ]
    .iter()
    .any(|t| ct.starts_with(t));
    let text = if yamlish {
        String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("the YAML body is not UTF-8"))?
    } else {
        json_body::<ExperimentBody>(body)?.yaml
    };
    if text.contains('\0') {
        return Err(ApiError::bad_request(
            "the YAML must not contain NUL characters",
        ));
    }
    Ok(text)
}

/// Untrusted input: command probes need the admin role; the allow-list is
/// checked against targets resolved with any seed (the selection's agents are
/// what matters, and `local` is named, never picked).
fn check_untrusted(s: &AppState, p: &Principal, prepared: &Prepared) -> ApiResult<()> {
    if policy::needs_admin(&prepared.experiment) && !p.may(Role::Admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "experiments with command probes need the admin role; token `{}` is {}",
                p.name, p.role
            ),
        ));
    }
    s.manager.admit(prepared, 0)?;
    Ok(())
}

/// Stored experiments, newest first. Viewer.
#[utoipa::path(get, path = "/v1/experiments", tag = "experiments", params(LimitQuery),
    responses((status = 200, body = Vec<ExperimentView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_experiments(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    q: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<ExperimentView>>> {
    require(&p, Role::Viewer)?;
    let q = query(q)?;
    let list = s
        .manager
        .store()
        .list_experiments(limit(q.limit, 50)?)
        .await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

/// One stored experiment. Viewer.
#[utoipa::path(get, path = "/v1/experiments/{id}", tag = "experiments",
    params(("id" = String, Path, description = "experiment id")),
    responses((status = 200, body = ExperimentView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_experiment(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<ExperimentView>> {
    require(&p, Role::Viewer)?;
    if !plausible_id(&id) {
        return Err(ApiError::not_found("experiment", &id));
    }
    match s.manager.store().get_experiment(&id).await? {
        Some(e) => Ok(Json(e.into())),
        None => Err(ApiError::not_found("experiment", &id)),
    }
}

/// Starts a run of a stored experiment or of inline YAML. Operator (admin for
/// inline YAML with a command probe). Answers 202 with the run; a repeat with the
/// same `Idempotency-Key` (per token) answers the first run with 200. 409 when its
/// agents are busy and the server refuses overlapping runs.
#[utoipa::path(post, path = "/v1/runs", tag = "runs", request_body = RunBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "at most 255 characters; one run per key and token")),
    responses(
        (status = 202, description = "the run was created (queued or running)", body = RunView),
        (status = 200, description = "the idempotency key matched an earlier run", body = RunView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "agent_busy, or the key was used for another experiment", body = ErrorBody),
        (status = 422, description = "invalid_experiment, not_allowed or unknown_experiment", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
async fn create_run(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    require(&p, Role::Operator)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
                .trim();
            if k.is_empty() || k.len() > KEY_MAX {
                return Err(ApiError::bad_request(format!(
                    "Idempotency-Key must be 1 to {KEY_MAX} characters"
                )));
            }
            Some(k.to_owned())
        }
    };
    let req: RunBody = json_body(&body)?;
    let mut prepared = match (req.experiment_id, req.yaml) {
        (Some(id), None) => {
            if !plausible_id(&id) {
                return Err(ManagerError::UnknownExperiment(id).into());
            }
            s.manager.stored(&id).await?
        }
        (None, Some(yaml)) => {
            let prepared = Manager::parse(&yaml)?;
            if policy::needs_admin(&prepared.experiment) {
                require(&p, Role::Admin)?;
            }
            prepared
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `experiment_id` and `yaml`",
            ));
        }
    };
    prepared.seed = req.seed;
    let sub = s
        .manager
        .submit(
            prepared,
            Submit {
                requested_by: p.name.clone(),
                idempotency_key: key,
                schedule_id: None,
                queue: false,
            },
        )
        .await?;
    let status = if sub.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let location = format!("/v1/runs/{}", sub.run.id);
    Ok((
        status,
        [(header::LOCATION, location)],
        Json(RunView::brief(sub.run)),
    )
        .into_response())
}

/// Runs, newest first, without their journals. Viewer.
#[utoipa::path(get, path = "/v1/runs", tag = "runs", params(RunsQuery),
    responses((status = 200, body = Vec<RunView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_runs(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    q: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<RunView>>> {
    require(&p, Role::Viewer)?;
    let q = query(q)?;
    let mut statuses = Vec::new();
    for st in q.status.iter().flat_map(|s| s.split(',')) {
        let st = st.trim();
        if !st.is_empty() {
            statuses.push(st.parse::<RunStatus>().map_err(ApiError::bad_request)?);
        }
    }
    let query = RunQuery {
        statuses,
        experiment_id: q.experiment_id.filter(|i| plausible_id(i)),
        schedule_id: q.schedule_id.filter(|i| plausible_id(i)),
        limit: limit(q.limit, 50)?,
    };
    let runs = s.manager.store().list_runs(&query).await?;
    Ok(Json(runs.into_iter().map(RunView::brief).collect()))
}

/// One run with its status, verdict summary, journal and YAML. Viewer.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "run id")),
    responses((status = 200, body = RunView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_run(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<RunView>> {
    require(&p, Role::Viewer)?;
    if !plausible_id(&id) {
        return Err(ApiError::not_found("run", &id));
    }
    match s.manager.store().get_run(&id).await? {
        Some(r) => Ok(Json(RunView::full(r))),
        None => Err(ApiError::not_found("run", &id)),
    }
}

/// The run's events as Server-Sent Events: every stored event after
/// `Last-Event-ID` (or `?after=`), then live ones until the run ends, then an
/// `end` event. Each event's `id` is its sequence number, `event` its kind
/// (`phase`, `window`, `injected`, `reverted`, `verdict`, `aborting`,
/// `finished`, ...) and `data` its JSON. Viewer.
#[utoipa::path(get, path = "/v1/runs/{id}/events", tag = "runs",
    params(("id" = String, Path, description = "run id"),
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event"),
        EventsQuery),
    responses(
        (status = 200, description = "text/event-stream", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
    ))]
async fn run_events(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    require(&p, Role::Viewer)?;
    let q = query(q)?;
    let mut after = q.after.unwrap_or(0);
    if let Some(v) = headers.get("last-event-id") {
        after = v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event's number"))?;
    }
    if after < 0 {
        return Err(ApiError::bad_request(
            "the event number must not be negative",
        ));
    }
    if !plausible_id(&id) {
        return Err(ApiError::not_found("run", &id));
    }
    // Subscribe before reading the store, so nothing falls between the two.
    let live = s.manager.subscribe();
    if s.manager.store().get_run(&id).await?.is_none() {
        return Err(ApiError::not_found("run", &id));
    }
    let stream = super::sse::stream(s.manager.clone(), id, after, live, s.stop.clone());
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Aborts a queued or running run: everything it injected is reverted and it
/// ends `aborted`. Operator. 409 if it already ended.
#[utoipa::path(post, path = "/v1/runs/{id}/abort", tag = "runs",
    params(("id" = String, Path, description = "run id")),
    responses((status = 202, body = RunView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn abort_run(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    require(&p, Role::Operator)?;
    if !plausible_id(&id) {
        return Err(ApiError::not_found("run", &id));
    }
    let run = s.manager.abort(&id, &p.name).await?;
    Ok((StatusCode::ACCEPTED, Json(RunView::brief(run))).into_response())
}

/// Aborts every run and halts every agent (the inventory's and the in-process
/// one). Admin.
#[utoipa::path(post, path = "/v1/halt", tag = "operations",
    responses((status = 200, body = HaltView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn halt(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<HaltView>> {
    require(&p, Role::Admin)?;
    let out = s.manager.halt(&p.name).await;
    Ok(Json(HaltView {
        aborted: out.aborted,
        agents: out
            .agents
            .into_iter()
            .filter_map(|a| serde_json::to_value(a).ok())
            .collect(),
    }))
}

/// Creates a schedule. Admin.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", request_body = ScheduleBody,
    responses((status = 201, body = ScheduleView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 422, description = "invalid_schedule or unknown_experiment", body = ErrorBody)))]
async fn create_schedule(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> ApiResult<Response> {
    require(&p, Role::Admin)?;
    let def = json_body::<ScheduleBody>(&body)?.def();
    check_schedule_experiment(&s, &def).await?;
    let sch = s
        .manager
        .store()
        .create_schedule(&def, &p.name)
        .await
        .map_err(schedule_error)?;
    s.manager
        .audit(&p.name, "schedule.create", &sch.id, json!(def))
        .await;
    notify(&s);
    Ok((StatusCode::CREATED, Json(ScheduleView::from(sch))).into_response())
}

async fn check_schedule_experiment(s: &AppState, def: &ScheduleDef) -> ApiResult<()> {
    let known = plausible_id(&def.experiment_id)
        && s.manager
            .store()
            .get_experiment(&def.experiment_id)
            .await?
            .is_some();
    if known {
        Ok(())
    } else {
        Err(ManagerError::UnknownExperiment(def.experiment_id.clone()).into())
    }
}

fn schedule_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid { .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_schedule",
            e.to_string(),
        ),
        other => other.into(),
    }
}

fn notify(s: &AppState) {
    if let Some(n) = &s.schedules_changed {
        n.notify_one();
    }
}

/// Every schedule, by name. Viewer.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    responses((status = 200, body = Vec<ScheduleView>), (status = 401, body = ErrorBody)))]
async fn list_schedules(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<Vec<ScheduleView>>> {
    require(&p, Role::Viewer)?;
    let list = s.manager.store().list_schedules().await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

/// One schedule. Viewer.
#[utoipa::path(get, path = "/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = ScheduleView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_schedule(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleView>> {
    require(&p, Role::Viewer)?;
    if !plausible_id(&id) {
        return Err(ApiError::not_found("schedule", &id));
    }
    match s.manager.store().get_schedule(&id).await? {
        Some(sch) => Ok(Json(sch.into())),
        None => Err(ApiError::not_found("schedule", &id)),
    }
}

/// Replaces a schedule's definition (keeps when it last fired). Admin.
#[utoipa::path(put, path = "/v1/schedules/{id}", tag = "schedules", request_body = ScheduleBody,
    params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = ScheduleView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, description = "invalid_schedule or unknown_experiment", body = ErrorBody)))]
async fn update_schedule(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<ScheduleView>> {
    require(&p, Role::Admin)?;
    if !plausible_id(&id) {
        return Err(ApiError::not_found("schedule", &id));
    }
    let def = json_body::<ScheduleBody>(&body)?.def();
    if s.manager.store().get_schedule(&id).await?.is_none() {
        return Err(ApiError::not_found("schedule", &id));
    }
    check_schedule_experiment(&s, &def).await?;
    let sch = s
        .manager
        .store()
        .update_schedule(&id, &def)
        .await
        .map_err(schedule_error)?;
    s.manager
        .audit(&p.name, "schedule.update", &id, json!(def))
        .await;
    notify(&s);
    Ok(Json(sch.into()))
}

/// Deletes a schedule; its runs stay. Admin.
#[utoipa::path(delete, path = "/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "schedule id")),
    responses((status = 204, description = "deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn delete_schedule(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require(&p, Role::Admin)?;
    if !plausible_id(&id) || !s.manager.store().delete_schedule(&id).await? {
        return Err(ApiError::not_found("schedule", &id));
    }
    s.manager
        .audit(&p.name, "schedule.delete", &id, json!({}))
        .await;
    notify(&s);
    Ok(StatusCode::NO_CONTENT)
}

/// The audit log, newest first: who started, aborted or halted what, and every
/// schedule fire. Admin.
#[utoipa::path(get, path = "/v1/audit", tag = "operations", params(AuditParams),
    responses((status = 200, body = Vec<AuditView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn audit(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    q: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<AuditView>>> {
    require(&p, Role::Admin)?;
    let q = query(q)?;
    let entries = s
        .manager
        .store()
        .list_audit(&AuditQuery {
            actor: q.actor.filter(|a| !a.contains('\0')),
            target: q.target.filter(|t| !t.contains('\0')),
            limit: limit(q.limit, 100)?.min(MAX_LIMIT),
        })
        .await?;
    Ok(Json(
        entries
            .into_iter()
            .map(|e| AuditView {
                id: e.id,
                at: e.at,
                actor: e.actor,
                action: e.action,
                target: e.target,
                detail: e.detail,
            })
            .collect(),
    ))
}

/// Prometheus metrics (OpenMetrics text). Viewer.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "application/openmetrics-text", body = String), (status = 401, body = ErrorBody)))]
async fn metrics(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Response> {
    require(&p, Role::Viewer)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.manager.metrics.encode(),
    )
        .into_response())
}

/// Who a token is: its name and role. The dashboard asks this at sign-in, to
/// show only the controls the role may use. Viewer.
#[utoipa::path(get, path = "/v1/me", tag = "operations",
    responses((status = 200, body = MeView), (status = 401, body = ErrorBody)))]
async fn me(Extension(p): Extension<Principal>) -> ApiResult<Json<MeView>> {
    require(&p, Role::Viewer)?;
    Ok(Json(MeView {
        name: p.name,
        role: p.role,
    }))
}

/// Every agent runs can reach: the registered ones (with their state, last
/// heartbeat, labels, capabilities and version), the inventory's and `local`,
/// the in-process one; each alive one with the faults it holds now, as the
/// agent itself answers. Viewer.
#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    responses((status = 200, body = Vec<super::agents::AgentView>), (status = 401, body = ErrorBody)))]
async fn agents(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<Vec<super::agents::AgentView>>> {
    require(&p, Role::Viewer)?;
    Ok(Json(super::agents::list(s.manager.connector()).await))
}

// === fleet (registry) ===

/// What targets resolve against now: the inventory merged with the alive
/// registered agents, as an inventory (`faultline plan --controller` resolves
/// against it with the same code and seed as the service). Viewer.
#[utoipa::path(get, path = "/v1/fleet/snapshot", tag = "agents",
    responses((status = 200, body = super::agents::SnapshotView), (status = 401, body = ErrorBody)))]
async fn fleet_snapshot(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<super::agents::SnapshotView>> {
    require(&p, Role::Viewer)?;
    Ok(Json(super::agents::snapshot(s.manager.connector()).await?))
}

// === end fleet (registry) ===

/// Items of the SSE stream.
pub(crate) type SseItem = Result<SseEvent, Infallible>;

/// A stored event as an SSE event.
pub(crate) fn sse_event(e: &store::RunEvent) -> SseItem {
    Ok(SseEvent::default()
        .id(e.seq.to_string())
        .event(e.kind.as_str())
        .data(e.data.to_string()))
}

pub(crate) fn is_final(live: &Live, id: &str) -> bool {
    matches!(live, Live::Done(r) if r == id)
}

pub(crate) use broadcast::error::RecvError;

#[cfg(test)]
mod tests {
    /// The API's contract: a change to a route, a body or a status shows here.
    #[test]
    fn the_openapi_document_is_stable() {
        let (_, mut doc) = super::routes();
        doc.info.version = "VERSION".to_owned();
        let v = serde_json::to_value(&doc).expect("the document serialises");
        assert_eq!(v["openapi"], "3.1.0");
        insta::assert_json_snapshot!("openapi", v);
    }
}
