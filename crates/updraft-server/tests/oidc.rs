//! OpenID Connect sign-in against a small local provider started by the test: it
//! publishes discovery and its RSA key (JWKS), approves the sign-in of whoever the
//! test names, checks the client's secret, redirect URI and PKCE verifier at its
//! token endpoint, and signs ID tokens (RS256) — or, when told, forges them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::signature::KeyPair;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use updraft_core::clock::{Clock, SystemClock};
use updraft_server::{AppState, AuthMode, OidcConfig};
use updraft_store::{DagUpsert, NewUser, Store};

const CLIENT_SECRET: &str = "client-secret-for-tests";

struct Provider {
    issuer: String,
    key: aws_lc_rs::rsa::KeyPair,
    other_key: aws_lc_rs::rsa::KeyPair,
    /// Who approves the next sign-in, and their groups.
    user: Mutex<(String, Vec<String>)>,
    /// Sign with a key the JWKS does not hold.
    forge: AtomicBool,
    /// code -> (nonce, code_challenge, redirect_uri)
    codes: Mutex<HashMap<String, (String, String, String)>>,
}

fn jwk(key: &aws_lc_rs::rsa::KeyPair) -> serde_json::Value {
    let public = key.public_key();
    serde_json::json!({
        "kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
        "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
    })
}

async fn discovery(State(p): State<Arc<Provider>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "issuer": p.issuer,
        "authorization_endpoint": format!("{}/authorize", p.issuer),
        "token_endpoint": format!("{}/token", p.issuer),
        "jwks_uri": format!("{}/jwks", p.issuer),
        "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    }))
}

async fn jwks(State(p): State<Arc<Provider>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "keys": [jwk(&p.key)] }))
}

/// Approves at once, as a signed-in provider session would.
async fn authorize(State(p): State<Arc<Provider>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let field = |name: &str| query.get(name).cloned().unwrap_or_default();
    let scopes = field("scope");
    if field("client_id") != "updraft"
        || field("response_type") != "code"
        || field("code_challenge_method") != "S256"
        || !scopes.split(' ').any(|scope| scope == "openid")
    {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let code = format!("code-{}", p.codes.lock().unwrap().len());
    p.codes.lock().unwrap().insert(code.clone(), (field("nonce"), field("code_challenge"), field("redirect_uri")));
    let back = format!("{}?code={code}&state={}", field("redirect_uri"), field("state"));
    Redirect::to(&back).into_response()
}

async fn token(State(p): State<Arc<Provider>>, headers: HeaderMap, body: String) -> Response {
    let refuse =
        |error: &str| (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({ "error": error }))).into_response();
    let basic = format!("Basic {}", STANDARD.encode(format!("updraft:{CLIENT_SECRET}")));
    if headers.get("authorization").and_then(|value| value.to_str().ok()) != Some(basic.as_str()) {
        return (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({ "error": "invalid_client" })))
            .into_response();
    }
    let form: HashMap<String, String> = serde_urlencoded::from_str(&body).unwrap();
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let Some((nonce, challenge, redirect_uri)) = p.codes.lock().unwrap().remove(&field("code")) else {
        return refuse("invalid_grant");
    };
    if field("grant_type") != "authorization_code" || field("redirect_uri") != redirect_uri {
        return refuse("invalid_grant");
    }
    if updraft_auth::oidc::pkce_challenge(&field("code_verifier")) != challenge {
        return refuse("invalid_grant");
    }
    let (username, groups) = p.user.lock().unwrap().clone();
    let now = jiff::Timestamp::now().as_second();
    let claims = serde_json::json!({
        "iss": p.issuer, "aud": "updraft", "sub": format!("sub-{username}"), "iat": now, "exp": now + 300,
        "nonce": nonce, "preferred_username": username, "groups": groups,
    });
    let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": "k1" });
    let signed =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let key = if p.forge.load(Ordering::SeqCst) { &p.other_key } else { &p.key };
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .unwrap();
    let id_token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature));
    axum::Json(
        serde_json::json!({ "access_token": "at", "token_type": "Bearer", "expires_in": 300, "id_token": id_token }),
    )
    .into_response()
}

