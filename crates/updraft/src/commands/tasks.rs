//! `updraft tasks ...`

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use serde_json::json;
use tokio::sync::{oneshot, watch};
use updraft_core::TaskState;
use updraft_core::retry::AttemptOutcome;
use updraft_runner::{AttemptLabel, AttemptObserver, AttemptResult, AttemptSpec, RunContext};
use updraft_store::DefinitionCache;

use super::dags::{dag_zone, logical_date, parse_params};
use crate::cli::{Output, TaskOnDate, TasksCommand};
use crate::context::Ctx;
use crate::error::user_error;
use crate::output;

pub async fn run(ctx: &Ctx, command: TasksCommand) -> Result<ExitCode> {
    match command {
        TasksCommand::Test { task } => test(ctx, &task).await,
        TasksCommand::Render { task, pod, output } => render(ctx, &task, pod, output).await,
        TasksCommand::StatesForDagRun { dag_id, run_id, output } => states(ctx, &dag_id, &run_id, output).await,
        TasksCommand::Explain { dag_id, run_id, task_id, map_index } => {
            explain(ctx, &dag_id, &run_id, &task_id, map_index).await
        }
    }
}

struct Printer;

impl AttemptObserver for Printer {
    fn started(&self, attempt: &AttemptLabel) {
        print_line(&attempt.task_id, "running");
    }
    fn line(&self, attempt: &AttemptLabel, line: &str) {
        print_line(&attempt.task_id, line);
    }
    fn ended(&self, attempt: &AttemptLabel, result: &AttemptResult) {
        print_line(&attempt.task_id, &format!("{} after {:.2}s", result.describe(), result.duration.as_secs_f64()));
    }
}

fn print_line(task_id: &str, text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{task_id} | {text}");
}

/// A first try of `task_id` in a test run on `date`, as `tasks test` and `tasks
/// render` see it: secrets read, templates not yet rendered.
async fn attempt_spec(ctx: &Ctx, task: &TaskOnDate) -> Result<AttemptSpec> {
    let TaskOnDate { dag_id, task_id, date, params } = task;
    let (dag_id, task_id) = (dag_id.as_str(), task_id.as_str());
    let conf = parse_params(params)?;
    let folder = ctx.load_folder()?;
    let (loaded, _) = ctx.find_dag(&folder, dag_id)?;
    let dag = loaded.dag.clone();
    if dag.task(task_id).is_none() {
        let ids: Vec<&str> = dag.tasks().iter().map(|task| task.task_id.as_str()).collect();
        let hint = match updraft_core::suggest::did_you_mean(task_id, ids.iter().copied()) {
            Some(suggestion) => format!("did you mean `{suggestion}`? its tasks: {}", ids.join(", ")),
            None => format!("its tasks: {}", ids.join(", ")),
        };
        return Err(user_error(format!("DAG `{dag_id}` has no task `{task_id}`"), Some(&hint)));
    }
    let store = ctx.store().await?;
    let database = updraft_runner::secrets::load(store.as_ref(), ctx.cipher()?.as_deref())
        .await
        .map_err(|why| user_error(why, Some("set `core.fernet_key` (UPDRAFT_CORE__FERNET_KEY)")))?;
    let wanted = updraft_runner::template::wanted(&dag, dag.task(task_id).expect("checked above"));
    let secrets = updraft_runner::secrets::for_task(&database, ctx.backends()?.as_ref(), &wanted)
        .await
        .map_err(|why| user_error(why, None))?;
    let logical_date = logical_date(ctx, &dag, date.as_deref())?;
    Ok(AttemptSpec {
        dag: dag.clone(),
        task_id: task_id.to_string(),
        run: RunContext {
            run_id: updraft_core::plan::RunType::Test.run_id(logical_date).to_string(),
            run_type: "test".to_string(),
            logical_date,
            interval: dag.timetable().manual_interval(logical_date),
            conf,
            outputs: Default::default(),
            mapped: None,
        },
        try_number: 1,
        tries_allowed: 1,
        dags_folder: ctx.config.dags_folder.clone(),
        log_path: None,
        attempt_token: None,
        kill_grace: ctx.config.kill_grace,
        secrets: std::sync::Arc::new(secrets),
        output_limit: ctx.config.output_limit,
    })
}

