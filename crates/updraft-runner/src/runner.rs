//! The runner loop: claim queued task instances up to the slot count, run each as
//! an attempt, write how it ended, and wake the scheduler.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use updraft_core::clock::Clock;
use updraft_core::errors::chain;
use updraft_core::retry::after_attempt;
use updraft_core::{Dag, TaskState};
use updraft_store::{AttemptEnd, AttemptProcess, Claimant, Claimed, FinishedAttempt, LogChunk, Scope};

use crate::attempt::{AttemptLabel, AttemptObserver, AttemptSpec, Ending, execute};
use crate::shipping::LogShipper;
use crate::source::WorkSource;
use crate::template::{self, Mapped, RunContext};
use updraft_metrics::catalog;

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub slots: usize,
    pub scope: Scope,
    pub process_id: i64,
    pub hostname: String,
    pub dags_folder: PathBuf,
    pub logs_folder: PathBuf,
    pub kill_grace: Duration,
    /// Queues to take tasks from; `None`: every queue (`standalone`).
    pub queues: Option<Vec<String>>,
    /// Secrets backends asked before the database (`[[secrets.backends]]`).
    pub backends: Arc<updraft_secrets::Backends>,
    /// The largest output a task may hand on, in bytes.
    pub output_limit: u64,
    /// Tasks whose attempts are Kubernetes pods, and the cluster.
    pub pods: Arc<crate::pods::PodExecutor>,
}

pub struct Runner {
    source: Arc<dyn WorkSource>,
    config: RunnerConfig,
    observer: Arc<dyn AttemptObserver>,
    clock: Arc<dyn Clock>,
    templates: minijinja::Environment<'static>,
    /// Rung by the scheduler when it queued work.
    wake: Arc<Notify>,
    /// Rung when an attempt ended, so the scheduler moves its downstream at once.
    scheduler: Arc<Notify>,
    /// Attempts in flight by (task instance, try number), with their stop signal.
    attempts: std::sync::Mutex<HashMap<(i64, u32), watch::Sender<bool>>>,
    /// The database's variables and connections, read at most every [`SECRETS_FOR`].
    secrets: tokio::sync::Mutex<Option<(std::time::Instant, Arc<updraft_store::Secrets>)>>,
    /// Attempts handed over by recovery (pods whose runner died), to follow.
    adopted: mpsc::UnboundedSender<Adopted>,
    adoptions: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Adopted>>>,
    /// Attempts left running (pods) when this process stopped following them.
    released: std::sync::atomic::AtomicUsize,
}

/// How long variables and connections are reused before they are read again: a
/// wide fan-out reads them once, and a change reaches tasks within seconds.
const SECRETS_FOR: Duration = Duration::from_secs(5);

/// A safety net for work queued by other processes: the scheduler in this process
/// rings `wake` when it queues, so this never delays work it created.
const FALLBACK_CLAIM: Duration = Duration::from_secs(5);

/// How long an attempt runs before its pid is written on its own.
const RECORD_PROCESS_AFTER: Duration = Duration::from_millis(50);

/// How long a long-polling source may hold a claim open.
const CLAIM_WAIT: Duration = Duration::from_secs(20);

impl Runner {
    pub fn new(
        source: Arc<dyn WorkSource>,
        config: RunnerConfig,
        observer: Arc<dyn AttemptObserver>,
        clock: Arc<dyn Clock>,
        wake: Arc<Notify>,
        scheduler: Arc<Notify>,
    ) -> Runner {
        let (adopted, adoptions) = mpsc::unbounded_channel();
        Runner {
            released: std::sync::atomic::AtomicUsize::new(0),
            adopted,
            adoptions: std::sync::Mutex::new(Some(adoptions)),
            source,
            config,
            observer,
            clock,
            templates: template::environment(),
            wake,
            scheduler,
            attempts: std::sync::Mutex::default(),
            secrets: tokio::sync::Mutex::default(),
        }
    }

    async fn secrets(&self) -> Result<Arc<updraft_store::Secrets>, crate::source::SourceError> {
        let mut cached = self.secrets.lock().await;
        if let Some((at, secrets)) = cached.as_ref()
            && at.elapsed() < SECRETS_FOR
        {
            return Ok(secrets.clone());
        }
        let secrets = Arc::new(self.source.secrets().await?);
        *cached = Some((std::time::Instant::now(), secrets.clone()));
        Ok(secrets)
    }

