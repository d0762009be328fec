//! The store's behaviour, written once against `MetadataStore` and run per backend
//! (a thin wrapper each; PostgreSQL joins when it lands).

use std::sync::Arc;

use jiff::Timestamp;
use updraft_core::plan::{Action, DagVersion, RunType};
use updraft_core::{Dag, DataInterval, RunId, RunState, TaskState};
use updraft_store::*;

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

const NOW: &str = "2024-06-01T12:00:00Z";

fn dag(yaml: &str) -> (Arc<Dag>, DagVersion) {
    let parsed = updraft_dagfile::parse_dag(yaml, "test.yaml");
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let dag = parsed.dag.unwrap();
    let version = updraft_dagfile::version_of(&dag);
    (Arc::new(dag), version)
}

const CHAIN: &str = "dag: chain\ntasks:\n  a: {shell: 'true'}\n  b: {shell: 'true', depends_on: [a], priority: 5}\n  c: {shell: 'true', retries: 2}\n";

fn new_run(dag: &Arc<Dag>, version: &DagVersion, run_id: &str, run_type: RunType, at: &str) -> NewRun {
    NewRun {
        dag: dag.clone(),
        version: version.clone(),
        run_id: RunId::new(run_id).unwrap(),
        run_type,
        logical_date: ts(at),
        interval: DataInterval { start: ts(at), end: ts(at) },
        conf: serde_json::Map::new(),
        owner_process: None,
        with_retries: true,
    }
}

async fn dags_and_versions(store: Store) {
    let (chain, version) = dag(CHAIN);
    store
        .upsert_dags(
            &[DagUpsert { dag: chain.clone(), version: version.clone(), paused_if_new: true, source: None }],
            ts(NOW),
        )
        .await
        .unwrap();
    let row = store.get_dag("chain").await.unwrap().unwrap();
    assert!(row.is_paused && row.is_active);
    assert_eq!(row.latest_version, version.0);
    assert_eq!(row.next_due, Some(ts(NOW)), "a new DAG is due at once");
    assert_eq!(store.dag_source("chain", &version.0).await.unwrap(), None, "recorded without its text");
    let source: Arc<str> = Arc::from(CHAIN);
    let with_text =
        DagUpsert { dag: chain.clone(), version: version.clone(), paused_if_new: true, source: Some(source) };
    store.upsert_dags(&[with_text], ts(NOW)).await.unwrap();
    assert_eq!(store.dag_source("chain", &version.0).await.unwrap().as_deref(), Some(CHAIN), "filled in later");
    let definition = store.dag_definition("chain", &version.0).await.unwrap().unwrap();
    assert_eq!(Dag::from_json(&definition).unwrap().to_json(), chain.to_json());

    // Re-recording the same version changes nothing, not even the due time.
    store
        .apply(
            &[Action::SetDagSchedule {
                dag_id: chain.dag_id().clone(),
                last_automated: None,
                next_due: Some(ts("2030-01-01T00:00:00Z")),
            }],
            "test",
            ts(NOW),
        )
        .await
        .unwrap();
    store
        .upsert_dags(
            &[DagUpsert { dag: chain.clone(), version: version.clone(), paused_if_new: false, source: None }],
            ts(NOW),
        )
        .await
        .unwrap();
    let row = store.get_dag("chain").await.unwrap().unwrap();
    assert!(row.is_paused, "paused_if_new applies to new DAGs only");
    assert_eq!(row.next_due, Some(ts("2030-01-01T00:00:00Z")));

    // A new version is due again.
    let (changed, changed_version) = dag(&CHAIN.replace("priority: 5", "priority: 6"));
    assert_ne!(changed_version, version);
    store
        .upsert_dags(
            &[DagUpsert { dag: changed, version: changed_version.clone(), paused_if_new: false, source: None }],
            ts(NOW),
        )
        .await
        .unwrap();
    let row = store.get_dag("chain").await.unwrap().unwrap();
    assert_eq!(row.latest_version, changed_version.0);
    assert_eq!(row.next_due, Some(ts(NOW)));

    assert!(store.set_paused("chain", false, ts(NOW)).await.unwrap());
    assert!(!store.set_paused("nope", false, ts(NOW)).await.unwrap());
    store.deactivate_dags(&["chain".to_string()], ts(NOW)).await.unwrap();
    let index = store.dag_index().await.unwrap();
    assert_eq!(index.len(), 1);
    assert!(!index[0].is_active);

    store
        .replace_import_errors(&[ImportError { fileloc: "x.yaml".into(), message: "x.yaml:1:1: bad".into() }], ts(NOW))
        .await
        .unwrap();
    store
        .replace_import_errors(&[ImportError { fileloc: "y.yaml".into(), message: "y.yaml:1:1: bad".into() }], ts(NOW))
        .await
        .unwrap();
    let errors = store.import_errors().await.unwrap();
    assert_eq!(errors.iter().map(|e| e.fileloc.as_str()).collect::<Vec<_>>(), vec!["y.yaml"]);
}

async fn runs_are_unique(store: Store) {
    let (chain, version) = dag(CHAIN);
    let first =
        store.create_run(&new_run(&chain, &version, "manual__1", RunType::Manual, NOW), "test", ts(NOW)).await.unwrap();
    assert!(first.is_some());
    let again =
        store.create_run(&new_run(&chain, &version, "manual__1", RunType::Manual, NOW), "test", ts(NOW)).await.unwrap();
    assert_eq!(again, None, "run ids are unique per DAG");
    // One scheduled or backfill run per logical date; manual runs may share it.
    let scheduled = store
        .create_run(&new_run(&chain, &version, "scheduled__x", RunType::Scheduled, NOW), "test", ts(NOW))
        .await
        .unwrap();
    assert!(scheduled.is_some());
    let backfill = store
        .create_run(&new_run(&chain, &version, "backfill__x", RunType::Backfill, NOW), "test", ts(NOW))
        .await
        .unwrap();
    assert_eq!(backfill, None);
    let tis = store.task_instances(first.unwrap()).await.unwrap();
    assert_eq!(
        tis.iter().map(|ti| (ti.task_id.as_str(), ti.state, ti.max_tries)).collect::<Vec<_>>(),
        vec![("a", TaskState::None, 0), ("b", TaskState::None, 0), ("c", TaskState::None, 2),]
    );
    let runs = store.list_runs("chain", None, 10).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert!(store.list_runs("chain", Some(RunState::Running), 10).await.unwrap().is_empty());
    let run = store.get_run("chain", "manual__1").await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Queued);
    assert_eq!(run.version, version);
}

async fn apply_is_compare_and_set(store: Store) {
    let (chain, version) = dag(CHAIN);
    let run_pk = store
        .create_run(&new_run(&chain, &version, "r", RunType::Manual, NOW), "test", ts(NOW))
        .await
        .unwrap()
        .unwrap();
    let a = store.task_instances(run_pk).await.unwrap()[0].ti_pk;
    let actions = vec![
        Action::StartRun { run_pk },
        Action::SetTaskState { ti_pk: a, from: TaskState::None, to: TaskState::Scheduled },
        Action::SetTaskState { ti_pk: a, from: TaskState::Scheduled, to: TaskState::Queued },
    ];
    let report = store.apply(&actions, "scheduler:1", ts(NOW)).await.unwrap();
    assert_eq!(report, ApplyReport { tasks_queued: 1, ..ApplyReport::default() });
    // The same plan again, as a second scheduler with a stale snapshot would apply it.
    let report = store.apply(&actions, "scheduler:2", ts(NOW)).await.unwrap();
    assert_eq!(report.conflicts, 3);
    assert_eq!(report.tasks_queued, 0);
    // A run with unfinished tasks cannot finish.
    let report = store.apply(&[Action::FinishRun { run_pk, state: RunState::Success }], "s", ts(NOW)).await.unwrap();
    assert_eq!(report.conflicts, 1);
    // Illegal moves are refused outright.
    let error = store
        .apply(&[Action::SetTaskState { ti_pk: a, from: TaskState::Success, to: TaskState::Running }], "s", ts(NOW))
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "illegal state change `success` -> `running`");
    let transitions = store.transitions(run_pk, Some(a), 0).await.unwrap();
    let moves: Vec<String> = transitions
        .iter()
        .map(|t| format!("{}->{} by {}", t.from_state.clone().unwrap_or_default(), t.to_state, t.actor))
        .collect();
    assert_eq!(moves, vec!["none->scheduled by scheduler:1", "scheduled->queued by scheduler:1"]);
}

