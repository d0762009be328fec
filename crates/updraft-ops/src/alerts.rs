//! Alerts: state changes become queued messages, and queued messages are sent.
//!
//! The producer reads the transition log after a cursor kept in the store and
//! queues a message per notifier the DAG's or task's `alerts` name; a message's
//! key is its event and notifier, so two schedulers (or a restart) queue it once.
//! PostgreSQL may commit a lower id after a higher one, so the cursor stops before
//! a gap until the gap is old enough to be a rolled-back transaction.
//!
//! The sender claims due messages, sends each (notifiers in parallel), and records
//! the outcome: sent, or tried again later with a growing delay, or given up
//! after [`MAX_ATTEMPTS`]. Over a notifier's per-minute limit, the rest go as one
//! summary. Nothing here runs inside a scheduling pass: a slow or failing
//! notifier delays only other messages.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use updraft_core::alerts::AlertEvent;
use updraft_core::mapping::instance_label;
use updraft_core::{Dag, links};
use updraft_store::{AlertOutcome, AlertRow, AlertTransition, DefinitionCache, NewAlert, OpsValue, Store, StoreError};

use crate::message::{Notice, NoticeKind, Section};
use crate::notifier::Notifiers;

/// The transition the producer read up to.
pub const CURSOR: &str = "alerts.cursor";
/// Transitions one read takes.
const BATCH: u32 = 1_000;
/// Reads per round: a busy store's backlog is caught up over a few rounds.
const MAX_BATCHES: usize = 20;
/// How long a gap in transition ids may be a transaction still committing.
const GAP_WAIT: Duration = Duration::from_secs(5);
/// Events older than this when first read are not announced (a store that had
/// no alerting for a while does not flood its channels with history).
pub const MAX_AGE: SignedDuration = SignedDuration::from_hours(1);
/// Sending tries per message before giving up.
pub const MAX_ATTEMPTS: u32 = 10;
/// How long a claim on a message holds before another process may send it.
const LEASE: SignedDuration = SignedDuration::from_secs(60);
/// Lines of the log an alert quotes.
const TAIL_LINES: usize = 20;

/// Turns state changes into queued messages.
pub struct Producer {
    store: Store,
    definitions: Arc<DefinitionCache>,
    notifiers: Arc<Notifiers>,
    ui_url: String,
    gaps: Gaps,
}

/// Gaps in transition ids, by their first missing id, with when each was first
/// seen: a young gap may be a transaction still committing.
#[derive(Debug, Default)]
pub struct Gaps(HashMap<i64, Instant>);

impl Gaps {
    /// The highest id up to which every id was read or is an old gap.
    pub fn safe_cursor(&mut self, cursor: i64, ids: &[i64], now: Instant) -> i64 {
        let mut safe = cursor;
        for &id in ids {
            if id > safe + 1 {
                let first_seen = *self.0.entry(safe + 1).or_insert(now);
                if now.duration_since(first_seen) < GAP_WAIT {
                    break;
                }
            }
            safe = id;
        }
        self.0.retain(|start, _| *start > safe);
        safe
    }
}

impl Producer {
    pub fn new(store: Store, definitions: Arc<DefinitionCache>, notifiers: Arc<Notifiers>, ui_url: &str) -> Producer {
        let ui_url = ui_url.trim_end_matches('/').to_string();
        Producer { store, definitions, notifiers, ui_url, gaps: Gaps::default() }
    }

    /// Reads what happened since the last call (in batches, up to
    /// [`MAX_BATCHES`] per call); returns the messages queued.
    pub async fn produce(&mut self, now: Timestamp) -> Result<usize, StoreError> {
        let mut queued = 0;
        for _ in 0..MAX_BATCHES {
            let (more, count) = self.produce_batch(now).await?;
            queued += count;
            if !more {
                break;
            }
        }
        Ok(queued)
    }

