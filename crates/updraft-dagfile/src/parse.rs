//! One DAG file's text to a validated [`Dag`], reporting every problem found with
//! the span of the offending key or value.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;
use updraft_core::alerts::{AlertEvent, Alerts};
use updraft_core::dag::{GraphError, TEMPLATE_NAMES, ZoneName, defaults};
use updraft_core::mapping::{self, ForEach, PathStep};
use updraft_core::timetable::{Schedule, parse_date_in_zone};
use updraft_core::trigger_rule::TriggerRule;
use updraft_core::{Dag, DagId, DagSpec, Duration, Task, TaskId, TaskKind};

use crate::templates::{self, Missing, TaskTemplates};
use crate::yaml::{self, Node, Span, Value};
use updraft_core::suggest::did_you_mean;

/// A problem in a file, located by a span of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanDiagnostic {
    pub span: Span,
    pub message: String,
}

/// The result of parsing one file: the DAG if it is valid, and every problem found.
#[derive(Debug)]
pub struct Parsed {
    pub dag: Option<Dag>,
    pub diagnostics: Vec<SpanDiagnostic>,
    /// Where the `dag:` value is, to report a DAG id declared by two files.
    pub dag_id_span: Option<Span>,
}

const TOP_FIELDS: &[&str] = &[
    "dag",
    "description",
    "owner",
    "tags",
    "schedule",
    "timezone",
    "start_date",
    "end_date",
    "catchup",
    "max_active_runs",
    "max_active_tasks",
    "params",
    "env",
    "defaults",
    "tasks",
    "alerts",
    "deadline",
];

const TASK_FIELDS: &[&str] = &[
    "depends_on",
    "trigger_rule",
    "retries",
    "retry_delay",
    "retry_exponential_backoff",
    "max_retry_delay",
    "timeout",
    "env",
    "cwd",
    "pool",
    "queue",
    "priority",
    "for_each",
    "for_each_limit",
    "alerts",
    "deadline",
    "executor",
    "kubernetes",
];

const TASK_TYPES: &[&str] = &["shell", "http", "python", "sql", "spark", "load", "copy", "sync", "sensor"];
/// Task types of later versions of the format: named, so the error says "not yet"
/// rather than "unknown field".
const FUTURE_TASK_TYPES: &[&str] = &["kubernetes", "container"];

const COPY_FIELDS: &[&str] = &["from", "from_connection", "to", "to_connection", "include"];
const SYNC_FIELDS: &[&str] = &["from", "from_connection", "to", "to_connection", "include", "delete"];
const SENSOR_FIELDS: &[&str] = &["path", "connection", "poke_interval", "timeout", "mode"];

const HTTP_FIELDS: &[&str] = &[
    "url",
    "method",
    "query",
    "headers",
    "body",
    "json",
    "connection",
    "auth",
    "expect",
    "extract",
    "pagination",
    "max_pages",
    "rate_limit",
    "request_retries",
    "request_timeout",
    "save_to",
    "save_connection",
];
const PYTHON_FIELDS: &[&str] = &["script", "code", "args", "interpreter", "venv"];
const SQL_FIELDS: &[&str] = &["connection", "statements", "file", "parameters", "output", "max_rows"];
const SPARK_FIELDS: &[&str] =
    &["application", "master", "deploy_mode", "name", "class", "conf", "packages", "args", "spark_submit"];
const LOAD_FIELDS: &[&str] = &[
    "source",
    "source_connection",
    "format",
    "delimiter",
    "connection",
    "table",
    "mode",
    "key",
    "columns",
    "rename",
    "max_rejected",
    "sheet",
    "range",
];
/// Column types a `load` may declare (PostgreSQL's names).
pub const LOAD_TYPES: &[&str] = &[
    "text",
    "integer",
    "bigint",
    "numeric",
    "double precision",
    "boolean",
    "date",
    "timestamp",
    "timestamptz",
    "jsonb",
];
const HTTP_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

/// What a file is read against besides its own text.
#[derive(Default, Clone, Copy)]
pub struct ParseOptions<'a> {
    /// The folder's task templates, for `use:`.
    pub templates: Option<&'a TaskTemplates>,
    /// The notifiers `updraft.toml` configures, when known: `alerts` naming
    /// another is an error of the file.
    pub notifiers: Option<&'a BTreeSet<String>>,
}

/// Parses a DAG file that uses no task templates.
pub fn parse_dag(text: &str, fileloc: &str) -> Parsed {
    parse_dag_with(text, fileloc, ParseOptions::default())
}

/// Parses a DAG file whose tasks may `use:` the folder's task templates.
pub fn parse_dag_with(text: &str, fileloc: &str, options: ParseOptions<'_>) -> Parsed {
    let no_templates = TaskTemplates::default();
    let mut parser = FileParser {
        diagnostics: Vec::new(),
        templates: minijinja::Environment::new(),
        mapped: Vec::new(),
        task_templates: options.templates.unwrap_or(&no_templates),
        uses: Vec::new(),
        notifiers: options.notifiers,
    };
    let (dag, dag_id_span) = match yaml::parse(text) {
        Ok(root) => parser.dag(&root, fileloc),
        Err(error) => {
            parser.error(error.span, error.message);
            (None, None)
        }
    };
    parser.relocate(0, None);
    let dag = if parser.diagnostics.is_empty() { dag } else { None };
    Parsed { dag, diagnostics: parser.diagnostics, dag_id_span }
}

pub(crate) struct FileParser<'t> {
    diagnostics: Vec<SpanDiagnostic>,
    templates: minijinja::Environment<'static>,
    /// Tasks with `for_each` written, valid or not: they may use `item`.
    mapped: Vec<TaskId>,
    task_templates: &'t TaskTemplates,
    /// Where each template was used (its `use:` value), to place problems found
    /// in its fields after the task was read (graph errors).
    uses: Vec<Span>,
    notifiers: Option<&'t BTreeSet<String>>,
}

/// Task fields as written in `defaults` or in a task; `None` means not written.
#[derive(Default, Clone)]
struct TaskFields<'a> {
    depends_on: Option<Vec<(TaskId, Span)>>,
    trigger_rule: Option<TriggerRule>,
    retries: Option<u32>,
    retry_delay: Option<Duration>,
    retry_exponential_backoff: Option<bool>,
    max_retry_delay: Option<Duration>,
    timeout: Option<Duration>,
    env: Option<BTreeMap<String, String>>,
    cwd: Option<String>,
    pool: Option<String>,
    queue: Option<String>,
    priority: Option<i32>,
    for_each: Option<ForEach>,
    for_each_written: bool,
    for_each_limit: Option<u32>,
    alerts: Option<Alerts>,
    deadline: Option<Duration>,
    executor: Option<updraft_core::kubernetes::Executor>,
    /// Where `executor:` was written, for errors about the task's type.
    executor_span: Option<crate::yaml::Span>,
    kubernetes: Option<updraft_core::kubernetes::PodSettings>,
    kinds: Vec<(&'a str, &'a Node, &'a Node)>,
}

