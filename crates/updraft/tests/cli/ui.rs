//! The web UI in real headless Chromium, driven by playwright-core from npm
//! (`tests/ui/browser.mjs`) against a real `standalone` serving the example DAGs.
//! Screenshots of every page go to `screenshots/` (ignored by git).
//!
//! Needs node, `/usr/bin/chromium`, and playwright-core in
//! `$UPDRAFT_PLAYWRIGHT/node_modules`; `.ci/run` provides them. Without them the
//! test says so and passes, except under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use updraft_testkit::{copy_tree, run_tool};

use crate::project;

fn playwright() -> Result<PathBuf, String> {
    let dir = PathBuf::from(std::env::var("UPDRAFT_PLAYWRIGHT").map_err(|_| "UPDRAFT_PLAYWRIGHT is not set")?);
    if !dir.join("node_modules/playwright-core").is_dir() {
        return Err(format!("no playwright-core under {}", dir.display()));
    }
    if !Path::new("/usr/bin/chromium").exists() && std::env::var("UPDRAFT_CHROMIUM").is_err() {
        return Err("no /usr/bin/chromium".into());
    }
    Ok(dir)
}

#[test]
fn the_ui_in_a_real_browser() {
    let modules = match playwright() {
        Ok(dir) => dir,
        Err(why) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "browser tests are required under CI: {why}");
            #[allow(clippy::print_stderr)]
            {
                eprintln!("skipping the browser test: {why}");
            }
            return;
        }
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = project();
    copy_tree(&repo.join("examples/dags"), &p.path().join("dags"));
    let server = p.standalone();
    let shots = repo.join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/browser.mjs");
    // The scripts run from the folder holding node_modules, so their imports resolve.
    let copy = modules.join("updraft-browser.mjs");
    std::fs::copy(&script, &copy).unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/steps.mjs"), modules.join("updraft-steps.mjs"))
        .unwrap();
    let mut command = Command::new("node");
    command.arg(&copy).arg(format!("http://{}", server.address)).arg(&shots).current_dir(&modules);
    let output = run_tool(command, Duration::from_secs(240));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "browser steps failed:\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains("ok   a DAG is paused from the list"), "{report}");
    drop(server);

    // The same UI with accounts: sign in, a team's DAGs only, CSRF, sign out.
    let mut p = project();
    copy_tree(&repo.join("examples/dags"), &p.path().join("dags"));
    p.env("UPDRAFT_WEBSERVER__AUTH", "password");
    let password = "a browser test password";
    let key = {
        let refused = p.run(&["variables", "set", "k", "v"]);
        refused.stderr.rsplit("this new one: ").next().unwrap().trim().to_string()
    };
    p.env("UPDRAFT_CORE__FERNET_KEY", &key);
    for (user, role, team) in [("alice", "user", "analytics"), ("olga", "op", "platform")] {
        let mut create = p.command(&["users", "create", user, "--role", role, "--team", team, "--password-stdin"]);
        let mut child = create.stdin(std::process::Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), format!("{password}\n").as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    }
    let server = p.standalone();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/login.mjs");
    let copy = modules.join("updraft-login.mjs");
    std::fs::copy(&script, &copy).unwrap();
    let mut command = Command::new("node");
    command.arg(&copy).arg(format!("http://{}", server.address)).arg(&shots).arg(password).current_dir(&modules);
    let output = run_tool(command, Duration::from_secs(240));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "sign-in steps failed:\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains("ok   signing out ends the session"), "{report}");
    assert!(report.contains("ok   an op stores a connection whose password never reaches the page"), "{report}");
    drop(server);
    // The password typed in the browser is in the database only encrypted.
    assert!(!crate::bytes_contain(&crate::database_bytes(&p), "browser-pw-1357"));
}