    /// One batch; says whether a full batch was read and the cursor moved (more
    /// may be waiting).
    async fn produce_batch(&mut self, now: Timestamp) -> Result<(bool, usize), StoreError> {
        let Some(cursor) = self.store.ops_value(CURSOR).await? else {
            // First start: history is not news.
            let last = self.store.last_transition_id().await?;
            self.store.set_ops_value(CURSOR, None, &OpsValue { value: last, detail: None }).await?;
            return Ok((false, 0));
        };
        let cursor = cursor.value;
        if self.notifiers.is_empty() {
            // Nobody to tell: keep up, so configuring one later does not replay history.
            let last = self.store.last_transition_id().await?;
            if last != cursor {
                self.store.set_ops_value(CURSOR, Some(cursor), &OpsValue { value: last, detail: None }).await?;
            }
            return Ok((false, 0));
        }
        let read = self.store.alert_transitions(cursor, BATCH).await?;
        if read.ids.is_empty() {
            // SQLite reuses ids once every row above them is gone (a clean-up
            // emptied the log): start again from the first.
            let last = self.store.last_transition_id().await?;
            if last < cursor {
                self.store.set_ops_value(CURSOR, Some(cursor), &OpsValue { value: 0, detail: None }).await?;
            }
            return Ok((false, 0));
        }
        let safe = self.gaps.safe_cursor(cursor, &read.ids, Instant::now());
        let mut alerts = Vec::new();
        for event in read.events.iter().filter(|event| event.id <= safe) {
            if event.actor.starts_with("api:") || now.duration_since(event.at) > MAX_AGE {
                // People marking states know; stale events are not news.
                continue;
            }
            match self.alerts_for(event).await {
                Ok(found) => alerts.extend(found),
                Err(error) => tracing::warn!(
                    dag_id = %event.dag_id, error = %updraft_core::errors::chain(&error),
                    "cannot read what an alert is about; skipping it"
                ),
            }
        }
        let queued = if alerts.is_empty() {
            0
        } else {
            self.store.enqueue_alerts(&alerts, now).await?.into_iter().filter(|new| *new).count()
        };
        if safe > cursor {
            // Another process may have moved it; then it read the same.
            self.store.set_ops_value(CURSOR, Some(cursor), &OpsValue { value: safe, detail: None }).await?;
        }
        Ok((read.ids.len() == BATCH as usize && safe > cursor, queued))
    }

    async fn alerts_for(&self, event: &AlertTransition) -> Result<Vec<NewAlert>, StoreError> {
        let task = event.task_id.is_some();
        let Some(kind) = AlertEvent::of_state(&event.to_state, task) else { return Ok(Vec::new()) };
        let dag = self.definitions.get(self.store.as_ref(), &event.dag_id, &event.version).await?;
        let notifiers = match &event.task_id {
            Some(task_id) => dag.task(task_id).map(|task| task.alerts.to(kind).to_vec()).unwrap_or_default(),
            None => dag.spec().alerts.to(kind).to_vec(),
        };
        if notifiers.is_empty() {
            return Ok(Vec::new());
        }
        let notice = match &event.task_id {
            Some(task_id) => self.task_notice(event, task_id, kind, &dag).await?,
            None => self.run_notice(event, kind).await?,
        };
        let payload = serde_json::to_string(&notice).expect("a notice is JSON");
        Ok(notifiers
            .into_iter()
            .map(|notifier| NewAlert {
                dedup_key: format!("t:{}:{}:{notifier}", event.id, event.at.as_microsecond()),
                notifier,
                payload: payload.clone(),
            })
            .collect())
    }

    async fn task_notice(
        &self,
        event: &AlertTransition,
        task_id: &str,
        kind: AlertEvent,
        dag: &Dag,
    ) -> Result<Notice, StoreError> {
        let (notice_kind, verb) = match kind {
            AlertEvent::Failure => (NoticeKind::TaskFailed, "failed"),
            AlertEvent::Retry => (NoticeKind::TaskRetry, "failed; will retry"),
            _ => (NoticeKind::TaskSucceeded, "succeeded"),
        };
        let label = instance_label(task_id, event.map_index);
        let mut notice = Notice::new(notice_kind, format!("{}.{label} {verb}", event.dag_id), event.at);
        notice.dag_id = Some(event.dag_id.clone());
        notice.run_id = Some(event.run_id.clone());
        notice.task_id = Some(task_id.to_string());
        notice.map_index = (event.map_index >= 0).then_some(event.map_index);
        notice.try_number = event.try_number;
        notice.max_tries = dag.task(task_id).map(|task| task.retries + 1);
        notice.reason = event.detail.clone();
        match (event.ti_pk, event.try_number) {
            (Some(ti_pk), Some(try_number)) => {
                notice.url = Some(format!(
                    "{}{}",
                    self.ui_url,
                    links::attempt_url(&event.dag_id, &event.run_id, task_id, event.map_index, try_number)
                ));
                if kind != AlertEvent::Success {
                    notice.log_tail = log_tail(&self.store, ti_pk, try_number, TAIL_LINES).await;
                }
            }
            _ => {
                let url = links::instance_url(&event.dag_id, &event.run_id, task_id, event.map_index);
                notice.url = Some(format!("{}{url}", self.ui_url));
            }
        }
        Ok(notice)
    }

