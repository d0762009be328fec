//! The embedded store: SQLite in WAL mode.
//!
//! One connection writes (a pool of one, so writers in this process queue without
//! SQLite's busy-wait sleeps) and every write transaction starts with
//! `BEGIN IMMEDIATE`, so writers from other processes (a CLI next to `standalone`)
//! wait on the busy timeout instead of failing half-way. Reads use their own pool
//! and see a consistent snapshot per transaction.

mod rows;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection};
use updraft_core::plan::{Action, DagVersion, RunType};
use updraft_core::state::{check_run_transition, check_task_transition};
use updraft_core::{RunState, TaskState};

use crate::error::{Result, StoreError};
use crate::model::*;
use crate::time::{from_db, opt_from_db, to_db};
use crate::{ChangeWatcher, MetadataStore};
use rows::*;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Takes up to `$1` queued task instances in scope (`$5`: a run, or NULL for every
/// run but `dags test` runs), highest priority first.
const CLAIM: &str = "UPDATE task_instances SET state = 'running', try_number = try_number + 1, process_id = $2,
         hostname = $3, pid = NULL, pid_start = NULL, exit_code = NULL, start_date = $4,
         end_date = NULL, retry_at = NULL, wait_reason = NULL, updated_at = $4
     WHERE state = 'queued' AND id IN (
         SELECT t.id FROM task_instances t JOIN dag_runs r ON r.id = t.run_pk
         WHERE t.state = 'queued'
           AND CASE WHEN $5 IS NULL THEN r.run_type <> 'test' ELSE t.run_pk = $5 END
         ORDER BY t.priority DESC, t.queued_at, t.id LIMIT $1)
     RETURNING id, run_pk, task_id, try_number, max_tries, priority, queued_at";

pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
    options: SqliteConnectOptions,
    location: String,
    in_memory: bool,
}

impl SqliteStore {
    /// `url`: `sqlite://<path>` (relative to `base`) or `sqlite::memory:`.
    pub async fn open(url: &str, base: &Path) -> Result<SqliteStore> {
        let (options, location, in_memory) = if url == "sqlite::memory:" || url == "sqlite://:memory:" {
            (SqliteConnectOptions::new().in_memory(true), ":memory:".to_string(), true)
        } else if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() {
                return Err(StoreError::UnsupportedUrl(url.to_string()));
            }
            let path = base.join(path);
            if let Some(parent) = path.parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent)
                    .map_err(|source| StoreError::CreateFolder { path: parent.display().to_string(), source })?;
            }
            let location = path.display().to_string();
            (SqliteConnectOptions::new().filename(&path).create_if_missing(true), location, false)
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(StdDuration::from_secs(30))
            .foreign_keys(true)
            .pragma("temp_store", "memory");
        let open_error = |source| StoreError::Open { location: location.clone(), source };
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(StdDuration::from_secs(120))
            .connect_with(options.clone())
            .await
            .map_err(open_error)?;
        // An in-memory database exists per connection: share the one.
        let read = if in_memory {
            write.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(StdDuration::from_secs(120))
                .connect_with(options.clone())
                .await
                .map_err(open_error)?
        };
        let store = SqliteStore { write, read, options, location, in_memory };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations. The schema version is mirrored in `user_version`
    /// so an up-to-date database is recognised with one read, without a write lock.
    async fn migrate(&self) -> Result<()> {
        let latest = MIGRATOR.iter().map(|migration| migration.version).max().unwrap_or(0);
        let current: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&self.read).await?;
        if current == latest {
            return Ok(());
        }
        // Two processes may migrate a new database at once; the loser sees the
        // winner's tables and succeeds on a second look.
        let mut attempts = 0;
        loop {
            match MIGRATOR.run(&self.write).await {
                Ok(()) => break,
                Err(_) if attempts < 3 => {
                    attempts += 1;
                    tokio::time::sleep(StdDuration::from_millis(50)).await;
                }
                Err(error) => return Err(StoreError::Migrate(error)),
            }
        }
        let pragma = format!("PRAGMA user_version = {latest}");
        sqlx::query(sqlx::AssertSqlSafe(pragma)).execute(&self.write).await?;
        Ok(())
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.write.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// One row of the state-transition log.
struct Transition<'a> {
    run_pk: i64,
    ti_pk: Option<i64>,
    from: Option<&'a str>,
    to: &'a str,
    actor: &'a str,
    detail: Option<&'a str>,
}

async fn insert_transition(conn: &mut SqliteConnection, transition: Transition<'_>, now: Timestamp) -> Result<()> {
    let mut batch = TransitionBatch::default();
    batch.push(transition);
    batch.flush(conn, now).await
}

/// Transitions written together: one statement for any number of rows, so a plan
/// that moves two hundred tasks costs one insert, not two hundred.
#[derive(Default)]
struct TransitionBatch {
    rows: Vec<serde_json::Value>,
}