async fn test(ctx: &Ctx, task: &TaskOnDate) -> Result<ExitCode> {
    let spec = attempt_spec(ctx, task).await?;
    let task_id = task.task_id.as_str();
    let (cancel, cancelled) = watch::channel(false);
    let (spawned, _) = oneshot::channel();
    let templates = updraft_runner::template::environment();
    let result = tokio::select! {
        result = updraft_runner::execute(&spec, &templates, Arc::new(Printer), cancelled, spawned) => result,
        () = crate::engine::termination() => {
            let _ = cancel.send(true);
            return Err(anyhow::anyhow!("interrupted"));
        }
    };
    let state = match result.outcome() {
        AttemptOutcome::Success => TaskState::Success,
        AttemptOutcome::Skipped => TaskState::Skipped,
        AttemptOutcome::Failed => TaskState::Failed,
    };
    print_line(task_id, &state.to_string());
    Ok(if state == TaskState::Failed { ExitCode::from(crate::error::exit::FAILURE) } else { ExitCode::SUCCESS })
}

async fn states(ctx: &Ctx, dag_id: &str, run_id: &str, output: Output) -> Result<ExitCode> {
    let store = ctx.store().await?;
    let tz = dag_zone(ctx, &store, dag_id).await?;
    let Some(run) = store.get_run(dag_id, run_id).await? else {
        return Err(user_error(
            format!("DAG `{dag_id}` has no run `{run_id}`"),
            Some(&format!("`updraft dags list-runs {dag_id}` lists its runs")),
        ));
    };
    let tis = store.task_instances(run.run_pk).await?;
    match output {
        Output::Json => {
            let items: Vec<serde_json::Value> = tis
                .iter()
                .map(|ti| {
                    json!({
                        "task_id": ti.task_id,
                        "map_index": ti.map_index,
                        // Airflow's "no status" is null.
                        "state": if ti.state == TaskState::None { serde_json::Value::Null } else { json!(ti.state.as_str()) },
                        "try_number": ti.try_number,
                        "start_date": output::time_json(ti.start_date, &tz),
                        "end_date": output::time_json(ti.end_date, &tz),
                    })
                })
                .collect();
            output::json(&serde_json::Value::Array(items));
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = tis
                .iter()
                .map(|ti| {
                    vec![
                        ti.label(),
                        ti.state.to_string(),
                        ti.try_number.to_string(),
                        output::time(ti.start_date, &tz),
                        output::time(ti.end_date, &tz),
                    ]
                })
                .collect();
            output::table(&["task_id", "state", "try_number", "start_date", "end_date"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn explain(ctx: &Ctx, dag_id: &str, run_id: &str, task_id: &str, map_index: Option<i32>) -> Result<ExitCode> {
    let store = ctx.store().await?;
    let definitions = DefinitionCache::default();
    let now = ctx.clock.now();
    let explanation = updraft_scheduler::explain(&store, &definitions, dag_id, run_id, task_id, map_index, now)
        .await
        .map_err(|error| match error {
        updraft_scheduler::ExplainError::Store(error) => anyhow::Error::new(error),
        other => user_error(other.to_string(), Some(&format!("`updraft dags list-runs {dag_id}` lists its runs"))),
    })?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", explanation.headline);
    for line in explanation.details {
        let _ = writeln!(out, "  {line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `tasks render`: the task's templated fields rendered, or its pod.
async fn render(ctx: &Ctx, on_date: &TaskOnDate, pod: bool, output: Output) -> Result<ExitCode> {
    let spec = attempt_spec(ctx, on_date).await?;
    let task_id = on_date.task_id.as_str();
    let templates = updraft_runner::template::environment();
    let task = spec.dag.task(task_id).expect("found by attempt_spec");
    if !pod {
        let mut fields = serde_json::Map::new();
        for (field, value) in updraft_runner::template::render_fields(
            &templates,
            &spec.dag,
            task,
            &spec.run,
            spec.try_number,
            &spec.secrets,
        ) {
            let value = value.map_err(|error| user_error(format!("cannot render `{field}`: {error}"), None))?;
            fields.insert(field, json!(value));
        }
        match output {
            Output::Json => output::json(&serde_json::Value::Object(fields)),
            Output::Table => {
                for (field, value) in &fields {
                    crate::outln!("# {field}\n{}", value.as_str().unwrap_or_default());
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let executor = updraft_runner::PodExecutor::new(ctx.config.kubernetes.clone(), ctx.config.executor);
    let pod = executor.pod_for(&spec, &templates).map_err(|why| {
        let hint = why.contains("node pool").then_some("see `[kubernetes]` in updraft.toml");
        user_error(format!("task `{task_id}`: {why}"), hint)
    })?;
    match output {
        Output::Json => output::json(&pod),
        Output::Table => crate::outln!("{}", updraft_kube::yaml::to_yaml(&pod).trim_end()),
    }
    Ok(ExitCode::SUCCESS)
}
