//! The DAGs folder as a whole: discovery, ignore files, duplicates, isolation of
//! broken files, and the metadata cache.

use std::fs;
use std::path::Path;

use updraft_dagfile::DagLoader;

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn dag(id: &str) -> String {
    format!("dag: {id}\ntasks:\n  a:\n    shell: \"true\"\n")
}

fn summary(root: &Path) -> String {
    let folder = DagLoader::new(root, Some(root.to_path_buf())).load().unwrap();
    let mut out = String::new();
    for (loaded, file) in folder.dags() {
        out.push_str(&format!("{} {}\n", loaded.dag.dag_id(), file.fileloc));
    }
    for diagnostic in folder.diagnostics() {
        out.push_str(&format!("{diagnostic}\n"));
    }
    out
}

#[test]
fn discovers_recursively_and_honours_ignore_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "a.yaml", &dag("a"));
    write(root, "team/b.yml", &dag("b"));
    write(root, "team/deep/c.yaml", &dag("c"));
    write(root, "team/deep/notes.txt", "not a dag");
    write(root, "team/scratch/d.yaml", &dag("d"));
    write(root, "team/.updraftignore", "scratch/\n*_draft.yaml\n");
    write(root, "team/e_draft.yaml", &dag("e"));
    write(root, "f_draft.yaml", &dag("f")); // the ignore file applies below its folder only
    write(root, ".hidden/g.yaml", &dag("g"));
    write(root, ".h.yaml", &dag("h"));
    insta::assert_snapshot!(summary(root), @r"
    a a.yaml
    f f_draft.yaml
    b team/b.yml
    c team/deep/c.yaml
    ");
}

#[test]
fn broken_files_do_not_stop_others_and_duplicates_fail_both() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "good.yaml", &dag("good"));
    write(root, "broken.yaml", "dag: broken\ntasks: [\n");
    write(root, "one.yaml", &dag("same"));
    write(root, "sub/two.yaml", &format!("# comment\n{}", dag("same")));
    insta::assert_snapshot!(summary(root), @r"
    good good.yaml
    broken.yaml:3:1: invalid YAML: while parsing a node, did not find expected node content
    one.yaml:1:6: DAG id `same` is also declared in `sub/two.yaml`
    sub/two.yaml:2:6: DAG id `same` is also declared in `one.yaml`
    ");
}

#[test]
fn missing_folder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let error = DagLoader::new(&missing, None).load().unwrap_err();
    assert_eq!(error.to_string(), format!("DAGs folder `{}` does not exist", missing.display()));
}

#[test]
fn cache_rereads_changed_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "a.yaml", &dag("a"));
    let mut loader = DagLoader::new(root, None);
    let first = loader.load().unwrap();
    let version = first.find("a").unwrap().0.version.clone();
    // Same content: same version; changed meaning: new version; comments: same.
    write(root, "a.yaml", &format!("# only a comment\n{}", dag("a")));
    let second = loader.load().unwrap();
    assert_eq!(second.find("a").unwrap().0.version, version);
    write(root, "a.yaml", "dag: a\ntasks:\n  a:\n    shell: \"false\"\n");
    let third = loader.load().unwrap();
    assert_ne!(third.find("a").unwrap().0.version, version);
    fs::remove_file(root.join("a.yaml")).unwrap();
    assert!(loader.load().unwrap().find("a").is_none());
}

const API_TEMPLATE: &str = r#"description: one call to the public data API, retried for a day
parameters:
  endpoint: {description: the path after the base URL}
  params: {default: {}}
  retries: {default: 24}
task:
  retries: ${{ with.retries }}
  retry_delay: 1h
  pool: public_api
  http:
    url: /B090041/openapi/service/${{ with.endpoint }}
    connection: public_data
    query: ${{ with.params }}
"#;

#[test]
fn tasks_use_templates_with_arguments_and_their_own_fields() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "templates/public_data_api.yaml", API_TEMPLATE);
    write(
        root,
        "listings.yaml",
        "dag: listings\ntasks:\n  codes:\n    use: public_data_api\n    with: {endpoint: codes, params: {day: '{{ ds }}', rows: 100}}\n  names:\n    use: public_data_api\n    with: {endpoint: names}\n    retries: 3\n    depends_on: [codes]\n",
    );
    let folder = DagLoader::new(root, Some(root.to_path_buf())).load().unwrap();
    assert!(!folder.has_errors(), "{:?}", folder.diagnostics().collect::<Vec<_>>());
    assert_eq!(folder.dags().count(), 1, "the template file is not a DAG file");
    let (loaded, _) = folder.find("listings").unwrap();
    let codes = loaded.dag.task("codes").unwrap();
    assert_eq!(
        (codes.retries, codes.retry_delay.to_string(), codes.pool.as_str()),
        (24, "1h".to_string(), "public_api")
    );
    let updraft_core::TaskKind::Http(http) = &codes.kind else { panic!("{:?}", codes.kind) };
    assert_eq!(http.url, "/B090041/openapi/service/codes");
    assert_eq!(http.query.get("day").map(String::as_str), Some("{{ ds }}"), "run-time templates stay");
    assert_eq!(http.query.get("rows").map(String::as_str), Some("100"));
    let names = loaded.dag.task("names").unwrap();
    assert_eq!(names.retries, 3, "the task's own field wins");
    let updraft_core::TaskKind::Http(http) = &names.kind else { panic!() };
    assert!(http.query.is_empty());

    // A changed template reaches the DAG on the next load (new version).
    let before = loaded.version.clone();
    write(root, "templates/public_data_api.yaml", &API_TEMPLATE.replace("retry_delay: 1h", "retry_delay: 2h"));
    let mut loader = DagLoader::new(root, Some(root.to_path_buf()));
    loader.load().unwrap();
    let again = loader.load().unwrap();
    assert_ne!(again.find("listings").unwrap().0.version, before);
}

#[test]
fn template_problems_point_at_the_use_site_and_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "templates/public_data_api.yaml", &API_TEMPLATE.replace("retry_delay: 1h", "retry_delay: 1hour"));
    write(root, "templates/broken.yaml", "parameters: {a: {}}\ntask:\n  shell: echo ${{ with.b }}\n  use: other\n");
    write(
        root,
        "uses.yaml",
        "dag: uses\ntasks:\n  codes:\n    use: public_data_api\n    with: {endpont: codes}\n  ok_args:\n    use: public_data_api\n    with: {endpoint: codes}\n  unknown:\n    use: public_data\n  broken:\n    use: broken\n",
    );
    insta::assert_snapshot!(summary(root), @"
    templates/broken.yaml:3:10: `${{ with.b }}`: no parameter `b` is declared
    templates/broken.yaml:4:3: a template cannot use another template
    uses.yaml:4:10: task `codes`: template `public_data_api` needs `endpoint` in `with` (templates/public_data_api.yaml)
    uses.yaml:5:12: task `codes`: `with`: template `public_data_api` has no parameter `endpont`, did you mean `endpoint`?
    uses.yaml:7:10: `retry_delay`: invalid duration `1hour`: expected a duration like `30s`, `5m`, `1h30m`, `2d` or whole seconds (in template `public_data_api`, templates/public_data_api.yaml:8:16)
    uses.yaml:10:10: task `unknown`: no task template `public_data` (templates: public_data_api)
    uses.yaml:12:10: task `broken`: template `broken` has problems: see `templates/broken.yaml`
    ");
}
