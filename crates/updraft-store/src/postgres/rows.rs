//! PostgreSQL queries used by several operations, and row decoding by position
//! (each column list and its decoder go together).

use sqlx::Row;
use sqlx::postgres::PgRow;
use updraft_core::DataInterval;
use updraft_core::plan::{DagVersion, RunType};

use crate::error::{Result, StoreError};
use crate::model::*;
use crate::time::{from_db, opt_from_db};

macro_rules! dag_select {
    ($tail:literal) => {
        concat!(
            "SELECT dag_id, fileloc, owner, description, schedule, timezone, tags, is_paused, is_active,
                    latest_version, next_due, last_automated_start, last_automated_end FROM dags ",
            $tail
        )
    };
}

pub const DAG_SELECT_ALL: &str = dag_select!("ORDER BY dag_id");
pub const DAG_SELECT_ONE: &str = dag_select!("WHERE dag_id = $1");
/// A batch of DAGs to schedule (due, or with active runs), least recently passed
/// first, skipping those another scheduler holds.
pub const DAG_LOCK_FOR_SCHEDULING: &str = dag_select!(
    "WHERE dag_id IN (SELECT dag_id FROM dags WHERE is_active AND NOT is_paused AND next_due <= $1
                      UNION SELECT dag_id FROM dag_runs WHERE state IN ('queued', 'running') AND run_type <> 'test')
     ORDER BY last_pass_at NULLS FIRST, dag_id
     LIMIT $2
     FOR UPDATE SKIP LOCKED"
);
pub const DAG_SELECT_FOR_RUN: &str = dag_select!("WHERE dag_id = (SELECT dag_id FROM dag_runs WHERE id = $1)");

macro_rules! run_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, dag_id, run_id, run_type, state, version, logical_date, data_interval_start,
                    data_interval_end, conf, owner_process, queued_at, start_date, end_date FROM dag_runs ",
            $tail
        )
    };
}

pub const RUN_SELECT_BY_DAG: &str =
    run_select!("WHERE dag_id = $1 AND ($2::text IS NULL OR state = $2) ORDER BY logical_date DESC, id DESC LIMIT $3");
pub const RUN_SELECT_ONE: &str = run_select!("WHERE dag_id = $1 AND run_id = $2");
pub const RUN_SELECT_BY_PK: &str = run_select!("WHERE id = $1");
pub const RUN_SELECT_BY_PKS: &str = run_select!("WHERE id = ANY($1)");
pub const RUN_SELECT_ACTIVE_OF_DAGS: &str =
    run_select!("WHERE dag_id = ANY($1) AND state IN ('queued', 'running') AND run_type <> 'test'");
pub const RUN_SELECT_RECENT_SCHEDULED: &str =
    run_select!("WHERE run_type = 'scheduled' AND (state IN ('queued', 'running') OR end_date >= $1) ORDER BY id");
pub const RUN_SELECT_FAILED_SINCE: &str =
    run_select!("WHERE state = 'failed' AND end_date >= $1 AND run_type <> 'test' ORDER BY end_date, id");
pub const RUN_SELECT_ACTIVE_ONE: &str = run_select!("WHERE id = $1 AND state IN ('queued', 'running')");

pub const TI_SELECT_BY_RUNS: &str =
    "SELECT id, run_pk, task_id, state, try_number, max_tries, pool, priority, queued_at,
        start_date, end_date, retry_at, process_id, hostname, pid, exit_code, wait_reason, map_index, map_item
     FROM task_instances WHERE run_pk = ANY($1) ORDER BY id";

pub const ATTEMPT_SELECT: &str =
    "SELECT ti_pk, try_number, state, hostname, pid, start_date, end_date, exit_code, reason, log_path
     FROM task_attempts WHERE ti_pk = $1 ORDER BY try_number";

pub const PROCESS_SELECT: &str =
    "SELECT id, kind, hostname, pid, pid_start, state, started_at, heartbeat_at FROM processes
     WHERE $1::text IS NULL OR state = $1 ORDER BY id";

