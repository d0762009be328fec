//! `plan()`: the scheduler's whole decision, as a pure function from a snapshot of
//! the store to a list of actions. The store applies them in one transaction, each as
//! compare-and-set, so a plan made from a stale snapshot loses harmlessly.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;

use crate::dag::Dag;
use crate::id::{DagId, RunId, TaskId};
use crate::reason::WaitReason;
use crate::state::{RunState, TaskState};
use crate::timetable::DataInterval;
use crate::trigger_rule::{Decision, UpstreamCounts, evaluate};

/// The content hash of a DAG definition; runs are pinned to one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct DagVersion(pub String);

impl std::fmt::Display for DagVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunType {
    Scheduled,
    Manual,
    Backfill,
    /// Made and executed by `dags test` in its own process; schedulers leave it alone.
    Test,
}

impl RunType {
    pub fn as_str(self) -> &'static str {
        match self {
            RunType::Scheduled => "scheduled",
            RunType::Manual => "manual",
            RunType::Backfill => "backfill",
            RunType::Test => "test",
        }
    }

    pub fn parse(text: &str) -> Option<RunType> {
        [RunType::Scheduled, RunType::Manual, RunType::Backfill, RunType::Test]
            .into_iter()
            .find(|run_type| run_type.as_str() == text)
    }

    /// Airflow's run id form: `scheduled__2024-01-01T00:00:00+00:00`, with the
    /// microseconds when there are any (a trigger at "now"), so two triggers in one
    /// second get two runs.
    pub fn run_id(self, logical_date: Timestamp) -> RunId {
        let utc = crate::timetable::format_in_zone(logical_date, &jiff::tz::TimeZone::UTC);
        let micros = logical_date.subsec_microsecond();
        let utc = if micros == 0 { utc } else { format!("{}.{micros:06}{}", &utc[..19], &utc[19..]) };
        RunId::new(format!("{}__{utc}", self.as_str())).expect("generated run ids are valid")
    }
}

/// A limit and how much of it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots {
    pub limit: u32,
    pub occupied: u32,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    /// DAGs with active runs in scope, and DAGs due for a scheduled run.
    pub dags: Vec<DagEntry>,
    /// Every queued or running run in scope.
    pub runs: Vec<RunEntry>,
    /// Pools by name; `None` when pools do not apply (`dags test`).
    pub pools: Option<HashMap<String, Slots>>,
    /// Pools another scheduler is filling right now: their tasks wait for a later
    /// pass, without a recorded reason.
    pub busy_pools: Vec<String>,
    /// Runner capacity; `None` when unlimited.
    pub parallelism: Option<Slots>,
    /// `dags test` runs its run even when the DAG is paused.
    pub ignore_pause: bool,
    /// The earliest time a DAG not yet due will be; the scheduler sleeps until then.
    pub next_dag_due: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct DagEntry {
    pub dag_id: DagId,
    pub paused: bool,
    /// The newest parsed version; `None` once its file is gone.
    pub latest: Option<(DagVersion, Arc<Dag>)>,
    /// False once its file is gone: what is left of its runs becomes `removed`.
    pub active: bool,
    /// Set when the DAG is due: the stored time was reached.
    pub due: Option<DueDag>,
}

#[derive(Debug, Clone, Copy)]
pub struct DueDag {
    /// The interval of the latest scheduled run created so far.
    pub last_automated: Option<DataInterval>,
    /// The stored due time that was reached.
    pub next_due: Timestamp,
}

#[derive(Debug, Clone)]
pub struct RunEntry {
    pub run_pk: i64,
    pub dag_id: DagId,
    pub run_id: RunId,
    pub state: RunState,
    pub logical_date: Timestamp,
    pub dag: Arc<Dag>,
    pub task_instances: Vec<TaskInstanceEntry>,
}

