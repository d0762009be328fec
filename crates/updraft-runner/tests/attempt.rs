//! Attempts as real subprocesses: exit codes, environment, templates, logs,
//! timeouts that kill the whole process group, and interruption.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use updraft_core::retry::AttemptOutcome;
use updraft_runner::{AttemptSpec, Ending, execute, procfs};

mod support;
use support::{Lines, NEXT_TOKEN, assert_no_process_left, run, spec};

#[tokio::test]
async fn exit_codes_decide_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    for (command, outcome, code) in [
        ("exit 0", AttemptOutcome::Success, 0),
        ("exit 99", AttemptOutcome::Skipped, 99),
        ("exit 3", AttemptOutcome::Failed, 3),
    ] {
        let (result, _, _) = run(&spec(dir.path(), &format!("    shell: {command}\n"))).await;
        assert_eq!((result.outcome(), result.exit_code()), (outcome, Some(code)), "{command}");
    }
}

#[tokio::test]
async fn environment_templates_and_working_folder() {
    let dir = tempfile::tempdir().unwrap();
    let task = "    shell: echo \"{{ ds }} {{ params.who }} $LEVEL $OWN $UPDRAFT_DAG_ID $UPDRAFT_TASK_ID $UPDRAFT_RUN_ID $UPDRAFT_TRY_NUMBER $UPDRAFT_DS $UPDRAFT_LOGICAL_DATE $UPDRAFT_DATA_INTERVAL_START $UPDRAFT_DATA_INTERVAL_END\"; pwd; echo oops >&2\n    env: {OWN: '{{ ds_nodash }}', LEVEL: task}\n";
    let spec = spec(dir.path(), task);
    let (result, lines, log) = run(&spec).await;
    assert_eq!(result.ending, Ending::Exited(0));
    let cwd = std::fs::canonicalize(dir.path().join("dags/sub")).unwrap();
    assert_eq!(
        lines[0],
        "2024-03-01 world task 20240301 demo t manual__x 1 2024-03-01 2024-03-01T01:00:00+01:00 2024-03-01T01:00:00+01:00 2024-03-02T01:00:00+01:00"
    );
    assert_eq!(std::fs::canonicalize(&lines[1]).unwrap(), cwd);
    assert_eq!(lines[2], "oops");
    assert!(log.contains("] attempt 1 of 1 of `demo.t` in run `manual__x` started"), "{log}");
    assert!(log.contains("\noops\n"), "{log}");
    assert!(log.contains("attempt ended after"), "{log}");
}

#[tokio::test]
async fn template_errors_fail_the_attempt_without_running_it() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let (result, _, log) =
        run(&spec(dir.path(), &format!("    shell: touch {} {{{{ params.missing }}}}\n", marker.display()))).await;
    assert_eq!(result.outcome(), AttemptOutcome::Failed);
    assert_eq!(
        result.reason().unwrap(),
        "cannot render `shell`: undefined value: `params.missing` is undefined (template line 1)"
    );
    assert!(!marker.exists());
    assert!(log.contains("cannot render `shell`"), "{log}");

    let (result, _, _) = run(&spec(dir.path(), "    shell: 'true'\n    cwd: nowhere\n")).await;
    assert!(result.reason().unwrap().starts_with("cannot start: working folder"), "{:?}", result.reason());
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    // A background grandchild that ignores the shell's exit must die too.
    let spec = spec(dir.path(), "    shell: sleep 60 & echo started; trap '' TERM; sleep 60\n    timeout: 1s\n");
    let (result, _, log) = run(&spec).await;
    assert_eq!(result.ending, Ending::TimedOut(updraft_core::Duration::from_secs(1)));
    assert_eq!(result.outcome(), AttemptOutcome::Failed);
    assert!(result.duration < Duration::from_secs(10), "{:?}", result.duration);
    assert!(log.contains("timed out after 1s"), "{log}");
    assert_no_process_left(&spec).await;
}

#[tokio::test]
async fn leftover_background_processes_end_with_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "    shell: (sleep 60; echo never) & echo done\n");
    let (result, _, _) = run(&spec).await;
    assert_eq!(result.ending, Ending::Exited(0));
    assert!(result.duration < Duration::from_secs(10));
    assert_no_process_left(&spec).await;
}