impl FileParser<'_> {
    pub(crate) fn error(&mut self, span: Span, message: impl Into<String>) {
        self.diagnostics.push(SpanDiagnostic { span, message: message.into() });
    }

    fn dag(&mut self, root: &Node, fileloc: &str) -> (Option<Dag>, Option<Span>) {
        let Value::Map(entries) = &root.value else {
            self.error(
                root.span,
                format!("a DAG file must be a mapping with `dag` and `tasks` keys, found {}", root.kind()),
            );
            return (None, None);
        };
        let fields = self.fields(entries, TOP_FIELDS, &[]);
        let get = |name: &str| fields.get(name).copied();

        let dag_id = match get("dag") {
            Some((_, value)) => self.id(value, "dag", "DAG id").map(DagId::new),
            None => {
                self.error(root.span, "missing required field `dag` (the DAG id)");
                None
            }
        };
        let dag_id_span = get("dag").map(|(_, value)| value.span);
        let dag_id = dag_id.and_then(Result::ok);
        let description = get("description").and_then(|(_, v)| self.text(v, "description"));
        let owner =
            get("owner").and_then(|(_, v)| self.text(v, "owner")).unwrap_or_else(|| defaults::OWNER.to_string());
        let tags = get("tags").map(|(_, v)| self.string_list(v, "tags")).unwrap_or_default();
        let timezone = match get("timezone") {
            Some((_, value)) => self.string(value, "timezone").and_then(|name| match ZoneName::get(name) {
                Ok(zone) => Some(zone),
                Err(_) => {
                    self.error(
                        value.span,
                        format!("`timezone`: unknown time zone `{name}` (use an IANA name such as `Asia/Seoul`)"),
                    );
                    None
                }
            }),
            None => Some(ZoneName::utc()),
        };
        let zone_for_dates = timezone.clone().unwrap_or_else(ZoneName::utc);
        let schedule = match get("schedule") {
            Some((_, value)) if value.value == Value::Null => Some(Schedule::None),
            Some((_, value)) => self.string(value, "schedule").and_then(|text| match Schedule::parse(text) {
                Ok(schedule) => Some(schedule),
                Err(error) => {
                    let what = if text.trim_start().starts_with('@') {
                        format!("`schedule`: unknown preset `{text}` (use @hourly, @daily, @weekly, @monthly, @yearly or @once)")
                    } else {
                        format!("`schedule`: invalid cron expression `{text}`: {error}")
                    };
                    self.error(value.span, what);
                    None
                }
            }),
            None => Some(Schedule::None),
        };
        let start_date = get("start_date").and_then(|(_, v)| self.timestamp(v, "start_date", &zone_for_dates));
        let end_date = get("end_date").and_then(|(_, v)| self.timestamp(v, "end_date", &zone_for_dates));
        if let (Some(start), Some(end), Some((_, end_node))) = (start_date, end_date, get("end_date"))
            && end < start
        {
            self.error(end_node.span, "`end_date` is before `start_date`");
        }
        if let (Some(schedule), Some((_, schedule_node))) = (&schedule, get("schedule"))
            && *schedule != Schedule::None
            && get("start_date").is_none()
        {
            self.error(
                schedule_node.span,
                "`schedule` needs a `start_date` (the first data interval starts at or after it)",
            );
        }
        let catchup = get("catchup").and_then(|(_, v)| self.boolean(v, "catchup")).unwrap_or(false);
        let max_active_runs = get("max_active_runs")
            .and_then(|(_, v)| self.number(v, "max_active_runs", 1))
            .unwrap_or(defaults::MAX_ACTIVE_RUNS);
        let max_active_tasks = get("max_active_tasks")
            .and_then(|(_, v)| self.number(v, "max_active_tasks", 1))
            .unwrap_or(defaults::MAX_ACTIVE_TASKS);
        let params = match get("params") {
            Some((_, value)) => match &value.value {
                Value::Map(entries) => {
                    let mut params = serde_json::Map::new();
                    for (key, value) in entries {
                        match key.scalar_text() {
                            Some(name) => {
                                params.insert(name, value.to_json());
                            }
                            None => self.error(key.span, "`params`: keys must be names"),
                        }
                    }
                    params
                }
                Value::Null => serde_json::Map::new(),
                _ => {
                    self.error(
                        value.span,
                        format!("`params`: expected a mapping of names to values, found {}", value.kind()),
                    );
                    serde_json::Map::new()
                }
            },
            None => serde_json::Map::new(),
        };
        let env = get("env").map(|(_, v)| self.env(v, "env")).unwrap_or_default();
        let alerts = get("alerts").and_then(|(_, v)| self.alerts(v, true)).unwrap_or_default();
        let deadline = get("deadline").and_then(|(_, v)| self.deadline(v));
        let defaults = match get("defaults") {
            Some((_, value)) => match &value.value {
                Value::Map(entries) => self.task_fields(entries, true),
                Value::Null => TaskFields::default(),
                _ => {
                    self.error(
                        value.span,
                        format!("`defaults`: expected a mapping of task fields, found {}", value.kind()),
                    );
                    TaskFields::default()
                }
            },
            None => TaskFields::default(),
        };
        let tasks = match get("tasks") {
            Some((_, value)) => self.tasks(value, &defaults),
            None => {
                self.error(root.span, "missing required field `tasks`");
                None
            }
        };

        let (Some(dag_id), Some(schedule), Some(timezone), Some((tasks, task_nodes))) =
            (dag_id, schedule, timezone, tasks)
        else {
            return (None, dag_id_span);
        };
        let spec = DagSpec {
            dag_id,
            fileloc: fileloc.to_string(),
            description,
            owner,
            tags,
            schedule,
            timezone,
            start_date,
            end_date,
            catchup,
            max_active_runs,
            max_active_tasks,
            params,
            env,
            tasks,
            alerts,
            deadline,
        };
        match Dag::new(spec) {
            Ok(dag) => {
                self.output_references(&dag, &task_nodes);
                (Some(dag), dag_id_span)
            }
            Err(errors) => {
                self.graph_errors(&errors, &task_nodes);
                (None, dag_id_span)
            }
        }
    }

    /// Collects a mapping's fields by name, reporting unknown ones. `extra` are names
    /// accepted beyond `known` (task types).
    pub(crate) fn fields<'a>(
        &mut self,
        entries: &'a [(Node, Node)],
        known: &[&str],
        extra: &[&str],
    ) -> HashMap<&'a str, (&'a Node, &'a Node)> {
        let mut fields = HashMap::new();
        for (key, value) in entries {
            let Some(name) = key.as_str() else {
                self.error(key.span, format!("field names must be strings, found {}", key.kind()));
                continue;
            };
            if known.contains(&name) || extra.contains(&name) {
                fields.insert(name, (key, value));
            } else {
                let candidates = known.iter().chain(extra).copied();
                let message = match did_you_mean(name, candidates) {
                    Some(suggestion) => {
                        format!("unknown field `{name}`, did you mean `{suggestion}`?")
                    }
                    None => format!("unknown field `{name}`"),
                };
                self.error(key.span, message);
            }
        }
        fields
    }

    fn tasks(&mut self, node: &Node, defaults: &TaskFields<'_>) -> Option<(Vec<Task>, Vec<TaskNodes>)> {
        let Value::Map(entries) = &node.value else {
            self.error(node.span, format!("`tasks`: expected a mapping of task ids to tasks, found {}", node.kind()));
            return None;
        };
        if entries.is_empty() {
            self.error(node.span, "`tasks` must contain at least one task");
            return None;
        }
        let mut tasks = Vec::with_capacity(entries.len());
        let mut nodes = Vec::with_capacity(entries.len());
        let mut ok = true;
        for (key, value) in entries {
            let Some(task_id) = self.id(key, "task", "task id").map(TaskId::new).and_then(Result::ok) else {
                ok = false;
                continue;
            };
            let Value::Map(fields) = &value.value else {
                self.error(
                    value.span,
                    format!("task `{task_id}`: expected a mapping of task fields, found {}", value.kind()),
                );
                ok = false;
                continue;
            };
            let used = fields.iter().find(|(key, _)| key.as_str() == Some("use"));
            let expanded;
            let fields: &[(Node, Node)] = match used {
                None => fields,
                Some((_, use_node)) => match self.use_template(&task_id, use_node, fields) {
                    Some(merged) => {
                        expanded = merged;
                        &expanded
                    }
                    None => {
                        ok = false;
                        continue;
                    }
                },
            };
            let before = self.diagnostics.len();
            let own = self.task_fields(fields, false);
            let built = self.task(&task_id, key, own, defaults);
            if let Some((_, use_node)) = used {
                self.relocate(before, Some(use_node.span));
            }
            match built {
                Some((task, task_nodes)) => {
                    tasks.push(task);
                    nodes.push(task_nodes);
                }
                None => ok = false,
            }
        }
        ok.then_some((tasks, nodes))
    }

    fn task_fields<'a>(&mut self, entries: &'a [(Node, Node)], in_defaults: bool) -> TaskFields<'a> {
        let all_types: Vec<&str> = TASK_TYPES.iter().chain(FUTURE_TASK_TYPES).copied().collect();
        let fields = self.fields(entries, TASK_FIELDS, &all_types);
        let mut out = TaskFields::default();
        // Report in file order.
        let mut ordered: Vec<(&&str, &(&Node, &Node))> = fields.iter().collect();
        ordered.sort_by_key(|(_, (key, _))| key.span.start);
        for (name, (key, value)) in ordered {
            let name = *name;
            match name {
                "depends_on" if in_defaults => {
                    self.error(key.span, "`depends_on` cannot be a default; set it on each task");
                }
                "depends_on" => out.depends_on = Some(self.depends_on(value)),
                "trigger_rule" => {
                    out.trigger_rule = self.string(value, "trigger_rule").and_then(|text| match text.parse() {
                        Ok(rule) => Some(rule),
                        Err(()) => {
                            let names = TriggerRule::ALL.iter().map(|r| r.as_str());
                            let hint = match did_you_mean(text, names) {
                                Some(suggestion) => {
                                    format!(", did you mean `{suggestion}`?")
                                }
                                None => String::new(),
                            };
                            self.error(value.span, format!("`trigger_rule`: unknown rule `{text}`{hint}"));
                            None
                        }
                    })
                }
                "retries" => out.retries = self.number(value, "retries", 0),
                "retry_delay" => out.retry_delay = self.duration(value, "retry_delay"),
                "retry_exponential_backoff" => {
                    out.retry_exponential_backoff = self.boolean(value, "retry_exponential_backoff")
                }
                "max_retry_delay" => out.max_retry_delay = self.duration(value, "max_retry_delay"),
                "timeout" => {
                    out.timeout = self.duration(value, "timeout");
                    if out.timeout == Some(Duration::ZERO) {
                        self.error(value.span, "`timeout`: must be longer than 0s");
                        out.timeout = None;
                    }
                }
                "env" => out.env = Some(self.env(value, "env")),
                "cwd" => {
                    out.cwd = self.string(value, "cwd").map(str::to_string);
                    if let Some(cwd) = &out.cwd {
                        self.check_template(cwd, value.span, "cwd");
                    }
                }
                "pool" => out.pool = self.non_empty(value, "pool"),
                "queue" => out.queue = self.non_empty(value, "queue"),
                "priority" => out.priority = self.integer(value, "priority"),
                "for_each" if in_defaults => {
                    self.error(key.span, "`for_each` cannot be a default; set it on each task");
                }
                "for_each" => {
                    out.for_each = self.for_each(value);
                    out.for_each_written = true;
                }
                "for_each_limit" => out.for_each_limit = self.number(value, "for_each_limit", 1),
                "alerts" => out.alerts = self.alerts(value, false),
                "deadline" => out.deadline = self.deadline(value),
                "executor" => {
                    out.executor = self.executor(value);
                    out.executor_span = Some(value.span);
                }
                "kubernetes" => out.kubernetes = self.pod_settings(value),
                kind if in_defaults => {
                    self.error(key.span, format!("task type `{kind}` cannot be a default; set it on each task"));
                }
                kind => out.kinds.push((kind, key, value)),
            }
        }
        out
    }

    fn task(
        &mut self,
        task_id: &TaskId,
        key: &Node,
        own: TaskFields<'_>,
        defaults: &TaskFields<'_>,
    ) -> Option<(Task, TaskNodes)> {
        let kind = match own.kinds.as_slice() {
            [] => {
                self.error(key.span, format!("task `{task_id}` has no task type; add `shell: <command>`"));
                None
            }
            [(name, key_node, value)] => self.task_kind(name, key_node, value),
            [_, (_, second, _), ..] => {
                let names: Vec<String> = own.kinds.iter().map(|(name, _, _)| format!("`{name}`")).collect();
                self.error(
                    second.span,
                    format!("task `{task_id}` has more than one task type ({}); use exactly one", names.join(", ")),
                );
                None
            }
        };
        let env = own.env.clone().or_else(|| defaults.env.clone()).unwrap_or_default();
        let cwd = own.cwd.clone().or_else(|| defaults.cwd.clone());
        let kind = kind?;
        if own.executor == Some(updraft_core::kubernetes::Executor::Kubernetes)
            && !matches!(kind, TaskKind::Shell { .. } | TaskKind::Python(_))
            && let Some(span) = own.executor_span
        {
            self.error(
                span,
                format!(
                    "`executor: kubernetes` runs `shell` and `python` tasks in pods; a `{}` task runs in the runner (remove `executor`)",
                    kind.type_name()
                ),
            );
        }
        let depends_on = own.depends_on.unwrap_or_default();
        if own.for_each_written {
            self.mapped.push(task_id.clone());
        }
        let task = Task {
            task_id: task_id.clone(),
            kind,
            depends_on: depends_on.iter().map(|(id, _)| id.clone()).collect(),
            trigger_rule: own.trigger_rule.or(defaults.trigger_rule).unwrap_or_default(),
            retries: own.retries.or(defaults.retries).unwrap_or(0),
            retry_delay: own.retry_delay.or(defaults.retry_delay).unwrap_or(defaults::RETRY_DELAY),
            retry_exponential_backoff: own
                .retry_exponential_backoff
                .or(defaults.retry_exponential_backoff)
                .unwrap_or(false),
            max_retry_delay: own.max_retry_delay.or(defaults.max_retry_delay).unwrap_or(defaults::MAX_RETRY_DELAY),
            timeout: own.timeout.or(defaults.timeout),
            env,
            cwd,
            pool: own.pool.or_else(|| defaults.pool.clone()).unwrap_or_else(|| defaults::POOL.to_string()),
            queue: own.queue.or_else(|| defaults.queue.clone()).unwrap_or_else(|| defaults::QUEUE.to_string()),
            priority: own.priority.or(defaults.priority).unwrap_or(0),
            for_each: own.for_each,
            for_each_limit: own.for_each_limit.or(defaults.for_each_limit).unwrap_or(mapping::DEFAULT_LIMIT),
            alerts: own.alerts.or_else(|| defaults.alerts.clone()).unwrap_or_default(),
            deadline: own.deadline.or(defaults.deadline),
            executor: own.executor.or(defaults.executor),
            kubernetes: match (own.kubernetes, &defaults.kubernetes) {
                (Some(own), Some(base)) => Some(own.over(base)),
                (own, base) => own.or_else(|| base.clone()),
            },
        };
        let nodes = TaskNodes {
            name: task_id.to_string(),
            key_span: key.span,
            depends_on: depends_on.iter().map(|(_, span)| *span).collect(),
            depends_on_names: depends_on.iter().map(|(id, _)| id.to_string()).collect(),
        };
        Some((task, nodes))
    }

    fn task_kind(&mut self, name: &str, key: &Node, value: &Node) -> Option<TaskKind> {
        match name {
            "shell" => {
                let command = self.non_empty(value, "shell")?;
                self.check_template(&command, value.span, "shell");
                Some(TaskKind::Shell { command })
            }
            "http" => self.http(value).map(|http| TaskKind::Http(Box::new(http))),
            "python" => self.python(value).map(TaskKind::Python),
            "sql" => self.sql(value).map(TaskKind::Sql),
            "spark" => self.spark(value).map(TaskKind::Spark),
            "load" => self.load(value).map(TaskKind::Load),
            "copy" => self.transfer(value, "copy").map(TaskKind::Copy),
            "sync" => self.transfer(value, "sync").map(TaskKind::Sync),
            "sensor" => self.sensor(value).map(TaskKind::Sensor),
            other => {
                self.error(
                    key.span,
                    format!(
                        "task type `{other}` is not available yet; Updraft runs `shell`, `http`, `python`, `sql`, `spark` and `load` tasks"
                    ),
                );
                None
            }
        }
    }

    fn http(&mut self, node: &Node) -> Option<updraft_core::http::HttpTask> {
        use updraft_core::http::{self, Expect, HttpTask, Pagination};
        let Value::Map(entries) = &node.value else {
            self.error(node.span, format!("`http`: expected a mapping with at least `url`, found {}", node.kind()));
            return None;
        };
        let errors_before = self.diagnostics.len();
        let fields = self.fields(entries, HTTP_FIELDS, &[]);
        let get = |name: &str| fields.get(name).map(|(_, value)| *value);
        let Some(url_node) = get("url") else {
            self.error(node.span, "`http`: missing required field `url`");
            return None;
        };
        let url = self.non_empty(url_node, "http.url").unwrap_or_default();
        self.check_template(&url, url_node.span, "http.url");
        let method = match get("method") {
            None => "GET".to_string(),
            Some(value) => {
                let method = self.string(value, "http.method").unwrap_or_default().to_ascii_uppercase();
                if !HTTP_METHODS.contains(&method.as_str()) {
                    self.error(
                        value.span,
                        format!("`http.method`: unknown method `{method}`; use one of {}", HTTP_METHODS.join(", ")),
                    );
                }
                method
            }
        };
        let query = get("query").map(|value| self.text_map(value, "http.query")).unwrap_or_default();
        let headers = get("headers").map(|value| self.text_map(value, "http.headers")).unwrap_or_default();
        let body = match get("body") {
            Some(value) => {
                let body = self.text(value, "http.body").unwrap_or_default();
                self.check_template(&body, value.span, "http.body");
                Some(body)
            }
            None => None,
        };
        let json = get("json").map(|value| {
            self.check_json_templates(value, "http.json");
            value.to_json()
        });
        if body.is_some() && json.is_some() {
            self.error(node.span, "`http`: give `body` or `json`, not both");
        }
        let connection = match get("connection") {
            Some(value) => self.id(value, "http.connection", "connection id").map(str::to_string),
            None => None,
        };
        let auth = get("auth").and_then(|value| self.http_auth(value));
        if auth.is_some() && connection.is_none() {
            self.error(
                get("auth").map_or(node.span, |value| value.span),
                "`http.auth`: credentials come from a `connection`; name one",
            );
        }
        let expect = match get("expect") {
            None => Expect::default(),
            Some(value) => self.http_expect(value).unwrap_or_default(),
        };
        let extract = match get("extract") {
            Some(value) => self.json_path(value, "http.extract"),
            None => None,
        };
        let pagination = match get("pagination") {
            Some(value) => self.pagination(value),
            None => None,
        };
        let max_pages = match get("max_pages") {
            Some(value) => self.number(value, "http.max_pages", 1).unwrap_or_default(),
            None => http::DEFAULT_MAX_PAGES,
        };
        let rate_limit = match get("rate_limit") {
            Some(value) => match &value.value {
                Value::Int(n) if *n > 0 => Some(*n as f64),
                Value::Float(f) if *f > 0.0 => Some(*f),
                _ => {
                    self.error(value.span, "`http.rate_limit`: expected requests per second, a number above 0");
                    None
                }
            },
            None => None,
        };
        let request_retries = match get("request_retries") {
            Some(value) => self.number(value, "http.request_retries", 0).unwrap_or_default(),
            None => http::DEFAULT_REQUEST_RETRIES,
        };
        let request_timeout = match get("request_timeout") {
            Some(value) => self.duration(value, "http.request_timeout").unwrap_or_default(),
            None => Duration::from_secs(http::DEFAULT_REQUEST_TIMEOUT_SECS),
        };
        let save_to = match get("save_to") {
            Some(value) => {
                let path = self.non_empty(value, "http.save_to").unwrap_or_default();
                self.check_template(&path, value.span, "http.save_to");
                Some(path)
            }
            None => None,
        };
        if matches!(pagination, Some(Pagination::Page { .. })) && extract.is_none() {
            self.error(node.span, "`http.pagination.page` needs `extract`: a page without items ends the paging");
        }
        if self.diagnostics.len() > errors_before {
            return None;
        }
        Some(HttpTask {
            method,
            url,
            query,
            headers,
            body,
            json,
            connection,
            auth,
            expect,
            extract,
            pagination,
            max_pages,
            rate_limit,
            request_retries,
            request_timeout,
            save_to,
            save_connection: get("save_connection").and_then(|value| self.non_empty(value, "http.save_connection")),
        })
    }

    fn sql(&mut self, node: &Node) -> Option<updraft_core::dag::SqlTask> {
        use updraft_core::dag::{SqlOutput, SqlTask};
        let Value::Map(entries) = &node.value else {
            self.error(
                node.span,
                format!(
                    "`sql`: expected a mapping with `connection` and `statements` or `file`, found {}",
                    node.kind()
                ),
            );
            return None;
        };
        let errors_before = self.diagnostics.len();
        let fields = self.fields(entries, SQL_FIELDS, &[]);
        let get = |name: &str| fields.get(name).map(|(_, value)| *value);
        let connection = match get("connection") {
            Some(value) => self.id(value, "sql.connection", "connection id").map(str::to_string),
            None => {
                self.error(node.span, "`sql`: missing required field `connection`");
                None
            }
        };
        let statements = get("statements").and_then(|value| {
            let text = self.non_empty(value, "sql.statements")?;
            self.check_template(&text, value.span, "sql.statements");
            Some(text)
        });
        let file = get("file").and_then(|value| self.non_empty(value, "sql.file"));
        if statements.is_some() == file.is_some() && self.diagnostics.len() == errors_before {
            self.error(node.span, "`sql`: give exactly one of `statements` or `file`");
        }
        let parameters = get("parameters").map(|value| self.text_map(value, "sql.parameters")).unwrap_or_default();
        let output = match get("output") {
            None => SqlOutput::Rows,
            Some(value) => match value.as_str() {
                Some("rows") => SqlOutput::Rows,
                Some("count") => SqlOutput::Count,
                Some("none") => SqlOutput::None,
                _ => {
                    self.error(value.span, "`sql.output`: expected `rows`, `count` or `none`");
                    SqlOutput::None
                }
            },
        };
        let max_rows = get("max_rows").and_then(|value| self.number(value, "sql.max_rows", 1)).unwrap_or(1000);
        if self.diagnostics.len() > errors_before {
            return None;
        }
        Some(SqlTask { connection: connection?, statements, file, parameters, output, max_rows })
    }

    fn spark(&mut self, node: &Node) -> Option<updraft_core::dag::SparkTask> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.span,
                format!("`spark`: expected a mapping with at least `application`, found {}", node.kind()),
            );
            return None;
        };
        let errors_before = self.diagnostics.len();
        let fields = self.fields(entries, SPARK_FIELDS, &[]);
        let get = |name: &str| fields.get(name).map(|(_, value)| *value);
        let application = match get("application") {
            Some(value) => self.non_empty(value, "spark.application"),
            None => {
                self.error(node.span, "`spark`: missing required field `application` (a .py or .jar file)");
                None
            }
        };
        if let (Some(application), Some(value)) = (&application, get("application"))
            && !(application.ends_with(".py") || application.ends_with(".jar"))
        {
            self.error(value.span, format!("`spark.application`: `{application}` is neither a .py nor a .jar file"));
        }
        let master = get("master")
            .and_then(|value| self.non_empty(value, "spark.master"))
            .unwrap_or_else(|| "local[*]".to_string());
        let deploy_mode = match get("deploy_mode") {
            None => "client".to_string(),
            Some(value) => {
                let mode = self.non_empty(value, "spark.deploy_mode").unwrap_or_default();
                if mode != "client" && mode != "cluster" {
                    self.error(value.span, format!("`spark.deploy_mode`: `{mode}` is neither `client` nor `cluster`"));
                }
                mode
            }
        };
        let name = get("name").and_then(|value| {
            let name = self.non_empty(value, "spark.name")?;
            self.check_template(&name, value.span, "spark.name");
            Some(name)
        });
        let main_class = get("class").and_then(|value| self.non_empty(value, "spark.class"));
        let conf = get("conf").map(|value| self.text_map(value, "spark.conf")).unwrap_or_default();
        let packages = get("packages").map(|value| self.string_list(value, "spark.packages")).unwrap_or_default();
        let args = match get("args") {
            Some(value) => {
                let args = self.string_list(value, "spark.args");
                for arg in &args {
                    self.check_template(arg, value.span, "spark.args");
                }
                args
            }
            None => Vec::new(),
        };
        let spark_submit = get("spark_submit").and_then(|value| self.non_empty(value, "spark.spark_submit"));
        if self.diagnostics.len() > errors_before {
            return None;
        }
        Some(updraft_core::dag::SparkTask {
            application: application?,
            master,
            deploy_mode,
            name,
            main_class,
            conf,
            packages,
            args,
            spark_submit,
        })
    }

    fn load(&mut self, node: &Node) -> Option<updraft_core::dag::LoadTask> {
        use updraft_core::dag::{LoadMode, LoadTask};
        let Value::Map(entries) = &node.value else {
            self.error(
                node.span,
                format!("`load`: expected a mapping with `source`, `connection` and `table`, found {}", node.kind()),
            );
            return None;
        };
        let errors_before = self.diagnostics.len();
        let fields = self.fields(entries, LOAD_FIELDS, &[]);
        let get = |name: &str| fields.get(name).map(|(_, value)| *value);
        let required = |this: &mut Self, name: &str| match get(name) {
            Some(value) => this.non_empty(value, &format!("load.{name}")),
            None => {
                this.error(node.span, format!("`load`: missing required field `{name}`"));
                None
            }
        };
        let source = required(self, "source");
        let connection = required(self, "connection");
        let table = required(self, "table");
        if let (Some(source), Some(value)) = (&source, get("source")) {
            self.check_template(source, value.span, "load.source");
        }
        if let (Some(table), Some(value)) = (&table, get("table"))
            && !table
                .split('.')
                .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            self.error(
                value.span,
                format!("`load.table`: `{table}` is not `table` or `schema.table` (letters, digits, `_`)"),
            );
        }
        let format = get("format").and_then(|value| {
            let format = self.non_empty(value, "load.format")?;
            if !["csv", "tsv", "json", "ndjson"].contains(&format.as_str())
                && !updraft_core::dag::SHEET_FORMATS.contains(&format.as_str())
            {
                self.error(
                    value.span,
                    format!("`load.format`: `{format}` is not csv, tsv, json, ndjson, xlsx, xlsm, xlsb, xls or ods"),
                );
            }
            Some(format)
        });
        let lower = source.as_deref().map(str::to_ascii_lowercase).unwrap_or_default();
        let sheet_by_extension = updraft_core::dag::SHEET_FORMATS.iter().any(|ext| lower.ends_with(&format!(".{ext}")));
        if let (None, Some(_)) = (&format, &source)
            && ![".csv", ".tsv", ".json", ".ndjson", ".jsonl"].iter().any(|ext| lower.ends_with(ext))
            && !sheet_by_extension
        {
            self.error(
                get("source").map_or(node.span, |value| value.span),
                "`load.source`: set `format`: the extension does not tell (csv, tsv, json, ndjson, xlsx, ods, ...)",
            );
        }
        let is_sheet = match &format {
            Some(format) => updraft_core::dag::SHEET_FORMATS.contains(&format.as_str()),
            None => sheet_by_extension,
        };
        let sheet = get("sheet").and_then(|value| self.non_empty(value, "load.sheet"));
        let range = get("range").and_then(|value| {
            let text = self.non_empty(value, "load.range")?;
            match updraft_core::dag::CellRange::parse(&text) {
                Ok(range) => Some(range),
                Err(problem) => {
                    self.error(value.span, format!("`load.range`: {problem}; expected cells like `A1:D200` or `B3`"));
                    None
                }
            }
        });
        for name in ["sheet", "range"] {
            if let Some(value) = get(name)
                && !is_sheet
            {
                self.error(value.span, format!("`load.{name}`: only for spreadsheets (xlsx, xls, ods, ...)"));
            }
        }
        let delimiter = get("delimiter").and_then(|value| {
            let text = self.string(value, "load.delimiter")?;
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if c.is_ascii() => Some(c),
                _ => {
                    self.error(value.span, "`load.delimiter`: one ASCII character");
                    None
                }
            }
        });
        let mode = match get("mode") {
            None => LoadMode::Append,
            Some(value) => match value.as_str() {
                Some("append") => LoadMode::Append,
                Some("replace") => LoadMode::Replace,
                Some("upsert") => LoadMode::Upsert,
                _ => {
                    self.error(value.span, "`load.mode`: expected `append`, `replace` or `upsert`");
                    LoadMode::Append
                }
            },
        };
        let key = get("key").map(|value| self.string_list(value, "load.key")).unwrap_or_default();
        if mode == LoadMode::Upsert && key.is_empty() {
            self.error(
                get("mode").map_or(node.span, |value| value.span),
                "`load.mode: upsert` needs `key`: the columns a row is matched on",
            );
        }
        let mut columns = Vec::new();
        if let Some(value) = get("columns") {
            match &value.value {
                Value::Map(entries) => {
                    for (name, kind) in entries {
                        let (Some(name), Some(kind)) = (name.scalar_text(), kind.scalar_text()) else {
                            self.error(name.span, "`load.columns`: names and types must be text");
                            continue;
                        };
                        let kind = kind.to_ascii_lowercase();
                        if !LOAD_TYPES.contains(&kind.as_str()) {
                            let hint = did_you_mean(&kind, LOAD_TYPES.iter().copied())
                                .map(|s| format!(", did you mean `{s}`?"))
                                .unwrap_or_default();
                            self.error(value.span, format!("`load.columns.{name}`: unknown type `{kind}`{hint}"));
                        }
                        columns.push((name, kind));
                    }
                }
                _ => self.error(value.span, "`load.columns`: expected a mapping of column names to types"),
            }
        }
        for column in &key {
            if !columns.is_empty() && !columns.iter().any(|(name, _)| name == column) {
                self.error(
                    get("key").map_or(node.span, |value| value.span),
                    format!("`load.key`: `{column}` is not among `columns`"),
                );
            }
        }
        let rename = get("rename").map(|value| self.text_map(value, "load.rename")).unwrap_or_default();
        let max_rejected =
            get("max_rejected").and_then(|value| self.number(value, "load.max_rejected", 0)).map_or(0, u64::from);
        if self.diagnostics.len() > errors_before {
            return None;
        }
        let source_connection =
            get("source_connection").and_then(|value| self.non_empty(value, "load.source_connection"));
        Some(LoadTask {
            source: source?,
            source_connection,
            format,
            delimiter,
            connection: connection?,
            table: table?,
            mode,
            key,
            columns,
            rename,
            max_rejected,
            sheet,
            range,
        })
    }

    /// `copy` and `sync`: `from` and `to` locations (templates), their connections.
    fn transfer(&mut self, node: &Node, name: &str) -> Option<updraft_core::dag::TransferTask> {
        let Value::Map(entries) = &node.value else {
            self.error(node.span, format!("`{name}`: expected a mapping with `from` and `to`, found {}", node.kind()));
            return None;
        };
        let errors_before = self.diagnostics.len();
        let known = if name == "sync" { SYNC_FIELDS } else { COPY_FIELDS };
        let fields = self.fields(entries, known, &[]);
        let get = |field: &str| fields.get(field).map(|(_, value)| *value);
        let location = |this: &mut Self, field: &str| match get(field) {
            Some(value) => {
                let text = this.non_empty(value, &format!("{name}.{field}"))?;
                this.check_template(&text, value.span, &format!("{name}.{field}"));
                if let Some((scheme, _)) = text.split_once("://")
                    && !["s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "file"].contains(&scheme)
                    && !scheme.contains("{{")
                {
                    this.error(
                        value.span,
                        format!("`{name}.{field}`: `{scheme}://` is not a store this reads (s3, gs, az, abfss, file, or a local path)"),
                    );
                }
                Some(text)
            }
            None => {
                this.error(node.span, format!("`{name}`: missing required field `{field}`"));
                None
            }
        };
        let from = location(self, "from");
        let to = location(self, "to");
        let connection = |this: &mut Self, field: &str| {
            get(field).and_then(|value| this.non_empty(value, &format!("{name}.{field}")))
        };
        let from_connection = connection(self, "from_connection");
        let to_connection = connection(self, "to_connection");
        let include = get("include").and_then(|value| self.non_empty(value, &format!("{name}.include")));
        let delete = get("delete").and_then(|value| self.boolean(value, "sync.delete")).unwrap_or(false);
        if name == "sync" {
            for (field, text) in [("from", &from), ("to", &to)] {
                if let Some(text) = text
                    && !text.ends_with('/')
                {
                    self.error(
                        get(field).map_or(node.span, |value| value.span),
                        format!("`sync.{field}`: a sync is between prefixes: end `{text}` with `/`"),
                    );
                }
            }
        }
        if self.diagnostics.len() > errors_before {
            return None;
        }
        Some(updraft_core::dag::TransferTask { from: from?, from_connection, to: to?, to_connection, include, delete })
    }

    fn sensor(&mut self, node: &Node) -> Option<updraft_core::dag::SensorTask> {
        let Value::Map(entries) = &node.value else {
            self.error(node.span, format!("`sensor`: expected a mapping with `path`, found {}", node.kind()));
            return None;
        };
        let errors_before = self.diagnostics.len();
        let fields = self.fields(entries, SENSOR_FIELDS, &[]);
        let get = |field: &str| fields.get(field).map(|(_, value)| *value);
        let path = match get("path") {
            Some(value) => {
                let text = self.non_empty(value, "sensor.path");
                if let Some(text) = &text {
                    self.check_template(text, value.span, "sensor.path");
                }
                text
            }
            None => {
                self.error(node.span, "`sensor`: missing required field `path`");
                None
            }
        };
        let connection = get("connection").and_then(|value| self.non_empty(value, "sensor.connection"));
        let positive = |this: &mut Self, field: &str, default: Duration| match get(field) {
            None => default,
            Some(value) => match this.duration(value, &format!("sensor.{field}")) {
                Some(duration) if duration == Duration::ZERO => {
                    this.error(value.span, format!("`sensor.{field}`: must be longer than 0s"));
                    default
                }
                Some(duration) => duration,
                None => default,
            },
        };
        let poke_interval = positive(self, "poke_interval", Duration::from_secs(60));
        let timeout = positive(self, "timeout", Duration::from_secs(7 * 86_400));
        let mode = match get("mode").map(|value| (value, value.as_str())) {
            None | Some((_, Some("poke"))) => updraft_core::dag::SensorMode::Poke,
            Some((_, Some("reschedule"))) => updraft_core::dag::SensorMode::Reschedule,
            Some((value, _)) => {
                self.error(value.span, "`sensor.mode`: expected `poke` or `reschedule`");
                updraft_core::dag::SensorMode::Poke
            }
        };
        if self.diagnostics.len() > errors_before {
            return None;
        }
        Some(updraft_core::dag::SensorTask { path: path?, connection, poke_interval, timeout, mode })
    }

    fn python(&mut self, node: &Node) -> Option<updraft_core::dag::PythonTask> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.span,
                format!("`python`: expected a mapping with `script` or `code`, found {}", node.kind()),
            );
            return None;
        };
        let errors_before = self.diagnostics.len();
        let fields = self.fields(entries, PYTHON_FIELDS, &[]);
        let get = |name: &str| fields.get(name).map(|(_, value)| *value);
        let script = get("script").and_then(|value| self.non_empty(value, "python.script"));
        let code = get("code").and_then(|value| self.non_empty(value, "python.code"));
        if script.is_some() == code.is_some() && self.diagnostics.len() == errors_before {
            self.error(node.span, "`python`: give exactly one of `script` (a file) or `code` (inline)");
        }
        let args = match get("args") {
            Some(value) => {
                let args = self.string_list(value, "python.args");
                for arg in &args {
                    self.check_template(arg, value.span, "python.args");
                }
                args
            }
            None => Vec::new(),
        };
        let interpreter = get("interpreter").and_then(|value| self.non_empty(value, "python.interpreter"));
        let venv = get("venv").and_then(|value| self.non_empty(value, "python.venv"));
        if interpreter.is_some() && venv.is_some() {
            self.error(node.span, "`python`: give `interpreter` or `venv`, not both");
        }
        if self.diagnostics.len() > errors_before {
            return None;
        }
        Some(updraft_core::dag::PythonTask { script, code, args, interpreter, venv })
    }

    /// Names to text values (numbers and booleans as written), each a template.
    fn text_map(&mut self, node: &Node, field: &str) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        match &node.value {
            Value::Map(entries) => {
                for (key, value) in entries {
                    let Some(name) = key.scalar_text() else {
                        self.error(key.span, format!("`{field}`: names must be text"));
                        continue;
                    };
                    match value.scalar_text() {
                        Some(text) => {
                            self.check_template(&text, value.span, &format!("{field}.{name}"));
                            map.insert(name, text);
                        }
                        None => {
                            self.error(value.span, format!("`{field}.{name}`: expected text, found {}", value.kind()))
                        }
                    }
                }
            }
            Value::Null => {}
            _ => self.error(node.span, format!("`{field}`: expected a mapping, found {}", node.kind())),
        }
        map
    }

    fn check_json_templates(&mut self, node: &Node, field: &str) {
        match &node.value {
            Value::String(text) => self.check_template(text, node.span, field),
            Value::Seq(items) => {
                for item in items {
                    self.check_json_templates(item, field);
                }
            }
            Value::Map(entries) => {
                for (_, value) in entries {
                    self.check_json_templates(value, field);
                }
            }
            _ => {}
        }
    }

    /// A JSON path (RFC 9535), checked now so a typo fails before any run.
    fn json_path(&mut self, node: &Node, field: &str) -> Option<String> {
        let path = self.non_empty(node, field)?;
        if let Err(error) = serde_json_path::JsonPath::parse(&path) {
            self.error(node.span, format!("`{field}`: invalid JSON path `{path}`: {error}"));
            return None;
        }
        Some(path)
    }

    fn http_auth(&mut self, node: &Node) -> Option<updraft_core::http::HttpAuth> {
        use updraft_core::http::HttpAuth;
        match &node.value {
            Value::String(kind) if kind == "basic" => Some(HttpAuth::Basic),
            Value::String(kind) if kind == "bearer" => Some(HttpAuth::Bearer),
            Value::Map(entries) => {
                let fields = self.fields(entries, &["api_key"], &[]);
                let (_, key) = fields.get("api_key")?;
                let Value::Map(entries) = &key.value else {
                    self.error(key.span, "`http.auth.api_key`: expected `{header: <name>}` or `{query: <name>}`");
                    return None;
                };
                let fields = self.fields(entries, &["header", "query"], &[]);
                match (fields.get("header"), fields.get("query")) {
                    (Some((_, name)), None) => {
                        Some(HttpAuth::ApiKeyHeader(self.non_empty(name, "http.auth.api_key.header")?))
                    }
                    (None, Some((_, name))) => {
                        Some(HttpAuth::ApiKeyQuery(self.non_empty(name, "http.auth.api_key.query")?))
                    }
                    _ => {
                        self.error(key.span, "`http.auth.api_key`: give exactly one of `header` or `query`");
                        None
                    }
                }
            }
            _ => {
                self.error(
                    node.span,
                    "`http.auth`: expected `basic`, `bearer`, or `{api_key: {header|query: <name>}}`",
                );
                None
            }
        }
    }

    fn http_expect(&mut self, node: &Node) -> Option<updraft_core::http::Expect> {
        let Value::Map(entries) = &node.value else {
            self.error(node.span, format!("`http.expect`: expected a mapping, found {}", node.kind()));
            return None;
        };
        let fields = self.fields(entries, &["status", "path", "equals"], &[]);
        let mut expect = updraft_core::http::Expect::default();
        if let Some((_, value)) = fields.get("status") {
            let items: Vec<&Node> = match &value.value {
                Value::Seq(items) => items.iter().collect(),
                _ => vec![*value],
            };
            for item in items {
                match &item.value {
                    Value::Int(code) if (100..600).contains(code) => expect.status.push(*code as u16),
                    _ => self.error(item.span, "`http.expect.status`: expected an HTTP status (100 to 599)"),
                }
            }
        }
        if let Some((_, value)) = fields.get("path") {
            expect.path = Some(self.json_path(value, "http.expect.path")?);
        }
        if let Some((_, value)) = fields.get("equals") {
            expect.equals = Some(self.text(value, "http.expect.equals")?);
            if expect.path.is_none() {
                self.error(value.span, "`http.expect.equals` needs `path`");
            }
        }
        Some(expect)
    }

    fn pagination(&mut self, node: &Node) -> Option<updraft_core::http::Pagination> {
        use updraft_core::http::Pagination;
        let Value::Map(entries) = &node.value else {
            self.error(node.span, "`http.pagination`: expected one of `page`, `cursor`, `next_link`");
            return None;
        };
        let fields = self.fields(entries, &["page", "cursor", "next_link"], &[]);
        if fields.len() != 1 {
            self.error(node.span, "`http.pagination`: give exactly one of `page`, `cursor`, `next_link`");
            return None;
        }
        let (name, (_, value)) = fields.iter().next().map(|(name, pair)| (*name, *pair))?;
        let map = |this: &mut Self, known: &[&str]| -> Option<HashMap<String, Node>> {
            let Value::Map(entries) = &value.value else {
                this.error(value.span, format!("`http.pagination.{name}`: expected a mapping, found {}", value.kind()));
                return None;
            };
            Some(
                this.fields(entries, known, &[])
                    .into_iter()
                    .map(|(key, (_, node))| (key.to_string(), node.clone()))
                    .collect(),
            )
        };
        match name {
            "page" => {
                let fields = map(self, &["param", "start", "size_param", "size"])?;
                let Some(param) = fields.get("param") else {
                    self.error(
                        value.span,
                        "`http.pagination.page`: missing `param` (the page number's query parameter)",
                    );
                    return None;
                };
                let param = self.non_empty(param, "http.pagination.page.param")?;
                let start = match fields.get("start") {
                    Some(start) => u64::from(self.number(start, "http.pagination.page.start", 0)?),
                    None => 1,
                };
                let size_param = match fields.get("size_param") {
                    Some(node) => Some(self.non_empty(node, "http.pagination.page.size_param")?),
                    None => None,
                };
                let size = match fields.get("size") {
                    Some(node) => Some(u64::from(self.number(node, "http.pagination.page.size", 1)?)),
                    None => None,
                };
                Some(Pagination::Page { param, start, size_param, size })
            }
            "cursor" => {
                let fields = map(self, &["param", "path"])?;
                let (Some(param), Some(path)) = (fields.get("param"), fields.get("path")) else {
                    self.error(value.span, "`http.pagination.cursor`: needs `param` and `path`");
                    return None;
                };
                let param = self.non_empty(param, "http.pagination.cursor.param")?;
                let path = self.json_path(path, "http.pagination.cursor.path")?;
                Some(Pagination::Cursor { param, path })
            }
            _ => match &value.value {
                Value::String(text) if text == "header" => Some(Pagination::NextLink { path: None }),
                Value::String(_) => {
                    Some(Pagination::NextLink { path: Some(self.json_path(value, "http.pagination.next_link")?) })
                }
                _ => {
                    self.error(
                        value.span,
                        "`http.pagination.next_link`: a JSON path to the next URL, or `header` for the Link header",
                    );
                    None
                }
            },
        }
    }

    /// A task's fields built from the template its `use:` names, with its `with:`
    /// arguments and its own fields over the template's.
    fn use_template(
        &mut self,
        task_id: &TaskId,
        use_node: &Node,
        fields: &[(Node, Node)],
    ) -> Option<Vec<(Node, Node)>> {
        let name = self.string(use_node, "use")?;
        let template = match self.task_templates.get(name) {
            Ok(template) => template,
            Err(Missing::Broken(path)) => {
                self.error(use_node.span, format!("task `{task_id}`: template `{name}` has problems: see `{path}`"));
                return None;
            }
            Err(Missing::Unknown(names)) => {
                let hint = match did_you_mean(name, names.iter().copied()) {
                    Some(suggestion) => format!(", did you mean `{suggestion}`?"),
                    None if names.is_empty() => {
                        format!(" (task templates are `{}/<name>.yaml` in the DAGs folder)", templates::FOLDER)
                    }
                    None => format!(" (templates: {})", names.join(", ")),
                };
                self.error(use_node.span, format!("task `{task_id}`: no task template `{name}`{hint}"));
                return None;
            }
        };
        let with = fields.iter().find(|(key, _)| key.as_str() == Some("with")).map(|(_, value)| value);
        let own: Vec<(Node, Node)> =
            fields.iter().filter(|(key, _)| !matches!(key.as_str(), Some("use" | "with"))).cloned().collect();
        self.uses.push(use_node.span);
        match template.expand(with, &own, use_node.span) {
            Ok(merged) => Some(merged),
            Err(problems) => {
                for (span, message) in problems {
                    self.error(span, format!("task `{task_id}`: {message}"));
                }
                None
            }
        }
    }

    /// Problems found in a template's nodes are reported where it is used, naming
    /// the place in the template (`at`: the `use:` of the task being read; else the
    /// file's first use).
    fn relocate(&mut self, from: usize, at: Option<Span>) {
        let Some(at) = at.or_else(|| self.uses.first().copied()) else { return };
        for diagnostic in &mut self.diagnostics[from..] {
            if let Some((template, line, column)) = self.task_templates.locate(diagnostic.span) {
                diagnostic.message = format!(
                    "{} (in template `{}`, {}:{line}:{column})",
                    diagnostic.message, template.name, template.display_path
                );
                diagnostic.span = at;
            }
        }
    }

    /// `for_each`: a list, or `{{ tasks.<id>.output }}` with an optional path
    /// (`.key`, `["key"]`, `[0]`) to a list inside that output.
    fn for_each(&mut self, node: &Node) -> Option<ForEach> {
        match &node.value {
            Value::Seq(items) => Some(ForEach::Items(items.iter().map(Node::to_json).collect())),
            Value::String(text) => match parse_output_reference(text) {
                Ok((task, path)) => Some(ForEach::Output { task, path }),
                Err(problem) => {
                    self.error(
                        node.span,
                        format!(
                            "`for_each`: {problem}; expected a list, or `{{{{ tasks.<task_id>.output }}}}` with an optional path such as `.items` or `[0]`"
                        ),
                    );
                    None
                }
            },
            _ => {
                self.error(
                    node.span,
                    format!("`for_each`: expected a list or `{{{{ tasks.<task_id>.output }}}}`, found {}", node.kind()),
                );
                None
            }
        }
    }

    /// Compiles a template to catch syntax errors and unknown names before any run.
    fn check_template(&mut self, text: &str, span: Span, field: &str) {
        if !text.contains("{{") && !text.contains("{%") && !text.contains("{#") {
            return;
        }
        match self.templates.template_from_str(text) {
            Err(error) => self.error(span, format!("`{field}`: invalid template: {}", template_error(&error))),
            Ok(template) => {
                let mut unknown: Vec<String> = template
                    .undeclared_variables(false)
                    .into_iter()
                    .filter(|name| !TEMPLATE_NAMES.contains(&name.as_str()))
                    .collect();
                unknown.sort();
                for name in unknown {
                    let hint = match did_you_mean(&name, TEMPLATE_NAMES.iter().copied()) {
                        Some(suggestion) => format!(", did you mean `{suggestion}`?"),
                        None => String::new(),
                    };
                    self.error(span, format!("`{field}`: unknown template variable `{name}`{hint}"));
                }
            }
        }
    }

    /// `tasks.<id>.output` must name a task that runs before this one: an output
    /// read from elsewhere would not exist yet.
    fn output_references(&mut self, dag: &Dag, nodes: &[TaskNodes]) {
        let ids: Vec<&str> = dag.tasks().iter().map(|task| task.task_id.as_str()).collect();
        for (task_idx, task) in dag.tasks().iter().enumerate() {
            let Some(node) = nodes.iter().find(|node| node.name == task.task_id.as_str()) else { continue };
            let mut named = std::collections::BTreeSet::new();
            if let Some(source) = task.for_each.as_ref().and_then(ForEach::source_task) {
                named.insert(source.to_string());
            }
            let fields = task.templated(&dag.spec().env);
            if !self.mapped.contains(&task.task_id) {
                self.mapped_names_outside_mapping(&fields, task.task_id.as_str(), node.key_span);
            }
            for text in fields.iter().map(|(_, text)| *text).filter(|text| text.contains("tasks")) {
                let Ok(template) = self.templates.template_from_str(text) else { continue };
                for name in template.undeclared_variables(true) {
                    if let Some(rest) = name.strip_prefix("tasks.") {
                        named.insert(rest.split('.').next().unwrap_or_default().to_string());
                    }
                }
            }
            for upstream in named {
                let message = match dag.graph().task_idx(&upstream) {
                    None => {
                        let hint = match did_you_mean(&upstream, ids.iter().copied()) {
                            Some(suggestion) => format!(", did you mean `{suggestion}`?"),
                            None => String::new(),
                        };
                        format!(
                            "task `{}` reads `tasks.{upstream}.output`, but there is no task `{upstream}`{hint}",
                            task.task_id
                        )
                    }
                    Some(idx) if idx == task_idx => {
                        format!("task `{}` reads its own output; outputs go to downstream tasks", task.task_id)
                    }
                    Some(idx) if !dag.graph().is_ancestor(idx, task_idx) => format!(
                        "task `{}` reads `tasks.{upstream}.output`, but `{upstream}` is not upstream of it: add it to `depends_on`",
                        task.task_id
                    ),
                    Some(_) => continue,
                };
                self.error(node.key_span, message);
            }
        }
    }

    /// `item` and `map_index` exist only in a task with `for_each`.
    fn mapped_names_outside_mapping(&mut self, fields: &[(String, &str)], task_id: &str, span: Span) {
        for (field, text) in fields {
            if !text.contains("item") && !text.contains("map_index") {
                continue;
            }
            let Ok(template) = self.templates.template_from_str(text) else { continue };
            let used = template.undeclared_variables(false);
            for name in ["item", "map_index"].into_iter().filter(|name| used.contains(*name)) {
                self.error(
                    span,
                    format!("task `{task_id}`: `{field}` uses `{name}`, which only a task with `for_each` has"),
                );
            }
        }
    }

    fn depends_on(&mut self, node: &Node) -> Vec<(TaskId, Span)> {
        let items: Vec<&Node> = match &node.value {
            Value::Seq(items) => items.iter().collect(),
            Value::String(_) => vec![node],
            Value::Null => Vec::new(),
            _ => {
                self.error(node.span, format!("`depends_on`: expected a list of task ids, found {}", node.kind()));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for item in items {
            if let Some(id) = self.id(item, "depends_on", "task id")
                && let Ok(task_id) = TaskId::new(id)
            {
                out.push((task_id, item.span));
            }
        }
        out
    }

    fn graph_errors(&mut self, errors: &[GraphError], nodes: &[TaskNodes]) {
        // `nodes` is parallel to the task list passed to `Dag::new`.
        for error in errors {
            match error {
                GraphError::DuplicateTask { task_idx } => self.error(nodes[*task_idx].key_span, "duplicate task id"),
                GraphError::UnknownUpstream { task_idx, upstream_idx } => {
                    let task = &nodes[*task_idx];
                    let unknown = &task.depends_on_names[*upstream_idx];
                    let hint = match did_you_mean(unknown, nodes.iter().map(|n| n.name.as_str())) {
                        Some(suggestion) => format!(", did you mean `{suggestion}`?"),
                        None => String::new(),
                    };
                    let message = format!("unknown upstream task `{unknown}` in `depends_on` of `{}`{hint}", task.name);
                    self.error(task.depends_on[*upstream_idx], message);
                }
                GraphError::SelfDependency { task_idx, upstream_idx } => {
                    let span = nodes[*task_idx].depends_on[*upstream_idx];
                    self.error(span, format!("task `{}` depends on itself", nodes[*task_idx].name));
                }
                GraphError::Cycle { task_idxs } => {
                    let mut chain: Vec<String> =
                        task_idxs.iter().map(|&idx| format!("`{}`", nodes[idx].name)).collect();
                    chain.push(chain[0].clone());
                    // Point at the first task's `depends_on` entry naming the last: the
                    // edge that closes the loop.
                    let first = task_idxs[0];
                    let last_name = &nodes[*task_idxs.last().expect("a cycle has tasks")].name;
                    let span = nodes[first]
                        .depends_on_names
                        .iter()
                        .position(|name| name == last_name)
                        .map_or(nodes[first].key_span, |pos| nodes[first].depends_on[pos]);
                    self.error(span, format!("cycle in task dependencies: {}", chain.join(" -> ")));
                }
            }
        }
    }

    fn id<'a>(&mut self, node: &'a Node, field: &str, what: &str) -> Option<&'a str> {
        let text = self.string(node, field)?;
        match DagId::new(text) {
            Ok(_) => Some(text),
            Err(error) => {
                self.error(node.span, format!("invalid {what} `{text}`: {error}"));
                None
            }
        }
    }

    pub(crate) fn string<'a>(&mut self, node: &'a Node, field: &str) -> Option<&'a str> {
        match &node.value {
            Value::String(text) => Some(text),
            _ => {
                self.error(node.span, format!("`{field}`: expected a string, found {}", node.kind()));
                None
            }
        }
    }

    pub(crate) fn non_empty(&mut self, node: &Node, field: &str) -> Option<String> {
        let text = self.string(node, field)?;
        if text.trim().is_empty() {
            self.error(node.span, format!("`{field}`: must not be empty"));
            return None;
        }
        Some(text.to_string())
    }

    /// Free text: any scalar, as written.
    pub(crate) fn text(&mut self, node: &Node, field: &str) -> Option<String> {
        match node.scalar_text() {
            Some(text) => Some(text),
            None => {
                self.error(node.span, format!("`{field}`: expected text, found {}", node.kind()));
                None
            }
        }
    }

    fn string_list(&mut self, node: &Node, field: &str) -> Vec<String> {
        match &node.value {
            Value::Seq(items) => items.iter().filter_map(|item| self.text(item, field)).collect(),
            Value::Null => Vec::new(),
            _ => {
                self.error(node.span, format!("`{field}`: expected a list, found {}", node.kind()));
                Vec::new()
            }
        }
    }

    fn env(&mut self, node: &Node, field: &str) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        match &node.value {
            Value::Map(entries) => {
                for (key, value) in entries {
                    let Some(name) = key.scalar_text() else {
                        self.error(key.span, format!("`{field}`: variable names must be text"));
                        continue;
                    };
                    if name.is_empty() || name.contains('=') || name.contains('\0') {
                        self.error(key.span, format!("`{field}`: invalid variable name `{name}`"));
                        continue;
                    }
                    match value.scalar_text() {
                        Some(text) => {
                            self.check_template(&text, value.span, field);
                            env.insert(name, text);
                        }
                        None => self.error(
                            value.span,
                            format!("`{field}`: value of `{name}` must be text, found {}", value.kind()),
                        ),
                    }
                }
            }
            Value::Null => {}
            _ => self.error(
                node.span,
                format!("`{field}`: expected a mapping of variable names to values, found {}", node.kind()),
            ),
        }
        env
    }

    pub(crate) fn boolean(&mut self, node: &Node, field: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(value) => Some(*value),
            Value::String(text) => {
                self.error(node.span, format!("`{field}`: expected `true` or `false`, found the string `{text}`"));
                None
            }
            _ => {
                self.error(node.span, format!("`{field}`: expected `true` or `false`, found {}", node.kind()));
                None
            }
        }
    }

    pub(crate) fn integer(&mut self, node: &Node, field: &str) -> Option<i32> {
        match &node.value {
            Value::Int(value) => match i32::try_from(*value) {
                Ok(value) => Some(value),
                Err(_) => {
                    self.error(node.span, format!("`{field}`: `{value}` is out of range"));
                    None
                }
            },
            _ => {
                self.error(node.span, format!("`{field}`: expected a whole number, found {}", node.kind()));
                None
            }
        }
    }

    fn number(&mut self, node: &Node, field: &str, min: u32) -> Option<u32> {
        match &node.value {
            Value::Int(value) if *value >= i64::from(min) => match u32::try_from(*value) {
                Ok(value) => Some(value),
                Err(_) => {
                    self.error(node.span, format!("`{field}`: `{value}` is out of range"));
                    None
                }
            },
            Value::Int(value) => {
                self.error(node.span, format!("`{field}`: must be at least {min}, found `{value}`"));
                None
            }
            _ => {
                self.error(
                    node.span,
                    format!("`{field}`: expected a whole number of at least {min}, found {}", node.kind()),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, field: &str) -> Option<Duration> {
        let text = match &node.value {
            Value::Int(secs) if *secs >= 0 => secs.to_string(),
            Value::String(text) => text.clone(),
            _ => {
                self.error(
                    node.span,
                    format!("`{field}`: expected a duration like `30s`, `5m`, `1h30m` or `2d`, found {}", node.kind()),
                );
                return None;
            }
        };
        match Duration::parse(&text) {
            Ok(duration) => Some(duration),
            Err(error) => {
                self.error(node.span, format!("`{field}`: invalid duration `{text}`: {error}"));
                None
            }
        }
    }

    /// `alerts:`: `on_<event>` to a notifier name or a list of them. A DAG's are
    /// about its runs, which are not retried.
    fn alerts(&mut self, node: &Node, of_dag: bool) -> Option<Alerts> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.span,
                format!("`alerts`: expected a mapping like `on_failure: [team-slack]`, found {}", node.kind()),
            );
            return None;
        };
        let events: Vec<&str> = AlertEvent::ALL.iter().map(|event| event.field()).collect();
        let fields = self.fields(entries, &events, &[]);
        let mut alerts = Alerts::default();
        let mut ordered: Vec<_> = fields.into_iter().collect();
        ordered.sort_by_key(|(_, (key, _))| key.span.start);
        for (name, (key, value)) in ordered {
            let Some(event) = AlertEvent::ALL.into_iter().find(|event| event.field() == name) else { continue };
            if of_dag && event == AlertEvent::Retry {
                self.error(
                    key.span,
                    "`alerts.on_retry` is about tasks: set it on a task or in `defaults` (a run is not retried)",
                );
                continue;
            }
            let field = format!("alerts.{name}");
            let names = match &value.value {
                Value::String(_) => self.string(value, &field).map(|name| vec![(name.to_string(), value.span)]),
                Value::Seq(items) => Some(
                    items
                        .iter()
                        .filter_map(|item| self.string(item, &field).map(|name| (name.to_string(), item.span)))
                        .collect(),
                ),
                Value::Null => Some(Vec::new()),
                _ => {
                    self.error(
                        value.span,
                        format!("`{field}`: expected a notifier name or a list of them, found {}", value.kind()),
                    );
                    None
                }
            };
            for (notifier, span) in names.unwrap_or_default() {
                if notifier.trim().is_empty() {
                    self.error(span, format!("`{field}`: a notifier name cannot be empty"));
                    continue;
                }
                if let Some(known) = self.notifiers
                    && !known.contains(&notifier)
                {
                    let message = match did_you_mean(&notifier, known.iter().map(String::as_str)) {
                        Some(suggestion) => {
                            format!("`{field}`: unknown notifier `{notifier}`, did you mean `{suggestion}`?")
                        }
                        None if known.is_empty() => format!(
                            "`{field}`: unknown notifier `{notifier}`: updraft.toml configures none (add `[notifiers.{notifier}]`)"
                        ),
                        None => {
                            let names: Vec<&str> = known.iter().map(String::as_str).collect();
                            format!(
                                "`{field}`: unknown notifier `{notifier}` (updraft.toml configures {})",
                                names.join(", ")
                            )
                        }
                    };
                    self.error(span, message);
                    continue;
                }
                let list = alerts.to_mut(event);
                if !list.contains(&notifier) {
                    list.push(notifier);
                }
            }
        }
        Some(alerts)
    }

    fn deadline(&mut self, node: &Node) -> Option<Duration> {
        let deadline = self.duration(node, "deadline")?;
        if deadline == Duration::ZERO {
            self.error(node.span, "`deadline`: must be longer than 0s");
            return None;
        }
        Some(deadline)
    }

    fn timestamp(&mut self, node: &Node, field: &str, zone: &ZoneName) -> Option<Timestamp> {
        let text = self.string(node, field)?;
        match parse_date_in_zone(text, zone.tz()) {
            Ok(at) => Some(at),
            Err(error) => {
                self.error(node.span, format!("`{field}`: {error}"));
                None
            }
        }
    }
}