async fn claim_and_finish(store: Store) {
    let (chain, version) = dag(CHAIN);
    let run_pk = store
        .create_run(&new_run(&chain, &version, "r", RunType::Manual, NOW), "test", ts(NOW))
        .await
        .unwrap()
        .unwrap();
    let tis = store.task_instances(run_pk).await.unwrap();
    let mut actions = vec![Action::StartRun { run_pk }];
    for ti in &tis {
        actions.push(Action::SetTaskState { ti_pk: ti.ti_pk, from: TaskState::None, to: TaskState::Scheduled });
        actions.push(Action::SetTaskState { ti_pk: ti.ti_pk, from: TaskState::Scheduled, to: TaskState::Queued });
    }
    store.apply(&actions, "s", ts(NOW)).await.unwrap();
    let process = store
        .register_process(
            &NewProcess { kind: ProcessKind::Standalone, hostname: "h".into(), pid: 1, pid_start: None },
            ts(NOW),
        )
        .await
        .unwrap();

    // Highest priority first, and never more than asked for.
    let me = Claimant { process_id: process, hostname: "h".into(), queues: None };
    let claimed = store.claim(Scope::All, &me, 2, ts(NOW)).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.task_id.as_str()).collect::<Vec<_>>(), vec!["b", "a"]);
    assert!(claimed.iter().all(|c| c.try_number == 1 && c.run_id == "r"));
    let rest = store.claim(Scope::All, &me, 10, ts(NOW)).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert!(store.claim(Scope::All, &me, 10, ts(NOW)).await.unwrap().is_empty());

    let b = &claimed[0];
    assert!(store.record_attempt_process(b.ti_pk, 1, 4242, Some(7), "/logs/b/1.log").await.unwrap());
    let end = AttemptEnd {
        state: TaskState::Success,
        retry_at: None,
        exit_code: Some(0),
        reason: None,
        process: None,
        output: None,
        reschedule: false,
    };
    assert!(store.finish_attempt(b.ti_pk, 1, &end, "runner", ts(NOW)).await.unwrap());
    // A second report of the same attempt, or one from an older try, changes nothing.
    assert!(!store.finish_attempt(b.ti_pk, 1, &end, "runner", ts(NOW)).await.unwrap());

    let c = &rest[0];
    let retry = AttemptEnd {
        state: TaskState::UpForRetry,
        retry_at: Some(ts("2024-06-01T13:00:00Z")),
        exit_code: Some(1),
        reason: None,
        // A short attempt reports its process with its outcome.
        process: Some(AttemptProcess { pid: 777, pid_start: Some(9), log_path: Some("/logs/c/1.log".into()) }),
        output: None,
        reschedule: false,
    };
    assert!(store.finish_attempt(c.ti_pk, 1, &retry, "runner", ts(NOW)).await.unwrap());
    let c_attempt = &store.task_attempts(c.ti_pk).await.unwrap()[0];
    assert_eq!((c_attempt.pid, c_attempt.log_path.as_deref()), (Some(777), Some("/logs/c/1.log")));
    let attempts = store.task_attempts(b.ti_pk).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].state, attempts[0].pid, attempts[0].log_path.as_deref()),
        (TaskState::Success, Some(4242), Some("/logs/b/1.log"))
    );

    // An attempt interrupted by a clean shutdown goes back without using up a retry.
    let a = &claimed[1];
    let running = store.running_attempts(process).await.unwrap();
    assert_eq!(running.iter().map(|r| r.task_id.as_str()).collect::<Vec<_>>(), vec!["a"]);
    let interrupted = AttemptEnd {
        state: TaskState::Scheduled,
        retry_at: None,
        exit_code: None,
        reason: Some("shutdown".into()),
        process: None,
        output: None,
        reschedule: false,
    };
    assert!(store.finish_attempt(a.ti_pk, 1, &interrupted, "runner", ts(NOW)).await.unwrap());
    let tis = store.task_instances(run_pk).await.unwrap();
    let a_row = tis.iter().find(|ti| ti.task_id == "a").unwrap();
    assert_eq!((a_row.state, a_row.try_number, a_row.max_tries), (TaskState::Scheduled, 1, 1));
    let c_row = tis.iter().find(|ti| ti.task_id == "c").unwrap();
    assert_eq!((c_row.state, c_row.retry_at), (TaskState::UpForRetry, Some(ts("2024-06-01T13:00:00Z"))));
}

/// What a scheduling pass sees, without changing anything.
async fn snapshot(store: &Store, scope: Scope) -> RawSnapshot {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let keep = seen.clone();
    let pass = Pass {
        actor: "test".into(),
        batch: 100,
        plan: Box::new(move |raw| {
            *keep.lock().unwrap() = Some(raw.clone());
            Vec::new()
        }),
    };
    store.schedule_pass(scope, ts(NOW), pass).await.unwrap();
    let raw = seen.lock().unwrap().take();
    raw.expect("the pass planned")
}

async fn snapshots_and_scopes(store: Store) {
    let (chain, version) = dag(CHAIN);
    store
        .upsert_dags(
            &[DagUpsert { dag: chain.clone(), version: version.clone(), paused_if_new: false, source: None }],
            ts(NOW),
        )
        .await
        .unwrap();
    let manual =
        store.create_run(&new_run(&chain, &version, "m", RunType::Manual, NOW), "t", ts(NOW)).await.unwrap().unwrap();
    let mut test_run = new_run(&chain, &version, "t", RunType::Test, NOW);
    test_run.owner_process = Some(99);
    let test = store.create_run(&test_run, "t", ts(NOW)).await.unwrap().unwrap();

    let all = snapshot(&store, Scope::All).await;
    assert_eq!(all.runs.iter().map(|r| r.run_pk).collect::<Vec<_>>(), vec![manual]);
    assert_eq!(all.task_instances.len(), 3);
    assert_eq!(all.dags.iter().map(|d| d.dag_id.as_str()).collect::<Vec<_>>(), vec!["chain"]);
    assert_eq!(
        all.pools.iter().map(|p| (p.name.as_str(), p.slots, p.occupied)).collect::<Vec<_>>(),
        vec![("default", 128, 0)]
    );
    let one = snapshot(&store, Scope::Run(test)).await;
    assert_eq!(one.runs.iter().map(|r| r.run_pk).collect::<Vec<_>>(), vec![test]);
    assert_eq!(one.task_instances.len(), 3);

    // Due DAGs appear; ones due later give the wake-up time.
    store
        .apply(
            &[Action::SetDagSchedule {
                dag_id: chain.dag_id().clone(),
                last_automated: None,
                next_due: Some(ts("2024-06-02T00:00:00Z")),
            }],
            "s",
            ts(NOW),
        )
        .await
        .unwrap();
    let later = snapshot(&store, Scope::All).await;
    assert_eq!(later.next_dag_due, Some(ts("2024-06-02T00:00:00Z")));

    assert_eq!(store.fail_owned_runs(99, ts(NOW)).await.unwrap(), 1);
    assert_eq!(store.get_run_by_pk(test).await.unwrap().unwrap().state, RunState::Failed);

    store.set_pool("api", 3, "public API").await.unwrap();
    store.set_pool("api", 4, "public API").await.unwrap();
    assert_eq!(
        store.pools().await.unwrap().iter().map(|p| (p.name.as_str(), p.slots)).collect::<Vec<_>>(),
        vec![("api", 4), ("default", 128)]
    );
    assert!(store.delete_pool("api").await.unwrap());
    assert!(!store.delete_pool("api").await.unwrap());
}

