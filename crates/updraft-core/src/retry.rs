//! What a finished attempt means for its task instance: done, or retried after a delay.

use jiff::Timestamp;

use crate::dag::Task;
use crate::duration::Duration;
use crate::state::TaskState;

/// How an attempt ended, before retries are considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Success,
    Skipped,
    Failed,
}

impl AttemptOutcome {
    /// The contract: exit 0 is success, 99 is skipped, anything else failed.
    pub fn from_exit_code(code: i32) -> AttemptOutcome {
        match code {
            0 => AttemptOutcome::Success,
            99 => AttemptOutcome::Skipped,
            _ => AttemptOutcome::Failed,
        }
    }
}

/// The delay before the retry that follows failed try `try_number` (1-based):
/// `retry_delay`, doubled per earlier retry with backoff, capped by `max_retry_delay`.
pub fn retry_delay(task: &Task, try_number: u32) -> Duration {
    let base = task.retry_delay.as_secs();
    if !task.retry_exponential_backoff {
        return task.retry_delay;
    }
    let exponent = try_number.saturating_sub(1).min(62);
    let delay = base.saturating_mul(1u64 << exponent);
    Duration::from_secs(delay.min(task.max_retry_delay.as_secs()))
}

/// The next state of a task instance whose try `try_number` ended with `outcome`,
/// and when to retry. `max_tries` counts the retries granted (Airflow's `max_tries`).
pub fn after_attempt(
    task: &Task,
    outcome: AttemptOutcome,
    try_number: u32,
    max_tries: u32,
    ended_at: Timestamp,
) -> (TaskState, Option<Timestamp>) {
    match outcome {
        AttemptOutcome::Success => (TaskState::Success, None),
        AttemptOutcome::Skipped => (TaskState::Skipped, None),
        AttemptOutcome::Failed if try_number <= max_tries => {
            let delay = retry_delay(task, try_number).to_signed();
            let retry_at = ended_at.checked_add(delay).unwrap_or(Timestamp::MAX);
            (TaskState::UpForRetry, Some(retry_at))
        }
        AttemptOutcome::Failed => (TaskState::Failed, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::tests::task;

    #[test]
    fn delays() {
        let mut t = task("a", &[]);
        t.retry_delay = Duration::from_secs(60);
        assert_eq!(retry_delay(&t, 1), Duration::from_secs(60));
        assert_eq!(retry_delay(&t, 5), Duration::from_secs(60));
        t.retry_exponential_backoff = true;
        t.max_retry_delay = Duration::from_secs(600);
        let delays: Vec<u64> = (1..=6).map(|n| retry_delay(&t, n).as_secs()).collect();
        assert_eq!(delays, vec![60, 120, 240, 480, 600, 600]);
        assert_eq!(retry_delay(&t, 200).as_secs(), 600);
    }

    #[test]
    fn outcomes() {
        let mut t = task("a", &[]);
        t.retries = 2;
        t.retry_delay = Duration::from_secs(3600);
        let now: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(after_attempt(&t, AttemptOutcome::Success, 1, 2, now), (TaskState::Success, None));
        assert_eq!(after_attempt(&t, AttemptOutcome::Skipped, 3, 2, now), (TaskState::Skipped, None));
        let retry_at: Timestamp = "2024-01-01T01:00:00Z".parse().unwrap();
        assert_eq!(after_attempt(&t, AttemptOutcome::Failed, 1, 2, now), (TaskState::UpForRetry, Some(retry_at)));
        assert_eq!(after_attempt(&t, AttemptOutcome::Failed, 2, 2, now), (TaskState::UpForRetry, Some(retry_at)));
        assert_eq!(after_attempt(&t, AttemptOutcome::Failed, 3, 2, now), (TaskState::Failed, None));
        assert_eq!(AttemptOutcome::from_exit_code(0), AttemptOutcome::Success);
        assert_eq!(AttemptOutcome::from_exit_code(99), AttemptOutcome::Skipped);
        assert_eq!(AttemptOutcome::from_exit_code(1), AttemptOutcome::Failed);
        assert_eq!(AttemptOutcome::from_exit_code(-1), AttemptOutcome::Failed);
    }
}
