//! Benchmark workloads and timing for `bench/run`.
//!
//!   updraft-bench gen chain  --tasks 40 --out DIR       one DAG: a chain of `true` tasks
//!   updraft-bench gen files  --files 1000 --tasks 10 --out DIR
//!   updraft-bench gen fanout --width 200 --out DIR      1 -> WIDTH -> 1 of `true` tasks
//!   updraft-bench gen load --rows 1000000 --out DIR     a CSV into PostgreSQL (`load`)
//!   updraft-bench gen http-fanout --items 1000 --out DIR  list -> one mapped `http` request per item -> count
//!   updraft-bench serve --port N                        a small JSON API for `http-fanout` (HTTP/1.1 keep-alive)
//!   updraft-bench time -n 7 -- COMMAND ARGS...          wall time of a command, min/median/max
//!   updraft-bench startup -n 5 --dir DIR -- BINARY      standalone launch -> /health answering; idle RSS
//!
//! Timing is done here rather than by a shell so milliseconds are exact; memory is
//! read from `/proc` (or `/usr/bin/time` by the script).

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::exit)]

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("gen") => generate(&args[1..]),
        Some("time") => time(&args[1..]),
        Some("startup") => startup(&args[1..]),
        Some("serve") => serve(&args[1..]),
        _ => Err("usage: updraft-bench gen|time|startup|serve ... (see the source's header)".to_string()),
    };
    if let Err(error) = result {
        eprintln!("error: {error}");
        std::process::exit(2);
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|arg| arg == name).and_then(|at| args.get(at + 1)).cloned()
}

fn number(args: &[String], name: &str, default: usize) -> Result<usize, String> {
    match flag(args, name) {
        Some(text) => text.parse().map_err(|_| format!("{name} takes a number, not `{text}`")),
        None => Ok(default),
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|error| format!("{}: {error}", parent.display()))?;
    }
    std::fs::write(path, text).map_err(|error| format!("{}: {error}", path.display()))
}

fn generate(args: &[String]) -> Result<(), String> {
    let out = PathBuf::from(flag(args, "--out").ok_or("--out DIR is required")?);
    match args.first().map(String::as_str) {
        Some("chain") => {
            let n = number(args, "--tasks", 40)?;
            let mut text = format!("dag: chain_{n}\ndescription: a chain of {n} true tasks\ntasks:\n");
            for i in 0..n {
                let _ = write!(text, "  task_{i}:\n    shell: \"true\"\n");
                if i > 0 {
                    let _ = writeln!(text, "    depends_on: [task_{}]", i - 1);
                }
            }
            write(&out.join(format!("chain_{n}.yaml")), &text)
        }
        Some("files") => {
            let files = number(args, "--files", 1000)?;
            let tasks = number(args, "--tasks", 10)?;
            for f in 0..files {
                // Spread over folders, with schedules, params and templates, like real DAGs.
                let mut text = format!(
                    "dag: dag_{f:05}\ndescription: generated DAG {f}\nowner: team_{}\ntags: [generated, t{}]\nschedule: \"{} {} * * *\"\ntimezone: Asia/Seoul\nstart_date: 2024-01-01\nparams:\n  market: KOSPI\n  limit: {f}\ndefaults:\n  retries: 3\n  retry_delay: 5m\ntasks:\n",
                    f % 7,
                    f % 3,
                    f % 60,
                    f % 24
                );
                for t in 0..tasks {
                    let _ = write!(
                        text,
                        "  step_{t}:\n    shell: ./bin/step --date {{{{ ds }}}} --market {{{{ params.market }}}} --part {t}\n"
                    );
                    if t > 0 {
                        let _ = writeln!(text, "    depends_on: [step_{}]", t - 1);
                    }
                }
                write(&out.join(format!("team_{}/dag_{f:05}.yaml", f % 10)), &text)?;
            }
            Ok(())
        }
        Some("load") => {
            // A DAG loading a CSV of `rows` rows and 10 columns into PostgreSQL
            // (connection `bench_pg`, given as UPDRAFT_CONN_BENCH_PG when run).
            let rows = number(args, "--rows", 1_000_000)?;
            let dag = format!(
                "dag: load_{rows}
description: a CSV of {rows} rows and 10 columns into PostgreSQL
tasks:
  load:
    load:
      source: data/prices.csv
      connection: bench_pg
      table: bench_prices
      mode: replace
      columns: {{id: bigint, code: text, day: date, open: numeric, high: numeric, low: numeric, close: numeric, volume: bigint, up: boolean, note: text}}
"
            );
            write(&out.join(format!("load_{rows}.yaml")), &dag)?;
            let path = out.join("data/prices.csv");
            std::fs::create_dir_all(out.join("data")).map_err(|error| error.to_string())?;
            let file = std::fs::File::create(&path).map_err(|error| format!("{}: {error}", path.display()))?;
            let mut csv = std::io::BufWriter::with_capacity(1 << 20, file);
            let _ = writeln!(csv, "id,code,day,open,high,low,close,volume,up,note");
            for i in 0..rows {
                let base = 1000 + (i % 997) as u64;
                let _ = writeln!(
                    csv,
                    "{i},{:06},2024-{:02}-{:02},{base}.5,{}.25,{}.75,{}.0,{},{},\"row {i}, plain text\"",
                    i % 3000,
                    1 + i % 12,
                    1 + i % 28,
                    base + 10,
                    base - 10,
                    base + 1,
                    i * 7 % 100_000,
                    if i % 2 == 0 { "true" } else { "false" },
                );
            }
            csv.flush().map_err(|error| error.to_string())?;
            Ok(())
        }
        Some("fanout") => {
            let width = number(args, "--width", 200)?;
            let mut text = format!(
                "dag: fanout_{width}\ndescription: 1 -> {width} -> 1 true tasks\nmax_active_tasks: {width}\ntasks:\n  start:\n    shell: \"true\"\n"
            );
            let mut ends = Vec::new();
            for i in 0..width {
                let _ = write!(text, "  work_{i}:\n    shell: \"true\"\n    depends_on: [start]\n");
                ends.push(format!("work_{i}"));
            }
            let _ = write!(text, "  finish:\n    shell: \"true\"\n    depends_on: [{}]\n", ends.join(", "));
            write(&out.join(format!("fanout_{width}.yaml")), &text)
        }
        Some("http-fanout") => {
            // The list comes from an upstream output, as in a real pipeline; the API's
            // base URL from the connection `bench_api` (UPDRAFT_CONN_BENCH_API).
            let items = number(args, "--items", 1000)?;
            let dag = format!(
                r#"dag: http_fanout_{items}
description: {items} mapped HTTP requests against a local API
max_active_tasks: {items}
tasks:
  list:
    shell: |
      {{ printf '['; seq -s, 0 {last} | tr -d '\n'; printf ']'; }} > "$UPDRAFT_OUTPUT"
  fetch:
    depends_on: [list]
    for_each: "{{{{ tasks.list.output }}}}"
    for_each_limit: {items}
    http:
      url: "/items/{{{{ item }}}}"
      connection: bench_api
      extract: $.name
  count:
    depends_on: [fetch]
    shell: test "{{{{ tasks.fetch.output | length }}}}" = {items}
"#,
                last = items - 1
            );
            write(&out.join(format!("http_fanout_{items}.yaml")), &dag)
        }
        _ => Err("gen chain|files|fanout|load|http-fanout".to_string()),
    }
}