/// Spans of a task's id and its `depends_on` entries, to place graph errors.
struct TaskNodes {
    name: String,
    key_span: Span,
    depends_on: Vec<Span>,
    depends_on_names: Vec<String>,
}

/// Reads `{{ tasks.<id>.output<path> }}` (or `tasks["<id>"]`) into the task and
/// the path; anything else in the text is an error, since items are not rendered.
fn parse_output_reference(text: &str) -> Result<(TaskId, Vec<PathStep>), String> {
    let inner = text
        .trim()
        .strip_prefix("{{")
        .and_then(|rest| rest.strip_suffix("}}"))
        .map(str::trim)
        .ok_or_else(|| format!("`{text}` is not a single `{{{{ ... }}}}` expression"))?;
    let rest = inner.strip_prefix("tasks").ok_or_else(|| format!("`{inner}` does not start with `tasks.`"))?;
    let mut steps = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            if end == 0 {
                return Err(format!("`{inner}` has an empty name after `.`"));
            }
            steps.push(PathStep::Key(after[..end].to_string()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let close = after.find(']').ok_or_else(|| format!("`{inner}` has a `[` without `]`"))?;
            let key = after[..close].trim();
            let quoted = key
                .strip_prefix('"')
                .and_then(|key| key.strip_suffix('"'))
                .or_else(|| key.strip_prefix('\'').and_then(|key| key.strip_suffix('\'')));
            match (quoted, key.parse::<usize>()) {
                (Some(key), _) => steps.push(PathStep::Key(key.to_string())),
                (None, Ok(index)) => steps.push(PathStep::Index(index)),
                (None, Err(_)) => return Err(format!("`[{key}]` in `{inner}` is neither a quoted key nor an index")),
            }
            rest = &after[close + 1..];
        } else {
            return Err(format!("`{inner}` is not a path (unexpected `{rest}`)"));
        }
    }
    let task = match steps.first() {
        Some(PathStep::Key(task)) => TaskId::new(task.as_str()).map_err(|error| error.to_string())?,
        _ => return Err(format!("`{inner}` does not name a task after `tasks`")),
    };
    if steps.get(1) != Some(&PathStep::Key("output".to_string())) {
        return Err(format!("`{inner}` does not read `.output` of task `{task}`"));
    }
    Ok((task, steps.split_off(2)))
}