#[derive(Debug, Clone)]
pub struct TaskInstanceEntry {
    pub ti_pk: i64,
    pub task_id: TaskId,
    /// Its position among a mapped task's instances; `mapping::UNMAPPED` otherwise.
    pub map_index: i32,
    pub state: TaskState,
    pub try_number: u32,
    pub retry_at: Option<Timestamp>,
    /// The recorded wait reason, as stored (JSON), to write only changes.
    pub wait_reason: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Action {
    /// A scheduled run; its task instances come from `dag`, the version it pins.
    CreateRun {
        dag: Arc<Dag>,
        version: DagVersion,
        run_id: RunId,
        interval: DataInterval,
    },
    /// Moves the DAG's schedule bookmark; `next_due` is when to look at it again.
    SetDagSchedule {
        dag_id: DagId,
        last_automated: Option<DataInterval>,
        next_due: Option<Timestamp>,
    },
    StartRun {
        run_pk: i64,
    },
    FinishRun {
        run_pk: i64,
        state: RunState,
    },
    /// Also clears the wait reason.
    SetTaskState {
        ti_pk: i64,
        from: TaskState,
        to: TaskState,
    },
    SetWaitReason {
        ti_pk: i64,
        reason: Option<WaitReason>,
    },
    /// Turns a mapped task's unexpanded instance (state `none`, map index -1) into
    /// one instance per item; the store reads the items (they may be an upstream
    /// output) with `ForEach::items`. No items skip it; unreadable ones fail it.
    ExpandTask {
        run_pk: i64,
        ti_pk: i64,
        task_id: TaskId,
        for_each: crate::mapping::ForEach,
        limit: u32,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// When something becomes due by time alone (a retry, a schedule tick).
    pub wake_at: Option<Timestamp>,
    /// Whether tasks were queued, so a runner should look.
    pub queued_any: bool,
    /// Ready tasks held because their pool is full (Airflow's `scheduler.tasks.starving`).
    pub starving: u32,
}

/// Runs created per DAG per plan; more catch-up follows in the next loop.
const MAX_RUNS_CREATED_PER_DAG: usize = 16;

pub fn plan(snapshot: &Snapshot, now: Timestamp) -> Plan {
    let mut planner = Planner { plan: Plan::default(), now };
    planner.plan.wake_at = snapshot.next_dag_due;
    let dags: HashMap<&DagId, &DagEntry> = snapshot.dags.iter().map(|dag| (&dag.dag_id, dag)).collect();
    let mut active_runs: HashMap<&DagId, u32> = HashMap::new();
    for run in &snapshot.runs {
        *active_runs.entry(&run.dag_id).or_default() += 1;
    }
    for dag in &snapshot.dags {
        if dag.due.is_some() && !dag.paused {
            let active = active_runs.get(&dag.dag_id).copied().unwrap_or(0);
            planner.create_runs(dag, active);
        }
    }
    let paused = |dag_id: &DagId| !snapshot.ignore_pause && dags.get(dag_id).is_some_and(|dag| dag.paused);
    let removed = |dag_id: &DagId| dags.get(dag_id).is_some_and(|dag| !dag.active);
    let max_active_runs = |run: &RunEntry| match dags.get(&run.dag_id).and_then(|dag| dag.latest.as_ref()) {
        Some((_, latest)) => latest.spec().max_active_runs,
        None => run.dag.spec().max_active_runs,
    };

    // Start queued runs, oldest logical date first, up to each DAG's limit.
    let mut running_runs: HashMap<&DagId, u32> = HashMap::new();
    for run in snapshot.runs.iter().filter(|run| run.state == RunState::Running) {
        *running_runs.entry(&run.dag_id).or_default() += 1;
    }
    let mut queued_runs: Vec<&RunEntry> = snapshot.runs.iter().filter(|run| run.state == RunState::Queued).collect();
    queued_runs.sort_by_key(|run| (run.logical_date, run.run_pk));
    let mut started = Vec::new();
    for run in queued_runs {
        let limit = max_active_runs(run);
        let running = running_runs.entry(&run.dag_id).or_default();
        let reason = if paused(&run.dag_id) {
            Some(WaitReason::DagPaused)
        } else if *running >= limit && !snapshot.ignore_pause {
            Some(WaitReason::MaxActiveRuns { limit })
        } else {
            None
        };
        match reason {
            None => {
                *running += 1;
                planner.plan.actions.push(Action::StartRun { run_pk: run.run_pk });
                started.push(run.run_pk);
            }
            Some(reason) => {
                for ti in &run.task_instances {
                    planner.set_reason(ti, Some(&reason));
                }
            }
        }
    }

    // Settle task instances by trigger rules and retry times; gather the ready ones.
    let mut ready: Vec<Ready> = Vec::new();
    let mut run_slots: HashMap<i64, u32> = HashMap::new();
    for run in &snapshot.runs {
        if run.state != RunState::Running && !started.contains(&run.run_pk) {
            continue;
        }
        if removed(&run.dag_id) {
            planner.remove_run(run);
            continue;
        }
        if paused(&run.dag_id) {
            for ti in &run.task_instances {
                if !ti.state.holds_slot() && !ti.state.is_finished() {
                    planner.set_reason(ti, Some(&WaitReason::DagPaused));
                }
            }
            continue;
        }
        let occupied = run.task_instances.iter().filter(|ti| ti.state.holds_slot()).count() as u32;
        run_slots.insert(run.run_pk, occupied);
        planner.settle_run(run, &mut ready);
    }

    // Queue by priority, then oldest run, then DAG order, within every limit.
    ready.sort_by_key(|ready| (std::cmp::Reverse(ready.priority), ready.logical_date, ready.run_pk, ready.topo_pos));
    let mut pools = snapshot.pools.clone();
    let mut parallelism = snapshot.parallelism;
    for candidate in ready {
        let ti = candidate.ti;
        let task = &candidate.dag.tasks()[candidate.task_idx];
        if snapshot.busy_pools.contains(&task.pool) {
            // Another scheduler is filling this pool; a later pass queues it.
            if candidate.from != TaskState::Scheduled {
                planner.set_state(ti.ti_pk, candidate.from, TaskState::Scheduled);
            }
            continue;
        }
        let run_occupied = run_slots.entry(candidate.run_pk).or_default();
        let max_active_tasks = candidate.dag.spec().max_active_tasks;
        let pool = pools.as_mut().map(|pools| (pools.get_mut(&task.pool), &task.pool));
        let hold = if *run_occupied >= max_active_tasks {
            Some(WaitReason::MaxActiveTasks { limit: max_active_tasks })
        } else if let Some((None, name)) = &pool {
            Some(WaitReason::PoolMissing { pool: (*name).clone() })
        } else if let Some((Some(slots), name)) = &pool
            && slots.occupied >= slots.limit
        {
            Some(WaitReason::PoolFull { pool: (*name).clone(), slots: slots.limit })
        } else if let Some(slots) = parallelism
            && slots.occupied >= slots.limit
        {
            Some(WaitReason::Parallelism { limit: slots.limit })
        } else {
            None
        };
        match hold {
            Some(reason) => {
                if matches!(reason, WaitReason::PoolFull { .. }) {
                    planner.plan.starving += 1;
                }
                if candidate.from != TaskState::Scheduled {
                    planner.set_state(ti.ti_pk, candidate.from, TaskState::Scheduled);
                    planner.set_reason_always(ti.ti_pk, &reason);
                } else {
                    planner.set_reason(ti, Some(&reason));
                }
            }
            None => {
                *run_occupied += 1;
                if let Some((Some(slots), _)) = pool {
                    slots.occupied += 1;
                }
                if let Some(slots) = parallelism.as_mut() {
                    slots.occupied += 1;
                }
                if candidate.from != TaskState::Scheduled {
                    planner.set_state(ti.ti_pk, candidate.from, TaskState::Scheduled);
                }
                planner.set_state(ti.ti_pk, TaskState::Scheduled, TaskState::Queued);
                planner.plan.queued_any = true;
            }
        }
    }
    planner.plan
}

struct Planner {
    plan: Plan,
    now: Timestamp,
}

/// A task instance whose trigger rule is met, waiting for a slot.
struct Ready<'a> {
    ti: &'a TaskInstanceEntry,
    /// Its state in the snapshot: `scheduled` already, or about to become it.
    from: TaskState,
    dag: &'a Dag,
    task_idx: usize,
    topo_pos: usize,
    run_pk: i64,
    logical_date: Timestamp,
    priority: i32,
}

impl Planner {
    fn create_runs(&mut self, entry: &DagEntry, active_runs: u32) {
        let Some((version, dag)) = &entry.latest else {
            return;
        };
        let Some(due) = entry.due else { return };
        let timetable = dag.timetable();
        let spec = dag.spec();
        let mut last = due.last_automated;
        let mut active = active_runs;
        let mut next_due = None;
        for _ in 0..MAX_RUNS_CREATED_PER_DAG {
            let Some(next) = timetable.next_interval_to_create(last, spec.catchup, self.now) else {
                break;
            };
            if next.end > self.now {
                next_due = Some(next.end);
                break;
            }
            if active >= spec.max_active_runs {
                // Stays due; a finishing run wakes the scheduler, so no timer is needed.
                next_due = Some(if last == due.last_automated { due.next_due } else { self.now });
                break;
            }
            let run_id = crate::plan::RunType::Scheduled.run_id(next.start);
            self.plan.actions.push(Action::CreateRun {
                dag: dag.clone(),
                version: version.clone(),
                run_id,
                interval: next,
            });
            active += 1;
            last = Some(next);
            next_due = Some(self.now); // more may be due; looked at again next loop
        }
        if next_due == Some(self.now) && active < spec.max_active_runs {
            self.wake(self.now);
        } else if let Some(at) = next_due
            && at > self.now
        {
            self.wake(at);
        }
        if last != due.last_automated || next_due != Some(due.next_due) {
            self.plan.actions.push(Action::SetDagSchedule {
                dag_id: entry.dag_id.clone(),
                last_automated: last,
                next_due,
            });
        }
    }

