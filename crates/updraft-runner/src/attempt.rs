//! One attempt of one task: render the templates, start `/bin/sh -c` in its own
//! process group, stream its output to the log, enforce the timeout, and report how
//! it ended. Knows nothing about the store, so `tasks test` uses it directly.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use minijinja::Environment;
use rustix::process::Signal;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, watch};
use updraft_core::retry::AttemptOutcome;
use updraft_core::{Dag, Task, TaskKind};

use crate::procfs;
use crate::template::{self, Names, RunContext};

/// Everything needed to run one attempt.
#[derive(Debug, Clone)]
pub struct AttemptSpec {
    pub dag: Arc<Dag>,
    pub task_id: String,
    pub run: RunContext,
    pub try_number: u32,
    /// Attempts this task instance may use in all (retries + 1), for the log header.
    pub tries_allowed: u32,
    pub dags_folder: PathBuf,
    pub log_path: Option<PathBuf>,
    /// Set as `UPDRAFT_ATTEMPT` so a lost attempt can be found even without its pid.
    pub attempt_token: Option<String>,
    /// Between SIGTERM and SIGKILL when the attempt is stopped.
    pub kill_grace: Duration,
    /// Variables and connections for templates; their secret values are masked in
    /// the log.
    pub secrets: Arc<updraft_store::Secrets>,
    /// The largest output (`$UPDRAFT_OUTPUT`) a successful attempt may hand on, in bytes.
    pub output_limit: u64,
}

/// Outputs are capped at this unless `runner.output_limit` says otherwise.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 1 << 20;

/// Who the attempt is, for observers.
#[derive(Debug, Clone)]
pub struct AttemptLabel {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    /// -1 unless the task is mapped.
    pub map_index: i32,
    pub try_number: u32,
}

impl AttemptLabel {
    /// `task_id`, or `task_id[3]` for a mapped instance.
    pub fn name(&self) -> String {
        updraft_core::mapping::instance_label(&self.task_id, self.map_index)
    }
}

/// Sees an attempt's output as it happens (`dags test` prints it).
pub trait AttemptObserver: Send + Sync {
    fn started(&self, _attempt: &AttemptLabel) {}
    fn line(&self, _attempt: &AttemptLabel, _line: &str) {}
    fn ended(&self, _attempt: &AttemptLabel, _result: &AttemptResult) {}
    /// The attempt's outcome is in the store: the task instance is now `state`.
    fn recorded(&self, _attempt: &AttemptLabel, _state: updraft_core::TaskState, _detail: Option<&str>) {}
}

/// An observer that sees nothing.
pub struct Quiet;
impl AttemptObserver for Quiet {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Signaled(i32),
    TimedOut(updraft_core::Duration),
    /// Stopped because this process is shutting down.
    Interrupted,
    /// Left running (a pod) when this process stopped following it: the attempt
    /// stays `running` for another runner to adopt, and nothing is recorded.
    Released,
    /// Never started: a template, working folder or log problem.
    NotStarted(String),
    /// Exited 0, but what it left in `$UPDRAFT_OUTPUT` cannot be handed on.
    BadOutput(String),
    /// A built-in task type (run by the runner itself) did its work.
    Done,
    /// A built-in task type failed, for this reason.
    Failed(String),
    /// A sensor in reschedule mode found nothing yet: it looks again after `next`,
    /// its wait counted from `waiting_since`.
    Rescheduled {
        next: updraft_core::Duration,
        waiting_since: jiff::Timestamp,
    },
}

#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub ending: Ending,
    pub duration: Duration,
    /// What a successful attempt wrote to `$UPDRAFT_OUTPUT` (JSON text).
    pub output: Option<String>,
}

impl AttemptResult {
    pub fn outcome(&self) -> AttemptOutcome {
        match self.ending {
            Ending::Exited(code) => AttemptOutcome::from_exit_code(code),
            Ending::Done => AttemptOutcome::Success,
            _ => AttemptOutcome::Failed,
        }
    }

    pub fn exit_code(&self) -> Option<i32> {
        match self.ending {
            Ending::Exited(code) => Some(code),
            Ending::BadOutput(_) => Some(0),
            _ => None,
        }
    }

