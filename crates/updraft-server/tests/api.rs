//! The REST API over real HTTP on 127.0.0.1: every endpoint, its bad input, and
//! every answer checked against the OpenAPI document the server publishes.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use updraft_core::clock::{Clock, SystemClock};
use updraft_server::AppState;
use updraft_store::{DagUpsert, ImportError, Store};

struct Server {
    base: String,
    store: Store,
    client: reqwest::Client,
    document: Value,
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

const SALES: &str = "dag: daily_sales
description: Sales of the day, by market
owner: analytics
tags: [finance, daily]
schedule: '0 6 * * *'
timezone: Asia/Seoul
start_date: 2024-01-01
params: {market: KOSPI, limit: 10}
tasks:
  extract: {shell: 'echo extract {{ params.market }}'}
  load: {shell: 'echo load', depends_on: [extract]}
";

const SCORES: &str = "dag: scores
owner: ml
tags: [daily]
tasks:
  score: {shell: 'echo score'}
";

const ARCHIVE: &str = "dag: archive
description: Moves old files away
owner: analytics
tasks:
  move: {shell: 'echo move'}
";

/// A server whose store knows three DAGs (`archive` paused) and one broken file.
async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = updraft_store::open("sqlite://updraft.db", dir.path()).await.unwrap();
    let now = SystemClock.now();
    let mut upserts = Vec::new();
    for (text, file) in [(SALES, "etl/daily_sales.yaml"), (SCORES, "scores.yaml"), (ARCHIVE, "archive.yaml")] {
        let parsed = updraft_dagfile::parse_dag(text, file);
        let dag = Arc::new(parsed.dag.unwrap_or_else(|| panic!("{file}: {:?}", parsed.diagnostics)));
        let (version, source) = (updraft_dagfile::version_of(&dag), Some(Arc::from(text)));
        upserts.push(DagUpsert { version, dag, paused_if_new: false, source });
    }
    store.upsert_dags(&upserts, now).await.unwrap();
    store.set_paused("archive", true, now).await.unwrap();
    let broken =
        ImportError { fileloc: "broken.yaml".into(), message: "broken.yaml:3:5: unknown field `depend_on`".into() };
    store.replace_import_errors(&[broken], now).await.unwrap();
    let key = updraft_auth::Cipher::from_keys("RPEidN6UG47M0ygEYCoPl6mdFKokJhbXo6Jm9yJJs-I=").unwrap();
    let state = AppState::new(store.clone(), Arc::new(SystemClock), None).with_cipher(Some(Arc::new(key)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(updraft_server::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let document: Value = client.get(format!("{base}/api/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    Server { base, store, client, document, stop: Some(stop), _dir: dir }
}

impl Server {
    /// Sends a request and checks the answer against the document: a documented
    /// status, and a body that fits the documented schema for it.
    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method.to_uppercase().parse().unwrap(), &url);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
        let text = response.text().await.unwrap();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{method} {path}: {text}");
        }
        let operation = operation(&self.document, method, path.split('?').next().unwrap())
            .unwrap_or_else(|| panic!("{method} {path} is not in the OpenAPI document"));
        let response = &operation["responses"][status.as_str()];
        assert!(response.is_object(), "{method} {path}: status {status} is not documented; body {text}");
        if let Some(schema) = response["content"].as_object().and_then(|content| content.values().next()) {
            let problems = check(&self.document, &schema["schema"], &value, "body");
            assert!(problems.is_empty(), "{method} {path} ({status}) does not fit its schema: {problems:?}\n{text}");
        }
        (status, value)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call("get", path, None).await
    }
}

/// The documented operation whose path template matches `path`.
fn operation<'a>(document: &'a Value, method: &str, path: &str) -> Option<&'a Value> {
    let segments: Vec<&str> = path.split('/').collect();
    document["paths"].as_object()?.iter().find_map(|(template, item)| {
        let parts: Vec<&str> = template.split('/').collect();
        let matches = parts.len() == segments.len()
            && parts.iter().zip(&segments).all(|(part, segment)| part.starts_with('{') || part == segment);
        (matches && item[method].is_object()).then(|| &item[method])
    })
}

