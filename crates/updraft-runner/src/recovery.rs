//! Finding attempts whose runner died (kill -9, a crash, a lost machine) and
//! settling them: kill what is left of the attempt's process group, then count
//! the attempt as failed so its retries apply. The order matters: the task instance
//! only becomes runnable again after the old process group is confirmed gone, so a
//! task never runs twice at the same time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use updraft_core::TaskState;
use updraft_core::clock::Clock;
use updraft_core::errors::chain;
use updraft_core::retry::{AttemptOutcome, after_attempt};
use updraft_store::{
    AttemptEnd, Claimant, DefinitionCache, LogChunk, ProcessRow, ProcessState, RunningAttempt, Store, StoreError,
};

use crate::attempt::{append_note, note_line};
use crate::procfs;
use crate::runner::{Runner, attempt_token, log_path};
use crate::source::WorkSource;

pub struct Recovery {
    pub store: Store,
    /// This process: never declared dead by itself.
    pub process_id: i64,
    pub hostname: String,
    pub definitions: Arc<DefinitionCache>,
    pub logs_folder: PathBuf,
    /// How long a process on another machine may go without a heartbeat.
    pub heartbeat_timeout: Duration,
    pub clock: Arc<dyn Clock>,
    /// Pods of lost attempts: their task's executor, and the cluster.
    pub pods: Arc<crate::pods::PodExecutor>,
    /// The runner of this process, which takes over the pods of dead runners; none:
    /// their pods are deleted and the attempts fail (retried as usual).
    pub adopter: Option<Arc<Runner>>,
}

/// What became of a lost attempt that ran as a pod.
enum PodFate {
    /// Not a pod attempt: settled like a local process.
    NotAPod,
    /// Handed to this process's runner, which follows its pod.
    Adopted,
    /// Taken over by another process meanwhile: nothing to do.
    TakenElsewhere,
    /// Its pod is gone (or never was): the attempt fails, with this said.
    Gone(&'static str),
    /// The cluster could not be asked, or the pod did not go: left for the next check.
    Later,
}

/// One attempt settled by recovery.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    pub try_number: u32,
    pub state: TaskState,
}

impl Recovered {
    fn of(attempt: &RunningAttempt, state: TaskState) -> Recovered {
        Recovered {
            dag_id: attempt.dag_id.clone(),
            run_id: attempt.run_id.clone(),
            task_id: attempt.task_id.clone(),
            try_number: attempt.try_number,
            state,
        }
    }
}

impl Recovery {
    /// Looks for dead processes and settles their attempts. Safe to run from several
    /// processes at once: declaring a process dead is compare-and-set, so one wins.
    pub async fn run_once(&self) -> Result<Vec<Recovered>, StoreError> {
        let now = self.clock.now();
        let mut recovered = Vec::new();
        for process in self.store.processes(Some(ProcessState::Running)).await? {
            if process.id == self.process_id || !self.is_dead(&process, now) {
                continue;
            }
            if !self.store.set_process_state(process.id, ProcessState::Running, ProcessState::Dead, now).await? {
                continue;
            }
            tracing::warn!(
                process_id = process.id, hostname = %process.hostname, pid = process.pid, kind = process.kind.as_str(),
                "a process died without stopping cleanly; recovering its attempts"
            );
            recovered.extend(self.settle(&process).await?);
        }
        // A process found dead earlier may have left attempts we could not settle yet.
        for process in self.store.processes(Some(ProcessState::Dead)).await? {
            if !self.store.running_attempts(process.id).await?.is_empty() {
                recovered.extend(self.settle(&process).await?);
            }
        }
        // Attempts whose lease lapsed though their process may live: a worker cut off
        // from the store, or one that lost track of an attempt.
        let cutoff = now.checked_sub(SignedDuration::try_from(self.heartbeat_timeout).unwrap_or(SignedDuration::MAX));
        let stale = self.store.stale_attempts(cutoff.unwrap_or(Timestamp::MIN)).await?;
        for attempt in stale {
            // Its runner may be alive (cut off from the store): its pod is not adopted
            // under it, but deleted before the attempt counts as failed.
            let pod_note = match self.pod_fate(&attempt, None).await {
                PodFate::NotAPod => None,
                PodFate::Later | PodFate::Adopted | PodFate::TakenElsewhere => continue,
                PodFate::Gone(note) => Some(note),
            };
            let local = attempt.hostname.as_deref() == Some(self.hostname.as_str());
            if pod_note.is_none() && local && !self.kill_attempt(attempt.process_id.unwrap_or_default(), &attempt).await
            {
                continue;
            }
            let holder = attempt.hostname.as_deref().unwrap_or("an unknown host");
            let why = format!(
                "attempt lost: its lease was not renewed for {}s (the runner on {holder} stopped sending heartbeats); \
                 it counts as failed, and that runner kills it if it comes back{}",
                self.heartbeat_timeout.as_secs(),
                pod_note.unwrap_or_default()
            );
            if let Some(state) = self.fail(&attempt, why).await? {
                recovered.push(Recovered::of(&attempt, state));
            }
        }
        Ok(recovered)
    }

