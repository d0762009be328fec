//! Runs task attempts: renders templates, starts each attempt as `/bin/sh -c` in
//! its own process group, streams output to a log file per attempt, enforces
//! timeouts (killing the whole group), records how each attempt ended, and
//! recovers attempts whose runner died.
//!
//! The runner never decides what runs next: it claims what the scheduler queued
//! and reports outcomes; retries are computed by `updraft-core`.

pub mod attempt;
pub mod http;
pub mod load;
pub mod objects;
pub mod pods;
pub mod procfs;
pub mod recovery;
pub mod remote;
pub mod runner;
pub mod secrets;
mod shipping;
pub mod source;
pub mod sql;
pub mod template;

pub use attempt::{
    AttemptLabel, AttemptObserver, AttemptResult, AttemptSpec, DEFAULT_OUTPUT_LIMIT, Ending, Quiet, container_command,
    execute,
};
pub use pods::PodExecutor;
pub use recovery::{Recovered, Recovery, heartbeat_loop};
pub use remote::ApiSource;
pub use runner::{Runner, RunnerConfig, attempt_token, log_path};
pub use source::{SourceError, StoreSource, WorkSource};
pub use template::RunContext;