#[tokio::test]
async fn interruption_stops_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "    shell: echo up; sleep 60\n");
    let (cancel, cancelled) = watch::channel(false);
    let (spawned, pid) = oneshot::channel();
    let lines = Arc::new(Lines::default());
    let task = tokio::spawn({
        let spec = spec.clone();
        let lines = lines.clone();
        async move { execute(&spec, &updraft_runner::template::environment(), lines, cancelled, spawned).await }
    });
    let (pgid, _) = pid.await.unwrap();
    // Wait until the command printed, then interrupt.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lines.0.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the attempt never printed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.send(true).unwrap();
    let result = task.await.unwrap();
    assert_eq!(result.ending, Ending::Interrupted);
    // The group was sent SIGKILL; on a loaded machine the kernel may take a moment
    // to reap it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while procfs::group_alive(pgid) {
        assert!(std::time::Instant::now() < deadline, "the attempt's process group outlived the interruption");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn long_lines_are_split_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (result, lines, _) =
        run(&spec(dir.path(), "    shell: head -c 200000 /dev/zero | tr '\\0' x; echo; echo after\n")).await;
    assert_eq!(result.ending, Ending::Exited(0));
    assert_eq!(lines.iter().map(String::len).sum::<usize>(), 200000 + 5);
    assert_eq!(lines.last().unwrap(), "after");
    assert!(lines.iter().all(|line| line.len() <= 64 * 1024));
}

#[tokio::test]
async fn outputs_are_json_within_the_limit_and_only_from_successes() {
    let dir = tempfile::tempdir().unwrap();
    let task = "    shell: |\n      echo '{\"codes\": [\"005930\", \"000660\"], \"n\": 2}' > \"$UPDRAFT_OUTPUT\"\n";
    let (result, _, log) = run(&spec(dir.path(), task)).await;
    assert_eq!(result.ending, Ending::Exited(0));
    let output: serde_json::Value = serde_json::from_str(result.output.as_deref().unwrap()).unwrap();
    assert_eq!(output["codes"][1], "000660");
    assert!(log.contains("output: 39 bytes of JSON"), "{log}");
    assert!(!dir.path().join("logs/1.output.json").exists(), "the file is not left behind");

    // Nothing written: no output.
    let (result, _, _) = run(&spec(dir.path(), "    shell: 'true'\n")).await;
    assert_eq!((result.ending, result.output), (Ending::Exited(0), None));
    // A failed or skipped attempt hands nothing on.
    let (result, _, _) = run(&spec(dir.path(), "    shell: echo 1 > \"$UPDRAFT_OUTPUT\"; exit 99\n")).await;
    assert_eq!((result.outcome(), result.output), (AttemptOutcome::Skipped, None));

    // Not JSON, or too large: the attempt fails, saying why.
    let (result, _, log) =
        run(&spec(dir.path(), "    shell: |\n      printf '{\"a\": 1,\\n oops}' > \"$UPDRAFT_OUTPUT\"\n")).await;
    assert_eq!(result.outcome(), AttemptOutcome::Failed);
    let reason = result.reason().unwrap();
    assert!(reason.starts_with("the task's output is not JSON (line 2, column 2)"), "{reason}");
    assert!(log.contains("the task's output is not JSON"), "{log}");
    let mut small = spec(dir.path(), "    shell: head -c 2000 /dev/zero | tr '\\0' 1 > \"$UPDRAFT_OUTPUT\"\n");
    small.output_limit = 1000;
    let (result, _, _) = run(&small).await;
    assert_eq!(result.outcome(), AttemptOutcome::Failed);
    assert_eq!(
        result.reason().unwrap(),
        "the task's output is 2000 bytes, over the limit of 1000 (`runner.output_limit`); hand on a path or key instead"
    );
}