macro_rules! running_attempts {
    ($tail:literal) => {
        concat!(
            "SELECT t.id, t.run_pk, t.task_id, t.try_number, t.max_tries, t.pid, t.pid_start,
                    r.dag_id, r.run_id, r.run_type, r.version, a.log_path, t.process_id, t.hostname, t.map_index
             FROM task_instances t
             JOIN dag_runs r ON r.id = t.run_pk
             LEFT JOIN task_attempts a ON a.ti_pk = t.id AND a.try_number = t.try_number
             WHERE t.state = 'running' ",
            $tail
        )
    };
}

/// Running attempts of a process, with what recovery needs.
pub const RUNNING_ATTEMPTS_OF_PROCESS: &str = running_attempts!("AND t.process_id = $1 ORDER BY t.id");
/// Running attempts whose lease was last renewed before `$1`.
pub const RUNNING_ATTEMPTS_STALE: &str =
    running_attempts!("AND COALESCE(t.heartbeat_at, t.start_date) < $1 ORDER BY t.id");

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} `{value}`"))
}

fn u32_of(value: Option<i64>) -> Option<u32> {
    value.and_then(|value| u32::try_from(value).ok())
}

pub fn dag_row(row: &PgRow) -> Result<DagRow> {
    let tags: String = row.try_get(6)?;
    let start: Option<i64> = row.try_get(11)?;
    let end: Option<i64> = row.try_get(12)?;
    Ok(DagRow {
        dag_id: row.try_get(0)?,
        fileloc: row.try_get(1)?,
        owner: row.try_get(2)?,
        description: row.try_get(3)?,
        schedule: row.try_get(4)?,
        timezone: row.try_get(5)?,
        tags: serde_json::from_str(&tags).map_err(|_| corrupt("tags", &tags))?,
        is_paused: row.try_get(7)?,
        is_active: row.try_get(8)?,
        latest_version: row.try_get(9)?,
        next_due: opt_from_db(row.try_get(10)?),
        last_automated: match (start, end) {
            (Some(start), Some(end)) => Some(DataInterval { start: from_db(start), end: from_db(end) }),
            _ => None,
        },
    })
}

pub fn run_row(row: &PgRow) -> Result<RunRow> {
    let run_type: String = row.try_get(3)?;
    let state: String = row.try_get(4)?;
    let conf: String = row.try_get(9)?;
    let conf = match serde_json::from_str(&conf) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => return Err(corrupt("run conf", &conf)),
    };
    Ok(RunRow {
        run_pk: row.try_get(0)?,
        dag_id: row.try_get(1)?,
        run_id: row.try_get(2)?,
        run_type: RunType::parse(&run_type).ok_or_else(|| corrupt("run type", &run_type))?,
        state: state.parse().map_err(|_| corrupt("run state", &state))?,
        version: DagVersion(row.try_get(5)?),
        logical_date: from_db(row.try_get(6)?),
        interval: DataInterval { start: from_db(row.try_get(7)?), end: from_db(row.try_get(8)?) },
        conf,
        owner_process: row.try_get(10)?,
        queued_at: from_db(row.try_get(11)?),
        start_date: opt_from_db(row.try_get(12)?),
        end_date: opt_from_db(row.try_get(13)?),
    })
}

pub fn ti_row(row: &PgRow) -> Result<TaskInstanceRow> {
    let state: String = row.try_get(3)?;
    Ok(TaskInstanceRow {
        ti_pk: row.try_get(0)?,
        run_pk: row.try_get(1)?,
        task_id: row.try_get(2)?,
        state: state.parse().map_err(|_| corrupt("task state", &state))?,
        try_number: row.try_get::<i32, _>(4)? as u32,
        max_tries: row.try_get::<i32, _>(5)? as u32,
        pool: row.try_get(6)?,
        priority: row.try_get(7)?,
        queued_at: opt_from_db(row.try_get(8)?),
        start_date: opt_from_db(row.try_get(9)?),
        end_date: opt_from_db(row.try_get(10)?),
        retry_at: opt_from_db(row.try_get(11)?),
        process_id: row.try_get(12)?,
        hostname: row.try_get(13)?,
        pid: u32_of(row.try_get(14)?),
        exit_code: row.try_get(15)?,
        wait_reason: row.try_get(16)?,
        map_index: row.try_get(17)?,
        map_item: row.try_get(18)?,
    })
}

