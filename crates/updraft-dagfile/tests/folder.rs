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
