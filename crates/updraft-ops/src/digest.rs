//! The digest: every `every` (10 minutes by default), one message listing what
//! was not scheduled normally in that window — runs that failed, runs late
//! against their schedule, DAG files that do not parse, tasks stuck waiting,
//! schedulers and workers that stopped heartbeating. Nothing when all is well
//! (unless `send_when_quiet`).
//!
//! Windows are aligned to the clock (10:00–10:10, ...). Any process may compose a
//! window's digest; its key (the window) makes it one message however many do.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use updraft_store::{
    DagRow, ImportError, NewAlert, OpsValue, ProcessKind, ProcessRow, ProcessState, RunRow, Store, StoreError,
    StuckTask,
};

use crate::message::{Notice, NoticeKind, Section, short_time};

/// The last window a digest was made for (its end, in microseconds).
pub const WINDOW: &str = "digest.window";
/// Stuck tasks a digest reads at most.
const STUCK_LIMIT: u32 = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestConfig {
    /// Where it goes (a notifier's name).
    pub notifier: String,
    pub every: Duration,
    /// A scheduled run starting later than this after its interval ended is late.
    pub late_after: Duration,
    /// A task ready or queued for longer than this is stuck.
    pub stuck_after: Duration,
    /// A process not heard from for this long stopped heartbeating.
    pub heartbeat_timeout: Duration,
    pub send_when_quiet: bool,
}

/// What a window held, read from the store.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub start: Timestamp,
    pub end: Timestamp,
    pub failed_runs: Vec<RunRow>,
    /// Scheduled runs started in the window or not started yet.
    pub scheduled_runs: Vec<RunRow>,
    pub dags: Vec<DagRow>,
    pub import_errors: Vec<ImportError>,
    pub stuck: Vec<StuckTask>,
    pub processes: Vec<ProcessRow>,
}

/// Makes a window's digest when its time comes.
pub struct Digest {
    store: Store,
    config: DigestConfig,
}

impl Digest {
    pub fn new(store: Store, config: DigestConfig) -> Digest {
        Digest { store, config }
    }

    /// Queues the digest of the window that just closed, if no process did yet.
    /// Returns it (`None`: not due, or nothing to say).
    pub async fn tick(&self, now: Timestamp) -> Result<Option<Notice>, StoreError> {
        let every = i64::try_from(self.config.every.as_micros()).unwrap_or(i64::MAX).max(1_000_000);
        let end_us = now.as_microsecond().div_euclid(every) * every;
        let end = Timestamp::from_microsecond(end_us).expect("a window end is a time");
        let last = self.store.ops_value(WINDOW).await?;
        let Some(last) = last else {
            // First start: the next window is the first.
            self.store.set_ops_value(WINDOW, None, &OpsValue { value: end_us, detail: None }).await?;
            return Ok(None);
        };
        if last.value >= end_us {
            return Ok(None);
        }
        // After a pause, one window back only.
        let start = Timestamp::from_microsecond(last.value.max(end_us - every)).expect("a window start is a time");
        let facts = self.facts(start, end, now).await?;
        let notice = compose(&facts, &self.config, now);
        if let Some(notice) = &notice {
            let alert = NewAlert {
                dedup_key: format!("digest:{end_us}:{}", self.config.notifier),
                notifier: self.config.notifier.clone(),
                payload: serde_json::to_string(notice).expect("a notice is JSON"),
            };
            // Queued before the window moves on: a crash in between loses nothing,
            // and the key keeps a second composer's copy out.
            self.store.enqueue_alerts(&[alert], now).await?;
        }
        self.store.set_ops_value(WINDOW, Some(last.value), &OpsValue { value: end_us, detail: None }).await?;
        Ok(notice)
    }

    async fn facts(&self, start: Timestamp, end: Timestamp, now: Timestamp) -> Result<Facts, StoreError> {
        let store = &self.store;
        let stuck_before = now - self.config.stuck_after;
        Ok(Facts {
            start,
            end,
            failed_runs: store
                .failed_runs_since(start)
                .await?
                .into_iter()
                .filter(|run| run.end_date.is_some_and(|at| at < end))
                .collect(),
            scheduled_runs: store.recent_scheduled_runs(start).await?,
            dags: store.list_dags().await?,
            import_errors: store.import_errors().await?,
            stuck: store.stuck_task_instances(stuck_before, STUCK_LIMIT).await?,
            processes: store.processes(None).await?,
        })
    }
}

