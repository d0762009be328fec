//! An operator's changes to a run: mark task instances success, failed or
//! skipped; clear them (with their downstream) so they run again; mark a whole run
//! success or failed. Like `plan()`, this only decides: it turns a request and the
//! run's current states into compare-and-set moves the store applies in one
//! transaction, or refuses with the reason.
//!
//! Nothing here touches a task instance that is queued or running: its attempt may
//! be starting or running on a worker, and changing it under the worker could let
//! a second attempt start before the first is gone. Such requests are refused.

use crate::dag::Dag;
use crate::state::{RunState, TaskState};

/// A task instance as the operator's request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInstanceState {
    pub ti_pk: i64,
    pub task_id: String,
    /// -1 unless the task is mapped (and expanded).
    pub map_index: i32,
    pub state: TaskState,
    pub try_number: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Marks these tasks `to` (success, failed or skipped); every instance of a
    /// mapped task.
    MarkTasks { task_ids: Vec<String>, to: TaskState },
    /// Marks one task instance `to` (one instance of a mapped task).
    MarkInstance { ti_pk: i64, to: TaskState },
    /// Runs these tasks again (and, with `downstream`, every task after them).
    Clear { task_ids: Vec<String>, downstream: bool },
    /// Ends the run as `to`: unfinished tasks become success (marking success) or
    /// skipped (marking failed).
    MarkRun { to: RunState },
}

/// What the store applies, all or nothing, each move compare-and-set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intervention {
    /// `(ti_pk, from, to)`.
    pub tasks: Vec<(i64, TaskState, TaskState)>,
    /// Cleared task instances get their retries again: `(ti_pk, max_tries)`.
    pub max_tries: Vec<(i64, u32)>,
    /// The run's move `(from, to)`, if it moves.
    pub run: Option<(RunState, RunState)>,
    /// Cleared mapped tasks' first instances (map index 0): they become
    /// unexpanded again, so the items are read anew when the task is ready.
    pub unexpand: Vec<i64>,
}

impl Intervention {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.run.is_none()
    }
}

/// Why a request was refused, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the run has no task `{0}`")]
    UnknownTask(String),
    #[error("task `{task_id}` is {state}: a task cannot be changed while it is queued or running")]
    Busy { task_id: String, state: TaskState },
    #[error("a task can only be marked success, failed or skipped, not {0}")]
    BadMark(TaskState),
    #[error("a run can only be marked success or failed, not {0}")]
    BadRunMark(RunState),
    #[error("the run is already {0}")]
    RunAlready(RunState),
    #[error("no task ids given")]
    NoTasks,
}

/// Whether an operator may move a task instance from `from` to `to`: marks to a
/// final state and clears back to `none`, never from or to queued or running.
pub fn check_operator_transition(from: TaskState, to: TaskState) -> bool {
    use TaskState::*;
    let settled = !matches!(from, Queued | Running);
    match to {
        Success | Failed | Skipped => settled && from != to,
        None => settled && from != None,
        _ => false,
    }
}

/// Whether an operator may move a run from `from` to `to`: mark an unfinished run
/// ended, or put a finished one back to `queued` (after a clear).
pub fn check_operator_run_transition(from: RunState, to: RunState) -> bool {
    use RunState::*;
    matches!((from, to), (Queued | Running, Success | Failed) | (Success | Failed, Queued))
}

