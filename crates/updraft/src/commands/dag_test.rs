//! `updraft dags test`: one whole run now, in this process, with every state change
//! and log line printed as it happens.
//!
//! The run goes through the same scheduler, runner and store as any other (its
//! run type is `test`, so other schedulers leave it alone); only pools, pauses and,
//! unless asked, retries do not apply.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use tokio::sync::{Notify, mpsc};
use updraft_core::plan::RunType;
use updraft_core::{RunId, RunState, TaskState};
use updraft_runner::{AttemptLabel, AttemptObserver, AttemptResult};
use updraft_store::{NewRun, ProcessKind, Scope, Store};

use super::dags::{logical_date, parse_params, state_counts};
use crate::context::Ctx;
use crate::engine::{Engine, EngineOptions, Parts, Work};

pub async fn run(ctx: &Ctx, dag_id: &str, date: Option<String>, params: &[String], retries: bool) -> Result<ExitCode> {
    let started = Instant::now();
    let conf = parse_params(params)?;
    let folder = ctx.load_folder()?;
    let (loaded, _) = ctx.find_dag(&folder, dag_id)?;
    let dag = loaded.dag.clone();
    let logical_date = logical_date(ctx, &dag, date.as_deref())?;
    let store = ctx.store().await?;
    ctx.record_dag(&store, loaded).await?;
    let process_id = Engine::register(ctx, &store, ProcessKind::Cli).await?;

    let base_id = RunType::Test.run_id(logical_date);
    let mut run_pk = None;
    let mut run_id = base_id.clone();
    // A second test of the same date gets its own run.
    for attempt in 1..=1000 {
        if attempt > 1 {
            run_id = RunId::new(format!("{base_id}.{attempt}")).expect("a suffixed run id is valid");
        }
        let run = NewRun {
            interval: dag.timetable().manual_interval(logical_date),
            dag: dag.clone(),
            version: loaded.version.clone(),
            run_id: run_id.clone(),
            run_type: RunType::Test,
            logical_date,
            conf: conf.clone(),
            owner_process: Some(process_id),
            with_retries: retries,
        };
        run_pk = store.create_run(&run, "cli", ctx.clock.now()).await?;
        if run_pk.is_some() {
            break;
        }
    }
    let run_pk = run_pk.ok_or_else(|| anyhow::anyhow!("cannot find a free run id for `{base_id}`"))?;

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let ticked = Arc::new(Notify::new());
    let options = EngineOptions {
        parts: Parts { scheduler: true, runner: true },
        scope: Scope::Run(run_pk),
        observer: Arc::new(Events(events_tx)),
        test_mode: true,
        ticked: Some(ticked.clone()),
    };
    let engine = Engine::start(ctx, Work::Store(store.clone()), process_id, options).await?;
    let outcome = tokio::select! {
        outcome = print_until_done(&store, run_pk, events_rx, ticked) => outcome,
        () = crate::engine::termination() => {
            crate::errln!("interrupted");
            Err(anyhow::anyhow!("interrupted"))
        }
    };
    engine.shutdown().await;
    let state = outcome?;
    let tis = store.task_instances(run_pk).await?;
    crate::outln!(
        "run `{run_id}` of `{dag_id}`: {state} ({}) in {:.2}s",
        state_counts(tis.iter().map(|ti| ti.state)),
        started.elapsed().as_secs_f64()
    );
    Ok(if state == RunState::Success { ExitCode::SUCCESS } else { ExitCode::from(crate::error::exit::FAILURE) })
}

enum Event {
    Started(AttemptLabel),
    Line(AttemptLabel, String),
    Ended(AttemptLabel, String),
    Recorded(AttemptLabel, String),
}

struct Events(mpsc::UnboundedSender<Event>);

