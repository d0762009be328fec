//! Outputs between tasks: `$UPDRAFT_OUTPUT` in, `{{ tasks.<id>.output }}` out,
//! stored with the run and readable through the API.

use updraft_testkit::http_get;

use crate::project;

const CHAIN: &str = r#"dag: codes
tasks:
  list_codes:
    shell: |
      echo '{"codes": ["005930", "000660"], "token": "sk-live-777777"}' > "$UPDRAFT_OUTPUT"
  names:
    shell: |
      echo "second={{ tasks.list_codes.output.codes[1] }} all={{ tasks.list_codes.output.codes | join(',') }}"
      printf '"done"' > "$UPDRAFT_OUTPUT"
    depends_on: [list_codes]
  last:
    shell: echo "{{ tasks.names.output }} {{ tasks.list_codes.output.codes | length }}"
    depends_on: [names]
"#;

#[test]
fn downstream_tasks_read_upstream_outputs() {
    let mut p = project();
    p.env("UPDRAFT_VAR_VENDOR_TOKEN", "sk-live-777777");
    p.dag("codes.yaml", CHAIN);
    let tested = p.run(&["dags", "test", "codes", "--date", "2024-03-01"]);
    assert_eq!(tested.code, 0, "{}\n{}", tested.stdout, tested.stderr);
    assert!(tested.stdout.contains("second=000660 all=005930,000660"), "{}", tested.stdout);
    assert!(tested.stdout.contains("done 2"), "{}", tested.stdout);

    // The API hands outputs out with secret values masked.
    let server = p.standalone();
    let path = "/api/v1/dags/codes/runs/test__2024-03-01T00:00:00+00:00/tasks/list_codes/output";
    let (status, body) = http_get(&server.address, path);
    assert_eq!(status, 200, "{body}");
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["output"]["codes"][0], "005930");
    assert_eq!(shown["output"]["token"], "***", "{body}");
    let (status, _) = http_get(&server.address, &path.replace("list_codes", "last"));
    assert_eq!(status, 404, "`last` wrote nothing");
}

#[test]
fn a_bad_output_fails_its_task_with_the_reason() {
    let p = project();
    p.write("updraft.toml", "[runner]\noutput_limit = \"1KB\"\n");
    p.dag(
        "big.yaml",
        "dag: big\ntasks:\n  big:\n    shell: head -c 5000 /dev/zero | tr '\\0' 7 > \"$UPDRAFT_OUTPUT\"\n  after: {shell: 'echo {{ tasks.big.output }}', depends_on: [big]}\n",
    );
    let tested = p.run(&["dags", "test", "big", "--date", "2024-03-01"]);
    assert_eq!(tested.code, 1, "{}\n{}", tested.stdout, tested.stderr);
    let shown = format!("{}{}", tested.stdout, tested.stderr);
    assert!(shown.contains("the task's output is 5000 bytes, over the limit of 1024"), "{shown}");
    assert!(shown.contains("upstream_failed"), "{shown}");
}

#[test]
fn reading_an_output_that_is_not_upstream_is_a_file_error() {
    let p = project();
    p.dag("side.yaml", "dag: side\ntasks:\n  a: {shell: 'true'}\n  b: {shell: 'echo {{ tasks.a.output }}'}\n");
    let listed = p.run(&["dags", "list"]);
    let shown = format!("{}{}", listed.stdout, listed.stderr);
    assert!(
        shown.contains("task `b` reads `tasks.a.output`, but `a` is not upstream of it: add it to `depends_on`"),
        "{shown}"
    );
}

#[test]
fn the_python_and_sql_example_runs_on_its_own_config() {
    let p = project();
    crate::with_examples(&p);
    let tested =
        p.run(&["--config", "examples/updraft.toml", "dags", "test", "codes_to_sqlite", "--date", "2024-03-01"]);
    assert_eq!(tested.code, 0, "{}\n{}", tested.stdout, tested.stderr);
    assert!(tested.stdout.contains("list_codes | found 3 codes"), "{}", tested.stdout);
    assert!(tested.stdout.contains("store | statement 2: 3 row(s) affected"), "{}", tested.stdout);
    assert!(tested.stdout.contains("report | stored 3 codes for 2024-03-01"), "{}", tested.stdout);
    assert!(p.path().join("examples/.updraft/example.db").is_file());
}

/// The spreadsheets example: two sheets of one workbook (replace, then upsert into
/// the same table), a table under a title row, a CSV, into one schema.
#[test]
fn the_sheets_example_loads_every_sheet_into_one_schema() {
    let Some(database) = updraft_testkit::postgres::TestDatabase::create() else { return };
    let mut p = project();
    crate::with_examples(&p);
    p.env("UPDRAFT_CONN_WAREHOUSE", &database.url);
    let config = "examples/sheets-to-postgres/updraft.toml";
    let tested = p.run(&["--config", config, "dags", "test", "sheets_to_postgres", "--date", "2024-03-01"]);
    assert_eq!(tested.code, 0, "{}\n{}", tested.stdout, tested.stderr);
    let counts = updraft_testkit::postgres::psql(
        &database.url,
        "SELECT (SELECT count(*) FROM sheets.companies) || ' ' || (SELECT count(*) FROM sheets.prices) || ' '
            || (SELECT count(*) FROM sheets.sectors) || ' ' || (SELECT max(close)::text FROM sheets.prices)
            || ' ' || (SELECT listed::text FROM sheets.companies WHERE code = '293490')",
    )
    .unwrap();
    assert_eq!(counts.trim(), "7 20 5 240752.5 2020-09-10");
}
