//! Attempts that run as Kubernetes pods (`executor: kubernetes`, or
//! `[executor] kind = "kubernetes"` for every `shell` and `python` task): the pod
//! is built by `updraft-kube`, created (or adopted after a restart), followed by
//! watch, its log streamed into the attempt's log, and its end read like a local
//! process's — exit code 0 success, 99 skipped, else failed — or as a failure in
//! plain words (out of memory, image pull, unschedulable, evicted, node lost).
//!
//! Fencing: before a try's pod is created, the pods of earlier tries of the same
//! task instance are deleted and waited for, so two tries never run at once.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jiff::Timestamp;
use minijinja::Environment;
use serde_json::Value;
use tokio::sync::{OnceCell, mpsc, watch};
use updraft_core::errors::chain;
use updraft_core::kubernetes::Executor;
use updraft_core::{Dag, Task, TaskKind};
use updraft_kube::executor::{ExecutorError, Pods, Seen};
use updraft_kube::status::{Failure, Progress};
use updraft_kube::{KubeConfig, labels};

use crate::attempt::{
    AttemptObserver, AttemptResult, AttemptSpec, Ending, LogFile, Opened, cancelled, container_command, not_started,
    note_line, open, sleep_until, spawn_writer,
};

/// How long API errors while following a pod are retried before the attempt
/// counts as failed (its pod is then deleted by the next try's fencing).
const API_PATIENCE: Duration = Duration::from_secs(120);

/// How long the log is read after the pod ended, for its last lines.
const LOG_TAIL: Duration = Duration::from_secs(10);

/// How often ended pods are looked for, to delete those kept long enough.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The pod side of a runner: which tasks run in pods, and the cluster connection,
/// made on first use (a laptop without a cluster never needs one).
pub struct PodExecutor {
    pub config: KubeConfig,
    /// For tasks that name no executor (`[executor] kind`).
    pub default: Executor,
    /// A stopped attempt's pod is left running for the next runner to adopt
    /// (services), rather than deleted (`dags test`).
    pub release_on_stop: bool,
    pods: OnceCell<Arc<Pods>>,
}

impl std::fmt::Debug for PodExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodExecutor")
            .field("namespace", &self.config.namespace)
            .field("default", &self.default)
            .field("connected", &self.pods.initialized())
            .finish()
    }
}

impl PodExecutor {
    pub fn new(config: KubeConfig, default: Executor) -> PodExecutor {
        PodExecutor { config, default, release_on_stop: false, pods: OnceCell::new() }
    }

    /// Leave the pods of stopped attempts running for adoption (see
    /// [`PodExecutor::release_on_stop`]).
    pub fn releasing(mut self) -> PodExecutor {
        self.release_on_stop = true;
        self
    }

    /// Whether this task's attempts are pods: `shell` and `python` tasks whose
    /// executor (their own, else the default) is Kubernetes. Built-in types run in
    /// the runner either way.
    pub fn runs_in_pod(&self, task: &Task) -> bool {
        task.executor.unwrap_or(self.default) == Executor::Kubernetes
            && matches!(task.kind, TaskKind::Shell { .. } | TaskKind::Python(_))
    }

    /// Whether this process talks to a cluster (it may have pods to sweep).
    pub fn in_use(&self) -> bool {
        self.default == Executor::Kubernetes || self.pods.initialized()
    }

    /// The cluster's pods in the configured namespace.
    pub async fn pods(&self) -> Result<Arc<Pods>, ExecutorError> {
        self.pods.get_or_try_init(|| async { Pods::connect(&self.config.namespace).await.map(Arc::new) }).await.cloned()
    }

