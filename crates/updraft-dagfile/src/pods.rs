//! `kubernetes:` (a task's pod settings) and `executor:`, read with every problem
//! placed at its value.

use std::collections::BTreeMap;

use updraft_core::kubernetes::{Executor, PodSettings, Toleration, VolumeMount, check_name, quantity};
use updraft_core::suggest::did_you_mean;

use crate::parse::FileParser;
use crate::yaml::{Node, Value};

pub(crate) const POD_FIELDS: &[&str] = &[
    "image",
    "resources",
    "node_pool",
    "node_selector",
    "tolerations",
    "affinity",
    "service_account",
    "env_from_secrets",
    "volumes",
    "volume_mounts",
    "labels",
    "annotations",
    "pod_template",
];
const TOLERATION_FIELDS: &[&str] = &["key", "operator", "value", "effect", "toleration_seconds"];
const MOUNT_FIELDS: &[&str] = &["name", "mount_path", "read_only", "sub_path"];

impl FileParser<'_> {
    pub(crate) fn executor(&mut self, node: &Node) -> Option<Executor> {
        match self.string(node, "executor")? {
            "local" => Some(Executor::Local),
            "kubernetes" => Some(Executor::Kubernetes),
            other => {
                let hint = did_you_mean(other, ["local", "kubernetes"])
                    .map_or(String::new(), |suggestion| format!(", did you mean `{suggestion}`?"));
                self.error(
                    node.span,
                    format!("`executor`: unknown executor `{other}` (use `local` or `kubernetes`){hint}"),
                );
                None
            }
        }
    }

    pub(crate) fn pod_settings(&mut self, node: &Node) -> Option<PodSettings> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.span,
                format!(
                    "`kubernetes`: expected a mapping of pod settings (image, resources, ...), found {}",
                    node.kind()
                ),
            );
            return None;
        };
        let fields = self.fields(entries, POD_FIELDS, &[]);
        let mut ordered: Vec<_> = fields.into_iter().collect();
        ordered.sort_by_key(|(_, (key, _))| key.span.start);
        let mut pod = PodSettings::default();
        for (name, (_, value)) in ordered {
            let field = format!("kubernetes.{name}");
            match name {
                "image" => pod.image = self.non_empty(value, &field),
                "resources" => self.resources(value, &mut pod),
                "node_pool" => pod.node_pool = self.k8s_name(value, &field),
                "node_selector" => pod.node_selector = self.string_map(value, &field),
                "tolerations" => pod.tolerations = self.tolerations(value),
                "affinity" => pod.affinity = self.api_object(value, &field),
                "service_account" => pod.service_account = self.k8s_name(value, &field),
                "env_from_secrets" => pod.env_from_secrets = self.names(value, &field),
                "volumes" => pod.volumes = self.volumes(value),
                "volume_mounts" => pod.volume_mounts = self.volume_mounts(value),
                "labels" => pod.labels = self.string_map(value, &field),
                "annotations" => pod.annotations = self.string_map(value, &field),
                _ => pod.pod_template = self.non_empty(value, &field),
            }
        }
        Some(pod)
    }

    fn resources(&mut self, node: &Node, pod: &mut PodSettings) {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.span,
                format!("`kubernetes.resources`: expected `requests` and/or `limits`, found {}", node.kind()),
            );
            return;
        };
        let fields = self.fields(entries, &["requests", "limits"], &[]);
        for (name, (_, value)) in fields {
            let field = format!("kubernetes.resources.{name}");
            let Value::Map(amounts) = &value.value else {
                self.error(
                    value.span,
                    format!("`{field}`: expected a mapping like `cpu: 500m`, found {}", value.kind()),
                );
                continue;
            };
            let mut out = BTreeMap::new();
            for (resource, amount) in amounts {
                let Some(resource) = resource.scalar_text() else {
                    self.error(resource.span, format!("`{field}`: resource names must be text"));
                    continue;
                };
                let Some(text) = amount.scalar_text().filter(|_| !matches!(amount.value, Value::Bool(_))) else {
                    self.error(
                        amount.span,
                        format!("`{field}.{resource}`: expected a quantity, found {}", amount.kind()),
                    );
                    continue;
                };
                match quantity(&text) {
                    Ok(_) => {
                        out.insert(resource, text);
                    }
                    Err(problem) => self.error(amount.span, format!("`{field}.{resource}`: `{text}`: {problem}")),
                }
            }
            if name == "requests" {
                pod.resources.requests = out;
            } else {
                pod.resources.limits = out;
            }
        }
        for (resource, limit) in &pod.resources.limits {
            if let Some(request) = pod.resources.requests.get(resource)
                && let (Ok(request), Ok(limit)) = (quantity(request), quantity(limit))
                && request > limit
            {
                self.error(node.span, format!("`kubernetes.resources`: the {resource} request is above its limit"));
            }
        }
    }

    fn k8s_name(&mut self, node: &Node, field: &str) -> Option<String> {
        let text = self.non_empty(node, field)?;
        match check_name(&text) {
            Ok(()) => Some(text),
            Err(problem) => {
                self.error(node.span, format!("`{field}`: `{text}` {problem}"));
                None
            }
        }
    }

    fn names(&mut self, node: &Node, field: &str) -> Vec<String> {
        let Value::Seq(items) = &node.value else {
            self.error(node.span, format!("`{field}`: expected a list of names, found {}", node.kind()));
            return Vec::new();
        };
        items.iter().filter_map(|item| self.k8s_name(item, field)).collect()
    }

    fn string_map(&mut self, node: &Node, field: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Value::Map(entries) = &node.value else {
            if node.value != Value::Null {
                self.error(node.span, format!("`{field}`: expected a mapping of names to text, found {}", node.kind()));
            }
            return out;
        };
        for (key, value) in entries {
            match (key.scalar_text(), value.scalar_text()) {
                (Some(key), Some(value)) => {
                    out.insert(key, value);
                }
                (None, _) => self.error(key.span, format!("`{field}`: keys must be text")),
                (Some(key), None) => {
                    self.error(value.span, format!("`{field}.{key}`: expected text, found {}", value.kind()));
                }
            }
        }
        out
    }

    /// A mapping kept as JSON in the API's shape (`affinity`).
    fn api_object(&mut self, node: &Node, field: &str) -> Option<serde_json::Value> {
        if !matches!(node.value, Value::Map(_)) {
            self.error(
                node.span,
                format!("`{field}`: expected a mapping in the Kubernetes API's shape, found {}", node.kind()),
            );
            return None;
        }
        Some(node.to_json())
    }

    /// The entries of each mapping in a list (`tolerations`, `volumes`, ...);
    /// what is not a list, or an item that is not a mapping, is reported.
    fn list_of_maps<'n>(&mut self, node: &'n Node, field: &str, example: &str) -> Vec<(&'n Node, &'n [(Node, Node)])> {
        let Value::Seq(items) = &node.value else {
            self.error(node.span, format!("`{field}`: expected a list, found {}", node.kind()));
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            match &item.value {
                Value::Map(entries) => out.push((item, entries.as_slice())),
                _ => self
                    .error(item.span, format!("`{field}`: expected a mapping like `{example}`, found {}", item.kind())),
            }
        }
        out
    }

    fn tolerations(&mut self, node: &Node) -> Vec<Toleration> {
        let mut out = Vec::new();
        for (item, entries) in
            self.list_of_maps(node, "kubernetes.tolerations", "{key: dedicated, value: gpu, effect: NoSchedule}")
        {
            let fields = self.fields(entries, TOLERATION_FIELDS, &[]);
            let mut toleration = Toleration::default();
            for (name, (_, value)) in fields {
                let field = format!("kubernetes.tolerations.{name}");
                match name {
                    "key" => toleration.key = self.text(value, &field),
                    "value" => toleration.value = self.text(value, &field),
                    "operator" => toleration.operator = self.one_of(value, &field, &["Equal", "Exists"]),
                    "effect" => {
                        toleration.effect = self.one_of(value, &field, &["NoSchedule", "PreferNoSchedule", "NoExecute"])
                    }
                    _ => toleration.toleration_seconds = self.integer(value, &field).map(i64::from),
                }
            }
            if toleration.operator.as_deref() == Some("Exists") && toleration.value.is_some() {
                self.error(item.span, "`kubernetes.tolerations`: `operator: Exists` takes no `value`");
            }
            out.push(toleration);
        }
        out
    }

    fn one_of(&mut self, node: &Node, field: &str, allowed: &[&str]) -> Option<String> {
        let text = self.string(node, field)?;
        if allowed.contains(&text) {
            return Some(text.to_string());
        }
        let hint = did_you_mean(text, allowed.iter().copied())
            .map_or(String::new(), |suggestion| format!(", did you mean `{suggestion}`?"));
        self.error(node.span, format!("`{field}`: `{text}` is not one of {}{hint}", allowed.join(", ")));
        None
    }

    fn volumes(&mut self, node: &Node) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for (item, entries) in
            self.list_of_maps(node, "kubernetes.volumes", "{name: data, persistentVolumeClaim: {claimName: data}}")
        {
            match entries.iter().find(|(key, _)| key.as_str() == Some("name")) {
                Some((_, name)) => {
                    if self.k8s_name(name, "kubernetes.volumes.name").is_some() {
                        out.push(item.to_json());
                    }
                }
                None => self.error(item.span, "`kubernetes.volumes`: each volume needs a `name`"),
            }
        }
        out
    }

    fn volume_mounts(&mut self, node: &Node) -> Vec<VolumeMount> {
        let mut out = Vec::new();
        for (item, entries) in self.list_of_maps(node, "kubernetes.volume_mounts", "{name: data, mount_path: /data}") {
            let fields = self.fields(entries, MOUNT_FIELDS, &[]);
            let mut mount = VolumeMount::default();
            for (name, (_, value)) in &fields {
                let field = format!("kubernetes.volume_mounts.{name}");
                match *name {
                    "name" => mount.name = self.k8s_name(value, &field).unwrap_or_default(),
                    "mount_path" => mount.mount_path = self.non_empty(value, &field).unwrap_or_default(),
                    "read_only" => mount.read_only = self.boolean(value, &field).unwrap_or(false),
                    _ => mount.sub_path = self.text(value, &field),
                }
            }
            if !fields.contains_key("name") || !fields.contains_key("mount_path") {
                self.error(item.span, "`kubernetes.volume_mounts`: each mount needs `name` and `mount_path`");
                continue;
            }
            out.push(mount);
        }
        out
    }
}
