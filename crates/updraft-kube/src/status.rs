//! Where a pod is, read from its status as the API reports it, in the runner's
//! terms: still starting, running, finished with an exit code, or failed for a
//! reason people can act on (out of memory, image not pulled, nowhere to
//! schedule it, evicted, node lost, deadline exceeded).
//!
//! Pure: the executor feeds each watched version of the pod (and the time) and
//! acts on the answer. Waits that may resolve by themselves (an image pull being
//! retried, a cluster autoscaler adding a node) count as failures only after
//! their grace.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;

use crate::CONTAINER;

/// How long a pod may wait before its wait is a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Graces {
    /// `ErrImagePull` / `ImagePullBackOff` (a registry hiccup, a slow push).
    pub image_pull: Duration,
    /// `Unschedulable` (an autoscaler may add a node).
    pub unschedulable: Duration,
    /// Phase `Unknown` (the node stopped reporting).
    pub node_lost: Duration,
}

impl Default for Graces {
    fn default() -> Self {
        Graces {
            image_pull: Duration::from_secs(300),
            unschedulable: Duration::from_secs(900),
            node_lost: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not running yet; `why`, if the pod says (e.g. pulling, waiting for a node).
    Starting {
        why: Option<String>,
    },
    Running,
    /// The task's container ended: the exit code decides, as for a local process.
    Exited {
        code: i32,
    },
    /// The attempt failed without the task deciding.
    Failed {
        reason: Failure,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    OutOfMemory,
    ImagePull,
    Unschedulable,
    Evicted,
    NodeLost,
    DeadlineExceeded,
    /// The container could not be created (a missing secret or config map).
    Config,
}

/// What `pod` (one version of it, as the API returned it) says at `now`.
pub fn progress(pod: &Value, now: Timestamp, graces: &Graces) -> Progress {
    let status = &pod["status"];
    let phase = status["phase"].as_str().unwrap_or("Pending");
    let container = task_container(status);
    let created = timestamp(&pod["metadata"]["creationTimestamp"]);

    // The pod as a whole was ended by the kubelet or the control plane.
    match status["reason"].as_str() {
        Some("Evicted") => {
            let message = text(&status["message"]).unwrap_or("the node ran short of resources");
            return failed(Failure::Evicted, format!("the pod was evicted: {message}"));
        }
        Some("DeadlineExceeded") => {
            return failed(
                Failure::DeadlineExceeded,
                "the pod ran past its activeDeadlineSeconds and was stopped".to_string(),
            );
        }
        Some("NodeLost") => {
            let message = text(&status["message"]).unwrap_or("the node stopped responding");
            return failed(Failure::NodeLost, format!("the pod's node was lost: {message}"));
        }
        _ => {}
    }

    if let Some(terminated) = container.map(|c| &c["state"]["terminated"]).filter(|t| t.is_object()) {
        let code = terminated["exitCode"].as_i64().unwrap_or(-1) as i32;
        if terminated["reason"].as_str() == Some("OOMKilled") {
            let limit =
                limit_of(pod, "memory").map_or(String::new(), |limit| format!(" (its memory limit is {limit})"));
            return failed(
                Failure::OutOfMemory,
                format!("the container ran out of memory and was killed{limit}: OOMKilled, exit code {code}"),
            );
        }
        return Progress::Exited { code };
    }

    match phase {
        "Running" => return Progress::Running,
        "Succeeded" => return Progress::Exited { code: 0 },
        "Failed" => {
            let message = text(&status["message"]).unwrap_or("the pod failed before its container ended");
            return failed(Failure::Config, message.to_string());
        }
        "Unknown" => {
            if waited(created, now, graces.node_lost) {
                return failed(Failure::NodeLost, "the pod's node stopped reporting its state".to_string());
            }
            return Progress::Starting { why: Some("the node is not reporting".to_string()) };
        }
        _ => {}
    }

    // Pending: why, and whether that wait has lasted too long.
    if let Some(waiting) = container.map(|c| &c["state"]["waiting"]).filter(|w| w.is_object()) {
        let reason = waiting["reason"].as_str().unwrap_or_default();
        let message = text(&waiting["message"]).unwrap_or_default();
        match reason {
            "ErrImagePull" | "ImagePullBackOff" => {
                let image = container.and_then(|c| c["image"].as_str()).unwrap_or("the image");
                if waited(created, now, graces.image_pull) {
                    return failed(
                        Failure::ImagePull,
                        format!("cannot pull image `{image}` ({reason}): {message}")
                            .trim_end_matches([':', ' '])
                            .to_string(),
                    );
                }
                return Progress::Starting { why: Some(format!("pulling `{image}` failed, retrying ({reason})")) };
            }
            "InvalidImageName" | "CreateContainerConfigError" | "CreateContainerError" => {
                let message = if message.is_empty() { reason.to_string() } else { format!("{reason}: {message}") };
                let kind = if reason == "InvalidImageName" { Failure::ImagePull } else { Failure::Config };
                return failed(kind, format!("the container cannot start: {message}"));
            }
            "" => {}
            other => return Progress::Starting { why: Some(other.to_string()) },
        }
    }
    if let Some(condition) = condition(status, "PodScheduled")
        && condition["status"] == "False"
        && condition["reason"] == "Unschedulable"
    {
        let message = text(&condition["message"]).unwrap_or("no node fits");
        let since = timestamp(&condition["lastTransitionTime"]).or(created);
        if waited(since, now, graces.unschedulable) {
            return failed(Failure::Unschedulable, format!("no node can run the pod: {message}"));
        }
        return Progress::Starting { why: Some(format!("waiting for a node: {message}")) };
    }
    Progress::Starting { why: None }
}

fn failed(reason: Failure, message: String) -> Progress {
    Progress::Failed { reason, message }
}

/// The status of the container named `task` (else the first).
fn task_container(status: &Value) -> Option<&Value> {
    let containers = status["containerStatuses"].as_array()?;
    containers.iter().find(|c| c["name"] == CONTAINER).or_else(|| containers.first())
}

fn condition<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status["conditions"].as_array()?.iter().find(|condition| condition["type"] == kind)
}

fn limit_of(pod: &Value, resource: &str) -> Option<String> {
    let containers = pod["spec"]["containers"].as_array()?;
    let container = containers.iter().find(|c| c["name"] == CONTAINER).or_else(|| containers.first())?;
    container["resources"]["limits"][resource].as_str().map(str::to_string)
}

fn timestamp(value: &Value) -> Option<Timestamp> {
    value.as_str()?.parse().ok()
}

fn text(value: &Value) -> Option<&str> {
    value.as_str().map(str::trim).filter(|text| !text.is_empty())
}

/// Whether a wait that began at `since` (unknown: not yet) is longer than `grace`.
fn waited(since: Option<Timestamp>, now: Timestamp, grace: Duration) -> bool {
    since.is_some_and(|since| now.duration_since(since).as_secs_f64() > grace.as_secs_f64())
}

/// When an ended pod (phase `Succeeded` or `Failed`) ended: its task container's
/// finish, else the last change of its conditions, else its creation. `None`
/// while it has not ended.
pub fn finished_at(pod: &Value) -> Option<Timestamp> {
    let status = &pod["status"];
    if !matches!(status["phase"].as_str(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let finished = task_container(status).and_then(|c| timestamp(&c["state"]["terminated"]["finishedAt"]));
    let changed = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|condition| timestamp(&condition["lastTransitionTime"]))
        .max();
    finished.or(changed).or_else(|| timestamp(&pod["metadata"]["creationTimestamp"]))
}