    /// Deletes ended pods kept past `keep_failed_pods`, every [`SWEEP_EVERY`] until
    /// `shutdown`.
    pub async fn sweep_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if self.in_use() {
                match self.pods().await {
                    Ok(pods) => match pods.sweep(self.config.keep_failed, Timestamp::now()).await {
                        Ok(deleted) if !deleted.is_empty() => {
                            tracing::info!(count = deleted.len(), pods = ?deleted, "deleted ended pods kept for debugging");
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(error = %chain(&error), "cannot sweep ended pods"),
                    },
                    Err(error) => tracing::warn!(error = %chain(&error), "cannot reach the Kubernetes API"),
                }
            }
            tokio::select! {
                () = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// The pod an attempt becomes.
    pub fn pod_for(&self, spec: &AttemptSpec, templates: &Environment<'static>) -> Result<Value, String> {
        let task = spec
            .dag
            .task(&spec.task_id)
            .ok_or_else(|| format!("task `{}` is not in DAG `{}`", spec.task_id, spec.dag.dag_id()))?;
        let (command, env) = container_command(spec, templates)?;
        let settings = task.kubernetes.clone().unwrap_or_default();
        let template = match &settings.pod_template {
            Some(path) => Some(read_pod_template(&spec.dags_folder, &spec.dag, path)?),
            None => None,
        };
        let attempt = updraft_kube::Attempt {
            dag_id: spec.dag.dag_id().as_str(),
            run_id: &spec.run.run_id,
            task_id: &spec.task_id,
            map_index: spec.run.mapped.as_ref().map_or(updraft_core::mapping::UNMAPPED, |mapped| mapped.index as i32),
            try_number: spec.try_number,
            command,
            env,
            settings: &settings,
            timeout: task.timeout.map(|timeout| timeout.to_std()),
            template,
        };
        updraft_kube::pod(&attempt, &self.config).map_err(|error| error.to_string())
    }

    /// Runs one attempt as a pod and reports how it ended, like
    /// [`crate::attempt::execute`] does for a local process.
    pub async fn execute(
        &self,
        spec: &AttemptSpec,
        templates: &Environment<'static>,
        observer: Arc<dyn AttemptObserver>,
        mut cancel: watch::Receiver<bool>,
    ) -> AttemptResult {
        let Opened { started, label, masker, mut log } = match open(spec, observer.as_ref()) {
            Ok(opened) => opened,
            Err(result) => return result,
        };
        log.note(&format!(
            "attempt {} of {} of `{}.{}` in run `{}` started",
            spec.try_number, spec.tries_allowed, label.dag_id, label.task_id, label.run_id
        ));
        let pod = match self.pod_for(spec, templates) {
            Ok(pod) => pod,
            Err(why) => {
                log.note(&why);
                return not_started(started, why, &label, observer.as_ref());
            }
        };
        let pods = match self.pods().await {
            Ok(pods) => pods,
            Err(error) => {
                let why = chain(&error);
                log.note(&why);
                return not_started(started, why, &label, observer.as_ref());
            }
        };
        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if let Err(why) = self.fence(&pods, &pod, spec.try_number).await {
            log.note(&why);
            return not_started(started, why, &label, observer.as_ref());
        }
        let launched = match pods.launch(&pod).await {
            Ok(launched) => launched,
            Err(error) => {
                let why = format!("cannot create pod `{name}`: {}", chain(&error));
                log.note(&why);
                return not_started(started, why, &label, observer.as_ref());
            }
        };
        let image = pod["spec"]["containers"]
            .as_array()
            .and_then(|containers| containers.iter().find(|c| c["name"] == updraft_kube::CONTAINER))
            .and_then(|container| container["image"].as_str())
            .unwrap_or_default();
        log.note(&match launched.adopted {
            false => format!("pod `{name}` created in namespace `{}` (image `{image}`)", self.config.namespace),
            true => format!(
                "pod `{name}` was already there (made by a runner that stopped): following it, its log from the start"
            ),
        });

        let (lines_tx, lines_rx) = mpsc::channel::<String>(1024);
        let writer = spawn_writer(lines_rx, log, masker, observer.clone(), label.clone());
        // The log can be read once the container runs (or has ended).
        let (running_tx, mut running_rx) = watch::channel(false);
        let follower = {
            let (pods, name, lines) = (pods.clone(), name.clone(), lines_tx.clone());
            tokio::spawn(async move {
                if running_rx.wait_for(|running| *running).await.is_err() {
                    return;
                }
                match pods.log_lines(&name).await {
                    Ok(mut stream) => {
                        while let Some(line) = stream.next().await {
                            match line {
                                Ok(line) => {
                                    if lines.send(line).await.is_err() {
                                        return;
                                    }
                                }
                                Err(error) => {
                                    let _ = lines.send(note_line(&format!("the log stream broke: {error}"))).await;
                                    return;
                                }
                            }
                        }
                    }
                    Err(error) => {
                        let _ = lines.send(note_line(&format!("cannot read the pod's log: {}", chain(&error)))).await;
                    }
                }
            })
        };

        let timeout = spec.dag.task(&spec.task_id).and_then(|task| task.timeout);
        let deadline = timeout.map(|limit| tokio::time::Instant::now() + limit.to_std());
        // Whether the pod ended by itself and is still there (to delete, or keep).
        let (ending, ended_here) = {
            let ended = self.follow(&pods, &name, &lines_tx, &running_tx);
            tokio::pin!(ended);
            tokio::select! {
                ending = &mut ended => ending,
                () = sleep_until(deadline) => {
                    self.stop(&pods, &name, &lines_tx).await;
                    (Ending::TimedOut(timeout.expect("a deadline comes from a timeout")), false)
                }
                () = cancelled(&mut cancel) => {
                    // Stopped because this process stops or lost the attempt's lease:
                    // whoever holds the lease next adopts the pod, or deletes it
                    // before the attempt counts as failed.
                    if self.release_on_stop {
                        let _ = lines_tx.try_send(note_line(&format!(
                            "this runner stopped following pod `{name}`; it keeps running for another runner to adopt"
                        )));
                        (Ending::Released, false)
                    } else {
                        self.stop(&pods, &name, &lines_tx).await;
                        (Ending::Interrupted, false)
                    }
                }
            }
        };
        // A pod that ended before it was seen running still has a log to read; one
        // that never ran has none.
        if matches!(ending, Ending::Exited(_)) {
            let _ = running_tx.send(true);
        }
        drop(running_tx);
        let tail = match ending {
            Ending::TimedOut(_) | Ending::Interrupted => self.config.kill_grace + LOG_TAIL,
            Ending::Released => Duration::ZERO,
            _ => LOG_TAIL,
        };
        let abort = follower.abort_handle();
        if tokio::time::timeout(tail, follower).await.is_err() {
            abort.abort();
        }
        drop(lines_tx);
        let mut log = match writer.await {
            Ok(log) => log,
            Err(_) => LogFile::closed(Arc::default()),
        };
        if let Ending::Failed(why) = &ending {
            log.note(why);
        }
        let delete_now = match ending {
            Ending::Exited(code) if code == 0 || code == 99 => true,
            _ => self.config.keep_failed.is_zero(),
        };
        if ended_here && delete_now {
            if let Err(error) = pods.stop(&name, Duration::ZERO).await {
                tracing::warn!(pod = %name, error = %chain(&error), "cannot delete an ended pod; the sweep will");
            }
        } else if ended_here {
            log.note(&self.kept(&name));
        }
        let result = AttemptResult { ending, duration: started.elapsed(), output: None };
        log.note(&format!("attempt ended after {:.2}s: {}", result.duration.as_secs_f64(), result.describe()));
        observer.ended(&label, &result);
        result
    }

    fn kept(&self, name: &str) -> String {
        format!(
            "pod `{name}` is kept for {} for debugging (`kubectl -n {} describe pod {name}`), then deleted",
            updraft_core::Duration::from_secs(self.config.keep_failed.as_secs()),
            self.config.namespace
        )
    }

    /// Deletes the pods of earlier tries of this task instance and waits until
    /// they are gone: a try's pod never runs beside its predecessor's.
    async fn fence(&self, pods: &Pods, pod: &Value, try_number: u32) -> Result<(), String> {
        let wanted: std::collections::BTreeMap<String, String> = pod["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, _)| key.starts_with("updraft.dev/"))
            .map(|(key, value)| (key.clone(), value.as_str().unwrap_or_default().to_string()))
            .collect();
        let found = pods
            .of_task_instance(&wanted)
            .await
            .map_err(|error| format!("cannot list this task's pods: {}", chain(&error)))?;
        for old in found {
            let old_try: u32 = old.metadata.labels.as_ref().and_then(|l| l.get(labels::TRY)?.parse().ok()).unwrap_or(0);
            // Another map index shares the other labels when this one is unmapped.
            let same_index = old.metadata.labels.as_ref().and_then(|l| l.get(labels::MAP_INDEX).cloned())
                == wanted.get(labels::MAP_INDEX).cloned();
            let Some(name) = old.metadata.name.filter(|_| same_index && old_try < try_number) else { continue };
            tracing::info!(pod = %name, try_number = old_try, "deleting the pod of an earlier try");
            pods.stop(&name, self.config.kill_grace)
                .await
                .map_err(|error| format!("cannot delete pod `{name}` of try {old_try}: {}", chain(&error)))?;
            let within = self.config.kill_grace + Duration::from_secs(30);
            match pods.gone(&name, within).await {
                Ok(true) => {}
                Ok(false) => return Err(format!("pod `{name}` of try {old_try} is still stopping after {within:?}")),
                Err(error) => return Err(format!("cannot see pod `{name}` of try {old_try} go: {}", chain(&error))),
            }
        }
        Ok(())
    }

    /// Follows the pod to its end; API errors are retried for [`API_PATIENCE`].
    /// With the ending, whether the pod is still there.
    async fn follow(
        &self,
        pods: &Pods,
        name: &str,
        lines: &mpsc::Sender<String>,
        running: &watch::Sender<bool>,
    ) -> (Ending, bool) {
        let mut failing_since: Option<Instant> = None;
        let mut backoff = Duration::from_secs(1);
        loop {
            let seen = |seen: Seen<'_>| match seen {
                Seen::Waiting(why) => {
                    let _ = lines.try_send(note_line(&format!("pod `{name}`: {why}")));
                }
                Seen::Running => {
                    let _ = running.send(true);
                }
            };
            match pods.wait(name, &self.config.graces, Timestamp::now, seen).await {
                Ok(ended) => return (ending(ended.progress), true),
                Err(ExecutorError::Gone(_)) => {
                    let why =
                        format!("pod `{name}` was deleted before it ended (by someone else, or its node was drained)");
                    return (Ending::Failed(why), false);
                }
                Err(error) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > API_PATIENCE {
                        let why = format!(
                            "lost track of pod `{name}`: the Kubernetes API kept failing for {}s: {}",
                            API_PATIENCE.as_secs(),
                            chain(&error)
                        );
                        return (Ending::Failed(why), true);
                    }
                    let _ = lines.try_send(note_line(&format!(
                        "cannot follow pod `{name}` ({}); trying again in {}s",
                        chain(&error),
                        backoff.as_secs()
                    )));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(15));
                }
            }
        }
    }

