//! Every fixture under `fixtures/` parsed; the rendered diagnostics (or, for valid
//! files, the DAG's summary) are snapshots under `snapshots/`.

use std::path::Path;

use updraft_dagfile::DagLoader;

fn render_folder(kind: &str) -> Vec<(String, String, usize)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(kind);
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let folder = DagLoader::new(&root, Some(base)).load().unwrap();
    folder
        .files
        .iter()
        .map(|file| {
            let name = file.fileloc.trim_end_matches(".yaml").trim_end_matches(".yml").to_string();
            let mut out = String::new();
            for diagnostic in &file.diagnostics {
                out.push_str(&format!("{diagnostic}\n"));
            }
            if let Some(loaded) = &file.dag {
                let dag = &loaded.dag;
                let spec = dag.spec();
                out.push_str(&format!(
                    "dag {} schedule={:?} tz={} start={:?} end={:?} catchup={} runs={} tasks={}\n",
                    dag.dag_id(),
                    spec.schedule.text(),
                    spec.timezone.name(),
                    spec.start_date.map(|t| t.to_string()),
                    spec.end_date.map(|t| t.to_string()),
                    spec.catchup,
                    spec.max_active_runs,
                    spec.max_active_tasks,
                ));
                out.push_str(&format!("params {}\nenv {:?}\n", serde_json::Value::Object(spec.params.clone()), spec.env));
                for task in dag.tasks() {
                    out.push_str(&format!(
                        "task {} {:?} deps={:?} rule={} retries={} delay={} backoff={} max_delay={} timeout={:?} pool={} queue={} priority={} cwd={:?} env={:?}\n",
                        task.task_id,
                        task.kind,
                        task.depends_on.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
                        task.trigger_rule,
                        task.retries,
                        task.retry_delay,
                        task.retry_exponential_backoff,
                        task.max_retry_delay,
                        task.timeout,
                        task.pool,
                        task.queue,
                        task.priority,
                        task.cwd,
                        task.env,
                    ));
                    if let Some(for_each) = &task.for_each {
                        out.push_str(&format!("  for_each {for_each:?} limit={}\n", task.for_each_limit));
                    }
                }
            }
            (name, out, file.diagnostics.len())
        })
        .collect()
}

#[test]
fn invalid_fixtures() {
    for (name, output, n_diagnostics) in render_folder("invalid") {
        assert!(n_diagnostics > 0, "invalid fixture {name} produced no diagnostics");
        insta::assert_snapshot!(format!("invalid__{name}"), output);
    }
}

#[test]
fn valid_fixtures() {
    for (name, output, n_diagnostics) in render_folder("valid") {
        assert_eq!(n_diagnostics, 0, "valid fixture {name} has diagnostics:\n{output}");
        insta::assert_snapshot!(format!("valid__{name}"), output);
    }
}
