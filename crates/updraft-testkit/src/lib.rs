//! Test helpers: a temporary project folder with DAG files, the `updraft` binary
//! run inside it (with a clean environment), a long-running `standalone` with its
//! port, and filters that make output comparable across runs.

pub mod kube;
pub mod postgres;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A temporary project: `dags/` plus whatever the test writes.
pub struct Project {
    dir: tempfile::TempDir,
    binary: PathBuf,
    env: Vec<(String, String)>,
}

/// What a command did.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Exit code and both streams, with paths, times and durations masked.
    pub fn render(&self, project: &Project) -> String {
        format!(
            "exit: {}\n--- stdout\n{}--- stderr\n{}",
            self.code,
            project.mask(&self.stdout),
            project.mask(&self.stderr)
        )
    }
}

impl Project {
    /// `binary` is the test's `env!("CARGO_BIN_EXE_updraft")`.
    pub fn new(binary: &str) -> Project {
        let dir = tempfile::Builder::new().prefix("updraft-test").tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("dags")).expect("dags folder");
        Project { dir, binary: PathBuf::from(binary), env: Vec::new() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) -> &Project {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("a file has a folder")).expect("folder");
        std::fs::write(path, text).expect("write file");
        self
    }

    pub fn dag(&self, name: &str, text: &str) -> &Project {
        self.write(&format!("dags/{name}"), text)
    }

    pub fn env(&mut self, name: &str, value: &str) -> &mut Project {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// A command for the binary, in the project folder, with no inherited
    /// `UPDRAFT_*` settings and no color.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command.args(args).current_dir(self.dir.path());
        for (name, _) in std::env::vars() {
            if name.starts_with("UPDRAFT_") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        command.env("NO_COLOR", "1").env_remove("RUST_BACKTRACE");
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    /// Runs the binary to completion, with a deadline.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start updraft");
        let stdout = read_all(child.stdout.take().expect("stdout"));
        let stderr = read_all(child.stderr.take().expect("stderr"));
        let status = wait_with_deadline(&mut child, Duration::from_secs(120));
        Output {
            code: status.and_then(|status| status.code()).unwrap_or(-1),
            stdout: stdout.recv().unwrap_or_default(),
            stderr: stderr.recv().unwrap_or_default(),
        }
    }

    /// Replaces what differs between runs: the project path, timestamps, durations.
    pub fn mask(&self, text: &str) -> String {
        let path = self.dir.path().display().to_string();
        let text = text.replace(&path, "[PROJECT]");
        let text = mask_timestamps(&text);
        mask_durations(&text)
    }

    /// Starts `updraft standalone` on a free port and waits until it serves.
    pub fn standalone(&self) -> Service {
        self.service(&["standalone", "--port", "0"], "http://")
    }

    /// Starts a long-running command and waits until its stderr shows `ready`.
    pub fn service(&self, args: &[&str], ready: &str) -> Service {
        self.service_with(args, &[], ready)
    }

    /// [`Project::service`] with extra environment variables for this process only.
    pub fn service_with(&self, args: &[&str], env: &[(&str, &str)], ready: &str) -> Service {
        let mut command = self.command(args);
        command.envs(env.iter().copied());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start standalone");
        let stderr = child.stderr.take().expect("stderr");
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let address = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(start) = line.find(ready) {
                        // For a server, the address that follows `http://`.
                        let rest = &line[start + ready.len()..];
                        break rest.split_whitespace().next().unwrap_or_default().to_string();
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("`updraft {}` did not start; it printed:\n{}", args.join(" "), seen.join("\n"));
                }
            }
        };
        Service { child: Some(child), address, lines: lines_rx, log: seen }
    }
}

/// A running long-lived `updraft` process (`standalone`, `scheduler`, `worker`).
pub struct Service {
    child: Option<Child>,
    pub address: String,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A blocking HTTP GET on the server; returns status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.address, path)
    }

    /// SIGINT, as Ctrl-C sends; waits for the exit status.
    pub fn interrupt(mut self) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let status = wait_with_deadline(&mut child, Duration::from_secs(60));
        (status.and_then(|status| status.code()), self.drain_log())
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(mut self) -> String {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
        self.drain_log()
    }

    fn drain_log(&mut self) -> String {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.log.push(line);
        }
        self.log.join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn http_get(address: &str, path: &str) -> (u16, String) {
    http_request(address, "GET", path, &[], None)
}

