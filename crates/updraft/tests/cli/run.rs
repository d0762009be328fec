//! Running DAGs in the command's own process: `dags test`, `tasks test`; and runs
//! created without a scheduler: `trigger`, `backfill`, `list-runs`, `explain`.

use crate::{CHAIN, project, run};

#[test]
fn dags_test_prints_states_and_logs_and_exits_by_the_run() {
    let p = project();
    p.dag("chain.yaml", CHAIN);
    let (output, rendered) = run(&p, &["dags", "test", "chain", "--date", "2024-03-01"]);
    assert_eq!(output.code, 0);
    insta::assert_snapshot!(rendered);
    // The run is recorded, pinned to the DAG's version.
    let runs: serde_json::Value =
        serde_json::from_str(&p.run(&["dags", "list-runs", "chain", "-o", "json"]).stdout).unwrap();
    assert_eq!(runs[0]["run_id"], "test__2024-03-01T00:00:00+00:00");
    assert_eq!(runs[0]["state"], "success");
    let log = std::fs::read_to_string(p.path().join(".updraft/logs/chain/test__2024-03-01T00:00:00+00:00/third/1.log"))
        .unwrap();
    assert!(log.contains("\nthird\n"), "{log}");
}

#[test]
fn dags_test_of_a_failing_run_fails() {
    let p = project();
    p.dag(
        "fails.yaml",
        "dag: fails\nparams: {limit: 3}\ntasks:
  check: {shell: 'echo limit {{ params.limit }}; test {{ params.limit }} -lt 5'}
  after: {shell: 'echo never', depends_on: [check]}
  always: {shell: 'echo cleanup', depends_on: [check], trigger_rule: all_done}
  skip_me: {shell: 'exit 99'}
",
    );
    let (output, _) = run(&p, &["dags", "test", "fails", "--date", "2024-03-01"]);
    assert_eq!(output.code, 0, "limit 3 passes: {}", output.stdout);
    let (output, rendered) = run(&p, &["dags", "test", "fails", "--date", "2024-03-01", "--param", "limit=7"]);
    assert_eq!(output.code, 1);
    // Independent tasks interleave in any order; each task's own lines do not.
    insta::assert_snapshot!(group_by_task(&rendered));
}

#[test]
fn tasks_test_runs_one_task_and_records_nothing() {
    let p = project();
    p.dag("chain.yaml", CHAIN);
    let (output, rendered) = run(&p, &["tasks", "test", "chain", "second", "--date", "2024-03-01"]);
    assert_eq!(output.code, 0);
    insta::assert_snapshot!(rendered);
    assert_eq!(p.run(&["dags", "list-runs", "chain", "-o", "json"]).stdout.trim(), "[]");
    p.dag("bad.yaml", "dag: bad\ntasks:\n  a: {shell: 'echo {{ params.missing }}'}\n");
    let (output, rendered) = run(&p, &["tasks", "test", "bad", "a"]);
    assert_eq!(output.code, 1);
    insta::assert_snapshot!("tasks_test_undefined_template_name", rendered);
}

#[test]
fn trigger_without_a_scheduler_queues_a_run() {
    let p = project();
    p.dag("chain.yaml", CHAIN);
    let (output, rendered) = run(&p, &["dags", "trigger", "chain", "--date", "2024-05-01", "--conf", r#"{"x": 1}"#]);
    assert_eq!(output.code, 0);
    insta::assert_snapshot!("trigger", rendered);
    let (_, rendered) = run(&p, &["dags", "list-runs", "chain"]);
    insta::assert_snapshot!("list_runs_table", rendered);
    let (_, rendered) =
        run(&p, &["tasks", "states-for-dag-run", "chain", "manual__2024-05-01T00:00:00+00:00", "-o", "json"]);
    insta::assert_snapshot!("states_json", rendered);
    let (_, rendered) = run(&p, &["tasks", "explain", "chain", "manual__2024-05-01T00:00:00+00:00", "second"]);
    insta::assert_snapshot!("explain_queued_run", rendered);
    let (output, rendered) = run(&p, &["dags", "trigger", "chain", "--date", "2024-05-01"]);
    assert_eq!(output.code, 1);
    insta::assert_snapshot!("trigger_twice", rendered);
}

#[test]
fn backfill_creates_one_run_per_interval() {
    let p = project();
    p.dag(
        "daily.yaml",
        "dag: daily\nschedule: '@daily'\ntimezone: Asia/Seoul\nstart_date: 2024-01-01\ntasks:\n  a: {shell: 'true'}\n",
    );
    let (output, rendered) = run(&p, &["dags", "backfill", "daily", "--start", "2024-02-01", "--end", "2024-02-03"]);
    assert_eq!(output.code, 0);
    insta::assert_snapshot!(rendered);
    // Again: nothing new.
    let output = p.run(&["dags", "backfill", "daily", "--start", "2024-02-01", "--end", "2024-02-03"]);
    assert!(
        output.stderr.contains("created 0 run(s)") && output.stderr.contains("3 interval(s) already had a run"),
        "{}",
        output.stderr
    );
}

/// Stable-sorts `task | text` lines by task, keeping every other line in place.
fn group_by_task(rendered: &str) -> String {
    let lines: Vec<&str> = rendered.lines().collect();
    let is_task_line = |line: &&str| line.contains(" | ");
    let mut task_lines: Vec<&str> = lines.iter().copied().filter(is_task_line).collect();
    task_lines.sort_by_key(|line| line.split(" | ").next().unwrap_or("").to_string());
    let mut sorted = task_lines.into_iter();
    lines
        .iter()
        .map(|line| if is_task_line(line) { sorted.next().unwrap() } else { line })
        .collect::<Vec<_>>()
        .join("\n")
}
