//! The Kubernetes executor's pure half: what pod a task attempt becomes.
//!
//! [`pod`] builds the pod (JSON in the Kubernetes API's own shape) from the
//! task's `kubernetes:` settings, the deployment's `[kubernetes]` configuration
//! (default image, namespace, node pools) and an optional pod template. Labels
//! carry the DAG, run, task, map index and try — the try number is the attempt's
//! fencing token — so a restarted executor finds the pods of its attempts.
//! [`yaml`] prints it for people (`updraft tasks render --pod`).

pub mod executor;
pub mod status;
pub mod yaml;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use updraft_core::kubernetes::{PodSettings, Toleration};

/// Label keys on every pod Updraft makes.
pub mod labels {
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const DAG: &str = "updraft.dev/dag";
    pub const TASK: &str = "updraft.dev/task";
    /// A hash of the run id (a run id is not a valid label value).
    pub const RUN: &str = "updraft.dev/run";
    /// A mapped instance's index (absent on others).
    pub const MAP_INDEX: &str = "updraft.dev/map-index";
    /// The try number: the attempt's fencing token.
    pub const TRY: &str = "updraft.dev/try";
}

/// Annotations holding the exact ids (labels hold shortened, valid forms).
pub mod annotations {
    pub const DAG_ID: &str = "updraft.dev/dag-id";
    pub const RUN_ID: &str = "updraft.dev/run-id";
    pub const TASK_ID: &str = "updraft.dev/task-id";
}

/// The container running the task (a pod template's container of this name, or
/// its first, receives the task's settings).
pub const CONTAINER: &str = "task";

/// `[kubernetes]` of `updraft.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeConfig {
    pub namespace: String,
    /// For tasks that name none.
    pub image: String,
    pub service_account: Option<String>,
    pub node_pools: BTreeMap<String, NodePool>,
    /// How long a pod may take to stop after it is asked to.
    pub kill_grace: Duration,
    /// How long waits that may resolve by themselves (image pulls, scheduling)
    /// last before they fail the attempt.
    pub graces: status::Graces,
    /// How long a failed pod is kept for debugging before it is deleted.
    pub keep_failed: Duration,
}

impl Default for KubeConfig {
    fn default() -> Self {
        KubeConfig {
            namespace: "default".to_string(),
            image: "python:3.12-slim".to_string(),
            service_account: None,
            node_pools: BTreeMap::new(),
            kill_grace: Duration::from_secs(30),
            graces: status::Graces::default(),
            keep_failed: Duration::from_secs(3600),
        }
    }
}

/// What a node pool name stands for: where its nodes are and what they allow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePool {
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

/// One attempt to run as a pod.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    pub dag_id: &'a str,
    pub run_id: &'a str,
    pub task_id: &'a str,
    /// -1: not a mapped instance.
    pub map_index: i32,
    pub try_number: u32,
    /// The program and its arguments, rendered.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub settings: &'a PodSettings,
    pub timeout: Option<Duration>,
    /// The pod template's contents, if the settings name one.
    pub template: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    #[error("node pool `{name}` is not configured ({known})")]
    UnknownNodePool { name: String, known: String },
    #[error("the pod template is not a pod: {0}")]
    BadTemplate(String),
}

/// The pod's name: readable ids, then a hash of the whole attempt, at most 63
/// characters and a valid DNS label.
pub fn pod_name(attempt: &Attempt<'_>) -> String {
    name_of(attempt.dag_id, attempt.run_id, attempt.task_id, attempt.map_index, attempt.try_number)
}

/// [`pod_name`] from the attempt's ids alone (recovery has no rendered command).
pub fn name_of(dag_id: &str, run_id: &str, task_id: &str, map_index: i32, try_number: u32) -> String {
    let hash = short_hash(&format!("{dag_id}\u{0}{run_id}\u{0}{task_id}\u{0}{map_index}\u{0}{try_number}"));
    let readable = label_value(&format!("{dag_id}-{task_id}")).to_ascii_lowercase().replace(['_', '.'], "-");
    let readable: String = readable.chars().take(63 - 1 - hash.len() - 4).collect();
    let readable = readable.trim_matches('-');
    format!("{readable}-{hash}-t{}", try_number.min(99))
}

/// The labels that find an attempt's pod.
pub fn pod_labels(attempt: &Attempt<'_>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (labels::MANAGED_BY.to_string(), "updraft".to_string()),
        (labels::DAG.to_string(), label_value(attempt.dag_id)),
        (labels::TASK.to_string(), label_value(attempt.task_id)),
        (labels::RUN.to_string(), short_hash(attempt.run_id)),
        (labels::TRY.to_string(), attempt.try_number.to_string()),
    ]);
    // Only mapped instances have one (`-1` is not a valid label value).
    if attempt.map_index >= 0 {
        labels.insert(labels::MAP_INDEX.to_string(), attempt.map_index.to_string());
    }
    labels
}