impl TransitionBatch {
    fn push(&mut self, transition: Transition<'_>) {
        self.rows.push(serde_json::json!([
            transition.run_pk,
            transition.ti_pk,
            transition.from,
            transition.to,
            transition.actor,
            transition.detail,
        ]));
    }

    async fn flush(&mut self, conn: &mut SqliteConnection, now: Timestamp) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = serde_json::Value::Array(std::mem::take(&mut self.rows)).to_string();
        sqlx::query(
            "INSERT INTO state_transitions (run_pk, ti_pk, at, from_state, to_state, actor, detail)
             SELECT value ->> 0, value ->> 1, $2, value ->> 2, value ->> 3, value ->> 4, value ->> 5
             FROM json_each($1) ORDER BY key",
        )
        .bind(rows)
        .bind(to_db(now))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

async fn insert_run(conn: &mut SqliteConnection, run: &NewRun, actor: &str, now: Timestamp) -> Result<Option<i64>> {
    sqlx::query("INSERT INTO dag_versions (dag_id, version, definition, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
        .bind(run.dag.dag_id().as_str())
        .bind(&run.version.0)
        .bind(run.dag.to_json())
        .bind(to_db(now))
        .execute(&mut *conn)
        .await?;
    let conf = serde_json::Value::Object(run.conf.clone()).to_string();
    let run_pk: Option<i64> = sqlx::query_scalar(
        "INSERT INTO dag_runs (dag_id, run_id, run_type, state, version, logical_date, data_interval_start,
                               data_interval_end, conf, owner_process, queued_at)
         VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT DO NOTHING
         RETURNING id",
    )
    .bind(run.dag.dag_id().as_str())
    .bind(run.run_id.as_str())
    .bind(run.run_type.as_str())
    .bind(&run.version.0)
    .bind(to_db(run.logical_date))
    .bind(to_db(run.interval.start))
    .bind(to_db(run.interval.end))
    .bind(conf)
    .bind(run.owner_process)
    .bind(to_db(now))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(run_pk) = run_pk else {
        return Ok(None);
    };
    let tasks: Vec<serde_json::Value> = run
        .dag
        .tasks()
        .iter()
        .map(|task| {
            let max_tries = if run.with_retries { task.retries } else { 0 };
            serde_json::json!([task.task_id.as_str(), max_tries, task.pool, task.priority])
        })
        .collect();
    sqlx::query(
        "INSERT INTO task_instances (run_pk, task_id, state, try_number, max_tries, pool, priority, updated_at)
         SELECT $1, value ->> 0, 'none', 0, value ->> 1, value ->> 2, value ->> 3, $2 FROM json_each($3) ORDER BY key",
    )
    .bind(run_pk)
    .bind(to_db(now))
    .bind(serde_json::Value::Array(tasks).to_string())
    .execute(&mut *conn)
    .await?;
    let detail = format!("{} run created", run.run_type.as_str());
    insert_transition(
        conn,
        Transition { run_pk, ti_pk: None, from: None, to: RunState::Queued.as_str(), actor, detail: Some(&detail) },
        now,
    )
    .await?;
    Ok(Some(run_pk))
}

#[async_trait]
impl MetadataStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn register_process(&self, process: &NewProcess, now: Timestamp) -> Result<i64> {
        let id = sqlx::query_scalar(
            "INSERT INTO processes (kind, hostname, pid, pid_start, state, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, 'running', $5, $5) RETURNING id",
        )
        .bind(process.kind.as_str())
        .bind(&process.hostname)
        .bind(i64::from(process.pid))
        .bind(process.pid_start.map(|start| start as i64))
        .bind(to_db(now))
        .fetch_one(&self.write)
        .await?;
        Ok(id)
    }

