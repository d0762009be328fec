//! Dynamic fan-out: `for_each` expands a task into one mapped instance per item at
//! run time, each with its own state, retries and log; downstream reads the list of
//! their outputs.

use updraft_testkit::http_get;

use crate::project;

/// list -> fetch (one instance per code; code 000660 fails its first try) -> collect.
const FAN_OUT: &str = r#"dag: fan_out
tasks:
  list:
    shell: |
      echo '{"data": {"codes": ["005930", "000660", "035720"]}}' > "$UPDRAFT_OUTPUT"
  fetch:
    depends_on: [list]
    for_each: "{{ tasks.list.output.data.codes }}"
    retries: 1
    retry_delay: 0s
    shell: |
      if [ "{{ item }}" = 000660 ] && [ "$UPDRAFT_TRY_NUMBER" = 1 ]; then echo "flaky {{ item }}"; exit 1; fi
      echo "fetch {{ map_index }}={{ item }} env=$UPDRAFT_MAP_INDEX"
      printf '{"code": "%s", "try": %s}' "{{ item }}" "$UPDRAFT_TRY_NUMBER" > "$UPDRAFT_OUTPUT"
  collect:
    depends_on: [fetch]
    shell: echo "codes={{ tasks.fetch.output | map(attribute='code') | join(',') }} n={{ tasks.fetch.output | length }}"
  literal:
    for_each: [{name: a}, {name: b}]
    shell: echo "literal {{ map_index }} {{ item.name }}"
"#;

