use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use updraft_store::StoreError;

/// One error type for every handler: JSON `{"error": {"code", "message"}}`. Store
/// failures become a generic 500; their detail goes to the log, not the client.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    /// No or a wrong token.
    Unauthorized(String),
    /// The feature is off on this server.
    Forbidden(String),
    NotFound(String),
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            // A request asked for a state change the state machine forbids.
            StoreError::IllegalTask(_) | StoreError::IllegalRun(_) => ApiError::BadRequest(error.to_string()),
            _ => ApiError::Internal(updraft_core::errors::chain(&error)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, "bad_request", message),
            ApiError::Unauthorized(message) => (StatusCode::UNAUTHORIZED, "unauthorized", message),
            ApiError::Forbidden(message) => (StatusCode::FORBIDDEN, "forbidden", message),
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, "not_found", message),
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log".to_string())
            }
        };
        (status, Json(serde_json::json!({"error": {"code": code, "message": message}}))).into_response()
    }
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such page `{}`", uri.path()))
}
