//! What the store reads and writes, in the domain's words.

use std::sync::Arc;

use jiff::Timestamp;
use updraft_core::plan::{Action, DagVersion, RunType};
use updraft_core::{Dag, DataInterval, RunState, TaskState};

/// Which runs a scheduler or runner works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every run except `dags test` runs, which their own process executes.
    All,
    /// One run only (`dags test`).
    Run(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    Standalone,
    Scheduler,
    Worker,
    /// `dags test` (and other CLI commands that execute tasks in-process).
    Cli,
}

impl ProcessKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessKind::Standalone => "standalone",
            ProcessKind::Scheduler => "scheduler",
            ProcessKind::Worker => "worker",
            ProcessKind::Cli => "cli",
        }
    }

    pub fn parse(text: &str) -> Option<ProcessKind> {
        [ProcessKind::Standalone, ProcessKind::Scheduler, ProcessKind::Worker, ProcessKind::Cli]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }

    /// Whether processes of this kind run the scheduling loop.
    pub fn schedules(self) -> bool {
        matches!(self, ProcessKind::Standalone | ProcessKind::Scheduler)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    Running,
    Stopped,
    /// Found dead by another process; its attempts were recovered.
    Dead,
}

impl ProcessState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Running => "running",
            ProcessState::Stopped => "stopped",
            ProcessState::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<ProcessState> {
        [ProcessState::Running, ProcessState::Stopped, ProcessState::Dead]
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

#[derive(Debug, Clone)]
pub struct NewProcess {
    pub kind: ProcessKind,
    pub hostname: String,
    pub pid: u32,
    pub pid_start: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct ProcessRow {
    pub id: i64,
    pub kind: ProcessKind,
    pub hostname: String,
    pub pid: u32,
    pub pid_start: Option<u64>,
    pub state: ProcessState,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
}

/// A parsed DAG to record: its row and its version's definition.
#[derive(Debug, Clone)]
pub struct DagUpsert {
    pub dag: Arc<Dag>,
    pub version: DagVersion,
    /// Paused state for a DAG seen for the first time.
    pub paused_if_new: bool,
    /// The file's text, kept with the version (for the UI's code view).
    pub source: Option<Arc<str>>,
}

/// An account to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// `admin`, `op`, `user` or `viewer`.
    pub role: String,
    pub teams: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub user_id: i64,
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub teams: Vec<String>,
    pub created_at: Timestamp,
    pub failed_logins: u32,
    pub locked_until: Option<Timestamp>,
}

/// A personal API token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRow {
    pub token_id: i64,
    pub username: String,
    pub name: String,
    /// `read` or `write`.
    pub scope: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

/// A remote worker's token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerTokenRow {
    pub token_id: i64,
    pub name: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

/// A variable; `value` is a Fernet token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableRow {
    pub key: String,
    pub value: String,
    pub description: String,
    pub updated_at: Timestamp,
}

/// A connection; `password` and `extra` are Fernet tokens.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionRow {
    pub conn_id: String,
    pub conn_type: String,
    pub host: Option<String>,
    pub schema: Option<String>,
    pub login: Option<String>,
    pub password: Option<String>,
    pub port: Option<u16>,
    pub extra: Option<String>,
    pub description: String,
}

/// Variables and connections in clear, as templates see them: held in memory by
/// a runner for a moment, never stored or logged (see `updraft_runner::secrets`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Secrets {
    pub variables: std::collections::BTreeMap<String, String>,
    pub connections: std::collections::BTreeMap<String, ConnectionValues>,
    /// Variables that came from a secrets backend: masked whatever their names.
    #[serde(default)]
    pub from_backends: std::collections::BTreeSet<String>,
}

/// A connection in clear (`extra` is JSON text).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionValues {
    pub conn_type: String,
    pub host: Option<String>,
    pub login: Option<String>,
    pub password: Option<String>,
    pub schema: Option<String>,
    pub port: Option<u16>,
    pub extra: Option<String>,
}

