//! The DAG model: what a parsed, validated DAG file means.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::id::{DagId, TaskId};
use crate::timetable::{Schedule, Timetable};
use crate::trigger_rule::TriggerRule;

/// Defaults of the contract, in one place for the parser and the docs.
pub mod defaults {
    use crate::duration::Duration;
    pub const MAX_ACTIVE_RUNS: u32 = 16;
    pub const MAX_ACTIVE_TASKS: u32 = 16;
    pub const RETRY_DELAY: Duration = Duration::from_secs(300);
    pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(86_400);
    pub const POOL: &str = "default";
    pub const QUEUE: &str = "default";
    pub const OWNER: &str = "updraft";
}

/// The names every task template can use. The runner provides exactly these; the
/// DAG-file validator rejects any other free name before a run ever starts.
pub const TEMPLATE_NAMES: &[&str] = &[
    "ds",
    "ds_nodash",
    "ts",
    "ts_nodash",
    "logical_date",
    "data_interval_start",
    "data_interval_end",
    "run_id",
    "dag_id",
    "task_id",
    "try_number",
    "params",
    "dag_run",
    "macros",
    // Variables and connections (`var.value.<key>`, `conn.<id>.host`), read when
    // the attempt renders, so an unknown key is an error of the attempt.
    "var",
    "conn",
    // Upstream tasks' outputs (`tasks.<id>.output`), checked against the graph.
    "tasks",
    // A mapped task's item and its position (`null` in a task without `for_each`).
    "item",
    "map_index",
];

/// A validated DAG. Construct with [`Dag::new`], which checks the task graph, so a
/// `Dag` never has a cycle or a dangling upstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "DagSpec", into = "DagSpec")]
pub struct Dag {
    spec: DagSpec,
    graph: Graph,
}

/// The data of a DAG, before its graph is checked; also its stored form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagSpec {
    pub dag_id: DagId,
    /// The file it came from, relative to the DAGs folder, `/`-separated.
    pub fileloc: String,
    pub description: Option<String>,
    pub owner: String,
    pub tags: Vec<String>,
    pub schedule: Schedule,
    pub timezone: ZoneName,
    pub start_date: Option<Timestamp>,
    pub end_date: Option<Timestamp>,
    pub catchup: bool,
    pub max_active_runs: u32,
    pub max_active_tasks: u32,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub env: BTreeMap<String, String>,
    pub tasks: Vec<Task>,
    /// Who hears about this DAG's runs.
    #[serde(default, skip_serializing_if = "crate::alerts::Alerts::is_empty")]
    pub alerts: crate::alerts::Alerts,
    /// A scheduled run must succeed this long after its data interval ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub task_id: TaskId,
    pub kind: TaskKind,
    pub depends_on: Vec<TaskId>,
    pub trigger_rule: TriggerRule,
    pub retries: u32,
    pub retry_delay: Duration,
    pub retry_exponential_backoff: bool,
    pub max_retry_delay: Duration,
    pub timeout: Option<Duration>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub pool: String,
    /// Only workers serving this queue run the task. (Versions stored before queues
    /// existed read as `default`.)
    #[serde(default = "default_queue")]
    pub queue: String,
    pub priority: i32,
    /// Expands the task into one mapped instance per item (`crate::mapping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<crate::mapping::ForEach>,
    /// Items allowed per run; more fail the task.
    #[serde(default = "default_map_limit", skip_serializing_if = "is_default_map_limit")]
    pub for_each_limit: u32,
    /// Who hears about this task's instances.
    #[serde(default, skip_serializing_if = "crate::alerts::Alerts::is_empty")]
    pub alerts: crate::alerts::Alerts,
    /// The task must succeed this long after its run's data interval ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
    /// Where its attempts run; `None`: the deployment's `[executor] kind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<crate::kubernetes::Executor>,
    /// Pod settings (`defaults` merged in), for the Kubernetes executor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<crate::kubernetes::PodSettings>,
}

