//! Kubernetes: pod settings in DAG files, checked with positions; `tasks render
//! --pod` printing the pod an attempt becomes; and the executor end to end
//! against the stand-in API server (a test double, not Kubernetes).

use std::collections::BTreeMap;
use std::time::Duration;

use updraft_testkit::eventually;

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
        "dag: bad\ntasks:\n  t:\n    shell: 'true'\n    executor: kubernetes\n    kubernetes:\n      resources:\n        limits: {memory: 4GG}\n  call:\n    http: {url: 'http://127.0.0.1:1/'}\n    executor: kubernetes\n",
    );
    let output = p.run(&["dags", "validate"]);
    assert_eq!(output.code, 1);
    assert!(
        output.stderr.contains("bad.yaml:11:15: `executor: kubernetes` runs `shell` and `python` tasks in pods; a `http` task runs in the runner"),
        "{}",
        output.stderr
    );
    assert!(!output.stderr.contains("bad.yaml:5:"), "a shell task may run in a pod: {}", output.stderr);
    assert!(
        output.stderr.contains("bad.yaml:8:26: `kubernetes.resources.limits.memory`: `4GG`: unknown unit `GG`"),
        "{}",
        output.stderr
    );
}

/// A project whose Kubernetes is the stand-in API server of updraft-testkit
/// (not Kubernetes: it runs each pod's command as a local process).
fn with_standin(config: &str) -> (updraft_testkit::Project, updraft_testkit::kube::KubeStandIn) {
    let mut p = project();
    let standin = updraft_testkit::kube::KubeStandIn::start(p.path());
    p.write("kubeconfig", &standin.kubeconfig());
    let kubeconfig = p.path().join("kubeconfig").display().to_string();
    p.env("KUBECONFIG", &kubeconfig);
    p.write("updraft.toml", config);
    (p, standin)
}

fn finished_run(p: &updraft_testkit::Project, dag_id: &str, limit: Duration) -> serde_json::Value {
    eventually(limit, "the run to finish", || {
        let runs: serde_json::Value =
            serde_json::from_str(&p.run(&["dags", "list-runs", dag_id, "-o", "json"]).stdout).ok()?;
        matches!(runs[0]["state"].as_str(), Some("success" | "failed")).then(|| runs[0].clone())
    })
}

fn states(p: &updraft_testkit::Project, dag_id: &str, run_id: &str) -> BTreeMap<String, serde_json::Value> {
    let output = p.run(&["tasks", "states-for-dag-run", dag_id, run_id, "-o", "json"]);
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&output.stdout).unwrap_or_else(|_| panic!("{}", output.stderr));
    list.into_iter().map(|ti| (ti["task_id"].as_str().unwrap().to_string(), ti)).collect()
}