/// One thing someone did, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// `api:<user>`, `cli`, or the name given at sign-in.
    pub actor: String,
    /// `trigger`, `pause`, `unpause`, `clear`, `mark`, `delete_run`, `sign_in`,
    /// `sign_in_failed`, `sign_out`, `user_create`, ...
    pub action: String,
    /// What it was done to: `dag/run/task`, a username, a token id.
    pub target: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub at: Timestamp,
    pub entry: AuditEntry,
}

/// What the scheduler needs to know to keep the `dags` table in step with files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagIndexRow {
    pub dag_id: String,
    pub latest_version: String,
    pub fileloc: String,
    pub is_active: bool,
}

#[derive(Debug, Clone)]
pub struct DagRow {
    pub dag_id: String,
    pub fileloc: String,
    pub owner: String,
    pub description: Option<String>,
    pub schedule: Option<String>,
    pub timezone: String,
    pub tags: Vec<String>,
    pub is_paused: bool,
    pub is_active: bool,
    pub latest_version: String,
    pub next_due: Option<Timestamp>,
    pub last_automated: Option<DataInterval>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    pub fileloc: String,
    pub message: String,
}

/// A run to create, with a task instance (state `none`) per task of `dag`.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub dag: Arc<Dag>,
    pub version: DagVersion,
    pub run_id: updraft_core::RunId,
    pub run_type: RunType,
    pub logical_date: Timestamp,
    pub interval: DataInterval,
    pub conf: serde_json::Map<String, serde_json::Value>,
    pub owner_process: Option<i64>,
    /// `dags test` runs ignore retries unless asked: then `max_tries` is 0.
    pub with_retries: bool,
}

#[derive(Debug, Clone)]
pub struct RunRow {
    pub run_pk: i64,
    pub dag_id: String,
    pub run_id: String,
    pub run_type: RunType,
    pub state: RunState,
    pub version: DagVersion,
    pub logical_date: Timestamp,
    pub interval: DataInterval,
    pub conf: serde_json::Map<String, serde_json::Value>,
    pub owner_process: Option<i64>,
    pub queued_at: Timestamp,
    pub start_date: Option<Timestamp>,
    pub end_date: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct TaskInstanceRow {
    pub ti_pk: i64,
    pub run_pk: i64,
    pub task_id: String,
    pub state: TaskState,
    pub try_number: u32,
    pub max_tries: u32,
    pub pool: String,
    pub priority: i32,
    pub queued_at: Option<Timestamp>,
    pub start_date: Option<Timestamp>,
    pub end_date: Option<Timestamp>,
    pub retry_at: Option<Timestamp>,
    pub process_id: Option<i64>,
    pub hostname: Option<String>,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub wait_reason: Option<String>,
    /// Its position among a mapped task's instances; -1 when not mapped.
    pub map_index: i32,
    /// A mapped instance's item (JSON text).
    pub map_item: Option<String>,
}

impl TaskInstanceRow {
    /// What an operator's change (`updraft_core::intervene`) needs to know of it.
    pub fn intervention_state(&self) -> updraft_core::intervene::TaskInstanceState {
        updraft_core::intervene::TaskInstanceState {
            ti_pk: self.ti_pk,
            task_id: self.task_id.clone(),
            map_index: self.map_index,
            state: self.state,
            try_number: self.try_number,
        }
    }