fn default_map_limit() -> u32 {
    crate::mapping::DEFAULT_LIMIT
}

fn is_default_map_limit(limit: &u32) -> bool {
    *limit == crate::mapping::DEFAULT_LIMIT
}

fn default_queue() -> String {
    defaults::QUEUE.to_string()
}

/// What an attempt runs: version 1's `shell`, and Updraft's built-in types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// A command for `/bin/sh -c`, rendered as a template first.
    Shell { command: String },
    /// HTTP requests made by the runner itself (`crate::http`).
    Http(Box<crate::http::HttpTask>),
    /// A Python script or inline code, run by an interpreter or a virtualenv's.
    Python(PythonTask),
    /// SQL statements against a connection, run by the runner itself.
    Sql(SqlTask),
    /// An application run by `spark-submit`.
    Spark(SparkTask),
    /// A file loaded into a table, run by the runner itself.
    Load(LoadTask),
    /// Objects copied between local folders and object stores.
    Copy(TransferTask),
    /// A prefix made the same at the target: changed and new objects copied.
    Sync(TransferTask),
    /// Waits for an object (or any object under a prefix) to appear.
    Sensor(SensorTask),
}

/// `copy` and `sync`: from one location to another. A location is a local path
/// (relative to the DAG's folder) or a URL (`s3://`, `gs://`, `az://`, `file://`);
/// one ending with `/` (or a local folder) is a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferTask {
    /// A template.
    pub from: String,
    pub from_connection: Option<String>,
    /// A template.
    pub to: String,
    pub to_connection: Option<String>,
    /// A wildcard (`*`, `?`) the names under a prefix must match, e.g. `*.csv`.
    pub include: Option<String>,
    /// `sync`: delete objects at the target that the source does not have.
    pub delete: bool,
}

/// `sensor`: succeeds once `path` exists (an object, or any object under a prefix
/// ending with `/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorTask {
    /// A template.
    pub path: String,
    pub connection: Option<String>,
    pub poke_interval: Duration,
    /// How long to wait in all before failing.
    pub timeout: Duration,
    pub mode: SensorMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorMode {
    /// One attempt holds its slot and looks every `poke_interval`.
    Poke,
    /// Each look is a short attempt; between looks the slot is free.
    Reschedule,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadTask {
    /// The file, relative to the DAG's folder, or an object's URL (a template).
    pub source: String,
    /// Credentials for an object-storage `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_connection: Option<String>,
    /// `csv`, `tsv`, `json` (an array of objects) or `ndjson`; from the extension unless set.
    pub format: Option<String>,
    pub delimiter: Option<char>,
    /// A PostgreSQL connection.
    pub connection: String,
    /// `table` or `schema.table`.
    pub table: String,
    pub mode: LoadMode,
    /// The columns an upsert matches on.
    pub key: Vec<String>,
    /// Declared column types, in order; inferred from the data when empty.
    pub columns: Vec<(String, String)>,
    /// Source header -> column.
    pub rename: BTreeMap<String, String>,
    /// Rows that may fail validation before the load fails.
    pub max_rejected: u64,
    /// A spreadsheet's sheet (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sheet: Option<String>,
    /// A spreadsheet's cells: the header row first (default: the sheet's used cells).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<CellRange>,
}

/// Spreadsheet formats `load` reads, by extension.
pub const SHEET_FORMATS: &[&str] = &["xlsx", "xlsm", "xlsb", "xls", "ods"];

/// Cells in A1 notation, 0-based: `B2:E100`, or `B2` for everything from there on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellRange {
    pub first: (u32, u32),
    /// Row and column of the last cell; `None`: to the end of the used cells.
    pub last: Option<(u32, u32)>,
}

