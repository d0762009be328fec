//! Black-box tests of the `updraft` binary: it runs in a temporary project, and
//! each test snapshots exit code, stdout and stderr together.

mod alerts;
mod api;
mod clean;
mod config;
mod dags;
mod deploy;
mod kube;
mod mapped;
mod metrics;
mod outputs;
mod postgres;
mod reload;
mod remote;
mod run;
mod secrets;
mod sensors;
mod standalone;
mod ui;
mod users;

use updraft_testkit::{Output, Project};

pub fn project() -> Project {
    Project::new(env!("CARGO_BIN_EXE_updraft"))
}

/// The repository's `examples/` in the project, without any state a local run left.
pub fn with_examples(project: &Project) {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    updraft_testkit::copy_tree(&repo.join("examples"), &project.path().join("examples"));
    for state in ["examples/.updraft", "examples/public-data/.updraft", "examples/sheets-to-postgres/.updraft"] {
        let _ = std::fs::remove_dir_all(project.path().join(state));
    }
}

/// Every byte of a project's SQLite database, WAL included: to prove what is not
/// stored in clear.
pub fn database_bytes(project: &Project) -> Vec<u8> {
    let mut bytes = Vec::new();
    for file in ["updraft.db", "updraft.db-wal"] {
        if let Ok(mut more) = std::fs::read(project.path().join(".updraft").join(file)) {
            bytes.append(&mut more);
        }
    }
    bytes
}

/// The contents of every file under `dir`, in any order.
pub fn files_under(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    files
}

pub fn bytes_contain(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle.as_bytes())
}

/// Runs `updraft` with `args` and renders the result for a snapshot.
pub fn run(project: &Project, args: &[&str]) -> (Output, String) {
    let output = project.run(args);
    let rendered = output.render(project);
    (output, rendered)
}

pub const CHAIN: &str = "dag: chain
tasks:
  first: {shell: 'echo first {{ ds }}'}
  second: {shell: 'echo second', depends_on: [first]}
  third: {shell: 'echo third >&2', depends_on: [second]}
";