    /// Why it ended, when not simply by its exit code.
    pub fn reason(&self) -> Option<String> {
        match &self.ending {
            Ending::Exited(_) | Ending::Done => None,
            Ending::Signaled(signal) => Some(format!("killed by signal {signal}")),
            Ending::TimedOut(limit) => Some(format!("timed out after {limit}")),
            Ending::Interrupted => {
                Some("interrupted: updraft was stopped; it runs again without using a retry".to_string())
            }
            Ending::Released => Some("released: its pod keeps running for another runner to adopt".to_string()),
            Ending::NotStarted(why) | Ending::BadOutput(why) | Ending::Failed(why) => Some(why.clone()),
            Ending::Rescheduled { next, .. } => Some(format!("rescheduled: nothing yet, looking again in {next}")),
        }
    }

    pub fn describe(&self) -> String {
        match &self.ending {
            Ending::Exited(code) => format!("exit code {code}"),
            Ending::Done => "done".to_string(),
            _ => self.reason().unwrap_or_default(),
        }
    }
}

/// Longest line kept whole; longer output is split into lines of this size.
const MAX_LINE: usize = 64 * 1024;

pub async fn execute(
    spec: &AttemptSpec,
    templates: &Environment<'static>,
    observer: Arc<dyn AttemptObserver>,
    mut cancel: watch::Receiver<bool>,
    spawned: oneshot::Sender<(u32, Option<u64>)>,
) -> AttemptResult {
    let Opened { started, label, masker, mut log } = match open(spec, observer.as_ref()) {
        Ok(opened) => opened,
        Err(result) => return result,
    };
    let Some(task) = spec.dag.task(&spec.task_id) else {
        let why = format!("task `{}` is not in this version of DAG `{}`", spec.task_id, label.dag_id);
        log.note(&why);
        return not_started(started, why, &label, observer.as_ref());
    };
    log.note(&format!(
        "attempt {} of {} of `{}.{}` in run `{}` started",
        spec.try_number, spec.tries_allowed, label.dag_id, label.task_id, label.run_id
    ));
    let prepared = match prepare(spec, task, templates) {
        Ok(prepared) => prepared,
        Err(why) => {
            log.note(&why);
            return not_started(started, why, &label, observer.as_ref());
        }
    };
    if matches!(
        task.kind,
        TaskKind::Http(_)
            | TaskKind::Sql(_)
            | TaskKind::Load(_)
            | TaskKind::Copy(_)
            | TaskKind::Sync(_)
            | TaskKind::Sensor(_)
    ) {
        return run_in_process(spec, task, prepared, log, masker, observer, label, started, cancel).await;
    }
    let output_path = output_path(spec);
    // A file left by an earlier try is not this try's output.
    let _ = std::fs::remove_file(&output_path);

    let (program, args) = match argv(task, &prepared) {
        Ok(argv) => argv,
        Err(why) => {
            log.note(&why);
            return not_started(started, why, &label, observer.as_ref());
        }
    };
    match &task.kind {
        TaskKind::Python(_) => log.note(&format!("python: {} {}", program.display(), shown_args(&args))),
        TaskKind::Spark(_) => log.note(&format!("spark: {} {}", program.display(), args.join(" "))),
        _ => log.note(&format!("command: {}", prepared.command)),
    }
    let mut command = Command::new(&program);
    command
        .args(&args)
        .current_dir(&prepared.cwd)
        .envs(prepared.env.iter().map(|(name, value)| (name, value)))
        .env("UPDRAFT_OUTPUT", &output_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let why = format!("cannot start `{}`: {error}", program.display());
            log.note(&why);
            return not_started(started, why, &label, observer.as_ref());
        }
    };
    let pgid = child.id().expect("a just-spawned child has a pid");
    let _ = spawned.send((pgid, procfs::start_time(pgid)));

    let (lines_tx, lines_rx) = mpsc::channel::<String>(1024);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(read_lines(stdout, lines_tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(read_lines(stderr, lines_tx.clone()));
    }
    drop(lines_tx);
    let writer = spawn_writer(lines_rx, log, masker, observer.clone(), label.clone());

    let timeout = task.timeout;
    let deadline = timeout.map(|limit| tokio::time::Instant::now() + limit.to_std());
    let wait = child.wait();
    tokio::pin!(wait);
    let ending = tokio::select! {
        status = &mut wait => exit_ending(status),
        () = sleep_until(deadline) => {
            terminate(pgid, spec.kill_grace, &mut wait).await;
            Ending::TimedOut(timeout.expect("a deadline comes from a timeout"))
        }
        () = cancelled(&mut cancel) => {
            terminate(pgid, spec.kill_grace, &mut wait).await;
            Ending::Interrupted
        }
    };
    // The attempt is over when its shell is: anything it left in its group goes too,
    // which also closes the pipes so the readers finish.
    procfs::signal_group(pgid, Signal::KILL);
    let mut log = match writer.await {
        Ok(log) => log,
        Err(_) => LogFile::closed(Arc::default()),
    };
    let (ending, output) = match ending {
        Ending::Exited(code) if AttemptOutcome::from_exit_code(code) == AttemptOutcome::Success => {
            match read_output(&output_path, spec.output_limit) {
                Ok(output) => (ending, output),
                Err(why) => (Ending::BadOutput(why), None),
            }
        }
        other => (other, None),
    };
    let _ = std::fs::remove_file(&output_path);
    if let Some(output) = &output {
        log.note(&format!("output: {} bytes of JSON for downstream tasks", output.len()));
    }
    let result = AttemptResult { ending, duration: started.elapsed(), output };
    log.note(&format!("attempt ended after {:.2}s: {}", result.duration.as_secs_f64(), result.describe()));
    observer.ended(&label, &result);
    result
}