/// Where `value` breaks `schema`: type, required fields, fields the schema does not
/// name. Enough of JSON Schema for what utoipa writes.
fn check(document: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap();
        return check(document, &document["components"]["schemas"][name], value, at);
    }
    if let Some(all) = schema["allOf"].as_array() {
        let mut merged = json!({"type": "object", "properties": {}, "required": []});
        for part in all {
            let part = match part["$ref"].as_str() {
                Some(reference) => &document["components"]["schemas"][reference.rsplit('/').next().unwrap()],
                None => part,
            };
            for (name, property) in part["properties"].as_object().into_iter().flatten() {
                merged["properties"][name] = property.clone();
            }
            for name in part["required"].as_array().into_iter().flatten() {
                merged["required"].as_array_mut().unwrap().push(name.clone());
            }
        }
        return check(document, &merged, value, at);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            let fits = options.iter().any(|option| check(document, option, value, at).is_empty());
            return if fits { Vec::new() } else { vec![format!("{at}: fits none of {key}")] };
        }
    }
    let kinds: Vec<&str> = match &schema["type"] {
        Value::String(kind) => vec![kind.as_str()],
        Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).collect(),
        _ => return Vec::new(),
    };
    let kind_of = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(number) if number.is_i64() || number.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let fits = kinds.iter().any(|kind| *kind == kind_of || (*kind == "number" && kind_of == "integer"));
    if !fits {
        return vec![format!("{at}: {kind_of}, documented as {kinds:?}")];
    }
    let mut problems = Vec::new();
    match value {
        Value::Object(fields) => {
            let properties = schema["properties"].as_object();
            for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !fields.contains_key(name) {
                    problems.push(format!("{at}: `{name}` is required but missing"));
                }
            }
            if let Some(properties) = properties {
                for (name, field) in fields {
                    match properties.get(name) {
                        Some(property) => problems.extend(check(document, property, field, &format!("{at}.{name}"))),
                        None => problems.push(format!("{at}: `{name}` is not documented")),
                    }
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                problems.extend(check(document, &schema["items"], item, &format!("{at}[{index}]")));
            }
        }
        _ => {}
    }
    problems
}