fn summary(label: &str, samples: &mut [f64]) -> String {
    samples.sort_by(f64::total_cmp);
    let median = samples[samples.len() / 2];
    format!(
        "{label}: min {:.1} median {:.1} max {:.1} (n={})",
        samples[0],
        median,
        samples[samples.len() - 1],
        samples.len()
    )
}

fn time(args: &[String]) -> Result<(), String> {
    let runs = number(args, "-n", 7)?;
    let warmup = number(args, "--warmup", 1)?;
    let split = args.iter().position(|arg| arg == "--").ok_or("time: put the command after `--`")?;
    let command = &args[split + 1..];
    let (program, rest) = command.split_first().ok_or("time: no command")?;
    let mut samples = Vec::new();
    for run in 0..warmup + runs {
        let started = Instant::now();
        let status = Command::new(program)
            .args(rest)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|error| format!("cannot run `{program}`: {error}"))?;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        if !status.success() {
            return Err(format!("`{}` failed with {status}", command.join(" ")));
        }
        if run >= warmup {
            samples.push(elapsed);
        }
    }
    println!("{}", summary("wall ms", &mut samples));
    Ok(())
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|error| error.to_string())?;
    Ok(listener.local_addr().map_err(|error| error.to_string())?.port())
}

fn health_ok(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Answers `GET /items/<n>` with `{"id": n, "name": "item n"}`, a thread per
/// connection, keeping connections open as HTTP/1.1 clients expect. Runs until
/// killed (the script stops it).
fn serve(args: &[String]) -> Result<(), String> {
    let port = number(args, "--port", 0)?;
    let listener = std::net::TcpListener::bind(("127.0.0.1", port as u16)).map_err(|error| error.to_string())?;
    println!("listening on {}", listener.local_addr().map_err(|error| error.to_string())?);
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || answer(stream));
    }
    Ok(())
}

fn answer(stream: std::net::TcpStream) {
    let mut reader = std::io::BufReader::new(match stream.try_clone() {
        Ok(clone) => clone,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if std::io::BufRead::read_line(&mut reader, &mut request_line).unwrap_or(0) == 0 {
            return;
        }
        // Headers up to the blank line; GET requests carry no body.
        loop {
            let mut line = String::new();
            if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let (status, body) = match path.strip_prefix("/items/").and_then(|id| id.parse::<u64>().ok()) {
            Some(id) => ("200 OK", format!(r#"{{"id": {id}, "name": "item {id}"}}"#)),
            None => ("404 Not Found", r#"{"error": "no such item"}"#.to_string()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn startup(args: &[String]) -> Result<(), String> {
    let runs = number(args, "-n", 5)?;
    let dir = PathBuf::from(flag(args, "--dir").ok_or("--dir is required")?);
    let split = args.iter().position(|arg| arg == "--").ok_or("startup: put the binary after `--`")?;
    let binary = args.get(split + 1).ok_or("startup: no binary")?;
    let mut launch = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..runs + 1 {
        let port = free_port()?;
        let started = Instant::now();
        let mut child = Command::new(binary)
            .args(["standalone", "--port", &port.to_string()])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("cannot start `{binary}`: {error}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !health_ok(port) {
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("standalone did not answer /health within 30 s".to_string());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        launch.push(started.elapsed().as_secs_f64() * 1000.0);
        // Idle: after start-up work (the first DAG sync) has settled.
        std::thread::sleep(Duration::from_secs(3));
        if let Some(kib) = rss_kib(child.id()) {
            idle.push(kib / 1024.0);
        }
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let _ = child.wait();
    }
    // The first launch creates the database; report the warm ones.
    launch.remove(0);
    idle.remove(0);
    println!("{}", summary("launch to /health ms", &mut launch));
    println!("{}", summary("idle RSS MiB", &mut idle));
    Ok(())
}
