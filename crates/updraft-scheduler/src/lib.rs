//! The scheduling loop: keeps the store in step with the DAGs folder, and on every
//! event reads a snapshot, plans with `updraft_core::plan::plan`, and applies the
//! actions in one transaction.
//!
//! The scheduler never runs a task and never decides in SQL: decisions are the pure
//! plan's, state changes are the store's compare-and-set, so any number of
//! schedulers can share one store.

pub mod dag_sync;
pub mod explain;
pub mod scheduler;

pub use dag_sync::{DagSync, SyncError, SyncReport};
pub use explain::{ExplainError, Explanation, explain};
pub use scheduler::{Scheduler, SchedulerConfig, Tick};
