//! The scheduling loop. Each tick reads a snapshot of the store, asks
//! `updraft_core::plan::plan` what to do, and applies the actions in one
//! transaction. Ticks happen when something happens, not on a timer: an attempt
//! ends (the runner rings `wake`), another process commits (the store's change
//! watcher), or a time the plan asked for arrives (a retry, a schedule tick).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{Notify, watch};
use updraft_core::clock::Clock;
use updraft_core::errors::chain;
use updraft_core::plan::{self, DagEntry, DagVersion, DueDag, RunEntry, Slots, Snapshot, TaskInstanceEntry};
use updraft_core::{DagId, RunId, TaskId};
use updraft_store::{ApplyReport, DefinitionCache, Pass, RawSnapshot, Scope, Store, StoreError};

use crate::dag_sync::DagSync;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub scope: Scope,
    /// Runner capacity queued tasks may fill; `None`: no limit (`dags test`).
    pub parallelism: Option<u32>,
    /// Whether pools limit this scope's tasks (`dags test` ignores them).
    pub use_pools: bool,
    /// Whether runs of paused DAGs proceed (`dags test`).
    pub ignore_pause: bool,
    /// How often to look at the DAGs folder for changes.
    pub dag_sync_interval: Duration,
    /// Names this scheduler in the transition log.
    pub actor: String,
    /// Rung after every tick that changed something (`dags test` prints then).
    pub ticked: Option<Arc<Notify>>,
    /// DAGs one pass takes (PostgreSQL; SQLite takes them all).
    pub batch: u32,
}

pub struct Scheduler {
    store: Store,
    config: SchedulerConfig,
    definitions: Arc<DefinitionCache>,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
    runner: Arc<Notify>,
    dag_sync: Option<tokio::sync::Mutex<DagSync>>,
}

/// What one tick did.
#[derive(Debug, Clone, Default)]
pub struct Tick {
    pub report: ApplyReport,
    pub wake_at: Option<Timestamp>,
    /// The plan made changes that the next plan builds on (new runs to settle).
    pub again: bool,
}

/// At most this many ticks back to back before waiting for an event.
const MAX_IMMEDIATE_TICKS: usize = 64;

