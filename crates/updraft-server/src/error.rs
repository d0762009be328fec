use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use updraft_store::StoreError;
use utoipa::ToSchema;

/// One error type for every handler, answered as an RFC 9457 problem document
/// (`application/problem+json`). Store failures become a generic 500; their detail
/// goes to the log, not the client.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    /// No or a wrong token.
    Unauthorized(String),
    /// The feature is off on this server.
    Forbidden(String),
    NotFound(String),
    /// The request is well-formed but clashes with what exists (a run id taken).
    Conflict(String),
    /// A request the extractors refused, with the status they chose (400, 415, 422).
    Rejected(StatusCode, String),
    Internal(String),
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status and `code` say what kind of problem it is.
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    pub kind: &'static str,
    /// The HTTP status's reason phrase.
    #[schema(example = "Not Found")]
    pub title: String,
    #[schema(example = 404)]
    pub status: u16,
    /// What went wrong, for a person.
    #[schema(example = "no DAG `sales`")]
    pub detail: String,
    /// What went wrong, for a program: `bad_request`, `unauthorized`, `forbidden`,
    /// `not_found`, `conflict`, `unsupported_media_type`, `unprocessable`, `internal`.
    #[schema(example = "not_found")]
    pub code: &'static str,
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            // A request asked for a state change the state machine forbids.
            StoreError::IllegalTask(_) | StoreError::IllegalRun(_) | StoreError::Changed(_) => {
                ApiError::Conflict(error.to_string())
            }
            _ => ApiError::Internal(updraft_core::errors::chain(&error)),
        }
    }
}

impl ApiError {
    /// The status and the detail a client may see; an internal error's detail
    /// goes to the log instead. Pages, streams and problem documents all use it.
    pub fn into_parts(self) -> (StatusCode, String) {
        match self {
            ApiError::BadRequest(detail) => (StatusCode::BAD_REQUEST, detail),
            ApiError::Unauthorized(detail) => (StatusCode::UNAUTHORIZED, detail),
            ApiError::Forbidden(detail) => (StatusCode::FORBIDDEN, detail),
            ApiError::NotFound(detail) => (StatusCode::NOT_FOUND, detail),
            ApiError::Conflict(detail) => (StatusCode::CONFLICT, detail),
            ApiError::Rejected(status, detail) => (status, detail),
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the server log".to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, detail) = self.into_parts();
        let code = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "conflict",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            _ => "internal",
        };
        let problem = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail,
            code,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        (status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response()
    }
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such page `{}`", uri.path()))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::Rejected(StatusCode::METHOD_NOT_ALLOWED, format!("`{}` does not take {method}", uri.path()))
}