    fn is_dead(&self, process: &ProcessRow, now: Timestamp) -> bool {
        if process.hostname == self.hostname {
            return !procfs::is_alive(process.pid, process.pid_start);
        }
        let silent = now.duration_since(process.heartbeat_at);
        silent > SignedDuration::try_from(self.heartbeat_timeout).unwrap_or(SignedDuration::MAX)
    }

    async fn settle(&self, process: &ProcessRow) -> Result<Vec<Recovered>, StoreError> {
        let mut recovered = Vec::new();
        for attempt in self.store.running_attempts(process.id).await? {
            let pod_note = match self.pod_fate(&attempt, Some(process.id)).await {
                PodFate::NotAPod => None,
                PodFate::Adopted => {
                    recovered.push(Recovered::of(&attempt, TaskState::Running));
                    continue;
                }
                PodFate::TakenElsewhere | PodFate::Later => continue,
                PodFate::Gone(note) => Some(note),
            };
            if pod_note.is_none() && process.hostname == self.hostname && !self.kill_attempt(process.id, &attempt).await
            {
                tracing::error!(
                    dag_id = %attempt.dag_id, task_id = %attempt.task_id, pid = ?attempt.pid,
                    "cannot confirm a lost attempt's processes are gone; leaving it for the next check"
                );
                continue;
            }
            let (note, killed) = match pod_note {
                Some(note) => (note, ""),
                None => ("", " its processes were killed and"),
            };
            let why = format!(
                "attempt lost: the process running it ({} {} on {}, pid {}) stopped without finishing it{note};{killed} \
                 the attempt counts as failed",
                process.kind.as_str(),
                process.id,
                process.hostname,
                process.pid
            );
            let state = self.fail(&attempt, why).await?;
            if let Some(state) = state {
                recovered.push(Recovered::of(&attempt, state));
            }
        }
        self.store.fail_owned_runs(process.id, self.clock.now()).await?;
        Ok(recovered)
    }

    /// For an attempt that ran as a pod: adopt it (its runner, `from`, is dead and
    /// this process has a runner), else delete its pod and wait until it is gone.
    async fn pod_fate(&self, attempt: &RunningAttempt, from: Option<i64>) -> PodFate {
        let Ok(dag) = self.definitions.get(self.store.as_ref(), &attempt.dag_id, &attempt.version).await else {
            return PodFate::NotAPod;
        };
        if !dag.task(&attempt.task_id).is_some_and(|task| self.pods.runs_in_pod(task)) {
            return PodFate::NotAPod;
        }
        let name = updraft_kube::name_of(
            &attempt.dag_id,
            &attempt.run_id,
            &attempt.task_id,
            attempt.map_index,
            attempt.try_number,
        );
        let exists = match self.pods.exists(&name).await {
            Ok(exists) => exists,
            Err(error) => {
                tracing::error!(pod = %name, error = %chain(&error), "cannot look for a lost attempt's pod; trying again later");
                return PodFate::Later;
            }
        };
        if !exists {
            return PodFate::Gone(" (it had no pod: it was never created, or was deleted)");
        }
        if let (Some(runner), Some(from)) = (&self.adopter, from) {
            let claimant = Claimant { process_id: self.process_id, hostname: self.hostname.clone(), queues: None };
            return match self
                .store
                .adopt_attempt(attempt.ti_pk, attempt.try_number, from, &claimant, self.clock.now())
                .await
            {
                Ok(Some(claimed)) => {
                    tracing::warn!(pod = %name, dag_id = %attempt.dag_id, task_id = %attempt.task_id,
                        try_number = attempt.try_number, "adopting the pod of an attempt whose runner died");
                    runner.adopt(claimed);
                    PodFate::Adopted
                }
                Ok(None) => PodFate::TakenElsewhere,
                Err(error) => {
                    tracing::error!(error = %chain(&error), "cannot take over a lost attempt; trying again later");
                    PodFate::Later
                }
            };
        }
        match self.pods.remove(&name).await {
            Ok(true) => PodFate::Gone(" (its pod was deleted)"),
            Ok(false) => {
                tracing::error!(pod = %name, "a lost attempt's pod is still stopping; trying again later");
                PodFate::Later
            }
            Err(error) => {
                tracing::error!(pod = %name, error = %chain(&error), "cannot delete a lost attempt's pod; trying again later");
                PodFate::Later
            }
        }
    }