impl AttemptObserver for Events {
    fn started(&self, attempt: &AttemptLabel) {
        let _ = self.0.send(Event::Started(attempt.clone()));
    }
    fn line(&self, attempt: &AttemptLabel, line: &str) {
        let _ = self.0.send(Event::Line(attempt.clone(), line.to_string()));
    }
    fn ended(&self, attempt: &AttemptLabel, result: &AttemptResult) {
        let text = format!("{} after {:.2}s", result.describe(), result.duration.as_secs_f64());
        let _ = self.0.send(Event::Ended(attempt.clone(), text));
    }
    fn recorded(&self, attempt: &AttemptLabel, state: TaskState, detail: Option<&str>) {
        let text = match detail {
            Some(detail) => format!("{state} ({detail})"),
            None => state.to_string(),
        };
        let _ = self.0.send(Event::Recorded(attempt.clone(), text));
    }
}

/// The only writer to stdout. The runner's events (start, output, end, recorded
/// outcome) arrive in order per attempt; the scheduler's decisions (scheduled,
/// queued, skipped, upstream_failed) come from the transition log, read before each
/// attempt starts so `queued` prints before `running`.
async fn print_until_done(
    store: &Store,
    run_pk: i64,
    mut events: mpsc::UnboundedReceiver<Event>,
    ticked: Arc<Notify>,
) -> Result<RunState> {
    let mut printer = Printer { store, run_pk, names: Default::default(), last_id: 0, finished: None };
    printer.read_names().await?;
    loop {
        if let Some(state) = printer.finished {
            return Ok(state);
        }
        // Attempt events first: an attempt's last line is sent before its end is
        // recorded, so it must print before the state change that follows it.
        tokio::select! {
            biased;
            event = events.recv() => {
                let Some(event) = event else { continue };
                match event {
                    Event::Started(label) => {
                        // Only what led up to this start: a printer that fell behind
                        // must not print the next task's `scheduled` before this one ran.
                        printer.drain_through(Some(&label.name())).await?;
                        print(&label.name(), &format!("running (try {})", label.try_number));
                    }
                    Event::Line(label, line) | Event::Ended(label, line) | Event::Recorded(label, line) => {
                        print(&label.name(), &line);
                    }
                }
            }
            () = ticked.notified() => printer.drain_through(None).await?,
        }
    }
}

struct Printer<'a> {
    store: &'a Store,
    run_pk: i64,
    names: std::collections::HashMap<i64, String>,
    last_id: i64,
    finished: Option<RunState>,
}

impl Printer<'_> {
    /// Task instances by primary key, as printed (`task` or `task[3]`); read again
    /// when a mapped task's new instances appear.
    async fn read_names(&mut self) -> Result<()> {
        let tis = self.store.task_instances(self.run_pk).await?;
        self.names = tis.into_iter().map(|ti| (ti.ti_pk, ti.label())).collect();
        Ok(())
    }

    /// Prints new transitions: all, or up to the last one of `task_id`.
    async fn drain_through(&mut self, task_id: Option<&str>) -> Result<()> {
        let transitions = self.store.transitions(self.run_pk, None, self.last_id).await?;
        if transitions.iter().any(|transition| transition.ti_pk.is_some_and(|ti_pk| !self.names.contains_key(&ti_pk))) {
            self.read_names().await?;
        }
        let upto = match task_id {
            None => transitions.len(),
            Some(task_id) => transitions
                .iter()
                .rposition(|transition| {
                    transition.ti_pk.and_then(|ti_pk| self.names.get(&ti_pk)).is_some_and(|name| name == task_id)
                })
                .map_or(0, |last| last + 1),
        };
        for transition in transitions.into_iter().take(upto) {
            self.last_id = transition.id;
            let Some(ti_pk) = transition.ti_pk else {
                if let Ok(state) = transition.to_state.parse::<RunState>()
                    && state.is_finished()
                {
                    self.finished = Some(state);
                }
                continue;
            };
            // The runner's own changes print from its events, in order with its output.
            if transition.actor.starts_with("runner:") {
                continue;
            }
            let task_id = self.names.get(&ti_pk).map_or("?", String::as_str);
            let mut text = transition.to_state.clone();
            if let Some(detail) = &transition.detail {
                text.push_str(&format!(" ({detail})"));
            }
            print(task_id, &text);
        }
        Ok(())
    }
}

fn print(task_id: &str, text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{task_id} | {text}");
}