    /// What one task's templates see: the environment, the secrets backends for
    /// the names they use, the database.
    async fn task_secrets(&self, dag: &Dag, task_id: &str) -> Result<Arc<updraft_store::Secrets>, String> {
        let database = self.secrets().await.map_err(|error| chain(&error))?;
        let wanted = match dag.task(task_id) {
            Some(task) => template::wanted(dag, task),
            None => updraft_secrets::Wanted::default(),
        };
        crate::secrets::for_task(&database, &self.config.backends, &wanted).await.map(Arc::new)
    }

    /// Upstream outputs, read only for a task whose templates use them.
    async fn task_outputs(
        &self,
        dag: &Dag,
        claimed: &Claimed,
    ) -> Result<std::collections::BTreeMap<String, serde_json::Value>, String> {
        let Some(task) = dag.task(&claimed.task_id) else { return Ok(Default::default()) };
        // A rescheduled sensor reads its own last output: when it started waiting.
        let rescheduled_sensor = matches!(&task.kind, updraft_core::TaskKind::Sensor(sensor) if sensor.mode == updraft_core::dag::SensorMode::Reschedule);
        if !template::uses_outputs(dag, task) && !rescheduled_sensor {
            return Ok(Default::default());
        }
        let texts = self
            .source
            .outputs(&claimed.dag_id, &claimed.run_id)
            .await
            .map_err(|error| format!("cannot read upstream outputs: {}", chain(&error)))?;
        // Stored outputs were checked as JSON when they were written.
        Ok(texts.into_iter().filter_map(|(task_id, text)| Some((task_id, serde_json::from_str(&text).ok()?))).collect())
    }

    /// The attempts in flight, named by their fencing tokens (the try numbers).
    pub fn leases(&self) -> Vec<(i64, u32)> {
        self.attempts.lock().expect("attempts lock").keys().copied().collect()
    }

    /// Stops attempts this process no longer holds (failed as zombies, or replaced):
    /// their process groups are killed, and their results will not be recorded.
    pub fn stop(&self, lost: &[(i64, u32)], why: &str) {
        let attempts = self.attempts.lock().expect("attempts lock");
        for key in lost {
            // An attempt whose process has already ended (its outcome on the way to
            // the store) has dropped its receiver: nothing to stop.
            if let Some(stop) = attempts.get(key)
                && stop.send(true).is_ok()
            {
                tracing::warn!(ti = key.0, try_number = key.1, why, "stopping an attempt this process no longer holds");
            }
        }
    }

    /// Takes over a running attempt whose runner died (its lease is already this
    /// process's): its pod is followed again, not launched twice.
    pub fn adopt(&self, claimed: Claimed) {
        let stopped = self.register(&claimed);
        let _ = self.adopted.send((claimed, stopped));
    }

    /// Puts an attempt in flight before it runs, so the next heartbeat renews its
    /// lease; its stop signal comes back.
    fn register(&self, claimed: &Claimed) -> watch::Receiver<bool> {
        let (stop, stopped) = watch::channel(false);
        self.attempts.lock().expect("attempts lock").insert((claimed.ti_pk, claimed.try_number), stop);
        stopped
    }