    async fn run_notice(&self, event: &AlertTransition, kind: AlertEvent) -> Result<Notice, StoreError> {
        let failed = kind == AlertEvent::Failure;
        let (notice_kind, verb) =
            if failed { (NoticeKind::RunFailed, "failed") } else { (NoticeKind::RunSucceeded, "succeeded") };
        let mut notice = Notice::new(notice_kind, format!("{} run {verb}", event.dag_id), event.at);
        notice.dag_id = Some(event.dag_id.clone());
        notice.run_id = Some(event.run_id.clone());
        notice.url = Some(format!("{}{}", self.ui_url, links::run_url(&event.dag_id, &event.run_id)));
        notice.reason = event.detail.clone();
        if failed {
            // Which tasks failed, and the log of the first.
            let instances = self.store.task_instances(event.run_pk).await?;
            let failed: Vec<_> = instances.iter().filter(|ti| ti.state == updraft_core::TaskState::Failed).collect();
            if let Some(first) = failed.first() {
                notice.task_id = Some(first.task_id.clone());
                notice.map_index = (first.map_index >= 0).then_some(first.map_index);
                notice.try_number = Some(first.try_number);
                notice.url = Some(format!(
                    "{}{}",
                    self.ui_url,
                    links::attempt_url(&event.dag_id, &event.run_id, &first.task_id, first.map_index, first.try_number)
                ));
                notice.log_tail = log_tail(&self.store, first.ti_pk, first.try_number, TAIL_LINES).await;
                let names: Vec<String> = failed.iter().map(|ti| ti.label()).collect();
                notice.sections.push(Section::new(format!("Failed tasks ({})", names.len()), names));
            }
        }
        Ok(notice)
    }
}

/// The last lines of an attempt's log: from the store (remote workers ship
/// theirs) or the file on this machine; `None` if neither has it.
async fn log_tail(store: &Store, ti_pk: i64, try_number: u32, lines: usize) -> Option<String> {
    const READ: u64 = 16 * 1024;
    let attempts = store.task_attempts(ti_pk).await.ok()?;
    let attempt = attempts.into_iter().find(|attempt| attempt.try_number == try_number)?;
    let local = match attempt.log_path.as_deref() {
        Some(path) => read_end(path, READ).await,
        None => None,
    };
    let data = match local {
        Some(data) => data,
        None => {
            let data = store.read_log(ti_pk, try_number, 0).await.ok()??;
            data[data.len().saturating_sub(READ as usize)..].to_vec()
        }
    };
    let text = String::from_utf8_lossy(&data);
    let kept: Vec<&str> = text.trim_end().lines().rev().take(lines).collect();
    let tail: Vec<&str> = kept.into_iter().rev().collect();
    (!tail.is_empty()).then(|| crate::message::last_chars(&tail.join("\n"), 2_800))
}

/// The last `limit` bytes of a file on this machine.
async fn read_end(path: &str, limit: u64) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await.ok()?;
    let size = file.metadata().await.ok()?.len();
    file.seek(std::io::SeekFrom::Start(size.saturating_sub(limit))).await.ok()?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).await.ok()?;
    Some(data)
}

/// Sends queued messages.
pub struct Sender {
    store: Store,
    notifiers: Arc<Notifiers>,
}

/// What one round of sending did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub sent: usize,
    pub folded: usize,
    pub failed: usize,
}

impl Sender {
    pub fn new(store: Store, notifiers: Arc<Notifiers>) -> Sender {
        Sender { store, notifiers }
    }

    pub async fn send_due(&self, now: Timestamp) -> Result<Sent, StoreError> {
        let rows = self.store.claim_alerts(now, now + LEASE, 200).await?;
        if rows.is_empty() {
            return Ok(Sent::default());
        }
        let mut by_notifier: BTreeMap<String, Vec<AlertRow>> = BTreeMap::new();
        for row in rows {
            by_notifier.entry(row.notifier.clone()).or_default().push(row);
        }
        let rounds = by_notifier.into_iter().map(|(name, rows)| self.send_to(name, rows, now));
        let mut outcomes = Vec::new();
        for done in futures_util::future::join_all(rounds).await {
            outcomes.extend(done?);
        }
        let mut sent = Sent::default();
        for (_, outcome) in &outcomes {
            match outcome {
                AlertOutcome::Sent => sent.sent += 1,
                AlertOutcome::Folded => sent.folded += 1,
                AlertOutcome::Later { .. } => {}
                _ => sent.failed += 1,
            }
        }
        self.store.settle_alerts(&outcomes, now).await?;
        Ok(sent)
    }