/// An attempt begun: who it is, told to the observer, with its log open.
pub(crate) struct Opened {
    pub started: Instant,
    pub label: AttemptLabel,
    pub masker: Arc<crate::secrets::Masker>,
    pub log: LogFile,
}

/// Begins an attempt, or ends it at once if its log cannot be opened.
pub(crate) fn open(spec: &AttemptSpec, observer: &dyn AttemptObserver) -> Result<Opened, AttemptResult> {
    let started = Instant::now();
    let label = AttemptLabel {
        dag_id: spec.dag.dag_id().to_string(),
        run_id: spec.run.run_id.clone(),
        task_id: spec.task_id.clone(),
        map_index: spec.run.mapped.as_ref().map_or(updraft_core::mapping::UNMAPPED, |mapped| mapped.index as i32),
        try_number: spec.try_number,
    };
    observer.started(&label);
    let masker = Arc::new(crate::secrets::Masker::new(&spec.secrets));
    match LogFile::open(spec.log_path.as_deref(), masker.clone()) {
        Ok(log) => Ok(Opened { started, label, masker, log }),
        Err(error) => Err(not_started(started, error, &label, observer)),
    }
}

/// The program a process-backed task runs, and its arguments: `/bin/sh -c` for
/// `shell`; the interpreter (or the virtualenv's) with the script or `-c` code,
/// then the rendered `args`, for `python`.
fn argv(task: &Task, prepared: &Prepared) -> Result<(PathBuf, Vec<String>), String> {
    let mut argv = match &task.kind {
        TaskKind::Python(python) => python_argv(python, prepared, Files::Here(&prepared.cwd_base))?,
        TaskKind::Spark(spark) => return spark_argv(spark, task, prepared),
        _ => shell_argv(prepared),
    };
    let program = PathBuf::from(argv.remove(0));
    Ok((program, argv))
}

/// Where a task's files (a virtualenv, a script) are found.
#[derive(Clone, Copy)]
enum Files<'a> {
    /// On this machine, relative to the DAG's folder: checked before starting.
    Here(&'a Path),
    /// In a container: as the DAG file writes them, from its working folder.
    InContainer,
}

