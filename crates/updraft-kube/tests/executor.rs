//! The executor's API conversation against `tower-test` mocks answering with
//! recorded Kubernetes API responses (the pods of tests/fixtures, watch events
//! as the API streams them, `Status` objects for refusals).

use std::time::Duration;

use http::{Request, Response};
use jiff::Timestamp;
use kube::client::Body;
use serde_json::{Value, json};
use updraft_kube::executor::{ExecutorError, Launched, Pods};
use updraft_kube::status::{Failure, Graces, Progress};

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn with_version(mut pod: Value, version: &str) -> Value {
    pod["metadata"]["resourceVersion"] = json!(version);
    pod
}

/// A recorded request: method, path and query, body.
type Seen = (String, String, Value);

/// Answers the requests in order with `(status, body)`; returns what was asked.
fn api(answers: Vec<(u16, String)>) -> (kube::Client, tokio::task::JoinHandle<Vec<Seen>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let recorder = tokio::spawn(async move {
        let mut seen = Vec::new();
        for (status, body) in answers {
            let Some((request, send)) = handle.next_request().await else { break };
            let (parts, request_body) = request.into_parts();
            let bytes = request_body.collect_bytes().await.unwrap();
            seen.push((
                parts.method.to_string(),
                parts.uri.path_and_query().map(ToString::to_string).unwrap_or_default(),
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ));
            send.send_response(Response::builder().status(status).body(Body::from(body.into_bytes())).unwrap());
        }
        seen
    });
    (kube::Client::new(service, "data-pipelines"), recorder)
}

fn status(code: u16, reason: &str, message: &str) -> String {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
        .to_string()
}

fn event(kind: &str, object: &Value) -> String {
    format!("{}\n", json!({"type": kind, "object": object}))
}

fn at(after: i64) -> Timestamp {
    "2026-01-02T02:00:05Z".parse::<Timestamp>().unwrap() + jiff::SignedDuration::from_secs(after)
}

#[tokio::test]
async fn launch_creates_the_pod_or_adopts_the_one_there() {
    let pod = fixture("container_creating");
    let (client, recorder) = api(vec![
        (201, pod.to_string()),
        (409, status(409, "AlreadyExists", "pods \"sales-daily-aggregate-351066265a-t1\" already exists")),
        (
            403,
            status(
                403,
                "Forbidden",
                "pods is forbidden: User \"system:serviceaccount:updraft:updraft\" cannot create resource \"pods\"",
            ),
        ),
    ]);
    let pods = Pods::new(client, "data-pipelines");
    let name = "sales-daily-aggregate-351066265a-t1".to_string();
    assert_eq!(pods.launch(&pod).await.unwrap(), Launched { name: name.clone(), adopted: false });
    assert_eq!(pods.launch(&pod).await.unwrap(), Launched { name, adopted: true });
    let refused = pods.launch(&pod).await.unwrap_err();
    assert!(refused.to_string().contains("cannot create resource"), "{refused}");
    let seen = recorder.await.unwrap();
    assert_eq!(seen[0].0, "POST");
    assert_eq!(seen[0].1, "/api/v1/namespaces/data-pipelines/pods?");
    assert_eq!(seen[0].2["metadata"]["name"], "sales-daily-aggregate-351066265a-t1");
}

#[tokio::test]
async fn wait_follows_the_watch_to_the_exit_code() {
    let name = "sales-daily-aggregate-351066265a-t1";
    let creating = with_version(fixture("container_creating"), "100");
    let running = with_version(fixture("running"), "101");
    let failed = with_version(fixture("exit_3"), "102");
    let watch = format!("{}{}", event("MODIFIED", &running), event("MODIFIED", &failed));
    let (client, recorder) = api(vec![(200, creating.to_string()), (200, watch)]);
    let pods = Pods::new(client, "data-pipelines");
    let mut reasons = Vec::new();
    let ended = pods.wait(name, &Graces::default(), || at(20), |seen| reasons.push(format!("{seen:?}"))).await.unwrap();
    assert_eq!(ended.progress, Progress::Exited { code: 3 });
    assert_eq!(reasons, ["Waiting(\"ContainerCreating\")", "Running"]);
    let seen = recorder.await.unwrap();
    assert_eq!(seen[0].1, format!("/api/v1/namespaces/data-pipelines/pods/{name}"));
    // A watch from the version read, on this pod only — no polling.
    assert!(seen[1].1.contains("watch=true"), "{}", seen[1].1);
    assert!(seen[1].1.contains("resourceVersion=100"), "{}", seen[1].1);
    assert!(seen[1].1.contains("fieldSelector=metadata.name%3D"), "{}", seen[1].1);
}

#[tokio::test]
async fn wait_ends_on_a_failure_in_plain_words_or_a_deleted_pod() {
    let name = "sales-daily-aggregate-351066265a-t1";
    let running = with_version(fixture("running"), "200");
    let oom = with_version(fixture("oom_killed"), "201");
    let (client, _) = api(vec![(200, running.to_string()), (200, event("MODIFIED", &oom))]);
    let ended = Pods::new(client, "data-pipelines").wait(name, &Graces::default(), || at(1900), |_| {}).await.unwrap();
    match ended.progress {
        Progress::Failed { reason: Failure::OutOfMemory, message } => assert!(message.contains("60Gi"), "{message}"),
        other => panic!("{other:?}"),
    }

    let (client, _) = api(vec![(200, running.to_string()), (200, event("DELETED", &running))]);
    let gone = Pods::new(client, "data-pipelines").wait(name, &Graces::default(), || at(30), |_| {}).await.unwrap_err();
    assert!(matches!(gone, ExecutorError::Gone(_)), "{gone}");
}

