//! Sign-in and permissions with `webserver.auth = "password"`, over real HTTP:
//! every API route against every role (a table that must cover the whole OpenAPI
//! document), sessions, lockout, CSRF, and nothing leaked in refusals.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::Value;
use updraft_core::clock::{Clock, SystemClock};
use updraft_server::{AppState, AuthMode};
use updraft_store::{DagUpsert, NewUser, Store};

const PASSWORD: &str = "a long test password";

struct Server {
    base: String,
    store: Store,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// DAGs `sales` and `archive` (team analytics) and `scores` (team ml), a run `r1`
/// of `sales`, and one account per role; no Fernet key.
async fn server() -> Server {
    server_with(None).await
}

async fn server_with(cipher: Option<updraft_auth::Cipher>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = updraft_store::open("sqlite://updraft.db", dir.path()).await.unwrap();
    let now = SystemClock.now();
    let mut upserts = Vec::new();
    for (dag, owner) in [("sales", "analytics"), ("archive", "analytics"), ("scores", "ml")] {
        let text = format!(
            "dag: {dag}\nowner: {owner}\ntasks:\n  a: {{shell: 'echo a'}}\n  b: {{shell: 'echo b', depends_on: [a]}}\n"
        );
        let dag = Arc::new(updraft_dagfile::parse_dag(&text, &format!("{dag}.yaml")).dag.unwrap());
        upserts.push(DagUpsert { version: updraft_dagfile::version_of(&dag), dag, paused_if_new: false, source: None });
    }
    store.upsert_dags(&upserts, now).await.unwrap();
    let hash = updraft_auth::hash_password(PASSWORD).unwrap();
    for (name, role, teams) in [
        ("viewer", "viewer", vec!["analytics"]),
        ("analyst", "user", vec!["analytics"]),
        ("scientist", "user", vec!["ml"]),
        ("operator", "op", vec![]),
        ("admin", "admin", vec![]),
    ] {
        let user = NewUser {
            username: name.into(),
            password_hash: hash.clone(),
            role: role.into(),
            teams: teams.into_iter().map(String::from).collect(),
        };
        store.create_user(&user, now).await.unwrap().unwrap();
    }
    let state = AppState::new(store.clone(), Arc::new(SystemClock), None)
        .with_auth(AuthMode::Password, false)
        .with_cipher(cipher.map(Arc::new));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(updraft_server::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let server = Server { base, store, client, stop: Some(stop), _dir: dir };
    // A run to act on, made by the admin.
    let admin = server.sign_in("admin", PASSWORD).await.unwrap();
    let made = server.call(&admin, "POST", "/api/v1/dags/sales/runs", Some(r#"{"run_id": "r1"}"#)).await;
    assert_eq!(made.0, StatusCode::CREATED);
    server
}

/// A browser's cookies: session and CSRF.
#[derive(Debug)]
struct Session {
    cookie: String,
}

impl Server {
    async fn csrf(&self) -> String {
        let page = self.client.get(format!("{}/login", self.base)).send().await.unwrap();
        let cookie = page.headers()["set-cookie"].to_str().unwrap();
        cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_string()
    }

    /// Signs in; the session's cookies, or the page that refused.
    async fn sign_in(&self, username: &str, password: &str) -> Result<Session, String> {
        let csrf = self.csrf().await;
        let body =
            serde_urlencoded::to_string([("csrf", csrf.as_str()), ("username", username), ("password", password)])
                .unwrap();
        let answer = self
            .client
            .post(format!("{}/login", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", format!("updraft_csrf={csrf}"))
            .body(body)
            .send()
            .await
            .unwrap();
        let session = answer
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find(|value| value.starts_with("updraft_session=") && !value.starts_with("updraft_session=;"))
            .map(|value| value.split(';').next().unwrap().to_string());
        match session {
            Some(session) => {
                let flags = answer.headers()["set-cookie"].to_str().unwrap().to_string();
                assert_eq!(answer.status(), StatusCode::SEE_OTHER);
                let all: Vec<&str> =
                    answer.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).collect();
                let session_flags = all.iter().find(|value| value.starts_with("updraft_session=")).unwrap();
                assert!(session_flags.contains("HttpOnly") && session_flags.contains("SameSite=Lax"), "{flags}");
                Ok(Session { cookie: format!("{session}; updraft_csrf={csrf}") })
            }
            None => Err(answer.text().await.unwrap()),
        }
    }

    async fn call(&self, session: &Session, method: &str, path: &str, body: Option<&str>) -> (StatusCode, String) {
        let mut request = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .header("cookie", &session.cookie);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let answer = request.send().await.unwrap();
        (answer.status(), answer.text().await.unwrap())
    }

    /// Posts a page's form with the session's CSRF token.
    async fn post_form(&self, session: &Session, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let csrf = session.cookie.split("updraft_csrf=").nth(1).unwrap().to_string();
        let mut pairs = vec![("csrf", csrf.as_str())];
        pairs.extend_from_slice(fields);
        self.client
            .post(format!("{}{path}", self.base))
            .header("cookie", &session.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(&pairs).unwrap())
            .send()
            .await
            .unwrap()
    }

    async fn page(&self, session: &Session, path: &str) -> (StatusCode, String) {
        let answer =
            self.client.get(format!("{}{path}", self.base)).header("cookie", &session.cookie).send().await.unwrap();
        (answer.status(), answer.text().await.unwrap())
    }
}

#[tokio::test]
async fn without_a_session_the_api_says_401_and_pages_ask_to_sign_in() {
    let s = server().await;
    let api = s.client.get(format!("{}/api/v1/dags", s.base)).send().await.unwrap();
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(api.headers()["www-authenticate"], "Bearer");
    let body = api.text().await.unwrap();
    assert!(!body.contains("sales"), "nothing leaked: {body}");
    let page = s.client.get(format!("{}/dags/sales?tab=code", s.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()["location"], "/login?next=%2Fdags%2Fsales%3Ftab%3Dcode");
    // Monitoring stays open; a made-up session is no session.
    assert_eq!(s.client.get(format!("{}/api/v1/health", s.base)).send().await.unwrap().status(), StatusCode::OK);
    let fake = Session { cookie: "updraft_session=session_0000".into() };
    assert_eq!(s.call(&fake, "GET", "/api/v1/dags", None).await.0, StatusCode::UNAUTHORIZED);
}

/// Whether a role may: `R` read analytics DAGs, `E` edit them, `P` every signed-in
/// caller, `A` everyone (public).
#[derive(Clone, Copy)]
enum Needs {
    ReadAnalytics,
    EditAnalytics,
    SignedIn,
    Public,
    AdminOnly,
    OpOrAdmin,
}

#[tokio::test]
async fn every_api_route_checks_every_role() {
    use Needs::*;
    let s = server().await;
    // (method, path template, concrete path, body, what it needs)
    let routes: Vec<(&str, &str, &str, Option<&str>, Needs)> = vec![
        ("GET", "/api/v1/dags", "/api/v1/dags", None, SignedIn),
        ("GET", "/api/v1/dags/{dag_id}", "/api/v1/dags/sales", None, ReadAnalytics),
        ("PATCH", "/api/v1/dags/{dag_id}", "/api/v1/dags/sales", Some(r#"{"is_paused": false}"#), EditAnalytics),
        ("GET", "/api/v1/dags/{dag_id}/source", "/api/v1/dags/sales/source", None, ReadAnalytics),
        ("GET", "/api/v1/importErrors", "/api/v1/importErrors", None, SignedIn),
        ("GET", "/api/v1/dags/{dag_id}/runs", "/api/v1/dags/sales/runs", None, ReadAnalytics),
        ("POST", "/api/v1/dags/{dag_id}/runs", "/api/v1/dags/sales/runs", Some("{}"), EditAnalytics),
        ("GET", "/api/v1/dags/{dag_id}/runs/{run_id}", "/api/v1/dags/sales/runs/r1", None, ReadAnalytics),
        (
            "PATCH",
            "/api/v1/dags/{dag_id}/runs/{run_id}",
            "/api/v1/dags/sales/runs/r1",
            Some(r#"{"state": "bogus"}"#),
            SignedIn,
        ),
        ("DELETE", "/api/v1/dags/{dag_id}/runs/{run_id}", "/api/v1/dags/sales/runs/r1", None, EditAnalytics),
        ("GET", "/api/v1/dags/{dag_id}/runs/{run_id}/tasks", "/api/v1/dags/sales/runs/r1/tasks", None, ReadAnalytics),
        (
            "GET",
            "/api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}",
            "/api/v1/dags/sales/runs/r1/tasks/a",
            None,
            ReadAnalytics,
        ),
        (
            "PATCH",
            "/api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}",
            "/api/v1/dags/sales/runs/r1/tasks/zzz",
            Some(r#"{"state": "success"}"#),
            EditAnalytics,
        ),
        (
            "POST",
            "/api/v1/dags/{dag_id}/runs/{run_id}/clear",
            "/api/v1/dags/sales/runs/r1/clear",
            Some(r#"{"task_ids": ["zzz"]}"#),
            EditAnalytics,
        ),
        (
            "GET",
            "/api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/tries/{try_number}/log",
            "/api/v1/dags/sales/runs/r1/tasks/a/tries/1/log",
            None,
            ReadAnalytics,
        ),
        (
            "GET",
            "/api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/output",
            "/api/v1/dags/sales/runs/r1/tasks/a/output",
            None,
            ReadAnalytics,
        ),
        (
            "GET",
            "/api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/tries/{try_number}/log/stream",
            "/api/v1/dags/sales/runs/r1/tasks/a/tries/1/log/stream",
            None,
            ReadAnalytics,
        ),
        ("GET", "/api/v1/pools", "/api/v1/pools", None, SignedIn),
        ("GET", "/api/v1/health", "/api/v1/health", None, Public),
        ("GET", "/api/v1/version", "/api/v1/version", None, Public),
        ("GET", "/api/v1/auditLog", "/api/v1/auditLog", None, AdminOnly),
        ("GET", "/api/v1/variables", "/api/v1/variables", None, OpOrAdmin),
        ("GET", "/api/v1/variables/{key}", "/api/v1/variables/nope", None, OpOrAdmin),
        ("PUT", "/api/v1/variables/{key}", "/api/v1/variables/region", Some(r#"{"value": "eu"}"#), OpOrAdmin),
        ("DELETE", "/api/v1/variables/{key}", "/api/v1/variables/nope", None, OpOrAdmin),
        ("GET", "/api/v1/connections", "/api/v1/connections", None, OpOrAdmin),
        ("GET", "/api/v1/connections/{conn_id}", "/api/v1/connections/nope", None, OpOrAdmin),
        (
            "PUT",
            "/api/v1/connections/{conn_id}",
            "/api/v1/connections/db",
            Some(r#"{"conn_type": "postgres"}"#),
            OpOrAdmin,
        ),
        ("DELETE", "/api/v1/connections/{conn_id}", "/api/v1/connections/nope", None, OpOrAdmin),
    ];
    // The table covers the whole API: a new route without a row fails here.
    let document: Value =
        s.client.get(format!("{}/api/v1/openapi.json", s.base)).send().await.unwrap().json().await.unwrap();
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item[method].is_object() {
                documented.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let mut covered: Vec<String> = routes.iter().map(|(method, template, ..)| format!("{method} {template}")).collect();
    documented.sort();
    covered.sort();
    assert_eq!(covered, documented, "every route has a row");

    // (user, reads analytics, edits analytics)
    let roles = [
        ("viewer", true, false),
        ("analyst", true, true),
        ("scientist", false, false),
        ("operator", false, false),
        ("admin", true, true),
    ];
    let anonymous = Session { cookie: String::new() };
    for (user, reads, edits) in roles {
        let session = s.sign_in(user, PASSWORD).await.unwrap();
        for (method, _, path, body, needs) in &routes {
            let (status, text) = s.call(&session, method, path, *body).await;
            let allowed = match needs {
                ReadAnalytics => reads,
                EditAnalytics => edits,
                SignedIn | Public => true,
                AdminOnly => user == "admin",
                OpOrAdmin => user == "operator" || user == "admin",
            };
            if allowed {
                assert!(
                    status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                    "{user} {method} {path}: {status} {text}"
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{user} {method} {path}: {text}");
                assert!(!text.contains("\"a\"") && !text.contains("echo"), "a refusal leaks nothing: {text}");
            }
            let (status, _) = s.call(&anonymous, method, path, *body).await;
            let expected = if matches!(needs, Public) { status } else { StatusCode::UNAUTHORIZED };
            assert_eq!(status, expected, "anonymous {method} {path}");
        }
    }
    // Lists show only the caller's teams.
    for (user, dags) in [("viewer", 2), ("scientist", 1), ("operator", 0), ("admin", 3)] {
        let session = s.sign_in(user, PASSWORD).await.unwrap();
        let (_, text) = s.call(&session, "GET", "/api/v1/dags", None).await;
        let list: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(list["total_entries"], dags, "{user}: {text}");
    }
}

#[tokio::test]
async fn sessions_end_at_sign_out_and_repeated_failures_lock_an_account() {
    let s = server().await;
    let session = s.sign_in("analyst", PASSWORD).await.unwrap();
    assert_eq!(s.call(&session, "GET", "/api/v1/dags", None).await.0, StatusCode::OK);
    let page = s.client.get(format!("{}/", s.base)).header("cookie", &session.cookie).send().await.unwrap();
    let html = page.text().await.unwrap();
    assert!(html.contains("analyst (user)") && html.contains("Sign out"), "{html}");
    let csrf = session.cookie.split("updraft_csrf=").nth(1).unwrap().to_string();
    let out = s
        .client
        .post(format!("{}/logout", s.base))
        .header("cookie", &session.cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(s.call(&session, "GET", "/api/v1/dags", None).await.0, StatusCode::UNAUTHORIZED, "the session is gone");

    // Wrong passwords and unknown accounts read the same.
    let wrong = s.sign_in("analyst", "not the password").await.unwrap_err();
    let unknown = s.sign_in("nobody", "not the password").await.unwrap_err();
    let message = "Wrong username or password";
    assert!(wrong.contains(message) && unknown.contains(message));
    for _ in 0..4 {
        s.sign_in("analyst", "not the password").await.unwrap_err();
    }
    let locked = s.sign_in("analyst", PASSWORD).await.unwrap_err();
    assert!(locked.contains(message), "locked after five failures, even with the right password");
    assert!(s.store.get_user("analyst").await.unwrap().unwrap().locked_until.is_some());
    // An admin's reset lifts the lock.
    s.store.set_password("analyst", &updraft_auth::hash_password(PASSWORD).unwrap()).await.unwrap();
    assert!(s.sign_in("analyst", PASSWORD).await.is_ok());
}

#[tokio::test]
async fn pages_follow_the_same_permissions() {
    let s = server().await;
    let viewer = s.sign_in("viewer", PASSWORD).await.unwrap();
    let get = |path: &str| s.client.get(format!("{}{path}", s.base)).header("cookie", &viewer.cookie).send();
    let list = get("/").await.unwrap().text().await.unwrap();
    assert!(list.contains(r#"data-dag="sales""#) && !list.contains(r#"data-dag="scores""#), "{list}");
    assert_eq!(get("/dags/scores").await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(get("/dags/sales").await.unwrap().status(), StatusCode::OK);
    let csrf = viewer.cookie.split("updraft_csrf=").nth(1).unwrap().to_string();
    let pause = s
        .client
        .post(format!("{}/dags/sales/paused", s.base))
        .header("cookie", &viewer.cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&paused=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(pause.status(), StatusCode::FORBIDDEN, "a viewer cannot pause");
    assert!(!s.store.get_dag("sales").await.unwrap().unwrap().is_paused);
}

#[tokio::test]
async fn api_tokens_carry_their_owners_rights_capped_by_their_scope() {
    let s = server().await;
    let now = SystemClock.now();
    let token = |username: &'static str, scope: &'static str, expires: Option<jiff::Timestamp>| {
        let store = s.store.clone();
        async move {
            let (secret, hash) = updraft_auth::new_token("updraft").unwrap();
            let id = store.create_api_token(username, "test", &hash, scope, expires, now).await.unwrap().unwrap();
            (id, secret)
        }
    };
    let call = |secret: String, method: &'static str, path: &'static str, body: Option<&'static str>| {
        let client = s.client.clone();
        let url = format!("{}{path}", s.base);
        async move {
            let mut request = client.request(method.parse().unwrap(), url).bearer_auth(secret);
            if let Some(body) = body {
                request = request.header("content-type", "application/json").body(body);
            }
            let answer = request.send().await.unwrap();
            (answer.status(), answer.text().await.unwrap())
        }
    };
    let pause = Some(r#"{"is_paused": false}"#);
    let (write_id, write) = token("analyst", "write", Some(now + jiff::SignedDuration::from_hours(1))).await;
    assert_eq!(call(write.clone(), "GET", "/api/v1/dags/sales", None).await.0, StatusCode::OK);
    assert_eq!(call(write.clone(), "PATCH", "/api/v1/dags/sales", pause).await.0, StatusCode::OK);
    let (status, text) = call(write.clone(), "GET", "/api/v1/dags/scores", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another team's DAG");
    assert!(!text.contains("ml"), "nothing about it leaks: {text}");
    let used = s.store.api_tokens(Some("analyst")).await.unwrap();
    assert!(used.iter().any(|row| row.token_id == write_id && row.last_used_at.is_some()));

    let (_, read) = token("analyst", "read", None).await;
    assert_eq!(call(read.clone(), "GET", "/api/v1/dags/sales", None).await.0, StatusCode::OK);
    assert_eq!(call(read, "PATCH", "/api/v1/dags/sales", pause).await.0, StatusCode::FORBIDDEN, "read scope");

    let (_, expired) = token("analyst", "write", Some(now - jiff::SignedDuration::from_secs(1))).await;
    let (status, text) = call(expired, "GET", "/api/v1/dags/sales", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(text.contains("unknown, revoked or expired"), "{text}");
    assert_eq!(call("updraft_bogus".into(), "GET", "/api/v1/dags", None).await.0, StatusCode::UNAUTHORIZED);
    assert!(s.store.delete_api_token(write_id).await.unwrap());
    assert_eq!(call(write, "GET", "/api/v1/dags/sales", None).await.0, StatusCode::UNAUTHORIZED, "revoked");
}

#[tokio::test]
async fn the_audit_log_records_who_did_what_for_admins_only() {
    let s = server().await;
    let analyst = s.sign_in("analyst", PASSWORD).await.unwrap();
    s.call(&analyst, "PATCH", "/api/v1/dags/sales", Some(r#"{"is_paused": true}"#)).await;
    s.sign_in("analyst", "wrong password").await.unwrap_err();
    assert_eq!(s.call(&analyst, "GET", "/api/v1/auditLog", None).await.0, StatusCode::FORBIDDEN);
    let admin = s.sign_in("admin", PASSWORD).await.unwrap();
    let (status, text) = s.call(&admin, "GET", "/api/v1/auditLog?limit=50", None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let log: Value = serde_json::from_str(&text).unwrap();
    let entries: Vec<(String, String, String)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let field = |name: &str| entry[name].as_str().unwrap().to_string();
            (field("actor"), field("action"), field("target"))
        })
        .collect();
    for expected in [
        ("admin", "sign_in", "admin"),
        ("api:admin", "trigger", "sales/r1"),
        ("analyst", "sign_in", "analyst"),
        ("api:analyst", "pause", "sales"),
        ("analyst", "sign_in_failed", "analyst"),
    ] {
        let expected = (expected.0.to_string(), expected.1.to_string(), expected.2.to_string());
        assert!(entries.contains(&expected), "{expected:?} in {entries:?}");
    }
    assert!(!text.contains(PASSWORD) && !text.contains("wrong password"), "no password in the log");
    let page = s.client.get(format!("{}/audit", s.base)).header("cookie", &admin.cookie).send().await.unwrap();
    assert!(page.text().await.unwrap().contains("sign_in_failed"));
    let refused = s.client.get(format!("{}/audit", s.base)).header("cookie", &analyst.cookie).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn without_a_fernet_key_variables_and_connections_are_refused_not_stored_in_clear() {
    let s = server().await;
    let operator = s.sign_in("operator", PASSWORD).await.unwrap();
    let (status, text) = s.call(&operator, "PUT", "/api/v1/variables/token", Some(r#"{"value": "abc-secret"}"#)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(text.contains("no `core.fernet_key`"), "{text}");
    assert!(s.store.variable("token").await.unwrap().is_none(), "nothing stored");
}

#[tokio::test]
async fn variables_and_connections_pages_never_send_a_secret_to_the_browser() {
    let key = updraft_auth::Cipher::generate_key();
    let cipher = updraft_auth::Cipher::from_keys(&key).unwrap();
    let s = server_with(Some(updraft_auth::Cipher::from_keys(&key).unwrap())).await;
    let analyst = s.sign_in("analyst", PASSWORD).await.unwrap();
    for path in ["/variables", "/connections"] {
        assert_eq!(s.page(&analyst, path).await.0, StatusCode::FORBIDDEN, "{path} is for ops and admins");
    }
    let refused = s.post_form(&analyst, "/variables", &[("key", "k"), ("value", "v")]).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let (_, home) = s.page(&analyst, "/").await;
    assert!(!home.contains("href=\"/connections\""), "no link a user cannot follow");

    let operator = s.sign_in("operator", PASSWORD).await.unwrap();
    let saved = s
        .post_form(
            &operator,
            "/connections",
            &[
                ("conn_id", "warehouse"),
                ("conn_type", "postgres"),
                ("host", "db.internal"),
                ("port", "5432"),
                ("login", "loader"),
                ("password", "ui-pass-5678"),
                ("extra", r#"{"sslmode": "require", "client_secret": "xyz-sec-1"}"#),
            ],
        )
        .await;
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    let (status, html) = s.page(&operator, "/connections").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("warehouse") && html.contains("db.internal") && html.contains("sslmode"), "{html}");
    assert!(!html.contains("ui-pass-5678") && !html.contains("xyz-sec-1"), "{html}");
    let row = s.store.connection("warehouse").await.unwrap().unwrap();
    let stored = row.password.clone().unwrap();
    assert_ne!(stored, "ui-pass-5678", "encrypted at rest");
    assert_eq!(cipher.decrypt(&stored).unwrap(), "ui-pass-5678");

    // Saving again without a password or extra changes the rest and keeps them.
    let changed = s
        .post_form(
            &operator,
            "/connections",
            &[("conn_id", "warehouse"), ("conn_type", "postgres"), ("host", "db2.internal")],
        )
        .await;
    assert_eq!(changed.status(), StatusCode::SEE_OTHER);
    let row = s.store.connection("warehouse").await.unwrap().unwrap();
    assert_eq!(row.host.as_deref(), Some("db2.internal"));
    assert_eq!(cipher.decrypt(row.password.as_ref().unwrap()).unwrap(), "ui-pass-5678");
    assert!(cipher.decrypt(row.extra.as_ref().unwrap()).unwrap().contains("xyz-sec-1"));
    let bad =
        s.post_form(&operator, "/connections", &[("conn_id", "w2"), ("conn_type", "x"), ("extra", "[hunter2]")]).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(!bad.text().await.unwrap().contains("hunter2"), "bad input is not echoed");

    for (key, value) in [("vendor_api_key", "sk-live-24680"), ("region", "eu-west-1")] {
        let saved = s.post_form(&operator, "/variables", &[("key", key), ("value", value)]).await;
        assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    }
    let (_, html) = s.page(&operator, "/variables").await;
    assert!(html.contains("vendor_api_key") && html.contains("eu-west-1") && !html.contains("sk-live-24680"), "{html}");
    assert_eq!(s.post_form(&operator, "/variables/region/delete", &[]).await.status(), StatusCode::SEE_OTHER);
    assert!(s.store.variable("region").await.unwrap().is_none());
    assert_eq!(s.post_form(&operator, "/connections/warehouse/delete", &[]).await.status(), StatusCode::SEE_OTHER);
    assert!(s.store.connection("warehouse").await.unwrap().is_none());
    let audit = s.store.audit_log(None, 100).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|row| row.entry.action.as_str()).collect();
    for action in ["connection_set", "variable_set", "variable_delete", "connection_delete"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

#[tokio::test]
async fn tokens_made_in_the_ui_are_shown_once_and_work_until_revoked() {
    let s = server().await;
    let analyst = s.sign_in("analyst", PASSWORD).await.unwrap();
    let (status, html) = s.page(&analyst, "/tokens").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("No tokens yet"), "{html}");
    let made = s.post_form(&analyst, "/tokens", &[("name", "ci"), ("scope", "read"), ("expires_in", "30d")]).await;
    assert_eq!(made.status(), StatusCode::OK);
    assert_eq!(made.headers()["cache-control"], "no-store");
    let html = made.text().await.unwrap();
    let secret = html.split("id=\"new-token\">").nth(1).unwrap().split('<').next().unwrap().to_string();
    assert!(secret.starts_with("updraft_"), "{secret}");
    let api = |secret: String, method: &'static str, path: &'static str, body: Option<&'static str>| {
        let request = s.client.request(method.parse().unwrap(), format!("{}{path}", s.base)).bearer_auth(secret);
        let request = match body {
            Some(body) => request.header("content-type", "application/json").body(body),
            None => request,
        };
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(api(secret.clone(), "GET", "/api/v1/dags/sales", None).await, StatusCode::OK);
    let pause = Some(r#"{"is_paused": true}"#);
    assert_eq!(api(secret.clone(), "PATCH", "/api/v1/dags/sales", pause).await, StatusCode::FORBIDDEN, "read scope");
    let (_, listed) = s.page(&analyst, "/tokens").await;
    assert!(listed.contains(">ci<") && !listed.contains(&secret), "listed, never shown again");
    let rows = s.store.api_tokens(Some("analyst")).await.unwrap();
    let token_id = rows[0].token_id;
    assert!(rows[0].expires_at.is_some());

    // Someone else's token cannot be revoked (nor learnt about); one's own can.
    let scientist = s.sign_in("scientist", PASSWORD).await.unwrap();
    let path = format!("/tokens/{token_id}/revoke");
    assert_eq!(s.post_form(&scientist, &path, &[]).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(api(secret.clone(), "GET", "/api/v1/dags/sales", None).await, StatusCode::OK);
    assert_eq!(s.post_form(&analyst, &path, &[]).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(api(secret, "GET", "/api/v1/dags/sales", None).await, StatusCode::UNAUTHORIZED, "revoked");
    let bad = s.post_form(&analyst, "/tokens", &[("name", "x"), ("scope", "admin"), ("expires_in", "30d")]).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}
