//! The worker protocol end to end: a real server on 127.0.0.1, the worker's own
//! HTTP client (`ApiSource`), and the store behind them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use updraft_core::RunId;
use updraft_core::TaskState;
use updraft_core::clock::{Clock, SystemClock};
use updraft_core::plan::{Action, RunType};
use updraft_runner::{ApiSource, SourceError, WorkSource};
use updraft_server::AppState;
use updraft_store::{
    AttemptEnd, Claimant, DagUpsert, FinishedAttempt, LogChunk, NewProcess, NewRun, ProcessKind, ProcessState, Scope,
    Store,
};

const TOKEN: &str = "s3cret-token";

/// The server's Fernet key (a worker never holds it).
const KEY: &str = "RPEidN6UG47M0ygEYCoPl6mdFKokJhbXo6Jm9yJJs-I=";

struct Server {
    base: String,
    store: Store,
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

async fn server(token: Option<&str>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = updraft_store::open("sqlite://updraft.db", dir.path()).await.unwrap();
    let state = AppState::new(store.clone(), Arc::new(SystemClock), token.map(str::to_string))
        .with_cipher(Some(Arc::new(updraft_auth::Cipher::from_keys(KEY).unwrap())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(updraft_server::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Server { base, store, stop: Some(stop), _dir: dir }
}

/// A DAG `chain` (a -> b) with one run; returns the run's task instances by id.
async fn one_run(store: &Store) -> (i64, i64, updraft_core::plan::DagVersion) {
    let parsed = updraft_dagfile::parse_dag(
        "dag: chain\ntasks:\n  a: {shell: 'echo a'}\n  b: {shell: 'echo b', depends_on: [a]}\n",
        "chain.yaml",
    );
    let dag = Arc::new(parsed.dag.unwrap());
    let version = updraft_dagfile::version_of(&dag);
    let now = SystemClock.now();
    store
        .upsert_dags(
            &[DagUpsert { dag: dag.clone(), version: version.clone(), paused_if_new: false, source: None }],
            now,
        )
        .await
        .unwrap();
    let run = NewRun {
        dag,
        version: version.clone(),
        run_id: RunId::new("r1").unwrap(),
        run_type: RunType::Manual,
        logical_date: now,
        interval: updraft_core::DataInterval { start: now, end: now },
        conf: serde_json::Map::new(),
        owner_process: None,
        with_retries: true,
    };
    let run_pk = store.create_run(&run, "test", now).await.unwrap().unwrap();
    store.apply(&[Action::StartRun { run_pk }], "test", now).await.unwrap();
    let tis = store.task_instances(run_pk).await.unwrap();
    let a = tis.iter().find(|ti| ti.task_id == "a").unwrap().ti_pk;
    (run_pk, a, version)
}

async fn queue(store: &Store, ti_pk: i64) {
    let actions = [
        Action::SetTaskState { ti_pk, from: TaskState::None, to: TaskState::Scheduled },
        Action::SetTaskState { ti_pk, from: TaskState::Scheduled, to: TaskState::Queued },
    ];
    store.apply(&actions, "test", SystemClock.now()).await.unwrap();
}

fn worker(process_id: i64, queues: Option<Vec<String>>) -> Claimant {
    Claimant { process_id, hostname: "remote-host".into(), queues }
}

fn new_worker() -> NewProcess {
    NewProcess { kind: ProcessKind::Worker, hostname: "remote-host".into(), pid: 4242, pid_start: Some(7) }
}

async fn get_log(base: &str, path_tail: &str) -> (u16, String, Option<String>, Option<String>) {
    let response = reqwest::get(format!("{base}/api/v1/dags/chain/runs/r1/tasks/{path_tail}")).await.unwrap();
    let header = |name: &str| response.headers().get(name).map(|value| value.to_str().unwrap().to_string());
    let (offset, state) = (header("x-updraft-log-offset"), header("x-updraft-attempt-state"));
    (response.status().as_u16(), response.text().await.unwrap(), offset, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_worker_runs_an_attempt_through_the_api() {
    let server = server(Some(TOKEN)).await;
    let (run_pk, a, version) = one_run(&server.store).await;
    queue(&server.store, a).await;
    let api = ApiSource::new(&server.base, TOKEN, Arc::default()).unwrap();

    let process_id = api.register(&new_worker()).await.unwrap();
    let processes = server.store.processes(Some(ProcessState::Running)).await.unwrap();
    let registered = processes.iter().find(|process| process.id == process_id).unwrap();
    assert_eq!(
        (registered.kind, registered.hostname.as_str(), registered.pid),
        (ProcessKind::Worker, "remote-host", 4242)
    );

    let claimed = api.claim(Scope::All, &worker(process_id, None), 4, Duration::ZERO).await.unwrap();
    assert_eq!(claimed.iter().map(|c| (c.ti_pk, c.try_number)).collect::<Vec<_>>(), vec![(a, 1)]);
    let dag = api.definition("chain", &version).await.unwrap();
    assert_eq!(dag.task("a").unwrap().task_id.as_str(), "a");

    // A heartbeat renews the current lease and names a stale token as lost.
    let beat = api.heartbeat(process_id, &[(a, 1), (a, 9)]).await.unwrap();
    assert!(beat.alive);
    assert_eq!(beat.lost, vec![(a, 9)]);

    api.record_process(a, 1, 999, None, "/remote/logs/a/1.log").await.unwrap();
    // The log is readable while the attempt runs.
    api.append_logs(&[LogChunk { ti_pk: a, try_number: 1, offset: 0, data: b"hello\n".to_vec() }]).await.unwrap();
    let (status, text, offset, state) = get_log(&server.base, "a/tries/1/log").await;
    assert_eq!((status, text.as_str()), (200, "hello\n"));
    assert_eq!((offset.as_deref(), state.as_deref()), (Some("6"), Some("running")));

    let end = AttemptEnd {
        state: TaskState::Success,
        retry_at: None,
        exit_code: Some(0),
        reason: None,
        process: None,
        output: Some(r#"{"codes": ["005930"]}"#.to_string()),
        reschedule: false,
    };
    let ends = [FinishedAttempt { ti_pk: a, try_number: 1, end }];
    let tail = [LogChunk { ti_pk: a, try_number: 1, offset: 6, data: b"bye\n".to_vec() }];
    assert_eq!(api.finish(&ends, &tail, "ignored").await.unwrap(), vec![true]);
    // Its output reaches the next task's worker through the API.
    let outputs = api.outputs("chain", "r1").await.unwrap();
    assert_eq!(outputs.get("a").map(String::as_str), Some(r#"{"codes": ["005930"]}"#));
    // The same end again is fenced off: the attempt is no longer running.
    assert_eq!(api.finish(&ends, &[], "ignored").await.unwrap(), vec![false]);

    let (status, text, offset, state) = get_log(&server.base, "a/tries/1/log").await;
    assert_eq!(
        (status, text.as_str(), offset.as_deref(), state.as_deref()),
        (200, "hello\nbye\n", Some("10"), Some("success"))
    );
    let (_, text, _, _) = get_log(&server.base, "a/tries/1/log?offset=6").await;
    assert_eq!(text, "bye\n");
    let (status, text, _, _) = get_log(&server.base, "a/tries/2/log").await;
    assert_eq!(status, 404);
    assert!(text.contains("has no try 2"), "{text}");

    let ti = server.store.task_instances(run_pk).await.unwrap().into_iter().find(|ti| ti.ti_pk == a).unwrap();
    assert_eq!(ti.state, TaskState::Success);
    let attempts = server.store.task_attempts(a).await.unwrap();
    assert_eq!(attempts[0].hostname.as_deref(), Some("remote-host"));

    api.deregister(process_id).await.unwrap();
    let stopped = server.store.processes(Some(ProcessState::Stopped)).await.unwrap();
    assert!(stopped.iter().any(|process| process.id == process_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_claim_answers_when_work_is_queued() {
    let server = server(Some(TOKEN)).await;
    let (_, a, _) = one_run(&server.store).await;
    let api = Arc::new(ApiSource::new(&server.base, TOKEN, Arc::default()).unwrap());
    let process_id = api.register(&new_worker()).await.unwrap();
    let started = Instant::now();
    let waiting = {
        let api = api.clone();
        tokio::spawn(async move { api.claim(Scope::All, &worker(process_id, None), 4, Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "nothing is queued: the claim waits");
    queue(&server.store, a).await;
    let claimed = waiting.await.unwrap().unwrap();
    let waited = started.elapsed();
    assert_eq!(claimed.len(), 1);
    assert!(waited < Duration::from_millis(900), "woken by the change, not a periodic look: {waited:?}");

    // With nothing queued, a claim returns empty when its wait is over.
    let started = Instant::now();
    let claimed = api.claim(Scope::All, &worker(process_id, None), 4, Duration::from_millis(400)).await.unwrap();
    assert!(claimed.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_requests_need_the_token() {
    let open = server(Some(TOKEN)).await;
    let wrong = ApiSource::new(&open.base, "not-the-token", Arc::default()).unwrap();
    match wrong.register(&new_worker()).await {
        Err(SourceError::Refused { status: 401, message, .. }) => {
            assert_eq!(message, "unknown, revoked or expired worker token")
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    let client = reqwest::Client::new();
    let response =
        client.post(format!("{}/api/v1/workers", open.base)).json(&serde_json::json!({})).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // Bad input is a 400 in the API's error format, not a panic or a 500.
    let response = client
        .post(format!("{}/api/v1/workers", open.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"hostname\": 5}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "bad_request");
    assert!(body["detail"].as_str().unwrap().contains("hostname"), "{body}");
    // A worker cannot record an end the state machine forbids.
    let right = ApiSource::new(&open.base, TOKEN, Arc::default()).unwrap();
    let process_id = right.register(&new_worker()).await.unwrap();
    let end = AttemptEnd {
        state: TaskState::Queued,
        retry_at: None,
        exit_code: None,
        reason: None,
        process: None,
        output: None,
        reschedule: false,
    };
    match right.finish(&[FinishedAttempt { ti_pk: 1, try_number: 1, end }], &[], "x").await {
        Err(SourceError::Refused { status: 400, .. }) => {}
        other => panic!("expected a 400, got {other:?}"),
    }
    assert!(process_id > 0);

    // Without a token configured, the worker API is off.
    let closed = server(None).await;
    let api = ApiSource::new(&closed.base, TOKEN, Arc::default()).unwrap();
    match api.register(&new_worker()).await {
        Err(SourceError::Refused { status: 403, message, .. }) => {
            assert!(message.contains("worker.token"), "{message}")
        }
        other => panic!("expected a 403, got {other:?}"),
    }

    // Per-worker tokens open it too, each revocable alone; the shared one is not needed.
    let now = SystemClock.now();
    let (gpu1, hash1) = updraft_auth::new_token("worker").unwrap();
    let (gpu2, hash2) = updraft_auth::new_token("worker").unwrap();
    let first = closed.store.create_worker_token("gpu-1", &hash1, None, now).await.unwrap();
    closed.store.create_worker_token("gpu-2", &hash2, None, now).await.unwrap();
    let one = ApiSource::new(&closed.base, &gpu1, Arc::default()).unwrap();
    let two = ApiSource::new(&closed.base, &gpu2, Arc::default()).unwrap();
    assert!(one.register(&new_worker()).await.unwrap() > 0);
    assert!(two.register(&new_worker()).await.unwrap() > 0);
    let wrong = ApiSource::new(&closed.base, TOKEN, Arc::default()).unwrap();
    assert!(matches!(wrong.register(&new_worker()).await, Err(SourceError::Refused { status: 401, .. })));
    assert!(closed.store.delete_worker_token(first).await.unwrap());
    match one.register(&new_worker()).await {
        Err(SourceError::Refused { status: 401, message, .. }) => assert!(message.contains("revoked"), "{message}"),
        other => panic!("expected a 401, got {other:?}"),
    }
    assert!(two.register(&new_worker()).await.unwrap() > 0, "the other worker carries on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_get_variables_and_connections_decrypted_by_the_server() {
    let open = server(Some(TOKEN)).await;
    let cipher = updraft_auth::Cipher::from_keys(KEY).unwrap();
    let now = SystemClock.now();
    open.store.set_variable("vendor_api_key", &cipher.encrypt("sk-live-1"), "", now).await.unwrap();
    let connection = updraft_store::ConnectionRow {
        conn_id: "warehouse".into(),
        conn_type: "postgres".into(),
        password: Some(cipher.encrypt("hunter2hunter2")),
        ..Default::default()
    };
    open.store.set_connection(&connection, now).await.unwrap();
    let worker = ApiSource::new(&open.base, TOKEN, Arc::default()).unwrap();
    let secrets = worker.secrets().await.unwrap();
    assert_eq!(secrets.variables["vendor_api_key"], "sk-live-1");
    assert_eq!(secrets.connections["warehouse"].password.as_deref(), Some("hunter2hunter2"));
    let stranger = ApiSource::new(&open.base, "wrong-token", Arc::default()).unwrap();
    assert!(matches!(stranger.secrets().await, Err(SourceError::Refused { status: 401, .. })));
}