#[tokio::test]
async fn an_expired_watch_starts_again_from_the_pod_as_it_is() {
    let name = "sales-daily-aggregate-351066265a-t1";
    let running = with_version(fixture("running"), "300");
    let expired = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "too old resource version: 300 (412)", "reason": "Expired", "code": 410}});
    let done = with_version(fixture("succeeded"), "412");
    let (client, recorder) =
        api(vec![(200, running.to_string()), (200, format!("{expired}\n")), (200, done.to_string())]);
    let ended = Pods::new(client, "data-pipelines").wait(name, &Graces::default(), || at(300), |_| {}).await.unwrap();
    assert_eq!(ended.progress, Progress::Exited { code: 0 });
    let seen = recorder.await.unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].0, "GET");
}

#[tokio::test]
async fn the_log_is_followed_and_a_pod_is_stopped_with_a_grace() {
    let name = "sales-daily-aggregate-351066265a-t1";
    let (client, recorder) = api(vec![
        (200, "reading 3 files\nERROR: no such table: sales\n".to_string()),
        (200, json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name}}).to_string()),
        (404, status(404, "NotFound", "pods \"sales-daily-aggregate-351066265a-t1\" not found")),
    ]);
    let pods = Pods::new(client, "data-pipelines");
    let mut lines = Vec::new();
    pods.follow_log(name, |line| lines.push(line)).await.unwrap();
    assert_eq!(lines, ["reading 3 files", "ERROR: no such table: sales"]);
    pods.stop(name, Duration::from_secs(30)).await.unwrap();
    pods.stop(name, Duration::from_secs(30)).await.unwrap();
    let seen = recorder.await.unwrap();
    assert!(seen[0].1.starts_with(&format!("/api/v1/namespaces/data-pipelines/pods/{name}/log?")), "{}", seen[0].1);
    assert!(seen[0].1.contains("container=task") && seen[0].1.contains("follow=true"), "{}", seen[0].1);
    assert_eq!(seen[1].0, "DELETE");
    assert_eq!(seen[1].2["gracePeriodSeconds"], 30);
}

#[tokio::test]
async fn a_restarted_executor_finds_the_pods_of_a_task_instance_by_label() {
    let pod = fixture("running");
    let list = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "500"}, "items": [pod]});
    let (client, recorder) = api(vec![(200, list.to_string())]);
    let settings = updraft_core::kubernetes::PodSettings::default();
    let attempt = updraft_kube::Attempt {
        dag_id: "sales_daily",
        run_id: "scheduled__2026-01-02T02:00:00+00:00",
        task_id: "aggregate",
        map_index: -1,
        try_number: 2,
        command: vec!["true".into()],
        env: Default::default(),
        settings: &settings,
        timeout: None,
        template: None,
    };
    let found =
        Pods::new(client, "data-pipelines").of_task_instance(&updraft_kube::pod_labels(&attempt)).await.unwrap();
    assert_eq!(found.len(), 1);
    let seen = recorder.await.unwrap();
    let query = percent_decode(&seen[0].1);
    assert!(query.contains("labelSelector=app.kubernetes.io/managed-by=updraft,"), "{query}");
    assert!(query.contains("updraft.dev/dag=sales_daily") && query.contains("updraft.dev/task=aggregate"), "{query}");
    // Every try's pod, so older ones can be deleted.
    assert!(!query.contains("updraft.dev/try"), "{query}");
}

#[tokio::test]
async fn a_superseded_pod_is_waited_for_until_its_deletion() {
    let name = "sales-daily-aggregate-351066265a-t1";
    let running = with_version(fixture("running"), "600");
    let (client, recorder) = api(vec![(200, running.to_string()), (200, event("DELETED", &running))]);
    assert!(Pods::new(client, "data-pipelines").gone(name, Duration::from_secs(40)).await.unwrap());
    let seen = recorder.await.unwrap();
    assert!(seen[1].1.contains("watch=true") && seen[1].1.contains("timeoutSeconds=40"), "{}", seen[1].1);

    // Still there when the watch ends: not gone.
    let (client, _) = api(vec![(200, running.to_string()), (200, String::new()), (200, running.to_string())]);
    assert!(!Pods::new(client, "data-pipelines").gone(name, Duration::from_secs(1)).await.unwrap());
    let (client, _) = api(vec![(404, status(404, "NotFound", "pods \"x\" not found"))]);
    assert!(Pods::new(client, "data-pipelines").gone(name, Duration::from_secs(1)).await.unwrap());
}

#[tokio::test]
async fn ended_pods_are_swept_after_they_were_kept() {
    // exit_3 finished at 02:00:12; evicted has no container end (its creation counts).
    let mut old = fixture("exit_3");
    old["metadata"]["name"] = json!("old-failed");
    let mut recent = fixture("exit_3");
    recent["metadata"]["name"] = json!("recent-failed");
    recent["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = json!("2026-01-02T02:50:00Z");
    let mut running = fixture("running");
    running["metadata"]["name"] = json!("still-running");
    let list = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "700"}, "items": [old, recent, running]});
    let (client, recorder) = api(vec![
        (200, list.to_string()),
        (200, json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "old-failed"}}).to_string()),
    ]);
    let deleted = Pods::new(client, "data-pipelines").sweep(Duration::from_secs(3600), at(3700)).await.unwrap();
    assert_eq!(deleted, ["old-failed"]);
    let seen = recorder.await.unwrap();
    assert_eq!(seen.len(), 2);
    assert!(percent_decode(&seen[0].1).contains("labelSelector=app.kubernetes.io/managed-by=updraft"), "{}", seen[0].1);
    assert_eq!(
        (seen[1].0.as_str(), seen[1].1.split('?').next().unwrap()),
        ("DELETE", "/api/v1/namespaces/data-pipelines/pods/old-failed")
    );
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text).decode_utf8().unwrap().into_owned()
}