    /// `task_id`, or `task_id[3]` for a mapped instance: for messages and pages.
    pub fn label(&self) -> String {
        updraft_core::mapping::instance_label(&self.task_id, self.map_index)
    }
}

#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub ti_pk: i64,
    pub try_number: u32,
    pub state: TaskState,
    pub hostname: Option<String>,
    pub pid: Option<u32>,
    pub start_date: Timestamp,
    pub end_date: Option<Timestamp>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub log_path: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TransitionRow {
    pub id: i64,
    pub at: Timestamp,
    pub ti_pk: Option<i64>,
    pub from_state: Option<String>,
    pub to_state: String,
    pub actor: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PoolRow {
    pub name: String,
    pub slots: u32,
    pub description: String,
    /// Task instances queued or running in it now.
    pub occupied: u32,
}

/// Everything `plan()` needs, as stored; the scheduler resolves versions to DAGs.
#[derive(Debug, Clone, Default)]
pub struct RawSnapshot {
    /// DAGs with active runs in scope, and (scope `All`) DAGs whose `next_due` passed.
    pub dags: Vec<DagRow>,
    pub runs: Vec<RunRow>,
    pub task_instances: Vec<TaskInstanceRow>,
    pub pools: Vec<PoolRow>,
    /// Task instances queued or running anywhere.
    pub busy_slots: u32,
    /// The earliest `next_due` still in the future.
    pub next_dag_due: Option<Timestamp>,
    /// Pools another scheduler is filling right now: do not queue into them this pass.
    pub busy_pools: Vec<String>,
}

/// What a scheduling pass needs from its caller.
pub struct Pass {
    pub actor: String,
    /// DAGs taken per pass (PostgreSQL); more are left for the next pass or another
    /// scheduler.
    pub batch: u32,
    /// The decision: runs inside the pass's transaction, so it must not block.
    pub plan: Planner,
}

/// Decides what a pass does with what it read.
pub type Planner = Box<dyn FnOnce(&RawSnapshot) -> Vec<Action> + Send>;

/// What a scheduling pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub applied: ApplyReport,
    /// Work was left for the next pass: the batch was full, or a pool was being
    /// filled by another scheduler.
    pub more: bool,
}

/// What applying a plan did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub runs_created: usize,
    pub tasks_queued: usize,
    pub runs_finished: usize,
    /// Actions whose expected state no longer held: another process acted first.
    pub conflicts: usize,
}

/// An attempt a runner took: everything needed to run it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Claimed {
    pub ti_pk: i64,
    pub run_pk: i64,
    pub dag_id: String,
    pub run_id: String,
    pub run_type: RunType,
    pub task_id: String,
    /// -1 unless the task is mapped.
    #[serde(default = "unmapped")]
    pub map_index: i32,
    /// A mapped instance's item (JSON text).
    #[serde(default)]
    pub map_item: Option<String>,
    /// When it last became ready (`scheduled`), for the scheduling delay.
    #[serde(default)]
    pub ready_at: Option<Timestamp>,
    pub try_number: u32,
    pub max_tries: u32,
    pub version: DagVersion,
    pub logical_date: Timestamp,
    pub interval: DataInterval,
    pub conf: serde_json::Map<String, serde_json::Value>,
}

fn unmapped() -> i32 {
    updraft_core::mapping::UNMAPPED
}

/// How an attempt ended, as the store records it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AttemptEnd {
    /// `success`, `failed`, `skipped`, `up_for_retry`, or `scheduled` for an attempt
    /// interrupted by a clean shutdown (it runs again without using up a retry).
    pub state: TaskState,
    pub retry_at: Option<Timestamp>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// The attempt's process and log, when not recorded while it ran (short attempts
    /// finish before it is worth a write of their own).
    pub process: Option<AttemptProcess>,
    /// What a successful attempt handed on (JSON text); replaces any earlier try's.
    #[serde(default)]
    pub output: Option<String>,
    /// A sensor in reschedule mode looked and will look again (`up_for_retry` at
    /// `retry_at`): the look does not use up a retry.
    #[serde(default)]
    pub reschedule: bool,
}

impl AttemptEnd {
    /// The attempt's own recorded state: a reschedule's is `up_for_retry`, other
    /// ends but success and skipped are failures.
    pub fn attempt_state(&self) -> &'static str {
        match self.state {
            TaskState::Success => "success",
            TaskState::Skipped => "skipped",
            _ if self.reschedule => "up_for_retry",
            _ => "failed",
        }
    }
}

