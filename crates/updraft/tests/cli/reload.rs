//! Hot reload: an edited DAG file takes effect at once (the folder is watched), a
//! broken edit keeps the last good version running and shows its error, and a
//! removed file takes its DAG away.

use std::time::{Duration, Instant};

use updraft_testkit::eventually;

use crate::project;

fn dag(standalone: &updraft_testkit::Service, dag_id: &str) -> serde_json::Value {
    let (status, body) = standalone.get(&format!("/api/v1/dags/{dag_id}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn edits_take_effect_at_once_and_a_broken_edit_keeps_the_last_good_version() {
    let mut p = project();
    // The periodic full read is far away: only the watch can see edits in time.
    p.env("UPDRAFT_CORE__DAG_DIR_LIST_INTERVAL", "10m");
    p.dag("hot.yaml", "dag: hot\ndescription: one\ntasks:\n  a: {shell: 'echo first'}\n");
    let standalone = p.standalone();
    assert_eq!(dag(&standalone, "hot")["description"], "one");

    let edited = Instant::now();
    p.dag("hot.yaml", "dag: hot\ndescription: two\ntasks:\n  a: {shell: 'echo first'}\n  b: {shell: 'echo second', depends_on: [a]}\n");
    eventually(Duration::from_secs(5), "the edit to take effect", || {
        (dag(&standalone, "hot")["description"] == "two").then_some(())
    });
    let took = edited.elapsed();
    assert!(took < Duration::from_secs(3), "the edit took {took:?}");

    // A broken edit: the error is shown, and runs use the last good version.
    p.dag("hot.yaml", "dag: hot\ndescription: three\ntasks:\n  a: {shell: 'echo first'\n");
    eventually(Duration::from_secs(5), "the parse error to show", || {
        let (_, body) = standalone.get("/api/v1/importErrors");
        body.contains("hot.yaml").then_some(())
    });
    let kept = dag(&standalone, "hot");
    assert_eq!((kept["description"].clone(), kept["is_active"].clone()), ("two".into(), true.into()), "{kept}");
    // (The CLI reads the file and refuses it; the server triggers the stored version.)
    let (status, body) =
        updraft_testkit::http_request(&standalone.address, "POST", "/api/v1/dags/hot/runs", &[], Some("{}"));
    assert_eq!(status, 201, "{body}");
    let run: serde_json::Value = serde_json::from_str(&body).unwrap();
    let run_id = run["run_id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(20), "the run on the last good version", || {
        let states = p.run(&["tasks", "states-for-dag-run", "hot", &run_id, "-o", "json"]);
        let states: serde_json::Value = serde_json::from_str(&states.stdout).ok()?;
        let tasks: Vec<(&str, &str)> = states
            .as_array()?
            .iter()
            .map(|ti| (ti["task_id"].as_str().unwrap_or(""), ti["state"].as_str().unwrap_or("")))
            .collect();
        (tasks == [("a", "success"), ("b", "success")]).then_some(())
    });

    // Fixed, the error goes.
    p.dag(
        "hot.yaml",
        "dag: hot\ndescription: four\ntasks:\n  a: {shell: 'sleep 2'}\n  b: {shell: 'true', depends_on: [a]}\n",
    );
    eventually(Duration::from_secs(5), "the fix to take effect", || {
        let (_, errors) = standalone.get("/api/v1/importErrors");
        (dag(&standalone, "hot")["description"] == "four" && !errors.contains("hot.yaml")).then_some(())
    });
    // Removed while a run is going: the DAG goes, the running task ends, the rest
    // of the run is `removed` and the run ends.
    let (status, body) =
        updraft_testkit::http_request(&standalone.address, "POST", "/api/v1/dags/hot/runs", &[], Some("{}"));
    assert_eq!(status, 201, "{body}");
    let run: serde_json::Value = serde_json::from_str(&body).unwrap();
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let state_of = |task: &str| {
        let (_, body) = standalone.get(&format!("/api/v1/dags/hot/runs/{run_id}/tasks/{task}"));
        serde_json::from_str::<serde_json::Value>(&body).ok().map(|ti| ti["state"].as_str().unwrap_or("").to_string())
    };
    eventually(Duration::from_secs(10), "`a` to run", || (state_of("a")? == "running").then_some(()));
    std::fs::remove_file(p.path().join("dags/hot.yaml")).unwrap();
    eventually(Duration::from_secs(5), "the DAG to go", || {
        (dag(&standalone, "hot")["is_active"] == false).then_some(())
    });
    eventually(Duration::from_secs(10), "the run to end", || {
        let (_, body) = standalone.get(&format!("/api/v1/dags/hot/runs/{run_id}"));
        body.contains(r#""state":"failed""#).then_some(())
    });
    assert_eq!(state_of("a").as_deref(), Some("success"), "the running task was left to finish");
    assert_eq!(state_of("b").as_deref(), Some("removed"));
}