async fn processes(store: Store) {
    let id = store
        .register_process(
            &NewProcess { kind: ProcessKind::Scheduler, hostname: "h".into(), pid: 10, pid_start: Some(5) },
            ts(NOW),
        )
        .await
        .unwrap();
    assert!(store.heartbeat(id, &[], ts("2024-06-01T12:00:05Z")).await.unwrap().alive);
    assert!(store.set_process_state(id, ProcessState::Running, ProcessState::Dead, ts(NOW)).await.unwrap());
    assert!(!store.set_process_state(id, ProcessState::Running, ProcessState::Dead, ts(NOW)).await.unwrap());
    assert!(!store.heartbeat(id, &[], ts(NOW)).await.unwrap().alive, "a dead process learns it from its heartbeat");
    let rows = store.processes(Some(ProcessState::Dead)).await.unwrap();
    assert_eq!((rows[0].pid, rows[0].pid_start, rows[0].heartbeat_at), (10, Some(5), ts("2024-06-01T12:00:05Z")));
}

const QUEUES: &str = "dag: queues\ntasks:\n  cpu: {shell: 'true'}\n  gpu: {shell: 'true', queue: gpu}\n";

/// Queues a run's task instances (none -> scheduled -> queued) and returns them.
async fn queue_all(store: &Store, run_pk: i64) -> Vec<TaskInstanceRow> {
    let tis = store.task_instances(run_pk).await.unwrap();
    let mut actions = vec![Action::StartRun { run_pk }];
    for ti in &tis {
        actions.push(Action::SetTaskState { ti_pk: ti.ti_pk, from: TaskState::None, to: TaskState::Scheduled });
        actions.push(Action::SetTaskState { ti_pk: ti.ti_pk, from: TaskState::Scheduled, to: TaskState::Queued });
    }
    store.apply(&actions, "s", ts(NOW)).await.unwrap();
    tis
}

async fn workers_take_their_queues(store: Store) {
    let (dag, version) = dag(QUEUES);
    let run_pk =
        store.create_run(&new_run(&dag, &version, "r", RunType::Manual, NOW), "t", ts(NOW)).await.unwrap().unwrap();
    queue_all(&store, run_pk).await;
    let new = |queues: Option<Vec<String>>| Claimant { process_id: 1, hostname: "h".into(), queues };
    let default_only = store.claim(Scope::All, &new(Some(vec!["default".into()])), 10, ts(NOW)).await.unwrap();
    assert_eq!(default_only.iter().map(|c| c.task_id.as_str()).collect::<Vec<_>>(), vec!["cpu"]);
    let gpu = store.claim(Scope::All, &new(Some(vec!["gpu".into(), "other".into()])), 10, ts(NOW)).await.unwrap();
    assert_eq!(gpu.iter().map(|c| c.task_id.as_str()).collect::<Vec<_>>(), vec!["gpu"]);
}

async fn leases_are_fenced_by_the_try_number(store: Store) {
    let (chain, version) = dag(CHAIN);
    let run_pk =
        store.create_run(&new_run(&chain, &version, "r", RunType::Manual, NOW), "t", ts(NOW)).await.unwrap().unwrap();
    queue_all(&store, run_pk).await;
    let worker = store
        .register_process(
            &NewProcess { kind: ProcessKind::Worker, hostname: "w".into(), pid: 1, pid_start: None },
            ts(NOW),
        )
        .await
        .unwrap();
    let me = Claimant { process_id: worker, hostname: "w".into(), queues: None };
    let claimed = store.claim(Scope::All, &me, 1, ts(NOW)).await.unwrap();
    let (ti_pk, try_number) = (claimed[0].ti_pk, claimed[0].try_number);
    // Renewing with the current token holds the lease; a stale token does not.
    let later = ts("2024-06-01T12:00:30Z");
    let beat = store.heartbeat(worker, &[(ti_pk, try_number), (ti_pk, try_number + 7)], later).await.unwrap();
    assert_eq!(beat, Heartbeat { alive: true, lost: vec![(ti_pk, try_number + 7)] });
    // Nothing is stale before the cutoff passes the last renewal.
    assert!(store.stale_attempts(ts("2024-06-01T12:00:29Z")).await.unwrap().is_empty());
    let stale = store.stale_attempts(ts("2024-06-01T12:01:31Z")).await.unwrap();
    assert_eq!(
        stale.iter().map(|a| (a.ti_pk, a.try_number, a.process_id)).collect::<Vec<_>>(),
        vec![(ti_pk, try_number, Some(worker))]
    );
    // The zombie is failed; the worker's next heartbeat learns it lost the attempt,
    // and its late report changes nothing.
    let failed = AttemptEnd {
        state: TaskState::Failed,
        retry_at: None,
        exit_code: None,
        reason: Some("zombie".into()),
        process: None,
        output: None,
        reschedule: false,
    };
    assert!(store.finish_attempt(ti_pk, try_number, &failed, "recovery", later).await.unwrap());
    let beat = store.heartbeat(worker, &[(ti_pk, try_number)], later).await.unwrap();
    assert_eq!(beat.lost, vec![(ti_pk, try_number)]);
    let success = AttemptEnd {
        state: TaskState::Success,
        retry_at: None,
        exit_code: Some(0),
        reason: None,
        process: None,
        output: None,
        reschedule: false,
    };
    assert!(!store.finish_attempt(ti_pk, try_number, &success, "runner", later).await.unwrap());
}

/// A dead runner's attempt (a pod still running) is handed to a live one with its
/// try: once, only from its holder, and the new holder's heartbeats keep it.
async fn attempts_are_adopted_from_their_holder_only(store: Store) {
    let (chain, version) = dag(CHAIN);
    let run_pk =
        store.create_run(&new_run(&chain, &version, "r", RunType::Manual, NOW), "t", ts(NOW)).await.unwrap().unwrap();
    queue_all(&store, run_pk).await;
    let register = |host: &'static str| {
        let store = store.clone();
        async move {
            store
                .register_process(
                    &NewProcess { kind: ProcessKind::Scheduler, hostname: host.into(), pid: 1, pid_start: None },
                    ts(NOW),
                )
                .await
                .unwrap()
        }
    };
    let (dead, alive, late) = (register("a").await, register("b").await, register("c").await);
    let claimed = store
        .claim(Scope::All, &Claimant { process_id: dead, hostname: "a".into(), queues: None }, 1, ts(NOW))
        .await
        .unwrap()
        .remove(0);
    let taker = Claimant { process_id: alive, hostname: "b".into(), queues: None };
    let later = ts("2024-06-01T12:01:00Z");
    // Not from a process that does not hold it, nor under another try.
    assert!(store.adopt_attempt(claimed.ti_pk, claimed.try_number, late, &taker, later).await.unwrap().is_none());
    assert!(store.adopt_attempt(claimed.ti_pk, claimed.try_number + 1, dead, &taker, later).await.unwrap().is_none());
    let adopted = store.adopt_attempt(claimed.ti_pk, claimed.try_number, dead, &taker, later).await.unwrap().unwrap();
    assert_eq!(
        (adopted.ti_pk, adopted.try_number, adopted.task_id.as_str(), adopted.run_id.as_str(), adopted.version),
        (claimed.ti_pk, claimed.try_number, claimed.task_id.as_str(), "r", claimed.version)
    );
    // Once: a second recovery finds it taken.
    let other = Claimant { process_id: late, hostname: "c".into(), queues: None };
    assert!(store.adopt_attempt(claimed.ti_pk, claimed.try_number, dead, &other, later).await.unwrap().is_none());
    assert!(store.running_attempts(dead).await.unwrap().is_empty());
    let held = store.running_attempts(alive).await.unwrap();
    assert_eq!((held[0].ti_pk, held[0].hostname.as_deref()), (claimed.ti_pk, Some("b")));
    let beat = store.heartbeat(alive, &[(claimed.ti_pk, claimed.try_number)], later).await.unwrap();
    assert!(beat.lost.is_empty(), "{beat:?}");
    let beat = store.heartbeat(dead, &[(claimed.ti_pk, claimed.try_number)], later).await.unwrap();
    assert_eq!(beat.lost, vec![(claimed.ti_pk, claimed.try_number)]);
}