impl Files<'_> {
    /// The path of `relative` (a `what`) for the process, or why it cannot start.
    fn place(self, relative: &str, what: &str, hint: &str) -> Result<String, String> {
        match self {
            Files::Here(base) => {
                let path = base.join(relative);
                match path.is_file() {
                    true => Ok(path.display().to_string()),
                    false => Err(format!("cannot start: no {what} at `{}`{hint}", path.display())),
                }
            }
            Files::InContainer => Ok(relative.to_string()),
        }
    }
}

fn shell_argv(prepared: &Prepared) -> Vec<String> {
    vec!["/bin/sh".to_string(), "-c".to_string(), prepared.command.clone()]
}

fn python_argv(
    python: &updraft_core::dag::PythonTask,
    prepared: &Prepared,
    files: Files<'_>,
) -> Result<Vec<String>, String> {
    let program = match (&python.venv, &python.interpreter) {
        (Some(venv), _) => files.place(
            &format!("{}/bin/python", venv.trim_end_matches('/')),
            "interpreter",
            " (is `venv` a virtualenv?)",
        )?,
        (None, Some(interpreter)) => interpreter.clone(),
        (None, None) => "python3".to_string(),
    };
    let mut argv = vec![program];
    match (&python.script, &python.code) {
        (Some(script), _) => argv.push(files.place(script, "script", "")?),
        (None, Some(code)) => argv.extend(["-c".to_string(), code.clone()]),
        (None, None) => {}
    }
    argv.extend(
        prepared.rendered.iter().filter(|(field, _)| field.starts_with("python.args.")).map(|(_, arg)| arg.clone()),
    );
    Ok(argv)
}

/// What a pod runs for an attempt of a `shell` or `python` task: the program and
/// its arguments (paths as the DAG file writes them, relative to the container's
/// working folder) and the environment, every template rendered.
pub fn container_command(
    spec: &AttemptSpec,
    templates: &Environment<'static>,
) -> Result<(Vec<String>, std::collections::BTreeMap<String, String>), String> {
    let task = spec
        .dag
        .task(&spec.task_id)
        .ok_or_else(|| format!("task `{}` is not in DAG `{}`", spec.task_id, spec.dag.dag_id()))?;
    let prepared = prepare(spec, task, templates)?;
    let argv = match &task.kind {
        TaskKind::Shell { .. } => shell_argv(&prepared),
        TaskKind::Python(python) => python_argv(python, &prepared, Files::InContainer)?,
        _ => return Err(format!("a `{}` task does not run in a pod", task.kind.type_name())),
    };
    Ok((argv, prepared.env.into_iter().collect()))
}

/// `spark-submit` with the task's options, the application, then its arguments.
fn spark_argv(
    spark: &updraft_core::dag::SparkTask,
    task: &Task,
    prepared: &Prepared,
) -> Result<(PathBuf, Vec<String>), String> {
    let application = prepared.cwd_base.join(&spark.application);
    if !application.is_file() {
        return Err(format!("cannot start: no application at `{}`", application.display()));
    }
    fn rendered<'a>(prepared: &'a Prepared, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a String)> {
        prepared
            .rendered
            .iter()
            .filter(move |(field, _)| field.starts_with(prefix))
            .map(|(field, value)| (field, value))
    }
    let name = rendered(prepared, "spark.name")
        .map(|(_, name)| name.clone())
        .next()
        .unwrap_or_else(|| format!("{}.{}", prepared.dag_id, task.task_id));
    let mut args = vec![
        "--master".to_string(),
        spark.master.clone(),
        "--deploy-mode".to_string(),
        spark.deploy_mode.clone(),
        "--name".to_string(),
        name,
    ];
    if let Some(class) = &spark.main_class {
        args.extend(["--class".to_string(), class.clone()]);
    }
    if !spark.packages.is_empty() {
        args.extend(["--packages".to_string(), spark.packages.join(",")]);
    }
    for (field, value) in rendered(prepared, "spark.conf.") {
        let key = field.trim_start_matches("spark.conf.");
        args.extend(["--conf".to_string(), format!("{key}={value}")]);
    }
    args.push(application.display().to_string());
    args.extend(rendered(prepared, "spark.args.").map(|(_, arg)| arg.clone()));
    let program = PathBuf::from(spark.spark_submit.clone().unwrap_or_else(|| "spark-submit".to_string()));
    Ok((program, args))
}