    async fn heartbeat(&self, process_id: i64, now: Timestamp) -> Result<bool> {
        let done = sqlx::query("UPDATE processes SET heartbeat_at = $2 WHERE id = $1 AND state = 'running'")
            .bind(process_id)
            .bind(to_db(now))
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_process_state(
        &self,
        process_id: i64,
        from: ProcessState,
        to: ProcessState,
        now: Timestamp,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE processes SET state = $3, heartbeat_at = MAX(heartbeat_at, $4) WHERE id = $1 AND state = $2",
        )
        .bind(process_id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(to_db(now))
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn processes(&self, state: Option<ProcessState>) -> Result<Vec<ProcessRow>> {
        let rows = sqlx::query(
            "SELECT id, kind, hostname, pid, pid_start, state, started_at, heartbeat_at FROM processes
             WHERE $1 IS NULL OR state = $1 ORDER BY id",
        )
        .bind(state.map(ProcessState::as_str))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(process_row).collect()
    }

    async fn dag_index(&self) -> Result<Vec<DagIndexRow>> {
        let rows =
            sqlx::query("SELECT dag_id, latest_version, fileloc, is_active FROM dags").fetch_all(&self.read).await?;
        rows.iter()
            .map(|row| {
                Ok(DagIndexRow {
                    dag_id: row.try_get("dag_id")?,
                    latest_version: row.try_get("latest_version")?,
                    fileloc: row.try_get("fileloc")?,
                    is_active: row.try_get("is_active")?,
                })
            })
            .collect()
    }

    async fn upsert_dags(&self, dags: &[DagUpsert], now: Timestamp) -> Result<()> {
        if dags.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for upsert in dags {
            let dag = &upsert.dag;
            let spec = dag.spec();
            sqlx::query(
                "INSERT INTO dag_versions (dag_id, version, definition, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
            )
            .bind(dag.dag_id().as_str())
            .bind(&upsert.version.0)
            .bind(dag.to_json())
            .bind(to_db(now))
            .execute(&mut *tx)
            .await?;
            let tags = serde_json::to_string(&spec.tags).expect("tags serialise");
            sqlx::query(
                "INSERT INTO dags (dag_id, fileloc, owner, description, schedule, timezone, tags, is_paused,
                                   is_active, latest_version, next_due, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, TRUE, $9, $10, $10, $10)
                 ON CONFLICT (dag_id) DO UPDATE SET
                     fileloc = excluded.fileloc, owner = excluded.owner, description = excluded.description,
                     schedule = excluded.schedule, timezone = excluded.timezone, tags = excluded.tags,
                     is_active = TRUE, latest_version = excluded.latest_version,
                     next_due = CASE WHEN dags.latest_version <> excluded.latest_version OR NOT dags.is_active
                                     THEN excluded.next_due ELSE dags.next_due END,
                     updated_at = excluded.updated_at
                 WHERE dags.latest_version <> excluded.latest_version OR NOT dags.is_active
                       OR dags.fileloc <> excluded.fileloc",
            )
            .bind(dag.dag_id().as_str())
            .bind(&spec.fileloc)
            .bind(&spec.owner)
            .bind(&spec.description)
            .bind(spec.schedule.text())
            .bind(spec.timezone.name())
            .bind(tags)
            .bind(upsert.paused_if_new)
            .bind(&upsert.version.0)
            .bind(to_db(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn deactivate_dags(&self, dag_ids: &[String], now: Timestamp) -> Result<()> {
        if dag_ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for dag_id in dag_ids {
            sqlx::query("UPDATE dags SET is_active = FALSE, updated_at = $2 WHERE dag_id = $1 AND is_active")
                .bind(dag_id)
                .bind(to_db(now))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn replace_import_errors(&self, errors: &[ImportError], now: Timestamp) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM import_errors").execute(&mut *tx).await?;
        for error in errors {
            sqlx::query("INSERT INTO import_errors (fileloc, message, updated_at) VALUES ($1, $2, $3)")
                .bind(&error.fileloc)
                .bind(&error.message)
                .bind(to_db(now))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn import_errors(&self) -> Result<Vec<ImportError>> {
        let rows =
            sqlx::query("SELECT fileloc, message FROM import_errors ORDER BY fileloc").fetch_all(&self.read).await?;
        rows.iter()
            .map(|row| Ok(ImportError { fileloc: row.try_get("fileloc")?, message: row.try_get("message")? }))
            .collect()
    }

    async fn list_dags(&self) -> Result<Vec<DagRow>> {
        let rows = sqlx::query(DAG_SELECT_ALL).fetch_all(&self.read).await?;
        rows.iter().map(dag_row).collect()
    }

    async fn get_dag(&self, dag_id: &str) -> Result<Option<DagRow>> {
        let row = sqlx::query(DAG_SELECT_ONE).bind(dag_id).fetch_optional(&self.read).await?;
        row.as_ref().map(dag_row).transpose()
    }

    async fn set_paused(&self, dag_id: &str, paused: bool, now: Timestamp) -> Result<bool> {
        let done = sqlx::query("UPDATE dags SET is_paused = $2, updated_at = $3 WHERE dag_id = $1")
            .bind(dag_id)
            .bind(paused)
            .bind(to_db(now))
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn dag_definition(&self, dag_id: &str, version: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT definition FROM dag_versions WHERE dag_id = $1 AND version = $2")
            .bind(dag_id)
            .bind(version)
            .fetch_optional(&self.read)
            .await?)
    }

    async fn create_run(&self, run: &NewRun, actor: &str, now: Timestamp) -> Result<Option<i64>> {
        let mut tx = self.begin_write().await?;
        let run_pk = insert_run(&mut tx, run, actor, now).await?;
        tx.commit().await?;
        Ok(run_pk)
    }

    async fn list_runs(&self, dag_id: &str, state: Option<RunState>, limit: u32) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(RUN_SELECT_BY_DAG)
            .bind(dag_id)
            .bind(state.map(RunState::as_str))
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(run_row).collect()
    }

    async fn get_run(&self, dag_id: &str, run_id: &str) -> Result<Option<RunRow>> {
        let row = sqlx::query(RUN_SELECT_ONE).bind(dag_id).bind(run_id).fetch_optional(&self.read).await?;
        row.as_ref().map(run_row).transpose()
    }

    async fn get_run_by_pk(&self, run_pk: i64) -> Result<Option<RunRow>> {
        let row = sqlx::query(RUN_SELECT_BY_PK).bind(run_pk).fetch_optional(&self.read).await?;
        row.as_ref().map(run_row).transpose()
    }

    async fn task_instances(&self, run_pk: i64) -> Result<Vec<TaskInstanceRow>> {
        let rows = sqlx::query(TI_SELECT_BY_RUN).bind(run_pk).fetch_all(&self.read).await?;
        rows.iter().map(ti_row).collect()
    }

    async fn task_attempts(&self, ti_pk: i64) -> Result<Vec<AttemptRow>> {
        let rows = sqlx::query(
            "SELECT ti_pk, try_number, state, hostname, pid, start_date, end_date, exit_code, reason, log_path
             FROM task_attempts WHERE ti_pk = $1 ORDER BY try_number",
        )
        .bind(ti_pk)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(attempt_row).collect()
    }

    async fn transitions(&self, run_pk: i64, ti_pk: Option<i64>, after_id: i64) -> Result<Vec<TransitionRow>> {
        let rows = sqlx::query(
            "SELECT id, at, ti_pk, from_state, to_state, actor, detail FROM state_transitions
             WHERE run_pk = $1 AND ($2 IS NULL OR ti_pk = $2) AND id > $3 ORDER BY id",
        )
        .bind(run_pk)
        .bind(ti_pk)
        .bind(after_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(TransitionRow {
                    id: row.try_get("id")?,
                    at: from_db(row.try_get("at")?),
                    ti_pk: row.try_get("ti_pk")?,
                    from_state: row.try_get("from_state")?,
                    to_state: row.try_get("to_state")?,
                    actor: row.try_get("actor")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }

    async fn snapshot(&self, scope: Scope, now: Timestamp) -> Result<RawSnapshot> {
        let mut tx = self.read.begin().await?;
        let (runs, tis, dags) = match scope {
            Scope::All => {
                let runs = sqlx::query(RUN_SELECT_ACTIVE).fetch_all(&mut *tx).await?;
                let tis = sqlx::query(TI_SELECT_ACTIVE).fetch_all(&mut *tx).await?;
                let dags = sqlx::query(DAG_SELECT_FOR_SCHEDULING).bind(to_db(now)).fetch_all(&mut *tx).await?;
                (runs, tis, dags)
            }
            Scope::Run(run_pk) => {
                let runs = sqlx::query(RUN_SELECT_ACTIVE_ONE).bind(run_pk).fetch_all(&mut *tx).await?;
                let tis = sqlx::query(TI_SELECT_BY_RUN).bind(run_pk).fetch_all(&mut *tx).await?;
                let dags = sqlx::query(DAG_SELECT_FOR_RUN).bind(run_pk).fetch_all(&mut *tx).await?;
                (runs, tis, dags)
            }
        };
        // A `dags test` run ignores pools and runner capacity, and has no schedule.
        let (pool_rows, busy_rows, next_dag_due) = match scope {
            Scope::All => {
                let pool_rows =
                    sqlx::query("SELECT name, slots, description FROM pools ORDER BY name").fetch_all(&mut *tx).await?;
                let busy_rows = sqlx::query(
                    "SELECT t.pool AS pool, COUNT(*) AS n, SUM(CASE WHEN r.run_type <> 'test' THEN 1 ELSE 0 END) AS n_runner
                     FROM task_instances t JOIN dag_runs r ON r.id = t.run_pk
                     WHERE t.state IN ('queued', 'running') GROUP BY t.pool",
                )
                .fetch_all(&mut *tx)
                .await?;
                let next_dag_due: Option<i64> = sqlx::query_scalar(
                    "SELECT MIN(next_due) FROM dags WHERE is_active AND NOT is_paused AND next_due > $1",
                )
                .bind(to_db(now))
                .fetch_one(&mut *tx)
                .await?;
                (pool_rows, busy_rows, next_dag_due)
            }
            Scope::Run(_) => (Vec::new(), Vec::new(), None),
        };
        tx.commit().await?;

        let mut busy_by_pool = std::collections::HashMap::new();
        let mut busy_slots = 0u32;
        for row in &busy_rows {
            let pool: String = row.try_get("pool")?;
            let n: i64 = row.try_get("n")?;
            let n_runner: i64 = row.try_get("n_runner")?;
            busy_by_pool.insert(pool, n as u32);
            busy_slots += n_runner as u32;
        }
        let pools = pool_rows
            .iter()
            .map(|row| {
                let name: String = row.try_get("name")?;
                let slots: i64 = row.try_get("slots")?;
                Ok(PoolRow {
                    occupied: busy_by_pool.get(&name).copied().unwrap_or(0),
                    name,
                    slots: slots.max(0) as u32,
                    description: row.try_get("description")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RawSnapshot {
            dags: dags.iter().map(dag_row).collect::<Result<_>>()?,
            runs: runs.iter().map(run_row).collect::<Result<_>>()?,
            task_instances: tis.iter().map(ti_row).collect::<Result<_>>()?,
            pools,
            busy_slots,
            next_dag_due: opt_from_db(next_dag_due),
        })
    }

    async fn apply(&self, actions: &[Action], actor: &str, now: Timestamp) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        if actions.is_empty() {
            return Ok(report);
        }
        let mut tx = self.begin_write().await?;
        let mut transitions = TransitionBatch::default();
        let mut state_steps: Vec<Vec<(i64, TaskState, TaskState)>> = Vec::new();
        let mut steps_taken: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
        let mut reasons: std::collections::BTreeMap<Option<String>, Vec<i64>> = std::collections::BTreeMap::new();
        let mut finishes = Vec::new();
        for action in actions {
            match action {
                Action::CreateRun { dag, version, run_id, interval } => {
                    let run = NewRun {
                        dag: dag.clone(),
                        version: version.clone(),
                        run_id: run_id.clone(),
                        run_type: RunType::Scheduled,
                        logical_date: interval.start,
                        interval: *interval,
                        conf: serde_json::Map::new(),
                        owner_process: None,
                        with_retries: true,
                    };
                    match insert_run(&mut tx, &run, actor, now).await? {
                        Some(_) => report.runs_created += 1,
                        None => report.conflicts += 1,
                    }
                }
                Action::SetDagSchedule { dag_id, last_automated, next_due } => {
                    sqlx::query(
                        "UPDATE dags SET last_automated_start = $2, last_automated_end = $3, next_due = $4
                         WHERE dag_id = $1",
                    )
                    .bind(dag_id.as_str())
                    .bind(last_automated.map(|i| to_db(i.start)))
                    .bind(last_automated.map(|i| to_db(i.end)))
                    .bind(next_due.map(to_db))
                    .execute(&mut *tx)
                    .await?;
                }
                Action::StartRun { run_pk } => {
                    check_run_transition(RunState::Queued, RunState::Running)?;
                    let done = sqlx::query(
                        "UPDATE dag_runs SET state = 'running', start_date = $2 WHERE id = $1 AND state = 'queued'",
                    )
                    .bind(run_pk)
                    .bind(to_db(now))
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 1 {
                        transitions.push(Transition {
                            run_pk: *run_pk,
                            ti_pk: None,
                            from: Some("queued"),
                            to: "running",
                            actor,
                            detail: None,
                        });
                    } else {
                        report.conflicts += 1;
                    }
                }
                Action::SetTaskState { ti_pk, from, to } => {
                    check_task_transition(*from, *to)?;
                    let step = steps_taken.entry(*ti_pk).or_insert(0);
                    if state_steps.len() <= *step {
                        state_steps.push(Vec::new());
                    }
                    state_steps[*step].push((*ti_pk, *from, *to));
                    *step += 1;
                }
                Action::SetWaitReason { ti_pk, reason } => {
                    reasons.entry(reason.as_ref().map(|reason| reason.to_json())).or_default().push(*ti_pk);
                }
                Action::FinishRun { .. } => finishes.push(action),
            }
        }
        // Task-instance moves in order per task (a task's second move after its first),
        // each (from, to) group as one compare-and-set statement; then reasons (a move
        // clears the reason, so reasons come after); then finished runs, whose guard
        // reads the moved states.
        for step in state_steps {
            let mut groups: Vec<((TaskState, TaskState), Vec<i64>)> = Vec::new();
            for (ti_pk, from, to) in step {
                match groups.iter_mut().find(|(key, _)| *key == (from, to)) {
                    Some((_, ids)) => ids.push(ti_pk),
                    None => groups.push(((from, to), vec![ti_pk])),
                }
            }
            for ((from, to), ids) in groups {
                let rows: Vec<(i64, i64)> = sqlx::query_as(
                    "UPDATE task_instances SET state = $3, wait_reason = NULL, updated_at = $4,
                         queued_at = CASE WHEN $3 = 'queued' THEN $4 ELSE queued_at END,
                         end_date = CASE WHEN $3 IN ('success', 'failed', 'skipped', 'upstream_failed', 'removed')
                                         THEN $4 ELSE end_date END
                     WHERE id IN (SELECT value FROM json_each($1)) AND state = $2 RETURNING id, run_pk",
                )
                .bind(serde_json::Value::from(ids.clone()).to_string())
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(to_db(now))
                .fetch_all(&mut *tx)
                .await?;
                report.conflicts += ids.len() - rows.len();
                if to == TaskState::Queued {
                    report.tasks_queued += rows.len();
                }
                // Keep the plan's order in the log.
                let moved: std::collections::HashMap<i64, i64> = rows.into_iter().collect();
                for ti_pk in ids {
                    if let Some(run_pk) = moved.get(&ti_pk) {
                        transitions.push(Transition {
                            run_pk: *run_pk,
                            ti_pk: Some(ti_pk),
                            from: Some(from.as_str()),
                            to: to.as_str(),
                            actor,
                            detail: None,
                        });
                    }
                }
            }
        }
        for (reason, ids) in reasons {
            sqlx::query(
                "UPDATE task_instances SET wait_reason = $2
                 WHERE id IN (SELECT value FROM json_each($1)) AND state IN ('none', 'scheduled', 'up_for_retry')",
            )
            .bind(serde_json::Value::from(ids).to_string())
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        }
        for action in finishes {
            let Action::FinishRun { run_pk, state } = action else { continue };
            check_run_transition(RunState::Running, *state)?;
            let done = sqlx::query(
                "UPDATE dag_runs SET state = $2, end_date = $3 WHERE id = $1 AND state = 'running'
                 AND NOT EXISTS (SELECT 1 FROM task_instances
                                 WHERE run_pk = $1 AND state NOT IN ('success', 'failed', 'skipped', 'upstream_failed', 'removed'))",
            )
            .bind(run_pk)
            .bind(state.as_str())
            .bind(to_db(now))
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                report.runs_finished += 1;
                transitions.push(Transition {
                    run_pk: *run_pk,
                    ti_pk: None,
                    from: Some("running"),
                    to: state.as_str(),
                    actor,
                    detail: None,
                });
            } else {
                report.conflicts += 1;
            }
        }
        transitions.flush(&mut tx, now).await?;
        tx.commit().await?;
        Ok(report)
    }

    async fn claim(
        &self,
        scope: Scope,
        process_id: i64,
        hostname: &str,
        limit: u32,
        now: Timestamp,
    ) -> Result<Vec<Claimed>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let only_run = match scope {
            Scope::All => None,
            Scope::Run(run_pk) => Some(run_pk),
        };
        let mut tx = self.begin_write().await?;
        // One statement picks and takes them: highest priority first, then oldest.
        let rows = sqlx::query(CLAIM)
            .bind(i64::from(limit))
            .bind(process_id)
            .bind(hostname)
            .bind(to_db(now))
            .bind(only_run)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        struct Taken {
            ti_pk: i64,
            run_pk: i64,
            task_id: String,
            try_number: i64,
            max_tries: i64,
            order: (std::cmp::Reverse<i64>, Option<i64>, i64),
        }
        let mut taken = rows
            .iter()
            .map(|row| {
                let ti_pk: i64 = row.try_get("id")?;
                Ok(Taken {
                    ti_pk,
                    run_pk: row.try_get("run_pk")?,
                    task_id: row.try_get("task_id")?,
                    try_number: row.try_get("try_number")?,
                    max_tries: row.try_get("max_tries")?,
                    order: (std::cmp::Reverse(row.try_get("priority")?), row.try_get("queued_at")?, ti_pk),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        taken.sort_by_key(|taken| taken.order);
        let ids = serde_json::Value::from(taken.iter().map(|taken| taken.ti_pk).collect::<Vec<_>>()).to_string();
        sqlx::query(
            "INSERT INTO task_attempts (ti_pk, try_number, state, process_id, hostname, start_date)
             SELECT id, try_number, 'running', process_id, hostname, start_date FROM task_instances
             WHERE id IN (SELECT value FROM json_each($1))
             ON CONFLICT (ti_pk, try_number) DO UPDATE SET state = 'running', process_id = excluded.process_id,
                 hostname = excluded.hostname, start_date = excluded.start_date",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        let actor = format!("runner:{process_id}");
        let mut transitions = TransitionBatch::default();
        let mut runs: std::collections::HashMap<i64, RunRow> = std::collections::HashMap::new();
        let mut claimed = Vec::with_capacity(taken.len());
        for taken in taken {
            if let std::collections::hash_map::Entry::Vacant(entry) = runs.entry(taken.run_pk) {
                let run = sqlx::query(RUN_SELECT_BY_PK).bind(taken.run_pk).fetch_one(&mut *tx).await?;
                entry.insert(run_row(&run)?);
            }
            let run = &runs[&taken.run_pk];
            let detail = format!("try {}", taken.try_number);
            transitions.push(Transition {
                run_pk: taken.run_pk,
                ti_pk: Some(taken.ti_pk),
                from: Some("queued"),
                to: "running",
                actor: &actor,
                detail: Some(&detail),
            });
            claimed.push(Claimed {
                ti_pk: taken.ti_pk,
                run_pk: taken.run_pk,
                dag_id: run.dag_id.clone(),
                run_id: run.run_id.clone(),
                run_type: run.run_type,
                task_id: taken.task_id,
                try_number: taken.try_number as u32,
                max_tries: taken.max_tries as u32,
                version: run.version.clone(),
                logical_date: run.logical_date,
                interval: run.interval,
                conf: run.conf.clone(),
            });
        }
        transitions.flush(&mut tx, now).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn record_attempt_process(
        &self,
        ti_pk: i64,
        try_number: u32,
        pid: u32,
        pid_start: Option<u64>,
        log_path: &str,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE task_instances SET pid = $3, pid_start = $4 WHERE id = $1 AND try_number = $2 AND state = 'running'")
            .bind(ti_pk)
            .bind(i64::from(try_number))
            .bind(i64::from(pid))
            .bind(pid_start.map(|start| start as i64))
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE task_attempts SET pid = $3, log_path = $4 WHERE ti_pk = $1 AND try_number = $2")
            .bind(ti_pk)
            .bind(i64::from(try_number))
            .bind(i64::from(pid))
            .bind(log_path)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_attempt(
        &self,
        ti_pk: i64,
        try_number: u32,
        end: &AttemptEnd,
        actor: &str,
        now: Timestamp,
    ) -> Result<bool> {
        check_task_transition(TaskState::Running, end.state)?;
        let mut tx = self.begin_write().await?;
        let run_pk: Option<i64> = sqlx::query_scalar(
            "UPDATE task_instances SET state = $3, end_date = $4, retry_at = $5, exit_code = $6, updated_at = $4,
                 max_tries = CASE WHEN $3 = 'scheduled' THEN max_tries + 1 ELSE max_tries END,
                 pid = COALESCE($7, pid), pid_start = COALESCE($8, pid_start)
             WHERE id = $1 AND try_number = $2 AND state = 'running' RETURNING run_pk",
        )
        .bind(ti_pk)
        .bind(i64::from(try_number))
        .bind(end.state.as_str())
        .bind(to_db(now))
        .bind(end.retry_at.map(to_db))
        .bind(end.exit_code)
        .bind(end.process.as_ref().map(|process| i64::from(process.pid)))
        .bind(end.process.as_ref().and_then(|process| process.pid_start).map(|start| start as i64))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(run_pk) = run_pk else {
            tx.rollback().await?;
            return Ok(false);
        };
        let attempt_state = match end.state {
            TaskState::Success => "success",
            TaskState::Skipped => "skipped",
            _ => "failed",
        };
        sqlx::query(
            "UPDATE task_attempts SET state = $3, end_date = $4, exit_code = $5, reason = $6,
                 pid = COALESCE($7, pid), log_path = COALESCE($8, log_path)
             WHERE ti_pk = $1 AND try_number = $2",
        )
        .bind(ti_pk)
        .bind(i64::from(try_number))
        .bind(attempt_state)
        .bind(to_db(now))
        .bind(end.exit_code)
        .bind(&end.reason)
        .bind(end.process.as_ref().map(|process| i64::from(process.pid)))
        .bind(end.process.as_ref().and_then(|process| process.log_path.clone()))
        .execute(&mut *tx)
        .await?;
        insert_transition(
            &mut tx,
            Transition {
                run_pk,
                ti_pk: Some(ti_pk),
                from: Some("running"),
                to: end.state.as_str(),
                actor,
                detail: end.reason.as_deref(),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn running_attempts(&self, process_id: i64) -> Result<Vec<RunningAttempt>> {
        let rows = sqlx::query(
            "SELECT t.id AS ti_pk, t.run_pk, t.task_id, t.try_number, t.max_tries, t.pid, t.pid_start,
                    r.dag_id, r.run_id, r.run_type, r.version, a.log_path
             FROM task_instances t
             JOIN dag_runs r ON r.id = t.run_pk
             LEFT JOIN task_attempts a ON a.ti_pk = t.id AND a.try_number = t.try_number
             WHERE t.state = 'running' AND t.process_id = $1
             ORDER BY t.id",
        )
        .bind(process_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                let run_type: String = row.try_get("run_type")?;
                Ok(RunningAttempt {
                    ti_pk: row.try_get("ti_pk")?,
                    run_pk: row.try_get("run_pk")?,
                    dag_id: row.try_get("dag_id")?,
                    run_id: row.try_get("run_id")?,
                    run_type: RunType::parse(&run_type)
                        .ok_or_else(|| StoreError::Corrupt(format!("run type `{run_type}`")))?,
                    task_id: row.try_get("task_id")?,
                    try_number: row.try_get::<i64, _>("try_number")? as u32,
                    max_tries: row.try_get::<i64, _>("max_tries")? as u32,
                    version: DagVersion(row.try_get("version")?),
                    pid: row.try_get::<Option<i64>, _>("pid")?.map(|pid| pid as u32),
                    pid_start: row.try_get::<Option<i64>, _>("pid_start")?.map(|start| start as u64),
                    log_path: row.try_get("log_path")?,
                })
            })
            .collect()
    }

    async fn fail_owned_runs(&self, process_id: i64, now: Timestamp) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let runs: Vec<i64> = sqlx::query_scalar(
            "UPDATE dag_runs SET state = 'failed', end_date = $2
             WHERE owner_process = $1 AND state IN ('queued', 'running') RETURNING id",
        )
        .bind(process_id)
        .bind(to_db(now))
        .fetch_all(&mut *tx)
        .await?;
        for run_pk in &runs {
            insert_transition(
                &mut tx,
                Transition {
                    run_pk: *run_pk,
                    ti_pk: None,
                    from: None,
                    to: "failed",
                    actor: "recovery",
                    detail: Some("the process running this test died"),
                },
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(runs.len() as u64)
    }

    async fn pools(&self) -> Result<Vec<PoolRow>> {
        let rows = sqlx::query(
            "SELECT p.name, p.slots, p.description,
                    (SELECT COUNT(*) FROM task_instances t WHERE t.pool = p.name AND t.state IN ('queued', 'running')) AS occupied
             FROM pools p ORDER BY p.name",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PoolRow {
                    name: row.try_get("name")?,
                    slots: row.try_get::<i64, _>("slots")?.max(0) as u32,
                    description: row.try_get("description")?,
                    occupied: row.try_get::<i64, _>("occupied")? as u32,
                })
            })
            .collect()
    }

    async fn set_pool(&self, name: &str, slots: u32, description: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO pools (name, slots, description) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET slots = excluded.slots, description = excluded.description",
        )
        .bind(name)
        .bind(i64::from(slots))
        .bind(description)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn delete_pool(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM pools WHERE name = $1").bind(name).execute(&self.write).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn change_watcher(&self) -> Result<Box<dyn ChangeWatcher>> {
        if self.in_memory {
            return Ok(Box::new(NeverChanges));
        }
        let mut connection = SqliteConnection::connect_with(&self.options).await?;
        let version: i64 = sqlx::query_scalar("PRAGMA data_version").fetch_one(&mut connection).await?;
        Ok(Box::new(DataVersionWatcher { connection, version }))
    }
}

/// Polls SQLite's `data_version`, which changes when another connection commits.
/// One cheap pragma every interval; it is how a running `standalone` notices a
/// trigger or pause from another shell.
struct DataVersionWatcher {
    connection: SqliteConnection,
    version: i64,
}

const WATCH_INTERVAL: StdDuration = StdDuration::from_millis(25);

#[async_trait]
impl ChangeWatcher for DataVersionWatcher {
    async fn changed(&mut self) -> Result<()> {
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let version: i64 = sqlx::query_scalar("PRAGMA data_version").fetch_one(&mut self.connection).await?;
            if version != self.version {
                self.version = version;
                return Ok(());
            }
        }
    }
}

struct NeverChanges;

#[async_trait]
impl ChangeWatcher for NeverChanges {
    async fn changed(&mut self) -> Result<()> {
        std::future::pending().await
    }
}

fn parse_task_state(text: &str) -> Result<TaskState> {
    TaskState::from_str(text).map_err(|error| StoreError::Corrupt(error.to_string()))
}

fn parse_run_state(text: &str) -> Result<RunState> {
    RunState::from_str(text).map_err(|error| StoreError::Corrupt(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queries that run for every task or every scheduler tick must not read
    /// whole history tables: their cost must not grow with finished runs.
    #[tokio::test]
    async fn hot_queries_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open("sqlite://db", dir.path()).await.unwrap();
        let hot: &[(&str, &str)] = &[
            ("claim", CLAIM),
            ("active runs", RUN_SELECT_ACTIVE),
            ("active task instances", TI_SELECT_ACTIVE),
            ("task instances of a run", TI_SELECT_BY_RUN),
            ("DAGs to schedule", DAG_SELECT_FOR_SCHEDULING),
            ("runs of a DAG", RUN_SELECT_BY_DAG),
        ];
        for (name, sql) in hot {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .fetch_all(&store.read)
                    .await
                    .unwrap();
            let lines: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
            // A scan may only walk a partial index over active rows (or a JSON argument).
            let bounded = ["task_instances_queued", "task_instances_busy", "dag_runs_active", "json_each"];
            for line in &lines {
                if line.starts_with("SCAN ") {
                    assert!(
                        bounded.iter().any(|index| line.contains(index)),
                        "{name} scans a table: {line} in {lines:?}"
                    );
                }
            }
        }
    }
}
