//! Task templates with Airflow's names. Undefined names are errors of the attempt
//! (`SemiStrict`: printing or iterating an undefined fails, while `is defined` and
//! `default` still work).

use std::sync::Arc;

use minijinja::value::{Object, Serde, Value};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior};
use updraft_core::timetable::format_in_zone;
use updraft_core::{Dag, DataInterval, Task};

/// The run an attempt belongs to, as templates and `UPDRAFT_*` variables see it.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub run_id: String,
    pub run_type: String,
    pub logical_date: jiff::Timestamp,
    pub interval: DataInterval,
    pub conf: serde_json::Map<String, serde_json::Value>,
    /// Outputs of the run's tasks so far, for `{{ tasks.<id>.output }}`.
    pub outputs: std::collections::BTreeMap<String, serde_json::Value>,
    /// A mapped task instance's place and item.
    pub mapped: Option<Mapped>,
}

/// `{{ map_index }}` and `{{ item }}` of a mapped task instance.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub index: u32,
    pub item: serde_json::Value,
}

impl Mapped {
    /// From a task instance's stored map index and item (JSON text); `None` when
    /// not mapped.
    pub fn from_stored(map_index: i32, item: Option<&str>) -> Option<Mapped> {
        let index = u32::try_from(map_index).ok()?;
        let item = item.and_then(|text| serde_json::from_str(text).ok()).unwrap_or(serde_json::Value::Null);
        Some(Mapped { index, item })
    }
}

/// Pre-rendered values shared by templates and environment variables.
pub struct Names {
    pub ds: String,
    pub ds_nodash: String,
    pub ts: String,
    pub ts_nodash: String,
    pub data_interval_start: String,
    pub data_interval_end: String,
}

impl Names {
    /// Dates are shown in the DAG's time zone: for a daily DAG in Asia/Seoul, `ds`
    /// is the Seoul date of the interval, which is what its authors mean.
    pub fn new(dag: &Dag, run: &RunContext) -> Names {
        let tz = dag.tz();
        let local = run.logical_date.to_zoned(tz.clone());
        let ds = local.strftime("%Y-%m-%d").to_string();
        Names {
            ds_nodash: ds.replace('-', ""),
            ds,
            ts: format_in_zone(run.logical_date, tz),
            ts_nodash: local.strftime("%Y%m%dT%H%M%S").to_string(),
            data_interval_start: format_in_zone(run.interval.start, tz),
            data_interval_end: format_in_zone(run.interval.end, tz),
        }
    }
}

pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    // Shell commands are not HTML.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

/// The context of one attempt. `params` are the DAG's defaults overridden by the
/// run's `conf`, as Airflow does.
pub fn context(
    dag: &Dag,
    run: &RunContext,
    names: &Names,
    task_id: &str,
    try_number: u32,
    secrets: &updraft_store::Secrets,
) -> Value {
    let mut params = dag.spec().params.clone();
    for (key, value) in &run.conf {
        params.insert(key.clone(), value.clone());
    }
    let dag_run = serde_json::json!({
        "run_id": run.run_id,
        "run_type": run.run_type,
        "conf": run.conf,
        "logical_date": names.ts,
        "data_interval_start": names.data_interval_start,
        "data_interval_end": names.data_interval_end,
    });
    minijinja::context! {
        ds => &names.ds,
        ds_nodash => &names.ds_nodash,
        ts => &names.ts,
        ts_nodash => &names.ts_nodash,
        logical_date => &names.ts,
        data_interval_start => &names.data_interval_start,
        data_interval_end => &names.data_interval_end,
        run_id => &run.run_id,
        dag_id => dag.dag_id().as_str(),
        task_id => task_id,
        try_number => try_number,
        params => Value::from(Serde(&params)),
        dag_run => Value::from(Serde(&dag_run)),
        macros => Value::from_object(Macros),
        var => secret_variables(secrets),
        conn => secret_connections(secrets),
        tasks => task_outputs(&run.outputs),
        item => run.mapped.as_ref().map(|mapped| Value::from(Serde(&mapped.item))),
        map_index => run.mapped.as_ref().map(|mapped| mapped.index),
    }
}