/// Arguments for the log: inline code by its first line.
fn shown_args(args: &[String]) -> String {
    let mut shown = Vec::new();
    let mut code_next = false;
    for arg in args {
        if code_next {
            let first = arg.lines().next().unwrap_or_default();
            shown.push(if arg.lines().count() > 1 { format!("'{first} …'") } else { format!("'{first}'") });
            code_next = false;
        } else {
            code_next = arg == "-c";
            shown.push(arg.clone());
        }
    }
    shown.join(" ")
}

/// The one writer of an attempt's log: every line masked, shown to the observer,
/// appended to the file; the log comes back when the senders are gone.
pub(crate) fn spawn_writer(
    mut lines: mpsc::Receiver<String>,
    mut log: LogFile,
    masker: Arc<crate::secrets::Masker>,
    observer: Arc<dyn AttemptObserver>,
    label: AttemptLabel,
) -> tokio::task::JoinHandle<LogFile> {
    tokio::spawn(async move {
        while let Some(line) = lines.recv().await {
            let line = masker.mask(&line).into_owned();
            observer.line(&label, &line);
            log.write_line(&line, lines.is_empty());
        }
        log
    })
}

struct Prepared {
    command: String,
    cwd: PathBuf,
    env: Vec<(String, String)>,
    /// Every templated field, rendered (a built-in type reads its own).
    rendered: Vec<(String, String)>,
    /// The DAG's folder: scripts and virtualenvs are found from there.
    cwd_base: PathBuf,
    dag_id: String,
}

