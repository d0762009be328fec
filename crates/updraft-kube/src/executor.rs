//! The Kubernetes executor's conversation with the API server, one attempt at a
//! time: create its pod (or find it, after a restart), follow it by watching
//! (never by tight polling) until [`status::progress`] says it ended, stream its
//! log, and delete it — at once when it succeeded, with a grace period on a
//! timeout, later when it failed (kept for debugging).
//!
//! The runner (`updraft_runner::pods`) drives it; this half is tested against
//! recorded API responses over `tower-test`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, WatchEvent, WatchParams};
use serde_json::Value;

use crate::status::{Graces, Progress, progress};
use crate::{CONTAINER, labels};

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("cannot find a Kubernetes cluster (no kubeconfig, and not in a pod): {0}")]
    NoCluster(String),
    #[error("the Kubernetes API refused: {0}")]
    Api(String),
    #[error("the pod spec is not a pod: {0}")]
    Spec(String),
    #[error("pod `{0}` was deleted before it ended")]
    Gone(String),
}

impl From<kube::Error> for ExecutorError {
    fn from(error: kube::Error) -> Self {
        ExecutorError::Api(error.to_string())
    }
}

/// Pods of one namespace.
pub struct Pods {
    api: Api<Pod>,
}

/// What [`Pods::wait`] saw on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen<'a> {
    /// Not running yet, for this reason (told once per new reason).
    Waiting(&'a str),
    /// The task's container is running (told once).
    Running,
}

/// A pod made for an attempt, or found already there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    pub name: String,
    /// It existed: this attempt's pod from before a restart, now followed again.
    pub adopted: bool,
}

/// How a watched pod ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub name: String,
    pub progress: Progress,
}

impl Pods {
    pub fn new(client: kube::Client, namespace: &str) -> Pods {
        Pods { api: Api::namespaced(client, namespace) }
    }

    /// Pods of `namespace` in the cluster this process finds: `KUBECONFIG` or
    /// `~/.kube/config` (its current context), else the pod's own service account
    /// when running in a cluster.
    pub async fn connect(namespace: &str) -> Result<Pods, ExecutorError> {
        let client = kube::Client::try_default().await.map_err(|error| ExecutorError::NoCluster(error.to_string()))?;
        Ok(Pods::new(client, namespace))
    }