pub fn intervene(
    dag: &Dag,
    run_state: RunState,
    task_instances: &[TaskInstanceState],
    request: &Request,
) -> Result<Intervention, Refusal> {
    // A task's instances: one, or each of a mapped task's.
    let find = |task_id: &str| {
        let found: Vec<&TaskInstanceState> = task_instances.iter().filter(|ti| ti.task_id == task_id).collect();
        if found.is_empty() { Err(Refusal::UnknownTask(task_id.to_string())) } else { Ok(found) }
    };
    let mut out = Intervention::default();
    match request {
        Request::MarkTasks { task_ids, to } => {
            if !matches!(to, TaskState::Success | TaskState::Failed | TaskState::Skipped) {
                return Err(Refusal::BadMark(*to));
            }
            if task_ids.is_empty() {
                return Err(Refusal::NoTasks);
            }
            for task_id in task_ids {
                for ti in find(task_id)? {
                    refuse_busy(ti)?;
                    if ti.state != *to {
                        out.tasks.push((ti.ti_pk, ti.state, *to));
                    }
                }
            }
            // A finished run whose tasks change is looked at again by the scheduler.
            if run_state.is_finished() && !out.tasks.is_empty() {
                out.run = Some((run_state, RunState::Queued));
            }
        }
        Request::MarkInstance { ti_pk, to } => {
            if !matches!(to, TaskState::Success | TaskState::Failed | TaskState::Skipped) {
                return Err(Refusal::BadMark(*to));
            }
            let ti = task_instances
                .iter()
                .find(|ti| ti.ti_pk == *ti_pk)
                .ok_or_else(|| Refusal::UnknownTask(format!("instance {ti_pk}")))?;
            refuse_busy(ti)?;
            if ti.state != *to {
                out.tasks.push((ti.ti_pk, ti.state, *to));
            }
            if run_state.is_finished() && !out.tasks.is_empty() {
                out.run = Some((run_state, RunState::Queued));
            }
        }
        Request::Clear { task_ids, downstream } => {
            if task_ids.is_empty() {
                return Err(Refusal::NoTasks);
            }
            let graph = dag.graph();
            let mut chosen = vec![false; dag.tasks().len()];
            let mut stack = Vec::new();
            for task_id in task_ids {
                find(task_id)?;
                if let Some(idx) = graph.task_idx(task_id) {
                    stack.push(idx);
                }
            }
            while let Some(idx) = stack.pop() {
                if std::mem::replace(&mut chosen[idx], true) {
                    continue;
                }
                if *downstream {
                    stack.extend(&graph.downstream[idx]);
                }
            }
            for idx in graph.topo_order.iter().copied().filter(|&idx| chosen[idx]) {
                let task = &dag.tasks()[idx];
                let Ok(tis) = find(task.task_id.as_str()) else { continue };
                if task.for_each.is_some() {
                    out.unexpand.extend(tis.iter().filter(|ti| ti.map_index == 0).map(|ti| ti.ti_pk));
                }
                for ti in tis {
                    refuse_busy(ti)?;
                    if ti.state != TaskState::None {
                        out.tasks.push((ti.ti_pk, ti.state, TaskState::None));
                        out.max_tries.push((ti.ti_pk, ti.try_number + task.retries));
                    }
                }
            }
            if run_state.is_finished() && !out.tasks.is_empty() {
                out.run = Some((run_state, RunState::Queued));
            }
        }
        Request::MarkRun { to } => {
            let fill = match to {
                RunState::Success => TaskState::Success,
                RunState::Failed => TaskState::Skipped,
                other => return Err(Refusal::BadRunMark(*other)),
            };
            if run_state == *to {
                return Err(Refusal::RunAlready(run_state));
            }
            for ti in task_instances {
                refuse_busy(ti)?;
                if !ti.state.is_finished() {
                    out.tasks.push((ti.ti_pk, ti.state, fill));
                }
            }
            out.run = Some((run_state, *to));
        }
    }
    Ok(out)
}