    fn settle_run<'a>(&mut self, run: &'a RunEntry, ready: &mut Vec<Ready<'a>>) {
        let dag = run.dag.as_ref();
        let graph = dag.graph();
        // A task's instances: one, or a mapped task's many.
        let mut slots: Vec<Vec<&TaskInstanceEntry>> = vec![Vec::new(); dag.tasks().len()];
        for ti in &run.task_instances {
            if let Some(idx) = graph.task_idx(ti.task_id.as_str()) {
                slots[idx].push(ti);
            }
        }
        // Decisions made in this pass feed the tasks after them, so a failure settles
        // a whole chain of downstream tasks at once. A task without instances counts
        // as removed; an upstream task counts once per instance (Airflow's way).
        let mut states: Vec<Vec<TaskState>> = slots
            .iter()
            .map(|tis| if tis.is_empty() { vec![TaskState::Removed] } else { tis.iter().map(|ti| ti.state).collect() })
            .collect();
        for (topo_pos, &task_idx) in graph.topo_order.iter().enumerate() {
            let task = &dag.tasks()[task_idx];
            // A cleared mapped task is unexpanded again: the instances of its last
            // expansion wait for the new one, which reuses or removes them.
            let unexpanded =
                task.for_each.is_some() && slots[task_idx].iter().any(|ti| ti.map_index == crate::mapping::UNMAPPED);
            for (position, &ti) in slots[task_idx].iter().enumerate() {
                if unexpanded && ti.map_index != crate::mapping::UNMAPPED {
                    continue;
                }
                let candidate = |from| Ready {
                    ti,
                    from,
                    dag,
                    task_idx,
                    topo_pos,
                    run_pk: run.run_pk,
                    logical_date: run.logical_date,
                    priority: task.priority,
                };
                let decided = match ti.state {
                    TaskState::None => {
                        let upstream = graph.upstream[task_idx].iter().flat_map(|&up| states[up].iter().copied());
                        match evaluate(task.trigger_rule, UpstreamCounts::from_states(upstream)) {
                            Decision::Run => match &task.for_each {
                                Some(for_each) if ti.map_index == crate::mapping::UNMAPPED => {
                                    self.plan.actions.push(Action::ExpandTask {
                                        run_pk: run.run_pk,
                                        ti_pk: ti.ti_pk,
                                        task_id: task.task_id.clone(),
                                        for_each: for_each.clone(),
                                        limit: task.for_each_limit,
                                    });
                                    // Its instances are scheduled once they exist.
                                    self.wake(self.now);
                                    None
                                }
                                _ => {
                                    ready.push(candidate(TaskState::None));
                                    Some(TaskState::Scheduled)
                                }
                            },
                            Decision::Skip => {
                                self.set_state(ti.ti_pk, TaskState::None, TaskState::Skipped);
                                Some(TaskState::Skipped)
                            }
                            Decision::UpstreamFailed => {
                                self.set_state(ti.ti_pk, TaskState::None, TaskState::UpstreamFailed);
                                Some(TaskState::UpstreamFailed)
                            }
                            Decision::Wait => {
                                self.set_reason(ti, Some(&WaitReason::Upstream { rule: task.trigger_rule }));
                                None
                            }
                        }
                    }
                    TaskState::UpForRetry => match ti.retry_at {
                        Some(at) if at > self.now => {
                            self.wake(at);
                            self.set_reason(
                                ti,
                                Some(&WaitReason::RetryWait { until: at, next_try: ti.try_number + 1 }),
                            );
                            None
                        }
                        _ => {
                            ready.push(candidate(TaskState::UpForRetry));
                            Some(TaskState::Scheduled)
                        }
                    },
                    TaskState::Scheduled => {
                        ready.push(candidate(TaskState::Scheduled));
                        None
                    }
                    _ => None,
                };
                if let Some(state) = decided {
                    states[task_idx][position] = state;
                }
            }
        }
        if states.iter().flatten().all(|state| state.is_finished()) {
            let succeeded = graph
                .topo_order
                .iter()
                .filter(|&&idx| graph.is_leaf(idx))
                .flat_map(|&idx| &states[idx])
                .all(|state| matches!(state, TaskState::Success | TaskState::Skipped));
            let state = if succeeded { RunState::Success } else { RunState::Failed };
            self.plan.actions.push(Action::FinishRun { run_pk: run.run_pk, state });
        }
    }

