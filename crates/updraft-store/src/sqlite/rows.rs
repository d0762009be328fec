//! Queries used by several operations, and the decoding of their rows by column
//! position (each `*_COLUMNS` list and its decoder go together).

use rusqlite::Row;
use updraft_core::plan::{DagVersion, RunType};
use updraft_core::{DataInterval, RunState, TaskState};

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
pub const DAG_SELECT_ONE: &str = dag_select!("WHERE dag_id = ?1");
/// DAGs whose schedule is due, and DAGs with active runs (outside `dags test`).
pub const DAG_SELECT_FOR_SCHEDULING: &str = dag_select!(
    "WHERE (is_active AND NOT is_paused AND next_due <= ?1)
        OR dag_id IN (SELECT dag_id FROM dag_runs WHERE state IN ('queued', 'running') AND run_type <> 'test')"
);
pub const DAG_SELECT_FOR_RUN: &str = dag_select!("WHERE dag_id = (SELECT dag_id FROM dag_runs WHERE id = ?1)");

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
    run_select!("WHERE dag_id = ?1 AND (?2 IS NULL OR state = ?2) ORDER BY logical_date DESC, id DESC LIMIT ?3");
pub const RUN_SELECT_ONE: &str = run_select!("WHERE dag_id = ?1 AND run_id = ?2");
pub const RUN_SELECT_BY_PK: &str = run_select!("WHERE id = ?1");
pub const RUN_SELECT_ACTIVE: &str = run_select!("WHERE state IN ('queued', 'running') AND run_type <> 'test'");
pub const RUN_SELECT_RECENT_SCHEDULED: &str =
    run_select!("WHERE run_type = 'scheduled' AND (state IN ('queued', 'running') OR end_date >= ?1) ORDER BY id");
pub const RUN_SELECT_FAILED_SINCE: &str =
    run_select!("WHERE state = 'failed' AND end_date >= ?1 AND run_type <> 'test' ORDER BY end_date, id");
pub const RUN_SELECT_ACTIVE_ONE: &str = run_select!("WHERE id = ?1 AND state IN ('queued', 'running')");

macro_rules! ti_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, run_pk, task_id, state, try_number, max_tries, pool, priority, queued_at, start_date,
                    end_date, retry_at, process_id, hostname, pid, exit_code, wait_reason, map_index, map_item
             FROM task_instances ",
            $tail
        )
    };
}

pub const TI_SELECT_BY_RUN: &str = ti_select!("WHERE run_pk = ?1 ORDER BY id");
pub const TI_SELECT_ACTIVE: &str = ti_select!(
    "WHERE run_pk IN (SELECT id FROM dag_runs WHERE state IN ('queued', 'running') AND run_type <> 'test') ORDER BY id"
);

pub const ATTEMPT_SELECT: &str =
    "SELECT ti_pk, try_number, state, hostname, pid, start_date, end_date, exit_code, reason, log_path
     FROM task_attempts WHERE ti_pk = ?1 ORDER BY try_number";

pub const PROCESS_SELECT: &str =
    "SELECT id, kind, hostname, pid, pid_start, state, started_at, heartbeat_at FROM processes
     WHERE ?1 IS NULL OR state = ?1 ORDER BY id";

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} `{value}`"))
}

pub fn parse_task_state(text: &str) -> Result<TaskState> {
    text.parse().map_err(|_| corrupt("task state", text))
}

pub fn parse_run_state(text: &str) -> Result<RunState> {
    text.parse().map_err(|_| corrupt("run state", text))
}

pub fn parse_run_type(text: &str) -> Result<RunType> {
    RunType::parse(text).ok_or_else(|| corrupt("run type", text))
}

pub fn dag_row(row: &Row<'_>) -> Result<DagRow> {
    let tags: String = row.get(6)?;
    let start: Option<i64> = row.get(11)?;
    let end: Option<i64> = row.get(12)?;
    Ok(DagRow {
        dag_id: row.get(0)?,
        fileloc: row.get(1)?,
        owner: row.get(2)?,
        description: row.get(3)?,
        schedule: row.get(4)?,
        timezone: row.get(5)?,
        tags: serde_json::from_str(&tags).map_err(|_| corrupt("tags", &tags))?,
        is_paused: row.get(7)?,
        is_active: row.get(8)?,
        latest_version: row.get(9)?,
        next_due: opt_from_db(row.get(10)?),
        last_automated: match (start, end) {
            (Some(start), Some(end)) => Some(DataInterval { start: from_db(start), end: from_db(end) }),
            _ => None,
        },
    })
}

