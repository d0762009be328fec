//! Trigger rules with Airflow's exact semantics (`trigger_rule_dep.py`, with
//! `flag_upstream_failed`): when a task may run, and when its upstream states
//! settle it as skipped or upstream_failed without running.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::state::TaskState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TriggerRule {
    #[default]
    AllSuccess,
    AllFailed,
    AllDone,
    AllSkipped,
    OneSuccess,
    OneFailed,
    OneDone,
    NoneFailed,
    NoneFailedMinOneSuccess,
    NoneSkipped,
    Always,
}

impl TriggerRule {
    pub const ALL: [TriggerRule; 11] = [
        TriggerRule::AllSuccess,
        TriggerRule::AllFailed,
        TriggerRule::AllDone,
        TriggerRule::AllSkipped,
        TriggerRule::OneSuccess,
        TriggerRule::OneFailed,
        TriggerRule::OneDone,
        TriggerRule::NoneFailed,
        TriggerRule::NoneFailedMinOneSuccess,
        TriggerRule::NoneSkipped,
        TriggerRule::Always,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TriggerRule::AllSuccess => "all_success",
            TriggerRule::AllFailed => "all_failed",
            TriggerRule::AllDone => "all_done",
            TriggerRule::AllSkipped => "all_skipped",
            TriggerRule::OneSuccess => "one_success",
            TriggerRule::OneFailed => "one_failed",
            TriggerRule::OneDone => "one_done",
            TriggerRule::NoneFailed => "none_failed",
            TriggerRule::NoneFailedMinOneSuccess => "none_failed_min_one_success",
            TriggerRule::NoneSkipped => "none_skipped",
            TriggerRule::Always => "always",
        }
    }
}

impl fmt::Display for TriggerRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TriggerRule {
    type Err = ();
    fn from_str(text: &str) -> Result<Self, ()> {
        TriggerRule::ALL.into_iter().find(|rule| rule.as_str() == text).ok_or(())
    }
}

/// How many direct upstream tasks are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamCounts {
    pub total: usize,
    pub success: usize,
    pub failed: usize,
    pub upstream_failed: usize,
    pub skipped: usize,
    pub removed: usize,
}

impl UpstreamCounts {
    pub fn add(&mut self, state: TaskState) {
        self.total += 1;
        match state {
            TaskState::Success => self.success += 1,
            TaskState::Failed => self.failed += 1,
            TaskState::UpstreamFailed => self.upstream_failed += 1,
            TaskState::Skipped => self.skipped += 1,
            TaskState::Removed => self.removed += 1,
            _ => {}
        }
    }

    pub fn from_states(states: impl IntoIterator<Item = TaskState>) -> UpstreamCounts {
        let mut counts = UpstreamCounts::default();
        for state in states {
            counts.add(state);
        }
        counts
    }

    fn done(&self) -> usize {
        self.success + self.failed + self.upstream_failed + self.skipped + self.removed
    }
}

/// What the upstream states mean for a task that has not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Run,
    Wait,
    Skip,
    UpstreamFailed,
}

