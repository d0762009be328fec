//! Remote workers: `updraft worker` with `worker.api_url` runs tasks through the
//! API server, with no way to reach the database itself.

use std::time::Duration;

use updraft_testkit::eventually;

use crate::project;

const TOKEN: &str = "a-long-shared-worker-token";

/// Prints a line, waits, prints another: its log is read while it runs. `fan` is
/// mapped over `codes`' output, which the worker reads through the API.
const TALK: &str = r#"dag: talk
tasks:
  say:
    shell: |
      echo first line
      sleep 2
      echo second line
  after: {shell: 'echo done', depends_on: [say]}
  codes:
    shell: echo '["x", "y"]' > "$UPDRAFT_OUTPUT"
  fan:
    depends_on: [codes]
    for_each: "{{ tasks.codes.output }}"
    shell: echo "item {{ item }} of {{ tasks.codes.output | length }}"
"#;

#[test]
fn a_remote_worker_runs_tasks_and_ships_their_logs() {
    let mut p = project();
    p.dag("talk.yaml", TALK);
    p.env("UPDRAFT_WORKER__TOKEN", TOKEN);
    let api = p.service(&["webserver", "--port", "0"], "http://");
    let scheduler = p.service(&["scheduler"], "updraft scheduler running");
    let worker_state = tempfile::tempdir().unwrap();
    let api_url = format!("http://{}", api.address);
    let worker = p.service_with(
        &["worker"],
        &[
            ("UPDRAFT_WORKER__API_URL", &api_url),
            // Nothing listens there: the worker must not need the database.
            ("UPDRAFT_DATABASE_URL", "postgres://nobody@127.0.0.1:9/nowhere"),
            ("UPDRAFT_CORE__STATE_FOLDER", worker_state.path().to_str().unwrap()),
        ],
        "updraft worker running",
    );
    let output = p.run(&["dags", "trigger", "talk"]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    let run_id = output.stdout.trim().to_string();
    let log_path = format!("/api/v1/dags/talk/runs/{run_id}/tasks/say/tries/1/log");

    // While the task sleeps, the first line is already readable from the server.
    let partial = eventually(Duration::from_secs(20), "the first line in the shipped log", || {
        let (status, body) = api.get(&log_path);
        (status == 200 && body.contains("first line")).then_some(body)
    });
    assert!(!partial.lines().any(|line| line == "second line"), "read while running: {partial}");

    eventually(Duration::from_secs(30), "the run to succeed", || {
        let output = p.run(&["tasks", "states-for-dag-run", "talk", &run_id, "-o", "json"]);
        let states: serde_json::Value = serde_json::from_str(&output.stdout).ok()?;
        states.as_array()?.iter().all(|ti| ti["state"] == "success").then_some(())
    });
    // The log now comes whole from the store, even with the worker's files gone.
    std::fs::remove_dir_all(worker_state.path().join("logs")).unwrap();
    let (status, body) = api.get(&log_path);
    assert_eq!(status, 200, "{body}");
    assert!(body.lines().any(|line| line == "first line"), "{body}");
    assert!(body.lines().any(|line| line == "second line"), "{body}");
    let (status, body) = api.get(&format!("/api/v1/dags/talk/runs/{run_id}/tasks/after/tries/1/log"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("done"), "{body}");
    let (status, body) = api.get(&format!("/api/v1/dags/talk/runs/{run_id}/tasks/fan/tries/1/log?map_index=1"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("item y of 2"), "a mapped instance on a remote worker: {body}");

    let (code, log) = worker.interrupt();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    let (code, _) = scheduler.interrupt();
    assert_eq!(code, Some(0));
    let (code, _) = api.interrupt();
    assert_eq!(code, Some(0));
}

#[test]
fn a_remote_worker_with_the_wrong_token_stops_with_a_clear_error() {
    let mut p = project();
    p.env("UPDRAFT_WORKER__TOKEN", TOKEN);
    let api = p.service(&["webserver", "--port", "0"], "http://");
    let api_url = format!("http://{}", api.address);
    let mut command = p.command(&["worker"]);
    command.env("UPDRAFT_WORKER__API_URL", &api_url).env("UPDRAFT_WORKER__TOKEN", "wrong");
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("error: the API server at {api_url} refused this worker")), "{stderr}");
    assert!(stderr.contains("unknown, revoked or expired worker token"), "{stderr}");
    assert!(stderr.contains("hint: check that `worker.token` matches"), "{stderr}");
}

#[test]
fn each_worker_can_have_its_own_token_and_lose_it_alone() {
    let p = project();
    p.dag("talk.yaml", "dag: talk\ntasks:\n  say: {shell: 'echo hello'}\n");
    let made = p.run(&["worker-tokens", "create", "edge-1", "--expires-in", "30d"]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    let token = made.stdout.trim().to_string();
    assert!(token.starts_with("worker_") && made.stderr.contains("shown once"), "{}", made.stderr);
    let listed = p.run(&["worker-tokens", "list", "-o", "json"]);
    let tokens: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(tokens[0]["name"], "edge-1");
    assert!(!listed.stdout.contains(&token), "never listed");
    let id = tokens[0]["id"].to_string();

    // The API server has no shared worker token: only per-worker ones open it.
    let api = p.service(&["webserver", "--port", "0"], "http://");
    let scheduler = p.service(&["scheduler"], "updraft scheduler running");
    let api_url = format!("http://{}", api.address);
    let worker_state = tempfile::tempdir().unwrap();
    let worker = p.service_with(
        &["worker"],
        &[
            ("UPDRAFT_WORKER__API_URL", &api_url),
            ("UPDRAFT_WORKER__TOKEN", &token),
            ("UPDRAFT_DATABASE_URL", "postgres://nobody@127.0.0.1:9/nowhere"),
            ("UPDRAFT_CORE__STATE_FOLDER", worker_state.path().to_str().unwrap()),
        ],
        "updraft worker running",
    );
    let run_id = p.run(&["dags", "trigger", "talk"]).stdout.trim().to_string();
    eventually(Duration::from_secs(30), "the run to succeed on the worker", || {
        let output = p.run(&["tasks", "states-for-dag-run", "talk", &run_id, "-o", "json"]);
        let states: serde_json::Value = serde_json::from_str(&output.stdout).ok()?;
        states.as_array()?.iter().all(|ti| ti["state"] == "success").then_some(())
    });
    let listed = p.run(&["worker-tokens", "list", "-o", "json"]);
    assert!(!listed.stdout.contains(r#""last_used_at":null"#), "its use is noted: {}", listed.stdout);
    let (code, _) = worker.interrupt();
    assert_eq!(code, Some(0));

    // Another worker's token stays good while this one is revoked.
    assert_eq!(p.run(&["worker-tokens", "create", "edge-2"]).code, 0);
    assert_eq!(p.run(&["worker-tokens", "revoke", &id]).code, 0);
    let mut command = p.command(&["worker"]);
    command.env("UPDRAFT_WORKER__API_URL", &api_url).env("UPDRAFT_WORKER__TOKEN", &token);
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unknown, revoked or expired worker token"), "{stderr}");
    assert_eq!(p.run(&["worker-tokens", "revoke", &id]).code, 1, "already gone");
    let (code, _) = scheduler.interrupt();
    assert_eq!(code, Some(0));
    drop(api);
}
