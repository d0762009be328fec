use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// One error type for every handler: JSON `{"error": {"code", "message"}}`. Store
/// failures become a generic 500; their detail goes to the log, not the client.
#[derive(Debug)]
pub enum ApiError {
    NotFound(String),
    Internal(String),
}

impl From<updraft_store::StoreError> for ApiError {
    fn from(error: updraft_store::StoreError) -> ApiError {
        ApiError::Internal(updraft_core::errors::chain(&error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
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
