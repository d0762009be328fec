//! What the API sends and takes. These types are the API's contract (their
//! schemas make the OpenAPI document), so they are separate from the store's rows:
//! the store can change without the API changing under its users.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use updraft_store::{AttemptRow, DagRow, ImportError, PoolRow, RunRow, TaskInstanceRow};
use utoipa::{IntoParams, ToSchema};

fn time(at: Timestamp) -> String {
    at.to_string()
}

/// The most items one page of a list carries.
pub const MAX_LIMIT: u32 = 1000;
pub const DEFAULT_LIMIT: u32 = 100;

#[derive(Debug, Serialize, ToSchema)]
pub struct Dag {
    #[schema(example = "daily_sales")]
    pub dag_id: String,
    pub description: Option<String>,
    #[schema(example = "analytics")]
    pub owner: String,
    /// The cron expression or preset; null for a DAG run only by triggers.
    #[schema(example = "0 6 * * *")]
    pub schedule: Option<String>,
    #[schema(example = "Asia/Seoul")]
    pub timezone: String,
    pub tags: Vec<String>,
    pub is_paused: bool,
    /// False once the DAG's file is gone from the DAGs folder.
    pub is_active: bool,
    /// The file, relative to the DAGs folder.
    #[schema(example = "etl/daily_sales.yaml")]
    pub fileloc: String,
    /// The definition new runs use (a hash of it).
    pub latest_version: String,
    /// When the next scheduled run is due (RFC 3339, UTC).
    #[schema(format = DateTime)]
    pub next_dagrun: Option<String>,
}