async fn logs_of_remote_attempts(store: Store) {
    let (chain, version) = dag(CHAIN);
    let run_pk =
        store.create_run(&new_run(&chain, &version, "r", RunType::Manual, NOW), "t", ts(NOW)).await.unwrap().unwrap();
    let tis = queue_all(&store, run_pk).await;
    let ti_pk = tis[0].ti_pk;
    assert_eq!(store.read_log(ti_pk, 1, 0).await.unwrap(), None, "no piece stored yet");
    let piece = |offset: u64, data: &[u8]| LogChunk { ti_pk, try_number: 1, offset, data: data.to_vec() };
    // Pieces may arrive out of order and twice; the log is read up to the first gap.
    store.append_logs(&[piece(6, b"world\n")]).await.unwrap();
    assert_eq!(store.read_log(ti_pk, 1, 0).await.unwrap(), Some(Vec::new()));
    store.append_logs(&[piece(0, b"hello "), piece(6, b"world\n")]).await.unwrap();
    store.append_logs(&[piece(12, &[0xff, b'\n'])]).await.unwrap();
    assert_eq!(store.read_log(ti_pk, 1, 0).await.unwrap().unwrap(), b"hello world\n\xff\n");
    assert_eq!(store.read_log(ti_pk, 1, 8).await.unwrap().unwrap(), b"rld\n\xff\n");
    assert_eq!(store.read_log(ti_pk, 1, 14).await.unwrap().unwrap(), b"");
    assert_eq!(store.read_log(ti_pk, 2, 0).await.unwrap(), None, "another try has its own log");
}

async fn operator_changes_are_all_or_nothing(store: Store) {
    use updraft_core::intervene::Intervention;
    let (chain, version) = dag(CHAIN);
    let run_pk =
        store.create_run(&new_run(&chain, &version, "r", RunType::Manual, NOW), "t", ts(NOW)).await.unwrap().unwrap();
    let tis = store.task_instances(run_pk).await.unwrap();
    let (a, b) = (tis[0].ti_pk, tis[1].ti_pk);
    // Marks a failed; the move of b expects the wrong state, so neither happens.
    let missed = Intervention {
        tasks: vec![(a, TaskState::None, TaskState::Failed), (b, TaskState::Failed, TaskState::Success)],
        ..Intervention::default()
    };
    let error = store.intervene(run_pk, &missed, "api:me", ts(NOW)).await.unwrap_err();
    assert!(matches!(error, StoreError::Changed(_)), "{error}");
    assert_eq!(store.task_instances(run_pk).await.unwrap()[0].state, TaskState::None, "rolled back");
    // Moves an operator may not make are refused before any write.
    let illegal = Intervention { tasks: vec![(a, TaskState::None, TaskState::Running)], ..Intervention::default() };
    assert!(matches!(store.intervene(run_pk, &illegal, "api:me", ts(NOW)).await, Err(StoreError::IllegalTask(_))));

    // Mark the run failed: its tasks skipped, the run failed, all logged.
    store.apply(&[Action::StartRun { run_pk }], "s", ts(NOW)).await.unwrap();
    let end = Intervention {
        tasks: tis.iter().map(|ti| (ti.ti_pk, TaskState::None, TaskState::Skipped)).collect(),
        run: Some((RunState::Running, RunState::Failed)),
        ..Intervention::default()
    };
    store.intervene(run_pk, &end, "api:me", ts(NOW)).await.unwrap();
    let run = store.get_run_by_pk(run_pk).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert_eq!(run.end_date, Some(ts(NOW)));
    assert!(store.task_instances(run_pk).await.unwrap().iter().all(|ti| ti.state == TaskState::Skipped));
    let log = store.transitions(run_pk, None, 0).await.unwrap();
    assert_eq!(log.iter().filter(|t| t.actor == "api:me").count(), 4, "three tasks and the run");

    // Clear a: back to none with tries renewed, the run queued again.
    let clear = Intervention {
        tasks: vec![(a, TaskState::Skipped, TaskState::None)],
        max_tries: vec![(a, 3)],
        run: Some((RunState::Failed, RunState::Queued)),
        ..Intervention::default()
    };
    store.intervene(run_pk, &clear, "api:me", ts(NOW)).await.unwrap();
    let cleared = store.task_instances(run_pk).await.unwrap();
    assert_eq!((cleared[0].state, cleared[0].max_tries, cleared[0].end_date), (TaskState::None, 3, None));
    let run = store.get_run_by_pk(run_pk).await.unwrap().unwrap();
    assert_eq!((run.state, run.end_date), (RunState::Queued, None));

    // Only a finished run can be deleted; everything of it goes.
    assert!(!store.delete_run(run_pk).await.unwrap(), "the run is queued");
    let end = Intervention { run: Some((RunState::Queued, RunState::Success)), ..Intervention::default() };
    store.intervene(run_pk, &end, "api:me", ts(NOW)).await.unwrap();
    assert!(store.delete_run(run_pk).await.unwrap());
    assert!(store.get_run_by_pk(run_pk).await.unwrap().is_none());
    assert!(store.task_instances(run_pk).await.unwrap().is_empty());
    assert!(store.transitions(run_pk, None, 0).await.unwrap().is_empty());
}

/// An attempt's end in `state`, handing on `output`.
fn end(state: TaskState, output: Option<&str>) -> AttemptEnd {
    AttemptEnd {
        state,
        retry_at: None,
        exit_code: Some(0),
        reason: None,
        process: None,
        output: output.map(str::to_string),
        reschedule: false,
    }
}

