//! The router with `oneshot`, and a real server on 127.0.0.1:0.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use updraft_core::clock::{Clock, ManualClock};
use updraft_server::{AppState, router};
use updraft_store::{DagUpsert, ImportError, NewProcess, ProcessKind};

async fn state() -> (AppState, Arc<ManualClock>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = updraft_store::open("sqlite://updraft.db", dir.path()).await.unwrap();
    let clock = Arc::new(ManualClock::new("2024-06-01T12:00:00Z".parse().unwrap()));
    (AppState::new(store, clock.clone(), Some("s3cret".into())), clock, dir)
}

async fn get(state: &AppState, path: &str) -> (StatusCode, String) {
    let response = router(state.clone()).oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn health_reports_the_scheduler_heartbeat() {
    let (state, clock, _dir) = state().await;
    let (status, body) = get(&state, "/health").await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "unhealthy");
    assert_eq!(json["store"]["status"], "healthy");
    assert_eq!(json["store"]["backend"], "sqlite");
    assert_eq!(json["scheduler"]["heartbeat_age_seconds"], serde_json::Value::Null);

    let process = NewProcess { kind: ProcessKind::Standalone, hostname: "h".into(), pid: 1, pid_start: None };
    state.store.register_process(&process, clock.now()).await.unwrap();
    clock.advance(jiff::SignedDuration::from_millis(2500));
    let (_, body) = get(&state, "/health").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "healthy");
    assert_eq!(json["scheduler"]["heartbeat_age_seconds"], 2.5);

    clock.advance(jiff::SignedDuration::from_secs(60));
    let (_, body) = get(&state, "/health").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["scheduler"]["status"], "unhealthy");
}

#[tokio::test]
async fn dag_page_lists_dags_and_parse_errors() {
    let (state, clock, _dir) = state().await;
    let (_, body) = get(&state, "/").await;
    assert!(body.contains("No DAGs yet"));
    let parsed = updraft_dagfile::parse_dag("dag: etl\ntasks:\n  a: {shell: 'true'}\n", "etl.yaml");
    let dag = Arc::new(parsed.dag.unwrap());
    let version = updraft_dagfile::version_of(&dag);
    state
        .store
        .upsert_dags(&[DagUpsert { dag, version, paused_if_new: true, source: None }], clock.now())
        .await
        .unwrap();
    state
        .store
        .replace_import_errors(
            &[ImportError { fileloc: "bad.yaml".into(), message: "dags/bad.yaml:1:1: <oops>".into() }],
            clock.now(),
        )
        .await
        .unwrap();
    let (status, body) = get(&state, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#"<a href="/dags/etl"><strong>etl</strong></a>"#), "{body}");
    assert!(body.contains("Paused"));
    assert!(body.contains("1 DAG file cannot be read"), "the banner: {body}");
    assert!(body.len() < 100_000);
    let (_, errors) = get(&state, "/import-errors").await;
    assert!(errors.contains("dags/bad.yaml:1:1: &lt;oops&gt;"), "errors are shown, escaped: {errors}");
}

#[tokio::test]
async fn unknown_paths_are_problem_documents() {
    let (state, _clock, _dir) = state().await;
    let (status, body) = get(&state, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no such page `/nope`","code":"not_found"}"#
    );
}

#[tokio::test]
async fn serves_on_loopback() {
    let (state, _clock, _dir) = state().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(updraft_server::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"backend\":\"sqlite\""));
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