pub fn run_row(row: &Row<'_>) -> Result<RunRow> {
    let run_type: String = row.get(3)?;
    let state: String = row.get(4)?;
    let conf: String = row.get(9)?;
    let conf = match serde_json::from_str(&conf) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => return Err(corrupt("run conf", &conf)),
    };
    Ok(RunRow {
        run_pk: row.get(0)?,
        dag_id: row.get(1)?,
        run_id: row.get(2)?,
        run_type: parse_run_type(&run_type)?,
        state: parse_run_state(&state)?,
        version: DagVersion(row.get(5)?),
        logical_date: from_db(row.get(6)?),
        interval: DataInterval { start: from_db(row.get(7)?), end: from_db(row.get(8)?) },
        conf,
        owner_process: row.get(10)?,
        queued_at: from_db(row.get(11)?),
        start_date: opt_from_db(row.get(12)?),
        end_date: opt_from_db(row.get(13)?),
    })
}

pub fn ti_row(row: &Row<'_>) -> Result<TaskInstanceRow> {
    let state: String = row.get(3)?;
    Ok(TaskInstanceRow {
        ti_pk: row.get(0)?,
        run_pk: row.get(1)?,
        task_id: row.get(2)?,
        state: parse_task_state(&state)?,
        try_number: row.get(4)?,
        max_tries: row.get(5)?,
        pool: row.get(6)?,
        priority: row.get(7)?,
        queued_at: opt_from_db(row.get(8)?),
        start_date: opt_from_db(row.get(9)?),
        end_date: opt_from_db(row.get(10)?),
        retry_at: opt_from_db(row.get(11)?),
        process_id: row.get(12)?,
        hostname: row.get(13)?,
        pid: row.get(14)?,
        exit_code: row.get(15)?,
        wait_reason: row.get(16)?,
        map_index: row.get(17)?,
        map_item: row.get(18)?,
    })
}

pub fn attempt_row(row: &Row<'_>) -> Result<AttemptRow> {
    let state: String = row.get(2)?;
    Ok(AttemptRow {
        ti_pk: row.get(0)?,
        try_number: row.get(1)?,
        state: parse_task_state(&state)?,
        hostname: row.get(3)?,
        pid: row.get(4)?,
        start_date: from_db(row.get(5)?),
        end_date: opt_from_db(row.get(6)?),
        exit_code: row.get(7)?,
        reason: row.get(8)?,
        log_path: row.get(9)?,
    })
}

pub fn process_row(row: &Row<'_>) -> Result<ProcessRow> {
    let kind: String = row.get(1)?;
    let state: String = row.get(5)?;
    let pid_start: Option<i64> = row.get(4)?;
    Ok(ProcessRow {
        id: row.get(0)?,
        kind: ProcessKind::parse(&kind).ok_or_else(|| corrupt("process kind", &kind))?,
        hostname: row.get(2)?,
        pid: row.get(3)?,
        pid_start: pid_start.map(|start| start as u64),
        state: ProcessState::parse(&state).ok_or_else(|| corrupt("process state", &state))?,
        started_at: from_db(row.get(6)?),
        heartbeat_at: from_db(row.get(7)?),
    })
}

/// Transitions alerts report on, in `(?1, ?2]`, with their run, task and try.
pub const ALERT_TRANSITIONS: &str = "SELECT s.id, s.at, s.run_pk, s.ti_pk, s.from_state, s.to_state, s.actor, s.detail,
        r.dag_id, r.run_id, r.run_type, r.version, r.data_interval_start, r.data_interval_end, t.task_id, t.map_index,
        (SELECT max(a.try_number) FROM task_attempts a WHERE a.ti_pk = s.ti_pk AND a.start_date <= s.at)
     FROM state_transitions s
     JOIN dag_runs r ON r.id = s.run_pk
     LEFT JOIN task_instances t ON t.id = s.ti_pk
     WHERE s.id > ?1 AND s.id <= ?2 AND r.run_type <> 'test'
       AND ((s.ti_pk IS NOT NULL AND s.to_state IN ('success', 'failed', 'up_for_retry'))
         OR (s.ti_pk IS NULL AND s.to_state IN ('success', 'failed')))
     ORDER BY s.id";

/// Ready or queued for longer than they should be (outside `dags test`).
pub const STUCK_TASK_INSTANCES: &str = "SELECT r.dag_id, r.run_id, t.task_id, t.map_index, t.state, t.since FROM (
        SELECT run_pk, task_id, map_index, state, scheduled_at AS since FROM task_instances
         WHERE state = 'scheduled' AND scheduled_at < ?1
        UNION ALL
        SELECT run_pk, task_id, map_index, state, queued_at FROM task_instances
         WHERE state = 'queued' AND queued_at < ?1
     ) t JOIN dag_runs r ON r.id = t.run_pk
     WHERE r.run_type <> 'test'
     ORDER BY t.since LIMIT ?2";