struct Setup {
    base: String,
    store: Store,
    provider: Arc<Provider>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn setup(create_users: bool) -> Setup {
    let provider_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", provider_listener.local_addr().unwrap());
    let generate = || aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let provider = Arc::new(Provider {
        issuer: issuer.clone(),
        key: generate(),
        other_key: generate(),
        user: Mutex::new(("grace".into(), vec!["ml".into()])),
        forge: AtomicBool::new(false),
        codes: Mutex::default(),
    });
    let router = axum::Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .with_state(provider.clone());
    tokio::spawn(async move { axum::serve(provider_listener, router).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let store = updraft_store::open("sqlite://updraft.db", dir.path()).await.unwrap();
    let now = SystemClock.now();
    let mut upserts = Vec::new();
    for (dag, owner) in [("sales", "analytics"), ("scores", "ml")] {
        let text = format!("dag: {dag}\nowner: {owner}\ntasks:\n  a: {{shell: 'echo a'}}\n");
        let dag = Arc::new(updraft_dagfile::parse_dag(&text, &format!("{dag}.yaml")).dag.unwrap());
        upserts.push(DagUpsert { version: updraft_dagfile::version_of(&dag), dag, paused_if_new: false, source: None });
    }
    store.upsert_dags(&upserts, now).await.unwrap();
    let analyst = NewUser {
        username: "analyst".into(),
        password_hash: updraft_auth::hash_password("a long test password").unwrap(),
        role: "user".into(),
        teams: vec!["analytics".into()],
    };
    store.create_user(&analyst, now).await.unwrap().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let config = OidcConfig {
        issuer,
        client_id: "updraft".into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_url: format!("{base}/login/oidc/callback"),
        scopes: vec!["openid".into(), "profile".into()],
        username_claim: "preferred_username".into(),
        teams_claim: Some("groups".into()),
        create_users,
        default_role: "viewer".into(),
        name: "Test IdP".into(),
    };
    let state = AppState::new(store.clone(), Arc::new(SystemClock), None)
        .with_auth(AuthMode::Password, false)
        .with_oidc(Some(config));
    tokio::spawn(updraft_server::serve(listener, state, std::future::pending()));
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    Setup { base, store, provider, client, _dir: dir }
}

fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with(&format!("{name}=")) && !value.starts_with(&format!("{name}=;")))
        .map(|value| value.split(';').next().unwrap().to_string())
}

impl Setup {
    /// Runs the browser's part of the flow: to the provider and back. The
    /// callback's answer, and the flow cookie it carried.
    async fn sign_in(&self, next: &str) -> (reqwest::Response, String, String) {
        let started = self.client.get(format!("{}/login/oidc?next={next}", self.base)).send().await.unwrap();
        assert_eq!(started.status(), StatusCode::SEE_OTHER);
        let flow = set_cookie(&started, "updraft_oidc").expect("the flow's cookie");
        let to_provider = started.headers()[LOCATION].to_str().unwrap().to_string();
        assert!(to_provider.contains("code_challenge=") && to_provider.contains("nonce="), "{to_provider}");
        let approved = self.client.get(&to_provider).send().await.unwrap();
        let back = approved.headers()[LOCATION].to_str().unwrap().to_string();
        let answer = self.client.get(&back).header(COOKIE, &flow).send().await.unwrap();
        (answer, flow, back)
    }

