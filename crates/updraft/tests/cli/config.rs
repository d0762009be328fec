//! `updraft.toml` and environment overrides, seen from the command line.

use crate::{CHAIN, project, run};

#[test]
fn unknown_keys_in_the_config_file_are_errors_with_a_position() {
    let p = project();
    p.dag("chain.yaml", CHAIN);
    p.write("updraft.toml", "[core]\ndags_folder = \"dags\"\n\n[webserver]\nprot = 9000\n");
    let (output, rendered) = run(&p, &["dags", "list"]);
    assert_eq!(output.code, 1);
    insta::assert_snapshot!(rendered);
}

#[test]
fn config_file_and_environment_choose_the_folders() {
    let mut p = project();
    p.write("pipelines/chain.yaml", CHAIN);
    p.write("updraft.toml", "[core]\ndags_folder = \"pipelines\"\nstate_folder = \"state\"\n");
    let output = p.run(&["dags", "list", "-o", "json"]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert!(p.path().join("state/updraft.db").exists());
    // The short form wins over the file.
    p.write("elsewhere/other.yaml", "dag: other\ntasks:\n  a: {shell: 'true'}\n");
    p.env("UPDRAFT_DAGS_FOLDER", "elsewhere");
    let json: serde_json::Value = serde_json::from_str(&p.run(&["dags", "list", "-o", "json"]).stdout).unwrap();
    assert_eq!(json[0]["dag_id"], "other");
    p.env("UPDRAFT_WEBSERVER__PROT", "1");
    let (output, rendered) = run(&p, &["dags", "list"]);
    assert_eq!(output.code, 1);
    insta::assert_snapshot!(rendered);
}

#[test]
fn unreadable_state_folder_is_a_clear_error() {
    let mut p = project();
    p.dag("chain.yaml", CHAIN);
    // A file where the state folder should be.
    p.write("blocked", "");
    p.env("UPDRAFT_CORE__STATE_FOLDER", "blocked/state");
    let (output, rendered) = run(&p, &["dags", "list"]);
    assert_eq!(output.code, 1);
    insta::assert_snapshot!(rendered);
}