/// A built-in task type run by the runner itself (`http`, `sql`): timeouts and
/// interruption drop its work. There is no process, so nothing is left to kill.
#[allow(clippy::too_many_arguments)]
async fn run_in_process(
    spec: &AttemptSpec,
    task: &Task,
    prepared: Prepared,
    mut log: LogFile,
    masker: Arc<crate::secrets::Masker>,
    observer: Arc<dyn AttemptObserver>,
    label: AttemptLabel,
    started: Instant,
    mut cancel: watch::Receiver<bool>,
) -> AttemptResult {
    let mut connections = std::collections::BTreeMap::new();
    for conn_id in task.connections() {
        match spec.secrets.connections.get(conn_id) {
            Some(connection) => {
                connections.insert(conn_id.to_string(), connection.clone());
            }
            None => {
                let why = format!("no connection `{conn_id}` (see `updraft connections list`)");
                log.note(&why);
                return not_started(started, why, &label, observer.as_ref());
            }
        }
    }
    // The one connection of the types that have one.
    let connection = task.connections().first().and_then(|conn_id| connections.get(*conn_id)).cloned();
    match &task.kind {
        TaskKind::Http(http) => log.note(&format!(
            "http: {} {}",
            http.method,
            prepared.rendered.first().map_or("", |(_, url)| url.as_str())
        )),
        TaskKind::Sql(sql) => log.note(&format!("sql: on connection `{}`", sql.connection)),
        TaskKind::Load(load) => log.note(&format!("load: into `{}` on connection `{}`", load.table, load.connection)),
        TaskKind::Copy(_) | TaskKind::Sync(_) => log.note(&format!(
            "{}: {} -> {}",
            task.kind.type_name(),
            prepared.rendered.first().map_or("", |(_, from)| from.as_str()),
            prepared.rendered.get(1).map_or("", |(_, to)| to.as_str())
        )),
        TaskKind::Sensor(sensor) => log.note(&format!(
            "sensor: waiting for {} (every {}, at most {}, {:?} mode)",
            prepared.rendered.first().map_or("", |(_, path)| path.as_str()),
            sensor.poke_interval,
            sensor.timeout,
            sensor.mode
        )),
        _ => {}
    }
    let (lines_tx, lines_rx) = mpsc::channel::<String>(1024);
    let writer = spawn_writer(lines_rx, log, masker, observer.clone(), label.clone());
    let rendered = crate::http::Rendered { fields: prepared.rendered };
    // Set by a sensor in reschedule mode that found nothing yet.
    let rescheduled: std::sync::Mutex<Option<Ending>> = std::sync::Mutex::new(None);
    let timeout = task.timeout;
    let deadline = timeout.map(|limit| tokio::time::Instant::now() + limit.to_std());
    let work = async {
        match (&task.kind, connection.as_ref()) {
            (TaskKind::Http(http), _) => crate::http::run(http, &rendered, &connections, &prepared.cwd, lines_tx).await,
            (TaskKind::Sql(sql), Some(connection)) => {
                crate::sql::run(sql, &rendered, connection, &prepared.cwd_base, lines_tx).await
            }
            (TaskKind::Load(load), _) => {
                let source =
                    rendered.fields.iter().find(|(field, _)| field == "load.source").map_or("", |(_, v)| v.as_str());
                crate::load::run(load, source, &connections, &prepared.cwd_base, lines_tx).await
            }
            (TaskKind::Copy(transfer) | TaskKind::Sync(transfer), _) => {
                let sync = matches!(task.kind, TaskKind::Sync(_));
                let field = |index: usize| rendered.fields.get(index).map_or("", |(_, value)| value.as_str());
                crate::objects::transfer(transfer, sync, field(0), field(1), &connections, &prepared.cwd_base, lines_tx)
                    .await
            }
            (TaskKind::Sensor(sensor), _) => {
                let path = rendered.fields.first().map_or("", |(_, value)| value.as_str());
                let waiting_since = waiting_since(spec);
                let waited = (jiff::Timestamp::now().duration_since(waiting_since)).unsigned_abs();
                match crate::objects::sense(sensor, path, &connections, &prepared.cwd_base, waited, lines_tx).await? {
                    crate::objects::Sensed::Found(output) => Ok(Some(output)),
                    crate::objects::Sensed::NotYet => {
                        *rescheduled.lock().expect("one writer") =
                            Some(Ending::Rescheduled { next: sensor.poke_interval, waiting_since });
                        Ok(None)
                    }
                }
            }
            _ => Err("this task type does not run in the runner".to_string()),
        }
    };
    let (ending, output) = tokio::select! {
        result = work => match result {
            Ok(Some(output)) if output.len() as u64 > spec.output_limit => (
                Ending::Failed(format!(
                    "the task's output is {} bytes, over the limit of {} (`runner.output_limit`); hand on less",
                    output.len(),
                    spec.output_limit
                )),
                None,
            ),
            Ok(output) => match rescheduled.lock().expect("one writer").take() {
                Some(ending) => (ending, None),
                None => (Ending::Done, output),
            },
            Err(why) => (Ending::Failed(why), None),
        },
        () = sleep_until(deadline) => (Ending::TimedOut(timeout.expect("a deadline comes from a timeout")), None),
        () = cancelled(&mut cancel) => (Ending::Interrupted, None),
    };
    let mut log = match writer.await {
        Ok(log) => log,
        Err(_) => LogFile::closed(Arc::default()),
    };
    if let Ending::Failed(why) = &ending {
        log.note(why);
    }
    if let Some(output) = &output {
        log.note(&format!("output: {} bytes of JSON for downstream tasks", output.len()));
    }
    let result = AttemptResult { ending, duration: started.elapsed(), output };
    log.note(&format!("attempt ended after {:.2}s: {}", result.duration.as_secs_f64(), result.describe()));
    observer.ended(&label, &result);
    result
}

/// When a sensor started waiting: the previous try's, if that try was a reschedule
/// of this wait (it left `{"waiting_since": ..., "try": n - 1}` as the task's
/// output), else now.
fn waiting_since(spec: &AttemptSpec) -> jiff::Timestamp {
    let previous = spec.run.outputs.get(&spec.task_id);
    let earlier = previous.filter(|output| output["try"].as_u64() == Some(u64::from(spec.try_number) - 1));
    earlier
        .and_then(|output| output["waiting_since"].as_str())
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(jiff::Timestamp::now)
}

