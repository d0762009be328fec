//! Queries shared by several operations, and the decoding of their rows.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use updraft_core::DataInterval;
use updraft_core::plan::{DagVersion, RunType};

use super::{parse_run_state, parse_task_state};
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
/// DAGs whose schedule is due, and DAGs with active runs (outside `dags test`).
pub const DAG_SELECT_FOR_SCHEDULING: &str = dag_select!(
    "WHERE (is_active AND NOT is_paused AND next_due <= $1)
        OR dag_id IN (SELECT dag_id FROM dag_runs WHERE state IN ('queued', 'running') AND run_type <> 'test')"
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
    run_select!("WHERE dag_id = $1 AND ($2 IS NULL OR state = $2) ORDER BY logical_date DESC, id DESC LIMIT $3");
pub const RUN_SELECT_ONE: &str = run_select!("WHERE dag_id = $1 AND run_id = $2");
pub const RUN_SELECT_BY_PK: &str = run_select!("WHERE id = $1");
pub const RUN_SELECT_ACTIVE: &str = run_select!("WHERE state IN ('queued', 'running') AND run_type <> 'test'");
pub const RUN_SELECT_ACTIVE_ONE: &str = run_select!("WHERE id = $1 AND state IN ('queued', 'running')");

macro_rules! ti_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, run_pk, task_id, state, try_number, max_tries, pool, priority, queued_at, start_date,
                    end_date, retry_at, process_id, hostname, pid, exit_code, wait_reason FROM task_instances ",
            $tail
        )
    };
}

pub const TI_SELECT_BY_RUN: &str = ti_select!("WHERE run_pk = $1 ORDER BY id");
pub const TI_SELECT_ACTIVE: &str = ti_select!(
    "WHERE run_pk IN (SELECT id FROM dag_runs WHERE state IN ('queued', 'running') AND run_type <> 'test') ORDER BY id"
);

pub fn dag_row(row: &SqliteRow) -> Result<DagRow> {
    let tags: String = row.try_get("tags")?;
    let start: Option<i64> = row.try_get("last_automated_start")?;
    let end: Option<i64> = row.try_get("last_automated_end")?;
    Ok(DagRow {
        dag_id: row.try_get("dag_id")?,
        fileloc: row.try_get("fileloc")?,
        owner: row.try_get("owner")?,
        description: row.try_get("description")?,
        schedule: row.try_get("schedule")?,
        timezone: row.try_get("timezone")?,
        tags: serde_json::from_str(&tags).map_err(|error| StoreError::Corrupt(format!("tags: {error}")))?,
        is_paused: row.try_get("is_paused")?,
        is_active: row.try_get("is_active")?,
        latest_version: row.try_get("latest_version")?,
        next_due: opt_from_db(row.try_get("next_due")?),
        last_automated: match (start, end) {
            (Some(start), Some(end)) => Some(DataInterval { start: from_db(start), end: from_db(end) }),
            _ => None,
        },
    })
}

pub fn run_row(row: &SqliteRow) -> Result<RunRow> {
    let run_type: String = row.try_get("run_type")?;
    let state: String = row.try_get("state")?;
    let conf: String = row.try_get("conf")?;
    let conf = match serde_json::from_str(&conf) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => return Err(StoreError::Corrupt(format!("run conf `{conf}`"))),
    };
    Ok(RunRow {
        run_pk: row.try_get("id")?,
        dag_id: row.try_get("dag_id")?,
        run_id: row.try_get("run_id")?,
        run_type: RunType::parse(&run_type).ok_or_else(|| StoreError::Corrupt(format!("run type `{run_type}`")))?,
        state: parse_run_state(&state)?,
        version: DagVersion(row.try_get("version")?),
        logical_date: from_db(row.try_get("logical_date")?),
        interval: DataInterval {
            start: from_db(row.try_get("data_interval_start")?),
            end: from_db(row.try_get("data_interval_end")?),
        },
        conf,
        owner_process: row.try_get("owner_process")?,
        queued_at: from_db(row.try_get("queued_at")?),
        start_date: opt_from_db(row.try_get("start_date")?),
        end_date: opt_from_db(row.try_get("end_date")?),
    })
}

pub fn ti_row(row: &SqliteRow) -> Result<TaskInstanceRow> {
    let state: String = row.try_get("state")?;
    Ok(TaskInstanceRow {
        ti_pk: row.try_get("id")?,
        run_pk: row.try_get("run_pk")?,
        task_id: row.try_get("task_id")?,
        state: parse_task_state(&state)?,
        try_number: row.try_get::<i64, _>("try_number")? as u32,
        max_tries: row.try_get::<i64, _>("max_tries")? as u32,
        pool: row.try_get("pool")?,
        priority: row.try_get::<i64, _>("priority")? as i32,
        queued_at: opt_from_db(row.try_get("queued_at")?),
        start_date: opt_from_db(row.try_get("start_date")?),
        end_date: opt_from_db(row.try_get("end_date")?),
        retry_at: opt_from_db(row.try_get("retry_at")?),
        process_id: row.try_get("process_id")?,
        hostname: row.try_get("hostname")?,
        pid: row.try_get::<Option<i64>, _>("pid")?.map(|pid| pid as u32),
        exit_code: row.try_get("exit_code")?,
        wait_reason: row.try_get("wait_reason")?,
    })
}

pub fn attempt_row(row: &SqliteRow) -> Result<AttemptRow> {
    let state: String = row.try_get("state")?;
    Ok(AttemptRow {
        ti_pk: row.try_get("ti_pk")?,
        try_number: row.try_get::<i64, _>("try_number")? as u32,
        state: parse_task_state(&state)?,
        hostname: row.try_get("hostname")?,
        pid: row.try_get::<Option<i64>, _>("pid")?.map(|pid| pid as u32),
        start_date: from_db(row.try_get("start_date")?),
        end_date: opt_from_db(row.try_get("end_date")?),
        exit_code: row.try_get("exit_code")?,
        reason: row.try_get("reason")?,
        log_path: row.try_get("log_path")?,
    })
}

pub fn process_row(row: &SqliteRow) -> Result<ProcessRow> {
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    Ok(ProcessRow {
        id: row.try_get("id")?,
        kind: ProcessKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("process kind `{kind}`")))?,
        hostname: row.try_get("hostname")?,
        pid: row.try_get::<i64, _>("pid")? as u32,
        pid_start: row.try_get::<Option<i64>, _>("pid_start")?.map(|start| start as u64),
        state: ProcessState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("process state `{state}`")))?,
        started_at: from_db(row.try_get("started_at")?),
        heartbeat_at: from_db(row.try_get("heartbeat_at")?),
    })
}
