//! Alerts, the digest and deadlines against a real store, with a local HTTP server
//! standing in for Slack and a webhook receiver, and a manual clock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use updraft_core::clock::ManualClock;
use updraft_core::plan::{Action, DagVersion, RunType};
use updraft_core::{Dag, DataInterval, RunId, RunState, TaskState};
use updraft_ops::notifier::{SlackConfig, WebhookConfig};
use updraft_ops::{DigestConfig, MaintenanceConfig, NotifierConfig, Ops, OpsConfig};
use updraft_store::*;

const NOW: &str = "2026-01-02T10:03:00Z";

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// What the receiver got: path and JSON body, in order.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

struct Receiver {
    url: String,
    got: Received,
    /// Requests to `/flaky` answered 500 before it accepts.
    flaky_failures: Arc<AtomicUsize>,
}

impl Receiver {
    fn bodies(&self, path: &str) -> Vec<Value> {
        self.got.lock().unwrap().iter().filter(|(at, _)| at == path).map(|(_, body)| body.clone()).collect()
    }
}

async fn receiver() -> Receiver {
    use axum::http::{HeaderMap, StatusCode, Uri};
    let got: Received = Arc::default();
    let flaky_failures = Arc::new(AtomicUsize::new(0));
    let (seen, failures) = (got.clone(), flaky_failures.clone());
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
        let (seen, failures) = (seen.clone(), failures.clone());
        async move {
            let path = uri.path().to_string();
            if path == "/flaky" && failures.load(Ordering::SeqCst) > 0 {
                failures.fetch_sub(1, Ordering::SeqCst);
                return (StatusCode::INTERNAL_SERVER_ERROR, "try later".to_string());
            }
            let mut body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if let Some(token) = headers.get("x-token") {
                body["x-token header"] = Value::from(token.to_str().unwrap());
            }
            seen.lock().unwrap().push((path, body));
            (StatusCode::OK, "ok".to_string())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { url, got, flaky_failures }
}

fn slack(url: String, max_per_minute: Option<u32>) -> NotifierConfig {
    NotifierConfig::Slack(SlackConfig { webhook_url: url, channel: None, username: None, max_per_minute })
}

fn ops(
    store: &Store,
    notifiers: BTreeMap<String, NotifierConfig>,
    digest: Option<DigestConfig>,
    clock: &Arc<ManualClock>,
) -> Ops {
    let config = OpsConfig {
        notifiers,
        ui_url: "http://updraft.test/".into(),
        digest,
        maintenance: MaintenanceConfig { enabled: false, ..MaintenanceConfig::default() },
        logs_folder: std::env::temp_dir(),
    };
    Ops::new(store.clone(), Arc::new(DefinitionCache::default()), config, clock.clone())
}

async fn record(store: &Store, yaml: &str) -> (Arc<Dag>, DagVersion) {
    let parsed = updraft_dagfile::parse_dag(yaml, "test.yaml");
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let dag = Arc::new(parsed.dag.unwrap());
    let version = updraft_dagfile::version_of(&dag);
    let upsert = DagUpsert { dag: dag.clone(), version: version.clone(), paused_if_new: false, source: None };
    store.upsert_dags(&[upsert], ts(NOW)).await.unwrap();
    // No scheduler here: the DAG is not due (else the digest reports it late).
    let unscheduled = Action::SetDagSchedule { dag_id: dag.dag_id().clone(), last_automated: None, next_due: None };
    store.apply(&[unscheduled], "scheduler:1", ts(NOW)).await.unwrap();
    (dag, version)
}

async fn start_run(
    store: &Store,
    dag: &Arc<Dag>,
    version: &DagVersion,
    run_id: &str,
    run_type: RunType,
    end: &str,
) -> i64 {
    let run_pk = create_run(store, dag, version, run_id, run_type, end).await;
    store.apply(&[Action::StartRun { run_pk }], "scheduler:1", ts(NOW)).await.unwrap();
    run_pk
}

async fn create_run(
    store: &Store,
    dag: &Arc<Dag>,
    version: &DagVersion,
    run_id: &str,
    run_type: RunType,
    end: &str,
) -> i64 {
    let run = NewRun {
        dag: dag.clone(),
        version: version.clone(),
        run_id: RunId::new(run_id).unwrap(),
        run_type,
        logical_date: ts(end) - SignedDuration::from_hours(24),
        interval: DataInterval { start: ts(end) - SignedDuration::from_hours(24), end: ts(end) },
        conf: serde_json::Map::new(),
        owner_process: None,
        with_retries: true,
    };
    store.create_run(&run, "test", ts(NOW)).await.unwrap().unwrap()
}

/// Moves a run as an operator would (its tasks as they are).
async fn set_run(store: &Store, run_pk: i64, from: RunState, to: RunState, at: Timestamp) {
    let change = updraft_core::intervene::Intervention { run: Some((from, to)), ..Default::default() };
    store.intervene(run_pk, &change, "test", at).await.unwrap();
}

/// Runs the run's queued-able tasks once each, ending them in `state` with a log.
async fn run_tasks(store: &Store, run_pk: i64, task_ids: &[&str], state: TaskState, log_dir: &std::path::Path) {
    run_tasks_at(store, run_pk, task_ids, state, log_dir, ts(NOW)).await;
}

async fn run_tasks_at(
    store: &Store,
    run_pk: i64,
    task_ids: &[&str],
    state: TaskState,
    log_dir: &std::path::Path,
    at: Timestamp,
) {
    let instances = store.task_instances(run_pk).await.unwrap();
    let mut actions = Vec::new();
    for ti in instances.iter().filter(|ti| task_ids.contains(&ti.task_id.as_str())) {
        if ti.state != TaskState::Scheduled {
            actions.push(Action::SetTaskState { ti_pk: ti.ti_pk, from: ti.state, to: TaskState::Scheduled });
        }
        actions.push(Action::SetTaskState { ti_pk: ti.ti_pk, from: TaskState::Scheduled, to: TaskState::Queued });
    }
    store.apply(&actions, "scheduler:1", at).await.unwrap();
    let me = Claimant { process_id: 1, hostname: "h".into(), queues: None };
    for claimed in store.claim(Scope::Run(run_pk), &me, 100, at).await.unwrap() {
        let log = log_dir.join(format!("{}.log", claimed.ti_pk));
        std::fs::write(&log, "starting\nconnecting to db\nERROR: relation \"sales\" does not exist\n").unwrap();
        let end = AttemptEnd {
            state,
            retry_at: (state == TaskState::UpForRetry).then(|| at + SignedDuration::from_mins(5)),
            exit_code: Some(if state == TaskState::Success { 0 } else { 1 }),
            reason: (state != TaskState::Success).then(|| "exit code 1".to_string()),
            process: Some(AttemptProcess { pid: 42, pid_start: None, log_path: Some(log.display().to_string()) }),
            output: None,
            reschedule: false,
        };
        assert!(store.finish_attempt(claimed.ti_pk, claimed.try_number, &end, "runner:1", at).await.unwrap());
    }
}

const ETL: &str = "
dag: etl
alerts:
  on_failure: team
tasks:
  extract: {shell: 'true'}
  load:
    shell: exit 1
    depends_on: extract
    alerts: {on_failure: [team, hook]}
";

async fn a_failure_alerts_each_notifier_once(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let server = receiver().await;
    let clock = Arc::new(ManualClock::new(ts(NOW)));
    let notifiers = BTreeMap::from([
        ("team".to_string(), slack(format!("{}/slack", server.url), None)),
        (
            "hook".to_string(),
            NotifierConfig::Webhook(WebhookConfig {
                url: format!("{}/hook", server.url),
                headers: BTreeMap::from([("X-Token".to_string(), "abc".to_string())]),
                max_per_minute: None,
            }),
        ),
    ]);
    // Two processes (two schedulers) run the jobs on one store.
    let mut first = ops(&store, notifiers.clone(), None, &clock);
    let mut second = ops(&store, notifiers, None, &clock);
    let (dag, version) = record(&store, ETL).await;
    let run_pk = start_run(&store, &dag, &version, "manual__1", RunType::Manual, NOW).await;
    first.step().await; // starts reading from here: history before is not news
    run_tasks(&store, run_pk, &["extract"], TaskState::Success, dir.path()).await;
    run_tasks(&store, run_pk, &["load"], TaskState::Failed, dir.path()).await;
    store.apply(&[Action::FinishRun { run_pk, state: RunState::Failed }], "scheduler:1", ts(NOW)).await.unwrap();

    let (a, b) = tokio::join!(first.step(), second.step());
    assert_eq!(a.queued + b.queued, 3, "task failure to team and hook, run failure to team");
    for _ in 0..2 {
        first.step().await;
        second.step().await;
    }
    let slack_messages = server.bodies("/slack");
    assert_eq!(slack_messages.len(), 2, "{slack_messages:#?}");
    let task = slack_messages.iter().find(|m| m["text"] == "etl.load failed").expect("the task's alert");
    let blocks = task["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["text"]["text"], ":red_circle: *etl.load failed*");
    let fields: Vec<&str> =
        blocks[1]["fields"].as_array().unwrap().iter().map(|f| f["text"].as_str().unwrap()).collect();
    assert_eq!(fields, ["*DAG*\netl", "*Task*\nload", "*Run*\nmanual__1", "*Try*\n1 of 1"]);
    assert_eq!(blocks[2]["text"]["text"], "exit code 1");
    assert_eq!(blocks[3]["text"]["text"], "```starting\nconnecting to db\nERROR: relation \"sales\" does not exist```");
    assert_eq!(
        blocks[4]["elements"][0]["text"],
        "<http://updraft.test/dags/etl/runs/manual__1/tasks/load?try=1|View the log>"
    );
    let run = slack_messages.iter().find(|m| m["text"] == "etl run failed").expect("the run's alert");
    let text = run.to_string();
    assert!(text.contains("Failed tasks (1)") && text.contains("• load"), "{text}");

    let hooks = server.bodies("/hook");
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0]["kind"], "task_failed");
    assert_eq!(hooks[0]["dag_id"], "etl");
    assert_eq!(hooks[0]["task_id"], "load");
    assert_eq!(hooks[0]["try_number"], 1);
    assert_eq!(hooks[0]["source"], "updraft");
    assert_eq!(hooks[0]["x-token header"], "abc");
    assert_eq!(store.alert_counts().await.unwrap(), BTreeMap::from([("sent".to_string(), 3)]));

    // A person marking a task failed raises nothing.
    let ti = store.task_instances(run_pk).await.unwrap().into_iter().find(|ti| ti.task_id == "extract").unwrap();
    let mark = updraft_core::intervene::Intervention {
        tasks: vec![(ti.ti_pk, TaskState::Success, TaskState::Failed)],
        ..Default::default()
    };
    store.intervene(run_pk, &mark, "api:alice", ts(NOW)).await.unwrap();
    assert_eq!(first.step().await.queued, 0);
}