    async fn dags(&self, session: &str) -> (StatusCode, String) {
        let answer =
            self.client.get(format!("{}/api/v1/dags", self.base)).header(COOKIE, session).send().await.unwrap();
        (answer.status(), answer.text().await.unwrap())
    }
}

#[tokio::test]
async fn a_new_account_signs_in_through_the_provider_with_its_teams() {
    let s = setup(true).await;
    let page = s.client.get(format!("{}/login", s.base)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Sign in with Test IdP"), "{page}");

    let (answer, _, _) = s.sign_in("/dags/scores").await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(answer.headers()[LOCATION], "/dags/scores", "back to the page asked for");
    let session = set_cookie(&answer, "updraft_session").expect("a session");
    let flags: Vec<&str> = answer.headers().get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).collect();
    assert!(flags.iter().any(|flag| flag.starts_with("updraft_oidc=;") && flag.contains("Max-Age=0")), "{flags:?}");
    let (status, text) = s.dags(&session).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains(r#""dag_id":"scores""#) && !text.contains(r#""dag_id":"sales""#), "team ml only: {text}");
    let grace = s.store.get_user("grace").await.unwrap().unwrap();
    assert_eq!((grace.role.as_str(), grace.teams.clone()), ("viewer", vec!["ml".to_string()]));
    assert!(!updraft_auth::verify_password("", &grace.password_hash), "no password sign-in for it");
    let audit = s.store.audit_log(None, 20).await.unwrap();
    assert!(audit.iter().any(|row| row.entry.action == "user_create" && row.entry.target == "grace"));
    assert!(audit.iter().any(|row| row.entry.action == "sign_in" && row.entry.detail.as_deref() == Some("oidc")));

    // An existing account signs in the same way, with the teams it has.
    *s.provider.user.lock().unwrap() = ("analyst".into(), vec!["ml".into()]);
    let (answer, _, _) = s.sign_in("/").await;
    let session = set_cookie(&answer, "updraft_session").expect("a session");
    let (_, text) = s.dags(&session).await;
    assert!(text.contains(r#""dag_id":"sales""#) && !text.contains(r#""dag_id":"scores""#), "{text}");
}

#[tokio::test]
async fn forged_replayed_or_foreign_sign_ins_are_refused() {
    let s = setup(true).await;
    // A token signed with a key the provider does not publish.
    s.provider.forge.store(true, Ordering::SeqCst);
    let (answer, _, _) = s.sign_in("/").await;
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(set_cookie(&answer, "updraft_session").is_none());
    assert!(s.store.get_user("grace").await.unwrap().is_none(), "no account made");
    s.provider.forge.store(false, Ordering::SeqCst);

    // The callback without the browser's flow cookie (another browser, or a
    // login-CSRF attempt), or with another flow's state.
    let started = s.client.get(format!("{}/login/oidc", s.base)).send().await.unwrap();
    let flow = set_cookie(&started, "updraft_oidc").unwrap();
    let approved = s.client.get(started.headers()[LOCATION].to_str().unwrap()).send().await.unwrap();
    let back = approved.headers()[LOCATION].to_str().unwrap().to_string();
    let without = s.client.get(&back).send().await.unwrap();
    assert_eq!(without.status(), StatusCode::BAD_REQUEST);
    let other_state = back.replace("state=", "state=x");
    let mismatched = s.client.get(&other_state).header(COOKIE, &flow).send().await.unwrap();
    assert_eq!(mismatched.status(), StatusCode::BAD_REQUEST);
    // A code is good once.
    let first = s.client.get(&back).header(COOKIE, &flow).send().await.unwrap();
    assert!(set_cookie(&first, "updraft_session").is_some());
    let again = s.client.get(&back).header(COOKIE, &flow).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::FORBIDDEN, "the code was used");

    let refused =
        s.client.get(format!("{}/login/oidc/callback?error=access_denied&state=x", s.base)).header(COOKIE, &flow);
    assert_eq!(refused.send().await.unwrap().status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn without_account_creation_only_existing_accounts_get_in() {
    let s = setup(false).await;
    let (answer, _, _) = s.sign_in("/").await;
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(answer.text().await.unwrap().contains("no Updraft account `grace`"));
    assert!(s.store.get_user("grace").await.unwrap().is_none());
    *s.provider.user.lock().unwrap() = ("analyst".into(), vec![]);
    let (answer, _, _) = s.sign_in("/").await;
    assert!(set_cookie(&answer, "updraft_session").is_some());
}
