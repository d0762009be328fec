//! The pods representative tasks become, as snapshots (YAML, as people read them);
//! CI also checks each against the Kubernetes API's schemas (kubernetes-validate).

use std::collections::BTreeMap;
use std::time::Duration;

use updraft_core::kubernetes::{PodSettings, Toleration};
use updraft_core::{Dag, TaskKind};
use updraft_kube::{Attempt, KubeConfig, NodePool, PodError, pod, yaml};

const DAG: &str = r#"
dag: sales_daily
defaults:
  executor: local
  kubernetes:
    image: europe-docker.pkg.dev/acme/data/etl:1.4.2
    service_account: etl-runner
    labels: {team: data}
    resources:
      requests: {cpu: 250m, memory: 512Mi}
tasks:
  extract:
    shell: "python -m etl.extract --date {{ ds }}"
    timeout: 30m
    env: {SOURCE: crm}
    kubernetes:
      env_from_secrets: [crm-credentials]
  aggregate:
    shell: "python -m etl.aggregate --date {{ ds }}"
    depends_on: extract
    kubernetes:
      node_pool: highmem
      resources:
        requests: {cpu: "4", memory: 48Gi, ephemeral-storage: 20Gi}
        limits: {memory: 60Gi}
      volumes:
        - {name: scratch, emptyDir: {sizeLimit: 20Gi}}
      volume_mounts:
        - {name: scratch, mount_path: /scratch}
  train:
    python:
      code: "import model; model.train()"
    depends_on: aggregate
    kubernetes:
      image: europe-docker.pkg.dev/acme/ml/trainer:2.0
      node_pool: gpu
      resources:
        limits: {nvidia.com/gpu: 1}
      tolerations:
        - {key: dedicated, operator: Equal, value: ml, effect: NoSchedule}
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              - matchExpressions:
                  - {key: cloud.google.com/gke-accelerator, operator: In, values: [nvidia-l4]}
      annotations: {cluster-autoscaler.kubernetes.io/safe-to-evict: "false"}
"#;

fn dag() -> Dag {
    let parsed = updraft_dagfile::parse_dag(DAG, "sales_daily.yaml");
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    parsed.dag.unwrap()
}

fn config() -> KubeConfig {
    KubeConfig {
        namespace: "data-pipelines".into(),
        image: "python:3.12-slim".into(),
        service_account: None,
        node_pools: BTreeMap::from([
            (
                "highmem".to_string(),
                NodePool {
                    node_selector: BTreeMap::from([("cloud.google.com/gke-nodepool".into(), "highmem".into())]),
                    tolerations: vec![Toleration {
                        key: Some("pool".into()),
                        operator: Some("Equal".into()),
                        value: Some("highmem".into()),
                        effect: Some("NoSchedule".into()),
                        toleration_seconds: None,
                    }],
                },
            ),
            (
                "gpu".to_string(),
                NodePool {
                    node_selector: BTreeMap::from([("cloud.google.com/gke-nodepool".into(), "gpu-l4".into())]),
                    tolerations: vec![Toleration {
                        key: Some("nvidia.com/gpu".into()),
                        operator: Some("Exists".into()),
                        value: None,
                        effect: Some("NoSchedule".into()),
                        toleration_seconds: None,
                    }],
                },
            ),
        ]),
        kill_grace: Duration::from_secs(30),
        ..KubeConfig::default()
    }
}

/// A first attempt of `d.t` running `true`.
fn bare(settings: &PodSettings, template: Option<serde_json::Value>) -> Attempt<'_> {
    Attempt {
        dag_id: "d",
        run_id: "r",
        task_id: "t",
        map_index: -1,
        try_number: 1,
        command: vec!["true".into()],
        env: BTreeMap::new(),
        settings,
        timeout: None,
        template,
    }
}

fn pod_of(dag: &Dag, task_id: &str) -> Result<serde_json::Value, PodError> {
    let task = dag.task(task_id).unwrap();
    let command = match &task.kind {
        TaskKind::Shell { command } => {
            vec!["/bin/sh".to_string(), "-c".to_string(), command.replace("{{ ds }}", "2026-01-02")]
        }
        TaskKind::Python(python) => vec!["python3".to_string(), "-c".to_string(), python.code.clone().unwrap()],
        other => panic!("{other:?}"),
    };
    let mut env = task.env.clone();
    env.insert("UPDRAFT_TRY_NUMBER".into(), "1".into());
    let settings = task.kubernetes.clone().unwrap_or_default();
    let attempt = Attempt {
        dag_id: "sales_daily",
        run_id: "scheduled__2026-01-02T02:00:00+00:00",
        task_id,
        map_index: -1,
        try_number: 1,
        command,
        env,
        settings: &settings,
        timeout: task.timeout.map(|timeout| timeout.to_std()),
        template: None,
    };
    pod(&attempt, &config())
}

