//! Pod statuses in the shapes the Kubernetes API returns them (tests/fixtures),
//! read as the runner's outcomes, each failure in plain words.

use jiff::{SignedDuration, Timestamp};
use updraft_kube::status::{Failure, Graces, Progress, progress};

fn fixture(name: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The pods were created at 02:00:05.
fn at(after: i64) -> Timestamp {
    "2026-01-02T02:00:05Z".parse::<Timestamp>().unwrap() + SignedDuration::from_secs(after)
}

fn failure(progress: Progress) -> (Failure, String) {
    match progress {
        Progress::Failed { reason, message } => (reason, message),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_container_that_ends_decides_by_its_exit_code() {
    let graces = Graces::default();
    assert_eq!(progress(&fixture("running"), at(10), &graces), Progress::Running);
    assert_eq!(progress(&fixture("succeeded"), at(300), &graces), Progress::Exited { code: 0 });
    assert_eq!(progress(&fixture("exit_3"), at(10), &graces), Progress::Exited { code: 3 });
    assert_eq!(progress(&fixture("skipped_99"), at(10), &graces), Progress::Exited { code: 99 });
    assert_eq!(
        progress(&fixture("container_creating"), at(3), &graces),
        Progress::Starting { why: Some("ContainerCreating".into()) }
    );
}

#[test]
fn failures_say_why_in_plain_words() {
    let graces = Graces::default();
    let (reason, message) = failure(progress(&fixture("oom_killed"), at(1900), &graces));
    assert_eq!(reason, Failure::OutOfMemory);
    assert_eq!(
        message,
        "the container ran out of memory and was killed (its memory limit is 60Gi): OOMKilled, exit code 137"
    );

    let (reason, message) = failure(progress(&fixture("evicted"), at(600), &graces));
    assert_eq!(reason, Failure::Evicted);
    assert!(message.starts_with("the pod was evicted: The node was low on resource: ephemeral-storage."), "{message}");

    let (reason, message) = failure(progress(&fixture("deadline_exceeded"), at(4000), &graces));
    assert_eq!(
        (reason, message.as_str()),
        (Failure::DeadlineExceeded, "the pod ran past its activeDeadlineSeconds and was stopped")
    );

    let (reason, message) = failure(progress(&fixture("node_unknown"), at(60), &graces));
    assert_eq!(reason, Failure::NodeLost);
    assert_eq!(message, "the pod's node was lost: Node gke-data-highmem-7c1d is not responding");

    let (reason, message) = failure(progress(&fixture("config_error"), at(5), &graces));
    assert_eq!(reason, Failure::Config);
    assert_eq!(message, "the container cannot start: CreateContainerConfigError: secret \"crm-credentials\" not found");
}

#[test]
fn waits_that_may_resolve_fail_only_after_their_grace() {
    let graces = Graces { image_pull: std::time::Duration::from_secs(120), ..Graces::default() };
    let pull = fixture("image_pull_backoff");
    assert_eq!(
        progress(&pull, at(60), &graces),
        Progress::Starting {
            why: Some("pulling `europe-docker.pkg.dev/acme/data/etl:1.4.2` failed, retrying (ImagePullBackOff)".into())
        }
    );
    let (reason, message) = failure(progress(&pull, at(121), &graces));
    assert_eq!(reason, Failure::ImagePull);
    assert_eq!(
        message,
        "cannot pull image `europe-docker.pkg.dev/acme/data/etl:1.4.2` (ImagePullBackOff): Back-off pulling image \"europe-docker.pkg.dev/acme/data/etl:1.4.2\""
    );

    // The scheduler's own words, while an autoscaler may still add a node.
    let unschedulable = fixture("unschedulable");
    match progress(&unschedulable, at(60), &graces) {
        Progress::Starting { why: Some(why) } => {
            assert!(why.starts_with("waiting for a node: 0/3 nodes are available: 3 Insufficient memory."), "{why}")
        }
        other => panic!("{other:?}"),
    }
    let (reason, message) = failure(progress(&unschedulable, at(901), &graces));
    assert_eq!(reason, Failure::Unschedulable);
    assert!(
        message.starts_with("no node can run the pod: 0/3 nodes are available: 3 Insufficient memory."),
        "{message}"
    );
}