impl From<DagRow> for Dag {
    fn from(row: DagRow) -> Dag {
        Dag {
            dag_id: row.dag_id,
            description: row.description,
            owner: row.owner,
            schedule: row.schedule,
            timezone: row.timezone,
            tags: row.tags,
            is_paused: row.is_paused,
            is_active: row.is_active,
            fileloc: row.fileloc,
            latest_version: row.latest_version,
            next_dagrun: if row.is_active { row.next_due.map(time) } else { None },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DagList {
    pub dags: Vec<Dag>,
    /// How many DAGs match the filters, over all pages.
    pub total_entries: usize,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DagListQuery {
    /// Only DAGs with all of these tags (comma-separated).
    #[param(example = "finance,daily")]
    pub tags: Option<String>,
    /// Only DAGs of this owner.
    pub owner: Option<String>,
    /// Only paused (true) or only unpaused (false) DAGs.
    pub paused: Option<bool>,
    /// Only DAGs whose id or description contains this text (any case).
    pub search: Option<String>,
    /// Include DAGs whose file is gone (default false).
    pub include_inactive: Option<bool>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Skip this many first (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// A change to a DAG: only `is_paused` can change through the API.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DagPatch {
    pub is_paused: bool,
}

/// The text of the file a DAG version was read from.
#[derive(Debug, Serialize, ToSchema)]
pub struct DagSource {
    pub dag_id: String,
    pub version: String,
    pub fileloc: String,
    pub source: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DagSourceQuery {
    /// A version the DAG had (a run's `version`); default: the latest.
    pub version: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportErrorItem {
    /// The file, relative to the DAGs folder.
    pub fileloc: String,
    /// Every problem of the file, one `path:line:column: message` per line.
    pub message: String,
}

impl From<ImportError> for ImportErrorItem {
    fn from(error: ImportError) -> ImportErrorItem {
        ImportErrorItem { fileloc: error.fileloc, message: error.message }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportErrorList {
    pub import_errors: Vec<ImportErrorItem>,
    pub total_entries: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DagRun {
    pub dag_id: String,
    #[schema(example = "manual__2024-05-01T00:00:00+00:00")]
    pub run_id: String,
    /// `scheduled`, `manual`, `backfill` or `test`.
    pub run_type: String,
    /// `queued`, `running`, `success` or `failed`.
    pub state: String,
    #[schema(format = DateTime)]
    pub logical_date: String,
    #[schema(format = DateTime)]
    pub data_interval_start: String,
    #[schema(format = DateTime)]
    pub data_interval_end: String,
    /// The run's configuration, as triggered.
    #[schema(value_type = Object)]
    pub conf: Map<String, Value>,
    /// The DAG version this run executes.
    pub version: String,
    #[schema(format = DateTime)]
    pub queued_at: String,
    #[schema(format = DateTime)]
    pub start_date: Option<String>,
    #[schema(format = DateTime)]
    pub end_date: Option<String>,
}

impl From<RunRow> for DagRun {
    fn from(row: RunRow) -> DagRun {
        DagRun {
            dag_id: row.dag_id,
            run_id: row.run_id,
            run_type: row.run_type.as_str().to_string(),
            state: row.state.as_str().to_string(),
            logical_date: time(row.logical_date),
            data_interval_start: time(row.interval.start),
            data_interval_end: time(row.interval.end),
            conf: row.conf,
            version: row.version.0,
            queued_at: time(row.queued_at),
            start_date: row.start_date.map(time),
            end_date: row.end_date.map(time),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DagRunList {
    /// Newest logical date first.
    pub dag_runs: Vec<DagRun>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DagRunListQuery {
    /// Only runs in this state.
    #[param(inline)]
    pub state: Option<RunStateName>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Skip this many first (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// A run's state, as a name.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStateName {
    Queued,
    Running,
    Success,
    Failed,
}

impl From<RunStateName> for updraft_core::RunState {
    fn from(name: RunStateName) -> updraft_core::RunState {
        match name {
            RunStateName::Queued => updraft_core::RunState::Queued,
            RunStateName::Running => updraft_core::RunState::Running,
            RunStateName::Success => updraft_core::RunState::Success,
            RunStateName::Failed => updraft_core::RunState::Failed,
        }
    }
}

/// A run to start now.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerDagRun {
    /// Configuration for the run, available to templates as `dag_run.conf`.
    #[schema(value_type = Option<Object>)]
    pub conf: Option<Map<String, Value>>,
    /// The run's logical date (RFC 3339; a plain date such as `2024-05-01` is also
    /// taken, read in the DAG's time zone). Default: now.
    #[schema(format = DateTime, example = "2024-05-01T00:00:00+09:00")]
    pub logical_date: Option<String>,
    /// Default: `manual__<logical date>`.
    #[schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9_.+:~-]{0,249}$", example = "rerun_after_fix")]
    pub run_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskInstance {
    pub task_id: String,
    /// `none`, `scheduled`, `queued`, `running`, `success`, `failed`, `up_for_retry`,
    /// `upstream_failed`, `skipped` or `removed`.
    pub state: String,
    /// The latest try; 0 before the first.
    pub try_number: u32,
    /// Tries allowed before the task fails for good: retries + 1.
    pub max_tries: u32,
    pub pool: String,
    pub priority: i32,
    #[schema(format = DateTime)]
    pub queued_at: Option<String>,
    #[schema(format = DateTime)]
    pub start_date: Option<String>,
    #[schema(format = DateTime)]
    pub end_date: Option<String>,
    /// When a task waiting to retry becomes runnable.
    #[schema(format = DateTime)]
    pub retry_at: Option<String>,
    pub hostname: Option<String>,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    /// Why it is not running yet, as the scheduler last saw it.
    pub wait_reason: Option<String>,
    /// A mapped task's instances count from 0; -1 for a task that is not mapped
    /// (or not expanded yet).
    pub map_index: i32,
    /// The item a mapped instance runs.
    #[schema(value_type = Option<Object>)]
    pub map_item: Option<serde_json::Value>,
}

impl From<TaskInstanceRow> for TaskInstance {
    fn from(row: TaskInstanceRow) -> TaskInstance {
        TaskInstance {
            task_id: row.task_id,
            state: row.state.as_str().to_string(),
            try_number: row.try_number,
            max_tries: row.max_tries + 1,
            pool: row.pool,
            priority: row.priority,
            queued_at: row.queued_at.map(time),
            start_date: row.start_date.map(time),
            end_date: row.end_date.map(time),
            retry_at: row.retry_at.map(time),
            hostname: row.hostname,
            pid: row.pid,
            exit_code: row.exit_code,
            wait_reason: row.wait_reason,
            map_index: row.map_index,
            map_item: row.map_item.and_then(|text| serde_json::from_str(&text).ok()),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskInstanceList {
    pub task_instances: Vec<TaskInstance>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Attempt {
    pub try_number: u32,
    pub state: String,
    pub hostname: Option<String>,
    pub pid: Option<u32>,
    #[schema(format = DateTime)]
    pub start_date: String,
    #[schema(format = DateTime)]
    pub end_date: Option<String>,
    pub exit_code: Option<i32>,
    /// Why it ended as it did, when not by its exit code alone.
    pub reason: Option<String>,
}

impl From<AttemptRow> for Attempt {
    fn from(row: AttemptRow) -> Attempt {
        Attempt {
            try_number: row.try_number,
            state: row.state.as_str().to_string(),
            hostname: row.hostname,
            pid: row.pid,
            start_date: time(row.start_date),
            end_date: row.end_date.map(time),
            exit_code: row.exit_code,
            reason: row.reason,
        }
    }
}

/// What a task handed on to its downstream tasks (`$UPDRAFT_OUTPUT`), secret
/// values as `***`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskOutput {
    #[schema(value_type = Object)]
    pub output: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskInstanceDetail {
    #[serde(flatten)]
    pub task_instance: TaskInstance,
    pub dag_id: String,
    pub run_id: String,
    /// Every try so far, oldest first.
    pub attempts: Vec<Attempt>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Pool {
    pub name: String,
    pub slots: u32,
    /// Task instances queued or running in it now.
    pub occupied: u32,
    pub description: String,
}

impl From<PoolRow> for Pool {
    fn from(row: PoolRow) -> Pool {
        Pool { name: row.name, slots: row.slots, occupied: row.occupied, description: row.description }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolList {
    pub pools: Vec<Pool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Version {
    #[schema(example = "0.1.0")]
    pub version: &'static str,
    /// The version of the API (the `/api/v1` prefix).
    #[schema(example = "v1")]
    pub api: &'static str,
}

/// One entry of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    #[schema(format = DateTime)]
    pub at: String,
    /// Who: `api:<user>`, `cli`, or the name given at sign-in.
    pub actor: String,
    /// `trigger`, `pause`, `unpause`, `clear`, `mark`, `mark_run`, `delete_run`,
    /// `sign_in`, `sign_in_failed`, `sign_out`, `user_create`, `user_delete`,
    /// `password_reset`, `token_create`, `token_revoke`.
    pub action: String,
    pub target: String,
    pub detail: Option<String>,
}

impl From<updraft_store::AuditRow> for AuditEntry {
    fn from(row: updraft_store::AuditRow) -> AuditEntry {
        AuditEntry {
            id: row.id,
            at: time(row.at),
            actor: row.entry.actor,
            action: row.entry.action,
            target: row.entry.target,
            detail: row.entry.detail,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditLog {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Only entries older than this id (the last id of the previous page).
    #[param(minimum = 1)]
    pub before: Option<i64>,
}

/// `limit` and `offset` checked and defaulted.
pub fn page(limit: Option<i64>, offset: Option<i64>) -> Result<(usize, usize), crate::ApiError> {
    let limit = limit.unwrap_or(i64::from(DEFAULT_LIMIT));
    if !(1..=i64::from(MAX_LIMIT)).contains(&limit) {
        return Err(crate::ApiError::BadRequest(format!("`limit` must be from 1 to {MAX_LIMIT}, not {limit}")));
    }
    let offset = offset.unwrap_or(0);
    let offset = usize::try_from(offset)
        .map_err(|_| crate::ApiError::BadRequest(format!("`offset` must be 0 or more, not {offset}")))?;
    Ok((limit as usize, offset))
}

/// Runs task instances again: each goes back to `none` with its retries renewed,
/// and a finished run is queued again.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClearTaskInstances {
    #[schema(min_items = 1, example = json!(["transform"]))]
    pub task_ids: Vec<String>,
    /// Also every task downstream of them (default false).
    #[serde(default)]
    pub downstream: bool,
}

/// An operator's verdict on a task instance that is not queued or running.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskInstancePatch {
    pub state: TaskMark,
}

/// What an operator can mark a task instance.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskMark {
    Success,
    Failed,
    Skipped,
}

impl From<TaskMark> for updraft_core::TaskState {
    fn from(mark: TaskMark) -> updraft_core::TaskState {
        match mark {
            TaskMark::Success => updraft_core::TaskState::Success,
            TaskMark::Failed => updraft_core::TaskState::Failed,
            TaskMark::Skipped => updraft_core::TaskState::Skipped,
        }
    }
}

/// An operator's verdict on a whole run: unfinished tasks become `success`
/// (marking success) or `skipped` (marking failed).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DagRunPatch {
    pub state: RunMark,
}

/// What an operator can mark a run.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunMark {
    Success,
    Failed,
}

impl From<RunMark> for updraft_core::RunState {
    fn from(mark: RunMark) -> updraft_core::RunState {
        match mark {
            RunMark::Success => updraft_core::RunState::Success,
            RunMark::Failed => updraft_core::RunState::Failed,
        }
    }
}

/// One Server-Sent Event of a followed log.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogEvent {
    /// `log` (new text), `end` (the attempt ended; `data` is its state) or `error`.
    pub event: LogEventKind,
    /// For `log`: the offset after this text, to resume from.
    pub id: Option<String>,
    pub data: String,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogEventKind {
    Log,
    End,
    Error,
}

impl From<LogEvent> for axum::response::sse::Event {
    fn from(event: LogEvent) -> axum::response::sse::Event {
        let name = match event.event {
            LogEventKind::Log => "log",
            LogEventKind::End => "end",
            LogEventKind::Error => "error",
        };
        let sse = axum::response::sse::Event::default().event(name).data(event.data);
        match event.id {
            Some(id) => sse.id(id),
            None => sse,
        }
    }
}