    /// Creates the pod; if a pod of that name exists (this attempt's, made before
    /// a restart), it is adopted instead.
    pub async fn launch(&self, pod: &Value) -> Result<Launched, ExecutorError> {
        let pod: Pod = serde_json::from_value(pod.clone()).map_err(|error| ExecutorError::Spec(error.to_string()))?;
        let name = pod.metadata.name.clone().ok_or_else(|| ExecutorError::Spec("no `metadata.name`".into()))?;
        match self.api.create(&PostParams::default(), &pod).await {
            Ok(_) => Ok(Launched { name, adopted: false }),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Launched { name, adopted: true }),
            Err(error) => Err(error.into()),
        }
    }

    /// Follows the pod until it ends, telling `seen` each new reason it gives for
    /// not running yet, and when it runs. `now` is the clock (graces count on it).
    pub async fn wait(
        &self,
        name: &str,
        graces: &Graces,
        now: impl Fn() -> Timestamp,
        mut seen: impl FnMut(Seen<'_>),
    ) -> Result<Ended, ExecutorError> {
        let mut last: Option<Progress> = None;
        // The current version first, then every change after it.
        let current = self.api.get_opt(name).await?.ok_or_else(|| ExecutorError::Gone(name.to_string()))?;
        let mut version = current.metadata.resource_version.clone().unwrap_or_default();
        if let Some(ended) = self.judge(name, &current, graces, &now, &mut last, &mut seen)? {
            return Ok(ended);
        }
        loop {
            // A wait with a grace is judged again when the watch ends, so a quiet
            // pod still fails soon after its grace.
            let waiting = matches!(last, Some(Progress::Starting { why: Some(_) }));
            let shortest = graces.image_pull.min(graces.unschedulable).min(graces.node_lost).as_secs();
            let timeout = if waiting { shortest.clamp(1, 60) } else { 60 } as u32;
            let params = WatchParams::default().fields(&format!("metadata.name={name}")).timeout(timeout);
            let mut stream = self.api.watch(&params, &version).await?.boxed();
            while let Some(event) = stream.try_next().await? {
                match event {
                    WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                        version = pod.metadata.resource_version.clone().unwrap_or(version);
                        if let Some(ended) = self.judge(name, &pod, graces, &now, &mut last, &mut seen)? {
                            return Ok(ended);
                        }
                    }
                    WatchEvent::Deleted(_) => return Err(ExecutorError::Gone(name.to_string())),
                    WatchEvent::Bookmark(bookmark) => version = bookmark.metadata.resource_version,
                    WatchEvent::Error(error) if error.code == 410 => {
                        // Our version is too old: start again from the pod as it is.
                        let pod = self.api.get_opt(name).await?.ok_or_else(|| ExecutorError::Gone(name.to_string()))?;
                        version = pod.metadata.resource_version.clone().unwrap_or_default();
                        if let Some(ended) = self.judge(name, &pod, graces, &now, &mut last, &mut seen)? {
                            return Ok(ended);
                        }
                        break;
                    }
                    WatchEvent::Error(error) => return Err(ExecutorError::Api(error.message)),
                }
            }
            // The watch timed out (or was cut): waits with a grace are judged anew.
            let pod = self.api.get_opt(name).await?.ok_or_else(|| ExecutorError::Gone(name.to_string()))?;
            if let Some(ended) = self.judge(name, &pod, graces, &now, &mut last, &mut seen)? {
                return Ok(ended);
            }
        }
    }

    fn judge(
        &self,
        name: &str,
        pod: &Pod,
        graces: &Graces,
        now: &impl Fn() -> Timestamp,
        last: &mut Option<Progress>,
        seen: &mut impl FnMut(Seen<'_>),
    ) -> Result<Option<Ended>, ExecutorError> {
        let value = serde_json::to_value(pod).map_err(|error| ExecutorError::Spec(error.to_string()))?;
        let now = progress(&value, now(), graces);
        if last.as_ref() == Some(&now) {
            return Ok(None);
        }
        match &now {
            Progress::Starting { why: Some(why) } => seen(Seen::Waiting(why)),
            Progress::Starting { why: None } => {}
            Progress::Running => seen(Seen::Running),
            ended => return Ok(Some(Ended { name: name.to_string(), progress: ended.clone() })),
        }
        *last = Some(now);
        Ok(None)
    }

    /// The task container's log from its start, line by line as it is written,
    /// until the container ends.
    pub async fn log_lines(
        &self,
        name: &str,
    ) -> Result<BoxStream<'static, Result<String, ExecutorError>>, ExecutorError> {
        let params = LogParams { container: Some(CONTAINER.to_string()), follow: true, ..LogParams::default() };
        let lines = self.api.log_stream(name, &params).await?.lines();
        Ok(lines.map_err(|error| ExecutorError::Api(error.to_string())).boxed())
    }

    /// [`Pods::log_lines`] into a callback.
    pub async fn follow_log(&self, name: &str, mut line: impl FnMut(String)) -> Result<(), ExecutorError> {
        let mut lines = self.log_lines(name).await?;
        while let Some(text) = lines.try_next().await? {
            line(text);
        }
        Ok(())
    }

    /// Whether the pod is there.
    pub async fn exists(&self, name: &str) -> Result<bool, ExecutorError> {
        Ok(self.api.get_opt(name).await?.is_some())
    }

    /// Waits (by watch) up to `within` for the pod to be gone; whether it is.
    pub async fn gone(&self, name: &str, within: Duration) -> Result<bool, ExecutorError> {
        let Some(pod) = self.api.get_opt(name).await? else { return Ok(true) };
        let version = pod.metadata.resource_version.clone().unwrap_or_default();
        let params =
            WatchParams::default().fields(&format!("metadata.name={name}")).timeout(within.as_secs().max(1) as u32);
        let mut stream = self.api.watch(&params, &version).await?.boxed();
        while let Some(event) = stream.try_next().await? {
            if let WatchEvent::Deleted(_) = event {
                return Ok(true);
            }
        }
        Ok(self.api.get_opt(name).await?.is_none())
    }

    /// Deletes Updraft's pods that ended more than `keep` before `now` (failed
    /// pods are kept that long for debugging); their names.
    pub async fn sweep(&self, keep: Duration, now: Timestamp) -> Result<Vec<String>, ExecutorError> {
        let selector = format!("{}=updraft", labels::MANAGED_BY);
        let list = self.api.list(&ListParams::default().labels(&selector)).await?;
        let mut deleted = Vec::new();
        for pod in list.items {
            let value = serde_json::to_value(&pod).map_err(|error| ExecutorError::Spec(error.to_string()))?;
            let Some(ended) = crate::status::finished_at(&value) else { continue };
            if now.duration_since(ended).as_secs_f64() < keep.as_secs_f64() {
                continue;
            }
            if let Some(name) = pod.metadata.name {
                self.stop(&name, Duration::ZERO).await?;
                deleted.push(name);
            }
        }
        Ok(deleted)
    }

    /// Deletes the pod, giving its container `grace` to stop; a pod already gone
    /// is fine.
    pub async fn stop(&self, name: &str, grace: Duration) -> Result<(), ExecutorError> {
        let params = DeleteParams { grace_period_seconds: Some(grace.as_secs() as u32), ..DeleteParams::default() };
        match self.api.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Updraft's pods of one task instance (any try), by their labels: after a
    /// restart, the current try's is adopted and older ones are deleted.
    pub async fn of_task_instance(&self, selector: &BTreeMap<String, String>) -> Result<Vec<Pod>, ExecutorError> {
        let mut wanted: Vec<String> = vec![format!("{}=updraft", labels::MANAGED_BY)];
        wanted.extend(
            selector.iter().filter(|(key, _)| key.as_str() != labels::TRY).map(|(key, value)| format!("{key}={value}")),
        );
        let list = self.api.list(&ListParams::default().labels(&wanted.join(","))).await?;
        Ok(list.items)
    }
}