async fn a_failing_notifier_is_retried_in_the_background(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let server = receiver().await;
    server.flaky_failures.store(2, Ordering::SeqCst);
    let clock = Arc::new(ManualClock::new(ts(NOW)));
    let notifiers = BTreeMap::from([("team".to_string(), slack(format!("{}/flaky", server.url), None))]);
    let mut jobs = ops(&store, notifiers, None, &clock);
    let (dag, version) =
        record(&store, "dag: flaky\ntasks:\n  t: {shell: 'exit 1', retries: 1, alerts: {on_retry: team}}\n").await;
    let run_pk = start_run(&store, &dag, &version, "manual__1", RunType::Manual, NOW).await;
    jobs.step().await;
    run_tasks(&store, run_pk, &["t"], TaskState::UpForRetry, dir.path()).await;

    let step = jobs.step().await;
    assert_eq!((step.queued, step.sent.sent, step.sent.failed), (1, 0, 1));
    // Not due again yet: nothing is tried.
    assert_eq!(jobs.step().await.sent.failed, 0);
    clock.advance(SignedDuration::from_secs(5));
    assert_eq!(jobs.step().await.sent.failed, 1, "the second try fails too");
    clock.advance(SignedDuration::from_secs(5));
    assert_eq!(jobs.step().await.sent.sent, 0, "the third waits 10 s");
    clock.advance(SignedDuration::from_secs(5));
    assert_eq!(jobs.step().await.sent.sent, 1);
    let got = server.bodies("/flaky");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["text"], "flaky.t failed; will retry");
}

