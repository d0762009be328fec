//! `updraft dags backfill`: create the runs of past intervals and follow them.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use updraft_core::plan::RunType;
use updraft_core::timetable::parse_date_in_zone;
use updraft_core::{RunState, Schedule};
use updraft_store::NewRun;

use super::dags::scheduler_alive;
use crate::context::Ctx;
use crate::error::user_error;
use crate::output;

/// More than this many runs is almost surely a mistaken date range.
const MAX_RUNS: usize = 10_000;

pub async fn run(ctx: &Ctx, dag_id: &str, start: &str, end: &str, no_wait: bool) -> Result<ExitCode> {
    let folder = ctx.load_folder()?;
    let (loaded, _) = ctx.find_dag(&folder, dag_id)?;
    let dag = loaded.dag.clone();
    let tz = dag.tz();
    if matches!(dag.spec().schedule, Schedule::None) {
        return Err(user_error(
            format!("DAG `{dag_id}` has no schedule, so it has no intervals to backfill"),
            Some("use `updraft dags trigger --date ...` for one-off runs"),
        ));
    }
    let parse = |flag: &str, text: &str| {
        parse_date_in_zone(text, tz).map_err(|error| user_error(format!("invalid `--{flag}`: {error}"), None))
    };
    let (start, end) = (parse("start", start)?, parse("end", end)?);
    if end < start {
        return Err(user_error("`--end` is before `--start`", None));
    }
    let mut intervals = Vec::new();
    for interval in dag.timetable().intervals_from(start, MAX_RUNS + 1) {
        if interval.start > end {
            break;
        }
        intervals.push(interval);
    }
    if intervals.len() > MAX_RUNS {
        return Err(user_error(
            format!("the range holds more than {MAX_RUNS} intervals"),
            Some("backfill a shorter range at a time"),
        ));
    }
    if intervals.is_empty() {
        crate::errln!("no interval of `{dag_id}` starts between those dates");
        return Ok(ExitCode::SUCCESS);
    }
    let store = ctx.store().await?;
    ctx.record_dag(&store, loaded).await?;
    let mut created = Vec::new();
    let mut existing = 0;
    for interval in &intervals {
        let run_id = RunType::Backfill.run_id(interval.start);
        let run = NewRun {
            dag: dag.clone(),
            version: loaded.version.clone(),
            run_id: run_id.clone(),
            run_type: RunType::Backfill,
            logical_date: interval.start,
            interval: *interval,
            conf: serde_json::Map::new(),
            owner_process: None,
            with_retries: true,
        };
        match store.create_run(&run, "cli", ctx.clock.now()).await? {
            Some(run_pk) => {
                crate::outln!("{run_id}");
                created.push(run_pk);
            }
            None => existing += 1,
        }
    }
    crate::errln!(
        "created {} run(s) of `{dag_id}` from {} to {}{}",
        created.len(),
        output::time(Some(intervals[0].start), tz),
        output::time(Some(intervals[intervals.len() - 1].start), tz),
        if existing > 0 { format!("; {existing} interval(s) already had a run") } else { String::new() }
    );
    if no_wait || created.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    if !scheduler_alive(ctx, &store).await? {
        crate::errln!(
            "no scheduler is running, so the runs wait; start `updraft standalone` (or `updraft scheduler`) to run them"
        );
        return Ok(ExitCode::SUCCESS);
    }
    follow(&store, &created).await
}

/// Shows progress until every created run finished: a bar on a terminal, a line per
/// finished run otherwise.
async fn follow(store: &updraft_store::Store, runs: &[i64]) -> Result<ExitCode> {
    let bar = output::stderr_is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(runs.len() as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} runs  {msg}  [{elapsed_precise}]")
        {
            bar.set_style(style);
        }
        bar
    });
    let mut watcher = store.change_watcher().await?;
    let mut pending: Vec<i64> = runs.to_vec();
    let mut failed = 0;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for run_pk in pending {
            let row = store.get_run_by_pk(run_pk).await?.expect("created runs exist");
            if row.state.is_finished() {
                if row.state != RunState::Success {
                    failed += 1;
                }
                match &bar {
                    Some(bar) => {
                        bar.inc(1);
                        bar.set_message(format!("{failed} failed"));
                    }
                    None => crate::errln!("run `{}` {}", row.run_id, row.state),
                }
            } else {
                still.push(run_pk);
            }
        }
        pending = still;
        if !pending.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), watcher.changed()).await;
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    crate::errln!("backfill done: {} succeeded, {failed} failed", runs.len() - failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(crate::error::exit::FAILURE) })
}
