//! A plan's actions, checked and grouped the way every backend applies them: a
//! task instance's moves in order (its second move after its first), each
//! (from, to) group one compare-and-set statement; wait reasons after the moves
//! (a move clears its task's reason); finished runs last, since their guard reads
//! the moved states.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use updraft_core::plan::{Action, RunType};
use updraft_core::state::{check_run_transition, check_task_transition};
use updraft_core::{DagId, DataInterval, RunState, TaskState};

use crate::error::Result;
use crate::model::NewRun;

/// Task instances moving from one state to another together.
pub struct StateGroup {
    pub from: TaskState,
    pub to: TaskState,
    pub ti_pks: Vec<i64>,
}

pub struct Grouped<'a> {
    pub creates: Vec<NewRun>,
    pub schedules: Vec<(&'a DagId, Option<DataInterval>, Option<Timestamp>)>,
    pub starts: Vec<i64>,
    pub state_steps: Vec<Vec<StateGroup>>,
    /// Wait reason (JSON, or none) and the task instances that get it.
    pub reasons: Vec<(Option<String>, Vec<i64>)>,
    pub finishes: Vec<(i64, RunState)>,
}

/// Groups `actions`, refusing any illegal state change before anything is written.
pub fn group(actions: &[Action]) -> Result<Grouped<'_>> {
    let mut grouped = Grouped {
        creates: Vec::new(),
        schedules: Vec::new(),
        starts: Vec::new(),
        state_steps: Vec::new(),
        reasons: Vec::new(),
        finishes: Vec::new(),
    };
    let mut steps_taken: HashMap<i64, usize> = HashMap::new();
    let mut reasons: BTreeMap<Option<String>, Vec<i64>> = BTreeMap::new();
    for action in actions {
        match action {
            Action::CreateRun { dag, version, run_id, interval } => grouped.creates.push(NewRun {
                dag: dag.clone(),
                version: version.clone(),
                run_id: run_id.clone(),
                run_type: RunType::Scheduled,
                logical_date: interval.start,
                interval: *interval,
                conf: serde_json::Map::new(),
                owner_process: None,
                with_retries: true,
            }),
            Action::SetDagSchedule { dag_id, last_automated, next_due } => {
                grouped.schedules.push((dag_id, *last_automated, *next_due));
            }
            Action::StartRun { run_pk } => {
                check_run_transition(RunState::Queued, RunState::Running)?;
                grouped.starts.push(*run_pk);
            }
            Action::SetTaskState { ti_pk, from, to } => {
                check_task_transition(*from, *to)?;
                let step = steps_taken.entry(*ti_pk).or_insert(0);
                if grouped.state_steps.len() <= *step {
                    grouped.state_steps.push(Vec::new());
                }
                let groups = &mut grouped.state_steps[*step];
                match groups.iter_mut().find(|group| group.from == *from && group.to == *to) {
                    Some(group) => group.ti_pks.push(*ti_pk),
                    None => groups.push(StateGroup { from: *from, to: *to, ti_pks: vec![*ti_pk] }),
                }
                *step += 1;
            }
            Action::SetWaitReason { ti_pk, reason } => {
                reasons.entry(reason.as_ref().map(|reason| reason.to_json())).or_default().push(*ti_pk);
            }
            Action::FinishRun { run_pk, state } => {
                check_run_transition(RunState::Running, *state)?;
                grouped.finishes.push((*run_pk, *state));
            }
        }
    }
    grouped.reasons = reasons.into_iter().collect();
    Ok(grouped)
}

/// Checks an operator's change against the operator's legal moves, before any
/// write: the store refuses what `updraft_core::intervene` would never produce.
pub fn check_intervention(change: &updraft_core::intervene::Intervention) -> Result<()> {
    use updraft_core::intervene::{check_operator_run_transition, check_operator_transition};
    use updraft_core::state::IllegalTransition;
    for (_, from, to) in &change.tasks {
        if !check_operator_transition(*from, *to) {
            return Err(IllegalTransition { from: *from, to: *to }.into());
        }
    }
    if let Some((from, to)) = change.run
        && !check_operator_run_transition(from, to)
    {
        return Err(IllegalTransition { from, to }.into());
    }
    Ok(())
}