/// The pod for an attempt.
pub fn pod(attempt: &Attempt<'_>, config: &KubeConfig) -> Result<Value, PodError> {
    let settings = attempt.settings;
    let pool = match &settings.node_pool {
        Some(name) => Some(config.node_pools.get(name).ok_or_else(|| PodError::UnknownNodePool {
            name: name.clone(),
            known: if config.node_pools.is_empty() {
                "updraft.toml has no [kubernetes.node_pools]".to_string()
            } else {
                format!("configured: {}", config.node_pools.keys().cloned().collect::<Vec<_>>().join(", "))
            },
        })?),
        None => None,
    };
    let mut pod = match &attempt.template {
        Some(Value::Object(template)) => Value::Object(template.clone()),
        Some(other) => return Err(PodError::BadTemplate(format!("expected a mapping, found {}", kind(other)))),
        None => json!({}),
    };
    let object = pod.as_object_mut().expect("an object");
    object.insert("apiVersion".into(), json!("v1"));
    object.insert("kind".into(), json!("Pod"));

    // Metadata: the template's, the task's, then ours (which must hold).
    let metadata = object_at(object, "metadata")?;
    metadata.insert("name".into(), json!(pod_name(attempt)));
    metadata.insert("namespace".into(), json!(config.namespace));
    let mut pod_labels_map = string_map(metadata.get("labels"));
    pod_labels_map.extend(settings.labels.clone());
    pod_labels_map.extend(pod_labels(attempt));
    metadata.insert("labels".into(), json!(pod_labels_map));
    let mut annotations_map = string_map(metadata.get("annotations"));
    annotations_map.extend(settings.annotations.clone());
    annotations_map.insert(annotations::DAG_ID.into(), attempt.dag_id.into());
    annotations_map.insert(annotations::RUN_ID.into(), attempt.run_id.into());
    annotations_map.insert(annotations::TASK_ID.into(), attempt.task_id.into());
    metadata.insert("annotations".into(), json!(annotations_map));

    let spec = object_at(object, "spec")?;
    // An attempt is one try: Updraft retries, not the kubelet.
    spec.insert("restartPolicy".into(), json!("Never"));
    spec.insert("terminationGracePeriodSeconds".into(), json!(config.kill_grace.as_secs()));
    if let Some(timeout) = attempt.timeout {
        // The executor deletes the pod at its timeout; this is the backstop if it cannot.
        spec.insert("activeDeadlineSeconds".into(), json!(timeout.as_secs() + config.kill_grace.as_secs() + 60));
    }
    if let Some(account) = settings.service_account.as_ref().or(config.service_account.as_ref()) {
        spec.insert("serviceAccountName".into(), json!(account));
    }
    let mut selector = string_map(spec.get("nodeSelector"));
    if let Some(pool) = pool {
        selector.extend(pool.node_selector.clone());
    }
    selector.extend(settings.node_selector.clone());
    if !selector.is_empty() {
        spec.insert("nodeSelector".into(), json!(selector));
    }
    let mut tolerations: Vec<Value> = spec.get("tolerations").and_then(Value::as_array).cloned().unwrap_or_default();
    for toleration in pool.iter().flat_map(|pool| &pool.tolerations).chain(&settings.tolerations) {
        let value = toleration_json(toleration);
        if !tolerations.contains(&value) {
            tolerations.push(value);
        }
    }
    if !tolerations.is_empty() {
        spec.insert("tolerations".into(), Value::Array(tolerations));
    }
    if let Some(affinity) = &settings.affinity {
        spec.insert("affinity".into(), affinity.clone());
    }
    if !settings.volumes.is_empty() {
        let mut volumes: Vec<Value> = spec.get("volumes").and_then(Value::as_array).cloned().unwrap_or_default();
        volumes.extend(settings.volumes.iter().cloned());
        spec.insert("volumes".into(), Value::Array(volumes));
    }

    // The task's container: the template's `task` container, its first, or a new one.
    let containers = spec.entry("containers").or_insert_with(|| json!([]));
    let Some(containers) = containers.as_array_mut() else {
        return Err(PodError::BadTemplate("`spec.containers` is not a list".to_string()));
    };
    let at = containers
        .iter()
        .position(|container| container.get("name").and_then(Value::as_str) == Some(CONTAINER))
        .or(if containers.is_empty() { None } else { Some(0) });
    let at = match at {
        Some(at) => at,
        None => {
            containers.push(json!({}));
            containers.len() - 1
        }
    };
    let Some(container) = containers[at].as_object_mut() else {
        return Err(PodError::BadTemplate("a container is not a mapping".to_string()));
    };
    container.insert("name".into(), json!(CONTAINER));
    let image = settings
        .image
        .clone()
        .or_else(|| container.get("image").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| config.image.clone());
    container.insert("image".into(), json!(image));
    container.insert("command".into(), json!(attempt.command));
    container.remove("args");
    let mut env: Vec<Value> = container.get("env").and_then(Value::as_array).cloned().unwrap_or_default();
    for (name, value) in &attempt.env {
        env.retain(|entry| entry.get("name").and_then(Value::as_str) != Some(name));
        env.push(json!({"name": name, "value": value}));
    }
    if !env.is_empty() {
        container.insert("env".into(), Value::Array(env));
    }
    if !settings.env_from_secrets.is_empty() {
        let mut from: Vec<Value> = container.get("envFrom").and_then(Value::as_array).cloned().unwrap_or_default();
        from.extend(settings.env_from_secrets.iter().map(|secret| json!({"secretRef": {"name": secret}})));
        container.insert("envFrom".into(), Value::Array(from));
    }
    if !settings.resources.is_empty() {
        let resources = container.entry("resources").or_insert_with(|| json!({}));
        if let Some(resources) = resources.as_object_mut() {
            for (part, amounts) in [("requests", &settings.resources.requests), ("limits", &settings.resources.limits)]
            {
                if amounts.is_empty() {
                    continue;
                }
                let mut merged = string_map(resources.get(part));
                merged.extend(amounts.clone());
                resources.insert(part.into(), json!(merged));
            }
        }
    }
    if !settings.volume_mounts.is_empty() {
        let mut mounts: Vec<Value> =
            container.get("volumeMounts").and_then(Value::as_array).cloned().unwrap_or_default();
        for mount in &settings.volume_mounts {
            let mut value = json!({"name": mount.name, "mountPath": mount.mount_path});
            if mount.read_only {
                value["readOnly"] = json!(true);
            }
            if let Some(sub_path) = &mount.sub_path {
                value["subPath"] = json!(sub_path);
            }
            mounts.push(value);
        }
        container.insert("volumeMounts".into(), Value::Array(mounts));
    }
    Ok(pod)
}

