//! The Kubernetes executor's conversation with the API server, one attempt at a
//! time: create its pod (or find it, after a restart), follow it by watching
//! (never by tight polling) until [`status::progress`] says it ended, stream its
//! log, and delete it — at once when it succeeded, with a grace period on a
//! timeout, later when it failed (kept for debugging).
//!
//! Not yet wired into the runner: this is the API half, tested against recorded
//! API responses over `tower-test`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, WatchEvent, WatchParams};
use serde_json::Value;

use crate::status::{Graces, Progress, progress};
use crate::{CONTAINER, labels};

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
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

    /// Creates the pod; if a pod of that name exists (this attempt's, made before
    /// a restart), it is adopted instead. Returns its name.
    pub async fn launch(&self, pod: &Value) -> Result<String, ExecutorError> {
        let pod: Pod = serde_json::from_value(pod.clone()).map_err(|error| ExecutorError::Spec(error.to_string()))?;
        let name = pod.metadata.name.clone().ok_or_else(|| ExecutorError::Spec("no `metadata.name`".into()))?;
        match self.api.create(&PostParams::default(), &pod).await {
            Ok(_) => Ok(name),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(name),
            Err(error) => Err(error.into()),
        }
    }

    /// Follows the pod until it ends, calling `starting` with each new reason it
    /// gives for not running yet. `now` is the clock (graces count on it).
    pub async fn wait(
        &self,
        name: &str,
        graces: &Graces,
        now: impl Fn() -> Timestamp,
        mut starting: impl FnMut(&str),
    ) -> Result<Ended, ExecutorError> {
        let mut last_why: Option<String> = None;
        // The current version first, then every change after it.
        let current = self.api.get_opt(name).await?.ok_or_else(|| ExecutorError::Gone(name.to_string()))?;
        let mut version = current.metadata.resource_version.clone().unwrap_or_default();
        if let Some(ended) = self.judge(name, &current, graces, &now, &mut last_why, &mut starting)? {
            return Ok(ended);
        }
        loop {
            let params = WatchParams::default().fields(&format!("metadata.name={name}")).timeout(60);
            let mut stream = self.api.watch(&params, &version).await?.boxed();
            while let Some(event) = stream.try_next().await? {
                match event {
                    WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                        version = pod.metadata.resource_version.clone().unwrap_or(version);
                        if let Some(ended) = self.judge(name, &pod, graces, &now, &mut last_why, &mut starting)? {
                            return Ok(ended);
                        }
                    }
                    WatchEvent::Deleted(_) => return Err(ExecutorError::Gone(name.to_string())),
                    WatchEvent::Bookmark(bookmark) => version = bookmark.metadata.resource_version,
                    WatchEvent::Error(error) if error.code == 410 => {
                        // Our version is too old: start again from the pod as it is.
                        let pod = self.api.get_opt(name).await?.ok_or_else(|| ExecutorError::Gone(name.to_string()))?;
                        version = pod.metadata.resource_version.clone().unwrap_or_default();
                        if let Some(ended) = self.judge(name, &pod, graces, &now, &mut last_why, &mut starting)? {
                            return Ok(ended);
                        }
                        break;
                    }
                    WatchEvent::Error(error) => return Err(ExecutorError::Api(error.message)),
                }
            }
            // The watch timed out (or was cut): waits with a grace are judged anew.
            let pod = self.api.get_opt(name).await?.ok_or_else(|| ExecutorError::Gone(name.to_string()))?;
            if let Some(ended) = self.judge(name, &pod, graces, &now, &mut last_why, &mut starting)? {
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
        last_why: &mut Option<String>,
        starting: &mut impl FnMut(&str),
    ) -> Result<Option<Ended>, ExecutorError> {
        let value = serde_json::to_value(pod).map_err(|error| ExecutorError::Spec(error.to_string()))?;
        match progress(&value, now(), graces) {
            Progress::Starting { why } => {
                if why.is_some() && why != *last_why {
                    starting(why.as_deref().unwrap_or_default());
                    *last_why = why;
                }
                Ok(None)
            }
            Progress::Running => Ok(None),
            ended => Ok(Some(Ended { name: name.to_string(), progress: ended })),
        }
    }

    /// The task container's log as it is written, line by line.
    pub async fn follow_log(&self, name: &str, mut line: impl FnMut(String)) -> Result<(), ExecutorError> {
        let params = LogParams { container: Some(CONTAINER.to_string()), follow: true, ..LogParams::default() };
        let mut lines = self.api.log_stream(name, &params).await?.lines();
        while let Some(text) = lines.try_next().await.map_err(|error| ExecutorError::Api(error.to_string()))? {
            line(text);
        }
        Ok(())
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
