//! Scenario tests: a snapshot written compactly, the plan rendered one action a line.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use jiff::Timestamp;

use super::*;
use crate::dag::tests::{spec, task};
use crate::dag::{Dag, Task};
use crate::duration::Duration;
use crate::timetable::Schedule;
use crate::trigger_rule::TriggerRule;

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn dag(tasks: Vec<Task>) -> Arc<Dag> {
    Arc::new(Dag::new(spec("d", tasks)).unwrap())
}

/// A run whose task instances are in the given states, in task order; `ti_pk` is
/// `run_pk * 100 + task index`.
fn run(run_pk: i64, dag: &Arc<Dag>, state: RunState, states: &[TaskState]) -> RunEntry {
    RunEntry {
        run_pk,
        dag_id: dag.dag_id().clone(),
        run_id: RunId::new(format!("r{run_pk}")).unwrap(),
        state,
        logical_date: ts("2024-01-01T00:00:00Z") + jiff::SignedDuration::from_hours(run_pk),
        dag: dag.clone(),
        task_instances: dag
            .tasks()
            .iter()
            .zip(states)
            .enumerate()
            .map(|(idx, (task, state))| TaskInstanceEntry {
                ti_pk: run_pk * 100 + idx as i64,
                task_id: task.task_id.clone(),
                map_index: crate::mapping::UNMAPPED,
                state: *state,
                try_number: 0,
                retry_at: None,
                wait_reason: None,
            })
            .collect(),
    }
}

fn snapshot(dags: Vec<DagEntry>, runs: Vec<RunEntry>) -> Snapshot {
    Snapshot {
        dags,
        runs,
        pools: None,
        busy_pools: Vec::new(),
        parallelism: None,
        ignore_pause: false,
        next_dag_due: None,
    }
}

fn entry(dag: &Arc<Dag>, paused: bool) -> DagEntry {
    DagEntry {
        active: true,
        dag_id: dag.dag_id().clone(),
        paused,
        latest: Some((DagVersion("v1".to_string()), dag.clone())),
        due: None,
    }
}

fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for action in &plan.actions {
        let line = match action {
            Action::CreateRun { run_id, interval, .. } => {
                format!("create {run_id} [{} {})", interval.start, interval.end)
            }
            Action::SetDagSchedule { last_automated, next_due, .. } => format!(
                "schedule last={} due={}",
                last_automated.map_or("-".to_string(), |i| i.start.to_string()),
                next_due.map_or("-".to_string(), |t| t.to_string())
            ),
            Action::StartRun { run_pk } => format!("start run {run_pk}"),
            Action::FinishRun { run_pk, state } => format!("finish run {run_pk} {state}"),
            Action::SetTaskState { ti_pk, from, to } => format!("ti {ti_pk} {from} -> {to}"),
            Action::SetWaitReason { ti_pk, reason } => {
                format!("ti {ti_pk} reason {}", reason.as_ref().map_or("-".to_string(), |r| r.to_string()))
            }
            Action::ExpandTask { ti_pk, task_id, for_each, limit, .. } => {
                format!("expand ti {ti_pk} {task_id} over {} (limit {limit})", for_each.expression())
            }
        };
        writeln!(out, "{line}").unwrap();
    }
    if let Some(at) = plan.wake_at {
        writeln!(out, "wake {at}").unwrap();
    }
    out
}

const NOW: &str = "2024-06-01T12:00:00Z";

fn run_plan(snapshot: Snapshot) -> String {
    render(&plan(&snapshot, ts(NOW)))
}