fn ids(list: &Value) -> Vec<&str> {
    list["dags"].as_array().unwrap().iter().map(|dag| dag["dag_id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn dags_are_listed_filtered_and_paged() {
    let s = server().await;
    let (status, all) = s.get("/api/v1/dags").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&all), ["archive", "daily_sales", "scores"]);
    assert_eq!(all["total_entries"], 3);
    let sales = &all["dags"][1];
    assert_eq!(sales["schedule"], "0 6 * * *");
    assert_eq!(sales["timezone"], "Asia/Seoul");
    assert_eq!(sales["fileloc"], "etl/daily_sales.yaml");
    assert!(sales["next_dagrun"].as_str().unwrap().ends_with('Z'), "{sales}");

    assert_eq!(ids(&s.get("/api/v1/dags?tags=daily").await.1), ["daily_sales", "scores"]);
    assert_eq!(ids(&s.get("/api/v1/dags?tags=daily,finance").await.1), ["daily_sales"]);
    assert_eq!(ids(&s.get("/api/v1/dags?owner=analytics").await.1), ["archive", "daily_sales"]);
    assert_eq!(ids(&s.get("/api/v1/dags?paused=true").await.1), ["archive"]);
    assert_eq!(ids(&s.get("/api/v1/dags?paused=false").await.1), ["daily_sales", "scores"]);
    assert_eq!(ids(&s.get("/api/v1/dags?search=MARKET").await.1), ["daily_sales"], "description, any case");
    let (_, page) = s.get("/api/v1/dags?limit=1&offset=1").await;
    assert_eq!(ids(&page), ["daily_sales"]);
    assert_eq!(page["total_entries"], 3, "the total counts every page");

    for bad in ["limit=0", "limit=1001", "paused=maybe", "limit=-1", "colour=red"] {
        let (status, problem) = s.get(&format!("/api/v1/dags?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {problem}");
        assert_eq!(problem["status"], 400);
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_dag_is_read_paused_and_unpaused() {
    let s = server().await;
    let (status, dag) = s.get("/api/v1/dags/daily_sales").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dag["owner"], "analytics");
    assert_eq!(dag["is_paused"], false);

    let (status, problem) = s.get("/api/v1/dags/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["detail"], "no DAG `nope`");

    let (status, source) = s.get("/api/v1/dags/daily_sales/source").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(source["source"], SALES, "the file as written, comments and all");
    assert_eq!(source["version"], dag["latest_version"]);
    let (status, same) =
        s.get(&format!("/api/v1/dags/daily_sales/source?version={}", dag["latest_version"].as_str().unwrap())).await;
    assert_eq!((status, &same["source"]), (StatusCode::OK, &source["source"]));
    let (status, _) = s.get("/api/v1/dags/daily_sales/source?version=0000").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.get("/api/v1/dags/nope/source").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["code"], "not_found");

    let (status, dag) = s.call("patch", "/api/v1/dags/daily_sales", Some(r#"{"is_paused": true}"#)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dag["is_paused"], true);
    assert!(s.store.get_dag("daily_sales").await.unwrap().unwrap().is_paused, "the store has it");
    let (_, dag) = s.call("patch", "/api/v1/dags/daily_sales", Some(r#"{"is_paused": false}"#)).await;
    assert_eq!(dag["is_paused"], false);

    let (status, _) = s.call("patch", "/api/v1/dags/nope", Some(r#"{"is_paused": true}"#)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for (body, expected) in [
        ("{\"is_paused\": tru", StatusCode::BAD_REQUEST),
        (r#"{"is_paused": "yes"}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"is_paused": true, "owner": "me"}"#, StatusCode::UNPROCESSABLE_ENTITY),
        ("{}", StatusCode::UNPROCESSABLE_ENTITY),
        ("[]", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (status, problem) = s.call("patch", "/api/v1/dags/daily_sales", Some(body)).await;
        assert_eq!(status, expected, "{body}: {problem}");
    }
    // No content type: 415, not a guess.
    let response = s
        .client
        .patch(format!("{}/api/v1/dags/daily_sales", s.base))
        .body(r#"{"is_paused": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(!s.store.get_dag("daily_sales").await.unwrap().unwrap().is_paused, "refused changes change nothing");
}

#[tokio::test]
async fn runs_are_triggered_listed_and_read() {
    let s = server().await;
    let body = r#"{"conf": {"market": "KOSDAQ"}, "logical_date": "2024-05-01"}"#;
    let response = s
        .client
        .post(format!("{}/api/v1/dags/daily_sales/runs", s.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let run: Value = response.json().await.unwrap();
    // 2024-05-01 in Asia/Seoul.
    assert_eq!(run["logical_date"], "2024-04-30T15:00:00Z");
    assert_eq!(run["run_id"], "manual__2024-04-30T15:00:00+00:00");
    assert_eq!(run["run_type"], "manual");
    assert_eq!(run["state"], "queued");
    assert_eq!(run["conf"]["market"], "KOSDAQ");
    assert_eq!(location, "/api/v1/dags/daily_sales/runs/manual__2024-04-30T15%3A00%3A00%2B00%3A00");
    let (status, same) = s.get(&location).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(same["run_id"], run["run_id"]);

    let (status, problem) = s.call("post", "/api/v1/dags/daily_sales/runs", Some(body)).await;
    assert_eq!(status, StatusCode::CONFLICT, "the same logical date twice: {problem}");
    assert!(problem["detail"].as_str().unwrap().contains("already has a run"));
    let (status, named) = s.call("post", "/api/v1/dags/daily_sales/runs", Some(r#"{"run_id": "by_hand"}"#)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(named["run_id"], "by_hand");
    assert_eq!(named["conf"], json!({}));

    for (body, expected) in [
        (r#"{"logical_date": "yesterday"}"#, StatusCode::BAD_REQUEST),
        (r#"{"run_id": "a/b"}"#, StatusCode::BAD_REQUEST),
        (r#"{"run_id": ""}"#, StatusCode::BAD_REQUEST),
        (r#"{"conf": [1, 2]}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"conf": {}, "params": {}}"#, StatusCode::UNPROCESSABLE_ENTITY),
        ("not json", StatusCode::BAD_REQUEST),
    ] {
        let (status, problem) = s.call("post", "/api/v1/dags/daily_sales/runs", Some(body)).await;
        assert_eq!(status, expected, "{body}: {problem}");
    }
    let (status, _) = s.call("post", "/api/v1/dags/nope/runs", Some("{}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, list) = s.get("/api/v1/dags/daily_sales/runs").await;
    assert_eq!(status, StatusCode::OK);
    let run_ids: Vec<&str> =
        list["dag_runs"].as_array().unwrap().iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(run_ids.len(), 2);
    assert_eq!(run_ids[1], "manual__2024-04-30T15:00:00+00:00", "newest logical date first");
    let (_, queued) = s.get("/api/v1/dags/daily_sales/runs?state=queued&limit=1").await;
    assert_eq!(queued["dag_runs"].as_array().unwrap().len(), 1);
    let (_, none) = s.get("/api/v1/dags/daily_sales/runs?state=success").await;
    assert_eq!(none["dag_runs"], json!([]));
    let (status, _) = s.get("/api/v1/dags/daily_sales/runs?state=done").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = s.get("/api/v1/dags/nope/runs").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, problem) = s.get("/api/v1/dags/daily_sales/runs/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["detail"], "DAG `daily_sales` has no run `nope`");
}

#[tokio::test]
async fn task_instances_and_their_attempts_are_read() {
    let s = server().await;
    let (_, run) = s.call("post", "/api/v1/dags/daily_sales/runs", Some(r#"{"run_id": "r1"}"#)).await;
    assert_eq!(run["run_id"], "r1");
    let (status, list) = s.get("/api/v1/dags/daily_sales/runs/r1/tasks").await;
    assert_eq!(status, StatusCode::OK);
    let tasks: Vec<(&str, &str)> = list["task_instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ti| (ti["task_id"].as_str().unwrap(), ti["state"].as_str().unwrap()))
        .collect();
    assert_eq!(tasks, [("extract", "none"), ("load", "none")]);
    let (status, extract) = s.get("/api/v1/dags/daily_sales/runs/r1/tasks/extract").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(extract["dag_id"], "daily_sales");
    assert_eq!(extract["try_number"], 0);
    assert_eq!(extract["attempts"], json!([]));

    let (status, problem) = s.get("/api/v1/dags/daily_sales/runs/r1/tasks/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["detail"], "run `r1` of DAG `daily_sales` has no task `nope`");
    let (status, _) = s.get("/api/v1/dags/daily_sales/runs/nope/tasks").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.get("/api/v1/dags/daily_sales/runs/r1/tasks/extract/tries/1/log").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no try yet");
    let (status, problem) = s.get("/api/v1/dags/daily_sales/runs/r1/tasks/extract/tries/first/log").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let (status, _) = s.get("/api/v1/dags/daily_sales/runs/r1/tasks/extract/tries/1/log?offset=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

fn states(list: &Value) -> Vec<(&str, &str)> {
    list["task_instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ti| (ti["task_id"].as_str().unwrap(), ti["state"].as_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn operators_mark_clear_and_delete() {
    use updraft_core::TaskState;
    use updraft_core::plan::Action;
    let s = server().await;
    s.call("post", "/api/v1/dags/daily_sales/runs", Some(r#"{"run_id": "r1"}"#)).await;
    let base = "/api/v1/dags/daily_sales/runs/r1";
    let (status, extract) = s.call("patch", &format!("{base}/tasks/extract"), Some(r#"{"state": "success"}"#)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(extract["state"], "success");
    for (body, expected) in [
        (r#"{"state": "running"}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"state": "bogus"}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"state": 1}"#, StatusCode::BAD_REQUEST),
        ("{}", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (status, problem) = s.call("patch", &format!("{base}/tasks/extract"), Some(body)).await;
        assert_eq!(status, expected, "{body}: {problem}");
    }
    let (status, _) = s.call("patch", &format!("{base}/tasks/nope"), Some(r#"{"state": "success"}"#)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A queued task is left alone: its attempt may be starting on a worker.
    let run = s.store.get_run("daily_sales", "r1").await.unwrap().unwrap();
    let load = s.store.task_instances(run.run_pk).await.unwrap()[1].ti_pk;
    let queue = [
        Action::StartRun { run_pk: run.run_pk },
        Action::SetTaskState { ti_pk: load, from: TaskState::None, to: TaskState::Scheduled },
        Action::SetTaskState { ti_pk: load, from: TaskState::Scheduled, to: TaskState::Queued },
    ];
    s.store.apply(&queue, "test", SystemClock.now()).await.unwrap();
    let (status, problem) = s.call("patch", &format!("{base}/tasks/load"), Some(r#"{"state": "failed"}"#)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(problem["detail"].as_str().unwrap().contains("`load` is queued"), "{problem}");
    let clear = r#"{"task_ids": ["extract"], "downstream": true}"#;
    let (status, _) = s.call("post", &format!("{base}/clear"), Some(clear)).await;
    assert_eq!(status, StatusCode::CONFLICT, "the downstream `load` is queued");
    let (status, _) = s.call("patch", base, Some(r#"{"state": "failed"}"#)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let back = [Action::SetTaskState { ti_pk: load, from: TaskState::Queued, to: TaskState::Scheduled }];
    s.store.apply(&back, "test", SystemClock.now()).await.unwrap();

    // Mark the run failed: what had not run is skipped.
    let (status, run) = s.call("patch", base, Some(r#"{"state": "failed"}"#)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["state"], "failed");
    assert_eq!(states(&s.get(&format!("{base}/tasks")).await.1), [("extract", "success"), ("load", "skipped")]);
    let (status, problem) = s.call("patch", base, Some(r#"{"state": "failed"}"#)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    let (status, _) = s.call("patch", base, Some(r#"{"state": "running"}"#)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Clear with downstream: both run again, the run is queued for the scheduler.
    let (status, list) = s.call("post", &format!("{base}/clear"), Some(clear)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(states(&list), [("extract", "none"), ("load", "none")]);
    assert_eq!(s.get(base).await.1["state"], "queued");
    let log = s.store.transitions(s.store.get_run("daily_sales", "r1").await.unwrap().unwrap().run_pk, None, 0);
    assert!(log.await.unwrap().iter().any(|t| t.actor == "api:anonymous" && t.to_state == "none"));
    for (body, expected) in [
        (r#"{"task_ids": []}"#, StatusCode::BAD_REQUEST),
        (r#"{"task_ids": ["nope"]}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"downstream": true}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"task_ids": "extract"}"#, StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (status, problem) = s.call("post", &format!("{base}/clear"), Some(body)).await;
        assert_eq!(status, expected, "{body}: {problem}");
    }

    // Only a finished run is deleted.
    let (status, problem) = s.call("delete", base, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(problem["detail"].as_str().unwrap().contains("only a finished run"), "{problem}");
    s.call("patch", base, Some(r#"{"state": "success"}"#)).await;
    let (status, _) = s.call("delete", base, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(s.get(base).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.call("delete", base, None).await.0, StatusCode::NOT_FOUND);
}

/// Runs `extract` of a new run `r1` as a remote worker would: claimed, its log
/// shipped to the store. Returns the task instance's key.
async fn running_extract(s: &Server) -> i64 {
    use updraft_core::TaskState;
    use updraft_core::plan::Action;
    s.call("post", "/api/v1/dags/daily_sales/runs", Some(r#"{"run_id": "r1"}"#)).await;
    let run = s.store.get_run("daily_sales", "r1").await.unwrap().unwrap();
    let extract = s.store.task_instances(run.run_pk).await.unwrap()[0].ti_pk;
    let queue = [
        Action::StartRun { run_pk: run.run_pk },
        Action::SetTaskState { ti_pk: extract, from: TaskState::None, to: TaskState::Scheduled },
        Action::SetTaskState { ti_pk: extract, from: TaskState::Scheduled, to: TaskState::Queued },
    ];
    s.store.apply(&queue, "test", SystemClock.now()).await.unwrap();
    let claimant = updraft_store::Claimant { process_id: 7, hostname: "worker-1".into(), queues: None };
    let claimed = s.store.claim(updraft_store::Scope::All, &claimant, 1, SystemClock.now()).await.unwrap();
    assert_eq!(claimed.len(), 1);
    extract
}

async fn ship(s: &Server, ti_pk: i64, offset: u64, text: &str) {
    let piece = updraft_store::LogChunk { ti_pk, try_number: 1, offset, data: text.as_bytes().to_vec() };
    s.store.append_logs(&[piece]).await.unwrap();
}

#[tokio::test]
async fn logs_are_read_by_range_and_tail() {
    let s = server().await;
    let ti_pk = running_extract(&s).await;
    ship(&s, ti_pk, 0, "one\ntwo\nthree\n").await;
    let log = "/api/v1/dags/daily_sales/runs/r1/tasks/extract/tries/1/log";
    let read = |query: &'static str| {
        let url = format!("{}{log}{query}", s.base);
        let client = s.client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            let status = response.status();
            let offset = response.headers().get("x-updraft-log-offset").map(|v| v.to_str().unwrap().to_string());
            let state = response.headers().get("x-updraft-attempt-state").map(|v| v.to_str().unwrap().to_string());
            (status, response.text().await.unwrap(), offset, state)
        }
    };
    let (status, text, offset, state) = read("").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "one\ntwo\nthree\n"));
    assert_eq!((offset.as_deref(), state.as_deref()), (Some("14"), Some("running")));
    assert_eq!(read("?offset=4").await.1, "two\nthree\n");
    let (_, text, offset, _) = read("?offset=4&limit=3").await;
    assert_eq!((text.as_str(), offset.as_deref()), ("two", Some("7")));
    let (_, text, offset, _) = read("?tail=1").await;
    assert_eq!((text.as_str(), offset.as_deref()), ("three\n", Some("14")), "the offset to follow from");
    assert_eq!(read("?tail=2").await.1, "two\nthree\n");
    assert_eq!(read("?offset=100").await.1, "");
    assert_eq!(read("?tail=9&offset=8").await.1, "three\n", "the last lines of the text from the offset");
    assert_eq!(s.get(&format!("{log}?tail=-1")).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(s.get("/api/v1/dags/daily_sales/runs/r1/tasks/extract/tries/2/log").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_running_log_is_followed_live_until_the_attempt_ends() {
    let s = server().await;
    let ti_pk = running_extract(&s).await;
    ship(&s, ti_pk, 0, "one\ntwo\n").await;
    let url = format!("{}/api/v1/dags/daily_sales/runs/r1/tasks/extract/tries/1/log/stream?offset=4", s.base);
    let mut response = s.client.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    let mut read_until = async |wanted: &str, seen: &mut String| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !seen.contains(wanted) {
            assert!(std::time::Instant::now() < deadline, "no `{wanted}` in the stream: {seen}");
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match tokio::time::timeout(left, response.chunk()).await {
                Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(Ok(None)) => break,
                other => panic!("stream broke: {other:?}; so far: {seen}"),
            }
        }
    };
    read_until("id: 8", &mut seen).await;
    assert!(seen.contains("event: log\n") && seen.contains("data: two\n"), "from the offset on: {seen}");
    assert!(!seen.contains("one"), "{seen}");
    // More text arrives while it runs, then the attempt ends.
    ship(&s, ti_pk, 8, "three\n").await;
    read_until("data: three", &mut seen).await;
    let end = updraft_store::AttemptEnd {
        state: updraft_core::TaskState::Success,
        retry_at: None,
        exit_code: Some(0),
        reason: None,
        process: None,
        output: None,
        reschedule: false,
    };
    let finished = updraft_store::FinishedAttempt { ti_pk, try_number: 1, end };
    s.store.finish_attempts(&[finished], "test", SystemClock.now()).await.unwrap();
    read_until("event: end", &mut seen).await;
    read_until("data: success", &mut seen).await;
    // The stream ends by itself.
    let rest = tokio::time::timeout(std::time::Duration::from_secs(5), response.chunk()).await.unwrap().unwrap();
    assert!(rest.is_none(), "{rest:?}");
}

#[tokio::test]
async fn parse_errors_pools_health_and_version() {
    let s = server().await;
    let (status, errors) = s.get("/api/v1/importErrors").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(errors["total_entries"], 1);
    assert_eq!(errors["import_errors"][0]["fileloc"], "broken.yaml");
    assert!(errors["import_errors"][0]["message"].as_str().unwrap().starts_with("broken.yaml:3:5:"));

    let (_, pools) = s.get("/api/v1/pools").await;
    assert_eq!(pools["pools"][0]["name"], "default");
    assert_eq!(pools["pools"][0]["slots"], 128);
    assert_eq!(pools["pools"][0]["occupied"], 0);

    // No scheduler runs here: the store answers (200), the scheduler is unhealthy.
    let (status, health) = s.get("/api/v1/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["store"]["status"], "healthy");
    assert_eq!(health["scheduler"]["status"], "unhealthy");

    let (_, version) = s.get("/api/v1/version").await;
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));

    let response = s.client.delete(format!("{}/api/v1/version", s.base)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn the_openapi_document_describes_exactly_the_api() {
    let s = server().await;
    assert!(s.document["openapi"].as_str().unwrap().starts_with("3.1"), "{}", s.document["openapi"]);
    assert_eq!(s.document["info"]["version"], env!("CARGO_PKG_VERSION"));
    let mut operations: Vec<String> = Vec::new();
    for (path, item) in s.document["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item[method].is_object() {
                operations.push(format!("{} {path}", method.to_uppercase()));
                assert!(item[method]["summary"].is_string(), "{method} {path} has no summary");
            }
        }
    }
    operations.sort();
    assert_eq!(
        operations,
        [
            "DELETE /api/v1/connections/{conn_id}",
            "DELETE /api/v1/dags/{dag_id}/runs/{run_id}",
            "DELETE /api/v1/variables/{key}",
            "GET /api/v1/auditLog",
            "GET /api/v1/connections",
            "GET /api/v1/connections/{conn_id}",
            "GET /api/v1/dags",
            "GET /api/v1/dags/{dag_id}",
            "GET /api/v1/dags/{dag_id}/runs",
            "GET /api/v1/dags/{dag_id}/runs/{run_id}",
            "GET /api/v1/dags/{dag_id}/runs/{run_id}/tasks",
            "GET /api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}",
            "GET /api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/output",
            "GET /api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/tries/{try_number}/log",
            "GET /api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/tries/{try_number}/log/stream",
            "GET /api/v1/dags/{dag_id}/source",
            "GET /api/v1/health",
            "GET /api/v1/importErrors",
            "GET /api/v1/pools",
            "GET /api/v1/variables",
            "GET /api/v1/variables/{key}",
            "GET /api/v1/version",
            "PATCH /api/v1/dags/{dag_id}",
            "PATCH /api/v1/dags/{dag_id}/runs/{run_id}",
            "PATCH /api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}",
            "POST /api/v1/dags/{dag_id}/runs",
            "POST /api/v1/dags/{dag_id}/runs/{run_id}/clear",
            "PUT /api/v1/connections/{conn_id}",
            "PUT /api/v1/variables/{key}",
        ]
    );
    // Every documented operation is served (not the fallback's "no such page").
    for operation in &operations {
        let (method, path) = operation.split_once(' ').unwrap();
        let path = path.replace("{dag_id}", "nope").replace("{run_id}", "r").replace("{task_id}", "t");
        let path = path.replace("{try_number}", "1");
        let response = s.client.request(method.parse().unwrap(), format!("{}{path}", s.base)).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let fallback = body["detail"].as_str().is_some_and(|detail| detail.starts_with("no such page"));
        assert!(!fallback && status != StatusCode::METHOD_NOT_ALLOWED, "{operation} is not served: {body}");
    }

    let page = s.client.get(format!("{}/api/v1/docs", s.base)).send().await.unwrap().text().await.unwrap();
    for operation in &operations {
        let path = operation.split_once(' ').unwrap().1;
        assert!(page.contains(&format!("<code>{path}</code>")), "the reference page lists {path}");
    }
    assert!(page.contains("id=\"schema-DagRun\""));
}

#[tokio::test]
async fn ui_pages_and_forms() {
    let s = server().await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let get = |path: &str| client.get(format!("{}{path}", s.base)).send();
    let page = get("/").await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    // Security headers on every answer; a CSRF cookie for forms.
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && !csp.contains("script-src 'self' 'unsafe-inline'"), "{csp}");
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let cookie = page.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
    let csrf = cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_string();
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!(r#"name="csrf" value="{csrf}""#)), "forms carry the token");
    assert!(html.contains(r#"data-dag="daily_sales""#) && html.contains("every day at 06:00"), "{html}");
    assert!(html.contains("1 DAG file cannot be read"), "the parse-error banner on every page");
    let filtered = get("/?q=moves&paused=yes").await.unwrap().text().await.unwrap();
    assert!(filtered.contains(r#"data-dag="archive""#) && !filtered.contains(r#"data-dag="daily_sales""#));

    let missing = get("/dags/nope").await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(missing.text().await.unwrap().contains("no DAG `nope`"));
    let code = get("/dags/daily_sales?tab=code").await.unwrap().text().await.unwrap();
    assert!(code.contains(r#"<span class="k">dag</span>: daily_sales"#), "{code}");
    let form = get("/dags/daily_sales/trigger").await.unwrap().text().await.unwrap();
    assert!(form.contains(r#"name="logical_date""#), "{form}");
    assert!(form.contains(r#"name="param.market" value="KOSPI""#), "the params form, with defaults: {form}");

    let post = |path: &str, body: &'static str| {
        client
            .post(format!("{}{path}", s.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", format!("updraft_csrf={csrf}"))
            .body(format!("csrf={csrf}&{body}"))
            .send()
    };
    // Without the token (a form from another site), nothing happens.
    let forged = client
        .post(format!("{}/dags/daily_sales/paused", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("updraft_csrf={csrf}"))
        .body("paused=true&csrf=guess")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(!s.store.get_dag("daily_sales").await.unwrap().unwrap().is_paused);
    let bad = post("/dags/daily_sales/trigger", "conf=%5B1%5D").await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(bad.text().await.unwrap().contains("must be a JSON object"));
    let form = "run_id=from_ui&param.market=KOSDAQ&param.limit=20&conf=%7B%22x%22%3A+1%7D";
    let made = post("/dags/daily_sales/trigger", form).await.unwrap();
    assert_eq!(made.status(), StatusCode::SEE_OTHER);
    assert!(made.headers()["location"].to_str().unwrap().starts_with("/dags/daily_sales?note=Triggered"));
    let run = s.store.get_run("daily_sales", "from_ui").await.unwrap().unwrap();
    assert_eq!(run.conf["market"], "KOSDAQ");
    assert_eq!(run.conf["limit"], 20, "a number stays a number");
    assert_eq!(run.conf["x"], 1);
    let paused = post("/dags/daily_sales/paused", "paused=true&back=https%3A%2F%2Fevil.example").await.unwrap();
    assert_eq!(paused.status(), StatusCode::SEE_OTHER);
    assert!(paused.headers()["location"].to_str().unwrap().starts_with("/dags/daily_sales?"), "only back to this site");
    assert!(s.store.get_dag("daily_sales").await.unwrap().unwrap().is_paused);
    let busy = post("/dags/daily_sales/runs/from_ui/tasks/nope/state", "state=success").await.unwrap();
    assert_eq!(busy.status(), StatusCode::NOT_FOUND);
    let task = get("/dags/daily_sales/runs/from_ui/tasks/extract").await.unwrap().text().await.unwrap();
    assert!(task.contains("No try yet."), "{task}");
    assert!(task.contains("echo extract KOSDAQ"), "rendered with the run's params: {task}");
    let marked = post("/dags/daily_sales/runs/from_ui/tasks/extract/state", "state=skipped").await.unwrap();
    assert_eq!(marked.status(), StatusCode::SEE_OTHER);
    let js = get("/static/app.js").await.unwrap();
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
}

#[tokio::test]
async fn the_ui_list_pages_through_many_dags_and_flags_a_broken_file() {
    let s = server().await;
    let mut upserts = Vec::new();
    for i in 0..120 {
        let parsed =
            updraft_dagfile::parse_dag(&format!("dag: bulk_{i:03}\ntasks:\n  t: {{shell: 'true'}}\n"), "bulk.yaml");
        let dag = Arc::new(parsed.dag.unwrap());
        upserts.push(DagUpsert { version: updraft_dagfile::version_of(&dag), dag, paused_if_new: false, source: None });
    }
    s.store.upsert_dags(&upserts, SystemClock.now()).await.unwrap();
    let rows = |html: &str| html.matches("<tr data-dag=").count();
    let first = s.client.get(format!("{}/?q=bulk", s.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(rows(&first), 100);
    assert!(first.contains("Page 1 of 2") && first.contains("120 of 123 DAGs"), "{first}");
    let second = s.client.get(format!("{}/?q=bulk&page=1", s.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(rows(&second), 20);
    assert!(second.contains(r#"data-dag="bulk_119""#));
    let beyond = s.client.get(format!("{}/?q=bulk&page=9", s.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(rows(&beyond), 20, "past the end: the last page");

    // A DAG whose file stops reading says so on its page.
    let broken = ImportError { fileloc: "scores.yaml".into(), message: "scores.yaml:2:1: unknown field".into() };
    s.store.replace_import_errors(&[broken], SystemClock.now()).await.unwrap();
    let page = s.client.get(format!("{}/dags/scores", s.base)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("does not read now") && page.contains("scores.yaml:2:1: unknown field"), "{page}");
}

#[tokio::test]
async fn variables_and_connections_are_stored_encrypted_and_answered_masked() {
    let s = server().await;
    let put = |path: &'static str, body: &'static str| s.call("put", path, Some(body));
    assert_eq!(put("/api/v1/variables/region", r#"{"value": "eu-west-1"}"#).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        put("/api/v1/variables/vendor_api_key", r#"{"value": "sk-live-777", "description": "vendor"}"#).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(s.get("/api/v1/variables/region").await.1["value"], "eu-west-1");
    let (_, hidden) = s.get("/api/v1/variables/vendor_api_key").await;
    assert_eq!(hidden["value"], "***");
    assert_eq!(hidden["description"], "vendor");
    let stored = s.store.variable("vendor_api_key").await.unwrap().unwrap();
    assert!(!stored.value.contains("sk-live"), "encrypted at rest");
    let (_, list) = s.get("/api/v1/variables").await;
    assert!(!list.to_string().contains("sk-live") && !list.to_string().contains("eu-west-1"), "{list}");

    let body = r#"{"conn_type": "postgres", "host": "db", "login": "loader", "password": "hunter2hunter2", "port": 5432, "extra": {"sslmode": "require", "client_secret": "zzz-secret-zzz"}}"#;
    assert_eq!(put("/api/v1/connections/warehouse", body).await.0, StatusCode::NO_CONTENT);
    let (_, connection) = s.get("/api/v1/connections/warehouse").await;
    assert_eq!(connection["password"], "***");
    assert_eq!(connection["host"], "db");
    let extra = connection["extra"].as_str().unwrap();
    assert!(extra.contains("require") && !extra.contains("zzz-secret-zzz"), "{extra}");
    let (_, all) = s.get("/api/v1/connections").await;
    assert!(!all.to_string().contains("hunter2hunter2"), "{all}");
    let stored = s.store.connection("warehouse").await.unwrap().unwrap();
    assert!(!stored.password.unwrap().contains("hunter2"));

    for (path, body, expected) in [
        ("/api/v1/variables/bad%20key", r#"{"value": "x"}"#, StatusCode::BAD_REQUEST),
        ("/api/v1/variables/region", r#"{"val": "x"}"#, StatusCode::UNPROCESSABLE_ENTITY),
        ("/api/v1/connections/db", r#"{"host": "x"}"#, StatusCode::UNPROCESSABLE_ENTITY),
        ("/api/v1/connections/db", r#"{"conn_type": "x", "extra": [1]}"#, StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        assert_eq!(s.call("put", path, Some(body)).await.0, expected, "{path} {body}");
    }
    assert_eq!(s.get("/api/v1/variables/nope").await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.call("delete", "/api/v1/variables/region", None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(s.call("delete", "/api/v1/variables/region", None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.call("delete", "/api/v1/connections/warehouse", None).await.0, StatusCode::NO_CONTENT);
}
