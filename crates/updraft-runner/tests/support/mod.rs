//! What the runner's test binaries share: an attempt spec for a one-task DAG,
//! and running it while collecting its lines and log.

#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use updraft_core::DataInterval;
use updraft_runner::{AttemptLabel, AttemptObserver, AttemptResult, AttemptSpec, RunContext, execute, procfs};

pub static NEXT_TOKEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Waits until no process carries the attempt's token (killed processes take a
/// moment to disappear).
pub async fn assert_no_process_left(spec: &AttemptSpec) {
    let token = spec.attempt_token.clone().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !procfs::find_by_env("UPDRAFT_ATTEMPT", &token).is_empty() {
        assert!(std::time::Instant::now() < deadline, "a process of the attempt survived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Default)]
pub struct Lines(pub Mutex<Vec<String>>);

impl AttemptObserver for Lines {
    fn line(&self, _attempt: &AttemptLabel, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
}

pub fn spec(dir: &Path, task_yaml: &str) -> AttemptSpec {
    let yaml = format!(
        "dag: demo\ntimezone: Europe/Berlin\nparams: {{who: world}}\nenv: {{LEVEL: dag}}\ntasks:\n  t:\n{task_yaml}"
    );
    let parsed = updraft_dagfile::parse_dag(&yaml, "sub/demo.yaml");
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    std::fs::create_dir_all(dir.join("dags/sub")).unwrap();
    AttemptSpec {
        dag: Arc::new(parsed.dag.unwrap()),
        task_id: "t".to_string(),
        run: RunContext {
            run_id: "manual__x".to_string(),
            run_type: "manual".to_string(),
            logical_date: "2024-03-01T00:00:00Z".parse().unwrap(),
            interval: DataInterval {
                start: "2024-03-01T00:00:00Z".parse().unwrap(),
                end: "2024-03-02T00:00:00Z".parse().unwrap(),
            },
            conf: serde_json::Map::new(),
            outputs: Default::default(),
            mapped: None,
        },
        try_number: 1,
        tries_allowed: 1,
        dags_folder: dir.join("dags"),
        log_path: Some(dir.join("logs/1.log")),
        attempt_token: Some(format!("test-{}", NEXT_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed))),
        kill_grace: Duration::from_millis(500),
        secrets: Arc::default(),
        output_limit: updraft_runner::DEFAULT_OUTPUT_LIMIT,
    }
}

pub async fn run(spec: &AttemptSpec) -> (AttemptResult, Vec<String>, String) {
    let lines = Arc::new(Lines::default());
    let (_cancel, cancelled) = watch::channel(false);
    let (spawned, _pid) = oneshot::channel();
    let result = execute(spec, &updraft_runner::template::environment(), lines.clone(), cancelled, spawned).await;
    let log = std::fs::read_to_string(spec.log_path.as_ref().unwrap()).unwrap_or_default();
    let lines = lines.0.lock().unwrap().clone();
    (result, lines, log)
}
