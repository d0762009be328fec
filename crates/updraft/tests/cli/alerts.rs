//! Alerts end to end: `standalone` with notifiers in `updraft.toml`, a failing
//! task, and real receivers on loopback — an HTTP server standing in for Slack's
//! incoming webhook, and aiosmtpd (PyPI) as the mail server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use updraft_testkit::eventually;

use crate::project;

/// Requests received: path and JSON body, in order.
type Received = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// A one-thread HTTP/1.1 server that records each request's path and JSON body.
fn webhook_receiver() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got: Received = Arc::default();
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_string();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            seen.lock().unwrap().push((path, serde_json::from_slice(&body).unwrap_or_default()));
            let _ = reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (url, got)
}

/// aiosmtpd writing each message to a Maildir, or `None` (saying why) without it.
fn smtp_server(maildir: &std::path::Path) -> Option<(u16, std::process::Child)> {
    let python = std::env::var("UPDRAFT_AIOSMTPD_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let probe = std::process::Command::new(&python).args(["-c", "import aiosmtpd"]).output();
    if !probe.is_ok_and(|out| out.status.success()) {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "aiosmtpd is missing under CI (.ci/run installs it)");
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipping the email part: no aiosmtpd for `{python}` (set UPDRAFT_AIOSMTPD_PYTHON)");
        }
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new(&python)
        .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
        .arg(maildir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(10), "aiosmtpd listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    Some((port, child))
}

const FAILING: &str = "
dag: nightly
alerts:
  on_failure: team
tasks:
  extract:
    shell: 'echo reading; echo \"ERROR: no such table: sales\" >&2; exit 3'
    alerts:
      on_failure: [team, oncall]
";

#[test]
fn a_failure_reaches_slack_and_email_once_each() {
    let (url, got) = webhook_receiver();
    let maildir = tempfile::tempdir().unwrap();
    let smtp = smtp_server(&maildir.path().join("mail"));
    let mut p = project();
    let email = match &smtp {
        Some((port, _)) => format!(
            "[notifiers.oncall]\nkind = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\ntls = \"none\"\nfrom = \"Updraft <updraft@example.com>\"\nto = [\"oncall@example.com\"]\n"
        ),
        // Without a mail server the address goes nowhere; the Slack part still runs.
        None => "[notifiers.oncall]\nkind = \"webhook\"\nurl = \"${TEAM_SLACK}/oncall\"\n".to_string(),
    };
    p.write(
        "updraft.toml",
        &format!(
            "[webserver]\nbase_url = \"http://updraft.example:8080/\"\n\n[notifiers.team]\nkind = \"slack\"\nwebhook_url = \"${{TEAM_SLACK}}/slack\"\n\n{email}"
        ),
    );
    p.env("TEAM_SLACK", &url);
    p.dag("nightly.yaml", FAILING);
    let _standalone = p.standalone();
    let output = p.run(&["dags", "trigger", "nightly", "--wait"]);
    assert_ne!(output.code, 0, "the run fails: {}", output.stdout);

    let slack = eventually(Duration::from_secs(15), "the task's and the run's Slack messages", || {
        let messages: Vec<serde_json::Value> =
            got.lock().unwrap().iter().filter(|(path, _)| path == "/slack").map(|(_, body)| body.clone()).collect();
        (messages.len() >= 2).then_some(messages)
    });
    let task = slack.iter().find(|m| m["text"] == "nightly.extract failed").expect("the task's alert");
    let text = task.to_string();
    for expected in [
        "*DAG*\\nnightly",
        "*Task*\\nextract",
        "*Try*\\n1 of 1",
        "exit code 3",
        "ERROR: no such table: sales",
        "<http://updraft.example:8080/dags/nightly/runs/",
        "/tasks/extract?try=1|View the log>",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }
    assert!(slack.iter().any(|m| m["text"] == "nightly run failed"), "{slack:?}");

    if smtp.is_some() {
        let mail = eventually(Duration::from_secs(15), "the email", || {
            let new = maildir.path().join("mail/new");
            let file = std::fs::read_dir(new).ok()?.flatten().next()?;
            std::fs::read_to_string(file.path()).ok()
        });
        assert!(mail.contains("Subject: [Updraft] nightly.extract failed"), "{mail}");
        assert!(mail.contains("To: oncall@example.com"), "{mail}");
        assert!(mail.contains("ERROR: no such table: sales"), "{mail}");
    }
    // Once each, however long it runs on.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(got.lock().unwrap().iter().filter(|(path, _)| path == "/slack").count(), 2);
    if let Some((_, mut child)) = smtp {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn a_notifier_not_configured_is_an_error_of_the_dag_file() {
    let p = project();
    p.write(
        "updraft.toml",
        "[notifiers.data-team]\nkind = \"slack\"\nwebhook_url = \"https://hooks.slack.com/services/T/B/X\"\n",
    );
    p.dag("typo.yaml", "dag: typo\nalerts:\n  on_failure: data-taem\ntasks:\n  a: {shell: 'true'}\n");
    let output = p.run(&["dags", "validate"]);
    assert_eq!(output.code, 1, "{}", output.stdout);
    assert!(
        output
            .stderr
            .contains("typo.yaml:3:15: `alerts.on_failure`: unknown notifier `data-taem`, did you mean `data-team`?"),
        "{}",
        output.stderr
    );

    // And a bad notifier is an error of the configuration, where it is written.
    p.write("updraft.toml", "[notifiers.data-team]\nkind = \"slack\"\nwebhook_url = \"hooks.slack.com/x\"\n");
    let output = p.run(&["dags", "list"]);
    assert_eq!(output.code, 1);
    assert!(
        output.stderr.contains(
            "updraft.toml:3:1: notifier `data-team`: `webhook_url` must be an http(s) URL, not `hooks.slack.com/x`"
        ),
        "{}",
        output.stderr
    );
    p.write("updraft.toml", "[notifiers.data-team]\nkind = \"slack\"\nwebhook_url = \"${NOT_SET}\"\n");
    let output = p.run(&["dags", "list"]);
    assert!(
        output.stderr.contains("notifier `data-team` reads `${NOT_SET}`, but the environment has no `NOT_SET`"),
        "{}",
        output.stderr
    );
}