async fn over_the_rate_limit_the_rest_go_as_one_summary(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let server = receiver().await;
    let clock = Arc::new(ManualClock::new(ts(NOW)));
    let notifiers = BTreeMap::from([("team".to_string(), slack(format!("{}/slack", server.url), Some(5)))]);
    let mut jobs = ops(&store, notifiers, None, &clock);
    let tasks: String = (0..12).map(|n| format!("  t{n:02}: {{shell: 'exit 1'}}\n")).collect();
    let (dag, version) =
        record(&store, &format!("dag: wide\ndefaults:\n  alerts: {{on_failure: team}}\ntasks:\n{tasks}")).await;
    let run_pk = start_run(&store, &dag, &version, "manual__1", RunType::Manual, NOW).await;
    jobs.step().await;
    let ids: Vec<String> = (0..12).map(|n| format!("t{n:02}")).collect();
    run_tasks(&store, run_pk, &ids.iter().map(String::as_str).collect::<Vec<_>>(), TaskState::Failed, dir.path()).await;

    let step = jobs.step().await;
    assert_eq!(step.queued, 12);
    assert_eq!((step.sent.sent, step.sent.folded), (5, 7));
    let got = server.bodies("/slack");
    assert_eq!(got.len(), 5, "the limit holds");
    assert_eq!(got[4]["text"], "8 more alerts in the last minute (rate limit)");
    let listed = got[4].to_string();
    assert!(listed.contains("wide.t04 failed") && listed.contains("wide.t11 failed"), "{listed}");
}