/// `tasks.<id>.output`: what an upstream task handed on, as JSON (so
/// `tasks.list.output.items[0].code` works).
fn task_outputs(outputs: &std::collections::BTreeMap<String, serde_json::Value>) -> Value {
    let tasks: serde_json::Map<String, serde_json::Value> =
        outputs.iter().map(|(task_id, output)| (task_id.clone(), serde_json::json!({ "output": output }))).collect();
    Value::from(Serde(serde_json::Value::Object(tasks)))
}

/// Whether a task's templates read upstream outputs, so they are fetched only then.
pub fn uses_outputs(dag: &Dag, task: &Task) -> bool {
    template_texts(dag, task).any(|text| text.contains("tasks"))
}

/// A task's templated texts that hold a template.
fn template_texts<'a>(dag: &'a Dag, task: &'a Task) -> impl Iterator<Item = &'a str> {
    task.templated(&dag.spec().env)
        .into_iter()
        .map(|(_, text)| text)
        .filter(|text| text.contains("{{") || text.contains("{%"))
}

/// `var.value.<key>` (text) and `var.json.<key>` (parsed), as in Airflow.
fn secret_variables(secrets: &updraft_store::Secrets) -> Value {
    let json: serde_json::Map<String, serde_json::Value> = secrets
        .variables
        .iter()
        .filter_map(|(key, value)| serde_json::from_str(value).ok().map(|parsed| (key.clone(), parsed)))
        .collect();
    Value::from(Serde(serde_json::json!({ "value": secrets.variables, "json": json })))
}

/// `conn.<id>.host`, `.login`, `.password`, `.schema`, `.port`, `.conn_type`,
/// `.extra` (text) and `.extra_dejson` (parsed).
fn secret_connections(secrets: &updraft_store::Secrets) -> Value {
    let connections: serde_json::Map<String, serde_json::Value> = secrets
        .connections
        .iter()
        .map(|(conn_id, c)| {
            let extra_dejson = c
                .extra
                .as_deref()
                .and_then(|extra| serde_json::from_str::<serde_json::Value>(extra).ok())
                .unwrap_or_else(|| serde_json::json!({}));
            let value = serde_json::json!({
                "conn_id": conn_id, "conn_type": c.conn_type, "host": c.host, "login": c.login,
                "password": c.password, "schema": c.schema, "port": c.port, "extra": c.extra,
                "extra_dejson": extra_dejson,
            });
            (conn_id.clone(), value)
        })
        .collect();
    Value::from(Serde(serde_json::Value::Object(connections)))
}

/// A task's templated fields (`shell`, `cwd`, `env.<NAME>`, in that order; a
/// task's `env` after its DAG's) rendered for one try, as its attempt renders
/// them; the UI shows the same.
pub fn render_fields(
    env: &Environment<'static>,
    dag: &Dag,
    task: &Task,
    run: &RunContext,
    try_number: u32,
    secrets: &updraft_store::Secrets,
) -> Vec<(String, Result<String, String>)> {
    let names = Names::new(dag, run);
    let context = context(dag, run, &names, task.task_id.as_str(), try_number, secrets);
    task.templated(&dag.spec().env).into_iter().map(|(field, text)| (field, render(env, text, &context))).collect()
}