async fn outputs_follow_the_latest_try(store: Store) {
    let (chain, version) = dag(CHAIN);
    let run_pk =
        store.create_run(&new_run(&chain, &version, "r", RunType::Manual, NOW), "t", ts(NOW)).await.unwrap().unwrap();
    store.create_run(&new_run(&chain, &version, "other", RunType::Manual, NOW), "t", ts(NOW)).await.unwrap().unwrap();
    queue_all(&store, run_pk).await;
    let me = Claimant { process_id: 1, hostname: "h".into(), queues: None };
    let claimed = store.claim(Scope::All, &me, 10, ts(NOW)).await.unwrap();
    let ti = |task_id: &str| claimed.iter().find(|c| c.task_id == task_id).unwrap().ti_pk;
    let ends = [
        FinishedAttempt { ti_pk: ti("a"), try_number: 1, end: end(TaskState::UpForRetry, Some(r#""partial""#)) },
        FinishedAttempt { ti_pk: ti("b"), try_number: 1, end: end(TaskState::Success, Some(r#"{"codes": [1, 2]}"#)) },
        FinishedAttempt { ti_pk: ti("c"), try_number: 1, end: end(TaskState::Success, None) },
    ];
    assert_eq!(store.finish_attempts(&ends, "runner", ts(NOW)).await.unwrap(), vec![true, true, true]);
    let outputs = store.run_outputs("chain", "r").await.unwrap();
    assert_eq!(outputs.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(outputs["b"], r#"{"codes": [1, 2]}"#);
    assert!(store.run_outputs("chain", "other").await.unwrap().is_empty(), "another run's are its own");

    // The retry succeeds without an output: the first try's is gone.
    let requeue = [
        Action::SetTaskState { ti_pk: ti("a"), from: TaskState::UpForRetry, to: TaskState::Scheduled },
        Action::SetTaskState { ti_pk: ti("a"), from: TaskState::Scheduled, to: TaskState::Queued },
    ];
    store.apply(&requeue, "s", ts(NOW)).await.unwrap();
    let again = store.claim(Scope::All, &me, 10, ts(NOW)).await.unwrap();
    assert_eq!((again.len(), again[0].try_number), (1, 2));
    assert!(store.finish_attempt(ti("a"), 2, &end(TaskState::Success, None), "runner", ts(NOW)).await.unwrap());
    let outputs = store.run_outputs("chain", "r").await.unwrap();
    assert_eq!(outputs.keys().collect::<Vec<_>>(), ["b"]);
}

const MAPPED: &str = r#"dag: mapped
tasks:
  list: {shell: 'true'}
  fetch: {shell: 'echo {{ item }}', depends_on: [list], for_each: "{{ tasks.list.output.codes }}", retries: 1}
  bad: {shell: 'echo {{ item }}', depends_on: [list], for_each: "{{ tasks.list.output.name }}"}
"#;

async fn mapped_tasks_expand_once(store: Store) {
    let (mapped, version) = dag(MAPPED);
    let run_pk =
        store.create_run(&new_run(&mapped, &version, "r", RunType::Manual, NOW), "t", ts(NOW)).await.unwrap().unwrap();
    let me = Claimant { process_id: 1, hostname: "h".into(), queues: None };
    let by_task = |tis: &[TaskInstanceRow], task_id: &str| -> Vec<TaskInstanceRow> {
        let mut found: Vec<TaskInstanceRow> = tis.iter().filter(|ti| ti.task_id == task_id).cloned().collect();
        found.sort_by_key(|ti| ti.map_index);
        found
    };
    let tis = store.task_instances(run_pk).await.unwrap();
    let list = by_task(&tis, "list")[0].ti_pk;
    let (fetch, bad) = (by_task(&tis, "fetch")[0].ti_pk, by_task(&tis, "bad")[0].ti_pk);
    assert_eq!(by_task(&tis, "fetch")[0].map_index, -1, "unexpanded until its upstream is done");
    let queue = |ti_pk| {
        [
            Action::SetTaskState { ti_pk, from: TaskState::None, to: TaskState::Scheduled },
            Action::SetTaskState { ti_pk, from: TaskState::Scheduled, to: TaskState::Queued },
        ]
    };
    store.apply(&queue(list), "s", ts(NOW)).await.unwrap();
    store.claim(Scope::All, &me, 10, ts(NOW)).await.unwrap();
    let listed = end(TaskState::Success, Some(r#"{"codes": ["x", {"y": 1}, 3], "name": "n"}"#));
    assert!(store.finish_attempt(list, 1, &listed, "runner", ts(NOW)).await.unwrap());

    let expand = |ti_pk: i64, task_id: &str| {
        let task = mapped.task(task_id).unwrap();
        Action::ExpandTask {
            run_pk,
            ti_pk,
            task_id: task.task_id.clone(),
            for_each: task.for_each.clone().unwrap(),
            limit: task.for_each_limit,
        }
    };
    let report = store.apply(&[expand(fetch, "fetch"), expand(bad, "bad")], "s", ts(NOW)).await.unwrap();
    assert_eq!(report.conflicts, 0);
    // A second expansion (a stale plan) changes nothing.
    let again = store.apply(&[expand(fetch, "fetch")], "s", ts(NOW)).await.unwrap();
    assert_eq!(again.conflicts, 1);
    let tis = store.task_instances(run_pk).await.unwrap();
    let fetches = by_task(&tis, "fetch");
    let shown: Vec<(i32, Option<&str>, TaskState, u32)> =
        fetches.iter().map(|ti| (ti.map_index, ti.map_item.as_deref(), ti.state, ti.max_tries)).collect();
    assert_eq!(
        shown,
        vec![
            (0, Some(r#""x""#), TaskState::None, 1),
            (1, Some(r#"{"y":1}"#), TaskState::None, 1),
            (2, Some("3"), TaskState::None, 1)
        ]
    );
    assert_eq!(fetches[0].ti_pk, fetch, "the unexpanded instance becomes item 0");
    let failed = &by_task(&tis, "bad")[0];
    assert_eq!(failed.state, TaskState::Failed);
    assert!(failed.wait_reason.as_deref().unwrap().contains("is a string, not a list"), "{:?}", failed.wait_reason);

    // Each instance is claimed with its item; the outputs come back as a list.
    let mut actions = Vec::new();
    for ti in &fetches {
        actions.extend(queue(ti.ti_pk));
    }
    store.apply(&actions, "s", ts(NOW)).await.unwrap();
    let mut claimed = store.claim(Scope::All, &me, 10, ts(NOW)).await.unwrap();
    claimed.sort_by_key(|claimed| claimed.map_index);
    let items: Vec<(i32, Option<&str>)> = claimed.iter().map(|c| (c.map_index, c.map_item.as_deref())).collect();
    assert!(claimed.iter().all(|c| c.ready_at == Some(ts(NOW))), "when each became ready, for the delay metric");
    assert_eq!(items, vec![(0, Some(r#""x""#)), (1, Some(r#"{"y":1}"#)), (2, Some("3"))]);
    let ends = [
        FinishedAttempt { ti_pk: claimed[0].ti_pk, try_number: 1, end: end(TaskState::Success, Some("10")) },
        FinishedAttempt { ti_pk: claimed[2].ti_pk, try_number: 1, end: end(TaskState::Success, Some("12")) },
    ];
    store.finish_attempts(&ends, "runner", ts(NOW)).await.unwrap();
    assert_eq!(store.run_outputs("mapped", "r").await.unwrap()["fetch"], "[10,null,12]");

    // Cleared (with `list`, whose new output has two codes), `fetch` expands anew:
    // its first two instances are reused with the new items, the third removed.
    store.finish_attempt(claimed[1].ti_pk, 1, &end(TaskState::Failed, None), "runner", ts(NOW)).await.unwrap();
    let tis = store.task_instances(run_pk).await.unwrap();
    let states: Vec<updraft_core::intervene::TaskInstanceState> =
        tis.iter().map(TaskInstanceRow::intervention_state).collect();
    let request = updraft_core::intervene::Request::Clear { task_ids: vec!["list".into()], downstream: true };
    let change = updraft_core::intervene::intervene(&mapped, RunState::Queued, &states, &request).unwrap();
    assert_eq!(change.unexpand, vec![fetch]);
    store.intervene(run_pk, &change, "api:me", ts(NOW)).await.unwrap();
    let fetches = by_task(&store.task_instances(run_pk).await.unwrap(), "fetch");
    assert_eq!(fetches[0].map_index, -1, "unexpanded again");
    store.apply(&queue(list), "s", ts(NOW)).await.unwrap();
    store.claim(Scope::All, &me, 10, ts(NOW)).await.unwrap();
    let shorter = end(TaskState::Success, Some(r#"{"codes": ["p", "q"], "name": "n"}"#));
    assert!(store.finish_attempt(list, 2, &shorter, "runner", ts(NOW)).await.unwrap());
    store.apply(&[expand(fetch, "fetch")], "s", ts(NOW)).await.unwrap();
    let fetches = by_task(&store.task_instances(run_pk).await.unwrap(), "fetch");
    let shown: Vec<(i32, Option<&str>, TaskState, u32)> =
        fetches.iter().map(|ti| (ti.map_index, ti.map_item.as_deref(), ti.state, ti.try_number)).collect();
    assert_eq!(
        shown,
        vec![
            (0, Some(r#""p""#), TaskState::None, 1),
            (1, Some(r#""q""#), TaskState::None, 1),
            (2, Some("3"), TaskState::Removed, 1)
        ],
        "tries keep counting"
    );
    assert_eq!(fetches[1].max_tries, 2, "a reused instance has its retries again");
}

async fn clean_removes_old_finished_runs_in_batches(store: Store) {
    use updraft_core::intervene::Intervention;
    let (chain, version) = dag(CHAIN);
    let mut pks = Vec::new();
    for (run_id, at) in [("old1", "2024-01-01T00:00:00Z"), ("old2", "2024-01-02T00:00:00Z"), ("new", NOW)] {
        let run_pk = store
            .create_run(&new_run(&chain, &version, run_id, RunType::Manual, at), "t", ts(at))
            .await
            .unwrap()
            .unwrap();
        let end = Intervention { run: Some((RunState::Queued, RunState::Success)), ..Intervention::default() };
        store.intervene(run_pk, &end, "t", ts(at)).await.unwrap();
        pks.push(run_pk);
    }
    let going = new_run(&chain, &version, "going", RunType::Manual, "2024-01-01T00:00:00Z");
    store.create_run(&going, "t", ts(NOW)).await.unwrap().unwrap();
    let entry = AuditEntry { actor: "api:me".into(), action: "trigger".into(), target: "chain".into(), detail: None };
    store.audit(&entry, ts("2024-01-01T00:00:00Z")).await.unwrap();
    store.audit(&entry, ts(NOW)).await.unwrap();

    let cutoff = ts("2024-03-01T00:00:00Z");
    let counted = store.clean_batch(cutoff, u32::MAX, true).await.unwrap();
    assert_eq!((counted.runs, counted.task_instances, counted.audit_rows), (2, 6, 1), "{counted:?}");
    assert_eq!(store.list_runs("chain", None, 10).await.unwrap().len(), 4, "a dry run deletes nothing");
    let first = store.clean_batch(cutoff, 1, false).await.unwrap();
    assert_eq!((first.runs, first.removed_runs.clone()), (1, vec![("chain".to_string(), "old1".to_string())]));
    let second = store.clean_batch(cutoff, 1, false).await.unwrap();
    assert_eq!(second.runs, 1);
    assert!(store.clean_batch(cutoff, 1, false).await.unwrap().is_empty());
    let left: Vec<String> =
        store.list_runs("chain", None, 10).await.unwrap().into_iter().map(|run| run.run_id).collect();
    assert_eq!(left.len(), 2, "the new run and the unfinished old one stay: {left:?}");
    assert!(store.task_instances(pks[0]).await.unwrap().is_empty());
    assert_eq!(store.audit_log(None, 10).await.unwrap().len(), 1);
}

async fn worker_tokens(store: Store) {
    let now = ts(NOW);
    let later = |secs: i64| now + jiff::SignedDuration::from_secs(secs);
    let first = store.create_worker_token("gpu-1", "hash-1", None, now).await.unwrap();
    let second = store.create_worker_token("gpu-2", "hash-2", Some(later(3600)), now).await.unwrap();
    assert_eq!(store.worker_token_id("hash-1", later(1)).await.unwrap(), Some(first));
    assert_eq!(store.worker_token_id("hash-2", later(1)).await.unwrap(), Some(second));
    assert_eq!(store.worker_token_id("hash-2", later(3601)).await.unwrap(), None, "expired");
    assert_eq!(store.worker_token_id("nope", later(1)).await.unwrap(), None);
    // Use is noted, but not on every request.
    store.worker_token_id("hash-1", later(30)).await.unwrap();
    let used =
        |rows: Vec<updraft_store::WorkerTokenRow>| rows.iter().find(|row| row.token_id == first).unwrap().last_used_at;
    assert_eq!(used(store.worker_tokens().await.unwrap()), Some(later(1)));
    store.worker_token_id("hash-1", later(120)).await.unwrap();
    assert_eq!(used(store.worker_tokens().await.unwrap()), Some(later(120)));
    let names: Vec<String> = store.worker_tokens().await.unwrap().into_iter().map(|row| row.name).collect();
    assert_eq!(names, ["gpu-2", "gpu-1"]);
    assert!(store.delete_worker_token(first).await.unwrap());
    assert!(!store.delete_worker_token(first).await.unwrap());
    assert_eq!(store.worker_token_id("hash-1", later(1)).await.unwrap(), None, "revoked");
}

async fn accounts(store: Store) {
    let user = |name: &str, role: &str, teams: &[&str]| NewUser {
        username: name.to_string(),
        password_hash: format!("$argon2id$fake${name}"),
        role: role.to_string(),
        teams: teams.iter().map(|team| team.to_string()).collect(),
    };
    let alice = store.create_user(&user("alice", "user", &["finance", "ml"]), ts(NOW)).await.unwrap();
    assert!(alice.is_some());
    assert_eq!(store.create_user(&user("alice", "admin", &[]), ts(NOW)).await.unwrap(), None, "the name is taken");
    store.create_user(&user("bob", "viewer", &[]), ts(NOW)).await.unwrap().unwrap();
    let found = store.get_user("alice").await.unwrap().unwrap();
    assert_eq!((found.role.as_str(), found.teams.clone()), ("user", vec!["finance".to_string(), "ml".to_string()]));
    assert_eq!(found.created_at, ts(NOW));
    assert_eq!((found.failed_logins, found.locked_until), (0, None));
    let names: Vec<String> = store.users().await.unwrap().into_iter().map(|user| user.username).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert!(store.set_password("alice", "$argon2id$new").await.unwrap());
    assert_eq!(store.get_user("alice").await.unwrap().unwrap().password_hash, "$argon2id$new");
    assert!(!store.set_password("carol", "x").await.unwrap());
    assert!(store.delete_user("bob").await.unwrap());
    assert!(!store.delete_user("bob").await.unwrap());
    assert!(store.get_user("bob").await.unwrap().is_none());

    // Sign-in bookkeeping; a new password lifts the lock.
    store.set_login_state("alice", 5, Some(ts("2024-06-01T12:15:00Z"))).await.unwrap();
    let locked = store.get_user("alice").await.unwrap().unwrap();
    assert_eq!((locked.failed_logins, locked.locked_until), (5, Some(ts("2024-06-01T12:15:00Z"))));
    store.set_password("alice", "$argon2id$again").await.unwrap();
    assert_eq!(store.get_user("alice").await.unwrap().unwrap().locked_until, None);

    // Sessions: found while unexpired, gone when deleted or with their user.
    let alice_id = alice.unwrap();
    store.create_session("hash-1", alice_id, ts("2024-06-01T13:00:00Z"), ts(NOW)).await.unwrap();
    let who = store.session_user("hash-1", ts(NOW)).await.unwrap().unwrap();
    assert_eq!(who.username, "alice");
    assert!(store.session_user("hash-1", ts("2024-06-01T13:00:01Z")).await.unwrap().is_none(), "expired");
    assert!(store.session_user("hash-2", ts(NOW)).await.unwrap().is_none());
    store.delete_session("hash-1").await.unwrap();
    assert!(store.session_user("hash-1", ts(NOW)).await.unwrap().is_none());
    store.create_session("hash-3", alice_id, ts("2024-06-01T13:00:00Z"), ts(NOW)).await.unwrap();
    // API tokens: found while unexpired (noting their use), revoked, gone with their user.
    let token = store.create_api_token("alice", "ci", "token-1", "read", None, ts(NOW)).await.unwrap().unwrap();
    let old = store.create_api_token("alice", "old", "token-2", "write", Some(ts(NOW)), ts(NOW)).await.unwrap();
    assert!(store.create_api_token("nobody", "x", "token-3", "read", None, ts(NOW)).await.unwrap().is_none());
    let (owner, scope) = store.api_token_user("token-1", ts(NOW)).await.unwrap().unwrap();
    assert_eq!((owner.username.as_str(), scope.as_str()), ("alice", "read"));
    assert!(store.api_token_user("token-2", ts(NOW)).await.unwrap().is_none(), "expired");
    let listed = store.api_tokens(Some("alice")).await.unwrap();
    assert_eq!(listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["old", "ci"]);
    assert_eq!(listed[1].last_used_at, Some(ts(NOW)));
    assert!(store.delete_api_token(old.unwrap()).await.unwrap());
    assert_eq!(store.api_tokens(None).await.unwrap().len(), 1);
    store.delete_user("alice").await.unwrap();
    assert!(store.api_token_user("token-1", ts(NOW)).await.unwrap().is_none(), "gone with its user");
    let _ = token;

    // The audit log: newest first, paged by id.
    for action in ["trigger", "pause", "clear"] {
        let entry = AuditEntry { actor: "api:alice".into(), action: action.into(), target: "etl".into(), detail: None };
        store.audit(&entry, ts(NOW)).await.unwrap();
    }
    let log = store.audit_log(None, 2).await.unwrap();
    assert_eq!(log.iter().map(|row| row.entry.action.as_str()).collect::<Vec<_>>(), ["clear", "pause"]);
    let older = store.audit_log(Some(log[1].id), 10).await.unwrap();
    assert_eq!(older.iter().map(|row| row.entry.action.as_str()).collect::<Vec<_>>(), ["trigger"]);
    assert_eq!(older[0].at, ts(NOW));
    assert!(store.session_user("hash-3", ts(NOW)).await.unwrap().is_none(), "a deleted user's sessions end");
}

async fn variables_and_connections(store: Store) {
    store.set_variable("api", "gAAAA-token-1", "vendor", ts(NOW)).await.unwrap();
    store.set_variable("api", "gAAAA-token-2", "vendor key", ts(NOW)).await.unwrap();
    store.set_variable("other", "gAAAA-token-3", "", ts(NOW)).await.unwrap();
    let api = store.variable("api").await.unwrap().unwrap();
    assert_eq!((api.value.as_str(), api.description.as_str()), ("gAAAA-token-2", "vendor key"), "set replaces");
    assert_eq!(store.variables().await.unwrap().len(), 2);
    assert!(store.delete_variable("other").await.unwrap());
    assert!(!store.delete_variable("other").await.unwrap());
    assert!(store.variable("other").await.unwrap().is_none());

    let warehouse = ConnectionRow {
        conn_id: "warehouse".into(),
        conn_type: "postgres".into(),
        host: Some("db".into()),
        schema: Some("dw".into()),
        login: Some("loader".into()),
        password: Some("gAAAA-secret".into()),
        port: Some(5432),
        extra: None,
        description: "the warehouse".into(),
    };
    store.set_connection(&warehouse, ts(NOW)).await.unwrap();
    assert_eq!(store.connection("warehouse").await.unwrap().unwrap(), warehouse);
    let moved = ConnectionRow { host: Some("db2".into()), port: None, ..warehouse.clone() };
    store.set_connection(&moved, ts(NOW)).await.unwrap();
    assert_eq!(store.connections().await.unwrap(), vec![moved]);
    assert!(store.delete_connection("warehouse").await.unwrap());
    assert!(store.connection("warehouse").await.unwrap().is_none());
}

mod sqlite {
    use super::*;

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = updraft_store::open("sqlite://state/updraft.db", dir.path()).await.unwrap();
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
        dags_and_versions,
        runs_are_unique,
        apply_is_compare_and_set,
        claim_and_finish,
        snapshots_and_scopes,
        processes,
        workers_take_their_queues,
        leases_are_fenced_by_the_try_number,
        attempts_are_adopted_from_their_holder_only,
        logs_of_remote_attempts,
        operator_changes_are_all_or_nothing,
        accounts,
        outputs_follow_the_latest_try,
        mapped_tasks_expand_once,
        clean_removes_old_finished_runs_in_batches,
        worker_tokens,
        variables_and_connections,
    );

    /// The mapped-task migration rebuilds `task_instances`: rows stay, and so do
    /// the rows that point at them (attempts, outputs), with foreign keys on after.
    #[tokio::test]
    async fn the_task_instance_rebuild_keeps_every_row_and_reference() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let old = rusqlite::Connection::open(&path).unwrap();
            for sql in OLD_MIGRATIONS {
                old.execute_batch(sql).unwrap();
            }
            old.execute_batch(
                "PRAGMA user_version = 12;
                 INSERT INTO dag_runs (id, dag_id, run_id, run_type, state, version, logical_date,
                     data_interval_start, data_interval_end, conf, queued_at) VALUES (1, 'd', 'r', 'manual', 'running', 'v', 0, 0, 0, '{}', 0);
                 INSERT INTO task_instances (id, run_pk, task_id, state, try_number, max_tries, pool, priority, updated_at)
                     VALUES (7, 1, 'a', 'success', 1, 0, 'default', 0, 0);
                 INSERT INTO task_attempts (ti_pk, try_number, state, start_date) VALUES (7, 1, 'success', 0);
                 INSERT INTO task_outputs (ti_pk, value) VALUES (7, '[1]');",
            )
            .unwrap();
        }
        let store = updraft_store::open("sqlite://old.db", dir.path()).await.unwrap();
        let tis = store.task_instances(1).await.unwrap();
        assert_eq!((tis.len(), tis[0].ti_pk, tis[0].map_index, tis[0].state), (1, 7, -1, TaskState::Success));
        assert_eq!(store.task_attempts(7).await.unwrap().len(), 1);
        assert_eq!(store.run_outputs("d", "r").await.unwrap()["a"], "[1]");
        // The references hold: deleting the run takes its task instances' rows along.
        drop(store);
        let reopened = rusqlite::Connection::open(&path).unwrap();
        reopened.execute_batch("PRAGMA foreign_keys = ON; DELETE FROM dag_runs WHERE id = 1;").unwrap();
        let left: i64 = reopened.query_row("SELECT COUNT(*) FROM task_attempts", [], |row| row.get(0)).unwrap();
        assert_eq!(left, 0);
    }

    const OLD_MIGRATIONS: [&str; 12] = [
        include_str!("../migrations/sqlite/0001_initial.sql"),
        include_str!("../migrations/sqlite/0002_claim_index.sql"),
        include_str!("../migrations/sqlite/0003_queues_and_attempt_heartbeats.sql"),
        include_str!("../migrations/sqlite/0004_log_chunks.sql"),
        include_str!("../migrations/sqlite/0005_dag_source.sql"),
        include_str!("../migrations/sqlite/0006_users.sql"),
        include_str!("../migrations/sqlite/0007_sessions.sql"),
        include_str!("../migrations/sqlite/0008_api_tokens.sql"),
        include_str!("../migrations/sqlite/0009_audit_log.sql"),
        include_str!("../migrations/sqlite/0010_variables_connections.sql"),
        include_str!("../migrations/sqlite/0011_worker_tokens.sql"),
        include_str!("../migrations/sqlite/0012_task_outputs.sql"),
    ];

    #[tokio::test]
    async fn reopening_keeps_data_and_skips_migration() {
        let (store, dir) = store().await;
        let (chain, version) = dag(CHAIN);
        store
            .upsert_dags(&[DagUpsert { dag: chain, version, paused_if_new: false, source: None }], ts(NOW))
            .await
            .unwrap();
        drop(store);
        let again = updraft_store::open("sqlite://state/updraft.db", dir.path()).await.unwrap();
        assert_eq!(again.list_dags().await.unwrap().len(), 1);
        assert!(dir.path().join("state/updraft.db").exists());
    }

    #[tokio::test]
    async fn another_connection_wakes_the_watcher() {
        let (store, dir) = store().await;
        let mut watcher = store.change_watcher().await.unwrap();
        let other = updraft_store::open("sqlite://state/updraft.db", dir.path()).await.unwrap();
        let (chain, version) = dag(CHAIN);
        other
            .upsert_dags(&[DagUpsert { dag: chain, version, paused_if_new: false, source: None }], ts(NOW))
            .await
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), watcher.changed())
            .await
            .expect("watcher woke")
            .unwrap();
    }

    /// Another process holding the write lock makes writes wait, not fail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_wait_for_another_process_lock() {
        let (store, dir) = store().await;
        let path = dir.path().join("state/updraft.db");
        let (locked_tx, locked) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let other = rusqlite::Connection::open(&path).unwrap();
            other.execute_batch("BEGIN IMMEDIATE; UPDATE pools SET slots = 7 WHERE name = 'default';").unwrap();
            locked_tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            other.execute_batch("COMMIT").unwrap();
        });
        locked.recv().unwrap();
        let started = std::time::Instant::now();
        store.set_pool("api", 3, "").await.expect("the write waits for the lock");
        assert!(started.elapsed() >= std::time::Duration::from_millis(200), "it did wait: {:?}", started.elapsed());
        holder.join().unwrap();
        let pools = store.pools().await.unwrap();
        assert_eq!(
            pools.iter().map(|p| (p.name.as_str(), p.slots)).collect::<Vec<_>>(),
            vec![("api", 3), ("default", 7)]
        );
    }

    #[tokio::test]
    async fn bad_urls_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let error = updraft_store::open("mysql://x", dir.path()).await.err().unwrap();
        assert_eq!(
            error.to_string(),
            "unsupported database URL `mysql://x`: expected `sqlite://<path>`, `sqlite::memory:` or `postgres://...`"
        );
        // A password never appears in a message.
        let error = updraft_store::open("postgres://me:secret@127.0.0.1:1/x", dir.path()).await.err().unwrap();
        assert_eq!(error.to_string(), "cannot connect to the database `postgres://me:***@127.0.0.1:1/x`");
    }
}

mod postgres {
    use super::*;
    use updraft_testkit::postgres::TestDatabase;

    async fn store() -> Option<(Store, TestDatabase)> {
        let database = TestDatabase::create()?;
        let store = updraft_store::open(&database.url, std::path::Path::new(".")).await.unwrap();
        assert_eq!(store.backend(), "postgres");
        Some((store, database))
    }

    macro_rules! postgres_tests {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $name() {
                let Some((store, _database)) = store().await else { return };
                super::$name(store).await;
            }
        )*};
    }

    postgres_tests!(
        dags_and_versions,
        runs_are_unique,
        apply_is_compare_and_set,
        claim_and_finish,
        snapshots_and_scopes,
        processes,
        workers_take_their_queues,
        leases_are_fenced_by_the_try_number,
        attempts_are_adopted_from_their_holder_only,
        logs_of_remote_attempts,
        operator_changes_are_all_or_nothing,
        accounts,
        outputs_follow_the_latest_try,
        mapped_tasks_expand_once,
        clean_removes_old_finished_runs_in_batches,
        worker_tokens,
        variables_and_connections,
    );

    #[tokio::test]
    async fn a_commit_elsewhere_wakes_the_watcher() {
        let Some((store, database)) = store().await else { return };
        let mut watcher = store.change_watcher().await.unwrap();
        let other = updraft_store::open(&database.url, std::path::Path::new(".")).await.unwrap();
        let (chain, version) = dag(CHAIN);
        other
            .upsert_dags(&[DagUpsert { dag: chain, version, paused_if_new: false, source: None }], ts(NOW))
            .await
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), watcher.changed())
            .await
            .expect("watcher woke")
            .unwrap();
    }

    /// Two schedulers' passes at the same moment take disjoint DAGs.
    #[test]
    fn concurrent_passes_take_disjoint_dags() {
        let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let Some((store, database)) = runtime().block_on(store()) else { return };
        let mut upserts = Vec::new();
        for i in 0..6 {
            let (dag, version) = dag(&CHAIN.replace("dag: chain", &format!("dag: chain{i}")));
            upserts.push(DagUpsert { dag, version, paused_if_new: false, source: None });
        }
        runtime().block_on(store.upsert_dags(&upserts, ts(NOW))).unwrap();
        drop(store);
        // Each pass, on a thread and runtime of its own, holds its DAGs until the
        // other has read: neither may see the other's.
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let passes: Vec<_> = (0..2)
            .map(|_| {
                let (barrier, url) = (barrier.clone(), database.url.clone());
                std::thread::spawn(move || {
                    runtime().block_on(async move {
                        let store = updraft_store::open(&url, std::path::Path::new(".")).await.unwrap();
                        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                        let keep = seen.clone();
                        let pass = Pass {
                            actor: "s".into(),
                            batch: 3,
                            plan: Box::new(move |raw| {
                                *keep.lock().unwrap() = raw.dags.iter().map(|dag| dag.dag_id.clone()).collect();
                                barrier.wait();
                                Vec::new()
                            }),
                        };
                        let report = store.schedule_pass(Scope::All, ts(NOW), pass).await.unwrap();
                        let seen = seen.lock().unwrap().clone();
                        (seen, report.more)
                    })
                })
            })
            .collect();
        let mut results = passes.into_iter().map(|pass| pass.join().unwrap());
        let ((mut a, a_more), (b, b_more)) = (results.next().unwrap(), results.next().unwrap());
        assert_eq!((a.len(), b.len()), (3, 3), "each took a full batch: {a:?} {b:?}");
        assert!(a_more && b_more, "a full batch says more may wait");
        a.extend(b);
        a.sort();
        a.dedup();
        assert_eq!(a.len(), 6, "no DAG was taken twice");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrations_from_several_processes_at_once() {
        let Some(database) = TestDatabase::create() else { return };
        let opens = (0..3).map(|_| {
            let url = database.url.clone();
            tokio::spawn(async move { updraft_store::open(&url, std::path::Path::new(".")).await.map(|_| ()) })
        });
        for open in opens.collect::<Vec<_>>() {
            open.await.unwrap().unwrap();
        }
        // Each migration applied once: one row per file.
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres")).unwrap().count();
        let versions = updraft_testkit::postgres::psql(
            &database.url,
            "SELECT count(DISTINCT version) || '/' || count(*) FROM _sqlx_migrations",
        )
        .unwrap();
        assert_eq!(versions, format!("{files}/{files}"));
    }
}