fn attempt_log(p: &updraft_testkit::Project, dag_id: &str, run_id: &str, task_id: &str, try_number: u32) -> String {
    let path = p.path().join(format!(".updraft/logs/{dag_id}/{run_id}/{task_id}/{try_number}.log"));
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

const PODS_DAG: &str = r#"dag: pods
tasks:
  hello:
    shell: 'echo "hello from $UPDRAFT_TASK_ID on {{ ds }}"; echo to-stderr >&2'
    executor: kubernetes
    kubernetes: {image: "busybox:1.36", resources: {limits: {memory: 64Mi}}}
  skipped:
    shell: 'exit 99'
    executor: kubernetes
    depends_on: [hello]
  flaky:
    shell: 'echo "try $UPDRAFT_TRY_NUMBER"; test "$UPDRAFT_TRY_NUMBER" = 2 || exit 3'
    executor: kubernetes
    retries: 1
    retry_delay: 1s
  slow:
    shell: 'trap "echo got TERM; exit 143" TERM; echo sleeping; sleep 30 & wait'
    executor: kubernetes
    timeout: 2s
  unpullable:
    shell: 'true'
    executor: kubernetes
    kubernetes: {image: unpullable/etl:9}
  here:
    shell: 'echo "local $UPDRAFT_ATTEMPT"'
"#;

/// The executor end to end against the stand-in API server: each attempt a pod,
/// its log streamed into the attempt's log, exit codes as for local processes,
/// a timeout deleting the pod with the grace, an image that never pulls failing
/// after its grace, the pod of a failed try deleted before the next try's is made.
#[test]
fn tasks_run_as_pods_against_the_stand_in_api_server() {
    let (p, standin) = with_standin(
        "[kubernetes]\nnamespace = \"e2e\"\nkill_grace = \"2s\"\nimage_pull_grace = \"2s\"\n[runner]\nkill_grace = \"2s\"\n",
    );
    p.dag("pods.yaml", PODS_DAG);
    let standalone = p.standalone();
    let run_id = p.run(&["dags", "trigger", "pods"]).stdout.trim().to_string();
    // Seconds of work: a missed watch event would show as a 60 s wait.
    let run = finished_run(&p, "pods", Duration::from_secs(30));
    assert_eq!(run["state"], "failed", "{run}");
    let tis = states(&p, "pods", &run_id);
    let state = |task: &str| tis[task]["state"].as_str().unwrap().to_string();
    assert_eq!(
        ["hello", "skipped", "flaky", "slow", "unpullable", "here"].map(state),
        ["success", "skipped", "success", "failed", "failed", "success"],
        "{tis:?}"
    );
    assert_eq!(tis["flaky"]["try_number"], 2);

    let hello = attempt_log(&p, "pods", &run_id, "hello", 1);
    assert!(hello.contains("created in namespace `e2e` (image `busybox:1.36`)"), "{hello}");
    assert!(hello.contains("hello from hello on 20"), "{hello}");
    assert!(hello.contains("to-stderr"), "{hello}");
    assert!(hello.contains(": exit code 0"), "{hello}");
    let flaky = attempt_log(&p, "pods", &run_id, "flaky", 1);
    assert!(flaky.contains("try 1") && flaky.contains("exit code 3"), "{flaky}");
    assert!(flaky.contains("is kept for 1h for debugging (`kubectl -n e2e describe pod"), "{flaky}");
    assert!(attempt_log(&p, "pods", &run_id, "flaky", 2).contains("try 2"));
    let slow = attempt_log(&p, "pods", &run_id, "slow", 1);
    assert!(slow.contains("sleeping") && slow.contains("got TERM"), "the pod had its grace: {slow}");
    assert!(slow.contains("timed out after 2s"), "{slow}");
    let unpullable = attempt_log(&p, "pods", &run_id, "unpullable", 1);
    assert!(unpullable.contains("pulling `unpullable/etl:9` failed, retrying (ErrImagePull)"), "{unpullable}");
    assert!(
        unpullable.contains("image not pulled: cannot pull image `unpullable/etl:9` (ErrImagePull)"),
        "{unpullable}"
    );
    // A local task beside them ran as a process of the runner.
    assert!(attempt_log(&p, "pods", &run_id, "here", 1).contains("local "));

    let created = standin.created();
    assert_eq!(created.len(), 6, "one pod per attempt of the pod tasks: {created:?}");
    let deleted = standin.deleted();
    let grace_of = |prefix: &str, suffix: &str| {
        deleted.iter().find(|(name, _)| name.starts_with(prefix) && name.ends_with(suffix)).map(|(_, grace)| *grace)
    };
    assert_eq!(grace_of("pods-hello-", "-t1"), Some(0), "a succeeded pod goes at once: {deleted:?}");
    assert_eq!(grace_of("pods-slow-", "-t1"), Some(2), "a timed-out pod is deleted with the grace: {deleted:?}");
    assert_eq!(grace_of("pods-flaky-", "-t1"), Some(2), "the failed try's pod made way for the next: {deleted:?}");
    assert_eq!(grace_of("pods-unpullable-", "-t1"), None, "a failed pod is kept: {deleted:?}");
    let (code, _) = standalone.interrupt();
    assert_eq!(code, Some(0));
}

/// `standalone` with the Kubernetes executor, once `long.work`'s pod (4 s, with
/// retries) has started; the run's id.
fn a_pod_running() -> (updraft_testkit::Project, updraft_testkit::kube::KubeStandIn, updraft_testkit::Service, String) {
    let (p, standin) = with_standin("[executor]\nkind = \"kubernetes\"\n");
    let started = p.path().join("started");
    p.dag(
        "long.yaml",
        &format!(
            "dag: long\ntasks:\n  work:\n    shell: 'echo started > {}; sleep 4; echo finished'\n    retries: 2\n",
            started.display()
        ),
    );
    let first = p.standalone();
    let run_id = p.run(&["dags", "trigger", "long"]).stdout.trim().to_string();
    eventually(Duration::from_secs(30), "the pod to start", || started.exists().then_some(()));
    (p, standin, first, run_id)
}

/// kill -9 of the runner while its pod runs: the restarted process adopts the
/// pod (same try, no second pod) and records its outcome.
#[test]
fn a_restarted_runner_adopts_its_running_pod() {
    let (p, standin, first, run_id) = a_pod_running();
    first.kill9();
    let second = p.standalone();
    let run = finished_run(&p, "long", Duration::from_secs(60));
    assert_eq!(run["state"], "success", "{run}");
    let tis = states(&p, "long", &run_id);
    assert_eq!(tis["work"]["try_number"], 1, "adopted, not retried: {tis:?}");
    assert_eq!(standin.created().len(), 1, "one pod: {:?}", standin.created());
    let log = attempt_log(&p, "long", &run_id, "work", 1);
    assert!(log.contains("was already there (made by a runner that stopped)"), "{log}");
    assert!(log.contains("finished"), "{log}");
    let (code, _) = second.interrupt();
    assert_eq!(code, Some(0));
}

/// The example DAG with tasks on different node pools validates, and the pods
/// `tasks render --pod` prints for it pass the Kubernetes schemas
/// (kubernetes-validate --strict, from PyPI).
#[test]
fn the_example_pods_validate_against_the_kubernetes_schemas() {
    let p = project();
    crate::with_examples(&p);
    let config = ["--config", "examples/updraft.toml"];
    let validated = p.run(&[&config[..], &["dags", "validate"]].concat());
    assert_eq!(validated.code, 0, "{}{}", validated.stdout, validated.stderr);
    let mut files = Vec::new();
    for task in ["extract", "join_events", "train"] {
        let pod = p.run(&[&config[..], &["tasks", "render", "nightly_features", task, "--pod", "-o", "json"]].concat());
        assert_eq!(pod.code, 0, "{}", pod.stderr);
        let value: serde_json::Value = serde_json::from_str(&pod.stdout).unwrap();
        let pool = value["spec"]["nodeSelector"]["cloud.google.com/gke-nodepool"].as_str().map(str::to_string);
        let memory = value["spec"]["containers"][0]["resources"]["requests"]["memory"].as_str().map(str::to_string);
        match task {
            "join_events" => assert_eq!((pool.as_deref(), memory.as_deref()), (Some("highmem"), Some("48Gi"))),
            "train" => assert_eq!((pool.as_deref(), memory.as_deref()), (Some("gpu-l4"), Some("32Gi"))),
            _ => assert_eq!((pool.as_deref(), memory.as_deref()), (None, Some("512Mi"))),
        }
        let path = p.path().join(format!("{task}.json"));
        std::fs::write(&path, &pod.stdout).unwrap();
        files.push(path);
    }
    let Ok(validate) = std::env::var("UPDRAFT_KUBERNETES_VALIDATE") else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "kubernetes-validate is missing under CI");
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipping the schema check: set UPDRAFT_KUBERNETES_VALIDATE to kubernetes-validate (PyPI)");
        }
        return;
    };
    let output = std::process::Command::new(validate).arg("--strict").args(&files).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    assert_eq!(text.matches(" passed for resource pod/").count(), 3, "{text}");
}

