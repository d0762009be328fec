//! Sign-in through an OpenID Connect provider (authorization-code flow with PKCE),
//! configured under `[oidc]` in `updraft.toml`, next to passwords.
//!
//! `/login/oidc` sends the browser to the provider with a fresh `state`, `nonce`
//! and PKCE verifier, which wait in a short-lived HttpOnly cookie rather than in
//! this process (any API server may get the callback). `/login/oidc/callback`
//! checks the state, trades the code for tokens at the provider's token endpoint
//! (with the client secret and the verifier), checks the ID token's signature
//! against the provider's keys and its issuer, audience, expiry and nonce, then
//! signs the account named by `username_claim` in — creating it first, with
//! `default_role` and the teams in `teams_claim`, when `create_users` is on.
//! Accounts made here have no password.

use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use updraft_auth::oidc::{Expected, Jwks, pkce_challenge, token_key_id, verify_id_token};

use super::layout::error_page;
use super::login::{safe_next, start_session};
use crate::AppState;
use crate::caller::cookie;

/// What `[oidc]` says.
#[derive(Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Where the provider sends the browser back: `<this server>/login/oidc/callback`.
    pub redirect_url: String,
    pub scopes: Vec<String>,
    /// The claim holding the Updraft username (`preferred_username`, `email`, ...).
    pub username_claim: String,
    /// A claim listing the teams of an account created here (e.g. `groups`).
    pub teams_claim: Option<String>,
    /// Create an account on first sign-in; off: an admin creates accounts first.
    pub create_users: bool,
    pub default_role: String,
    /// The provider's name on the sign-in button.
    pub name: String,
}

/// The configuration, and the provider's endpoints and keys once fetched.
pub struct Oidc {
    pub config: OidcConfig,
    http: reqwest::Client,
    provider: tokio::sync::Mutex<Option<Provider>>,
}

#[derive(Clone)]
struct Provider {
    fetched: Instant,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    jwks: Jwks,
    /// `client_secret_basic` unless the provider takes only `client_secret_post`.
    basic_auth: bool,
}

/// Endpoints and keys are fetched again after this, and at once for an unknown key.
const PROVIDER_FOR: Duration = Duration::from_secs(3600);
const FLOW_COOKIE: &str = "updraft_oidc";
/// How long a browser may take at the provider.
const FLOW_FOR_SECS: u32 = 600;

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the client secret.
        f.debug_struct("OidcConfig").field("issuer", &self.issuer).field("client_id", &self.client_id).finish()
    }
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc").field("issuer", &self.config.issuer).field("client_id", &self.config.client_id).finish()
    }
}

impl Oidc {
    pub fn new(config: OidcConfig) -> Oidc {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Oidc { config, http, provider: tokio::sync::Mutex::default() }
    }