impl CellRange {
    pub fn parse(text: &str) -> Result<CellRange, String> {
        let (first, last) = match text.split_once(':') {
            Some((first, last)) => (first, Some(last)),
            None => (text, None),
        };
        let first = cell(first.trim())?;
        let last = last.map(|last| cell(last.trim())).transpose()?;
        if let Some(last) = last
            && (last.0 < first.0 || last.1 < first.1)
        {
            return Err(format!("`{text}` ends before it starts"));
        }
        Ok(CellRange { first, last })
    }
}

/// `A1` -> (row 0, column 0); `AB12` -> (11, 27).
pub fn cell(text: &str) -> Result<(u32, u32), String> {
    let letters = text.chars().take_while(char::is_ascii_alphabetic).count();
    let (column, row) = text.split_at(letters);
    let row: u32 =
        row.parse().ok().filter(|row| *row >= 1).ok_or_else(|| format!("`{text}` is not a cell like `B2`"))?;
    if column.is_empty() || column.len() > 3 {
        return Err(format!("`{text}` is not a cell like `B2`"));
    }
    let column = column.chars().fold(0u32, |sum, c| sum * 26 + (c.to_ascii_uppercase() as u32 - 'A' as u32 + 1));
    Ok((row - 1, column - 1))
}

/// (row, column), 0-based -> `B2`.
pub fn cell_name((row, column): (u32, u32)) -> String {
    let mut letters = Vec::new();
    let mut n = column + 1;
    while n > 0 {
        letters.push((b'A' + ((n - 1) % 26) as u8) as char);
        n = (n - 1) / 26;
    }
    letters.iter().rev().collect::<String>() + &(row + 1).to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadMode {
    /// Create the table if missing, then add the rows.
    Append,
    /// Create the table if missing, empty it, then add the rows.
    Replace,
    /// Insert, or update the rows whose `key` exists.
    Upsert,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SparkTask {
    /// A `.py` or `.jar` file, relative to the DAG's folder.
    pub application: String,
    /// `local[*]` unless set.
    pub master: String,
    /// `client` or `cluster`.
    pub deploy_mode: String,
    /// The application's name (a template); `<dag_id>.<task_id>` unless set.
    pub name: Option<String>,
    /// The main class of a jar.
    pub main_class: Option<String>,
    /// `--conf` pairs; values are templates.
    pub conf: BTreeMap<String, String>,
    /// Maven coordinates for `--packages`.
    pub packages: Vec<String>,
    /// The application's arguments, each a template.
    pub args: Vec<String>,
    /// The `spark-submit` to run: found on the `PATH` unless set.
    pub spark_submit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlTask {
    /// A connection of type `postgres` or `sqlite`.
    pub connection: String,
    /// Statements separated by `;`, a template; or `file`.
    pub statements: Option<String>,
    /// A `.sql` file relative to the DAG's folder (not a template).
    pub file: Option<String>,
    /// `:name` placeholders' values, each a template; always bound, never spliced.
    pub parameters: BTreeMap<String, String>,
    pub output: SqlOutput,
    /// Rows handed on at most (`output: rows`).
    pub max_rows: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlOutput {
    /// The rows of the last statement that returns rows, as JSON objects.
    Rows,
    /// `{"rows_affected": n}` over all statements.
    Count,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonTask {
    /// A script, relative to the DAG's folder; or `code`.
    pub script: Option<String>,
    /// Inline code, passed as it is (not a template: Python's braces stay braces).
    pub code: Option<String>,
    /// Arguments, each a template.
    pub args: Vec<String>,
    /// `python3` (found on the `PATH`) unless set.
    pub interpreter: Option<String>,
    /// A virtualenv (relative to the DAG's folder) whose `bin/python` runs it.
    pub venv: Option<String>,
}

impl TaskKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            TaskKind::Shell { .. } => "shell",
            TaskKind::Http(_) => "http",
            TaskKind::Python(_) => "python",
            TaskKind::Sql(_) => "sql",
            TaskKind::Spark(_) => "spark",
            TaskKind::Load(_) => "load",
            TaskKind::Copy(_) => "copy",
            TaskKind::Sync(_) => "sync",
            TaskKind::Sensor(_) => "sensor",
        }
    }
}

impl Task {
    /// The connections its type uses (besides those its templates name).
    pub fn connections(&self) -> Vec<&str> {
        match &self.kind {
            TaskKind::Shell { .. } | TaskKind::Python(_) | TaskKind::Spark(_) => Vec::new(),
            TaskKind::Http(http) => http.connection.iter().chain(&http.save_connection).map(String::as_str).collect(),
            TaskKind::Sql(sql) => vec![sql.connection.as_str()],
            TaskKind::Load(load) => {
                std::iter::once(load.connection.as_str()).chain(load.source_connection.as_deref()).collect()
            }
            TaskKind::Copy(transfer) | TaskKind::Sync(transfer) => {
                transfer.from_connection.iter().chain(&transfer.to_connection).map(String::as_str).collect()
            }
            TaskKind::Sensor(sensor) => sensor.connection.iter().map(String::as_str).collect(),
        }
    }

    /// Every text rendered as a template when the task runs, named by its field
    /// (`shell`, `http.url`, `http.query.<name>`, ..., `cwd`, `env.<NAME>`), the
    /// DAG's `env` before the task's. The runner, the UI and the validator all
    /// read templates from here.
    pub fn templated<'a>(&'a self, dag_env: &'a BTreeMap<String, String>) -> Vec<(String, &'a str)> {
        let mut fields = match &self.kind {
            TaskKind::Shell { command } => vec![("shell".to_string(), command.as_str())],
            TaskKind::Http(http) => http.templated(),
            TaskKind::Python(python) => python
                .args
                .iter()
                .enumerate()
                .map(|(index, arg)| (format!("python.args.{index}"), arg.as_str()))
                .collect(),
            TaskKind::Sql(sql) => {
                let mut fields: Vec<(String, &str)> =
                    sql.statements.iter().map(|text| ("sql.statements".to_string(), text.as_str())).collect();
                for (name, value) in &sql.parameters {
                    fields.push((format!("sql.parameters.{name}"), value.as_str()));
                }
                fields
            }
            TaskKind::Spark(spark) => {
                let mut fields: Vec<(String, &str)> =
                    spark.name.iter().map(|name| ("spark.name".to_string(), name.as_str())).collect();
                for (key, value) in &spark.conf {
                    fields.push((format!("spark.conf.{key}"), value.as_str()));
                }
                for (index, arg) in spark.args.iter().enumerate() {
                    fields.push((format!("spark.args.{index}"), arg.as_str()));
                }
                fields
            }
            TaskKind::Load(load) => vec![("load.source".to_string(), load.source.as_str())],
            TaskKind::Copy(transfer) | TaskKind::Sync(transfer) => {
                let name = self.kind.type_name();
                vec![(format!("{name}.from"), transfer.from.as_str()), (format!("{name}.to"), transfer.to.as_str())]
            }
            TaskKind::Sensor(sensor) => vec![("sensor.path".to_string(), sensor.path.as_str())],
        };
        if let Some(cwd) = &self.cwd {
            fields.push(("cwd".to_string(), cwd.as_str()));
        }
        for (name, value) in dag_env.iter().chain(&self.env) {
            fields.push((format!("env.{name}"), value.as_str()));
        }
        fields
    }
}

/// An IANA time zone with its name kept for display and storage.
#[derive(Clone)]
pub struct ZoneName {
    name: String,
    tz: TimeZone,
}

impl ZoneName {
    pub fn utc() -> ZoneName {
        ZoneName { name: "UTC".to_string(), tz: TimeZone::UTC }
    }

    pub fn get(name: &str) -> Result<ZoneName, jiff::Error> {
        let tz = TimeZone::get(name)?;
        Ok(ZoneName { name: name.to_string(), tz })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }
}

impl PartialEq for ZoneName {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl fmt::Debug for ZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ZoneName({:?})", self.name)
    }
}