#[test]
fn pods_of_tasks_on_different_node_pools() {
    let dag = dag();
    for task in ["extract", "aggregate", "train"] {
        let pod = pod_of(&dag, task).unwrap();
        insta::assert_snapshot!(format!("pod_{task}"), yaml::to_yaml(&pod));
    }
}

#[test]
fn a_pod_template_is_the_base_the_settings_go_into() {
    let template = serde_json::json!({
        "metadata": {"labels": {"cost-center": "42"}},
        "spec": {
            "priorityClassName": "batch-low",
            "containers": [
                {"name": "sidecar", "image": "proxy:1"},
                {"name": "task", "image": "ignored:0", "securityContext": {"runAsNonRoot": true}},
            ],
        },
    });
    let settings = PodSettings { image: Some("etl:1".into()), ..Default::default() };
    let attempt = Attempt { map_index: 2, try_number: 3, ..bare(&settings, Some(template)) };
    let pod = pod(&attempt, &config()).unwrap();
    insta::assert_snapshot!("pod_from_template", yaml::to_yaml(&pod));
}

#[test]
fn an_unknown_node_pool_names_those_there_are() {
    let settings = PodSettings { node_pool: Some("huge".into()), ..Default::default() };
    let attempt = bare(&settings, None);
    assert_eq!(
        pod(&attempt, &config()).unwrap_err().to_string(),
        "node pool `huge` is not configured (configured: gpu, highmem)"
    );
}

#[test]
fn bad_settings_are_errors_with_their_position() {
    let text = "dag: d\ntasks:\n  t:\n    shell: 'true'\n    executor: kubernetis\n    kubernetes:\n      resources:\n        requests: {memory: 4GG, cpu: 2}\n        limits: {cpu: 1}\n      tolerations:\n        - {key: a, operator: Exist}\n      env_from_secrets: [My_Secret]\n  h:\n    http: {url: 'http://x'}\n    executor: kubernetes\n";
    let parsed = updraft_dagfile::parse_dag(text, "d.yaml");
    let index = updraft_dagfile::yaml::LineIndex::new(text);
    let messages: Vec<String> = parsed
        .diagnostics
        .iter()
        .map(|d| {
            let (line, column) = index.line_col(d.span.start);
            format!("{line}:{column}: {}", d.message)
        })
        .collect();
    insta::assert_snapshot!("bad_settings", messages.join("\n"));
}

/// Every pod above passes the Kubernetes API's own schemas (kubernetes-validate
/// from PyPI, strict: no unknown fields), so the API server would take it.
#[test]
fn pods_pass_the_kubernetes_schemas() {
    let Ok(validate) = std::env::var("UPDRAFT_KUBERNETES_VALIDATE") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "kubernetes-validate is missing under CI (.ci/run installs it)"
        );
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipping: set UPDRAFT_KUBERNETES_VALIDATE to kubernetes-validate (PyPI)");
        }
        return;
    };
    let dir = std::env::temp_dir().join(format!("updraft-pods-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dag = dag();
    let mut files = Vec::new();
    for task in ["extract", "aggregate", "train"] {
        let path = dir.join(format!("{task}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&pod_of(&dag, task).unwrap()).unwrap()).unwrap();
        files.push(path);
    }
    let run = |files: &[std::path::PathBuf]| {
        let output = std::process::Command::new(&validate).arg("--strict").args(files).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    };
    let (ok, text) = run(&files);
    assert!(ok, "{text}");
    assert_eq!(text.matches(" passed for resource pod/").count(), 3, "{text}");
    // The check can fail: a field the API does not know is refused.
    let mut wrong = pod_of(&dag, "extract").unwrap();
    wrong["spec"]["restartPolicies"] = serde_json::json!("Never");
    let path = dir.join("wrong.json");
    std::fs::write(&path, wrong.to_string()).unwrap();
    let (ok, text) = run(&[path]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "{text}");
}

#[test]
fn a_template_that_is_not_a_pod_is_refused() {
    let settings = PodSettings::default();
    let attempt = |template: serde_json::Value| bare(&settings, Some(template));
    let error = |template| pod(&attempt(template), &config()).unwrap_err().to_string();
    assert_eq!(
        error(serde_json::json!(["a", "list"])),
        "the pod template is not a pod: expected a mapping, found a list"
    );
    assert_eq!(
        error(serde_json::json!({"spec": {"containers": "task"}})),
        "the pod template is not a pod: `spec.containers` is not a list"
    );
    assert_eq!(error(serde_json::json!({"metadata": 3})), "the pod template is not a pod: `metadata` is not a mapping");
}