/// The digest of a window, or `None` when all was well (and quiet windows are
/// not reported).
pub fn compose(facts: &Facts, config: &DigestConfig, now: Timestamp) -> Option<Notice> {
    let late_after = SignedDuration::try_from(config.late_after).unwrap_or(SignedDuration::MAX);
    let mut dags: BTreeSet<&str> = BTreeSet::new();
    let mut sections = Vec::new();

    let failed: Vec<String> = facts
        .failed_runs
        .iter()
        .map(|run| {
            dags.insert(&run.dag_id);
            let ended = run.end_date.map(short_time).unwrap_or_default();
            format!("{} — {} (ended {ended})", run.dag_id, run.run_id)
        })
        .collect();
    if !failed.is_empty() {
        sections.push(Section::new(format!("Failed runs ({})", failed.len()), failed));
    }

    let mut late = Vec::new();
    for run in &facts.scheduled_runs {
        let started = run.start_date.unwrap_or(now);
        let delay = started.duration_since(run.interval.end);
        let in_window = run.start_date.is_none_or(|at| at >= facts.start && at < facts.end);
        if delay > late_after && in_window {
            dags.insert(&run.dag_id);
            let by = human(delay);
            late.push(match run.start_date {
                Some(_) => format!("{} — {} started {by} after its interval ended", run.dag_id, run.run_id),
                None => format!("{} — {} not started, {by} after its interval ended", run.dag_id, run.run_id),
            });
        }
    }
    for dag in &facts.dags {
        if let Some(due) = dag.next_due
            && dag.is_active
            && !dag.is_paused
            && now.duration_since(due) > late_after
        {
            dags.insert(&dag.dag_id);
            late.push(format!("{} — the run due at {} was not created", dag.dag_id, short_time(due)));
        }
    }
    if !late.is_empty() {
        let title = format!("Late runs ({}, more than {} behind schedule)", late.len(), human(late_after));
        sections.push(Section::new(title, late));
    }

    let broken: Vec<String> = facts
        .import_errors
        .iter()
        .map(|error| format!("{}: {}", error.fileloc, error.message.lines().next().unwrap_or_default()))
        .collect();
    if !broken.is_empty() {
        sections.push(Section::new(format!("DAG files that do not parse ({})", broken.len()), broken));
    }

    let stuck: Vec<String> = facts
        .stuck
        .iter()
        .map(|task| {
            dags.insert(&task.dag_id);
            let label = updraft_core::mapping::instance_label(&task.task_id, task.map_index);
            let state = task.state.as_str();
            format!("{} — {} {label} {state} for {}", task.dag_id, task.run_id, human(now.duration_since(task.since)))
        })
        .collect();
    if !stuck.is_empty() {
        let title = format!("Tasks stuck waiting ({}, longer than {})", stuck.len(), human_std(config.stuck_after));
        sections.push(Section::new(title, stuck));
    }

    let timeout = SignedDuration::try_from(config.heartbeat_timeout).unwrap_or(SignedDuration::MAX);
    let silent: Vec<String> = facts
        .processes
        .iter()
        .filter(|process| process.kind != ProcessKind::Cli)
        .filter_map(|process| {
            let quiet_for = now.duration_since(process.heartbeat_at);
            let what = match process.state {
                ProcessState::Running if quiet_for > timeout => "has not heartbeaten since",
                // Declared dead in this window (its last heartbeat at most a timeout before).
                ProcessState::Dead
                    if process.heartbeat_at >= facts.start - timeout && process.heartbeat_at < facts.end =>
                {
                    "was found dead; last heartbeat"
                }
                _ => return None,
            };
            Some(format!(
                "{} on {} (pid {}) {what} {}",
                process.kind.as_str(),
                process.hostname,
                process.pid,
                short_time(process.heartbeat_at)
            ))
        })
        .collect();
    if !silent.is_empty() {
        sections.push(Section::new(format!("Schedulers and workers that stopped ({})", silent.len()), silent));
    }

    if sections.is_empty() && !config.send_when_quiet {
        return None;
    }
    let window = format!("{}–{}", short_time(facts.start).trim_end_matches(" UTC"), facts.end.strftime("%H:%M UTC"));
    let title = if sections.is_empty() {
        format!("Updraft digest {window}: all DAGs scheduled normally")
    } else {
        let files = facts.import_errors.len();
        let mut parts = Vec::new();
        if !dags.is_empty() {
            parts.push(format!("{} DAG{} not scheduled normally", dags.len(), plural(dags.len())));
        }
        if files > 0 {
            parts.push(format!("{files} broken file{}", plural(files)));
        }
        if parts.is_empty() {
            parts.push("schedulers or workers stopped".to_string());
        }
        format!("Updraft digest {window}: {}", parts.join(", "))
    };
    let mut notice = Notice::new(NoticeKind::Digest, title, now);
    notice.sections = sections;
    Some(notice)
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// `45m`, `2h 5m`, `30s`.
pub fn human(duration: SignedDuration) -> String {
    let secs = duration.as_secs().max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m", secs / 60),
        _ if secs % 3_600 < 60 => format!("{}h", secs / 3_600),
        _ => format!("{}h {}m", secs / 3_600, secs % 3_600 / 60),
    }
}

fn human_std(duration: Duration) -> String {
    human(SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX))
}