    /// A running run of a DAG whose file is gone: its tasks not yet started become
    /// `removed`; once the started ones end, the run ends `failed`.
    fn remove_run(&mut self, run: &RunEntry) {
        let mut busy = false;
        for ti in &run.task_instances {
            match ti.state {
                TaskState::None | TaskState::Scheduled | TaskState::UpForRetry => {
                    self.set_state(ti.ti_pk, ti.state, TaskState::Removed);
                }
                TaskState::Queued | TaskState::Running => busy = true,
                _ => {}
            }
        }
        if !busy && run.state == RunState::Running {
            self.plan.actions.push(Action::FinishRun { run_pk: run.run_pk, state: RunState::Failed });
        }
    }

    fn set_state(&mut self, ti_pk: i64, from: TaskState, to: TaskState) {
        self.plan.actions.push(Action::SetTaskState { ti_pk, from, to });
    }

    /// Records a reason when it differs from the stored one.
    fn set_reason(&mut self, ti: &TaskInstanceEntry, reason: Option<&WaitReason>) {
        let json = reason.map(WaitReason::to_json);
        if json != ti.wait_reason {
            self.plan.actions.push(Action::SetWaitReason { ti_pk: ti.ti_pk, reason: reason.cloned() });
        }
    }

    /// For a task whose state changes in this plan (which clears its reason).
    fn set_reason_always(&mut self, ti_pk: i64, reason: &WaitReason) {
        self.plan.actions.push(Action::SetWaitReason { ti_pk, reason: Some(reason.clone()) });
    }

    fn wake(&mut self, at: Timestamp) {
        self.plan.wake_at = Some(self.plan.wake_at.map_or(at, |current| current.min(at)));
    }
}

#[cfg(test)]
mod tests;