impl Serialize for ZoneName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.name.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ZoneName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        ZoneName::get(&name).map_err(serde::de::Error::custom)
    }
}

/// Why a set of tasks is not a DAG. Indexes point into `DagSpec::tasks` and, for
/// `UnknownUpstream`, into that task's `depends_on`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphError {
    DuplicateTask {
        task_idx: usize,
    },
    UnknownUpstream {
        task_idx: usize,
        upstream_idx: usize,
    },
    SelfDependency {
        task_idx: usize,
        upstream_idx: usize,
    },
    /// The tasks of the cycle, each upstream of the next and the last upstream of the
    /// first, starting from the one earliest in the file.
    Cycle {
        task_idxs: Vec<usize>,
    },
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphError::DuplicateTask { .. } => f.write_str("duplicate task id"),
            GraphError::UnknownUpstream { .. } => f.write_str("unknown upstream task"),
            GraphError::SelfDependency { .. } => f.write_str("task depends on itself"),
            GraphError::Cycle { .. } => f.write_str("cycle in task dependencies"),
        }
    }
}

/// Upstream/downstream indexes and a topological order, derived from `depends_on`.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub upstream: Vec<Vec<usize>>,
    pub downstream: Vec<Vec<usize>>,
    /// Every task after all its upstreams; ties keep file order.
    pub topo_order: Vec<usize>,
    index: HashMap<TaskId, usize>,
}