async fn the_digest_lists_what_was_not_normal(store: Store) {
    let server = receiver().await;
    let clock = Arc::new(ManualClock::new(ts("2026-01-02T10:01:00Z")));
    let notifiers = BTreeMap::from([("team".to_string(), slack(format!("{}/slack", server.url), None))]);
    let digest = DigestConfig {
        notifier: "team".into(),
        every: std::time::Duration::from_secs(600),
        late_after: std::time::Duration::from_secs(1800),
        stuck_after: std::time::Duration::from_secs(900),
        heartbeat_timeout: std::time::Duration::from_secs(60),
        send_when_quiet: false,
    };
    let mut jobs = ops(&store, notifiers.clone(), Some(digest.clone()), &clock);
    assert!(jobs.step().await.digest.is_none(), "the first window starts now");

    // 10:03: a run fails, a scheduled run waits (its interval ended 09:00), a task
    // is ready but never queued, a file breaks, a worker dies.
    let (dag, version) = record(&store, "dag: sales\ntasks:\n  a: {shell: 'true'}\n  b: {shell: 'true'}\n").await;
    let failed = start_run(&store, &dag, &version, "manual__1", RunType::Manual, NOW).await;
    set_run(&store, failed, RunState::Running, RunState::Failed, ts(NOW)).await;
    let waiting = create_run(
        &store,
        &dag,
        &version,
        "scheduled__2026-01-02T09:00:00+00:00",
        RunType::Scheduled,
        "2026-01-02T09:00:00Z",
    )
    .await;
    let stuck = start_run(&store, &dag, &version, "manual__2", RunType::Manual, NOW).await;
    let ti = store.task_instances(stuck).await.unwrap().into_iter().find(|ti| ti.task_id == "b").unwrap();
    store
        .apply(
            &[Action::SetTaskState { ti_pk: ti.ti_pk, from: TaskState::None, to: TaskState::Scheduled }],
            "scheduler:1",
            ts(NOW),
        )
        .await
        .unwrap();
    store
        .replace_import_errors(
            &[ImportError {
                fileloc: "broken.yaml".into(),
                message: "broken.yaml:3:5: unknown field `shel`\nmore".into(),
            }],
            ts(NOW),
        )
        .await
        .unwrap();
    let worker = store
        .register_process(
            &NewProcess { kind: ProcessKind::Worker, hostname: "box-7".into(), pid: 4242, pid_start: None },
            ts("2026-01-02T10:12:00Z"),
        )
        .await
        .unwrap();
    store
        .set_process_state(worker, ProcessState::Running, ProcessState::Dead, ts("2026-01-02T10:13:00Z"))
        .await
        .unwrap();

    clock.set(ts("2026-01-02T10:20:30Z"));
    let digest_notice = jobs.step().await.digest.expect("a digest for 10:10-10:20");
    let got = server.bodies("/slack");
    assert_eq!(got.len(), 1);
    let text = got[0].to_string();
    assert_eq!(
        digest_notice.title,
        "Updraft digest 2026-01-02 10:10–10:20 UTC: 1 DAG not scheduled normally, 1 broken file"
    );
    for expected in [
        "Late runs (1, more than 30m behind schedule)",
        "sales — scheduled__2026-01-02T09:00:00+00:00 not started, 1h 20m after its interval ended",
        "DAG files that do not parse (1)",
        "broken.yaml: broken.yaml:3:5: unknown field `shel`",
        "Tasks stuck waiting (1, longer than 15m)",
        "sales — manual__2 b scheduled for 17m",
        "Schedulers and workers that stopped (1)",
        // (PostgreSQL records the time it was found dead as its last heartbeat.)
        "worker on box-7 (pid 4242) was found dead; last heartbeat 2026-01-02 10:1",
    ] {
        assert!(text.contains(&expected.replace('"', "\\\"")), "missing {expected:?} in {text}");
    }
    // The failure at 10:03 was in the 10:00-10:10 window, which this process first
    // saw close now: after a pause, only the last window is reported.
    assert!(!text.contains("Failed runs"), "{text}");
    // Another process for the same window adds nothing.
    let mut other = ops(&store, notifiers.clone(), Some(digest.clone()), &clock);
    assert!(other.step().await.digest.is_none());

    // All well in the next window: no message.
    store.replace_import_errors(&[], ts(NOW)).await.unwrap();
    let before = ts("2026-01-02T10:19:00Z");
    let logs = tempfile::tempdir().unwrap();
    run_tasks_at(&store, stuck, &["b"], TaskState::Success, logs.path(), before).await;
    store.apply(&[Action::StartRun { run_pk: waiting }], "scheduler:1", before).await.unwrap();
    for run_pk in [stuck, waiting] {
        set_run(&store, run_pk, RunState::Running, RunState::Success, before).await;
    }
    clock.set(ts("2026-01-02T10:30:30Z"));
    assert!(jobs.step().await.digest.is_none());
    // A failure in a window is listed; `send_when_quiet` would report a quiet one.
    clock.set(ts("2026-01-02T10:33:00Z"));
    let again = start_run(&store, &dag, &version, "manual__3", RunType::Manual, NOW).await;
    set_run(&store, again, RunState::Running, RunState::Failed, ts("2026-01-02T10:33:00Z")).await;
    clock.set(ts("2026-01-02T10:40:10Z"));
    let notice = jobs.step().await.digest.expect("the failure");
    assert_eq!(notice.sections[0].title, "Failed runs (1)");
    assert_eq!(notice.sections[0].items, ["sales — manual__3 (ended 2026-01-02 10:33 UTC)"]);
    let quiet = DigestConfig { send_when_quiet: true, ..digest };
    let mut chatty = ops(&store, notifiers, Some(quiet), &clock);
    clock.set(ts("2026-01-02T10:50:10Z"));
    let notice = chatty.step().await.digest.expect("a quiet digest");
    assert_eq!(notice.title, "Updraft digest 2026-01-02 10:40–10:50 UTC: all DAGs scheduled normally");
}