    /// Deletes the pod, giving it the kill grace to stop.
    async fn stop(&self, pods: &Pods, name: &str, lines: &mpsc::Sender<String>) {
        if let Err(error) = pods.stop(name, self.config.kill_grace).await {
            let _ = lines.try_send(note_line(&format!("cannot delete pod `{name}`: {}", chain(&error))));
        }
    }

    /// Whether a lost attempt's pod (its runner died) is there.
    pub async fn exists(&self, name: &str) -> Result<bool, ExecutorError> {
        self.pods().await?.exists(name).await
    }

    /// Deletes a lost attempt's pod and waits until it is gone; whether it is.
    pub async fn remove(&self, name: &str) -> Result<bool, ExecutorError> {
        let pods = self.pods().await?;
        pods.stop(name, self.config.kill_grace).await?;
        pods.gone(name, self.config.kill_grace + Duration::from_secs(30)).await
    }
}

/// A pod's end in the runner's terms.
fn ending(progress: Progress) -> Ending {
    match progress {
        Progress::Exited { code } => Ending::Exited(code),
        Progress::Failed { reason, message } => {
            let what = match reason {
                Failure::OutOfMemory => "out of memory",
                Failure::ImagePull => "image not pulled",
                Failure::Unschedulable => "unschedulable",
                Failure::Evicted => "evicted",
                Failure::NodeLost => "node lost",
                Failure::DeadlineExceeded => "deadline exceeded",
                Failure::Config => "cannot start",
            };
            Ending::Failed(format!("{what}: {message}"))
        }
        // `wait` returns only ends.
        Progress::Starting { .. } | Progress::Running => Ending::Failed("the pod did not end".to_string()),
    }
}

/// A `pod_template` file (relative to the DAG file's folder) as JSON.
pub fn read_pod_template(dags_folder: &Path, dag: &Dag, path: &str) -> Result<Value, String> {
    let folder = crate::attempt::dag_folder(dags_folder, &dag.spec().fileloc);
    let file = folder.join(path);
    let text = std::fs::read_to_string(&file)
        .map_err(|error| format!("cannot read pod template `{}`: {error}", file.display()))?;
    let tree = updraft_dagfile::yaml::parse(&text).map_err(|error| {
        let (line, column) = updraft_dagfile::yaml::LineIndex::new(&text).line_col(error.span.start);
        format!("{}:{line}:{column}: {}", file.display(), error.message)
    })?;
    Ok(tree.to_json())
}
