//! Why a task instance is not running yet, as the scheduler decided it. Recorded on
//! the task instance so `tasks explain` can answer from decisions, not guesses.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::trigger_rule::TriggerRule;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaitReason {
    /// The trigger rule is not met yet; which upstream tasks hold it is read live.
    Upstream {
        rule: TriggerRule,
    },
    /// The run waits for an earlier run of the DAG to finish.
    MaxActiveRuns {
        limit: u32,
    },
    DagPaused,
    /// Every slot of the pool is taken by queued or running tasks.
    PoolFull {
        pool: String,
        slots: u32,
    },
    PoolMissing {
        pool: String,
    },
    /// The run already has this many tasks queued or running.
    MaxActiveTasks {
        limit: u32,
    },
    /// Every runner slot is taken.
    Parallelism {
        limit: u32,
    },
    /// Waiting out `retry_delay` before try `next_try`.
    RetryWait {
        until: Timestamp,
        next_try: u32,
    },
    /// A mapped task's items could not be read (it failed without an attempt).
    Unexpandable {
        error: String,
    },
}

impl WaitReason {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a wait reason always serialises")
    }

    pub fn from_json(text: &str) -> Option<WaitReason> {
        serde_json::from_str(text).ok()
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::Upstream { rule } => {
                write!(f, "waiting for upstream tasks (trigger rule `{rule}`)")
            }
            WaitReason::MaxActiveRuns { limit } => {
                write!(f, "the run is queued: the DAG already has {limit} active run(s) (`max_active_runs: {limit}`)")
            }
            WaitReason::DagPaused => f.write_str("the DAG is paused; unpause it to continue"),
            WaitReason::PoolFull { pool, slots } => {
                write!(f, "pool `{pool}` is full: all {slots} slot(s) are taken by queued or running tasks")
            }
            WaitReason::PoolMissing { pool } => {
                write!(f, "pool `{pool}` does not exist; create it with `updraft pools set {pool} <slots>`")
            }
            WaitReason::MaxActiveTasks { limit } => {
                write!(f, "the run already has {limit} task(s) queued or running (`max_active_tasks: {limit}`)")
            }
            WaitReason::Parallelism { limit } => {
                write!(f, "all {limit} runner slot(s) are busy (`[scheduler] parallelism`)")
            }
            WaitReason::RetryWait { until, next_try } => {
                write!(f, "waiting to retry: try {next_try} starts at {until}")
            }
            WaitReason::Unexpandable { error } => write!(f, "failed before any attempt: {error}"),
        }
    }
}
