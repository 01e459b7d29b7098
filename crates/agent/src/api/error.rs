//! The one error type of the API: a status and a JSON body `{"error", "reason"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use faultline_faults::{InjectError, RevertError};

use crate::manager::ManagerError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable, machine-readable code (`unknown_kind`, `conflict`, ...).
    pub error: &'static str,
    /// What went wrong and what to do, for people.
    pub reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            error,
            reason: reason.into(),
        }
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (Authorization: Bearer <token from --token-file>)",
        )
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        let reason = e.to_string();
        let (status, error) = match &e {
            ManagerError::BadId(_) => (StatusCode::BAD_REQUEST, "bad_id"),
            ManagerError::BadParams { .. } => (StatusCode::BAD_REQUEST, "bad_params"),
            ManagerError::UnknownKind(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_kind"),
            ManagerError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ManagerError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ManagerError::Inject(i) => match i {
                InjectError::Unsupported { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "unsupported")
                }
                InjectError::InvalidParams { .. } => (StatusCode::BAD_REQUEST, "bad_params"),
                InjectError::NoTarget { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "no_target"),
                InjectError::Failed { .. } | InjectError::BadRecovery { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "inject_failed")
                }
            },
            ManagerError::Revert(r) => match r {
                RevertError::Failed { .. } | RevertError::NotReverted { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "revert_failed")
                }
            },
            ManagerError::Journal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "journal"),
        };
        Self {
            status,
            error,
            reason,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.error, "reason": self.reason });
        (self.status, axum::Json(body)).into_response()
    }
}