fn template_error(error: &minijinja::Error) -> String {
    let mut message = error.detail().map_or_else(|| error.kind().to_string(), str::to_string);
    if let Some(line) = error.line() {
        message.push_str(&format!(" (template line {line})"));
    }
    message
}

#[cfg(test)]
mod schema_tests {
    use super::*;

    /// `docs/dag.schema.json` names exactly the fields the parser takes.
    #[test]
    fn the_json_schema_has_every_field_and_no_other() {
        let schema: serde_json::Value = serde_json::from_str(include_str!("../../../docs/dag.schema.json")).unwrap();
        let keys = |value: &serde_json::Value| -> Vec<String> {
            let mut keys: Vec<String> = value["properties"].as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        let sorted = |fields: &[&str]| -> Vec<String> {
            let mut fields: Vec<String> = fields.iter().map(ToString::to_string).collect();
            fields.sort();
            fields
        };
        assert_eq!(keys(&schema), sorted(TOP_FIELDS));
        let task = &schema["$defs"]["task"];
        let task_keys: Vec<&str> = TASK_FIELDS.iter().chain(TASK_TYPES).chain(&["use", "with"]).copied().collect();
        assert_eq!(keys(task), sorted(&task_keys));
        assert_eq!(keys(&schema["properties"]["defaults"]), sorted(TASK_FIELDS));
        assert_eq!(keys(&task["properties"]["http"]), sorted(HTTP_FIELDS));
        assert_eq!(keys(&task["properties"]["python"]), sorted(PYTHON_FIELDS));
        assert_eq!(keys(&task["properties"]["sql"]), sorted(SQL_FIELDS));
        assert_eq!(keys(&task["properties"]["spark"]), sorted(SPARK_FIELDS));
        assert_eq!(keys(&task["properties"]["load"]), sorted(LOAD_FIELDS));
        assert_eq!(keys(&task["properties"]["copy"]), sorted(COPY_FIELDS));
        assert_eq!(keys(&task["properties"]["sync"]), sorted(SYNC_FIELDS));
        assert_eq!(keys(&task["properties"]["sensor"]), sorted(SENSOR_FIELDS));
    }
}