/// A runner that stops cleanly (a rolling update) leaves its pods running; the
/// next process adopts them instead of interrupting and rerunning the task.
#[test]
fn a_stopping_runner_hands_its_pods_over() {
    let (p, standin, first, run_id) = a_pod_running();
    let (code, _) = first.interrupt();
    assert_eq!(code, Some(0));
    assert_eq!(standin.pods().len(), 1, "the pod kept running");
    assert!(standin.deleted().is_empty(), "{:?}", standin.deleted());
    let second = p.standalone();
    let run = finished_run(&p, "long", Duration::from_secs(60));
    assert_eq!(run["state"], "success", "{run}");
    assert_eq!(states(&p, "long", &run_id)["work"]["try_number"], 1);
    assert_eq!(standin.created().len(), 1, "{:?}", standin.created());
    let log = attempt_log(&p, "long", &run_id, "work", 1);
    assert!(log.contains("keeps running for another runner to adopt"), "{log}");
    assert!(log.contains("was already there") && log.contains("finished"), "{log}");
    let (code, _) = second.interrupt();
    assert_eq!(code, Some(0));
}

/// A worker killed while its pod runs, recovered by a scheduler with no runner to
/// adopt with: the pod is deleted, and gone, before the attempt counts as failed,
/// so the retry's pod never runs beside it.
#[test]
fn a_lost_pod_is_deleted_before_its_retry_starts() {
    let (p, standin) = with_standin("[kubernetes]\nkill_grace = \"1s\"\n");
    let (events, lock) = (p.path().join("events"), p.path().join("lock"));
    p.dag(
        "lost.yaml",
        &format!(
            "dag: lost\ntasks:\n  work:\n    executor: kubernetes\n    retries: 1\n    retry_delay: 1s\n    shell: |\n      exec 9> {lock}\n      flock -n 9 || {{ echo OVERLAP >> {events}; exit 1; }}\n      echo start $UPDRAFT_TRY_NUMBER >> {events}\n      if [ $UPDRAFT_TRY_NUMBER = 1 ]; then sleep 30; fi\n      echo end $UPDRAFT_TRY_NUMBER >> {events}\n",
            lock = lock.display(),
            events = events.display()
        ),
    );
    let scheduler = p.service(&["scheduler"], "updraft scheduler running");
    let worker = p.service(&["worker"], "updraft worker running");
    let run_id = p.run(&["dags", "trigger", "lost"]).stdout.trim().to_string();
    eventually(Duration::from_secs(30), "the first try to start", || {
        std::fs::read_to_string(&events).ok().filter(|text| text.starts_with("start 1"))
    });
    worker.kill9();
    eventually(Duration::from_secs(60), "recovery to delete the lost pod", || {
        standin.deleted().into_iter().find(|(name, _)| name.ends_with("-t1"))
    });
    let worker = p.service(&["worker"], "updraft worker running");
    let run = finished_run(&p, "lost", Duration::from_secs(60));
    assert_eq!(run["state"], "success", "{run}");
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(!text.contains("OVERLAP"), "two tries ran at once:\n{text}");
    assert!(!text.contains("end 1") && text.contains("start 2") && text.contains("end 2"), "{text}");
    assert_eq!(states(&p, "lost", &run_id)["work"]["try_number"], 2);
    let log = attempt_log(&p, "lost", &run_id, "work", 1);
    assert!(log.contains("attempt lost") && log.contains("(its pod was deleted)"), "{log}");
    assert_eq!(standin.created().len(), 2, "{:?}", standin.created());
    for service in [worker, scheduler] {
        let (code, _) = service.interrupt();
        assert_eq!(code, Some(0));
    }
}

/// A pod task where no cluster can be found fails its attempt with that reason,
/// not a hang or a panic.
#[test]
fn without_a_cluster_a_pod_task_fails_saying_so() {
    let mut p = project();
    let home = p.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    p.env("HOME", &home.display().to_string());
    p.env("KUBECONFIG", &p.path().join("no-such-kubeconfig").display().to_string());
    p.dag("pods.yaml", "dag: pods\ntasks:\n  work: {shell: 'true', executor: kubernetes}\n");
    let output = p.run(&["dags", "test", "pods", "--date", "2026-01-02"]);
    assert_eq!(output.code, 1, "{}{}", output.stdout, output.stderr);
    assert!(
        output.stdout.contains("cannot find a Kubernetes cluster (no kubeconfig, and not in a pod)"),
        "{}",
        output.stdout
    );
}