async fn deadlines_are_missed_once_per_run(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let server = receiver().await;
    let clock = Arc::new(ManualClock::new(ts("2026-01-02T10:10:00Z")));
    let notifiers = BTreeMap::from([("team".to_string(), slack(format!("{}/slack", server.url), None))]);
    let mut jobs = ops(&store, notifiers, None, &clock);
    let yaml = "
dag: daily
deadline: 1h
alerts: {on_deadline_miss: team}
tasks:
  extract: {shell: 'true', deadline: 30m, alerts: {on_deadline_miss: team}}
  load: {shell: 'true', depends_on: extract}
";
    let (dag, version) = record(&store, yaml).await;
    let late = start_run(&store, &dag, &version, "scheduled__late", RunType::Scheduled, "2026-01-02T10:00:00Z").await;
    let on_time = start_run(&store, &dag, &version, "scheduled__ok", RunType::Scheduled, "2026-01-01T10:00:00Z").await;
    run_tasks_at(&store, on_time, &["extract", "load"], TaskState::Success, dir.path(), ts("2026-01-01T10:10:00Z"))
        .await;
    set_run(&store, on_time, RunState::Running, RunState::Success, ts("2026-01-01T10:20:00Z")).await;
    // A manual run has no deadline.
    start_run(&store, &dag, &version, "manual__1", RunType::Manual, "2026-01-02T08:00:00Z").await;

    assert!(jobs.step().await.misses.is_empty(), "nothing due yet");
    clock.set(ts("2026-01-02T10:31:00Z"));
    let misses = jobs.step().await.misses;
    assert_eq!(misses.len(), 1);
    assert_eq!((misses[0].run_id.as_str(), misses[0].task_id.as_deref()), ("scheduled__late", Some("extract")));
    clock.set(ts("2026-01-02T11:01:00Z"));
    let misses = jobs.step().await.misses;
    assert_eq!((misses.len(), misses[0].task_id.as_deref()), (1, None), "the run's own, once");
    clock.set(ts("2026-01-02T11:02:00Z"));
    assert!(jobs.step().await.misses.is_empty());
    let got = server.bodies("/slack");
    let titles: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(titles, ["daily.extract missed its deadline", "daily run missed its deadline"]);
    assert!(
        got[1]
            .to_string()
            .contains("Due by 2026-01-02 11:00 UTC (data interval ended 2026-01-02 10:00 UTC); the run is running.")
    );
    let _ = late;
}