    /// Kills the attempt's process group (found by pid, or by its `UPDRAFT_ATTEMPT`
    /// variable when the pid was never recorded) and waits until it is gone.
    async fn kill_attempt(&self, process_id: i64, attempt: &RunningAttempt) -> bool {
        let groups: Vec<(u32, Option<u64>)> = match attempt.pid {
            Some(pid) => vec![(pid, attempt.pid_start)],
            None => {
                let token = attempt_token(process_id, attempt.ti_pk, attempt.try_number);
                let mut groups: Vec<(u32, Option<u64>)> = procfs::find_by_env("UPDRAFT_ATTEMPT", &token)
                    .into_iter()
                    .filter_map(procfs::group_of)
                    .map(|pgid| (pgid, None))
                    .collect();
                groups.sort_unstable();
                groups.dedup();
                groups
            }
        };
        for (pgid, start) in groups {
            if !procfs::kill_group_and_wait(pgid, start, Duration::from_secs(10)).await {
                return false;
            }
        }
        true
    }

    /// Counts a lost attempt as failed (retried if it has retries left), with `why`
    /// and what happens next at the end of its log.
    async fn fail(&self, attempt: &RunningAttempt, why: String) -> Result<Option<TaskState>, StoreError> {
        let now = self.clock.now();
        let task_state = match self.definitions.get(self.store.as_ref(), &attempt.dag_id, &attempt.version).await {
            Ok(dag) => match dag.task(&attempt.task_id) {
                Some(task) => after_attempt(task, AttemptOutcome::Failed, attempt.try_number, attempt.max_tries, now),
                None => (TaskState::Failed, None),
            },
            Err(error) => {
                tracing::error!(%error, "cannot load the definition of a lost attempt; failing it without retry");
                (TaskState::Failed, None)
            }
        };
        let (state, retry_at) = task_state;
        let next = match retry_at {
            Some(at) => format!("it will be retried at {}", at.round(jiff::Unit::Second).unwrap_or(at)),
            None => "no retries are left".to_string(),
        };
        let reason = format!("{why}; {next}");
        let path = attempt.log_path.as_ref().map(PathBuf::from).unwrap_or_else(|| {
            log_path(
                &self.logs_folder,
                &attempt.dag_id,
                &attempt.run_id,
                &attempt.task_id,
                attempt.map_index,
                attempt.try_number,
            )
        });
        // A remote attempt's log lives in the store; a local one, in its file.
        match attempt.hostname.as_deref().is_none_or(|host| host == self.hostname) {
            true => append_note(&path, &reason),
            false => self.note_in_store(attempt, &reason).await?,
        }
        let end = AttemptEnd {
            state,
            retry_at,
            exit_code: None,
            reason: Some(reason),
            process: None,
            output: None,
            reschedule: false,
        };
        let done = self
            .store
            .finish_attempt(attempt.ti_pk, attempt.try_number, &end, &format!("recovery:{}", self.process_id), now)
            .await?;
        Ok(done.then_some(state))
    }
}

impl Recovery {
    /// Appends a note after the part of a remote attempt's log that reached the store.
    async fn note_in_store(&self, attempt: &RunningAttempt, text: &str) -> Result<(), StoreError> {
        let stored = self.store.read_log(attempt.ti_pk, attempt.try_number, 0).await?.unwrap_or_default();
        let mut data = Vec::new();
        if stored.last().is_some_and(|byte| *byte != b'\n') {
            data.push(b'\n');
        }
        data.extend_from_slice(note_line(text).as_bytes());
        data.push(b'\n');
        let note = LogChunk { ti_pk: attempt.ti_pk, try_number: attempt.try_number, offset: stored.len() as u64, data };
        self.store.append_logs(&[note]).await
    }
}

/// Records this process's heartbeat every `interval` until `shutdown`, renewing the
/// leases of its runner's attempts and stopping those it no longer holds. If the
/// store stays unreachable for most of `timeout`, the runner stops every attempt
/// itself: other processes will soon count them as zombies and run them again, and
/// the old ones must be gone by then. Returns `false` early if this process was
/// declared dead meanwhile, so the caller stops instead of racing replacements.
pub async fn heartbeat_loop(
    source: Arc<dyn WorkSource>,
    process_id: i64,
    interval: Duration,
    timeout: Duration,
    runner: Option<Arc<Runner>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> bool {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return true,
        }
        let leases = runner.as_ref().map(|runner| runner.leases()).unwrap_or_default();
        match source.heartbeat(process_id, &leases).await {
            Ok(beat) => {
                last_ok = tokio::time::Instant::now();
                if let Some(runner) = &runner {
                    runner.stop(&beat.lost, "its lease was taken over (it was counted as a zombie)");
                }
                if !beat.alive {
                    tracing::error!(process_id, "this process was declared dead by another; stopping its work");
                    if let Some(runner) = &runner {
                        runner.stop_all("this process was declared dead");
                    }
                    return false;
                }
            }
            Err(error) => {
                tracing::warn!(error = %chain(&error), "cannot record heartbeat");
                if last_ok.elapsed() > timeout * 3 / 4
                    && let Some(runner) = &runner
                {
                    runner.stop_all("no heartbeat reached the store for most of the heartbeat timeout");
                }
            }
        }
    }
}