/// An attempt's end, addressed by task instance and try number.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FinishedAttempt {
    pub ti_pk: i64,
    pub try_number: u32,
    pub end: AttemptEnd,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AttemptProcess {
    pub pid: u32,
    pub pid_start: Option<u64>,
    pub log_path: Option<String>,
}

/// A running attempt held by a process, for recovery after that process died.
#[derive(Debug, Clone)]
pub struct RunningAttempt {
    pub ti_pk: i64,
    pub run_pk: i64,
    pub dag_id: String,
    pub run_id: String,
    pub run_type: RunType,
    pub task_id: String,
    pub map_index: i32,
    pub try_number: u32,
    pub max_tries: u32,
    pub version: DagVersion,
    pub pid: Option<u32>,
    pub pid_start: Option<u64>,
    pub log_path: Option<String>,
    /// The process holding it.
    pub process_id: Option<i64>,
    pub hostname: Option<String>,
}

/// Who claims: a process, where it runs, which queues it serves (`None`: all).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Claimant {
    pub process_id: i64,
    pub hostname: String,
    pub queues: Option<Vec<String>>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heartbeat {
    /// False once another process declared this one dead: it must stop its attempts.
    pub alive: bool,
    /// Attempts the process listed but no longer holds (failed as zombies, or
    /// replaced): it must kill them, not finish them.
    pub lost: Vec<(i64, u32)>,
}

/// What a clean-up removed (or would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CleanReport {
    pub runs: u64,
    pub task_instances: u64,
    pub attempts: u64,
    pub transitions: u64,
    pub log_pieces: u64,
    pub audit_rows: u64,
    /// Alerts sent (or given up) before the cutoff.
    pub alerts: u64,
    /// `(dag_id, run_id)` of the runs, whose log folders go too.
    #[serde(skip)]
    pub removed_runs: Vec<(String, String)>,
}

impl CleanReport {
    pub fn add(&mut self, other: CleanReport) {
        self.runs += other.runs;
        self.task_instances += other.task_instances;
        self.attempts += other.attempts;
        self.transitions += other.transitions;
        self.log_pieces += other.log_pieces;
        self.audit_rows += other.audit_rows;
        self.alerts += other.alerts;
        self.removed_runs.extend(other.removed_runs);
    }

    pub fn is_empty(&self) -> bool {
        self.runs == 0 && self.audit_rows == 0 && self.alerts == 0
    }
}

/// A piece of an attempt's log, at its byte offset in the log file the attempt
/// writes. Pieces of remote attempts are stored, so the API serves their logs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogChunk {
    pub ti_pk: i64,
    pub try_number: u32,
    pub offset: u64,
    /// Raw bytes (a log need not be UTF-8); base64 on the wire.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