/// A small API on loopback: pages, a cursor, a `Link` header, 429 with
/// `Retry-After`, 500s, and an API key checked in the query.
mod api {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};

    #[derive(Default)]
    pub struct Counters {
        pub busy: AtomicUsize,
        pub broken: AtomicUsize,
    }

    type Params = Query<HashMap<String, String>>;

    async fn pages(Query(query): Params) -> Response {
        if query.get("serviceKey").map(String::as_str) != Some("k3y-s3cr3t") {
            return (StatusCode::UNAUTHORIZED, r#"{"error": "SERVICE_KEY_IS_NOT_REGISTERED"}"#).into_response();
        }
        let page: usize = query.get("pageNo").and_then(|n| n.parse().ok()).unwrap_or(1);
        let size: usize = query.get("numOfRows").and_then(|n| n.parse().ok()).unwrap_or(2);
        let all: Vec<String> = (1..=5).map(|n| format!("{n:06}")).collect();
        let items: Vec<serde_json::Value> =
            all.iter().skip((page - 1) * size).take(size).map(|code| serde_json::json!({ "code": code })).collect();
        let body = serde_json::json!({ "header": { "resultCode": "00" }, "body": { "items": items, "pageNo": page } });
        axum::Json(body).into_response()
    }

    async fn cursor(Query(query): Params) -> axum::Json<serde_json::Value> {
        let at: usize = query.get("after").and_then(|n| n.parse().ok()).unwrap_or(0);
        let next = if at < 4 { serde_json::json!((at + 2).to_string()) } else { serde_json::Value::Null };
        axum::Json(serde_json::json!({ "data": [at + 1, at + 2], "next": next }))
    }

    async fn linked(headers: HeaderMap, Query(query): Params) -> Response {
        let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or_default().to_string();
        let page: usize = query.get("page").and_then(|n| n.parse().ok()).unwrap_or(1);
        let mut response = axum::Json(serde_json::json!([format!("p{page}")])).into_response();
        if page < 3 {
            let link = format!("<http://{host}/linked?page={}>; rel=\"next\"", page + 1);
            response.headers_mut().insert("link", link.parse().unwrap());
        }
        response
    }

    async fn busy(State(counters): State<Arc<Counters>>) -> Response {
        if counters.busy.fetch_add(1, Ordering::SeqCst) < 1 {
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response();
        }
        axum::Json(serde_json::json!({ "ok": true })).into_response()
    }

    async fn broken(State(counters): State<Arc<Counters>>) -> Response {
        if counters.broken.fetch_add(1, Ordering::SeqCst) < 2 {
            return (StatusCode::INTERNAL_SERVER_ERROR, "try again").into_response();
        }
        axum::Json(serde_json::json!({ "ok": "finally" })).into_response()
    }

    async fn echo(headers: HeaderMap, body: String) -> axum::Json<serde_json::Value> {
        let auth = headers.get("authorization").and_then(|h| h.to_str().ok()).unwrap_or_default().to_string();
        axum::Json(
            serde_json::json!({ "got": serde_json::from_str::<serde_json::Value>(&body).unwrap(), "auth": auth }),
        )
    }

    pub async fn start() -> (String, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let router = axum::Router::new()
            .route("/pages", get(pages))
            .route("/cursor", get(cursor))
            .route("/linked", get(linked))
            .route("/busy", get(busy))
            .route("/broken", get(broken))
            .route("/missing", get(|| async { (StatusCode::NOT_FOUND, "no such thing") }))
            .route("/echo", post(echo))
            .with_state(counters.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (format!("http://{address}"), counters)
    }
}

fn with_connection(mut spec: AttemptSpec, base: &str) -> AttemptSpec {
    let mut secrets = updraft_store::Secrets::default();
    let (host, port) = base.trim_start_matches("http://").split_once(':').unwrap();
    secrets.connections.insert(
        "public_data".into(),
        updraft_store::ConnectionValues {
            conn_type: "http".into(),
            host: Some(host.into()),
            port: Some(port.parse().unwrap()),
            login: Some("etl".into()),
            password: Some("k3y-s3cr3t".into()),
            ..Default::default()
        },
    );
    spec.secrets = Arc::new(secrets);
    spec
}

#[tokio::test]
async fn http_pages_through_an_api_with_a_key_and_hands_on_the_items() {
    let (base, _) = api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let task = "    http:\n      url: /pages\n      connection: public_data\n      auth: {api_key: {query: serviceKey}}\n      query: {numOfRows: 2, day: '{{ ds }}'}\n      expect: {status: [200], path: '$.header.resultCode', equals: '00'}\n      extract: '$.body.items[*].code'\n      pagination: {page: {param: pageNo, start: 1}}\n      save_to: raw/{{ ds_nodash }}.jsonl\n";
    let spec = with_connection(spec(dir.path(), task), &base);
    let (result, lines, log) = run(&spec).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    let output: serde_json::Value = serde_json::from_str(result.output.as_deref().unwrap()).unwrap();
    assert_eq!(output, serde_json::json!(["000001", "000002", "000003", "000004", "000005"]));
    assert_eq!(lines.len(), 4, "three full pages and an empty one: {lines:?}");
    assert!(
        lines[0].contains("GET http://") && lines[0].contains("pageNo=1") && lines[0].contains("2 item(s)"),
        "{lines:?}"
    );
    assert!(lines[0].contains("day=2024-03-01"), "{lines:?}");
    assert!(!log.contains("k3y-s3cr3t") && log.contains("serviceKey=***"), "the key is masked: {log}");
    let saved = std::fs::read_to_string(dir.path().join("dags/sub/raw/20240301.jsonl")).unwrap();
    assert_eq!(saved.lines().count(), 4);

    // A wrong key: the API's refusal, quoted, fails the task at once.
    let mut wrong = spec.clone();
    let mut secrets = (*wrong.secrets).clone();
    secrets.connections.get_mut("public_data").unwrap().password = Some("wrong-key".into());
    wrong.secrets = Arc::new(secrets);
    let (result, _, _) = run(&wrong).await;
    let reason = result.reason().unwrap();
    assert!(reason.contains("answered 401 Unauthorized: {\"error\": \"SERVICE_KEY_IS_NOT_REGISTERED\"}"), "{reason}");
}

#[tokio::test]
async fn http_cursors_links_retries_and_errors() {
    let (base, counters) = api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let http = |body: &str| spec(dir.path(), &format!("    http:\n{body}"));

    let (result, _, log) =
        run(&http(&format!("      url: {base}/cursor\n      extract: '$.data'\n      pagination: {{cursor: {{param: after, path: '$.next'}}}}\n"))).await;
    assert_eq!(result.output.as_deref(), Some("[1,2,3,4,5,6]"), "{log}");

    let (result, _, log) =
        run(&http(&format!("      url: {base}/linked\n      pagination: {{next_link: header}}\n"))).await;
    assert_eq!(result.output.as_deref(), Some(r#"[["p1"],["p2"],["p3"]]"#), "{log}");

    let began = std::time::Instant::now();
    let (result, lines, _) = run(&http(&format!("      url: {base}/busy\n      extract: '$.ok'\n"))).await;
    assert_eq!(result.output.as_deref(), Some("true"));
    assert!(lines[0].contains("answered 429 Too Many Requests; retrying in 1.0s (1 of 3)"), "{lines:?}");
    assert!(began.elapsed() >= std::time::Duration::from_secs(1), "Retry-After is honoured");
    assert_eq!(counters.busy.load(std::sync::atomic::Ordering::SeqCst), 2);

    let (result, lines, _) = run(&http(&format!("      url: {base}/broken\n      request_retries: 2\n"))).await;
    assert_eq!(
        (result.ending.clone(), result.output.as_deref()),
        (Ending::Done, Some(r#"{"ok":"finally"}"#)),
        "{lines:?}"
    );

    let (result, _, _) = run(&http(&format!("      url: {base}/missing\n"))).await;
    assert_eq!(result.outcome(), AttemptOutcome::Failed);
    assert!(
        result.reason().unwrap().ends_with("/missing answered 404 Not Found: no such thing"),
        "{:?}",
        result.reason()
    );

    let (result, _, _) = run(&http(&format!("      url: {base}/cursor\n      extract: '$.nothing[*]'\n"))).await;
    let reason = result.reason().unwrap();
    assert!(reason.starts_with("`extract` `$.nothing[*]` matched nothing in the answer to page 1"), "{reason}");

    let (result, _, _) = run(&http("      url: http://127.0.0.1:9/nothing-listens\n      request_retries: 0\n")).await;
    assert!(result.reason().unwrap().contains("cannot connect"), "{:?}", result.reason());

    let mut small = http(&format!("      url: {base}/cursor\n"));
    small.output_limit = 10;
    let (result, _, _) = run(&small).await;
    assert!(result.reason().unwrap().contains("over the limit of 10"), "{:?}", result.reason());
}

#[tokio::test]
async fn http_posts_templated_json_with_bearer_auth() {
    let (base, _) = api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let task = "    http:\n      method: post\n      url: /echo\n      connection: public_data\n      auth: bearer\n      json: {day: '{{ ds }}', who: '{{ params.who }}', n: 3, list: ['{{ ds_nodash }}']}\n";
    let spec = with_connection(spec(dir.path(), task), &base);
    let (result, _, log) = run(&spec).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    let output: serde_json::Value = serde_json::from_str(result.output.as_deref().unwrap()).unwrap();
    assert_eq!(output["got"], serde_json::json!({ "day": "2024-03-01", "who": "world", "n": 3, "list": ["20240301"] }));
    assert_eq!(output["auth"], "Bearer k3y-s3cr3t");
}

#[tokio::test]
async fn python_runs_scripts_and_inline_code_with_templated_args() {
    let dir = tempfile::tempdir().unwrap();
    let code = "    python:\n      code: |\n        import json, os, sys\n        print('args', sys.argv[1:])\n        json.dump({'day': sys.argv[1], 'n': len({'a': 1})}, open(os.environ['UPDRAFT_OUTPUT'], 'w'))\n      args: ['{{ ds }}', '{{ params.who }}']\n";
    let (result, lines, log) = run(&spec(dir.path(), code)).await;
    assert_eq!(result.ending, Ending::Exited(0), "{log}");
    assert_eq!(lines, ["args ['2024-03-01', 'world']"]);
    assert_eq!(result.output.as_deref(), Some(r#"{"day": "2024-03-01", "n": 1}"#));
    assert!(log.contains("python: python3 -c 'import json, os, sys …' 2024-03-01 world"), "{log}");

    // A script next to the DAG file, run by a virtualenv's interpreter.
    let task =
        "    python:\n      script: jobs/transform.py\n      venv: .venv\n      args: ['--day={{ ds_nodash }}']\n";
    let script = spec(dir.path(), task);
    std::fs::create_dir_all(dir.path().join("dags/sub/jobs")).unwrap();
    std::fs::write(dir.path().join("dags/sub/jobs/transform.py"), "import sys\nprint(sys.executable.endswith('.venv/bin/python'), sys.argv[1])\nraise SystemExit(99 if sys.argv[1] == 'skip' else 0)\n").unwrap();
    let (result, _, log) = run(&script).await;
    assert_eq!(result.outcome(), AttemptOutcome::Failed, "no virtualenv yet");
    assert!(result.reason().unwrap().contains("no interpreter at"), "{log}");
    std::fs::create_dir_all(dir.path().join("dags/sub/.venv/bin")).unwrap();
    let python3 = real_python();
    std::os::unix::fs::symlink(&python3, dir.path().join("dags/sub/.venv/bin/python")).unwrap();
    let (result, lines, log) = run(&script).await;
    assert_eq!(result.ending, Ending::Exited(0), "{log}");
    assert_eq!(lines, ["True --day=20240301"]);

    // An exception fails the attempt, its traceback in the log.
    let (result, _, log) = run(&spec(dir.path(), "    python: {code: 'raise ValueError(\"bad row 7\")'}\n")).await;
    assert_eq!(result.ending, Ending::Exited(1));
    assert!(log.contains("ValueError: bad row 7"), "{log}");
}

/// The interpreter `python3` really is (not a shim in front of it).
fn real_python() -> std::path::PathBuf {
    let output =
        std::process::Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().unwrap();
    std::path::PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

fn with_sql_connection(mut spec: AttemptSpec, uri: &str) -> AttemptSpec {
    let mut secrets = updraft_store::Secrets::default();
    secrets.connections.insert("warehouse".into(), updraft_secrets::connection_from_uri(uri).unwrap());
    spec.secrets = Arc::new(secrets);
    spec
}

const SQL_TASK: &str = "    sql:\n      connection: warehouse\n      statements: |\n        CREATE TABLE codes (code text PRIMARY KEY, listed date NOT NULL, n int);\n        INSERT INTO codes VALUES (:code, :day, :n), ('000660', :day, 2);\n        -- the rows handed on\n        SELECT code, listed, n, n * 1.5 AS half FROM codes ORDER BY code\n      parameters: {code: \"x'); DROP TABLE codes; --\", day: '{{ ds }}', n: 7}\n";

#[tokio::test]
async fn sql_on_postgres_binds_parameters_by_the_inferred_types_in_one_transaction() {
    let Some(database) = updraft_testkit::postgres::TestDatabase::create() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (result, lines, log) = run(&with_sql_connection(spec(dir.path(), SQL_TASK), &database.url)).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    let rows: serde_json::Value = serde_json::from_str(result.output.as_deref().unwrap()).unwrap();
    assert_eq!(
        rows,
        serde_json::json!([
            {"code": "000660", "listed": "2024-03-01", "n": 2, "half": 3.0},
            {"code": "x'); DROP TABLE codes; --", "listed": "2024-03-01", "n": 7, "half": 10.5},
        ]),
        "a value is data, never SQL"
    );
    assert_eq!(lines, ["statement 1: 0 row(s) affected", "statement 2: 2 row(s) affected", "statement 3: 2 row(s)"]);

    // A failing statement undoes the ones before it.
    let failing = "    sql:\n      connection: warehouse\n      statements: \"INSERT INTO codes VALUES ('a', :day, 1); INSERT INTO codes VALUES ('b', 'not a date', 1)\"\n      parameters: {day: '{{ ds }}'}\n      output: count\n";
    let (result, _, _) = run(&with_sql_connection(spec(dir.path(), failing), &database.url)).await;
    let reason = result.reason().unwrap();
    assert!(reason.starts_with("statement 2: invalid input syntax for type date"), "{reason}");
    let count = "    sql:\n      connection: warehouse\n      statements: SELECT count(*) AS n FROM codes\n";
    let (result, _, _) = run(&with_sql_connection(spec(dir.path(), count), &database.url)).await;
    assert_eq!(result.output.as_deref(), Some(r#"[{"n":2}]"#), "statement 1 was rolled back");

    let missing = "    sql:\n      connection: warehouse\n      statements: SELECT :nope\n";
    let (result, _, _) = run(&with_sql_connection(spec(dir.path(), missing), &database.url)).await;
    assert_eq!(result.reason().unwrap(), "statement 1 uses `:nope`, but `parameters` has no `nope`");
}

#[tokio::test]
async fn sql_on_sqlite_and_row_limits() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("sqlite://{}", dir.path().join("local.db").display());
    let spec_with = |task: &str| with_sql_connection(spec(dir.path(), task), &uri);
    let (result, _, log) = run(&spec_with(SQL_TASK)).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    let rows: serde_json::Value = serde_json::from_str(result.output.as_deref().unwrap()).unwrap();
    assert_eq!(rows[1]["code"], "x'); DROP TABLE codes; --");
    assert_eq!((rows[0]["n"].clone(), rows[0]["half"].clone()), (serde_json::json!(2), serde_json::json!(3.0)));
    let limited = "    sql:\n      connection: warehouse\n      statements: SELECT code FROM codes ORDER BY code\n      max_rows: 1\n";
    let (result, lines, _) = run(&spec_with(limited)).await;
    assert_eq!(result.output.as_deref(), Some(r#"[{"code":"000660"}]"#));
    assert!(lines.iter().any(|line| line == "more than `max_rows` (1) rows: kept the first 1"), "{lines:?}");
    let count = "    sql:\n      connection: warehouse\n      statements: DELETE FROM codes WHERE n > :n\n      parameters: {n: 5}\n      output: count\n";
    let (result, _, _) = run(&spec_with(count)).await;
    assert_eq!(result.output.as_deref(), Some(r#"{"rows_affected":1}"#));
}

#[tokio::test]
async fn sql_on_mariadb_binds_text_and_hands_on_rows() {
    use sqlx::Connection;
    let admin = "mysql://root@127.0.0.1:3306/";
    let mut conn = match sqlx::MySqlConnection::connect(admin).await {
        Ok(conn) => conn,
        Err(error) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "no MariaDB for the tests under CI: {error}");
            #[allow(clippy::print_stderr)]
            {
                eprintln!("skipping: no MariaDB on 127.0.0.1:3306: {error}");
            }
            return;
        }
    };
    let name = format!(
        "updraft_test_{}_{}",
        std::process::id(),
        NEXT_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let task = "    sql:\n      connection: warehouse\n      statements: |\n        CREATE TABLE codes (code varchar(64) PRIMARY KEY, listed date NOT NULL, n int);\n        INSERT INTO codes VALUES (:code, :day, :n), ('000660', :day, 2);\n        SELECT code, listed, n, n * 1.5 AS half FROM codes WHERE listed = :day ORDER BY code\n      parameters: {code: \"x'); DROP TABLE codes; --\", day: '{{ ds }}', n: 7}\n";
    let (result, lines, log) =
        run(&with_sql_connection(spec(dir.path(), task), &format!("mysql://root@127.0.0.1:3306/{name}"))).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}"))).execute(&mut conn).await.unwrap();
    assert_eq!(result.ending, Ending::Done, "{log}");
    let rows: serde_json::Value = serde_json::from_str(result.output.as_deref().unwrap()).unwrap();
    assert_eq!(
        rows,
        serde_json::json!([
            {"code": "000660", "listed": "2024-03-01", "n": 2, "half": 3.0},
            {"code": "x'); DROP TABLE codes; --", "listed": "2024-03-01", "n": 7, "half": 10.5},
        ])
    );
    assert_eq!(lines.last().map(String::as_str), Some("statement 3: 2 row(s)"));
}

#[tokio::test]
async fn load_checks_rows_copies_them_into_postgresql_and_upserts() {
    use sqlx::{Connection, Row};
    let Some(database) = updraft_testkit::postgres::TestDatabase::create() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags/sub/data")).unwrap();
    std::fs::write(
        dir.path().join("dags/sub/data/listings_20240301.csv"),
        "Code,Listed,Amount,Note\n005930,2024-03-01,71000.5,\"Samsung, common\"\n000660,2024-02-30,150000,bad date\n035420,2024-03-01,,no amount\n",
    )
    .unwrap();
    let task = |mode: &str, max_rejected: u32| {
        format!(
            "    load:\n      source: data/listings_{{{{ ds_nodash }}}}.csv\n      connection: warehouse\n      table: public.listings\n      mode: {mode}\n      key: [code]\n      columns: {{code: text, listed: date, amount: numeric, note: text}}\n      rename: {{Code: code, Listed: listed, Amount: amount, Note: note}}\n      max_rejected: {max_rejected}\n"
        )
    };
    let strict = with_sql_connection(spec(dir.path(), &task("upsert", 0)), &database.url);
    let (result, lines, _) = run(&strict).await;
    let reason = result.reason().unwrap();
    assert!(reason.starts_with("1 row(s) of `"), "{reason}");
    assert!(reason.contains("line 3, column `listed`: `2024-02-30` is not a date (YYYY-MM-DD)"), "{reason}");
    assert!(lines[0].contains("listings_20240301.csv:3: column `listed`"), "{lines:?}");
    let mut conn = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let exists: bool =
        sqlx::query("SELECT to_regclass('public.listings') IS NOT NULL").fetch_one(&mut conn).await.unwrap().get(0);
    assert!(!exists, "nothing written when the load fails");

    let lenient = with_sql_connection(spec(dir.path(), &task("upsert", 1)), &database.url);
    let (result, _, log) = run(&lenient).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    let output: serde_json::Value = serde_json::from_str(result.output.as_deref().unwrap()).unwrap();
    assert_eq!((output["loaded"].clone(), output["rejected"].clone()), (serde_json::json!(2), serde_json::json!(1)));
    assert_eq!(output["rejected_rows"][0]["line"], 3);
    let rows: Vec<(String, Option<String>, String)> =
        sqlx::query_as("SELECT code, amount::text, note FROM listings ORDER BY code")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            ("005930".to_string(), Some("71000.5".to_string()), "Samsung, common".to_string()),
            ("035420".to_string(), None, "no amount".to_string()),
        ]
    );

    // Loading a changed file again updates rows by their key instead of adding them.
    std::fs::write(
        dir.path().join("dags/sub/data/listings_20240301.csv"),
        "Code,Listed,Amount,Note\n005930,2024-03-01,72000,updated\n",
    )
    .unwrap();
    let (result, _, log) = run(&lenient).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT code, note FROM listings ORDER BY code").fetch_all(&mut conn).await.unwrap();
    assert_eq!(rows, [("005930".to_string(), "updated".to_string()), ("035420".to_string(), "no amount".to_string())]);

    // NDJSON with inferred types: codes with leading zeros stay text.
    std::fs::write(
        dir.path().join("dags/sub/data/prices.ndjson"),
        "{\"code\": \"005930\", \"day\": \"2024-03-01\", \"close\": 71000, \"up\": true}\n{\"code\": \"000660\", \"day\": \"2024-03-01\", \"close\": 150000.5, \"up\": false}\n",
    )
    .unwrap();
    let ndjson = "    load: {source: data/prices.ndjson, connection: warehouse, table: prices, mode: replace}\n";
    let (result, _, log) = run(&with_sql_connection(spec(dir.path(), ndjson), &database.url)).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    let types: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_name = 'prices' ORDER BY ordinal_position",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let types: Vec<(&str, &str)> = types.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    // JSON objects' keys come in name order (declare `columns` to choose another).
    assert_eq!(types, [("close", "double precision"), ("code", "text"), ("day", "date"), ("up", "boolean")]);

    // A malformed CSV row names its line.
    std::fs::write(dir.path().join("dags/sub/data/broken.csv"), "a,b\n1,2\n3\n").unwrap();
    let broken = "    load: {source: data/broken.csv, connection: warehouse, table: broken}\n";
    let (result, _, _) = run(&with_sql_connection(spec(dir.path(), broken), &database.url)).await;
    let reason = result.reason().unwrap();
    assert!(reason.ends_with("broken.csv`:3: 1 field(s) where the header has 2"), "{reason}");
}

#[tokio::test]
async fn load_reads_a_sheet_of_a_spreadsheet_from_its_header_row() {
    use sqlx::Connection;
    let Some(database) = updraft_testkit::postgres::TestDatabase::create() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags/sub/data")).unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/listings.xlsx");
    std::fs::copy(&fixture, dir.path().join("dags/sub/data/listings.xlsx")).unwrap();
    // The table starts at A3, under a title; D7 holds an Excel error (#N/A).
    let task = |sheet: &str, max_rejected: u32| {
        format!(
            "    load:\n      source: data/listings.xlsx\n      sheet: {sheet}\n      range: A3\n      connection: warehouse\n      table: listings\n      mode: replace\n      rename: {{Code: code, Name: name, Listed: listed, Amount: amount, Preferred: preferred}}\n      columns: {{code: text, name: text, listed: date, amount: numeric, preferred: boolean}}\n      max_rejected: {max_rejected}\n"
        )
    };
    let (result, lines, log) = run(&with_sql_connection(spec(dir.path(), &task("Listings", 1)), &database.url)).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    assert!(lines[0].contains("listings.xlsx:7: column `amount`: `#N/A`"), "{lines:?}");
    let mut conn = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let rows: Vec<(String, String, Option<String>, bool)> =
        sqlx::query_as("SELECT code, listed::text, amount::text, preferred FROM listings ORDER BY code")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            ("000660".to_string(), "1996-12-26".to_string(), Some("150000".to_string()), false),
            ("005930".to_string(), "1975-06-11".to_string(), Some("71000.5".to_string()), false),
            ("035420".to_string(), "2008-11-28".to_string(), None, true),
        ]
    );

    // A wrong sheet name is an error naming the sheets there are.
    let (result, _, _) = run(&with_sql_connection(spec(dir.path(), &task("Listngs", 1)), &database.url)).await;
    let reason = result.reason().unwrap();
    assert!(reason.ends_with("has no sheet `Listngs` (its sheets: Listings, Notes)"), "{reason}");
}