/// The variables and connections a task's templated fields name
/// (`var.value.<key>`, `var.json.<key>`, `conn.<id>`), for the secrets backends
/// to look up. A name computed at render time (`var.value[name]`) is not seen:
/// it comes from the environment or the database only.
pub fn wanted(dag: &Dag, task: &Task) -> updraft_secrets::Wanted {
    let env = Environment::new();
    let mut wanted = updraft_secrets::Wanted::default();
    wanted.connections.extend(task.connections().into_iter().map(str::to_string));
    for text in template_texts(dag, task) {
        let Ok(template) = env.template_from_str(text) else { continue };
        for name in template.undeclared_variables(true) {
            let parts: Vec<&str> = name.split('.').collect();
            match parts[..] {
                ["var", "value" | "json", key, ..] => {
                    wanted.variables.insert(key.to_string());
                }
                ["conn", conn_id, ..] => {
                    wanted.connections.insert(conn_id.to_string());
                }
                _ => {}
            }
        }
    }
    wanted
}

pub fn render(env: &Environment<'static>, text: &str, context: &Value) -> Result<String, String> {
    if !text.contains("{{") && !text.contains("{%") && !text.contains("{#") {
        return Ok(text.to_string());
    }
    env.render_str(text, context).map_err(|error| describe(&error))
}

fn describe(error: &Error) -> String {
    let mut message = match error.kind() {
        ErrorKind::UndefinedError => "undefined value".to_string(),
        kind => kind.to_string(),
    };
    if let Some(detail) = error.detail() {
        message = format!("{message}: {detail}");
    }
    if let Some(line) = error.line() {
        message.push_str(&format!(" (template line {line})"));
    }
    message
}

/// Airflow's most used date macros: `macros.ds_add(ds, 7)` and
/// `macros.ds_format(ds, "%Y-%m-%d", "%d/%m/%Y")`.
#[derive(Debug)]
struct Macros;

