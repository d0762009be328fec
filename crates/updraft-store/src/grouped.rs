//! A plan's actions, checked and grouped the way every backend applies them: a
//! task instance's moves in order (its second move after its first), each
//! (from, to) group one compare-and-set statement; wait reasons after the moves
//! (a move clears its task's reason); finished runs last, since their guard reads
//! the moved states.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use updraft_core::mapping::ForEach;
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
    /// Mapped tasks to expand, after the moves and before runs finish.
    pub expansions: Vec<Expansion<'a>>,
    pub finishes: Vec<(i64, RunState)>,
}

/// A mapped task's unexpanded instance, to turn into one instance per item.
pub struct Expansion<'a> {
    pub run_pk: i64,
    pub ti_pk: i64,
    pub for_each: &'a ForEach,
    pub limit: u32,
}

/// The transition detail of an expansion.
pub fn mapped_detail(count: usize) -> String {
    format!("mapped: {count} instance{}", if count == 1 { "" } else { "s" })
}

/// What an expansion writes.
pub enum Expanded {
    /// Each item's JSON text, in order.
    Items(Vec<String>),
    /// No items: the task is skipped.
    Skip,
    /// The items could not be read: the task fails with this message.
    Fail(String),
}

impl Expansion<'_> {
    /// Whether the items come from an output, so the run's outputs must be read.
    pub fn reads_outputs(&self) -> bool {
        self.for_each.source_task().is_some()
    }

    pub fn decide(&self, outputs: &BTreeMap<String, String>) -> Expanded {
        match self.for_each.items(outputs, self.limit) {
            Ok(items) if items.is_empty() => Expanded::Skip,
            Ok(items) => Expanded::Items(items.iter().map(ToString::to_string).collect()),
            Err(error) => Expanded::Fail(error.to_string()),
        }
    }

    /// The wait reason a failed expansion leaves on its task instance, for pages
    /// and `tasks explain`.
    pub fn failure_reason(message: &str) -> String {
        updraft_core::reason::WaitReason::Unexpandable { error: message.to_string() }.to_json()
    }
}

/// Groups `actions`, refusing any illegal state change before anything is written.
pub fn group(actions: &[Action]) -> Result<Grouped<'_>> {
    let mut grouped = Grouped {
        creates: Vec::new(),
        schedules: Vec::new(),
        starts: Vec::new(),
        state_steps: Vec::new(),
        reasons: Vec::new(),
        expansions: Vec::new(),
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
            Action::ExpandTask { run_pk, ti_pk, task_id: _, for_each, limit } => {
                grouped.expansions.push(Expansion { run_pk: *run_pk, ti_pk: *ti_pk, for_each, limit: *limit });
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