/// One HTTP/1.1 request with extra headers and an optional JSON body.
pub fn http_request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    json: Option<&str>,
) -> (u16, String) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = json {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(json.unwrap_or_default());
    stream.write_all(head.as_bytes()).expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

/// Polls `check` until it returns `Some`, failing after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_all(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut reader = BufReader::new(stream);
        let _ = reader.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `2024-01-01T00:00:00+00:00`, `...Z`, and fractional forms become `[TIME]`, except
/// dates before 2025, which tests choose on purpose.
/// Copies a folder tree (a fixture, the example DAGs) into a test's folder.
pub fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("create folder");
        for entry in std::fs::read_dir(from).expect("read folder") {
            let entry = entry.expect("folder entry");
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap_or_else(|error| panic!("copy {}: {error}", from.display()));
    }
}

/// Runs an outside tool (Schemathesis, node) to completion with its output
/// captured; kills it and panics when it outlives `limit`.
pub fn run_tool(mut command: std::process::Command, limit: Duration) -> std::process::Output {
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the tool");
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(limit) {
        Ok(output) => output.expect("the tool's output"),
        Err(_) => {
            let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
            panic!("{:?} ran for more than {}s", command.get_program(), limit.as_secs());
        }
    }
}

pub fn mask_timestamps(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(len) = timestamp_at(&bytes[i..]) {
            let year: u32 = text[i..i + 4].parse().unwrap_or(0);
            if year >= 2025 {
                out.push_str("[TIME]");
            } else {
                out.push_str(&text[i..i + len]);
            }
            i += len;
        } else {
            let c = text[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn timestamp_at(bytes: &[u8]) -> Option<usize> {
    let digit = |at: usize| bytes.get(at).is_some_and(u8::is_ascii_digit);
    let is = |at: usize, b: u8| bytes.get(at) == Some(&b);
    let shape = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
    if !(shape.iter().all(|&at| digit(at))
        && is(4, b'-')
        && is(7, b'-')
        && is(10, b'T')
        && is(13, b':')
        && is(16, b':'))
    {
        return None;
    }
    let mut len = 19;
    if is(len, b'.') {
        len += 1;
        while digit(len) {
            len += 1;
        }
    }
    if is(len, b'Z') {
        len += 1;
    } else if (is(len, b'+') || is(len, b'-')) && digit(len + 1) && digit(len + 2) && is(len + 3, b':') {
        len += 6;
    }
    Some(len)
}

/// `0.05s` (a measured duration) becomes `[DURATION]`.
pub fn mask_durations(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        let preceded_ok = start == 0 || !(chars[start - 1].is_ascii_alphanumeric() || chars[start - 1] == '.');
        if preceded_ok && chars[i].is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && chars[j].is_ascii_digit() {
                j += 1;
            }
            if j + 3 < chars.len() + 1
                && chars.get(j) == Some(&'.')
                && chars.get(j + 1).is_some_and(char::is_ascii_digit)
                && chars.get(j + 2).is_some_and(char::is_ascii_digit)
                && chars.get(j + 3) == Some(&'s')
                && !chars.get(j + 4).is_some_and(|c| c.is_ascii_alphanumeric())
            {
                out.push_str("[DURATION]");
                i = j + 4;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(
            mask_timestamps("at 2026-11-26T07:39:37+00:00 and 2024-01-01T00:00:00Z"),
            "at [TIME] and 2024-01-01T00:00:00Z"
        );
        assert_eq!(mask_timestamps("x 2026-11-26T07:39:37.123456Z."), "x [TIME].");
        assert_eq!(
            mask_durations("done in 0.05s, 12.34s; v1.25s2 and 3.5s"),
            "done in [DURATION], [DURATION]; v1.25s2 and 3.5s"
        );
    }
}
