//! Signing in and out. A session is a random token in an HttpOnly, SameSite=Lax
//! cookie (Secure behind TLS); only its hash is stored. Five wrong passwords in a
//! row lock an account for 15 minutes; every failure reads the same, so the page
//! does not tell whether an account exists.

use axum::Form;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use updraft_auth::{new_token, token_hash, verify_password};

use super::layout::page;
use crate::caller::{SESSION_COOKIE, cookie};
use crate::csrf::CsrfToken;
use crate::{AppState, AuthMode};

/// Failed sign-ins in a row that lock an account, and for how long.
const LOCK_AFTER: u32 = 5;
const LOCK_FOR: jiff::SignedDuration = jiff::SignedDuration::from_mins(15);
/// How long a session lasts.
const SESSION_FOR: jiff::SignedDuration = jiff::SignedDuration::from_hours(12);

/// Verifying against this when the account does not exist keeps the time the
/// same either way.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| updraft_auth::hash_password("no account has this password").unwrap_or_default())
}

#[derive(Debug, Deserialize, Default)]
pub struct Next {
    #[serde(default)]
    next: String,
}

pub(super) fn safe_next(next: &str) -> String {
    if next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/login") {
        next.to_string()
    } else {
        "/".to_string()
    }
}

fn form(state: &AppState, csrf: &str, next: &str, failed: bool) -> String {
    let body = html! {
        h1 { "Sign in" }
        @if failed {
            div.flash.error role="alert" {
                "Wrong username or password, or the account is locked after repeated failures (for 15 minutes)."
            }
        }
        @if let Some(oidc) = &state.oidc {
            p { a.button.primary href=(format!("/login/oidc?next={}", crate::api::encode(next))) { "Sign in with " (oidc.config.name) } }
            p.muted { "or with a password:" }
        }
        form.login method="post" action="/login" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="next" value=(next);
            label { "Username" br; input type="text" name="username" autocomplete="username" required autofocus; }
            label { "Password" br; input type="password" name="password" autocomplete="current-password" required; }
            button.primary type="submit" { "Sign in" }
        }
    };
    page("Sign in", None, 0, None, body).into_string()
}

pub async fn login_form(
    State(state): State<AppState>,
    Extension(csrf): Extension<CsrfToken>,
    Query(next): Query<Next>,
) -> Response {
    if state.auth == AuthMode::None {
        return Redirect::to("/").into_response();
    }
    Html(form(&state, &csrf.0, &safe_next(&next.next), false)).into_response()
}

#[derive(Debug, Deserialize)]
pub struct Credentials {
    username: String,
    password: String,
    #[serde(default)]
    next: String,
}

pub async fn login(
    State(state): State<AppState>,
    Extension(csrf): Extension<CsrfToken>,
    Form(credentials): Form<Credentials>,
) -> Response {
    let next = safe_next(&credentials.next);
    let now = state.clock.now();
    let failed = || Html(form(&state, &csrf.0, &next, true)).into_response();
    let user = match state.store.get_user(&credentials.username).await {
        Ok(user) => user,
        Err(error) => return crate::ApiError::from(error).into_response(),
    };
    let Some(user) = user else {
        verify_password(&credentials.password, dummy_hash());
        tracing::warn!(username = %credentials.username, "sign-in failed: no such account");
        crate::audit::record(&state, &credentials.username, "sign_in_failed", &credentials.username, None).await;
        return failed();
    };
    let locked = user.locked_until.is_some_and(|until| until > now);
    if locked || !verify_password(&credentials.password, &user.password_hash) {
        let failures = if locked { user.failed_logins } else { user.failed_logins + 1 };
        let (failures, lock) =
            if failures >= LOCK_AFTER && !locked { (0, Some(now + LOCK_FOR)) } else { (failures, user.locked_until) };
        if let Err(error) = state.store.set_login_state(&user.username, failures, lock).await {
            return crate::ApiError::from(error).into_response();
        }
        let locked_now = lock.is_some_and(|until| until > now);
        tracing::warn!(username = %user.username, locked = locked_now, "sign-in failed");
        let detail = locked_now.then(|| "the account is locked".to_string());
        crate::audit::record(&state, &user.username, "sign_in_failed", &user.username, detail).await;
        return failed();
    }
    start_session(&state, &user, &next, None).await
}

/// A new session for `user` (password checked, or the identity provider vouched),
/// and the way to `next` with its cookie.
pub(super) async fn start_session(
    state: &AppState,
    user: &updraft_store::UserRow,
    next: &str,
    how: Option<String>,
) -> Response {
    let now = state.clock.now();
    let Ok((secret, hash)) = new_token("session") else {
        return crate::ApiError::Internal("no randomness for a session".into()).into_response();
    };
    let stored = async {
        state.store.set_login_state(&user.username, 0, None).await?;
        state.store.create_session(&hash, user.user_id, now + SESSION_FOR, now).await
    };
    if let Err(error) = stored.await {
        return crate::ApiError::from(error).into_response();
    }
    tracing::info!(username = %user.username, "signed in");
    crate::audit::record(state, &user.username, "sign_in", &user.username, how).await;
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let cookie =
        format!("{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}", SESSION_FOR.as_secs());
    let mut response = Redirect::to(next).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

pub async fn logout(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(secret) = cookie(&headers, SESSION_COOKIE) {
        let hash = token_hash(secret);
        if let Ok(Some(user)) = state.store.session_user(&hash, state.clock.now()).await {
            crate::audit::record(&state, &user.username, "sign_out", &user.username, None).await;
        }
        if let Err(error) = state.store.delete_session(&hash).await {
            return crate::ApiError::from(error).into_response();
        }
    }
    let mut response = Redirect::to("/login").into_response();
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}