async fn the_scheduled_clean_up_runs_once_a_day_in_one_process(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (dag, version) = record(&store, "dag: old\ntasks:\n  a: {shell: 'true'}\n").await;
    let old = start_run(&store, &dag, &version, "manual__old", RunType::Manual, NOW).await;
    run_tasks(&store, old, &["a"], TaskState::Success, dir.path()).await;
    store.apply(&[Action::FinishRun { run_pk: old, state: RunState::Success }], "scheduler:1", ts(NOW)).await.unwrap();
    let config = MaintenanceConfig {
        enabled: true,
        retention: std::time::Duration::from_secs(30 * 86_400),
        every: std::time::Duration::from_secs(86_400),
        batch: 10,
    };
    let first = updraft_ops::maintenance::Maintenance::new(store.clone(), config.clone(), dir.path().to_path_buf());
    let second = updraft_ops::maintenance::Maintenance::new(store.clone(), config, dir.path().to_path_buf());
    // Within the retention: nothing goes, but the turn is taken for the day.
    let cleaned = first.tick(ts(NOW) + SignedDuration::from_hours(24)).await.unwrap().expect("due at first start");
    assert_eq!(cleaned.removed.runs, 0);
    assert!(second.tick(ts(NOW) + SignedDuration::from_hours(25)).await.unwrap().is_none(), "one a day");
    // 31 days on, the run is old enough; of two processes, one cleans.
    let later = ts(NOW) + SignedDuration::from_hours(31 * 24);
    let (a, b) = tokio::join!(first.tick(later), second.tick(later));
    let done: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].removed.runs, done[0].removed.task_instances, done[0].removed.attempts), (1, 1, 1));
    assert!(store.get_run_by_pk(old).await.unwrap().is_none());
    let (at, report) = updraft_ops::maintenance::last_report(&store).await.unwrap().expect("a report");
    assert_eq!((at, report.removed.runs), (later, 1));
}

mod sqlite {
    use super::*;

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            updraft_store::open(&format!("sqlite://{}", dir.path().join("u.db").display()), dir.path()).await.unwrap();
        (store, dir)
    }

    macro_rules! sqlite_tests {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $name() {
                let (store, _dir) = store().await;
                super::$name(store).await;
            }
        )*};
    }

    sqlite_tests!(
        a_failure_alerts_each_notifier_once,
        a_failing_notifier_is_retried_in_the_background,
        over_the_rate_limit_the_rest_go_as_one_summary,
        the_digest_lists_what_was_not_normal,
        deadlines_are_missed_once_per_run,
        the_scheduled_clean_up_runs_once_a_day_in_one_process,
    );
}

mod postgres {
    use updraft_testkit::postgres::TestDatabase;

    macro_rules! postgres_tests {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $name() {
                let Some(database) = TestDatabase::create() else { return };
                let store = updraft_store::open(&database.url, std::path::Path::new(".")).await.unwrap();
                super::$name(store).await;
            }
        )*};
    }

    postgres_tests!(
        a_failure_alerts_each_notifier_once,
        a_failing_notifier_is_retried_in_the_background,
        the_digest_lists_what_was_not_normal,
        deadlines_are_missed_once_per_run,
        the_scheduled_clean_up_runs_once_a_day_in_one_process,
    );
}
