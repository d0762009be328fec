//! Every response gets security headers, every browser a CSRF token (a cookie),
//! and every form post to a page must carry that token back in its `csrf` field.
//! The API (`/api/`) is not a form target: it takes JSON with its own content
//! type, which browsers cannot send across sites without asking first.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};

use crate::AppState;
use crate::caller::{CSRF_COOKIE, cookie};

/// This request's CSRF token, for the pages that render forms.
#[derive(Debug, Clone)]
pub struct CsrfToken(pub String);

/// The most a form post may carry.
const FORM_LIMIT: usize = 1 << 20;

pub async fn guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let existing = cookie(request.headers(), CSRF_COOKIE).filter(|value| value.len() >= 32).map(str::to_string);
    let token = match &existing {
        Some(token) => token.clone(),
        None => match updraft_auth::new_token("csrf") {
            Ok((token, _)) => token,
            Err(error) => return refused(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
        },
    };
    let path = request.uri().path();
    let is_form_target = request.method() == Method::POST && !path.starts_with("/api/");
    if is_form_target {
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, FORM_LIMIT).await else {
            return refused(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large");
        };
        let sent = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
            .ok()
            .and_then(|fields| fields.into_iter().find(|(name, _)| name == "csrf").map(|(_, value)| value));
        let matches = match (&existing, sent) {
            (Some(cookie), Some(sent)) => updraft_auth::token_hash(cookie) == updraft_auth::token_hash(&sent),
            _ => false,
        };
        if !matches {
            return refused(
                StatusCode::FORBIDDEN,
                "this form expired or did not come from this site; reload the page and try again",
            );
        }
        request = Request::from_parts(parts, Body::from(bytes));
    }
    request.extensions_mut().insert(CsrfToken(token.clone()));
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if existing.is_none() {
        let secure = if state.secure_cookies { "; Secure" } else { "" };
        let cookie = format!("{CSRF_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax{secure}");
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn refused(status: StatusCode, detail: &str) -> Response {
    (status, Html(crate::ui::error_page_html(status.as_u16(), detail))).into_response()
}
