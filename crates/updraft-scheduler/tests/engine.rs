//! The scheduler and the runner together on a real SQLite store, running real
//! subprocesses: whole runs, failures, skips, retries, schedules, limits.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{Notify, watch};
use updraft_core::clock::{Clock, SystemClock};
use updraft_core::plan::RunType;
use updraft_core::{DataInterval, RunId, RunState, TaskState};
use updraft_runner::{Quiet, Runner, RunnerConfig, StoreSource};
use updraft_scheduler::{DagSync, Scheduler, SchedulerConfig};
use updraft_store::{AttemptEnd, DefinitionCache, NewProcess, NewRun, ProcessKind, Scope, Store};

struct Engine {
    store: Store,
    source: Arc<StoreSource>,
    runner: Arc<Runner>,
    process: i64,
    dir: tempfile::TempDir,
    definitions: Arc<DefinitionCache>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Engine {
    async fn start(dags: &[(&str, &str)], clock: Arc<dyn Clock>) -> Engine {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in dags {
            let path = dir.path().join("dags").join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let store = updraft_store::open("sqlite://state/updraft.db", dir.path()).await.unwrap();
        let definitions = Arc::new(DefinitionCache::default());
        let process = store
            .register_process(
                &NewProcess {
                    kind: ProcessKind::Standalone,
                    hostname: "test".into(),
                    pid: std::process::id(),
                    pid_start: None,
                },
                clock.now(),
            )
            .await
            .unwrap();
        let (stop, stopped) = watch::channel(false);
        let wake_scheduler = Arc::new(Notify::new());
        let wake_runner = Arc::new(Notify::new());
        let sync = DagSync::new(dir.path().join("dags"), None, store.clone(), definitions.clone(), false);
        let scheduler = Scheduler::new(
            store.clone(),
            SchedulerConfig {
                scope: Scope::All,
                parallelism: Some(32),
                use_pools: true,
                ignore_pause: false,
                dag_sync_interval: Duration::from_secs(3600),
                actor: "scheduler".into(),
                ticked: None,
                batch: 64,
            },
            definitions.clone(),
            clock.clone(),
            wake_scheduler.clone(),
            wake_runner.clone(),
            Some(sync),
        );
        scheduler.sync_dags().await;
        let source = Arc::new(StoreSource {
            store: store.clone(),
            definitions: definitions.clone(),
            clock: clock.clone(),
            watch: false,
            cipher: None,
        });
        let runner = Arc::new(Runner::new(
            source.clone(),
            RunnerConfig {
                slots: 32,
                scope: Scope::All,
                process_id: process,
                hostname: "test".into(),
                dags_folder: dir.path().join("dags"),
                logs_folder: dir.path().join("logs"),
                kill_grace: Duration::from_secs(1),
                queues: None,
                backends: Arc::default(),
                output_limit: updraft_runner::DEFAULT_OUTPUT_LIMIT,
                pods: Arc::new(updraft_runner::PodExecutor::new(Default::default(), Default::default())),
            },
            Arc::new(Quiet),
            clock,
            wake_runner,
            wake_scheduler,
        ));
        let scheduler_stop = stopped.clone();
        let tasks = vec![
            tokio::spawn(async move { scheduler.run(scheduler_stop).await.unwrap() }),
            tokio::spawn(runner.clone().run(stopped)),
        ];
        Engine { store, source, runner, process, dir, definitions, stop, tasks }
    }

    async fn trigger(&self, dag_id: &str, run_id: &str, conf: &str) -> i64 {
        let dag_row = self.store.get_dag(dag_id).await.unwrap().unwrap();
        let version = updraft_core::plan::DagVersion(dag_row.latest_version);
        let dag = self.definitions.get(self.store.as_ref(), dag_id, &version).await.unwrap();
        let now = Timestamp::now();
        let run = NewRun {
            interval: dag.timetable().manual_interval(now),
            dag,
            version,
            run_id: RunId::new(run_id).unwrap(),
            run_type: RunType::Manual,
            logical_date: now,
            conf: serde_json::from_str(conf).unwrap(),
            owner_process: None,
            with_retries: true,
        };
        self.store.create_run(&run, "test", now).await.unwrap().unwrap()
    }

    /// Polls until the run finishes, with a deadline.
    async fn wait(&self, run_pk: i64) -> (RunState, Vec<(String, TaskState, u32)>) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let run = self.store.get_run_by_pk(run_pk).await.unwrap().unwrap();
            if run.state.is_finished() {
                let tis = self.store.task_instances(run_pk).await.unwrap();
                return (run.state, tis.into_iter().map(|ti| (ti.task_id, ti.state, ti.try_number)).collect());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "run {run_pk} did not finish: {:?}",
                self.store.task_instances(run_pk).await.unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> tempfile::TempDir {
        self.stop.send(true).unwrap();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(20), task).await.expect("engine stops").unwrap();
        }
        self.dir
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn states(tis: &[(String, TaskState, u32)]) -> Vec<String> {
    tis.iter().map(|(id, state, tries)| format!("{id}={state}/{tries}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_with_failure_skip_and_cleanup() {
    let dag = "dag: flow\ntasks:
  extract: {shell: 'echo {{ params.market }} > out.txt'}
  check: {shell: 'grep -q KOSDAQ out.txt', depends_on: [extract]}
  maybe: {shell: 'exit 99', depends_on: [check]}
  after_skip: {shell: 'true', depends_on: [maybe]}
  boom: {shell: 'exit 3', depends_on: [check]}
  never: {shell: 'true', depends_on: [boom]}
  cleanup: {shell: 'rm out.txt', depends_on: [never, after_skip], trigger_rule: all_done}
";
    let engine = Engine::start(&[("flow.yaml", dag)], Arc::new(SystemClock)).await;
    let run = engine.trigger("flow", "r1", r#"{"market": "KOSDAQ"}"#).await;
    let (state, tis) = engine.wait(run).await;
    assert_eq!(state, RunState::Success, "the only leaf, cleanup, succeeded: {tis:?}");
    assert_eq!(
        states(&tis),
        vec![
            "extract=success/1",
            "check=success/1",
            "maybe=skipped/1",
            "after_skip=skipped/0",
            "boom=failed/1",
            "never=upstream_failed/0",
            "cleanup=success/1",
        ]
    );
    assert!(!engine.path().join("dags/out.txt").exists(), "tasks ran in the DAG's folder");
    let log = std::fs::read_to_string(engine.path().join("logs/flow/r1/boom/1.log")).unwrap();
    assert!(log.contains("exit code 3"), "{log}");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_succeeds() {
    // Fails on its first two tries, succeeds on the third.
    let dag = "dag: flaky\ntasks:
  call: {shell: 'n=$(cat n 2>/dev/null || echo 0); echo $((n+1)) > n; [ $n -ge 2 ]', retries: 3, retry_delay: 0s}
  last: {shell: 'rm n', depends_on: [call]}
";
    let engine = Engine::start(&[("flaky.yaml", dag)], Arc::new(SystemClock)).await;
    let run = engine.trigger("flaky", "r1", "{}").await;
    let (state, tis) = engine.wait(run).await;
    assert_eq!(state, RunState::Success);
    assert_eq!(states(&tis), vec!["call=success/3", "last=success/1"]);
    let ti = &engine.store.task_instances(run).await.unwrap()[0];
    let attempts = engine.store.task_attempts(ti.ti_pk).await.unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.state).collect::<Vec<_>>(),
        vec![TaskState::Failed, TaskState::Failed, TaskState::Success]
    );
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_fail_the_run() {
    let dag = "dag: bad\ntasks:\n  a: {shell: 'exit 1', retries: 1, retry_delay: 0s}\n";
    let engine = Engine::start(&[("bad.yaml", dag)], Arc::new(SystemClock)).await;
    let run = engine.trigger("bad", "r1", "{}").await;
    let (state, tis) = engine.wait(run).await;
    assert_eq!((state, states(&tis)), (RunState::Failed, vec!["a=failed/2".to_string()]));
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_tasks_is_never_exceeded() {
    // Each task records how many run at once through a shared folder of markers.
    let mut dag = String::from("dag: wide\nmax_active_tasks: 3\ntasks:\n");
    for i in 0..9 {
        dag.push_str(&format!(
            "  t{i}: {{shell: 'touch running/t{i}; n=$(ls running | wc -l); echo $n >> peak; sleep 0.2; rm running/t{i}'}}\n"
        ));
    }
    let engine = Engine::start(&[("wide.yaml", &dag)], Arc::new(SystemClock)).await;
    std::fs::create_dir_all(engine.path().join("dags/running")).unwrap();
    let run = engine.trigger("wide", "r1", "{}").await;
    let (state, _) = engine.wait(run).await;
    assert_eq!(state, RunState::Success);
    let peaks = std::fs::read_to_string(engine.path().join("dags/peak")).unwrap();
    let peak = peaks.lines().map(|line| line.trim().parse::<u32>().unwrap()).max().unwrap();
    assert!(peak <= 3, "at most 3 at once, saw {peak}");
    assert!(peak >= 2, "tasks did run in parallel, saw {peak}");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_are_created_for_ended_intervals() {
    // Catch-up from three days ago with a fixed clock: exactly three runs.
    let now: Timestamp = "2024-06-04T12:00:00Z".parse().unwrap();
    let clock = Arc::new(updraft_core::clock::ManualClock::new(now));
    let dag = "dag: daily\nschedule: '@daily'\nstart_date: 2024-06-01\ncatchup: true\ntasks:\n  a: {shell: 'echo {{ ds }} >> ../days'}\n";
    let engine = Engine::start(&[("daily.yaml", dag)], clock).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let runs = loop {
        let runs = engine.store.list_runs("daily", None, 10).await.unwrap();
        if runs.len() == 3 && runs.iter().all(|run| run.state.is_finished()) {
            break runs;
        }
        assert!(std::time::Instant::now() < deadline, "runs: {runs:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let intervals: Vec<DataInterval> = runs.iter().map(|run| run.interval).collect();
    assert_eq!(intervals[0].start, "2024-06-03T00:00:00Z".parse::<Timestamp>().unwrap());
    assert_eq!(intervals[2].end, "2024-06-02T00:00:00Z".parse::<Timestamp>().unwrap());
    assert_eq!(runs[0].run_id, "scheduled__2024-06-03T00:00:00+00:00");
    let mut days: Vec<String> =
        std::fs::read_to_string(engine.path().join("days")).unwrap().lines().map(str::to_string).collect();
    days.sort();
    assert_eq!(days, vec!["2024-06-01", "2024-06-02", "2024-06-03"]);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_shutdown_interrupts_and_requeues_without_using_a_retry() {
    let dag = "dag: slow\ntasks:\n  a: {shell: 'sleep 30'}\n";
    let engine = Engine::start(&[("slow.yaml", dag)], Arc::new(SystemClock)).await;
    let run = engine.trigger("slow", "r1", "{}").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while engine.store.task_instances(run).await.unwrap()[0].pid.is_none() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let store = engine.store.clone();
    engine.stop().await;
    let ti = &store.task_instances(run).await.unwrap()[0];
    assert_eq!((ti.state, ti.try_number, ti.max_tries), (TaskState::Scheduled, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_whose_lease_was_taken_over_is_killed_not_finished() {
    let dag = "dag: long\ntasks:\n  nap: {shell: 'sleep 30'}\n";
    let engine = Engine::start(&[("long.yaml", dag)], Arc::new(SystemClock)).await;
    let (stop_beats, beats_stopped) = watch::channel(false);
    let beats = tokio::spawn(updraft_runner::heartbeat_loop(
        engine.source.clone(),
        engine.process,
        Duration::from_millis(50),
        Duration::from_secs(60),
        Some(engine.runner.clone()),
        beats_stopped,
    ));
    let run = engine.trigger("long", "r1", "{}").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ti = loop {
        let ti = engine.store.task_instances(run).await.unwrap().remove(0);
        if ti.pid.is_some() {
            break ti;
        }
        assert!(std::time::Instant::now() < deadline, "the attempt never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Another process counts the attempt as a zombie and fails it.
    let failed = AttemptEnd {
        state: TaskState::Failed,
        retry_at: None,
        exit_code: None,
        reason: Some("zombie".into()),
        process: None,
        output: None,
        reschedule: false,
    };
    assert!(
        engine
            .store
            .finish_attempt(ti.ti_pk, ti.try_number, &failed, "recovery:other", Timestamp::now())
            .await
            .unwrap()
    );
    // The runner learns it on its next heartbeat and kills the process group.
    let pgid = ti.pid.unwrap();
    while updraft_runner::procfs::group_alive(pgid) {
        assert!(std::time::Instant::now() < deadline, "the lost attempt was not killed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Its late report changes nothing: the task instance stays as recovery left it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ti = engine.store.task_instances(run).await.unwrap().remove(0);
    assert_eq!((ti.state, ti.exit_code), (TaskState::Failed, None));
    stop_beats.send(true).unwrap();
    assert!(beats.await.unwrap());
    engine.stop().await;
}
