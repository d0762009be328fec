//! Task-instance and run states, and the one function that decides which moves
//! between them are legal. The store writes every move as compare-and-set on the
//! state it expects, so two processes can never both make the same move.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Created with its run; waiting for its upstream tasks (Airflow's "no status").
    None,
    /// Its trigger rule is met; waiting for a slot (pool, concurrency).
    Scheduled,
    /// Holds a slot; waiting for a runner to start it.
    Queued,
    Running,
    Success,
    Failed,
    UpForRetry,
    Skipped,
    UpstreamFailed,
    Removed,
}

impl TaskState {
    pub const ALL: [TaskState; 10] = [
        TaskState::None,
        TaskState::Scheduled,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Success,
        TaskState::Failed,
        TaskState::UpForRetry,
        TaskState::Skipped,
        TaskState::UpstreamFailed,
        TaskState::Removed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::None => "none",
            TaskState::Scheduled => "scheduled",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Success => "success",
            TaskState::Failed => "failed",
            TaskState::UpForRetry => "up_for_retry",
            TaskState::Skipped => "skipped",
            TaskState::UpstreamFailed => "upstream_failed",
            TaskState::Removed => "removed",
        }
    }

    /// No further move happens without a person (clear, mark).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskState::Success
                | TaskState::Failed
                | TaskState::Skipped
                | TaskState::UpstreamFailed
                | TaskState::Removed
        )
    }

    /// Counts against pools and concurrency limits.
    pub fn holds_slot(self) -> bool {
        matches!(self, TaskState::Queued | TaskState::Running)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state `{0}`")]
pub struct UnknownState(pub String);

impl FromStr for TaskState {
    type Err = UnknownState;
    fn from_str(text: &str) -> Result<Self, UnknownState> {
        TaskState::ALL.into_iter().find(|state| state.as_str() == text).ok_or_else(|| UnknownState(text.to_string()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Running,
    Success,
    Failed,
}

impl RunState {
    pub const ALL: [RunState; 4] = [RunState::Queued, RunState::Running, RunState::Success, RunState::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Success => "success",
            RunState::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, RunState::Success | RunState::Failed)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = UnknownState;
    fn from_str(text: &str) -> Result<Self, UnknownState> {
        RunState::ALL.into_iter().find(|state| state.as_str() == text).ok_or_else(|| UnknownState(text.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal state change `{from}` -> `{to}`")]
pub struct IllegalTransition<S: fmt::Display + fmt::Debug> {
    pub from: S,
    pub to: S,
}

/// The task-instance lifecycle (drawn in ARCHITECTURE.md).
pub fn check_task_transition(from: TaskState, to: TaskState) -> Result<(), IllegalTransition<TaskState>> {
    use TaskState::*;
    let legal = match from {
        // None -> Failed: a mapped task whose items cannot be read fails unattempted.
        None => matches!(to, Scheduled | Skipped | UpstreamFailed | Removed | Failed),
        Scheduled => matches!(to, Queued | None | Removed),
        // Queued -> Scheduled gives back a slot a runner could not use.
        Queued => matches!(to, Running | Scheduled | Failed | UpForRetry | Removed),
        // Running -> Scheduled: the attempt was interrupted by a clean shutdown and
        // runs again without using up a retry.
        Running => matches!(to, Success | Failed | Skipped | UpForRetry | Scheduled),
        UpForRetry => matches!(to, Scheduled | Removed),
        Success | Failed | Skipped | UpstreamFailed | Removed => false,
    };
    if legal { Ok(()) } else { Err(IllegalTransition { from, to }) }
}

pub fn check_run_transition(from: RunState, to: RunState) -> Result<(), IllegalTransition<RunState>> {
    use RunState::*;
    let legal = matches!((from, to), (Queued, Running) | (Running, Success) | (Running, Failed) | (Queued, Failed));
    if legal { Ok(()) } else { Err(IllegalTransition { from, to }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(state));
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{state}\""));
        }
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>(), Ok(state));
        }
        assert!("bogus".parse::<TaskState>().is_err());
    }

    #[test]
    fn task_lifecycle() {
        use TaskState::*;
        // Every legal move, as a table; everything else is illegal.
        let legal: &[(TaskState, TaskState)] = &[
            (None, Scheduled),
            (None, Skipped),
            (None, UpstreamFailed),
            (None, Removed),
            (None, Failed),
            (Scheduled, Queued),
            (Scheduled, None),
            (Scheduled, Removed),
            (Queued, Running),
            (Queued, Scheduled),
            (Queued, Failed),
            (Queued, UpForRetry),
            (Queued, Removed),
            (Running, Success),
            (Running, Failed),
            (Running, Skipped),
            (Running, UpForRetry),
            (Running, Scheduled),
            (UpForRetry, Scheduled),
            (UpForRetry, Removed),
        ];
        for from in TaskState::ALL {
            for to in TaskState::ALL {
                let expected = legal.contains(&(from, to));
                assert_eq!(check_task_transition(from, to).is_ok(), expected, "{from} -> {to}");
            }
        }
        assert_eq!(
            check_task_transition(Success, Running).unwrap_err().to_string(),
            "illegal state change `success` -> `running`"
        );
    }

    #[test]
    fn run_lifecycle() {
        assert!(check_run_transition(RunState::Queued, RunState::Running).is_ok());
        assert!(check_run_transition(RunState::Running, RunState::Success).is_ok());
        assert!(check_run_transition(RunState::Success, RunState::Running).is_err());
        assert!(check_run_transition(RunState::Queued, RunState::Success).is_err());
    }
}