#[test]
fn chain_starts_with_its_root() {
    use TaskState::*;
    let d = dag(vec![task("a", &[]), task("b", &["a"]), task("c", &["b"])]);
    insta::assert_snapshot!(run_plan(
        snapshot(vec![entry(&d, false)], vec![run(1, &d, RunState::Queued, &[None, None, None])])), @"
            start run 1
            ti 101 reason waiting for upstream tasks (trigger rule `all_success`)
            ti 102 reason waiting for upstream tasks (trigger rule `all_success`)
            ti 100 none -> scheduled
            ti 100 scheduled -> queued
            ");
}

#[test]
fn success_moves_downstream_and_finishes() {
    use TaskState::*;
    let d = dag(vec![task("a", &[]), task("b", &["a"])]);
    insta::assert_snapshot!(run_plan(
        snapshot(vec![entry(&d, false)], vec![run(1, &d, RunState::Running, &[Success, None])])), @"
            ti 101 none -> scheduled
            ti 101 scheduled -> queued
            ");
    insta::assert_snapshot!(run_plan(
        snapshot(vec![entry(&d, false)], vec![run(1, &d, RunState::Running, &[Success, Skipped])])), @"finish run 1 success");
}

#[test]
fn failure_settles_the_whole_chain_at_once() {
    use TaskState::*;
    let mut cleanup = task("cleanup", &["c"]);
    cleanup.trigger_rule = TriggerRule::AllDone;
    let d = dag(vec![task("a", &[]), task("b", &["a"]), task("c", &["b"]), cleanup]);
    insta::assert_snapshot!(run_plan(
        snapshot(vec![entry(&d, false)], vec![run(1, &d, RunState::Running, &[Failed, None, None, None])])), @"
            ti 101 none -> upstream_failed
            ti 102 none -> upstream_failed
            ti 103 none -> scheduled
            ti 103 scheduled -> queued
            ");
    // The leaf succeeded, so the run succeeds although a middle task failed (Airflow).
    insta::assert_snapshot!(run_plan(
        snapshot(vec![entry(&d, false)], vec![run(1, &d, RunState::Running, &[Failed, UpstreamFailed, UpstreamFailed, Success])])), @"finish run 1 success");
    insta::assert_snapshot!(run_plan(
        snapshot(vec![entry(&d, false)], vec![run(1, &d, RunState::Running, &[Success, Success, Failed, Success])])), @"finish run 1 success");
    let d2 = dag(vec![task("a", &[]), task("b", &["a"])]);
    insta::assert_snapshot!(run_plan(
        snapshot(vec![entry(&d2, false)], vec![run(1, &d2, RunState::Running, &[Success, Failed])])), @"finish run 1 failed");
}

#[test]
fn skip_propagates() {
    use TaskState::*;
    let mut join = task("join", &["b", "c"]);
    join.trigger_rule = TriggerRule::NoneFailed;
    let d = dag(vec![task("a", &[]), task("b", &["a"]), task("c", &["a"]), join]);
    insta::assert_snapshot!(run_plan(
        snapshot(vec![entry(&d, false)], vec![run(1, &d, RunState::Running, &[Skipped, None, None, None])])), @"
            ti 101 none -> skipped
            ti 102 none -> skipped
            ti 103 none -> scheduled
            ti 103 scheduled -> queued
            ");
}

#[test]
fn retries_wait_then_queue() {
    use TaskState::*;
    let d = dag(vec![task("a", &[])]);
    let mut waiting = run(1, &d, RunState::Running, &[UpForRetry]);
    waiting.task_instances[0].retry_at = Some(ts("2024-06-01T13:00:00Z"));
    waiting.task_instances[0].try_number = 1;
    insta::assert_snapshot!(run_plan(
        snapshot(vec![entry(&d, false)], vec![waiting.clone()])), @"
            ti 100 reason waiting to retry: try 2 starts at 2024-06-01T13:00:00Z
            wake 2024-06-01T13:00:00Z
            ");
    waiting.task_instances[0].retry_at = Some(ts("2024-06-01T11:00:00Z"));
    insta::assert_snapshot!(run_plan(
        snapshot(vec![entry(&d, false)], vec![waiting])), @"
            ti 100 up_for_retry -> scheduled
            ti 100 scheduled -> queued
            ");
}

#[test]
fn limits_hold_tasks_in_priority_order() {
    use TaskState::*;
    let mut tasks: Vec<Task> = (0..4).map(|i| task(&format!("t{i}"), &[])).collect();
    tasks[2].priority = 10;
    tasks[3].pool = "small".to_string();
    let mut spec = spec("d", tasks);
    spec.max_active_tasks = 2;
    let d = Arc::new(Dag::new(spec).unwrap());
    let mut snap = snapshot(
        vec![entry(&d, false)],
        vec![run(1, &d, RunState::Running, &[Scheduled, Scheduled, Scheduled, Scheduled])],
    );
    insta::assert_snapshot!(run_plan(
        snap.clone()), @"
            ti 102 scheduled -> queued
            ti 100 scheduled -> queued
            ti 101 reason the run already has 2 task(s) queued or running (`max_active_tasks: 2`)
            ti 103 reason the run already has 2 task(s) queued or running (`max_active_tasks: 2`)
            ");
    snap.pools = Some(HashMap::from([("default".to_string(), Slots { limit: 1, occupied: 0 })]));
    snap.parallelism = Some(Slots { limit: 10, occupied: 0 });
    insta::assert_snapshot!(run_plan(
        snap.clone()), @"
            ti 102 scheduled -> queued
            ti 100 reason pool `default` is full: all 1 slot(s) are taken by queued or running tasks
            ti 101 reason pool `default` is full: all 1 slot(s) are taken by queued or running tasks
            ti 103 reason pool `small` does not exist; create it with `updraft pools set small <slots>`
            ");
    assert_eq!(plan(&snap, ts(NOW)).starving, 2, "held for a full pool (a missing one is not starving)");
    snap.pools = Option::None;
    snap.parallelism = Some(Slots { limit: 3, occupied: 2 });
    insta::assert_snapshot!(run_plan(
        snap), @"
            ti 102 scheduled -> queued
            ti 100 reason all 3 runner slot(s) are busy (`[scheduler] parallelism`)
            ti 101 reason all 3 runner slot(s) are busy (`[scheduler] parallelism`)
            ti 103 reason all 3 runner slot(s) are busy (`[scheduler] parallelism`)
            ");
}

#[test]
fn recorded_reasons_are_not_rewritten() {
    use TaskState::*;
    let d = dag(vec![task("a", &[]), task("b", &["a"])]);
    let mut r = run(1, &d, RunState::Running, &[Running, None]);
    r.task_instances[1].wait_reason = Some(WaitReason::Upstream { rule: TriggerRule::AllSuccess }.to_json());
    insta::assert_snapshot!(run_plan(snapshot(vec![entry(&d, false)], vec![r])), @"");
}

#[test]
fn paused_dags_hold_their_runs() {
    use TaskState::*;
    let d = dag(vec![task("a", &[])]);
    insta::assert_snapshot!(run_plan(
        snapshot(vec![entry(&d, true)], vec![run(1, &d, RunState::Running, &[None]), run(2, &d, RunState::Queued, &[None])])), @"
            ti 200 reason the DAG is paused; unpause it to continue
            ti 100 reason the DAG is paused; unpause it to continue
            ");
    let mut snap = snapshot(vec![entry(&d, true)], vec![run(1, &d, RunState::Queued, &[None])]);
    snap.ignore_pause = true;
    insta::assert_snapshot!(run_plan(
        snap), @"
            start run 1
            ti 100 none -> scheduled
            ti 100 scheduled -> queued
            ");
}

#[test]
fn max_active_runs_queues_later_runs() {
    use TaskState::*;
    let mut spec = spec("d", vec![task("a", &[])]);
    spec.max_active_runs = 1;
    let d = Arc::new(Dag::new(spec).unwrap());
    insta::assert_snapshot!(run_plan(
        snapshot(
            vec![entry(&d, false)],
            vec![run(2, &d, RunState::Queued, &[None]), run(1, &d, RunState::Queued, &[None])],
        )), @"
            start run 1
            ti 200 reason the run is queued: the DAG already has 1 active run(s) (`max_active_runs: 1`)
            ti 100 none -> scheduled
            ti 100 scheduled -> queued
            ");
}

fn scheduled_dag(schedule: &str, catchup: bool, max_active_runs: u32) -> Arc<Dag> {
    let mut spec = spec("d", vec![task("a", &[])]);
    spec.schedule = Schedule::parse(schedule).unwrap();
    spec.start_date = Some(ts("2024-06-01T00:00:00Z"));
    spec.catchup = catchup;
    spec.max_active_runs = max_active_runs;
    Arc::new(Dag::new(spec).unwrap())
}

fn due(dag: &Arc<Dag>, last: Option<DataInterval>) -> DagEntry {
    DagEntry { due: Some(DueDag { last_automated: last, next_due: ts("2024-06-01T00:00:00Z") }), ..entry(dag, false) }
}

#[test]
fn creates_runs_for_ended_intervals() {
    // Four 3-hour intervals ended by noon; catch-up creates them all, oldest first.
    let d = scheduled_dag("0 */3 * * *", true, 16);
    insta::assert_snapshot!(run_plan(
        snapshot(vec![due(&d, None)], vec![])), @"
            create scheduled__2024-06-01T00:00:00+00:00 [2024-06-01T00:00:00Z 2024-06-01T03:00:00Z)
            create scheduled__2024-06-01T03:00:00+00:00 [2024-06-01T03:00:00Z 2024-06-01T06:00:00Z)
            create scheduled__2024-06-01T06:00:00+00:00 [2024-06-01T06:00:00Z 2024-06-01T09:00:00Z)
            create scheduled__2024-06-01T09:00:00+00:00 [2024-06-01T09:00:00Z 2024-06-01T12:00:00Z)
            schedule last=2024-06-01T09:00:00Z due=2024-06-01T15:00:00Z
            wake 2024-06-01T15:00:00Z
            ");
    // Without catch-up, only the latest.
    let d = scheduled_dag("0 */3 * * *", false, 16);
    insta::assert_snapshot!(run_plan(
        snapshot(vec![due(&d, None)], vec![])), @"
            create scheduled__2024-06-01T09:00:00+00:00 [2024-06-01T09:00:00Z 2024-06-01T12:00:00Z)
            schedule last=2024-06-01T09:00:00Z due=2024-06-01T15:00:00Z
            wake 2024-06-01T15:00:00Z
            ");
    // max_active_runs stops creation; the DAG stays due without a timer.
    let d = scheduled_dag("0 */3 * * *", true, 2);
    insta::assert_snapshot!(run_plan(
        snapshot(vec![due(&d, None)], vec![])), @"
            create scheduled__2024-06-01T00:00:00+00:00 [2024-06-01T00:00:00Z 2024-06-01T03:00:00Z)
            create scheduled__2024-06-01T03:00:00+00:00 [2024-06-01T03:00:00Z 2024-06-01T06:00:00Z)
            schedule last=2024-06-01T03:00:00Z due=2024-06-01T12:00:00Z
            ");
    // A paused DAG creates nothing.
    let mut paused = due(&d, None);
    paused.paused = true;
    insta::assert_snapshot!(run_plan(snapshot(vec![paused], vec![])), @"");
}

#[test]
fn retry_delay_is_respected_across_restarts() {
    // The retry time is data in the snapshot, so a restarted scheduler plans the
    // same wait rather than a fresh one.
    use TaskState::*;
    let mut t = task("a", &[]);
    t.retries = 3;
    t.retry_delay = Duration::from_secs(3600);
    let d = dag(vec![t]);
    let mut r = run(1, &d, RunState::Running, &[UpForRetry]);
    r.task_instances[0].retry_at = Some(ts("2024-06-01T12:30:00Z"));
    let first = plan(&snapshot(vec![entry(&d, false)], vec![r.clone()]), ts(NOW));
    let later = plan(&snapshot(vec![entry(&d, false)], vec![r]), ts("2024-06-01T12:29:00Z"));
    assert_eq!(first.wake_at, later.wake_at);
    assert_eq!(first.wake_at, Some(ts("2024-06-01T12:30:00Z")));
}

#[test]
fn run_ids_keep_sub_second_precision() {
    assert_eq!(RunType::Scheduled.run_id(ts("2024-01-01T00:00:00Z")).as_str(), "scheduled__2024-01-01T00:00:00+00:00");
    assert_eq!(
        RunType::Manual.run_id(ts("2024-01-01T00:00:00.0123Z")).as_str(),
        "manual__2024-01-01T00:00:00.012300+00:00"
    );
}

#[test]
fn pools_another_scheduler_fills_are_left_for_later() {
    use TaskState::*;
    let mut api = task("api", &[]);
    api.pool = "api".to_string();
    let d = dag(vec![task("a", &[]), api]);
    let mut snap = snapshot(vec![entry(&d, false)], vec![run(1, &d, RunState::Running, &[None, None])]);
    snap.pools = Some(HashMap::from([
        ("default".to_string(), Slots { limit: 8, occupied: 0 }),
        ("api".to_string(), Slots { limit: 8, occupied: 0 }),
    ]));
    snap.busy_pools = vec!["api".to_string()];
    insta::assert_snapshot!(run_plan(snap), @r"
    ti 100 none -> scheduled
    ti 100 scheduled -> queued
    ti 101 none -> scheduled
    ");
}

/// list -> fetch (for_each over list's output) -> collect.
fn mapped_dag() -> Arc<Dag> {
    let mut fetch = task("fetch", &["list"]);
    fetch.for_each = Some(crate::mapping::ForEach::Output { task: TaskId::new("list").unwrap(), path: vec![] });
    dag(vec![task("list", &[]), fetch, task("collect", &["fetch"])])
}

/// `run` with the mapped task's instances replaced by `mapped` (map index, state).
fn mapped_run(run_pk: i64, dag: &Arc<Dag>, states: &[TaskState], mapped: &[(i32, TaskState)]) -> RunEntry {
    let mut entry = run(run_pk, dag, RunState::Running, states);
    let template = entry.task_instances.remove(1);
    for (position, (map_index, state)) in mapped.iter().enumerate() {
        entry.task_instances.push(TaskInstanceEntry {
            ti_pk: 1000 + position as i64,
            map_index: *map_index,
            state: *state,
            ..template.clone()
        });
    }
    entry
}

#[test]
fn a_mapped_task_is_expanded_when_its_upstream_is_done() {
    use TaskState::*;
    let d = mapped_dag();
    let waiting = mapped_run(1, &d, &[Running, None, None], &[(-1, None)]);
    insta::assert_snapshot!(run_plan(snapshot(vec![entry(&d, false)], vec![waiting])), @"
    ti 1000 reason waiting for upstream tasks (trigger rule `all_success`)
    ti 102 reason waiting for upstream tasks (trigger rule `all_success`)
    ");
    let ready = mapped_run(1, &d, &[Success, None, None], &[(-1, None)]);
    insta::assert_snapshot!(run_plan(snapshot(vec![entry(&d, false)], vec![ready])), @"
    expand ti 1000 fetch over tasks.list.output (limit 1024)
    ti 102 reason waiting for upstream tasks (trigger rule `all_success`)
    wake 2024-06-01T12:00:00Z
    ");
}

#[test]
fn a_mapped_tasks_instances_run_on_their_own_and_hold_downstream_until_all_finish() {
    use TaskState::*;
    let d = mapped_dag();
    let expanded = mapped_run(1, &d, &[Success, None, None], &[(0, None), (1, Running), (2, UpForRetry)]);
    insta::assert_snapshot!(run_plan(snapshot(vec![entry(&d, false)], vec![expanded])), @"
    ti 102 reason waiting for upstream tasks (trigger rule `all_success`)
    ti 1000 none -> scheduled
    ti 1000 scheduled -> queued
    ti 1002 up_for_retry -> scheduled
    ti 1002 scheduled -> queued
    ");
    // One failed instance: downstream fails once all are done, and so does the run.
    let done = mapped_run(1, &d, &[Success, None, None], &[(0, Success), (1, Failed), (2, Success)]);
    insta::assert_snapshot!(run_plan(snapshot(vec![entry(&d, false)], vec![done])), @"
    ti 102 none -> upstream_failed
    finish run 1 failed
    ");
    // Cleared and unexpanded again: the last expansion's instances wait for the new one.
    let cleared = mapped_run(1, &d, &[Success, None, None], &[(-1, None), (1, None), (2, None)]);
    insta::assert_snapshot!(run_plan(snapshot(vec![entry(&d, false)], vec![cleared])), @"
    expand ti 1000 fetch over tasks.list.output (limit 1024)
    ti 102 reason waiting for upstream tasks (trigger rule `all_success`)
    wake 2024-06-01T12:00:00Z
    ");
    // No items: the unexpanded instance was skipped, and so is what needs it.
    let empty = mapped_run(1, &d, &[Success, None, None], &[(-1, Skipped)]);
    insta::assert_snapshot!(run_plan(snapshot(vec![entry(&d, false)], vec![empty])), @"
    ti 102 none -> skipped
    finish run 1 success
    ");
}

#[test]
fn a_run_of_a_dag_whose_file_is_gone_ends_with_its_unstarted_tasks_removed() {
    use TaskState::*;
    let d = dag(vec![task("a", &[]), task("b", &["a"]), task("c", &[])]);
    let gone = DagEntry { active: false, latest: Option::None, ..entry(&d, false) };
    let busy = run(1, &d, RunState::Running, &[Running, None, UpForRetry]);
    insta::assert_snapshot!(run_plan(snapshot(vec![gone.clone()], vec![busy])), @"
    ti 101 none -> removed
    ti 102 up_for_retry -> removed
    ");
    let done = run(1, &d, RunState::Running, &[Success, None, Failed]);
    insta::assert_snapshot!(run_plan(snapshot(vec![gone], vec![done])), @"
    ti 101 none -> removed
    finish run 1 failed
    ");
}
