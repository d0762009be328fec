//! `updraft dags ...`

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::json;
use updraft_core::plan::RunType;
use updraft_core::timetable::parse_date_in_zone;
use updraft_core::{Dag, RunId, RunState};
use updraft_dagfile::LoadedDag;
use updraft_store::{NewRun, ProcessState, RunRow, Store};

use crate::cli::{DagsCommand, Output};
use crate::context::Ctx;
use crate::error::user_error;
use crate::output;

pub async fn run(ctx: &Ctx, command: DagsCommand) -> Result<ExitCode> {
    match command {
        DagsCommand::List { output } => list(ctx, output).await,
        DagsCommand::Validate => validate(ctx),
        DagsCommand::Test { dag_id, date, params, retries } => {
            super::dag_test::run(ctx, &dag_id, date, &params, retries).await
        }
        DagsCommand::Trigger { dag_id, conf, date, run_id, wait } => {
            trigger(ctx, &dag_id, conf, date, run_id, wait).await
        }
        DagsCommand::NextRuns { dag_id, count, after, output } => next_runs(ctx, &dag_id, count, after, output),
        DagsCommand::ListRuns { dag_id, state, limit, output } => list_runs(ctx, &dag_id, state, limit, output).await,
        DagsCommand::Pause { dag_id } => set_paused(ctx, &dag_id, true).await,
        DagsCommand::Unpause { dag_id } => set_paused(ctx, &dag_id, false).await,
        DagsCommand::Backfill { dag_id, start, end, no_wait } => {
            super::backfill::run(ctx, &dag_id, &start, &end, no_wait).await
        }
    }
}