impl Graph {
    /// Builds the graph, reporting every dangling or self reference and, if there
    /// are none, the first cycle found.
    pub fn build(tasks: &[Task]) -> Result<Graph, Vec<GraphError>> {
        let mut errors = Vec::new();
        let mut index = HashMap::with_capacity(tasks.len());
        for (task_idx, task) in tasks.iter().enumerate() {
            if index.insert(task.task_id.clone(), task_idx).is_some() {
                errors.push(GraphError::DuplicateTask { task_idx });
            }
        }
        let mut upstream = vec![Vec::new(); tasks.len()];
        let mut downstream = vec![Vec::new(); tasks.len()];
        for (task_idx, task) in tasks.iter().enumerate() {
            for (upstream_idx, upstream_id) in task.depends_on.iter().enumerate() {
                match index.get(upstream_id) {
                    None => errors.push(GraphError::UnknownUpstream { task_idx, upstream_idx }),
                    Some(&up) if up == task_idx => errors.push(GraphError::SelfDependency { task_idx, upstream_idx }),
                    Some(&up) => {
                        if !upstream[task_idx].contains(&up) {
                            upstream[task_idx].push(up);
                            downstream[up].push(task_idx);
                        }
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        match topo_sort(&upstream, &downstream) {
            Ok(topo_order) => Ok(Graph { upstream, downstream, topo_order, index }),
            Err(cycle) => Err(vec![GraphError::Cycle { task_idxs: cycle }]),
        }
    }

    pub fn task_idx(&self, task_id: &str) -> Option<usize> {
        self.index.get(task_id).copied()
    }

    /// Whether `ancestor` runs before `task_idx` by some chain of `depends_on`.
    pub fn is_ancestor(&self, ancestor: usize, task_idx: usize) -> bool {
        let mut seen = vec![false; self.upstream.len()];
        let mut stack = vec![task_idx];
        while let Some(idx) = stack.pop() {
            for &up in &self.upstream[idx] {
                if up == ancestor {
                    return true;
                }
                if !std::mem::replace(&mut seen[up], true) {
                    stack.push(up);
                }
            }
        }
        false
    }

    /// Tasks nothing depends on; their states decide the run's.
    pub fn is_leaf(&self, task_idx: usize) -> bool {
        self.downstream[task_idx].is_empty()
    }
}

/// Kahn's algorithm, picking the lowest index first so the order is stable; on a
/// cycle, returns one cycle's tasks in dependency order.
fn topo_sort(upstream: &[Vec<usize>], downstream: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let n = upstream.len();
    let mut missing: Vec<usize> = upstream.iter().map(Vec::len).collect();
    let mut ready: BinaryHeap<Reverse<usize>> = (0..n).filter(|&i| missing[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(task_idx)) = ready.pop() {
        order.push(task_idx);
        for &down in &downstream[task_idx] {
            missing[down] -= 1;
            if missing[down] == 0 {
                ready.push(Reverse(down));
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk upstream from any unfinished task until a task repeats: that loop is a cycle.
    let start = (0..n).find(|&i| missing[i] > 0).expect("some task is left when the sort stops early");
    let mut path = vec![start];
    let mut seen = vec![usize::MAX; n];
    seen[start] = 0;
    let mut current = start;
    loop {
        let next = *upstream[current]
            .iter()
            .find(|&&up| missing[up] > 0)
            .expect("an unfinished task has an unfinished upstream");
        if seen[next] != usize::MAX {
            let mut cycle: Vec<usize> = path[seen[next]..].to_vec();
            // `path` runs downstream -> upstream; report it in dependency order, starting
            // from the task that appears first in the file.
            cycle.reverse();
            let first = cycle.iter().enumerate().min_by_key(|(_, idx)| **idx).map(|(pos, _)| pos).unwrap_or(0);
            cycle.rotate_left(first);
            return Err(cycle);
        }
        seen[next] = path.len();
        path.push(next);
        current = next;
    }
}

impl Dag {
    pub fn new(spec: DagSpec) -> Result<Dag, Vec<GraphError>> {
        let graph = Graph::build(&spec.tasks)?;
        Ok(Dag { spec, graph })
    }

    pub fn spec(&self) -> &DagSpec {
        &self.spec
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn dag_id(&self) -> &DagId {
        &self.spec.dag_id
    }

    pub fn tasks(&self) -> &[Task] {
        &self.spec.tasks
    }

    pub fn task(&self, task_id: &str) -> Option<&Task> {
        self.graph.task_idx(task_id).map(|idx| &self.spec.tasks[idx])
    }

    pub fn tz(&self) -> &TimeZone {
        self.spec.timezone.tz()
    }

    pub fn timetable(&self) -> Timetable<'_> {
        Timetable {
            schedule: &self.spec.schedule,
            tz: self.spec.timezone.tz(),
            start_date: self.spec.start_date,
            end_date: self.spec.end_date,
        }
    }

    /// The canonical stored form; equal DAGs give equal bytes, which is what the
    /// version hash is computed over.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.spec).expect("a DAG spec always serialises")
    }

    pub fn from_json(text: &str) -> Result<Dag, serde_json::Error> {
        serde_json::from_str(text)
    }
}

impl TryFrom<DagSpec> for Dag {
    type Error = String;
    fn try_from(spec: DagSpec) -> Result<Dag, String> {
        Dag::new(spec).map_err(|errors| format!("stored DAG is not valid: {}", errors[0]))
    }
}

impl From<Dag> for DagSpec {
    fn from(dag: Dag) -> DagSpec {
        dag.spec
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn task(task_id: &str, depends_on: &[&str]) -> Task {
        Task {
            task_id: TaskId::new(task_id).unwrap(),
            kind: TaskKind::Shell { command: "true".to_string() },
            depends_on: depends_on.iter().map(|id| TaskId::new(*id).unwrap()).collect(),
            trigger_rule: TriggerRule::AllSuccess,
            retries: 0,
            retry_delay: defaults::RETRY_DELAY,
            retry_exponential_backoff: false,
            max_retry_delay: defaults::MAX_RETRY_DELAY,
            timeout: None,
            env: BTreeMap::new(),
            cwd: None,
            pool: defaults::POOL.to_string(),
            queue: defaults::QUEUE.to_string(),
            priority: 0,
            for_each: None,
            for_each_limit: crate::mapping::DEFAULT_LIMIT,
            alerts: crate::alerts::Alerts::default(),
            deadline: None,
            executor: None,
            kubernetes: None,
        }
    }

    pub fn spec(dag_id: &str, tasks: Vec<Task>) -> DagSpec {
        DagSpec {
            dag_id: DagId::new(dag_id).unwrap(),
            fileloc: format!("{dag_id}.yaml"),
            description: None,
            owner: defaults::OWNER.to_string(),
            tags: Vec::new(),
            schedule: Schedule::None,
            timezone: ZoneName::utc(),
            start_date: None,
            end_date: None,
            catchup: false,
            max_active_runs: defaults::MAX_ACTIVE_RUNS,
            max_active_tasks: defaults::MAX_ACTIVE_TASKS,
            params: serde_json::Map::new(),
            env: BTreeMap::new(),
            tasks,
            alerts: crate::alerts::Alerts::default(),
            deadline: None,
        }
    }

    fn check(tasks: Vec<Task>, expect: &str) {
        let names: Vec<String> = tasks.iter().map(|t| t.task_id.to_string()).collect();
        let actual = match Graph::build(&tasks) {
            Ok(graph) => {
                let order: Vec<&str> = graph.topo_order.iter().map(|&i| names[i].as_str()).collect();
                format!("order {}", order.join(" "))
            }
            Err(errors) => errors
                .iter()
                .map(|error| match error {
                    GraphError::Cycle { task_idxs } => {
                        let chain: Vec<&str> = task_idxs.iter().map(|&i| names[i].as_str()).collect();
                        format!("cycle {}", chain.join(" -> "))
                    }
                    GraphError::UnknownUpstream { task_idx, upstream_idx } => {
                        format!("unknown {}[{upstream_idx}]", names[*task_idx])
                    }
                    GraphError::SelfDependency { task_idx, .. } => {
                        format!("self {}", names[*task_idx])
                    }
                    GraphError::DuplicateTask { task_idx } => {
                        format!("duplicate {}", names[*task_idx])
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        };
        assert_eq!(actual, expect);
    }

    #[test]
    fn graphs() {
        check(vec![task("a", &[]), task("b", &["a"]), task("c", &["b"])], "order a b c");
        check(vec![task("c", &["b"]), task("b", &["a"]), task("a", &[])], "order a b c");
        check(vec![task("a", &[]), task("b", &["a"]), task("c", &["a"]), task("d", &["b", "c"])], "order a b c d");
        check(vec![task("a", &["b"]), task("b", &["a"])], "cycle a -> b");
        check(vec![task("x", &[]), task("load", &["check"]), task("check", &["load", "x"])], "cycle load -> check");
        check(vec![task("a", &["c"]), task("b", &["a"]), task("c", &["b"])], "cycle a -> b -> c");
        check(vec![task("a", &["nope"]), task("b", &["a", "gone"])], "unknown a[0], unknown b[1]");
        check(vec![task("a", &["a"])], "self a");
        check(vec![task("a", &[]), task("b", &["a", "a"])], "order a b");
    }

    #[test]
    fn json_round_trip() {
        let mut spec = spec("demo", vec![task("a", &[]), task("b", &["a"])]);
        spec.schedule = Schedule::parse("@daily").unwrap();
        spec.timezone = ZoneName::get("Europe/Berlin").unwrap();
        spec.start_date = Some("2024-01-01T00:00:00Z".parse().unwrap());
        let dag = Dag::new(spec).unwrap();
        let json = dag.to_json();
        let back = Dag::from_json(&json).unwrap();
        assert_eq!(back.spec(), dag.spec());
        assert_eq!(back.to_json(), json);
        assert_eq!(back.graph().topo_order, vec![0, 1]);
    }
}