fn refuse_busy(ti: &TaskInstanceState) -> Result<(), Refusal> {
    match ti.state {
        TaskState::Queued | TaskState::Running => Err(Refusal::Busy { task_id: ti.task_id.clone(), state: ti.state }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::tests as testing;

    /// extract -> transform -> load, and extract -> report.
    fn dag() -> Dag {
        let mut spec = testing::spec(
            "etl",
            vec![
                testing::task("extract", &[]),
                testing::task("transform", &["extract"]),
                testing::task("load", &["transform"]),
                testing::task("report", &["extract"]),
            ],
        );
        spec.tasks[1].retries = 2;
        Dag::new(spec).unwrap()
    }

    fn tis(states: &[(&str, TaskState, u32)]) -> Vec<TaskInstanceState> {
        states
            .iter()
            .enumerate()
            .map(|(i, (task_id, state, try_number))| TaskInstanceState {
                ti_pk: i as i64 + 1,
                task_id: task_id.to_string(),
                map_index: crate::mapping::UNMAPPED,
                state: *state,
                try_number: *try_number,
            })
            .collect()
    }

    use TaskState::{Failed, None as NoneState, Running, Scheduled, Skipped, Success, UpstreamFailed};

    #[test]
    fn clear_with_downstream_renews_tries_and_reopens_the_run() {
        let run = tis(&[
            ("extract", Success, 1),
            ("transform", Failed, 3),
            ("load", UpstreamFailed, 0),
            ("report", Success, 1),
        ]);
        let request = Request::Clear { task_ids: vec!["transform".into()], downstream: true };
        let out = intervene(&dag(), RunState::Failed, &run, &request).unwrap();
        assert_eq!(out.tasks, vec![(2, Failed, NoneState), (3, UpstreamFailed, NoneState)]);
        assert_eq!(out.max_tries, vec![(2, 5), (3, 0)], "try 3 of a task with 2 retries: up to try 5");
        assert_eq!(out.run, Some((RunState::Failed, RunState::Queued)));

        let only = Request::Clear { task_ids: vec!["transform".into()], downstream: false };
        let out = intervene(&dag(), RunState::Failed, &run, &only).unwrap();
        assert_eq!(out.tasks, vec![(2, Failed, NoneState)]);
    }

    #[test]
    fn nothing_queued_or_running_is_touched() {
        let run =
            tis(&[("extract", Success, 1), ("transform", Running, 1), ("load", NoneState, 0), ("report", Success, 1)]);
        let clear = Request::Clear { task_ids: vec!["extract".into()], downstream: true };
        let refused = intervene(&dag(), RunState::Running, &run, &clear).unwrap_err();
        assert_eq!(refused, Refusal::Busy { task_id: "transform".into(), state: Running });
        let mark = Request::MarkTasks { task_ids: vec!["transform".into()], to: Success };
        assert!(matches!(intervene(&dag(), RunState::Running, &run, &mark), Err(Refusal::Busy { .. })));
        let end = Request::MarkRun { to: RunState::Failed };
        assert!(matches!(intervene(&dag(), RunState::Running, &run, &end), Err(Refusal::Busy { .. })));
    }

    #[test]
    fn marks() {
        let run = tis(&[
            ("extract", Success, 1),
            ("transform", Failed, 3),
            ("load", UpstreamFailed, 0),
            ("report", Scheduled, 0),
        ]);
        let mark = Request::MarkTasks { task_ids: vec!["transform".into(), "extract".into()], to: Success };
        let out = intervene(&dag(), RunState::Running, &run, &mark).unwrap();
        assert_eq!(out.tasks, vec![(2, Failed, Success)], "extract is success already");
        assert_eq!(out.run, None, "a running run goes on by itself");

        let end = Request::MarkRun { to: RunState::Failed };
        let out = intervene(&dag(), RunState::Running, &run, &end).unwrap();
        assert_eq!(out.tasks, vec![(4, Scheduled, Skipped)]);
        assert_eq!(out.run, Some((RunState::Running, RunState::Failed)));
        let end = Request::MarkRun { to: RunState::Success };
        assert_eq!(intervene(&dag(), RunState::Running, &run, &end).unwrap().tasks, vec![(4, Scheduled, Success)]);

        let bad = Request::MarkTasks { task_ids: vec!["transform".into()], to: Running };
        assert_eq!(intervene(&dag(), RunState::Running, &run, &bad), Err(Refusal::BadMark(Running)));
        let unknown = Request::MarkTasks { task_ids: vec!["nope".into()], to: Success };
        assert_eq!(intervene(&dag(), RunState::Running, &run, &unknown), Err(Refusal::UnknownTask("nope".into())));
        let again = Request::MarkRun { to: RunState::Running };
        assert_eq!(intervene(&dag(), RunState::Running, &run, &again), Err(Refusal::BadRunMark(RunState::Running)));
    }

    #[test]
    fn operator_transitions() {
        use TaskState::*;
        for state in TaskState::ALL {
            let settled = !matches!(state, Queued | Running);
            assert_eq!(check_operator_transition(state, Success), settled && state != Success, "{state}");
            assert_eq!(check_operator_transition(state, None), settled && state != None, "{state}");
            assert!(!check_operator_transition(state, Running));
            assert!(!check_operator_transition(state, Queued));
        }
        assert!(check_operator_run_transition(RunState::Failed, RunState::Queued));
        assert!(!check_operator_run_transition(RunState::Running, RunState::Queued));
    }
}