fn toleration_json(toleration: &Toleration) -> Value {
    let mut value = Map::new();
    if let Some(key) = &toleration.key {
        value.insert("key".into(), json!(key));
    }
    value.insert("operator".into(), json!(toleration.operator.as_deref().unwrap_or("Equal")));
    if let Some(v) = &toleration.value {
        value.insert("value".into(), json!(v));
    }
    if let Some(effect) = &toleration.effect {
        value.insert("effect".into(), json!(effect));
    }
    if let Some(seconds) = toleration.toleration_seconds {
        value.insert("tolerationSeconds".into(), json!(seconds));
    }
    Value::Object(value)
}

/// The mapping at `key`, made if missing.
fn object_at<'a>(object: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Map<String, Value>, PodError> {
    object
        .entry(key)
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| PodError::BadTemplate(format!("`{key}` is not a mapping")))
}

fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .map(|(key, value)| (key.clone(), value.as_str().map_or_else(|| value.to_string(), str::to_string)))
                .collect()
        })
        .unwrap_or_default()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A valid label value for an id: at most 63 of `[A-Za-z0-9._-]`, starting and
/// ending with a letter or digit; a longer or changed id ends with a hash of it.
pub fn label_value(id: &str) -> String {
    let cleaned: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed == id && id.len() <= 63 {
        return id.to_string();
    }
    let hash = short_hash(id);
    let keep: String = trimmed.chars().take(63 - hash.len() - 1).collect();
    let keep = keep.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if keep.is_empty() { hash } else { format!("{keep}-{hash}") }
}

/// Ten hex digits of SHA-256.
fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(5).map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_valid_for_the_api() {
        assert_eq!(label_value("etl"), "etl");
        let run = label_value("scheduled__2026-01-02T00:00:00+00:00");
        assert!(run.len() <= 63 && run.starts_with("scheduled__2026-01-02T00_00_00_00_00-"), "{run}");
        let long = label_value(&"x".repeat(100));
        assert!(long.len() <= 63, "{long}");
        let settings = PodSettings::default();
        let attempt = Attempt {
            dag_id: "Sales_Daily",
            run_id: "manual__1",
            task_id: "load.region_totals_for_every_country_and_every_day",
            map_index: 3,
            try_number: 2,
            command: vec!["true".into()],
            env: BTreeMap::new(),
            settings: &settings,
            timeout: None,
            template: None,
        };
        let name = pod_name(&attempt);
        assert!(name.len() <= 63, "{name}");
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{name}");
        assert!(name.starts_with("sales-daily-load-region") && name.ends_with("-t2"), "{name}");
        let other = Attempt { try_number: 3, ..attempt.clone() };
        assert_ne!(pod_name(&attempt), pod_name(&other));
    }
}
