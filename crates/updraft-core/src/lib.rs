//! Updraft's domain: DAGs, schedules and data intervals, trigger rules, retries,
//! the task and run state machines, and [`plan::plan`], the scheduler's decision.
//!
//! Everything here is pure: no I/O, no clock, no environment, no async runtime.
//! Time comes in as an argument; effects go out as [`plan::Action`] values. That is
//! what lets the scheduler be tested exhaustively and run in several processes at
//! once against one store.

pub mod alerts;
pub mod clock;
pub mod cron;
pub mod dag;
pub mod duration;
pub mod errors;
pub mod http;
pub mod id;
pub mod intervene;
pub mod kubernetes;
pub mod links;
pub mod mapping;
pub mod plan;
pub mod reason;
pub mod retry;
pub mod state;
pub mod suggest;
pub mod timetable;
pub mod trigger_rule;

pub use dag::{Dag, DagSpec, Task, TaskKind};
pub use duration::Duration;
pub use id::{DagId, RunId, TaskId};
pub use state::{RunState, TaskState};
pub use timetable::{DataInterval, Schedule};
