//! A task's pod settings (`kubernetes:` in the DAG file and in `defaults`), as
//! written: the Kubernetes executor turns them into a pod (`updraft-kube`).
//!
//! What Kubernetes itself defines loosely (affinity, volumes) is kept as JSON in
//! the API's own shape and checked by the API server; what people get wrong and
//! can be checked here (quantities, names, toleration operators) is checked at
//! parse time with the file's line and column.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a task's attempts run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Executor {
    /// A process of the runner that claimed it (standalone, worker).
    #[default]
    Local,
    /// One pod per attempt.
    Kubernetes,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `requests` and `limits`: resource name (`cpu`, `memory`,
    /// `ephemeral-storage`, `nvidia.com/gpu`, ...) to quantity.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// A name `updraft.toml` maps to node selectors and tolerations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_pool: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// The pod's `affinity`, in the API's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Secrets whose keys become environment variables (`envFrom`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from_secrets: Vec<String>,
    /// The pod's `volumes`, in the API's shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// A file (relative to the DAG file's folder) with a base pod the settings
    /// are merged into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<String>,
}

impl PodSettings {
    /// `self` over `base` (a task's settings over `defaults`): a field set here
    /// wins; maps are merged key by key; resources resource by resource.
    pub fn over(mut self, base: &PodSettings) -> PodSettings {
        fn merge(own: &mut BTreeMap<String, String>, base: &BTreeMap<String, String>) {
            for (key, value) in base {
                own.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        self.image = self.image.or_else(|| base.image.clone());
        merge(&mut self.resources.requests, &base.resources.requests);
        merge(&mut self.resources.limits, &base.resources.limits);
        self.node_pool = self.node_pool.or_else(|| base.node_pool.clone());
        merge(&mut self.node_selector, &base.node_selector);
        if self.tolerations.is_empty() {
            self.tolerations = base.tolerations.clone();
        }
        self.affinity = self.affinity.or_else(|| base.affinity.clone());
        self.service_account = self.service_account.or_else(|| base.service_account.clone());
        if self.env_from_secrets.is_empty() {
            self.env_from_secrets = base.env_from_secrets.clone();
        }
        if self.volumes.is_empty() {
            self.volumes = base.volumes.clone();
        }
        if self.volume_mounts.is_empty() {
            self.volume_mounts = base.volume_mounts.clone();
        }
        merge(&mut self.labels, &base.labels);
        merge(&mut self.annotations, &base.annotations);
        self.pod_template = self.pod_template.or_else(|| base.pod_template.clone());
        self
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toleration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Equal` (default) or `Exists`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; none: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// A Kubernetes quantity's value (`500m` is 0.5, `4Gi` is 4 × 2³⁰), checked as
/// the API server parses it: a decimal number, then one suffix — binary (`Ki` ...
/// `Ei`), decimal (`n`, `u`, `m`, `k`, `M`, `G`, `T`, `P`, `E`) or an exponent
/// (`e3`, `E-2`).
pub fn quantity(text: &str) -> Result<f64, String> {
    let digits_end = text
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '+' || *c == '-'))))
        .map_or(text.len(), |(i, _)| i);
    let (number, suffix) = text.split_at(digits_end);
    let unsigned = number.trim_start_matches(['+', '-']);
    let value = match unsigned.parse::<f64>() {
        Ok(value) if unsigned.chars().any(|c| c.is_ascii_digit()) => value,
        _ => return Err("expected a number with an optional unit, like `500m`, `2`, `4Gi` or `1.5G`".to_string()),
    };
    if number.starts_with('-') {
        return Err("must not be negative".to_string());
    }
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        other => match other.strip_prefix(['e', 'E']).and_then(|exponent| exponent.parse::<i32>().ok()) {
            Some(exponent) => 10f64.powi(exponent),
            None => {
                let hint = match other {
                    "K" => " (kilo is `k`; kibi is `Ki`)",
                    "gb" | "GB" | "Gb" => " (use `G` or `Gi`)",
                    "mb" | "MB" | "Mb" => " (use `M` or `Mi`)",
                    _ => "",
                };
                return Err(format!(
                    "unknown unit `{other}`: use Ki, Mi, Gi, Ti, Pi, Ei, or m, k, M, G, T, P, E{hint}"
                ));
            }
        },
    };
    Ok(value * scale)
}

/// Checks a DNS-1123 label or subdomain (names of secrets, service accounts,
/// volumes, node pools): lower-case letters, digits, `-` and `.`, at most 253.
pub fn check_name(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= 253
        && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err("must be lower-case letters, digits, `-` and `.`, starting and ending with a letter or digit".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_as_the_api_server_reads_them() {
        for good in ["500m", "2", "0.5", "4Gi", "1.5G", "128974848", "129e6", "123Mi", "1E3", "100k", "+1"] {
            assert!(quantity(good).is_ok(), "{good}");
        }
        assert_eq!(quantity("500m"), Ok(0.5));
        assert_eq!(quantity("4Gi"), Ok(4.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("129e6"), Ok(129e6));
        assert!(quantity("4GG").unwrap_err().starts_with("unknown unit `GG`"));
        assert!(quantity("4GB").unwrap_err().ends_with("(use `G` or `Gi`)"));
        assert!(quantity("1K").unwrap_err().contains("kilo is `k`"));
        assert!(quantity("").is_err());
        assert!(quantity("Gi").is_err());
        assert!(quantity("1.2.3").is_err());
        assert!(quantity("1e").is_err());
        assert_eq!(quantity("-1"), Err("must not be negative".to_string()));
    }

    #[test]
    fn a_task_over_defaults() {
        let mut base =
            PodSettings { image: Some("python:3.12".into()), node_pool: Some("standard".into()), ..Default::default() };
        base.resources.requests.insert("cpu".into(), "500m".into());
        base.resources.requests.insert("memory".into(), "1Gi".into());
        base.labels.insert("team".into(), "data".into());
        let mut own = PodSettings { node_pool: Some("highmem".into()), ..Default::default() };
        own.resources.requests.insert("memory".into(), "32Gi".into());
        let merged = own.over(&base);
        assert_eq!(merged.image.as_deref(), Some("python:3.12"));
        assert_eq!(merged.node_pool.as_deref(), Some("highmem"));
        assert_eq!(merged.resources.requests["cpu"], "500m");
        assert_eq!(merged.resources.requests["memory"], "32Gi");
        assert_eq!(merged.labels["team"], "data");
        assert!(check_name("my-secret.v1").is_ok() && check_name("My_Secret").is_err());
    }
}