impl Scheduler {
    pub fn new(
        store: Store,
        config: SchedulerConfig,
        definitions: Arc<DefinitionCache>,
        clock: Arc<dyn Clock>,
        wake: Arc<Notify>,
        runner: Arc<Notify>,
        dag_sync: Option<DagSync>,
    ) -> Scheduler {
        Scheduler { store, config, definitions, clock, wake, runner, dag_sync: dag_sync.map(tokio::sync::Mutex::new) }
    }

    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), StoreError> {
        let mut watcher = match self.config.scope {
            Scope::All => Some(self.store.change_watcher().await?),
            Scope::Run(_) => None,
        };
        let mut next_sync = tokio::time::Instant::now();
        let mut folder = match &self.dag_sync {
            Some(sync) => sync.lock().await.watch(),
            None => None,
        };
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            updraft_metrics::incr(&updraft_metrics::catalog::SCHEDULER_HEARTBEAT, &[]);
            if tokio::time::Instant::now() >= next_sync {
                self.sync_dags().await;
                next_sync = tokio::time::Instant::now() + self.config.dag_sync_interval;
            }
            let mut wake_at = None;
            for _ in 0..MAX_IMMEDIATE_TICKS {
                match self.tick().await {
                    Ok(tick) => {
                        wake_at = tick.wake_at;
                        if !tick.again {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::error!(error = %chain(&error), "scheduling tick failed; retrying shortly");
                        wake_at = Some(self.clock.now() + jiff::SignedDuration::from_secs(1));
                        break;
                    }
                }
            }
            let mut deadline = next_sync;
            if let Some(at) = wake_at {
                let wait = at.duration_since(self.clock.now());
                let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
                deadline = deadline.min(tokio::time::Instant::now() + wait);
            }
            tokio::select! {
                () = self.wake.notified() => {}
                changed = changed(&mut watcher) => {
                    if let Err(error) = changed {
                        tracing::warn!(error = %chain(&error), "cannot watch the store for changes");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {}
                // Read once the burst of events settles (the first event sets the time).
                () = folder_changed(&mut folder) => {
                    next_sync = next_sync.min(tokio::time::Instant::now() + crate::dag_sync::SETTLE);
                }
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Reads the DAGs folder and records what changed. Errors are logged: a broken
    /// folder must not stop the runs already going.
    pub async fn sync_dags(&self) {
        let Some(sync) = &self.dag_sync else { return };
        let mut sync = sync.lock().await;
        match sync.sync(self.clock.now()).await {
            Ok((report, _)) => {
                if report.changed > 0 || report.deactivated > 0 {
                    tracing::info!(
                        dags = report.dags,
                        changed = report.changed,
                        deactivated = report.deactivated,
                        "DAGs folder synced"
                    );
                }
            }
            Err(error) => tracing::error!(error = %chain(&error), "cannot read the DAGs folder"),
        }
    }

    /// One scheduling pass: snapshot, plan and apply, in one store transaction.
    pub async fn tick(&self) -> Result<Tick, StoreError> {
        let now = self.clock.now();
        let outcome: Arc<Mutex<PlanOutcome>> = Arc::default();
        let planner = PassPlanner {
            definitions: self.definitions.clone(),
            scope: self.config.scope,
            parallelism: self.config.parallelism,
            use_pools: self.config.use_pools,
            ignore_pause: self.config.ignore_pause,
            outcome: outcome.clone(),
        };
        let pass = Pass {
            actor: self.config.actor.clone(),
            batch: self.config.batch,
            plan: Box::new(move |raw| planner.plan(raw, now)),
        };
        let report = self.store.schedule_pass(self.config.scope, now, pass).await?;
        let outcome = std::mem::take(&mut *outcome.lock().expect("plan outcome lock"));
        // Versions the pass met for the first time: load them, and look again.
        for (dag_id, version) in &outcome.missing {
            if let Err(error) = self.definitions.get(self.store.as_ref(), dag_id, version).await {
                tracing::error!(%dag_id, %version, error = %chain(&error), "cannot load a DAG version");
            }
        }
        let applied = &report.applied;
        if applied.tasks_queued > 0 {
            self.runner.notify_one();
        }
        if let Some(ticked) = &self.config.ticked
            && outcome.changed
        {
            ticked.notify_one();
        }
        let again = applied.runs_created > 0 || applied.conflicts > 0 || report.more || !outcome.missing.is_empty();
        Ok(Tick { report: report.applied, wake_at: outcome.wake_at, again })
    }
}

/// What the planner saw, for the caller after the pass.
#[derive(Default)]
struct PlanOutcome {
    wake_at: Option<Timestamp>,
    changed: bool,
    /// Pinned versions not loaded yet; their runs wait for the next pass.
    missing: Vec<(String, DagVersion)>,
}

/// Runs inside the store's transaction, so it only reads the cache: it never waits.
struct PassPlanner {
    definitions: Arc<DefinitionCache>,
    scope: Scope,
    parallelism: Option<u32>,
    use_pools: bool,
    ignore_pause: bool,
    outcome: Arc<Mutex<PlanOutcome>>,
}

impl PassPlanner {
    fn plan(self, raw: &RawSnapshot, now: Timestamp) -> Vec<plan::Action> {
        for pool in &raw.pools {
            let free = f64::from(pool.slots.saturating_sub(pool.occupied));
            updraft_metrics::gauge(&updraft_metrics::catalog::POOL_OPEN_SLOTS, &[&pool.name], free);
            updraft_metrics::gauge(
                &updraft_metrics::catalog::POOL_RUNNING_SLOTS,
                &[&pool.name],
                f64::from(pool.occupied),
            );
        }
        let mut missing = Vec::new();
        let snapshot = self.resolve(raw, now, &mut missing);
        let plan = plan::plan(&snapshot, now);
        record_metrics(raw, &plan, now);
        let mut outcome = self.outcome.lock().expect("plan outcome lock");
        outcome.wake_at = plan.wake_at;
        outcome.changed = !plan.actions.is_empty();
        outcome.missing = missing;
        plan.actions
    }

    /// Turns stored rows into the plan's input with the cached DAG versions.
    fn resolve(&self, raw: &RawSnapshot, now: Timestamp, missing: &mut Vec<(String, DagVersion)>) -> Snapshot {
        let mut lookup = |dag_id: &str, version: &DagVersion| {
            let dag = self.definitions.cached(dag_id, version);
            if dag.is_none() {
                missing.push((dag_id.to_string(), version.clone()));
            }
            dag
        };
        let mut dags = Vec::with_capacity(raw.dags.len());
        for row in &raw.dags {
            let version = DagVersion(row.latest_version.clone());
            let latest = if row.is_active { lookup(&row.dag_id, &version).map(|dag| (version, dag)) } else { None };
            let due = match row.next_due {
                Some(next_due) if row.is_active && !row.is_paused && next_due <= now && self.scope == Scope::All => {
                    Some(DueDag { last_automated: row.last_automated, next_due })
                }
                _ => None,
            };
            let Ok(dag_id) = DagId::new(row.dag_id.clone()) else { continue };
            dags.push(DagEntry { dag_id, paused: row.is_paused, latest, due, active: row.is_active });
        }
        let mut by_run: HashMap<i64, Vec<TaskInstanceEntry>> = HashMap::new();
        for ti in &raw.task_instances {
            let Ok(task_id) = TaskId::new(ti.task_id.clone()) else { continue };
            by_run.entry(ti.run_pk).or_default().push(TaskInstanceEntry {
                ti_pk: ti.ti_pk,
                task_id,
                map_index: ti.map_index,
                state: ti.state,
                try_number: ti.try_number,
                retry_at: ti.retry_at,
                wait_reason: ti.wait_reason.clone(),
            });
        }
        let mut runs = Vec::with_capacity(raw.runs.len());
        for run in &raw.runs {
            let Some(dag) = lookup(&run.dag_id, &run.version) else { continue };
            let (Ok(dag_id), Ok(run_id)) = (DagId::new(run.dag_id.clone()), RunId::new(run.run_id.clone())) else {
                continue;
            };
            runs.push(RunEntry {
                run_pk: run.run_pk,
                dag_id,
                run_id,
                state: run.state,
                logical_date: run.logical_date,
                dag,
                task_instances: by_run.remove(&run.run_pk).unwrap_or_default(),
            });
        }
        missing.sort();
        missing.dedup();
        let pools = self.use_pools.then(|| {
            raw.pools
                .iter()
                .map(|pool| (pool.name.clone(), Slots { limit: pool.slots, occupied: pool.occupied }))
                .collect()
        });
        Snapshot {
            dags,
            runs,
            pools,
            busy_pools: raw.busy_pools.clone(),
            parallelism: self.parallelism.map(|limit| Slots { limit, occupied: raw.busy_slots }),
            ignore_pause: self.ignore_pause,
            next_dag_due: raw.next_dag_due,
        }
    }
}

async fn changed(watcher: &mut Option<Box<dyn updraft_store::ChangeWatcher>>) -> Result<(), StoreError> {
    match watcher {
        Some(watcher) => watcher.changed().await,
        None => std::future::pending().await,
    }
}

/// A change in the DAGs folder, or never without a watch.
async fn folder_changed(folder: &mut Option<crate::dag_sync::FolderWatch>) {
    match folder {
        Some(folder) => folder.changed().await,
        None => std::future::pending().await,
    }
}

/// What a pass decided, as Airflow's metrics: how long finished runs took, how late
/// scheduled runs started after their interval ended, and tasks starving for pool slots.
fn record_metrics(raw: &RawSnapshot, plan: &plan::Plan, now: Timestamp) {
    use updraft_metrics::catalog;
    updraft_metrics::gauge(&catalog::SCHEDULER_TASKS_STARVING, &[], f64::from(plan.starving));
    for action in &plan.actions {
        match action {
            plan::Action::FinishRun { run_pk, state } => {
                let Some(run) = raw.runs.iter().find(|run| run.run_pk == *run_pk) else { continue };
                let Some(started) = run.start_date else { continue };
                let took = Duration::try_from(now.duration_since(started)).unwrap_or_default();
                updraft_metrics::timing(&catalog::DAGRUN_DURATION, &[state.as_str(), &run.dag_id], took);
            }
            plan::Action::StartRun { run_pk } => {
                let Some(run) = raw.runs.iter().find(|run| run.run_pk == *run_pk) else { continue };
                if run.run_type == plan::RunType::Scheduled {
                    let late = Duration::try_from(now.duration_since(run.interval.end)).unwrap_or_default();
                    updraft_metrics::timing(&catalog::DAGRUN_SCHEDULE_DELAY, &[&run.dag_id], late);
                }
            }
            _ => {}
        }
    }
}
