//! `tasks explain`: why a task instance is where it is, in plain words, from what
//! the scheduler recorded (its wait reason and the transition log) and the states
//! of the task's upstream tasks.

use jiff::Timestamp;
use updraft_core::plan::RunType;
use updraft_core::reason::WaitReason;
use updraft_core::timetable::format_in_zone;
use updraft_core::trigger_rule::{Decision, UpstreamCounts, evaluate};
use updraft_core::{RunState, TaskState};
use updraft_store::{DefinitionCache, ProcessState, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("no run `{run_id}` of DAG `{dag_id}`")]
    RunNotFound { dag_id: String, run_id: String },
    #[error("run `{run_id}` has no task `{task_id}`{hint}")]
    TaskNotFound { run_id: String, task_id: String, hint: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An explanation: a headline, then supporting lines.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub headline: String,
    pub details: Vec<String>,
}

pub async fn explain(
    store: &Store,
    definitions: &DefinitionCache,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: Option<i32>,
    now: Timestamp,
) -> Result<Explanation, ExplainError> {
    let run = store
        .get_run(dag_id, run_id)
        .await?
        .ok_or_else(|| ExplainError::RunNotFound { dag_id: dag_id.to_string(), run_id: run_id.to_string() })?;
    let tis = store.task_instances(run.run_pk).await?;
    let mut instances: Vec<&updraft_store::TaskInstanceRow> = tis.iter().filter(|ti| ti.task_id == task_id).collect();
    instances.sort_by_key(|ti| ti.map_index);
    // A mapped task: the instance asked for, else the first still to finish.
    let chosen = match map_index {
        Some(index) => instances.iter().find(|ti| ti.map_index == index),
        None => instances.iter().find(|ti| !ti.state.is_finished()).or(instances.first()),
    };
    let Some(ti) = chosen.copied() else {
        let hint = match (map_index, instances.len()) {
            (Some(_), count) if count > 0 => format!(" (its instances: 0 to {})", count - 1),
            _ => {
                let mut names: Vec<&str> = tis.iter().map(|ti| ti.task_id.as_str()).collect();
                names.dedup();
                format!(" (its tasks: {})", names.join(", "))
            }
        };
        let named =
            updraft_core::mapping::instance_label(task_id, map_index.unwrap_or(updraft_core::mapping::UNMAPPED));
        return Err(ExplainError::TaskNotFound { run_id: run_id.to_string(), task_id: named, hint });
    };
    let label = ti.label();
    let task_id = label.as_str();
    let dag = definitions.get(store.as_ref(), dag_id, &run.version).await?;
    let tz = dag.tz();
    let at = |ts: Timestamp| format_in_zone(ts, tz);
    let ago = |ts: Timestamp| describe_span(now.duration_since(ts));
    let dag_row = store.get_dag(dag_id).await?;
    let paused = dag_row.as_ref().is_some_and(|row| row.is_paused) && run.run_type != RunType::Test;
    let recorded = ti.wait_reason.as_deref().and_then(WaitReason::from_json);
    let mut details = Vec::new();

    let headline = match ti.state {
        TaskState::Success
        | TaskState::Skipped
        | TaskState::Failed
        | TaskState::UpstreamFailed
        | TaskState::Removed => {
            let when = ti.end_date.map(|end| format!(" at {}", at(end))).unwrap_or_default();
            if let Some(reason @ WaitReason::Unexpandable { .. }) = &recorded {
                details.push(reason.to_string());
            }
            format!("`{task_id}` is finished: {}{when}", ti.state)
        }
        TaskState::Running => {
            let since =
                ti.start_date.map(|start| format!(" since {} ({} ago)", at(start), ago(start))).unwrap_or_default();
            let host = match (&ti.hostname, ti.pid) {
                (Some(host), Some(pid)) => format!(" on {host}, pid {pid}"),
                (Some(host), None) => format!(" on {host}"),
                _ => String::new(),
            };
            format!("`{task_id}` is running{since}: try {} of {}{host}", ti.try_number, ti.max_tries + 1)
        }
        TaskState::Queued => {
            let since =
                ti.queued_at.map(|queued| format!(" since {} ({} ago)", at(queued), ago(queued))).unwrap_or_default();
            format!("`{task_id}` is queued{since}: it holds a slot and waits for a runner to start it")
        }
        TaskState::UpForRetry => match ti.retry_at {
            Some(retry_at) if retry_at > now => format!(
                "`{task_id}` waits to retry: try {} failed; try {} starts at {} (in {})",
                ti.try_number,
                ti.try_number + 1,
                at(retry_at),
                describe_span(retry_at.duration_since(now))
            ),
            _ => {
                format!("`{task_id}` is due to retry now; the scheduler queues it on its next pass")
            }
        },
        TaskState::Scheduled => match &recorded {
            Some(reason) => format!("`{task_id}` is ready to run but held: {reason}"),
            None => {
                format!("`{task_id}` is ready to run; the scheduler queues it on its next pass")
            }
        },
        TaskState::None => {
            if paused {
                format!("`{task_id}` is not running: {}", WaitReason::DagPaused)
            } else if run.state == RunState::Queued {
                match &recorded {
                    Some(reason) => format!("`{task_id}` is not running: {reason}"),
                    None => format!("`{task_id}` is not running: the run is queued and has not started yet"),
                }
            } else {
                format!("`{task_id}` is waiting for its upstream tasks")
            }
        }
    };

    // Upstream detail: which upstream tasks hold it, and what its rule needs.
    if let Some(task) = dag.task(task_id)
        && !task.depends_on.is_empty()
        && matches!(ti.state, TaskState::None | TaskState::UpstreamFailed | TaskState::Skipped)
    {
        let states: Vec<(String, TaskState)> = task
            .depends_on
            .iter()
            .map(|up| {
                (up.to_string(), tis.iter().find(|t| t.task_id == up.as_str()).map_or(TaskState::Removed, |t| t.state))
            })
            .collect();
        let counts = UpstreamCounts::from_states(states.iter().map(|(_, state)| *state));
        let decision = evaluate(task.trigger_rule, counts);
        let pending: Vec<String> = states
            .iter()
            .filter(|(_, state)| !state.is_finished())
            .map(|(id, state)| format!("`{id}` ({state})"))
            .collect();
        let done: Vec<String> = states
            .iter()
            .filter(|(_, state)| state.is_finished())
            .map(|(id, state)| format!("`{id}` ({state})"))
            .collect();
        details.push(format!("trigger rule: `{}`", task.trigger_rule));
        if !pending.is_empty() {
            details.push(format!("waiting for: {}", pending.join(", ")));
        }
        if !done.is_empty() {
            details.push(format!("finished upstream: {}", done.join(", ")));
        }
        if ti.state == TaskState::None && decision == Decision::Run {
            details.push("its rule is met now; the scheduler moves it on its next pass".to_string());
        }
    }

    if let Some(reason) = &recorded
        && matches!(ti.state, TaskState::None | TaskState::UpForRetry)
        && !headline.contains(&reason.to_string())
    {
        details.push(format!("scheduler's last decision: {reason}"));
    }

    let attempts = store.task_attempts(ti.ti_pk).await?;
    if let Some(last) = attempts.last()
        && last.state != TaskState::Running
    {
        let mut line = format!("last attempt: try {} {}", last.try_number, last.state);
        if let Some(code) = last.exit_code {
            line.push_str(&format!(", exit code {code}"));
        }
        if let Some(reason) = &last.reason {
            line.push_str(&format!(" ({reason})"));
        }
        if let Some(path) = &last.log_path {
            line.push_str(&format!("; log: {path}"));
        }
        details.push(line);
    }

    // Nothing moves without a scheduler; say so when none is alive.
    let waiting = !ti.state.is_finished() && ti.state != TaskState::Running;
    if waiting && run.run_type != RunType::Test {
        let alive = store
            .processes(Some(ProcessState::Running))
            .await?
            .iter()
            .any(|process| process.kind.schedules() && now.duration_since(process.heartbeat_at).as_secs() < 60);
        if !alive {
            details.push("no scheduler is running: start `updraft standalone` (or `updraft scheduler`)".to_string());
        }
    }

    let transitions = store.transitions(run.run_pk, Some(ti.ti_pk), 0).await?;
    for transition in transitions.iter().rev().take(5).rev() {
        let mut line = format!(
            "{}  {} -> {}  by {}",
            at(transition.at),
            transition.from_state.as_deref().unwrap_or("-"),
            transition.to_state,
            transition.actor
        );
        if let Some(detail) = &transition.detail {
            line.push_str(&format!(" ({detail})"));
        }
        details.push(format!("history: {line}"));
    }
    Ok(Explanation { headline, details })
}

/// `2h 5m`, `42s`: enough precision to act on.
fn describe_span(span: jiff::SignedDuration) -> String {
    let secs = span.as_secs().max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86400, secs % 86400 / 3600),
    }
}
