//! Kubernetes, as far as this version goes: pod settings in DAG files, checked
//! with positions, and `tasks render --pod` printing the pod an attempt becomes.

use crate::project;

const DAG: &str = "dag: sales
defaults:
  kubernetes:
    image: etl:1.4
    resources: {requests: {cpu: 250m, memory: 512Mi}}
tasks:
  aggregate:
    shell: 'python -m etl.aggregate --date {{ ds }}'
    env: {REGION: eu}
    kubernetes:
      node_pool: highmem
      resources: {requests: {memory: 48Gi}}
  report:
    python: {code: 'print(1)'}
    kubernetes: {node_pool: nowhere}
";

const CONFIG: &str = "[kubernetes]
namespace = \"data\"
service_account = \"updraft-task\"

[kubernetes.node_pools.highmem]
node_selector = { \"cloud.google.com/gke-nodepool\" = \"highmem\" }
tolerations = [{ key = \"pool\", operator = \"Equal\", value = \"highmem\", effect = \"NoSchedule\" }]
";

#[test]
fn tasks_render_prints_the_fields_and_the_pod() {
    let p = project();
    p.write("updraft.toml", CONFIG);
    p.dag("sales.yaml", DAG);
    let fields = p.run(&["tasks", "render", "sales", "aggregate", "--date", "2026-01-02"]);
    assert_eq!(fields.code, 0, "{}", fields.stderr);
    assert!(fields.stdout.contains("# shell\npython -m etl.aggregate --date 2026-01-02\n"), "{}", fields.stdout);

    let pod = p.run(&["tasks", "render", "sales", "aggregate", "--date", "2026-01-02", "--pod"]);
    assert_eq!(pod.code, 0, "{}", pod.stderr);
    for expected in [
        "kind: Pod\n",
        "  namespace: data\n",
        "    - python -m etl.aggregate --date 2026-01-02\n",
        "    - name: REGION\n      value: eu\n",
        "    image: etl:1.4\n",
        "        cpu: 250m\n        memory: 48Gi\n",
        "  nodeSelector:\n    cloud.google.com/gke-nodepool: highmem\n",
        "  serviceAccountName: updraft-task\n",
        "  - effect: NoSchedule\n    key: pool\n    operator: Equal\n    value: highmem\n",
    ] {
        assert!(pod.stdout.contains(expected), "missing {expected:?} in\n{}", pod.stdout);
    }
    let json = p.run(&["tasks", "render", "sales", "aggregate", "--pod", "-o", "json"]);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["spec"]["restartPolicy"], "Never");

    let unknown = p.run(&["tasks", "render", "sales", "report", "--pod"]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("task `report`: node pool `nowhere` is not configured (configured: highmem)"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn pod_settings_are_checked_where_they_are_written() {
    let p = project();
    p.dag(
        "bad.yaml",
        "dag: bad\ntasks:\n  t:\n    shell: 'true'\n    executor: kubernetes\n    kubernetes:\n      resources:\n        limits: {memory: 4GG}\n",
    );
    let output = p.run(&["dags", "validate"]);
    assert_eq!(output.code, 1);
    assert!(output.stderr.contains("bad.yaml:5:15: `executor: kubernetes` is not available yet"), "{}", output.stderr);
    assert!(
        output.stderr.contains("bad.yaml:8:26: `kubernetes.resources.limits.memory`: `4GG`: unknown unit `GG`"),
        "{}",
        output.stderr
    );
}
