//! `updraft standalone` as a real process: health, triggers from another shell,
//! pause, a clean stop, and a `kill -9` in the middle of a run.

use std::time::Duration;

use updraft_testkit::eventually;

use crate::{CHAIN, project};

fn states(p: &updraft_testkit::Project, dag_id: &str, run_id: &str) -> serde_json::Value {
    let output = p.run(&["tasks", "states-for-dag-run", dag_id, run_id, "-o", "json"]);
    serde_json::from_str(&output.stdout).unwrap_or_else(|_| panic!("{}", output.stderr))
}

#[test]
fn serves_health_and_runs_triggered_dags() {
    let p = project();
    p.dag("chain.yaml", CHAIN);
    let standalone = p.standalone();
    let (status, body) = standalone.get("/health");
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["store"]["status"], "healthy");
    assert_eq!(health["scheduler"]["status"], "healthy");
    assert!(health["scheduler"]["heartbeat_age_seconds"].as_f64().unwrap() < 10.0);
    let (status, page) = standalone.get("/");
    assert_eq!(status, 200);
    assert!(page.contains(r#"data-dag="chain""#), "{page}");

    let output = p.run(&["dags", "trigger", "chain", "--wait"]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    let run_id = output.stdout.trim().to_string();
    assert!(run_id.starts_with("manual__"));
    let tis = states(&p, "chain", &run_id);
    assert!(tis.as_array().unwrap().iter().all(|ti| ti["state"] == "success"), "{tis}");

    // A failing run makes `--wait` fail.
    p.dag("fails.yaml", "dag: fails\ntasks:\n  a: {shell: 'exit 1'}\n");
    let output = p.run(&["dags", "trigger", "fails", "--wait"]);
    assert_eq!(output.code, 1, "{}", output.stderr);
    let (code, log) = standalone.interrupt();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn pause_from_another_shell_holds_new_tasks() {
    let p = project();
    p.dag(
        "gate.yaml",
        "dag: gate\ntasks:\n  first: {shell: 'sleep 1'}\n  second: {shell: 'true', depends_on: [first]}\n",
    );
    let standalone = p.standalone();
    assert_eq!(p.run(&["dags", "pause", "gate"]).code, 0);
    let run_id = p.run(&["dags", "trigger", "gate"]).stdout.trim().to_string();
    // Paused: nothing starts.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(states(&p, "gate", &run_id)[0]["state"], serde_json::Value::Null);
    let explain = p.run(&["tasks", "explain", "gate", &run_id, "first"]).stdout;
    assert!(explain.contains("the DAG is paused"), "{explain}");
    assert_eq!(p.run(&["dags", "unpause", "gate"]).code, 0);
    eventually(Duration::from_secs(30), "the run to finish after unpausing", || {
        let tis = states(&p, "gate", &run_id);
        (tis[1]["state"] == "success").then_some(())
    });
    drop(standalone);
}

/// The test the issue asks for: kill -9 in the middle of a run, restart, and the
/// run finishes; the attempt that was running is killed (never left beside a new
/// one), retried because it has retries, and its log says why.
#[test]
fn kill_9_mid_run_then_restart_finishes_the_run() {
    let p = project();
    // `work` records each start and end; it holds a lock (released when its
    // process dies) so a second copy running at the same time would be caught.
    p.dag(
        "crash.yaml",
        "dag: crash\ntasks:
  before: {shell: 'true'}
  work:
    depends_on: [before]
    retries: 1
    retry_delay: 1s
    shell: |
      exec 9> ../lock
      flock -n 9 || { echo OVERLAP >> ../events; exit 1; }
      echo start $UPDRAFT_TRY_NUMBER $$ >> ../events
      sleep 3
      echo end $UPDRAFT_TRY_NUMBER >> ../events
  after: {shell: 'true', depends_on: [work]}
",
    );
    let first = p.standalone();
    let run_id = p.run(&["dags", "trigger", "crash"]).stdout.trim().to_string();
    let events = p.path().join("events");
    let pid_line = eventually(Duration::from_secs(30), "the first try to start", || {
        std::fs::read_to_string(&events).ok().filter(|text| text.starts_with("start 1"))
    });
    let task_pid: u32 = pid_line.split_whitespace().nth(2).unwrap().parse().unwrap();
    first.kill9();
    // The attempt outlives its runner: nothing killed it yet.
    assert!(std::path::Path::new(&format!("/proc/{task_pid}")).exists(), "the task process is still running");

    let second = p.standalone();
    eventually(Duration::from_secs(60), "the run to finish after restart", || {
        let runs: serde_json::Value =
            serde_json::from_str(&p.run(&["dags", "list-runs", "crash", "-o", "json"]).stdout).ok()?;
        (runs[0]["state"] == "success").then_some(())
    });
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(!text.contains("OVERLAP"), "two tries ran at once:\n{text}");
    assert!(!text.contains("end 1"), "the lost try was killed, not left to finish:\n{text}");
    assert!(text.contains("start 2") && text.contains("end 2"), "{text}");
    let tis = states(&p, "crash", &run_id);
    assert_eq!(tis[1]["try_number"], 2, "{tis}");
    let log = std::fs::read_to_string(p.path().join(format!(".updraft/logs/crash/{run_id}/work/1.log"))).unwrap();
    assert!(log.contains("attempt lost: the process running it"), "{log}");
    assert!(!std::path::Path::new(&format!("/proc/{task_pid}")).exists() || is_zombie(task_pid));
    let (code, _) = second.interrupt();
    assert_eq!(code, Some(0));
}

#[test]
fn kill_9_without_retries_fails_the_task_with_a_reason() {
    let p = project();
    p.dag("once.yaml", "dag: once\ntasks:\n  work: {shell: 'echo started > ../started; sleep 30'}\n");
    let first = p.standalone();
    let run_id = p.run(&["dags", "trigger", "once"]).stdout.trim().to_string();
    eventually(Duration::from_secs(30), "the task to start", || p.path().join("started").exists().then_some(()));
    first.kill9();
    let second = p.standalone();
    eventually(Duration::from_secs(30), "the run to fail", || {
        let runs: serde_json::Value =
            serde_json::from_str(&p.run(&["dags", "list-runs", "once", "-o", "json"]).stdout).ok()?;
        (runs[0]["state"] == "failed").then_some(())
    });
    let explain = p.run(&["tasks", "explain", "once", &run_id, "work"]).stdout;
    assert!(explain.contains("is finished: failed") && explain.contains("no retries are left"), "{explain}");
    drop(second);
}

#[test]
fn ctrl_c_leaves_no_task_running() {
    let p = project();
    p.dag("long.yaml", "dag: long\ntasks:\n  nap: {shell: 'echo $$ > ../pid; sleep 60'}\n");
    let standalone = p.standalone();
    p.run(&["dags", "trigger", "long"]);
    let pid: u32 = eventually(Duration::from_secs(30), "the task to start", || {
        std::fs::read_to_string(p.path().join("pid")).ok()?.trim().parse().ok()
    });
    let (code, _) = standalone.interrupt();
    assert_eq!(code, Some(0));
    eventually(Duration::from_secs(10), "the task process to be gone", || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid)).then_some(())
    });
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
}

/// The parts of a deployment as separate processes on one store: a scheduler that
/// queues, a worker that runs.
#[test]
fn scheduler_and_worker_processes_share_the_work() {
    let p = project();
    p.dag("chain.yaml", CHAIN);
    let scheduler = p.service(&["scheduler"], "updraft scheduler running");
    let worker = p.service(&["worker"], "updraft worker running");
    let started = std::time::Instant::now();
    let output = p.run(&["dags", "trigger", "chain", "--wait"]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    // The worker learns of queued tasks from the store at once, not from its
    // five-second safety net (which would take 15 s for these three tasks).
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let run_id = output.stdout.trim().to_string();
    let tis = states(&p, "chain", &run_id);
    assert!(tis.as_array().unwrap().iter().all(|ti| ti["state"] == "success"), "{tis}");
    let (code, _) = worker.interrupt();
    assert_eq!(code, Some(0));
    let (code, _) = scheduler.interrupt();
    assert_eq!(code, Some(0));
}
