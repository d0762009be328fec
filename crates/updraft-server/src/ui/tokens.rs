//! Personal API tokens for the signed-in user: made here or with `updraft tokens
//! create`, shown once (the page that shows it is not cached), stored only as a
//! SHA-256 hash. Everyone manages their own; an admin may also revoke anyone's.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use updraft_auth::Action;

use super::layout::{csrf_field, page, time};
use super::pages::{UiError, back, broken_files, note};
use crate::{ApiError, AppState, Caller};

/// Accounts have tokens; with `webserver.auth = "none"` there are none.
fn account(caller: &Caller) -> Result<&str, ApiError> {
    if !caller.signed_in {
        return Err(ApiError::Forbidden("API tokens belong to accounts: sign in first".into()));
    }
    Ok(&caller.principal.username)
}

async fn tokens_body(state: &AppState, caller: &Caller, username: &str, new: Option<&str>) -> Result<Markup, UiError> {
    let tokens = state.store.api_tokens(Some(username)).await?;
    Ok(html! {
        h1 { "API tokens" }
        @if let Some(secret) = new {
            div.flash role="status" {
                p { strong { "Your new token, shown only this once:" } }
                p { code id="new-token" { (secret) } }
                p { "Use it as " code { "Authorization: Bearer <token>" } ". Only its hash is stored: if you lose it, make another." }
            }
        }
        p.muted { "Tokens let scripts call the API as you. A " em { "read" } " token has at most a viewer's rights; a " em { "write" } " token has yours." }
        table.list id="tokens" {
            thead { tr { th { "Id" } th { "Name" } th { "Scope" } th { "Created" } th { "Expires" } th { "Last used" } th {} } }
            tbody {
                @for token in &tokens {
                    tr {
                        td { (token.token_id) }
                        td { (token.name) }
                        td { (token.scope) }
                        td { (time(Some(token.created_at), "UTC")) }
                        td { @if token.expires_at.is_some() { (time(token.expires_at, "UTC")) } @else { "never" } }
                        td { (time(token.last_used_at, "UTC")) }
                        td {
                            form.inline method="post" action=(format!("/tokens/{}/revoke", token.token_id)) {
                                (csrf_field(caller))
                                button.danger type="submit" { "Revoke" }
                            }
                        }
                    }
                }
            }
        }
        @if tokens.is_empty() { p.muted { "No tokens yet." } }
        h2 { "Make a token" }
        form.stacked method="post" action="/tokens" {
            (csrf_field(caller))
            label { "Name" input name="name" required maxlength="100" placeholder="ci" autocomplete="off"; }
            label { "Scope"
                select name="scope" {
                    option value="read" { "read" }
                    option value="write" { "write" }
                }
            }
            label { "Expires in"
                select name="expires_in" {
                    option value="7d" { "7 days" }
                    option value="30d" { "30 days" }
                    option value="90d" selected { "90 days" }
                    option value="365d" { "1 year" }
                    option value="never" { "never" }
                }
            }
            button type="submit" { "Make token" }
        }
    })
}

pub async fn tokens_page(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Html<String>, UiError> {
    let username = account(&caller)?;
    let body = tokens_body(&state, &caller, username, None).await?;
    Ok(Html(page("API tokens", Some(&caller), broken_files(&state).await?, note(&query), body).into_string()))
}

#[derive(Debug, Deserialize)]
pub struct TokenForm {
    name: String,
    scope: String,
    expires_in: String,
}

pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    Form(form): Form<TokenForm>,
) -> Result<Response, UiError> {
    let username = account(&caller)?;
    let name = form.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::BadRequest("a token needs a name of 1 to 100 characters".into()).into());
    }
    if !matches!(form.scope.as_str(), "read" | "write") {
        return Err(ApiError::BadRequest(format!("unknown scope `{}`: use read or write", form.scope)).into());
    }
    let now = state.clock.now();
    let expires_at = match form.expires_in.as_str() {
        "never" => None,
        text => {
            let duration = updraft_core::Duration::parse(text)
                .map_err(|error| ApiError::BadRequest(format!("invalid expiry `{text}`: {error}")))?;
            Some(now + duration.to_signed())
        }
    };
    let (secret, hash) = updraft_auth::new_token("updraft").map_err(|error| ApiError::Internal(error.to_string()))?;
    let id = state
        .store
        .create_api_token(username, name, &hash, &form.scope, expires_at, now)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no user `{username}`")))?;
    let detail = format!("`{name}` for {username}, {}", form.scope);
    crate::audit::record(&state, &caller.actor(), "token_create", &id.to_string(), Some(detail)).await;
    let body = tokens_body(&state, &caller, username, Some(&secret)).await?;
    let html = page("API tokens", Some(&caller), broken_files(&state).await?, None, body).into_string();
    // The token is in this answer only: no cache may keep it.
    let mut response = Html(html).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(token_id): Path<i64>,
) -> Result<Redirect, UiError> {
    let username = account(&caller)?;
    let owned = state.store.api_tokens(Some(username)).await?.iter().any(|token| token.token_id == token_id);
    // Someone else's token is as unknown as a missing one, unless an admin asks.
    if !owned && !caller.may(Action::Administer) {
        return Err(ApiError::NotFound(format!("no token {token_id}")).into());
    }
    if !state.store.delete_api_token(token_id).await? {
        return Err(ApiError::NotFound(format!("no token {token_id}")).into());
    }
    crate::audit::record(&state, &caller.actor(), "token_revoke", &token_id.to_string(), None).await;
    Ok(back("/tokens", &format!("Token {token_id} revoked")))
}