pub fn evaluate(rule: TriggerRule, up: UpstreamCounts) -> Decision {
    use Decision::*;
    // As in Airflow, a task without upstream tasks is not held by its rule.
    if up.total == 0 || rule == TriggerRule::Always {
        return Run;
    }
    let all_done = up.done() >= up.total;
    let failures = up.failed + up.upstream_failed;
    // First the settling rules, which decide without running.
    let settled = match rule {
        TriggerRule::AllSuccess if failures > 0 => Some(UpstreamFailed),
        TriggerRule::AllSuccess if up.skipped > 0 => Some(Skip),
        TriggerRule::AllFailed if up.success > 0 || up.skipped > 0 => Some(Skip),
        TriggerRule::AllSkipped if up.success > 0 || failures > 0 => Some(Skip),
        TriggerRule::OneSuccess if all_done && up.done() == up.skipped => Some(Skip),
        TriggerRule::OneSuccess if all_done && up.success == 0 => Some(UpstreamFailed),
        TriggerRule::OneFailed if all_done && failures == 0 => Some(Skip),
        TriggerRule::OneDone if all_done && up.failed == 0 && up.success == 0 => Some(Skip),
        TriggerRule::NoneFailed | TriggerRule::NoneFailedMinOneSuccess if failures > 0 => Some(UpstreamFailed),
        TriggerRule::NoneFailedMinOneSuccess if up.skipped == up.total => Some(Skip),
        TriggerRule::NoneSkipped if up.skipped > 0 => Some(Skip),
        _ => None,
    };
    if let Some(decision) = settled {
        return decision;
    }
    let met = match rule {
        TriggerRule::AllSuccess => up.success >= up.total,
        TriggerRule::AllFailed => failures >= up.total,
        TriggerRule::AllDone => all_done,
        TriggerRule::AllSkipped => up.skipped >= up.total,
        TriggerRule::OneSuccess => up.success > 0,
        TriggerRule::OneFailed => failures > 0,
        TriggerRule::OneDone => up.success + up.failed > 0,
        TriggerRule::NoneFailed | TriggerRule::NoneFailedMinOneSuccess => up.success + up.skipped >= up.total,
        TriggerRule::NoneSkipped => all_done,
        TriggerRule::Always => true,
    };
    if met { Run } else { Wait }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    /// Upstream states, written as one letter each: s=success f=failed u=upstream_failed
    /// k=skipped r=running n=none.
    fn check(rule: TriggerRule, upstream: &str, expect: Decision) {
        let states = upstream.chars().map(|c| match c {
            's' => Success,
            'f' => Failed,
            'u' => UpstreamFailed,
            'k' => Skipped,
            'r' => Running,
            'n' => None,
            other => panic!("unknown state letter {other}"),
        });
        let counts = UpstreamCounts::from_states(states);
        assert_eq!(evaluate(rule, counts), expect, "{rule} with upstream {upstream:?}");
    }

    #[test]
    fn rules() {
        use Decision::*;
        use TriggerRule as R;
        for rule in TriggerRule::ALL {
            check(rule, "", Run);
        }
        check(R::AllSuccess, "ss", Run);
        check(R::AllSuccess, "sr", Wait);
        check(R::AllSuccess, "sf", UpstreamFailed);
        check(R::AllSuccess, "rf", UpstreamFailed); // settles before the others finish
        check(R::AllSuccess, "su", UpstreamFailed);
        check(R::AllSuccess, "sk", Skip); // skipped propagates
        check(R::AllSuccess, "kf", UpstreamFailed); // failure wins over skip

        check(R::AllFailed, "ff", Run);
        check(R::AllFailed, "fu", Run);
        check(R::AllFailed, "fr", Wait);
        check(R::AllFailed, "fs", Skip);
        check(R::AllFailed, "fk", Skip);

        check(R::AllDone, "sfku", Run);
        check(R::AllDone, "sr", Wait);

        check(R::AllSkipped, "kk", Run);
        check(R::AllSkipped, "kr", Wait);
        check(R::AllSkipped, "ks", Skip);

        check(R::OneSuccess, "sr", Run);
        check(R::OneSuccess, "fr", Wait);
        check(R::OneSuccess, "ff", UpstreamFailed);
        check(R::OneSuccess, "fk", UpstreamFailed);
        check(R::OneSuccess, "kk", Skip);

        check(R::OneFailed, "fr", Run);
        check(R::OneFailed, "ur", Run);
        check(R::OneFailed, "sr", Wait);
        check(R::OneFailed, "sk", Skip);

        check(R::OneDone, "fr", Run);
        check(R::OneDone, "sr", Run);
        check(R::OneDone, "kr", Wait);
        check(R::OneDone, "ku", Skip);

        check(R::NoneFailed, "sk", Run);
        check(R::NoneFailed, "kk", Run);
        check(R::NoneFailed, "sr", Wait);
        check(R::NoneFailed, "sf", UpstreamFailed);
        check(R::NoneFailed, "ru", UpstreamFailed);

        check(R::NoneFailedMinOneSuccess, "sk", Run);
        check(R::NoneFailedMinOneSuccess, "kk", Skip);
        check(R::NoneFailedMinOneSuccess, "kf", UpstreamFailed);

        check(R::NoneSkipped, "sf", Run);
        check(R::NoneSkipped, "sr", Wait);
        check(R::NoneSkipped, "rk", Skip);

        check(R::Always, "rn", Run);
        check(R::Always, "ff", Run);
    }

    #[test]
    fn names() {
        for rule in TriggerRule::ALL {
            assert_eq!(rule.as_str().parse::<TriggerRule>(), Ok(rule));
        }
    }
}
