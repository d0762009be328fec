//! Reading DAGs: list, validate, next-runs.

use crate::{CHAIN, project, run};

#[test]
fn validate_reports_every_error_and_fails() {
    let p = project();
    p.dag("good.yaml", CHAIN);
    p.dag(
        "team/typo.yaml",
        "dag: typo\nschedule: '0 6 * * *'\ntasks:\n  load:\n    shell: ./load.sh\n    depend_on: [extract]\n",
    );
    p.dag(
        "cycle.yml",
        "dag: cyclic\ntasks:\n  a: {shell: 'true', depends_on: [b]}\n  b: {shell: 'true', depends_on: [a]}\n",
    );
    p.dag("dup1.yaml", "dag: same\ntasks:\n  a: {shell: 'true'}\n");
    p.dag("dup2.yaml", "dag: same\ntasks:\n  a: {shell: 'true'}\n");
    p.dag("scratch/ignored.yaml", "this: is not a dag");
    p.write("dags/.updraftignore", "scratch/\n");
    let (output, rendered) = run(&p, &["dags", "validate"]);
    assert_eq!(output.code, 1);
    insta::assert_snapshot!(rendered);
}

#[test]
fn validate_passes_on_valid_folders() {
    let p = project();
    p.dag("chain.yaml", CHAIN);
    let (output, rendered) = run(&p, &["dags", "validate"]);
    assert_eq!(output.code, 0);
    insta::assert_snapshot!(rendered);
}

#[test]
fn list_shows_good_dags_beside_broken_ones() {
    let p = project();
    p.dag("chain.yaml", CHAIN);
    p.dag(
        "daily.yaml",
        "dag: daily\nowner: data-eng\nschedule: '@daily'\nstart_date: 2024-01-01\ntasks:\n  a: {shell: 'true'}\n",
    );
    p.dag("broken.yaml", "dag: broken\ntasks: [\n");
    let (output, rendered) = run(&p, &["dags", "list"]);
    assert_eq!(output.code, 0);
    insta::assert_snapshot!("list_table", rendered);
    let (_, rendered) = run(&p, &["dags", "list", "--output", "json"]);
    insta::assert_snapshot!("list_json", rendered);
    let json: serde_json::Value = serde_json::from_str(&p.run(&["dags", "list", "-o", "json"]).stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
}

#[test]
fn pause_and_unpause_show_in_list() {
    let p = project();
    p.dag("chain.yaml", CHAIN);
    assert_eq!(p.run(&["dags", "pause", "chain"]).code, 0);
    let json: serde_json::Value = serde_json::from_str(&p.run(&["dags", "list", "-o", "json"]).stdout).unwrap();
    assert_eq!(json[0]["paused"], true);
    assert_eq!(p.run(&["dags", "unpause", "chain"]).code, 0);
    let json: serde_json::Value = serde_json::from_str(&p.run(&["dags", "list", "-o", "json"]).stdout).unwrap();
    assert_eq!(json[0]["paused"], false);
    let (output, rendered) = run(&p, &["dags", "pause", "chian"]);
    assert_eq!(output.code, 1);
    insta::assert_snapshot!(rendered);
}

#[test]
fn missing_dags_folder_is_one_clear_error() {
    let p = project();
    std::fs::remove_dir(p.path().join("dags")).unwrap();
    let (output, rendered) = run(&p, &["dags", "list"]);
    assert_eq!(output.code, 1);
    insta::assert_snapshot!(rendered);
}

#[test]
fn next_runs_across_daylight_saving_time() {
    let p = project();
    p.dag("ny.yaml", "dag: ny\nschedule: '30 2 * * *'\ntimezone: America/New_York\nstart_date: 2024-03-01\ntasks:\n  a: {shell: 'true'}\n");
    p.dag("berlin.yaml", "dag: berlin\nschedule: '0 * * * *'\ntimezone: Europe/Berlin\nstart_date: 2024-01-01\nend_date: 2024-10-27T03:00:00+01:00\ntasks:\n  a: {shell: 'true'}\n");
    let (output, rendered) = run(&p, &["dags", "next-runs", "ny", "--after", "2024-03-09", "--count", "3"]);
    assert_eq!(output.code, 0);
    insta::assert_snapshot!("next_runs_spring_forward", rendered);
    let (_, rendered) =
        run(&p, &["dags", "next-runs", "berlin", "--after", "2024-10-27T01:00:00+02:00", "--count", "5", "-o", "json"]);
    insta::assert_snapshot!("next_runs_fall_back_json_until_end_date", rendered);
    // Never before start_date.
    let (_, rendered) = run(&p, &["dags", "next-runs", "ny", "--after", "2020-01-01", "--count", "1"]);
    insta::assert_snapshot!("next_runs_not_before_start", rendered);
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let p = project();
    p.dag("chain.yaml", CHAIN);
    p.dag("daily.yaml", "dag: daily\nschedule: '@daily'\nstart_date: 2024-01-01\ntasks:\n  a: {shell: 'true'}\n");
    let mut all = String::new();
    for args in [
        &["dags", "next-runs", "daily", "--after", "2024-13-01"][..],
        &["dags", "next-runs", "daily", "--after", "2024-01-01T00:00:00"],
        &["dags", "trigger", "chain", "--conf", "{not json"],
        &["dags", "trigger", "chain", "--conf", "[1, 2]"],
        &["dags", "trigger", "chain", "--date", "tomorrow"],
        &["dags", "trigger", "nope"],
        &["tasks", "test", "chain", "fourth"],
        &["tasks", "states-for-dag-run", "chain", "no_such_run"],
        &["dags", "list-runs", "chain", "--state", "done"],
        &["dags", "test", "chain", "--param", "novalue"],
    ] {
        let (output, rendered) = run(&p, args);
        assert_eq!(output.code, 1, "{args:?}");
        assert!(!output.stderr.contains("panicked"), "{args:?}");
        all.push_str(&format!("$ updraft {}\n{rendered}\n", args.join(" ")));
    }
    insta::assert_snapshot!(all);
    // Usage errors are clap's, with exit code 2.
    let output = p.run(&["dags", "trigger"]);
    assert_eq!(output.code, 2);
    assert!(output.stderr.contains("Usage"), "{}", output.stderr);
}
