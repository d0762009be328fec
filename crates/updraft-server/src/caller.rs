//! Who is calling, for every API handler and page: the one place requests are
//! authenticated. With `webserver.auth = "none"` (loopback only) everyone is
//! `anonymous` with an Admin's rights; with `"password"` a caller is the owner of
//! an API token (`Authorization: Bearer`) or the user of a session cookie. What a caller may do is `updraft_auth::permits`.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use updraft_auth::{Action, Principal, Role, permits, token_hash};

use crate::{ApiError, AppState, AuthMode};

pub const SESSION_COOKIE: &str = "updraft_session";
pub const CSRF_COOKIE: &str = "updraft_csrf";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    /// This browser's CSRF token, for the forms a page renders.
    pub csrf: String,
    /// Signed in with an account (not anonymous).
    pub signed_in: bool,
}

impl Caller {
    /// The actor recorded for changes this caller makes.
    pub fn actor(&self) -> String {
        format!("api:{}", self.principal.username)
    }

    pub fn may(&self, action: Action<'_>) -> bool {
        permits(&self.principal, action)
    }

    /// `Ok` if the caller may, else 403 naming neither data nor secrets.
    pub fn require(&self, action: Action<'_>) -> Result<(), ApiError> {
        if self.may(action) {
            return Ok(());
        }
        let what = match action {
            Action::ReadDag { .. } => "see this DAG",
            Action::EditDag { .. } => "change this DAG or its runs",
            Action::ReadPlatform => "see this",
            Action::EditPlatform => "change pools, variables or connections",
            Action::Administer => "administer accounts",
        };
        Err(ApiError::Forbidden(format!("`{}` ({}) may not {what}", self.principal.username, self.principal.role)))
    }
}

/// Why a request has no caller: an API client gets 401, a browser the sign-in page.
pub enum NoCaller {
    Api(ApiError),
    Page(String),
}

impl IntoResponse for NoCaller {
    fn into_response(self) -> Response {
        match self {
            NoCaller::Api(error) => {
                let mut response = error.into_response();
                response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("header value"));
                response
            }
            NoCaller::Page(next) => Redirect::to(&format!("/login?next={}", crate::api::encode(&next))).into_response(),
        }
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A cookie's value from a request's headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = NoCaller;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, NoCaller> {
        let csrf = parts
            .extensions
            .get::<crate::csrf::CsrfToken>()
            .map(|token| token.0.clone())
            .or_else(|| cookie(&parts.headers, CSRF_COOKIE).map(str::to_string))
            .unwrap_or_default();
        if state.auth == AuthMode::None {
            let principal = Principal { username: "anonymous".into(), role: Role::Admin, teams: Vec::new() };
            return Ok(Caller { principal, csrf, signed_in: false });
        }
        let is_api = parts.uri.path().starts_with("/api/");
        let refuse = || {
            if is_api {
                NoCaller::Api(ApiError::Unauthorized("sign in first: this server requires an account".into()))
            } else {
                let next = parts.uri.path_and_query().map_or("/", |path| path.as_str()).to_string();
                NoCaller::Page(next)
            }
        };
        if let Some(secret) = bearer(parts) {
            let found = state
                .store
                .api_token_user(&token_hash(secret), state.clock.now())
                .await
                .map_err(|error| NoCaller::Api(error.into()))?;
            let Some((user, scope)) = found else {
                return Err(NoCaller::Api(ApiError::Unauthorized("the token is unknown, revoked or expired".into())));
            };
            let Ok(role) = Role::parse(&user.role) else { return Err(refuse()) };
            // A read-only token reads, whatever its owner may do.
            let role = if scope == "read" { role.min(Role::Viewer) } else { role };
            let principal = Principal { username: user.username, role, teams: user.teams };
            return Ok(Caller { principal, csrf, signed_in: true });
        }
        let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) else { return Err(refuse()) };
        let user = state
            .store
            .session_user(&token_hash(secret), state.clock.now())
            .await
            .map_err(|error| NoCaller::Api(error.into()))?;
        let Some(user) = user else { return Err(refuse()) };
        let Ok(role) = Role::parse(&user.role) else { return Err(refuse()) };
        Ok(Caller { principal: Principal { username: user.username, role, teams: user.teams }, csrf, signed_in: true })
    }
}