#[test]
fn a_mapped_task_runs_once_per_item_and_downstream_collects_their_outputs() {
    let p = project();
    p.dag("fan_out.yaml", FAN_OUT);
    let tested = p.run(&["dags", "test", "fan_out", "--date", "2024-03-01", "--retries"]);
    let out = &tested.stdout;
    assert_eq!(tested.code, 0, "{out}\n{}", tested.stderr);
    for line in [
        "fetch[0] | fetch 0=005930 env=0",
        "fetch[1] | flaky 000660",
        "fetch[1] | up_for_retry",
        "fetch[1] | fetch 1=000660 env=1",
        "fetch[2] | fetch 2=035720 env=2",
        "collect | codes=005930,000660,035720 n=3",
        "literal[0] | literal 0 a",
        "literal[1] | literal 1 b",
    ] {
        assert!(out.contains(line), "missing `{line}` in\n{out}");
    }
    // Each instance has its own log, in Airflow's layout.
    let logs = p.path().join(".updraft/logs/fan_out/test__2024-03-01T00:00:00+00:00/fetch");
    let second = std::fs::read_to_string(logs.join("map_index=1/2.log")).unwrap();
    assert!(second.contains("fetch 1=000660"), "{second}");
    assert!(std::fs::read_to_string(logs.join("map_index=1/1.log")).unwrap().contains("flaky 000660"));

    // The CLI and the API show the instances; the API picks one with `map_index`.
    let states = p.run(&["tasks", "states-for-dag-run", "fan_out", "test__2024-03-01T00:00:00+00:00"]);
    assert!(states.stdout.contains("fetch[2]"), "{}", states.stdout);
    let explained =
        p.run(&["tasks", "explain", "fan_out", "test__2024-03-01T00:00:00+00:00", "fetch", "--map-index", "1"]);
    assert!(explained.stdout.starts_with("`fetch[1]` is finished: success"), "{}", explained.stdout);
    let server = p.standalone();
    let run = "/api/v1/dags/fan_out/runs/test__2024-03-01T00:00:00+00:00";
    let (status, body) = http_get(&server.address, &format!("{run}/tasks"));
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let fetches: Vec<&serde_json::Value> =
        list["task_instances"].as_array().unwrap().iter().filter(|ti| ti["task_id"] == "fetch").collect();
    assert_eq!(fetches.len(), 3, "{body}");
    let (status, body) = http_get(&server.address, &format!("{run}/tasks/fetch?map_index=1"));
    assert_eq!(status, 200, "{body}");
    let one: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(one["map_item"], "000660");
    assert_eq!(one["attempts"].as_array().unwrap().len(), 2, "{body}");
    let (status, body) = http_get(&server.address, &format!("{run}/tasks/fetch"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("mapped into 3 instances"), "{body}");
    let (status, body) = http_get(&server.address, &format!("{run}/tasks/fetch/output"));
    assert_eq!(status, 200, "{body}");
    let outputs: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(outputs["output"][1], serde_json::json!({"code": "000660", "try": 2}), "{body}");
    let (status, body) = http_get(&server.address, &format!("{run}/tasks/fetch/tries/2/log?map_index=1"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("fetch 1=000660"), "{body}");
    let (status, page) = http_get(&server.address, "/dags/fan_out/runs/test__2024-03-01T00:00:00+00:00/tasks/fetch");
    assert_eq!(status, 200);
    assert!(page.contains("Mapped into 3 instances: 3 success"), "{page}");
    let (status, body) = http_get(&server.address, &format!("{run}/tasks/fetch?map_index=9"));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("has no mapped instance 9"), "{body}");
    // Marking acts on one instance.
    let (status, body) = updraft_testkit::http_request(
        &server.address,
        "PATCH",
        &format!("{run}/tasks/fetch?map_index=2"),
        &[],
        Some(r#"{"state": "failed"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let (_, body) = http_get(&server.address, &format!("{run}/tasks"));
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let states: Vec<(i64, &str)> = list["task_instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|ti| ti["task_id"] == "fetch")
        .map(|ti| (ti["map_index"].as_i64().unwrap(), ti["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states.iter().filter(|(_, state)| *state == "failed").collect::<Vec<_>>(), [&(2, "failed")], "{body}");
}

#[test]
fn a_for_each_that_is_not_a_list_fails_the_task_and_no_items_skip_it() {
    let p = project();
    p.dag(
        "bad_items.yaml",
        r#"dag: bad_items
tasks:
  list:
    shell: |
      echo '{"codes": "005930", "none": []}' > "$UPDRAFT_OUTPUT"
  not_a_list:
    depends_on: [list]
    for_each: "{{ tasks.list.output.codes }}"
    shell: echo {{ item }}
  empty:
    depends_on: [list]
    for_each: "{{ tasks.list.output.none }}"
    shell: echo {{ item }}
  after_empty:
    depends_on: [empty]
    shell: echo never
  too_many:
    for_each: [1, 2, 3]
    for_each_limit: 2
    shell: echo {{ item }}
"#,
    );
    let tested = p.run(&["dags", "test", "bad_items", "--date", "2024-03-01"]);
    let out = &tested.stdout;
    assert_eq!(tested.code, 1, "{out}\n{}", tested.stderr);
    for line in [
        "not_a_list | failed (for_each: `tasks.list.output.codes` is a string, not a list)",
        "empty | skipped (for_each has no items)",
        "after_empty | skipped",
        "too_many | failed (for_each: 3 items, more than the limit of 2 (raise `for_each_limit` to allow more))",
    ] {
        assert!(out.contains(line), "missing `{line}` in\n{out}");
    }
    assert!(!out.contains("never"), "{out}");
    let run = "test__2024-03-01T00:00:00+00:00";
    let explained = p.run(&["tasks", "explain", "bad_items", run, "not_a_list"]);
    assert!(
        explained.stdout.contains("failed before any attempt: for_each: `tasks.list.output.codes` is a string"),
        "{}{}",
        explained.stdout,
        explained.stderr
    );
}

/// The public-data example end to end: its portal stand-in (started by its first
/// task) on a free port, a throw-away PostgreSQL database as the warehouse.
#[test]
fn the_public_data_example_fans_out_recovers_and_loads_into_postgres() {
    let Some(database) = updraft_testkit::postgres::TestDatabase::create() else { return };
    let mut p = project();
    crate::with_examples(&p);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    p.env("UPDRAFT_CONN_PUBLIC_DATA", &format!("http://:example-key@127.0.0.1:{port}"));
    p.env("UPDRAFT_CONN_WAREHOUSE", &database.url);
    let tested = p.run(&[
        "--config",
        "examples/public-data/updraft.toml",
        "dags",
        "test",
        "public_securities",
        "--date",
        "2024-03-01",
        "--retries",
    ]);
    let out = &tested.stdout;
    assert_eq!(tested.code, 0, "{out}\n{}", tested.stderr);
    assert!(out.contains("answered 503 Service Unavailable; retrying in 1.0s"), "the portal failed some: {out}");
    assert!(out.contains("to_file | 48 securities written"), "{out}");
    assert!(out.contains("load | loaded 48 row(s) into `public_securities`"), "{out}");
    assert!(!out.contains("example-key"), "the API key is masked: {out}");
    let stored = updraft_testkit::postgres::psql(
        &database.url,
        "SELECT name || '|' || issuer || '|' || issue_date FROM public_securities WHERE code = '005930'",
    )
    .unwrap();
    assert_eq!(stored.trim(), "Samsung Electronics|Samsung Electronics Co., Ltd.|1975-06-11");
}
