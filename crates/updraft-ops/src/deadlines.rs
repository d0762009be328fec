//! Deadlines (Airflow's SLAs): a scheduled run of a DAG with `deadline: 2h` must
//! succeed within two hours after its data interval ends, and a task with its own
//! `deadline` likewise. A miss is recorded once per run (and task), counted in the
//! metrics, and announced to the `on_deadline_miss` notifiers.

use std::collections::HashSet;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use updraft_core::alerts::{AlertEvent, deadline_at, missed};
use updraft_core::{Dag, RunState, TaskState, links};
use updraft_store::{DefinitionCache, NewAlert, RunRow, Store, StoreError, TaskInstanceRow};

use crate::message::{Notice, NoticeKind, short_time};

/// Finished runs are looked at this long after they end (a miss found late,
/// say after all schedulers were down, still counts).
const LOOK_BACK: SignedDuration = SignedDuration::from_hours(1);

pub struct Deadlines {
    store: Store,
    definitions: Arc<DefinitionCache>,
    ui_url: String,
    /// Misses this process has seen recorded, `(run_pk, task_id or "")`: not
    /// queued and inserted again every check while their runs stay recent.
    known: HashSet<(i64, String)>,
}

/// A deadline missed, found by one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    pub dag_id: String,
    pub run_id: String,
    /// `None`: the run's own deadline.
    pub task_id: Option<String>,
    pub due: Timestamp,
}

impl Deadlines {
    pub fn new(store: Store, definitions: Arc<DefinitionCache>, ui_url: &str) -> Deadlines {
        Deadlines { store, definitions, ui_url: ui_url.trim_end_matches('/').to_string(), known: HashSet::new() }
    }

    /// Records the misses not recorded before; returns them.
    pub async fn check(&mut self, now: Timestamp) -> Result<Vec<Miss>, StoreError> {
        let mut found = Vec::new();
        let runs = self.store.recent_scheduled_runs(now - LOOK_BACK).await?;
        self.known.retain(|(run_pk, _)| runs.iter().any(|run| run.run_pk == *run_pk));
        for run in runs {
            let dag = match self.definitions.get(self.store.as_ref(), &run.dag_id, &run.version).await {
                Ok(dag) => dag,
                Err(error) => {
                    tracing::warn!(dag_id = %run.dag_id, error = %updraft_core::errors::chain(&error), "cannot read a DAG version");
                    continue;
                }
            };
            if let Some(deadline) = dag.spec().deadline {
                let due = deadline_at(run.interval.end, deadline);
                let succeeded = (run.state == RunState::Success).then_some(run.end_date).flatten();
                if !self.known.contains(&(run.run_pk, String::new())) && missed(due, now, succeeded) {
                    if self.miss(&run, &dag, None, due, now).await? {
                        found.push(Miss { dag_id: run.dag_id.clone(), run_id: run.run_id.clone(), task_id: None, due });
                    }
                    self.known.insert((run.run_pk, String::new()));
                }
            }
            // A task's instances are read only once one of its deadlines has passed.
            let passed: Vec<_> = dag
                .spec()
                .tasks
                .iter()
                .filter_map(|task| Some((task, deadline_at(run.interval.end, task.deadline?))))
                .filter(|(task, due)| *due < now && !self.known.contains(&(run.run_pk, task.task_id.to_string())))
                .collect();
            if passed.is_empty() {
                continue;
            }
            let instances = self.store.task_instances(run.run_pk).await?;
            for (task, due) in passed {
                let task_id = task.task_id.as_str();
                if !missed(due, now, succeeded_at(&instances, task_id)) {
                    continue;
                }
                if self.miss(&run, &dag, Some(task_id), due, now).await? {
                    found.push(Miss {
                        dag_id: run.dag_id.clone(),
                        run_id: run.run_id.clone(),
                        task_id: Some(task_id.to_string()),
                        due,
                    });
                }
                self.known.insert((run.run_pk, task_id.to_string()));
            }
        }
        Ok(found)
    }

    /// Queues the alerts and records the miss; false if it was recorded before.
    async fn miss(
        &self,
        run: &RunRow,
        dag: &Dag,
        task_id: Option<&str>,
        due: Timestamp,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let notifiers = match task_id {
            Some(task_id) => dag.task(task_id).map(|task| task.alerts.to(AlertEvent::DeadlineMiss).to_vec()),
            None => Some(dag.spec().alerts.to(AlertEvent::DeadlineMiss).to_vec()),
        }
        .unwrap_or_default();
        if !notifiers.is_empty() {
            let notice = self.notice(run, task_id, due, now);
            let payload = serde_json::to_string(&notice).expect("a notice is JSON");
            let alerts: Vec<NewAlert> = notifiers
                .into_iter()
                .map(|notifier| NewAlert {
                    dedup_key: format!(
                        "deadline:{}:{}:{}:{notifier}",
                        run.run_pk,
                        task_id.unwrap_or(""),
                        run.queued_at.as_microsecond()
                    ),
                    notifier,
                    payload: payload.clone(),
                })
                .collect();
            // Queued before recorded: a crash in between queues nothing twice.
            self.store.enqueue_alerts(&alerts, now).await?;
        }
        if !self.store.record_deadline_miss(run.run_pk, task_id, now).await? {
            return Ok(false);
        }
        use updraft_metrics::catalog;
        updraft_metrics::incr(&catalog::SLA_MISSED, &[]);
        match task_id {
            Some(task_id) => updraft_metrics::incr(&catalog::TI_DEADLINE_MISSED, &[&run.dag_id, task_id]),
            None => updraft_metrics::incr(&catalog::DAGRUN_DEADLINE_MISSED, &[&run.dag_id]),
        }
        tracing::warn!(dag_id = %run.dag_id, run_id = %run.run_id, task_id = task_id.unwrap_or(""), due = %due, "deadline missed");
        Ok(true)
    }

    fn notice(&self, run: &RunRow, task_id: Option<&str>, due: Timestamp, now: Timestamp) -> Notice {
        let what = match task_id {
            Some(task_id) => format!("{}.{task_id}", run.dag_id),
            None => format!("{} run", run.dag_id),
        };
        let mut notice = Notice::new(NoticeKind::DeadlineMissed, format!("{what} missed its deadline"), now);
        notice.dag_id = Some(run.dag_id.clone());
        notice.run_id = Some(run.run_id.clone());
        notice.task_id = task_id.map(str::to_string);
        let state = run.state.as_str();
        notice.reason = Some(format!(
            "Due by {} (data interval ended {}); the run is {state}.",
            short_time(due),
            short_time(run.interval.end)
        ));
        let path = match task_id {
            Some(task_id) => links::task_url(&run.dag_id, &run.run_id, task_id),
            None => links::run_url(&run.dag_id, &run.run_id),
        };
        notice.url = Some(format!("{}{path}", self.ui_url));
        notice
    }
}

/// When all of a task's instances had succeeded (or were skipped), if they have.
fn succeeded_at(instances: &[TaskInstanceRow], task_id: &str) -> Option<Timestamp> {
    let mine: Vec<_> = instances.iter().filter(|ti| ti.task_id == task_id && ti.state != TaskState::Removed).collect();
    if mine.is_empty() || mine.iter().any(|ti| !matches!(ti.state, TaskState::Success | TaskState::Skipped)) {
        return None;
    }
    mine.iter().filter_map(|ti| ti.end_date).max()
}
