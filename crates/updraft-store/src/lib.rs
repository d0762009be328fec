//! Updraft's metadata store: DAGs and their versions, runs, task instances and
//! their attempts, the state-transition log, pools, and the processes that hold
//! work.
//!
//! [`MetadataStore`] is the interface; [`sqlite::SqliteStore`] the embedded
//! implementation. Every state change is compare-and-set on the expected state, so
//! several schedulers and runners can share one store without running anything
//! twice. The store never decides anything: decisions come from `updraft-core`.

mod definitions;
mod error;
mod grouped;
pub mod model;
pub mod postgres;
pub mod sqlite;
mod time;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use updraft_core::RunState;
use updraft_core::intervene::Intervention;
use updraft_core::plan::Action;

pub use definitions::DefinitionCache;
pub use error::{Result, StoreError};
pub use model::*;

/// How often a token's last use is written, in microseconds (the stored unit).
pub(crate) const TOKEN_USE_EVERY: i64 = 60 * 1_000_000;

/// The store's operations. Implementations must make every state change a
/// compare-and-set and apply each call atomically.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Where the data lives, for messages (a file path, or a URL without password).
    fn location(&self) -> String;

    // Processes.
    async fn register_process(&self, process: &NewProcess, now: Timestamp) -> Result<i64>;
    /// Records a process's heartbeat and renews the leases of the attempts it runs
    /// (each named by its fencing token, the try number). Says whether the process
    /// is still alive and which of those attempts it no longer holds.
    async fn heartbeat(&self, process_id: i64, attempts: &[(i64, u32)], now: Timestamp) -> Result<Heartbeat>;
    async fn set_process_state(
        &self,
        process_id: i64,
        from: ProcessState,
        to: ProcessState,
        now: Timestamp,
    ) -> Result<bool>;
    async fn processes(&self, state: Option<ProcessState>) -> Result<Vec<ProcessRow>>;

    // DAGs.
    async fn dag_index(&self) -> Result<Vec<DagIndexRow>>;
    /// Records DAGs and their versions; a new or changed DAG is due for scheduling now.
    async fn upsert_dags(&self, dags: &[DagUpsert], now: Timestamp) -> Result<()>;
    async fn deactivate_dags(&self, dag_ids: &[String], now: Timestamp) -> Result<()>;
    async fn replace_import_errors(&self, errors: &[ImportError], now: Timestamp) -> Result<()>;
    async fn import_errors(&self) -> Result<Vec<ImportError>>;
    async fn list_dags(&self) -> Result<Vec<DagRow>>;
    async fn get_dag(&self, dag_id: &str) -> Result<Option<DagRow>>;
    /// Returns false when the DAG is unknown.
    async fn set_paused(&self, dag_id: &str, paused: bool, now: Timestamp) -> Result<bool>;
    async fn dag_definition(&self, dag_id: &str, version: &str) -> Result<Option<String>>;
    /// The text of the file a version was read from, if it was recorded.
    async fn dag_source(&self, dag_id: &str, version: &str) -> Result<Option<String>>;

    // Accounts.
    /// `None` when the username is taken.
    async fn create_user(&self, user: &NewUser, now: Timestamp) -> Result<Option<i64>>;
    /// By username.
    async fn users(&self) -> Result<Vec<UserRow>>;
    async fn get_user(&self, username: &str) -> Result<Option<UserRow>>;
    async fn delete_user(&self, username: &str) -> Result<bool>;
    /// Sets a new password hash and clears failed logins and any lock.
    async fn set_password(&self, username: &str, password_hash: &str) -> Result<bool>;
    /// Records failed sign-ins in a row and the lock they earned.
    async fn set_login_state(&self, username: &str, failed_logins: u32, locked_until: Option<Timestamp>) -> Result<()>;
    /// A signed-in browser; expired sessions are dropped on the way.
    async fn create_session(&self, token_hash: &str, user_id: i64, expires_at: Timestamp, now: Timestamp)
    -> Result<()>;
    /// The user of an unexpired session.
    async fn session_user(&self, token_hash: &str, now: Timestamp) -> Result<Option<UserRow>>;
    async fn delete_session(&self, token_hash: &str) -> Result<()>;
    /// A new API token of a user; `None` if there is no such user.
    async fn create_api_token(
        &self,
        username: &str,
        name: &str,
        token_hash: &str,
        scope: &str,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<i64>>;
    /// Tokens, of one user or all, newest first.
    async fn api_tokens(&self, username: Option<&str>) -> Result<Vec<ApiTokenRow>>;
    /// The user and scope of an unexpired token, noting its use.
    async fn api_token_user(&self, token_hash: &str, now: Timestamp) -> Result<Option<(UserRow, String)>>;
    async fn delete_api_token(&self, token_id: i64) -> Result<bool>;

    // Worker tokens.
    async fn create_worker_token(
        &self,
        name: &str,
        token_hash: &str,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<i64>;
    async fn worker_tokens(&self) -> Result<Vec<WorkerTokenRow>>;
    /// The id of an unexpired worker token; its use is noted at most once a
    /// minute, so a worker's many requests do not each write.
    async fn worker_token_id(&self, token_hash: &str, now: Timestamp) -> Result<Option<i64>>;
    async fn delete_worker_token(&self, token_id: i64) -> Result<bool>;

    // Variables and connections (their secrets already encrypted by the caller).
    async fn set_variable(&self, key: &str, value: &str, description: &str, now: Timestamp) -> Result<()>;
    async fn variables(&self) -> Result<Vec<VariableRow>>;
    async fn variable(&self, key: &str) -> Result<Option<VariableRow>>;
    async fn delete_variable(&self, key: &str) -> Result<bool>;
    async fn set_connection(&self, connection: &ConnectionRow, now: Timestamp) -> Result<()>;
    async fn connections(&self) -> Result<Vec<ConnectionRow>>;
    async fn connection(&self, conn_id: &str) -> Result<Option<ConnectionRow>>;
    async fn delete_connection(&self, conn_id: &str) -> Result<bool>;

    // The audit log.
    async fn audit(&self, entry: &AuditEntry, now: Timestamp) -> Result<()>;
    /// Newest first, before row `before_id` if given.
    async fn audit_log(&self, before_id: Option<i64>, limit: u32) -> Result<Vec<AuditRow>>;

    // Runs.
    /// Creates a queued run and its task instances; `None` if the run id (or, for
    /// scheduled and backfill runs, the logical date) is taken.
    async fn create_run(&self, run: &NewRun, actor: &str, now: Timestamp) -> Result<Option<i64>>;
    /// Newest first.
    async fn list_runs(&self, dag_id: &str, state: Option<RunState>, limit: u32) -> Result<Vec<RunRow>>;
    async fn get_run(&self, dag_id: &str, run_id: &str) -> Result<Option<RunRow>>;
    async fn get_run_by_pk(&self, run_pk: i64) -> Result<Option<RunRow>>;
    async fn task_instances(&self, run_pk: i64) -> Result<Vec<TaskInstanceRow>>;
    async fn task_attempts(&self, ti_pk: i64) -> Result<Vec<AttemptRow>>;
    /// Applies an operator's change to a run (`updraft_core::intervene`) in one
    /// transaction, each move compare-and-set; if any misses, nothing is written
    /// and the answer is [`StoreError::Changed`].
    async fn intervene(&self, run_pk: i64, change: &Intervention, actor: &str, now: Timestamp) -> Result<()>;
    /// Deletes a finished run with its task instances, attempts, logs and
    /// transitions; false if there is no such finished run.
    async fn delete_run(&self, run_pk: i64) -> Result<bool>;
    /// Metadata clean-up, one batch in one short transaction: deletes (or, with
    /// `dry_run`, counts) up to `batch` finished runs that ended before `cutoff`,
    /// with everything under them, and audit rows older than `cutoff`. Call again
    /// until a batch removes nothing; other processes work between batches.
    async fn clean_batch(&self, cutoff: Timestamp, batch: u32, dry_run: bool) -> Result<CleanReport>;
    /// The run's transition log (or one task instance's), oldest first, after row `after_id`.
    async fn transitions(&self, run_pk: i64, ti_pk: Option<i64>, after_id: i64) -> Result<Vec<TransitionRow>>;

    // Scheduling.
    /// One scheduling pass in one transaction: take up to `batch` DAGs that no other
    /// scheduler is working on (their rows locked, skipping locked ones, never
    /// waiting), read their snapshot, let `plan` decide, and apply the decision as
    /// `actor`. Concurrent schedulers thus work on disjoint DAGs.
    async fn schedule_pass(&self, scope: Scope, now: Timestamp, pass: Pass) -> Result<PassReport>;
    /// Applies actions outside a pass (tests; people marking states).
    async fn apply(&self, actions: &[Action], actor: &str, now: Timestamp) -> Result<ApplyReport>;

    // Running.
    /// Moves up to `limit` queued task instances in scope (and in the claimant's
    /// queues) to running for the claimant, highest priority first, starting a new try
    /// of each. Concurrent claimants take disjoint task instances and never wait.
    async fn claim(&self, scope: Scope, claimant: &Claimant, limit: u32, now: Timestamp) -> Result<Vec<Claimed>>;
    /// Records the OS process of a claimed attempt; false if the attempt was replaced.
    async fn record_attempt_process(
        &self,
        ti_pk: i64,
        try_number: u32,
        pid: u32,
        pid_start: Option<u64>,
        log_path: &str,
    ) -> Result<bool>;
    /// Ends running attempts, all in one transaction; for each, false (and no
    /// change) if it is no longer running under that try number.
    /// The outputs of a run's tasks (JSON text) by task id.
    async fn run_outputs(&self, dag_id: &str, run_id: &str) -> Result<std::collections::BTreeMap<String, String>>;
    async fn finish_attempts(&self, ends: &[FinishedAttempt], actor: &str, now: Timestamp) -> Result<Vec<bool>>;
    /// [`MetadataStore::finish_attempts`] for one attempt.
    async fn finish_attempt(
        &self,
        ti_pk: i64,
        try_number: u32,
        end: &AttemptEnd,
        actor: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let ends = [FinishedAttempt { ti_pk, try_number, end: end.clone() }];
        Ok(self.finish_attempts(&ends, actor, now).await?.first().copied().unwrap_or(false))
    }
    async fn running_attempts(&self, process_id: i64) -> Result<Vec<RunningAttempt>>;
    /// Hands a running attempt to `claimant`, keeping its try number, if it is still
    /// held by `from` under that try: an executor that can reattach to the attempt's
    /// work (a pod whose runner died) follows it instead of running it again.
    async fn adopt_attempt(
        &self,
        ti_pk: i64,
        try_number: u32,
        from: i64,
        claimant: &Claimant,
        now: Timestamp,
    ) -> Result<Option<Claimed>>;
    /// Running attempts whose lease was last renewed before `cutoff`: zombies.
    async fn stale_attempts(&self, cutoff: Timestamp) -> Result<Vec<RunningAttempt>>;
    /// Fails the unfinished `dags test` runs of a dead process.
    async fn fail_owned_runs(&self, process_id: i64, now: Timestamp) -> Result<u64>;

    // Logs of remote attempts.
    /// Stores log pieces; a piece already stored at its offset is kept as it is.
    async fn append_logs(&self, chunks: &[LogChunk]) -> Result<()>;
    /// The stored log of an attempt from byte `from` on, up to the first piece not
    /// yet stored; `None` if no piece of it was ever stored (not a remote attempt).
    async fn read_log(&self, ti_pk: i64, try_number: u32, from: u64) -> Result<Option<Vec<u8>>>;

    // Operations: alerts, deadlines, the digest, maintenance.
    /// Transitions after row `after_id` (up to `limit` ids), with the changes
    /// alerts report on: task instances ending `success`, `failed` or
    /// `up_for_retry`, runs ending `success` or `failed` (not `dags test` runs).
    async fn alert_transitions(&self, after_id: i64, limit: u32) -> Result<AlertTransitions>;
    /// The newest transition's id (0 with none).
    async fn last_transition_id(&self) -> Result<i64>;
    /// Queues messages; for each, whether it was new (its key not seen before).
    async fn enqueue_alerts(&self, alerts: &[NewAlert], now: Timestamp) -> Result<Vec<bool>>;
    /// Takes up to `limit` pending messages that are due and not claimed by
    /// another process, claiming them until `lease_until`.
    async fn claim_alerts(&self, now: Timestamp, lease_until: Timestamp, limit: u32) -> Result<Vec<AlertRow>>;
    /// Messages sent to `notifier` since `since` (its rate limit).
    async fn alerts_sent_since(&self, notifier: &str, since: Timestamp) -> Result<u64>;
    async fn settle_alerts(&self, outcomes: &[(i64, AlertOutcome)], now: Timestamp) -> Result<()>;
    /// Messages by state (`pending`, `sent`, `folded`, `failed`), for status pages and tests.
    async fn alert_counts(&self) -> Result<std::collections::BTreeMap<String, u64>>;
    /// Records a missed deadline of a run (`task_id` `None`) or of one of its
    /// tasks; false if it was recorded before.
    async fn record_deadline_miss(&self, run_pk: i64, task_id: Option<&str>, now: Timestamp) -> Result<bool>;
    /// Scheduled runs that are unfinished, or that ended or started since `since`.
    async fn recent_scheduled_runs(&self, since: Timestamp) -> Result<Vec<RunRow>>;
    /// Runs (not `dags test` runs) that failed since `since`.
    async fn failed_runs_since(&self, since: Timestamp) -> Result<Vec<RunRow>>;
    /// Task instances `scheduled` or `queued` since before `before`, oldest first, at most `limit`.
    async fn stuck_task_instances(&self, before: Timestamp, limit: u32) -> Result<Vec<StuckTask>>;
    async fn ops_value(&self, name: &str) -> Result<Option<OpsValue>>;
    /// Compare-and-set of a job's progress: writes if the stored value is
    /// `expected` (`None`: no row yet). Exactly one of several processes racing
    /// to move it wins.
    async fn set_ops_value(&self, name: &str, expected: Option<i64>, value: &OpsValue) -> Result<bool>;

    // Pools.
    async fn pools(&self) -> Result<Vec<PoolRow>>;
    async fn set_pool(&self, name: &str, slots: u32, description: &str) -> Result<()>;
    async fn delete_pool(&self, name: &str) -> Result<bool>;

    /// Something that wakes when another process commits a change.
    async fn change_watcher(&self) -> Result<Box<dyn ChangeWatcher>>;
}

/// Resolves when the store changed (possibly spuriously); how it learns depends on
/// the backend: SQLite's `data_version`, PostgreSQL's `LISTEN`.
#[async_trait]
pub trait ChangeWatcher: Send {
    async fn changed(&mut self) -> Result<()>;
}

pub type Store = Arc<dyn MetadataStore>;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// What relative SQLite paths are relative to.
    pub base: std::path::PathBuf,
    /// Connections per process (PostgreSQL).
    pub pool_size: u32,
}

/// Opens (and creates or upgrades) the store named by `url`: `sqlite://<path>`,
/// `sqlite::memory:` or `postgres://...`.
pub async fn open_with(url: &str, options: &OpenOptions) -> Result<Store> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(postgres::PgStore::open(url, options.pool_size).await?));
    }
    Ok(Arc::new(sqlite::SqliteStore::open(url, &options.base).await?))
}

/// [`open_with`] with default options; relative SQLite paths are relative to `base`.
pub async fn open(url: &str, base: &Path) -> Result<Store> {
    open_with(url, &OpenOptions { base: base.to_path_buf(), pool_size: 10 }).await
}

/// The URL without a password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
