//! Every valid fixture and example DAG validates against `docs/dag.schema.json`,
//! and files the parser rejects for unknown fields or types do not, checked with
//! Python's `jsonschema`, run by `UPDRAFT_JSONSCHEMA_PYTHON` (an interpreter that
//! has it; `.ci/run` installs it next to moto).

use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> Option<PathBuf> {
    let python = PathBuf::from(std::env::var("UPDRAFT_JSONSCHEMA_PYTHON").ok()?);
    let works = Command::new(&python).args(["-c", "import jsonschema"]).output().is_ok_and(|out| out.status.success());
    works.then_some(python)
}

fn yaml_files(folder: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![folder.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                // Task templates are not DAG files.
                if !path.ends_with("templates") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Each file's problems per the schema (empty: valid).
fn schema_errors(python: &Path, files: &[PathBuf]) -> Vec<(PathBuf, String)> {
    let dir = tempfile::tempdir().unwrap();
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let json = updraft_dagfile::yaml::parse(&text).unwrap().to_json();
        documents.push(json);
    }
    std::fs::write(dir.path().join("documents.json"), serde_json::Value::Array(documents).to_string()).unwrap();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/dag.schema.json");
    let script = "import json, sys, jsonschema\nschema = json.load(open(sys.argv[1]))\njsonschema.Draft202012Validator.check_schema(schema)\nvalidator = jsonschema.Draft202012Validator(schema)\nfor doc in json.load(open(sys.argv[2])):\n    errors = sorted(error.message for error in validator.iter_errors(doc))\n    print(json.dumps('; '.join(errors)))\n";
    let output =
        Command::new(python).args(["-c", script]).arg(&schema).arg(dir.path().join("documents.json")).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<String>(line).unwrap())
        .collect();
    files.iter().cloned().zip(lines).collect()
}

#[test]
fn valid_files_match_the_schema_and_unknown_fields_do_not() {
    let Some(python) = python() else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "jsonschema is required under CI (.ci/run installs it)");
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipping: no Python with jsonschema (set UPDRAFT_JSONSCHEMA_PYTHON)");
        }
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut valid = yaml_files(&root.join("tests/fixtures/valid"));
    for folder in ["dags", "public-data/dags", "sheets-to-postgres/dags"] {
        valid.extend(yaml_files(&root.join("../../examples").join(folder)));
    }
    for (file, errors) in schema_errors(&python, &valid) {
        assert!(errors.is_empty(), "{}: {errors}", file.display());
    }
    let rejected = ["unknown_fields.yaml", "task_types.yaml", "http.yaml", "python.yaml", "spark.yaml"];
    let invalid: Vec<PathBuf> = rejected.iter().map(|name| root.join("tests/fixtures/invalid").join(name)).collect();
    for (file, errors) in schema_errors(&python, &invalid) {
        assert!(!errors.is_empty(), "{} should not match the schema", file.display());
    }
}