fn prepare(spec: &AttemptSpec, task: &Task, templates: &Environment<'static>) -> Result<Prepared, String> {
    let dag = spec.dag.as_ref();
    let names = Names::new(dag, &spec.run);
    let dag_folder = dag_folder(&spec.dags_folder, &dag.spec().fileloc);
    let (mut command, mut cwd, mut env, mut rendered) = (String::new(), dag_folder.clone(), Vec::new(), Vec::new());
    for (field, value) in template::render_fields(templates, dag, task, &spec.run, spec.try_number, &spec.secrets) {
        let value = value.map_err(|error| format!("cannot render `{field}`: {error}"))?;
        rendered.push((field.clone(), value.clone()));
        match field.as_str() {
            "shell" => command = value,
            "cwd" => cwd = dag_folder.join(value),
            other => {
                if let Some(name) = other.strip_prefix("env.") {
                    env.push((name.to_string(), value));
                }
            }
        }
    }
    if !cwd.is_dir() {
        return Err(format!("cannot start: working folder `{}` does not exist", cwd.display()));
    }
    env.extend([
        ("UPDRAFT_DAG_ID".to_string(), dag.dag_id().to_string()),
        ("UPDRAFT_TASK_ID".to_string(), spec.task_id.clone()),
        ("UPDRAFT_RUN_ID".to_string(), spec.run.run_id.clone()),
        ("UPDRAFT_TRY_NUMBER".to_string(), spec.try_number.to_string()),
        ("UPDRAFT_LOGICAL_DATE".to_string(), names.ts.clone()),
        ("UPDRAFT_DS".to_string(), names.ds.clone()),
        ("UPDRAFT_DATA_INTERVAL_START".to_string(), names.data_interval_start.clone()),
        ("UPDRAFT_DATA_INTERVAL_END".to_string(), names.data_interval_end.clone()),
    ]);
    if let Some(token) = &spec.attempt_token {
        env.push(("UPDRAFT_ATTEMPT".to_string(), token.clone()));
    }
    if let Some(mapped) = &spec.run.mapped {
        env.push(("UPDRAFT_MAP_INDEX".to_string(), mapped.index.to_string()));
    }
    Ok(Prepared { command, cwd, env, rendered, cwd_base: dag_folder, dag_id: dag.dag_id().to_string() })
}

/// Where the task may write its output: next to its log, else (`tasks test`) in
/// the temporary folder, named so concurrent attempts never share a file.
fn output_path(spec: &AttemptSpec) -> PathBuf {
    match &spec.log_path {
        Some(log) => log.with_extension("output.json"),
        None => {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::env::temp_dir().join(format!("updraft-output-{}-{n}.json", std::process::id()))
        }
    }
}

/// The attempt's output: none if it wrote nothing, else JSON of at most `limit`
/// bytes, or why not.
fn read_output(path: &Path, limit: u64) -> Result<Option<String>, String> {
    let size = match std::fs::metadata(path) {
        Ok(metadata) => metadata.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read the task's output `{}`: {error}", path.display())),
    };
    if size > limit {
        return Err(format!(
            "the task's output is {size} bytes, over the limit of {limit} (`runner.output_limit`); hand on a path or key instead"
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read the task's output `{}`: {error}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(_) => Ok(Some(text.trim().to_string())),
        Err(error) => Err(format!(
            "the task's output is not JSON (line {}, column {}): {}",
            error.line(),
            error.column(),
            error.to_string().split(" at line").next().unwrap_or_default()
        )),
    }
}

/// The folder holding a DAG's file: tasks run there unless they set `cwd`.
pub fn dag_folder(dags_folder: &Path, fileloc: &str) -> PathBuf {
    let file = dags_folder.join(fileloc);
    file.parent().map_or_else(|| dags_folder.to_path_buf(), Path::to_path_buf)
}

pub(crate) fn not_started(
    started: Instant,
    why: String,
    label: &AttemptLabel,
    observer: &dyn AttemptObserver,
) -> AttemptResult {
    let result = AttemptResult { ending: Ending::NotStarted(why), duration: started.elapsed(), output: None };
    observer.ended(label, &result);
    result
}

fn exit_ending(status: std::io::Result<std::process::ExitStatus>) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => Ending::Exited(code),
            (None, Some(signal)) => Ending::Signaled(signal),
            (None, None) => Ending::NotStarted("exit status unknown".to_string()),
        },
        Err(error) => Ending::NotStarted(format!("cannot wait for the task process: {error}")),
    }
}