pub fn attempt_row(row: &PgRow) -> Result<AttemptRow> {
    let state: String = row.try_get(2)?;
    Ok(AttemptRow {
        ti_pk: row.try_get(0)?,
        try_number: row.try_get::<i32, _>(1)? as u32,
        state: state.parse().map_err(|_| corrupt("task state", &state))?,
        hostname: row.try_get(3)?,
        pid: u32_of(row.try_get(4)?),
        start_date: from_db(row.try_get(5)?),
        end_date: opt_from_db(row.try_get(6)?),
        exit_code: row.try_get(7)?,
        reason: row.try_get(8)?,
        log_path: row.try_get(9)?,
    })
}

pub fn process_row(row: &PgRow) -> Result<ProcessRow> {
    let kind: String = row.try_get(1)?;
    let state: String = row.try_get(5)?;
    Ok(ProcessRow {
        id: row.try_get(0)?,
        kind: ProcessKind::parse(&kind).ok_or_else(|| corrupt("process kind", &kind))?,
        hostname: row.try_get(2)?,
        pid: u32_of(Some(row.try_get(3)?)).unwrap_or_default(),
        pid_start: row.try_get::<Option<i64>, _>(4)?.map(|start| start as u64),
        state: ProcessState::parse(&state).ok_or_else(|| corrupt("process state", &state))?,
        started_at: from_db(row.try_get(6)?),
        heartbeat_at: from_db(row.try_get(7)?),
    })
}

pub fn running_attempt(row: &PgRow) -> Result<RunningAttempt> {
    let run_type: String = row.try_get(9)?;
    Ok(RunningAttempt {
        ti_pk: row.try_get(0)?,
        run_pk: row.try_get(1)?,
        task_id: row.try_get(2)?,
        map_index: row.try_get(14)?,
        try_number: row.try_get::<i32, _>(3)? as u32,
        max_tries: row.try_get::<i32, _>(4)? as u32,
        pid: u32_of(row.try_get(5)?),
        pid_start: row.try_get::<Option<i64>, _>(6)?.map(|start| start as u64),
        dag_id: row.try_get(7)?,
        run_id: row.try_get(8)?,
        run_type: RunType::parse(&run_type).ok_or_else(|| corrupt("run type", &run_type))?,
        version: DagVersion(row.try_get(10)?),
        log_path: row.try_get(11)?,
        process_id: row.try_get(12)?,
        hostname: row.try_get(13)?,
    })
}

/// Transitions alerts report on, in `($1, $2]`, with their run, task and try.
pub const ALERT_TRANSITIONS: &str = "SELECT s.id, s.at, s.run_pk, s.ti_pk, s.from_state, s.to_state, s.actor, s.detail,
        r.dag_id, r.run_id, r.run_type, r.version, r.data_interval_start, r.data_interval_end, t.task_id, t.map_index,
        (SELECT max(a.try_number) FROM task_attempts a WHERE a.ti_pk = s.ti_pk AND a.start_date <= s.at)
     FROM state_transitions s
     JOIN dag_runs r ON r.id = s.run_pk
     LEFT JOIN task_instances t ON t.id = s.ti_pk
     WHERE s.id > $1 AND s.id <= $2 AND r.run_type <> 'test'
       AND ((s.ti_pk IS NOT NULL AND s.to_state IN ('success', 'failed', 'up_for_retry'))
         OR (s.ti_pk IS NULL AND s.to_state IN ('success', 'failed')))
     ORDER BY s.id";

/// Ready or queued for longer than they should be (outside `dags test`).
pub const STUCK_TASK_INSTANCES: &str = "SELECT r.dag_id, r.run_id, t.task_id, t.map_index, t.state, t.since FROM (
        SELECT run_pk, task_id, map_index, state, scheduled_at AS since FROM task_instances
         WHERE state = 'scheduled' AND scheduled_at < $1
        UNION ALL
        SELECT run_pk, task_id, map_index, state, queued_at FROM task_instances
         WHERE state = 'queued' AND queued_at < $1
     ) t JOIN dag_runs r ON r.id = t.run_pk
     WHERE r.run_type <> 'test'
     ORDER BY t.since LIMIT $2";
