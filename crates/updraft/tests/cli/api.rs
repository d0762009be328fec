//! The REST API against its own OpenAPI document, by Schemathesis (from PyPI): it
//! generates requests from the document (valid and invalid, and sequences that
//! follow created runs), sends them to a real `standalone` serving the example
//! DAGs, and checks every answer: status documented, body fits its schema, valid
//! input accepted, invalid input refused, no 500s.
//!
//! Schemathesis is found as `UPDRAFT_SCHEMATHESIS`, else `schemathesis` on the
//! PATH; `.ci/run` installs it. Without it the test says so and passes, except
//! under `CI=true`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use updraft_testkit::{copy_tree, run_tool};

use crate::project;

fn schemathesis() -> Option<String> {
    let candidate = std::env::var("UPDRAFT_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".to_string());
    let works = Command::new(&candidate).arg("--version").output().is_ok_and(|output| output.status.success());
    works.then_some(candidate)
}

#[test]
fn the_api_conforms_to_its_openapi_document() {
    let Some(schemathesis) = schemathesis() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Schemathesis is required under CI (.ci/run installs it)"
        );
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipping: Schemathesis not found (set UPDRAFT_SCHEMATHESIS or `pip install schemathesis`)");
        }
        return;
    };
    let p = project();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/dags");
    copy_tree(&examples, &p.path().join("dags"));
    let server = p.standalone();
    let base = format!("http://{}", server.address);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let mut command = Command::new(&schemathesis);
    command
        .arg("--no-color")
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{base}/api/v1/openapi.json"), "--url", &base])
        .args(["--checks", "all", "--max-examples", "25", "--seed", "20261126", "--request-timeout", "10"])
        .current_dir(p.path());
    // Bounded: the run takes about ten seconds.
    let output = run_tool(command, Duration::from_secs(300));
    let status = output.status;
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(status.success(), "schemathesis found problems:\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains("passed"), "{report}");
    drop(server);
}