    /// Sends one notifier's messages in order, within its rate limit; the first
    /// failure stops the round (the rest would likely fail alike).
    async fn send_to(
        &self,
        name: String,
        rows: Vec<AlertRow>,
        now: Timestamp,
    ) -> Result<Vec<(i64, AlertOutcome)>, StoreError> {
        let Some(config) = self.notifiers.get(&name) else {
            let error = format!("notifier `{name}` is not configured in updraft.toml");
            tracing::error!(notifier = %name, "{error}; dropping its alerts");
            return Ok(rows.iter().map(|row| (row.id, AlertOutcome::GaveUp { error: error.clone() })).collect());
        };
        let limit = u64::from(config.max_per_minute());
        let used = self.store.alerts_sent_since(&name, now - SignedDuration::from_mins(1)).await?;
        let budget = limit.saturating_sub(used) as usize;
        let mut outcomes = Vec::with_capacity(rows.len());
        if budget == 0 {
            // Wait for the window to move; the rest go then (as a summary if many).
            let at = now + SignedDuration::from_secs(10);
            return Ok(rows.iter().map(|row| (row.id, AlertOutcome::Later { at })).collect());
        }
        let alone = if rows.len() <= budget { rows.len() } else { budget - 1 };
        let (single, folded) = rows.split_at(alone);
        let mut failure: Option<String> = None;
        for row in single {
            if let Some(error) = &failure {
                outcomes.push((row.id, retry(row, now, error)));
                continue;
            }
            let notice = match serde_json::from_str::<Notice>(&row.payload) {
                Ok(notice) => notice,
                Err(error) => {
                    outcomes.push((row.id, AlertOutcome::GaveUp { error: format!("unreadable message: {error}") }));
                    continue;
                }
            };
            match self.notifiers.send(&name, &notice).await {
                Ok(()) => {
                    updraft_metrics::incr(&updraft_metrics::catalog::ALERTS_SENT, &[&name]);
                    outcomes.push((row.id, AlertOutcome::Sent));
                }
                Err(error) => {
                    let error = error.to_string();
                    updraft_metrics::incr(&updraft_metrics::catalog::ALERTS_FAILED, &[&name]);
                    outcomes.push((row.id, retry(row, now, &error)));
                    failure = Some(error);
                }
            }
        }
        if !folded.is_empty() {
            let summary = summary(folded, now);
            let result = match &failure {
                Some(error) => Err(error.clone()),
                None => self.notifiers.send(&name, &summary).await.map_err(|error| error.to_string()),
            };
            match result {
                Ok(()) => {
                    updraft_metrics::incr(&updraft_metrics::catalog::ALERTS_SENT, &[&name]);
                    // The summary itself counts against the limit as one message.
                    if let Some(first) = folded.first() {
                        outcomes.push((first.id, AlertOutcome::Sent));
                    }
                    outcomes.extend(folded.iter().skip(1).map(|row| (row.id, AlertOutcome::Folded)));
                }
                Err(error) => {
                    if failure.is_none() {
                        updraft_metrics::incr(&updraft_metrics::catalog::ALERTS_FAILED, &[&name]);
                    }
                    outcomes.extend(folded.iter().map(|row| (row.id, retry(row, now, &error))));
                }
            }
        }
        Ok(outcomes)
    }
}

/// Try again later (5 s, doubling, at most 10 minutes apart), or give up.
fn retry(row: &AlertRow, now: Timestamp, error: &str) -> AlertOutcome {
    let attempts = row.attempts + 1;
    if attempts >= MAX_ATTEMPTS {
        tracing::error!(notifier = %row.notifier, attempts, error, "giving up on an alert");
        return AlertOutcome::GaveUp { error: error.to_string() };
    }
    tracing::warn!(notifier = %row.notifier, attempts, error, "cannot send an alert; will try again");
    let delay = (5_i64 << (attempts - 1).min(10)).min(600);
    AlertOutcome::Retry { at: now + SignedDuration::from_secs(delay), error: error.to_string() }
}

/// One message for the alerts over the limit: each one's title.
fn summary(rows: &[AlertRow], now: Timestamp) -> Notice {
    let titles: Vec<String> = rows
        .iter()
        .map(|row| match serde_json::from_str::<Notice>(&row.payload) {
            Ok(notice) => notice.title,
            Err(_) => "(an unreadable alert)".to_string(),
        })
        .collect();
    let mut notice =
        Notice::new(NoticeKind::Summary, format!("{} more alerts in the last minute (rate limit)", rows.len()), now);
    notice.sections.push(Section::new("Alerts", titles));
    notice
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_waits_at_a_young_gap_and_passes_an_old_one() {
        let mut gaps = Gaps::default();
        let start = Instant::now();
        assert_eq!(gaps.safe_cursor(10, &[11, 12, 13], start), 13);
        // 14 is missing: maybe a transaction still committing.
        assert_eq!(gaps.safe_cursor(13, &[15, 16], start), 13);
        assert_eq!(gaps.safe_cursor(13, &[15, 16], start + Duration::from_secs(2)), 13);
        // It committed: read in order.
        assert_eq!(gaps.safe_cursor(13, &[14, 15, 16], start + Duration::from_secs(3)), 16);
        assert!(gaps.0.is_empty());
        // A gap that never fills (a rolled-back transaction) is passed after a while.
        assert_eq!(gaps.safe_cursor(16, &[18], start + Duration::from_secs(4)), 16);
        assert_eq!(gaps.safe_cursor(16, &[18], start + Duration::from_secs(10)), 18);
    }
}