impl LogChunk {
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

/// Joins stored pieces into the log from `from` on, stopping at the first gap (a
/// piece still on its way). Pieces may overlap: a resent piece starts earlier.
pub fn join_log(pieces: &[(u64, Vec<u8>)], from: u64) -> Vec<u8> {
    let mut sorted: Vec<&(u64, Vec<u8>)> = pieces.iter().collect();
    sorted.sort_by_key(|(offset, _)| *offset);
    let mut log = Vec::new();
    let mut at = from;
    for (offset, data) in sorted {
        let end = offset + data.len() as u64;
        if *offset > at {
            break;
        }
        if end > at {
            log.extend_from_slice(&data[(at - offset) as usize..]);
            at = end;
        }
    }
    log
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_joins_its_pieces_up_to_the_first_gap() {
        let pieces = vec![(6, b"world\n".to_vec()), (0, b"hello ".to_vec()), (20, b"later".to_vec())];
        assert_eq!(join_log(&pieces, 0), b"hello world\n");
        assert_eq!(join_log(&pieces, 3), b"lo world\n");
        assert_eq!(join_log(&pieces, 12), b"");
        // A resent piece overlapping what is there adds only what is new.
        let resent = vec![(0, b"hello ".to_vec()), (0, b"hello wor".to_vec()), (6, b"world".to_vec())];
        assert_eq!(join_log(&resent, 0), b"hello world");
    }

    #[test]
    fn a_log_chunk_carries_any_bytes_as_base64() {
        let chunk = LogChunk { ti_pk: 1, try_number: 2, offset: 3, data: vec![0xff, 0, b'a'] };
        let json = serde_json::to_string(&chunk).unwrap();
        assert_eq!(json, r#"{"ti_pk":1,"try_number":2,"offset":3,"data":"/wBh"}"#);
        assert_eq!(serde_json::from_str::<LogChunk>(&json).unwrap(), chunk);
    }
}

/// A state change the alerts may report, with the names a message needs.
#[derive(Debug, Clone)]
pub struct AlertTransition {
    pub id: i64,
    pub at: Timestamp,
    pub run_pk: i64,
    pub ti_pk: Option<i64>,
    pub from_state: Option<String>,
    pub to_state: String,
    pub actor: String,
    pub detail: Option<String>,
    pub dag_id: String,
    pub run_id: String,
    pub run_type: RunType,
    pub version: DagVersion,
    pub interval: DataInterval,
    /// Of a task instance's change; `None` for the run's own.
    pub task_id: Option<String>,
    /// -1: not a mapped instance.
    pub map_index: i32,
    /// The try that ended (the latest begun by then).
    pub try_number: Option<u32>,
}

/// What [`crate::MetadataStore::alert_transitions`] read: every id after the
/// cursor (to see gaps a slower transaction may still fill) and the changes
/// alerts are about.
#[derive(Debug, Clone, Default)]
pub struct AlertTransitions {
    pub ids: Vec<i64>,
    pub events: Vec<AlertTransition>,
}

/// A message to queue; `dedup_key` makes queuing it twice a no-op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    pub dedup_key: String,
    pub notifier: String,
    /// JSON, the message's content.
    pub payload: String,
}

/// A queued message, claimed for sending.
#[derive(Debug, Clone)]
pub struct AlertRow {
    pub id: i64,
    pub notifier: String,
    pub payload: String,
    pub attempts: u32,
    pub created_at: Timestamp,
}

/// What became of a claimed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertOutcome {
    Sent,
    /// Part of a rate-limit summary that was sent.
    Folded,
    /// Try again at `at`.
    Retry {
        at: Timestamp,
        error: String,
    },
    /// Not tried yet (over the rate limit): send at `at`.
    Later {
        at: Timestamp,
    },
    /// Not sent, and not tried again.
    GaveUp {
        error: String,
    },
}

impl AlertOutcome {
    /// Whether this outcome was a try at sending.
    pub(crate) fn counts_as_try(&self) -> bool {
        matches!(self, AlertOutcome::Sent | AlertOutcome::Retry { .. } | AlertOutcome::GaveUp { .. })
    }

    /// The row's new state, next try and error.
    pub(crate) fn columns(&self) -> (&'static str, Option<Timestamp>, Option<&str>) {
        match self {
            AlertOutcome::Sent => ("sent", None, None),
            AlertOutcome::Folded => ("folded", None, None),
            AlertOutcome::Retry { at, error } => ("pending", Some(*at), Some(error)),
            AlertOutcome::Later { at } => ("pending", Some(*at), None),
            AlertOutcome::GaveUp { error } => ("failed", None, Some(error)),
        }
    }
}

/// One background job's progress (`ops_state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsValue {
    pub value: i64,
    pub detail: Option<String>,
}

/// A task instance waiting longer than it should (the digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckTask {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    pub map_index: i32,
    pub state: TaskState,
    /// Since when it has been in that state.
    pub since: Timestamp,
}
