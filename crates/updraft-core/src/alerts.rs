//! Who hears about what: a DAG's and a task's `alerts:` (events to named
//! notifiers), and deadlines.
//!
//! A DAG's `alerts` are about its runs (a run failed, succeeded, missed the DAG's
//! deadline); a task's (or `defaults.alerts`) about that task's instances (a try
//! failed for good, will be retried, succeeded, the task missed its deadline).
//! Notifiers are named here and configured in `updraft.toml`.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// What happened, as the DAG file names it (`on_<event>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    Failure,
    Retry,
    Success,
    DeadlineMiss,
}

impl AlertEvent {
    pub const ALL: [AlertEvent; 4] =
        [AlertEvent::Failure, AlertEvent::Retry, AlertEvent::Success, AlertEvent::DeadlineMiss];

    /// The DAG file's key: `on_failure`, ...
    pub fn field(self) -> &'static str {
        match self {
            AlertEvent::Failure => "on_failure",
            AlertEvent::Retry => "on_retry",
            AlertEvent::Success => "on_success",
            AlertEvent::DeadlineMiss => "on_deadline_miss",
        }
    }

    /// The event a task instance's (`task == true`) or run's new state is, if any.
    pub fn of_state(state: &str, task: bool) -> Option<AlertEvent> {
        match state {
            "failed" => Some(AlertEvent::Failure),
            "success" => Some(AlertEvent::Success),
            "up_for_retry" if task => Some(AlertEvent::Retry),
            _ => None,
        }
    }
}

/// Notifier names per event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alerts {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_failure: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_retry: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_success: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_deadline_miss: Vec<String>,
}

impl Alerts {
    pub fn is_empty(&self) -> bool {
        AlertEvent::ALL.iter().all(|event| self.to(*event).is_empty())
    }

    /// The notifiers told of `event`.
    pub fn to(&self, event: AlertEvent) -> &[String] {
        match event {
            AlertEvent::Failure => &self.on_failure,
            AlertEvent::Retry => &self.on_retry,
            AlertEvent::Success => &self.on_success,
            AlertEvent::DeadlineMiss => &self.on_deadline_miss,
        }
    }

    pub fn to_mut(&mut self, event: AlertEvent) -> &mut Vec<String> {
        match event {
            AlertEvent::Failure => &mut self.on_failure,
            AlertEvent::Retry => &mut self.on_retry,
            AlertEvent::Success => &mut self.on_success,
            AlertEvent::DeadlineMiss => &mut self.on_deadline_miss,
        }
    }

    /// Every notifier named, once each.
    pub fn notifiers(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> =
            AlertEvent::ALL.iter().flat_map(|event| self.to(*event)).map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter()
    }
}

/// When a deadline falls: `deadline` after the end of the run's data interval
/// (Airflow's SLA: the data is due that long after its period closes).
pub fn deadline_at(interval_end: Timestamp, deadline: Duration) -> Timestamp {
    let seconds = i64::try_from(deadline.as_secs()).unwrap_or(i64::MAX);
    interval_end.checked_add(jiff::SignedDuration::from_secs(seconds)).unwrap_or(Timestamp::MAX)
}

/// Whether something due at `due` missed it: it had not succeeded by then (as
/// Airflow's SLA: a run that failed early and stays failed misses it too).
/// `succeeded_at` is when it succeeded, if it has.
pub fn missed(due: Timestamp, now: Timestamp, succeeded_at: Option<Timestamp>) -> bool {
    match succeeded_at {
        Some(at) => at > due,
        None => now > due,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_deadline_counts_from_the_end_of_the_data_interval() {
        let end = at("2026-01-02T00:00:00Z");
        assert_eq!(deadline_at(end, Duration::from_secs(7200)), at("2026-01-02T02:00:00Z"));
        assert_eq!(deadline_at(end, Duration::from_secs(u64::MAX)), Timestamp::MAX);
    }

    #[test]
    fn missed_means_not_succeeded_by_the_deadline() {
        let due = at("2026-01-02T02:00:00Z");
        assert!(!missed(due, at("2026-01-02T01:59:59Z"), None));
        assert!(missed(due, at("2026-01-02T02:00:01Z"), None));
        assert!(!missed(due, at("2026-01-02T05:00:00Z"), Some(at("2026-01-02T01:00:00Z"))));
        assert!(missed(due, at("2026-01-02T05:00:00Z"), Some(at("2026-01-02T02:30:00Z"))));
    }

    #[test]
    fn events_of_states() {
        assert_eq!(AlertEvent::of_state("failed", true), Some(AlertEvent::Failure));
        assert_eq!(AlertEvent::of_state("up_for_retry", true), Some(AlertEvent::Retry));
        assert_eq!(AlertEvent::of_state("up_for_retry", false), None);
        assert_eq!(AlertEvent::of_state("upstream_failed", true), None);
        let alerts =
            Alerts { on_failure: vec!["b".into(), "a".into()], on_retry: vec!["a".into()], ..Alerts::default() };
        assert_eq!(alerts.notifiers().collect::<Vec<_>>(), ["a", "b"]);
        assert!(!alerts.is_empty() && Alerts::default().is_empty());
    }
}