    /// How many attempts (pods) were left running for adoption when they were
    /// stopped.
    pub fn released(&self) -> usize {
        self.released.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops every attempt in flight.
    pub fn stop_all(&self, why: &str) {
        let lost = self.leases();
        self.stop(&lost, why);
    }

    /// Runs until `shutdown` turns true, then stops every attempt in flight
    /// (SIGTERM, then SIGKILL after the grace period) and records each as
    /// interrupted, so it runs again later without using up a retry.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut running: JoinSet<()> = JoinSet::new();
        let (outcomes, reports) = mpsc::unbounded_channel();
        let reporter = tokio::spawn(self.clone().report(reports));
        let mut watcher = match self.source.watcher().await {
            Ok(watcher) => watcher,
            Err(error) => {
                tracing::error!(error = %chain(&error), "cannot watch the store; new work is found every few seconds");
                None
            }
        };
        let long_polls = self.source.long_polls();
        let mut adoptions = self.adoptions.lock().expect("adoptions lock").take();
        let mut backoff = Duration::from_millis(250);
        loop {
            if *shutdown.borrow() {
                break;
            }
            while running.try_join_next().is_some() {}
            let free = self.config.slots.saturating_sub(running.len());
            updraft_metrics::gauge(&catalog::EXECUTOR_OPEN_SLOTS, &[], free as f64);
            updraft_metrics::gauge(&catalog::EXECUTOR_RUNNING_TASKS, &[], running.len() as f64);
            if free > 0 {
                let claimant = Claimant {
                    process_id: self.config.process_id,
                    hostname: self.config.hostname.clone(),
                    queues: self.config.queues.clone(),
                };
                let claim = self.source.claim(self.config.scope, &claimant, free as u32, CLAIM_WAIT);
                // A long poll is given up at shutdown; a store claim is quick, and
                // giving it up could leave attempts claimed that nobody runs.
                let claimed = match long_polls {
                    true => tokio::select! {
                        claimed = claim => claimed,
                        _ = shutdown.wait_for(|stop| *stop) => break,
                    },
                    false => claim.await,
                };
                match claimed {
                    Ok(claimed) => {
                        backoff = Duration::from_millis(250);
                        for attempt in claimed {
                            let stopped = self.register(&attempt);
                            running.spawn(self.clone().attempt(attempt, stopped, outcomes.clone()));
                        }
                    }
                    Err(error) => {
                        tracing::error!(error = %chain(&error), "cannot claim queued tasks; trying again in {backoff:?}");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = shutdown.wait_for(|stop| *stop) => break,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
                // A long poll waits for work itself: ask again while slots are free.
                if long_polls && self.config.slots > running.len() {
                    continue;
                }
            }
            tokio::select! {
                () = self.wake.notified() => {}
                Some((claimed, stopped)) = adopted(&mut adoptions) => {
                    running.spawn(self.clone().attempt(claimed, stopped, outcomes.clone()));
                }
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = shutdown.changed() => {}
                Ok(()) = changed(&mut watcher) => {}
                () = tokio::time::sleep(FALLBACK_CLAIM) => {}
            }
        }
        self.stop_all("this process is stopping");
        while running.join_next().await.is_some() {}
        // Every outcome is written before the runner returns.
        drop(outcomes);
        let _ = reporter.await;
    }

    async fn attempt(self: Arc<Self>, claimed: Claimed, cancel: watch::Receiver<bool>, outcomes: Outcomes) {
        // However it ends, it is no longer in flight: the heartbeat stops renewing it.
        let _in_flight = InFlight { runner: &self, key: (claimed.ti_pk, claimed.try_number) };
        // What the attempt needs before it can start; without it, it fails at once.
        let failed = |claimed: Claimed, reason: String| {
            let end = AttemptEnd {
                state: TaskState::Failed,
                retry_at: None,
                exit_code: None,
                reason: Some(reason),
                process: None,
                output: None,
                reschedule: false,
            };
            let _ = outcomes.send(Outcome { claimed, end, logs: Vec::new() });
        };
        let dag = match self.source.definition(&claimed.dag_id, &claimed.version).await {
            Ok(dag) => dag,
            Err(error) => return failed(claimed, format!("cannot load the DAG definition: {}", chain(&error))),
        };
        let secrets = match self.task_secrets(&dag, &claimed.task_id).await {
            Ok(secrets) => secrets,
            Err(reason) => return failed(claimed, reason),
        };
        let outputs = match self.task_outputs(&dag, &claimed).await {
            Ok(outputs) => outputs,
            Err(reason) => return failed(claimed, reason),
        };
        let log_path = log_path(
            &self.config.logs_folder,
            &claimed.dag_id,
            &claimed.run_id,
            &claimed.task_id,
            claimed.map_index,
            claimed.try_number,
        );
        let spec = AttemptSpec {
            dag: dag.clone(),
            task_id: claimed.task_id.clone(),
            run: RunContext {
                run_id: claimed.run_id.clone(),
                run_type: claimed.run_type.as_str().to_string(),
                logical_date: claimed.logical_date,
                interval: claimed.interval,
                conf: claimed.conf.clone(),
                outputs,
                mapped: Mapped::from_stored(claimed.map_index, claimed.map_item.as_deref()),
            },
            try_number: claimed.try_number,
            tries_allowed: claimed.max_tries + 1,
            dags_folder: self.config.dags_folder.clone(),
            log_path: Some(log_path.clone()),
            attempt_token: Some(attempt_token(self.config.process_id, claimed.ti_pk, claimed.try_number)),
            kill_grace: self.config.kill_grace,
            secrets,
            output_limit: self.config.output_limit,
        };
        // An attempt still running after a moment gets its pid recorded at once (for
        // crash recovery and the UI); a shorter one carries it in its outcome, which
        // saves a write per task. Recovery finds an attempt without a recorded pid by
        // its UPDRAFT_ATTEMPT variable.
        let (spawned_tx, spawned_rx) = oneshot::channel();
        let (ended_tx, ended_rx) = oneshot::channel::<()>();
        let source = self.source.clone();
        let (ti_pk, try_number) = (claimed.ti_pk, claimed.try_number);
        let log_text = log_path.display().to_string();
        let shipper =
            self.source.ships_logs().then(|| LogShipper::start(self.source.clone(), ti_pk, try_number, &log_path));
        let record = tokio::spawn(async move {
            let (pid, pid_start) = spawned_rx.await.ok()?;
            let process = AttemptProcess { pid, pid_start, log_path: Some(log_text) };
            tokio::select! {
                _ = ended_rx => Some(process),
                () = tokio::time::sleep(RECORD_PROCESS_AFTER) => {
                    let log_path = process.log_path.as_deref().unwrap_or_default();
                    if let Err(error) = source.record_process(ti_pk, try_number, pid, pid_start, log_path).await {
                        tracing::warn!(error = %chain(&error), "cannot record the process of an attempt");
                    }
                    None
                }
            }
        });
        updraft_metrics::incr(&catalog::TI_START, &[&claimed.dag_id, &claimed.task_id]);
        if let Some(ready) = claimed.ready_at {
            let waited = std::time::Duration::try_from(self.clock.now().duration_since(ready)).unwrap_or_default();
            updraft_metrics::timing(&catalog::TI_SCHEDULING_DELAY, &[&claimed.dag_id, &claimed.task_id], waited);
        }
        let result = match dag.task(&claimed.task_id) {
            Some(task) if self.config.pods.runs_in_pod(task) => {
                // No local process to record: the pod is found by its name.
                drop(spawned_tx);
                self.config.pods.execute(&spec, &self.templates, self.observer.clone(), cancel).await
            }
            _ => execute(&spec, &self.templates, self.observer.clone(), cancel, spawned_tx).await,
        };
        let _ = ended_tx.send(());
        let process = record.await.ok().flatten();
        if result.ending == Ending::Released {
            // Still running: its next holder records how it ends.
            self.released.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let end = match (&result.ending, dag.task(&claimed.task_id)) {
            (Ending::Rescheduled { next, waiting_since }, Some(_)) => AttemptEnd {
                state: TaskState::UpForRetry,
                retry_at: Some(self.clock.now() + next.to_std()),
                exit_code: None,
                reason: result.reason(),
                process,
                // The next look counts its wait from the first.
                output: Some(
                    serde_json::json!({ "waiting_since": waiting_since, "try": claimed.try_number }).to_string(),
                ),
                reschedule: true,
            },
            (Ending::Interrupted, _) => AttemptEnd {
                state: TaskState::Scheduled,
                retry_at: None,
                exit_code: None,
                reason: result.reason(),
                process,
                output: None,
                reschedule: false,
            },
            (_, Some(task)) => {
                let (state, retry_at) =
                    after_attempt(task, result.outcome(), claimed.try_number, claimed.max_tries, self.clock.now());
                AttemptEnd {
                    state,
                    retry_at,
                    exit_code: result.exit_code(),
                    reason: result.reason(),
                    process,
                    output: result.output.clone(),
                    reschedule: false,
                }
            }
            // Retrying cannot help a task its pinned version does not have.
            (_, None) => AttemptEnd {
                state: TaskState::Failed,
                retry_at: None,
                exit_code: None,
                reason: result.reason(),
                process,
                output: None,
                reschedule: false,
            },
        };
        let labels = [claimed.dag_id.as_str(), claimed.task_id.as_str()];
        updraft_metrics::incr(&catalog::TI_FINISH, &[labels[0], labels[1], end.state.as_str()]);
        updraft_metrics::timing(&catalog::TASK_DURATION, &labels, result.duration);
        match end.state {
            TaskState::Success => updraft_metrics::incr(&catalog::TI_SUCCESSES, &[]),
            TaskState::Failed | TaskState::UpForRetry if !end.reschedule => {
                updraft_metrics::incr(&catalog::TI_FAILURES, &[]);
            }
            _ => {}
        }
        let logs = match shipper {
            Some(shipper) => shipper.finish().await,
            None => Vec::new(),
        };
        let _ = outcomes.send(Outcome { claimed, end, logs });
    }

    /// Writes outcomes as they come, all that have accumulated in one transaction,
    /// and wakes the scheduler once per batch: attempts that end together (a wide
    /// fan-out) cost one write and one scheduling pass, not one each.
    async fn report(self: Arc<Self>, mut outcomes: mpsc::UnboundedReceiver<Outcome>) {
        while let Some(first) = outcomes.recv().await {
            let mut batch = vec![first];
            while let Ok(more) = outcomes.try_recv() {
                batch.push(more);
            }
            self.finish(batch).await;
        }
    }

    /// Records how attempts ended. The store may be briefly unavailable (another
    /// process holds the write lock); outcomes are retried, never dropped.
    async fn finish(&self, batch: Vec<Outcome>) {
        let actor = format!("runner:{}", self.config.process_id);
        let ends: Vec<FinishedAttempt> = batch
            .iter()
            .map(|outcome| FinishedAttempt {
                ti_pk: outcome.claimed.ti_pk,
                try_number: outcome.claimed.try_number,
                end: outcome.end.clone(),
            })
            .collect();
        let logs: Vec<LogChunk> = batch.iter().flat_map(|outcome| outcome.logs.iter().cloned()).collect();
        let mut delay = Duration::from_millis(100);
        let recorded = loop {
            match self.source.finish(&ends, &logs, &actor).await {
                Ok(recorded) => break recorded,
                Err(error) => {
                    tracing::error!(error = %chain(&error), "cannot record the end of attempts; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        };
        for (Outcome { claimed, end, .. }, recorded) in batch.iter().zip(recorded) {
            if recorded {
                let label = AttemptLabel {
                    dag_id: claimed.dag_id.clone(),
                    run_id: claimed.run_id.clone(),
                    task_id: claimed.task_id.clone(),
                    map_index: claimed.map_index,
                    try_number: claimed.try_number,
                };
                self.observer.recorded(&label, end.state, end.reason.as_deref());
            } else {
                tracing::warn!(
                    dag_id = %claimed.dag_id, run_id = %claimed.run_id, task_id = %claimed.task_id,
                    try_number = claimed.try_number, "attempt was replaced before it finished; its result is dropped"
                );
            }
        }
        self.scheduler.notify_one();
    }
}

async fn adopted(adoptions: &mut Option<mpsc::UnboundedReceiver<Adopted>>) -> Option<Adopted> {
    match adoptions {
        Some(adoptions) => adoptions.recv().await,
        None => std::future::pending().await,
    }
}

async fn changed(watcher: &mut Option<Box<dyn updraft_store::ChangeWatcher>>) -> updraft_store::Result<()> {
    match watcher {
        Some(watcher) => watcher.changed().await,
        None => std::future::pending().await,
    }
}

/// Removes an attempt from the ones in flight when dropped.
struct InFlight<'a> {
    runner: &'a Runner,
    key: (i64, u32),
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.runner.attempts.lock().expect("attempts lock").remove(&self.key);
    }
}

/// How an attempt ended, with the last pieces of its log when they are shipped.
struct Outcome {
    claimed: Claimed,
    end: AttemptEnd,
    logs: Vec<LogChunk>,
}

/// An attempt taken over from a dead runner, with its stop signal.
type Adopted = (Claimed, watch::Receiver<bool>);

/// Where attempts send how they ended.
type Outcomes = mpsc::UnboundedSender<Outcome>;

/// `<logs>/<dag_id>/<run_id>/<task_id>/<try_number>.log`, as the contract says; a
/// mapped instance's in `<task_id>/map_index=<n>/`, as in Airflow.
pub fn log_path(
    logs_folder: &std::path::Path,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: i32,
    try_number: u32,
) -> PathBuf {
    let folder = logs_folder.join(dag_id).join(run_id).join(task_id);
    let folder = if map_index < 0 { folder } else { folder.join(format!("map_index={map_index}")) };
    folder.join(format!("{try_number}.log"))
}

/// The value of `UPDRAFT_ATTEMPT`, unique per attempt.
pub fn attempt_token(process_id: i64, ti_pk: i64, try_number: u32) -> String {
    format!("{process_id}:{ti_pk}:{try_number}")
}