async fn list(ctx: &Ctx, output: Output) -> Result<ExitCode> {
    let folder = ctx.load_folder()?;
    for diagnostic in folder.diagnostics() {
        crate::errln!("{diagnostic}");
    }
    let store = ctx.store().await?;
    let stored: HashMap<String, bool> =
        store.list_dags().await?.into_iter().map(|row| (row.dag_id, row.is_paused)).collect();
    let mut dags: Vec<(&LoadedDag, &updraft_dagfile::DagFile)> = folder.dags().collect();
    dags.sort_by(|a, b| a.0.dag.dag_id().cmp(b.0.dag.dag_id()));
    let paused =
        |dag: &Dag| stored.get(dag.dag_id().as_str()).copied().unwrap_or(ctx.config.dags_are_paused_at_creation);
    match output {
        Output::Json => {
            let items: Vec<serde_json::Value> = dags
                .iter()
                .map(|(loaded, file)| {
                    let spec = loaded.dag.spec();
                    json!({
                        "dag_id": loaded.dag.dag_id().as_str(),
                        "schedule": spec.schedule.text(),
                        "timezone": spec.timezone.name(),
                        "owner": spec.owner,
                        "paused": paused(&loaded.dag),
                        "file": file.display_path,
                        "version": loaded.version.0,
                        "tags": spec.tags,
                        "description": spec.description,
                    })
                })
                .collect();
            output::json(&serde_json::Value::Array(items));
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = dags
                .iter()
                .map(|(loaded, file)| {
                    let spec = loaded.dag.spec();
                    vec![
                        loaded.dag.dag_id().to_string(),
                        spec.schedule.text().unwrap_or("None").to_string(),
                        spec.owner.clone(),
                        paused(&loaded.dag).to_string(),
                        file.display_path.clone(),
                        loaded.version.0.clone(),
                    ]
                })
                .collect();
            output::table(&["dag_id", "schedule", "owner", "paused", "file", "version"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(ctx: &Ctx) -> Result<ExitCode> {
    let folder = ctx.load_folder()?;
    let mut n_errors = 0;
    for diagnostic in folder.diagnostics() {
        crate::errln!("{diagnostic}");
        n_errors += 1;
    }
    let n_files = folder.files.len();
    let n_dags = folder.dags().count();
    if n_errors > 0 {
        let n_bad = folder.files.iter().filter(|file| !file.diagnostics.is_empty()).count();
        crate::errln!("{n_errors} error(s) in {n_bad} of {n_files} file(s); {n_dags} DAG(s) valid");
        return Ok(ExitCode::from(crate::error::exit::FAILURE));
    }
    crate::errln!("{n_dags} DAG(s) in {n_files} file(s): all valid");
    Ok(ExitCode::SUCCESS)
}

/// A `--date` in the DAG's zone, or now.
pub fn logical_date(ctx: &Ctx, dag: &Dag, date: Option<&str>) -> Result<Timestamp> {
    match date {
        Some(text) => {
            parse_date_in_zone(text, dag.tz()).map_err(|error| user_error(format!("invalid `--date`: {error}"), None))
        }
        None => Ok(ctx.clock.now()),
    }
}

fn parse_conf(conf: Option<&str>) -> Result<serde_json::Map<String, serde_json::Value>> {
    let Some(text) = conf else { return Ok(serde_json::Map::new()) };
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(user_error(
            format!("invalid `--conf`: expected a JSON object, found {}", json_kind(&other)),
            Some(r#"pass an object, e.g. --conf '{"market": "KOSDAQ"}'"#),
        )),
        Err(error) => Err(user_error(
            format!("invalid `--conf` JSON `{text}`: {error}"),
            Some(r#"pass an object, e.g. --conf '{"market": "KOSDAQ"}'"#),
        )),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `--param key=value` pairs; values are JSON when they parse as JSON, else text.
pub fn parse_params(params: &[String]) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut map = serde_json::Map::new();
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            return Err(user_error(format!("invalid `--param {param}`: expected KEY=VALUE"), None));
        };
        if key.is_empty() {
            return Err(user_error(format!("invalid `--param {param}`: the key is empty"), None));
        }
        let value = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        map.insert(key.to_string(), value);
    }
    Ok(map)
}

async fn trigger(
    ctx: &Ctx,
    dag_id: &str,
    conf: Option<String>,
    date: Option<String>,
    run_id: Option<String>,
    wait: bool,
) -> Result<ExitCode> {
    let conf = parse_conf(conf.as_deref())?;
    let folder = ctx.load_folder()?;
    let (loaded, _) = ctx.find_dag(&folder, dag_id)?;
    let dag = loaded.dag.clone();
    let logical_date = logical_date(ctx, &dag, date.as_deref())?;
    let run_id = match run_id {
        Some(text) => RunId::new(text.clone())
            .map_err(|error| user_error(format!("invalid `--run-id` `{text}`: {error}"), None))?,
        None => RunType::Manual.run_id(logical_date),
    };
    let store = ctx.store().await?;
    ctx.record_dag(&store, loaded).await?;
    let run = NewRun {
        interval: dag.timetable().manual_interval(logical_date),
        dag: dag.clone(),
        version: loaded.version.clone(),
        run_id: run_id.clone(),
        run_type: RunType::Manual,
        logical_date,
        conf,
        owner_process: None,
        with_retries: true,
    };
    let Some(run_pk) = store.create_run(&run, "cli", ctx.clock.now()).await? else {
        return Err(user_error(
            format!("DAG `{dag_id}` already has a run `{run_id}`"),
            Some("pass another `--date` or `--run-id`"),
        ));
    };
    crate::outln!("{run_id}");
    if store.get_dag(dag_id).await?.is_some_and(|row| row.is_paused) {
        crate::errln!("warning: DAG `{dag_id}` is paused; the run waits until `updraft dags unpause {dag_id}`");
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let row = wait_for_run(ctx, &store, run_pk).await?;
    let tz = dag.tz();
    crate::errln!("run `{}` {} at {}", row.run_id, row.state, output::time(row.end_date, tz));
    Ok(if row.state == RunState::Success { ExitCode::SUCCESS } else { ExitCode::from(crate::error::exit::FAILURE) })
}

/// Waits for a run to finish, waking on store changes. Warns once if no
/// scheduler is alive to move it.
pub async fn wait_for_run(ctx: &Ctx, store: &Store, run_pk: i64) -> Result<RunRow> {
    let mut watcher = store.change_watcher().await?;
    let started = std::time::Instant::now();
    let mut warned = false;
    loop {
        let row = store.get_run_by_pk(run_pk).await?.expect("the run exists");
        if row.state.is_finished() {
            return Ok(row);
        }
        if !warned && started.elapsed() > Duration::from_secs(3) && !scheduler_alive(ctx, store).await? {
            crate::errln!(
                "warning: no scheduler is running; start `updraft standalone` (or `updraft scheduler`) to run it"
            );
            warned = true;
        }
        // Wake on a change, or look again after a while in case the watcher missed one.
        let _ = tokio::time::timeout(Duration::from_secs(1), watcher.changed()).await;
    }
}

pub async fn scheduler_alive(ctx: &Ctx, store: &Store) -> Result<bool> {
    let now = ctx.clock.now();
    let limit = ctx.config.heartbeat_interval.as_secs_f64() * 3.0 + 1.0;
    Ok(store
        .processes(Some(ProcessState::Running))
        .await?
        .iter()
        .any(|process| process.kind.schedules() && now.duration_since(process.heartbeat_at).as_secs_f64() < limit))
}

fn next_runs(ctx: &Ctx, dag_id: &str, count: usize, after: Option<String>, output: Output) -> Result<ExitCode> {
    let folder = ctx.load_folder()?;
    let (loaded, _) = ctx.find_dag(&folder, dag_id)?;
    let dag = &loaded.dag;
    let tz = dag.tz();
    let after = match after {
        Some(text) => {
            parse_date_in_zone(&text, tz).map_err(|error| user_error(format!("invalid `--after`: {error}"), None))?
        }
        None => ctx.clock.now(),
    };
    let intervals = dag.timetable().intervals_from(after, count);
    if dag.spec().schedule == updraft_core::Schedule::None {
        crate::errln!("DAG `{dag_id}` has no schedule: it runs only when triggered");
    }
    match output {
        Output::Json => {
            let items: Vec<serde_json::Value> = intervals
                .iter()
                .map(|interval| {
                    json!({
                        "data_interval_start": output::time(Some(interval.start), tz),
                        "data_interval_end": output::time(Some(interval.end), tz),
                    })
                })
                .collect();
            output::json(&serde_json::Value::Array(items));
        }
        Output::Table => {
            for interval in intervals {
                crate::outln!("{} {}", output::time(Some(interval.start), tz), output::time(Some(interval.end), tz));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The DAG's time zone for showing its runs: from the store, else from its file.
pub async fn dag_zone(ctx: &Ctx, store: &Store, dag_id: &str) -> Result<TimeZone> {
    if let Some(row) = store.get_dag(dag_id).await? {
        return Ok(TimeZone::get(&row.timezone).unwrap_or(TimeZone::UTC));
    }
    let folder = ctx.load_folder()?;
    let (loaded, _) = ctx.find_dag(&folder, dag_id)?;
    Ok(loaded.dag.tz().clone())
}

async fn list_runs(ctx: &Ctx, dag_id: &str, state: Option<String>, limit: u32, output: Output) -> Result<ExitCode> {
    let state = match state {
        Some(text) => Some(text.parse::<RunState>().map_err(|_| {
            user_error(format!("invalid `--state` `{text}`: expected queued, running, success or failed"), None)
        })?),
        None => None,
    };
    let store = ctx.store().await?;
    let tz = dag_zone(ctx, &store, dag_id).await?;
    let runs = store.list_runs(dag_id, state, limit).await?;
    match output {
        Output::Json => {
            let items: Vec<serde_json::Value> = runs
                .iter()
                .map(|run| {
                    json!({
                        "run_id": run.run_id,
                        "state": run.state.as_str(),
                        "run_type": run.run_type.as_str(),
                        "logical_date": output::time(Some(run.logical_date), &tz),
                        "data_interval_start": output::time(Some(run.interval.start), &tz),
                        "data_interval_end": output::time(Some(run.interval.end), &tz),
                        "start_date": output::time_json(run.start_date, &tz),
                        "end_date": output::time_json(run.end_date, &tz),
                        "version": run.version.0,
                    })
                })
                .collect();
            output::json(&serde_json::Value::Array(items));
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = runs
                .iter()
                .map(|run| {
                    vec![
                        run.run_id.clone(),
                        run.state.to_string(),
                        output::time(Some(run.logical_date), &tz),
                        format!(
                            "{} {}",
                            output::time(Some(run.interval.start), &tz),
                            output::time(Some(run.interval.end), &tz)
                        ),
                        output::time(run.start_date, &tz),
                        output::time(run.end_date, &tz),
                        run.version.0.clone(),
                    ]
                })
                .collect();
            output::table(
                &["run_id", "state", "logical_date", "data_interval", "start_date", "end_date", "version"],
                &rows,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_paused(ctx: &Ctx, dag_id: &str, paused: bool) -> Result<ExitCode> {
    let store = ctx.store().await?;
    if store.get_dag(dag_id).await?.is_none() {
        // Not seen by a scheduler yet: record it from its file first.
        let folder = ctx.load_folder()?;
        let (loaded, _) = ctx.find_dag(&folder, dag_id)?;
        ctx.record_dag(&store, loaded).await?;
    }
    store.set_paused(dag_id, paused, ctx.clock.now()).await?;
    crate::errln!("DAG `{dag_id}` {}", if paused { "paused" } else { "unpaused" });
    Ok(ExitCode::SUCCESS)
}

/// `3 success, 1 skipped`: how many task instances ended in each state.
pub fn state_counts(states: impl Iterator<Item = updraft_core::TaskState>) -> String {
    let mut counts: Vec<(updraft_core::TaskState, usize)> = Vec::new();
    for state in states {
        match counts.iter_mut().find(|(s, _)| *s == state) {
            Some((_, n)) => *n += 1,
            None => counts.push((state, 1)),
        }
    }
    counts.sort_by_key(|(state, _)| *state);
    counts.iter().map(|(state, n)| format!("{n} {state}")).collect::<Vec<_>>().join(", ")
}