    async fn provider(&self, refresh: bool) -> Result<Provider, String> {
        let mut cached = self.provider.lock().await;
        if !refresh
            && let Some(provider) = cached.as_ref()
            && provider.fetched.elapsed() < PROVIDER_FOR
        {
            return Ok(provider.clone());
        }
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            authorization_endpoint: String,
            token_endpoint: String,
            jwks_uri: String,
            #[serde(default)]
            token_endpoint_auth_methods_supported: Vec<String>,
        }
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
        let discovery: Discovery = self.get_json(&url).await?;
        if discovery.issuer != self.config.issuer {
            return Err(format!("the provider calls itself `{}`, not `{}`", discovery.issuer, self.config.issuer));
        }
        let jwks: Jwks = self.get_json(&discovery.jwks_uri).await?;
        let methods = &discovery.token_endpoint_auth_methods_supported;
        let basic_auth = methods.is_empty()
            || methods.iter().any(|method| method == "client_secret_basic")
            || !methods.iter().any(|method| method == "client_secret_post");
        let provider = Provider {
            fetched: Instant::now(),
            authorization_endpoint: discovery.authorization_endpoint,
            token_endpoint: discovery.token_endpoint,
            jwks_uri: discovery.jwks_uri,
            jwks,
            basic_auth,
        };
        *cached = Some(provider.clone());
        Ok(provider)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self.http.get(url).send().await.map_err(|error| format!("cannot reach `{url}`: {error}"))?;
        if !response.status().is_success() {
            return Err(format!("`{url}` answered {}", response.status()));
        }
        response.json().await.map_err(|error| format!("`{url}` answered something unexpected: {error}"))
    }

    /// The code traded for the ID token.
    async fn exchange(&self, provider: &Provider, code: &str, verifier: &str) -> Result<String, String> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.config.redirect_url.as_str()),
            ("code_verifier", verifier),
        ];
        let mut request = self.http.post(&provider.token_endpoint);
        if provider.basic_auth {
            // RFC 6749 2.3.1: both parts form-encoded before Basic encoding.
            let encode = |text: &str| serde_urlencoded::to_string([("", text)]).unwrap_or_default()[1..].to_string();
            let pair = format!("{}:{}", encode(&self.config.client_id), encode(&self.config.client_secret));
            let basic = base64::engine::general_purpose::STANDARD.encode(pair);
            request = request.header(header::AUTHORIZATION, format!("Basic {basic}"));
        } else {
            form.push(("client_id", self.config.client_id.as_str()));
            form.push(("client_secret", self.config.client_secret.as_str()));
        }
        let body = serde_urlencoded::to_string(&form).map_err(|error| error.to_string())?;
        let response = request
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|error| format!("cannot reach the token endpoint: {error}"))?;
        let status = response.status();
        #[derive(Deserialize)]
        struct Tokens {
            id_token: Option<String>,
            error: Option<String>,
        }
        let tokens: Tokens =
            response.json().await.map_err(|_| format!("the token endpoint answered {status} without JSON"))?;
        match (tokens.id_token, tokens.error) {
            (Some(id_token), _) if status.is_success() => Ok(id_token),
            (_, Some(error)) => Err(format!("the token endpoint refused the code: {error}")),
            _ => Err(format!("the token endpoint answered {status} without an ID token")),
        }
    }
}

fn random() -> Option<String> {
    updraft_auth::new_token("o").ok().map(|(secret, _)| secret[2..].to_string())
}

fn page(status: StatusCode, detail: &str) -> Response {
    (status, Html(error_page(status.as_u16(), detail).into_string())).into_response()
}

fn flow_cookie(value: &str, max_age: u32, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{FLOW_COOKIE}={value}; Path=/login/oidc; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .ok()
}

#[derive(Debug, Deserialize, Default)]
pub struct Start {
    #[serde(default)]
    next: String,
}

/// To the provider, with this sign-in's secrets in a cookie.
pub async fn start(State(state): State<AppState>, Query(query): Query<Start>) -> Response {
    let Some(oidc) = state.oidc.clone() else {
        return page(StatusCode::NOT_FOUND, "single sign-on is not configured on this server");
    };
    let provider = match oidc.provider(false).await {
        Ok(provider) => provider,
        Err(error) => {
            tracing::error!(%error, "OpenID Connect provider unavailable");
            return page(
                StatusCode::BAD_GATEWAY,
                "the sign-in provider cannot be reached; try again, or use a password",
            );
        }
    };
    let (flow_state, nonce, verifier) = match (random(), random(), random()) {
        (Some(a), Some(b), Some(c)) => (a, b, c),
        _ => return crate::ApiError::Internal("no randomness for a sign-in".into()).into_response(),
    };
    let next = URL_SAFE_NO_PAD.encode(safe_next(&query.next));
    let query = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", oidc.config.client_id.as_str()),
        ("redirect_uri", oidc.config.redirect_url.as_str()),
        ("scope", oidc.config.scopes.join(" ").as_str()),
        ("state", flow_state.as_str()),
        ("nonce", nonce.as_str()),
        ("code_challenge", pkce_challenge(&verifier).as_str()),
        ("code_challenge_method", "S256"),
    ])
    .unwrap_or_default();
    let separator = if provider.authorization_endpoint.contains('?') { '&' } else { '?' };
    let mut response = Redirect::to(&format!("{}{separator}{query}", provider.authorization_endpoint)).into_response();
    if let Some(value) =
        flow_cookie(&format!("{flow_state}.{nonce}.{verifier}.{next}"), FLOW_FOR_SECS, state.secure_cookies)
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[derive(Debug, Deserialize, Default)]
pub struct Callback {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    error: String,
}