/// SIGTERM to the whole group, then SIGKILL after the grace period.
async fn terminate<F>(pgid: u32, grace: Duration, wait: &mut std::pin::Pin<&mut F>)
where
    F: std::future::Future<Output = std::io::Result<std::process::ExitStatus>>,
{
    procfs::signal_group(pgid, Signal::TERM);
    if tokio::time::timeout(grace, wait.as_mut()).await.is_err() {
        procfs::signal_group(pgid, Signal::KILL);
        let _ = wait.as_mut().await;
    }
}

pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|stop| *stop).await.is_err() {
        // The sender is gone: nobody can cancel any more.
        std::future::pending::<()>().await;
    }
}

async fn read_lines(stream: impl AsyncRead + Unpin, lines: mpsc::Sender<String>) {
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let mut done = false;
        // Read up to a newline or the line limit, whichever comes first.
        loop {
            let available = match reader.fill_buf().await {
                Ok(available) => available,
                Err(_) => {
                    done = true;
                    break;
                }
            };
            if available.is_empty() {
                done = true;
                break;
            }
            let room = MAX_LINE - buffer.len();
            let take = available.iter().take(room).position(|b| *b == b'\n');
            match take {
                Some(newline) => {
                    buffer.extend_from_slice(&available[..newline]);
                    reader.consume(newline + 1);
                    break;
                }
                None => {
                    let take = available.len().min(room);
                    buffer.extend_from_slice(&available[..take]);
                    reader.consume(take);
                    if buffer.len() >= MAX_LINE {
                        break;
                    }
                }
            }
        }
        if !buffer.is_empty() || !done {
            let line = String::from_utf8_lossy(&buffer).trim_end_matches('\r').to_string();
            if lines.send(line).await.is_err() {
                return;
            }
        }
        if done {
            return;
        }
    }
}

/// The attempt's log file; without a path, lines go to observers only. Plain
/// `std::fs`: appending to a local file takes microseconds, less than a hop to a
/// blocking thread would.
pub(crate) struct LogFile {
    file: Option<std::io::BufWriter<std::fs::File>>,
    /// Every line, the task's and Updraft's own, passes through it.
    masker: Arc<crate::secrets::Masker>,
}

impl LogFile {
    pub(crate) fn open(path: Option<&Path>, masker: Arc<crate::secrets::Masker>) -> Result<LogFile, String> {
        let Some(path) = path else { return Ok(LogFile::closed(masker)) };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| format!("cannot create log folder `{}`: {error}", parent.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|error| format!("cannot open log file `{}`: {error}", path.display()))?;
        Ok(LogFile { file: Some(std::io::BufWriter::new(file)), masker })
    }

    pub(crate) fn closed(masker: Arc<crate::secrets::Masker>) -> LogFile {
        LogFile { file: None, masker }
    }

    fn write_line(&mut self, line: &str, flush: bool) {
        use std::io::Write;
        if let Some(file) = &mut self.file {
            // A full disk must not fail the task: the log is lost, not the work.
            let _ = writeln!(file, "{}", self.masker.mask(line));
            if flush {
                let _ = file.flush();
            }
        }
    }

    /// A line of Updraft's own, marked so it stands apart from the task's output.
    pub(crate) fn note(&mut self, text: &str) {
        self.write_line(&note_line(text), true);
    }
}

/// A line of Updraft's own in a log, without its line break.
pub fn note_line(text: &str) -> String {
    format!("[updraft {}] {text}", Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

/// Appends a note to an attempt's log from outside the attempt (recovery).
pub fn append_note(path: &Path, text: &str) {
    if let Ok(mut log) = LogFile::open(Some(path), Arc::default()) {
        log.note(text);
    }
}
