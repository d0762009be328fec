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

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
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
    // The script is run from the folder holding node_modules, so its import resolves.
    let copy = modules.join("updraft-browser.mjs");
    std::fs::copy(&script, &copy).unwrap();
    let child = Command::new("node")
        .arg(&copy)
        .arg(format!("http://{}", server.address))
        .arg(&shots)
        .current_dir(&modules)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start node");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let Ok(output) = finished.recv_timeout(Duration::from_secs(240)) else {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        panic!("the browser test ran for more than 4 minutes");
    };
    let output = output.unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "browser steps failed:\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains("ok   a DAG is paused from the list"), "{report}");
    drop(server);
}