/// Back from the provider: check everything, then sign in.
pub async fn callback(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<Callback>) -> Response {
    let mut response = finish(&state, &headers, query).await;
    // The flow's secrets are single-use, whatever happened.
    if let Some(value) = flow_cookie("", 0, state.secure_cookies) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

async fn finish(state: &AppState, headers: &HeaderMap, query: Callback) -> Response {
    let Some(oidc) = state.oidc.clone() else {
        return page(StatusCode::NOT_FOUND, "single sign-on is not configured on this server");
    };
    if !query.error.is_empty() {
        let error: String = query.error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
        return page(StatusCode::FORBIDDEN, &format!("the sign-in provider refused: {error}"));
    }
    let flow = cookie(headers, FLOW_COOKIE).unwrap_or_default();
    let parts: Vec<&str> = flow.split('.').collect();
    let [flow_state, nonce, verifier, next] = parts[..] else {
        return page(StatusCode::BAD_REQUEST, "this sign-in was not started here, or took too long; sign in again");
    };
    if flow_state.is_empty() || !updraft_auth::constant_time_eq(flow_state.as_bytes(), query.state.as_bytes()) {
        return page(StatusCode::BAD_REQUEST, "this sign-in was not started here, or took too long; sign in again");
    }
    let next = URL_SAFE_NO_PAD.decode(next).ok().and_then(|next| String::from_utf8(next).ok()).unwrap_or_default();
    let next = safe_next(&next);
    let refused = |why: String| {
        tracing::warn!(%why, "OpenID Connect sign-in refused");
        page(StatusCode::FORBIDDEN, "the sign-in could not be verified; sign in again, or ask an admin")
    };
    let provider = match oidc.provider(false).await {
        Ok(provider) => provider,
        Err(error) => return refused(error),
    };
    let id_token = match oidc.exchange(&provider, &query.code, verifier).await {
        Ok(id_token) => id_token,
        Err(error) => return refused(error),
    };
    // A key rotated since the keys were fetched: fetch them once more.
    let provider = match token_key_id(&id_token) {
        Some(kid) if !provider.jwks.has(&kid) => match oidc.provider(true).await {
            Ok(provider) => provider,
            Err(error) => return refused(error),
        },
        _ => provider,
    };
    let expected = Expected {
        issuer: &oidc.config.issuer,
        client_id: &oidc.config.client_id,
        nonce,
        now: state.clock.now().as_second(),
    };
    let claims = match verify_id_token(&id_token, &provider.jwks, &expected) {
        Ok(claims) => claims,
        Err(error) => return refused(format!("{error} (keys from `{}`)", provider.jwks_uri)),
    };
    let Some(username) = claims.get(&oidc.config.username_claim).and_then(|value| value.as_str()) else {
        return refused(format!("the ID token has no `{}` claim", oidc.config.username_claim));
    };
    let username = username.to_string();
    if !updraft_auth::valid_username(&username) {
        return refused(format!("`{}` is not a valid username", oidc.config.username_claim));
    }
    let user = match state.store.get_user(&username).await {
        Ok(user) => user,
        Err(error) => return crate::ApiError::from(error).into_response(),
    };
    let user = match user {
        Some(user) => user,
        None if oidc.config.create_users => {
            let teams = oidc
                .config
                .teams_claim
                .as_ref()
                .and_then(|claim| claims.get(claim))
                .and_then(|value| value.as_array())
                .map(|teams| teams.iter().filter_map(|team| team.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            let new = updraft_store::NewUser {
                username: username.clone(),
                // Not a PHC string: no password ever matches it.
                password_hash: "!oidc".to_string(),
                role: oidc.config.default_role.clone(),
                teams,
            };
            let created = async {
                state.store.create_user(&new, state.clock.now()).await?;
                state.store.get_user(&username).await
            };
            match created.await {
                Ok(Some(user)) => {
                    let detail = format!("role {}, teams {}", user.role, user.teams.join(","));
                    crate::audit::record(state, "oidc", "user_create", &username, Some(detail)).await;
                    user
                }
                Ok(None) => return crate::ApiError::Internal("the new account vanished".into()).into_response(),
                Err(error) => return crate::ApiError::from(error).into_response(),
            }
        }
        None => {
            crate::audit::record(state, &username, "sign_in_failed", &username, Some("oidc: no account".into())).await;
            return page(
                StatusCode::FORBIDDEN,
                &format!("there is no Updraft account `{username}` yet; ask an admin to create it"),
            );
        }
    };
    start_session(state, &user, &next, Some("oidc".to_string())).await
}