impl Object for Macros {
    fn call_method(
        self: &Arc<Self>,
        _state: &mut minijinja::State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        let bad = |message: String| Error::new(ErrorKind::InvalidOperation, message);
        match method {
            "ds_add" => {
                let (ds, days): (String, i64) = minijinja::value::from_args(args)?;
                let date: jiff::civil::Date =
                    ds.parse().map_err(|_| bad(format!("ds_add: `{ds}` is not a YYYY-MM-DD date")))?;
                let shifted =
                    date.checked_add(jiff::Span::new().days(days)).map_err(|error| bad(format!("ds_add: {error}")))?;
                Ok(Value::from(shifted.to_string()))
            }
            "ds_format" => {
                let (ds, input, output): (String, String, String) = minijinja::value::from_args(args)?;
                let date = jiff::civil::Date::strptime(&input, &ds)
                    .map_err(|error| bad(format!("ds_format: `{ds}` does not match `{input}`: {error}")))?;
                Ok(Value::from(date.strftime(&output).to_string()))
            }
            other => Err(Error::new(ErrorKind::UnknownMethod, format!("macros has no `{other}`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(yaml: &str) -> Dag {
        updraft_dagfile::parse_dag(yaml, "t.yaml").dag.unwrap()
    }

    fn run() -> RunContext {
        RunContext {
            run_id: "scheduled__2024-01-01T21:00:00+00:00".to_string(),
            run_type: "scheduled".to_string(),
            logical_date: "2024-01-01T21:00:00Z".parse().unwrap(),
            interval: DataInterval {
                start: "2024-01-01T21:00:00Z".parse().unwrap(),
                end: "2024-01-02T21:00:00Z".parse().unwrap(),
            },
            conf: serde_json::from_str(r#"{"market": "KOSDAQ"}"#).unwrap(),
            outputs: Default::default(),
            mapped: None,
        }
    }

    fn check(template: &str, expect: &str) {
        let dag =
            dag("dag: d\ntimezone: Asia/Seoul\nparams: {market: KOSPI, limit: 10}\ntasks:\n  t: {shell: 'true'}\n");
        let run = run();
        let names = Names::new(&dag, &run);
        let mut secrets = updraft_store::Secrets::default();
        secrets.variables.insert("region".into(), "eu-west-1".into());
        secrets.variables.insert("settings".into(), r#"{"bucket": "raw", "retries": 3}"#.into());
        secrets.connections.insert(
            "warehouse".into(),
            updraft_store::ConnectionValues {
                conn_type: "postgres".into(),
                host: Some("db.internal".into()),
                login: Some("loader".into()),
                password: Some("p@ss".into()),
                port: Some(5432),
                extra: Some(r#"{"sslmode": "require"}"#.into()),
                ..Default::default()
            },
        );
        let ctx = context(&dag, &run, &names, "t", 2, &secrets);
        let actual = match render(&environment(), template, &ctx) {
            Ok(text) => text,
            Err(error) => format!("error: {error}"),
        };
        assert_eq!(actual, expect, "template {template:?}");
    }

    #[test]
    fn variables_and_connections() {
        check("{{ var.value.region }}", "eu-west-1");
        check("{{ var.json.settings.bucket }}-{{ var.json.settings.retries }}", "raw-3");
        check(
            "{{ conn.warehouse.login }}@{{ conn.warehouse.host }}:{{ conn.warehouse.port }}",
            "loader@db.internal:5432",
        );
        check("{{ conn.warehouse.extra_dejson.sslmode }}", "require");
        check("{{ conn.warehouse.password }}", "p@ss");
        check("{{ var.value.missing }}", "error: undefined value: `var.value.missing` is undefined (template line 1)");
    }

    #[test]
    fn templates_name_the_secrets_they_use() {
        let dag = dag(
            "dag: d\nenv: {A: \"{{ var.value.shared }}\"}\ntasks:\n  t:\n    shell: \"psql {{ conn.warehouse.host }} {{ var.json.settings.bucket }} {{ conn.warehouse.password }}\"\n    env: {B: \"{% if var.value.flag is defined %}x{% endif %}\", C: plain}\n",
        );
        let wanted = wanted(&dag, dag.task("t").unwrap());
        let variables: Vec<&str> = wanted.variables.iter().map(String::as_str).collect();
        let connections: Vec<&str> = wanted.connections.iter().map(String::as_str).collect();
        assert_eq!(variables, ["flag", "settings", "shared"]);
        assert_eq!(connections, ["warehouse"]);
    }

    #[test]
    fn names() {
        // 21:00 UTC is 06:00 the next day in Seoul.
        check("{{ ds }} {{ ds_nodash }}", "2024-01-02 20240102");
        check("{{ ts }} {{ ts_nodash }}", "2024-01-02T06:00:00+09:00 20240102T060000");
        check("{{ logical_date }}", "2024-01-02T06:00:00+09:00");
        check(
            "{{ data_interval_start }}..{{ data_interval_end }}",
            "2024-01-02T06:00:00+09:00..2024-01-03T06:00:00+09:00",
        );
        check(
            "{{ dag_id }}.{{ task_id }} {{ run_id }} try {{ try_number }}",
            "d.t scheduled__2024-01-01T21:00:00+00:00 try 2",
        );
        check("{{ params.market }} {{ params.limit }}", "KOSDAQ 10");
        check("{{ dag_run.conf.market }} {{ dag_run.conf.mode | default('full') }}", "KOSDAQ full");
        check(
            "{{ macros.ds_add(ds, -1) }} {{ macros.ds_format(ds, '%Y-%m-%d', '%d/%m/%Y') }}",
            "2024-01-01 02/01/2024",
        );
        check("echo '<b>' & \"x\"", "echo '<b>' & \"x\"");
        check("{% if params.nothing is defined %}yes{% else %}no{% endif %}", "no");
    }

    #[test]
    fn undefined_is_an_error() {
        check("{{ nothing }}", "error: undefined value: `nothing` is undefined (template line 1)");
        check("{{ params.nothing }}", "error: undefined value: `params.nothing` is undefined (template line 1)");
        check(
            "{{ macros.ds_add('x', 1) }}",
            "error: invalid operation: ds_add: `x` is not a YYYY-MM-DD date (template line 1)",
        );
    }
}
