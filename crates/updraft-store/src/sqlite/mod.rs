//! The embedded store: SQLite in WAL mode, through `rusqlite`.
//!
//! Two connections, each owned by a thread ([`worker::Worker`]): one writes, one
//! reads. Every operation is one closure on one of them, so a transaction costs a
//! single hand-off between threads. Writes start with `BEGIN IMMEDIATE`, so a writer
//! from another process (a CLI next to `standalone`) waits on the busy timeout
//! rather than failing half-way; reads see a consistent snapshot per transaction.
//! Work over many rows is one statement over a JSON array (`json_each`).

mod rows;
mod worker;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params};
use updraft_core::intervene::Intervention;
use updraft_core::plan::{Action, DagVersion};
use updraft_core::state::check_task_transition;
use updraft_core::{RunState, TaskState};

use crate::error::{Result, StoreError};
use crate::grouped::{Expanded, Expansion, StateGroup, group};
use crate::model::*;
use crate::time::{from_db, opt_from_db, to_db};
use crate::{ChangeWatcher, MetadataStore};
use rows::*;
use worker::{Access, Worker};

/// Versioned migrations, applied in order; `PRAGMA user_version` records the last.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_initial.sql")),
    (2, include_str!("../../migrations/sqlite/0002_claim_index.sql")),
    (3, include_str!("../../migrations/sqlite/0003_queues_and_attempt_heartbeats.sql")),
    (4, include_str!("../../migrations/sqlite/0004_log_chunks.sql")),
    (5, include_str!("../../migrations/sqlite/0005_dag_source.sql")),
    (6, include_str!("../../migrations/sqlite/0006_users.sql")),
    (7, include_str!("../../migrations/sqlite/0007_sessions.sql")),
    (8, include_str!("../../migrations/sqlite/0008_api_tokens.sql")),
    (9, include_str!("../../migrations/sqlite/0009_audit_log.sql")),
    (10, include_str!("../../migrations/sqlite/0010_variables_connections.sql")),
    (11, include_str!("../../migrations/sqlite/0011_worker_tokens.sql")),
    (12, include_str!("../../migrations/sqlite/0012_task_outputs.sql")),
    (13, include_str!("../../migrations/sqlite/0013_mapped_tasks.sql")),
    (14, include_str!("../../migrations/sqlite/0014_ready_time.sql")),
    (15, include_str!("../../migrations/sqlite/0015_alerts.sql")),
];

/// Takes up to `?1` queued task instances in scope (`?5`: a run, or NULL for every
/// run but `dags test` runs) and in the claimant's queues (`?6`: a JSON list, or NULL
/// for all), highest priority first.
const CLAIM: &str = "UPDATE task_instances SET state = 'running', try_number = try_number + 1, process_id = ?2,
         hostname = ?3, pid = NULL, pid_start = NULL, exit_code = NULL, start_date = ?4, heartbeat_at = ?4,
         end_date = NULL, retry_at = NULL, wait_reason = NULL, updated_at = ?4
     WHERE state = 'queued' AND id IN (
         SELECT t.id FROM task_instances t JOIN dag_runs r ON r.id = t.run_pk
         WHERE t.state = 'queued'
           AND CASE WHEN ?5 IS NULL THEN r.run_type <> 'test' ELSE t.run_pk = ?5 END
           AND (?6 IS NULL OR t.queue IN (SELECT value FROM json_each(?6)))
         ORDER BY t.priority DESC, t.queued_at, t.id LIMIT ?1)
     RETURNING id, run_pk, task_id, try_number, max_tries, priority, queued_at, map_index, map_item, scheduled_at";

const FINISHED_STATES: &str = "('success', 'failed', 'skipped', 'upstream_failed', 'removed')";

pub struct SqliteStore {
    writer: Worker,
    reader: Worker,
    location: String,
    /// Where a change watcher opens its own connection; `None` in memory.
    path: Option<std::path::PathBuf>,
}

fn configure(connection: &Connection) -> rusqlite::Result<()> {
    // Stable plans: the bundled SQLite is built with STAT4, which otherwise recompiles a
    // statement whenever a value bound against an indexed column changes (every call
    // of most of ours); that was a tenth of a `dags test`'s CPU.
    connection.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    connection.busy_timeout(worker::BUSY_TIMEOUT)?;
    connection.pragma_update(None, "journal_mode", "wal")?;
    connection.pragma_update(None, "synchronous", "normal")?;
    connection.pragma_update(None, "foreign_keys", "on")?;
    connection.pragma_update(None, "temp_store", "memory")?;
    connection.set_prepared_statement_cache_capacity(64);
    Ok(())
}

fn open_connection(path: Option<&Path>) -> rusqlite::Result<Connection> {
    let connection = match path {
        Some(path) => Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?,
        None => Connection::open_in_memory()?,
    };
    configure(&connection)?;
    Ok(connection)
}

/// Applies pending migrations. `BEGIN IMMEDIATE` serialises processes that migrate
/// at the same moment: the second one finds the work done.
fn migrate(connection: &mut Connection) -> Result<()> {
    let latest = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    let current: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if current == latest {
        return Ok(());
    }
    if current > latest {
        return Err(StoreError::SchemaTooNew { found: current, known: latest });
    }
    // A table rebuilt by a migration is dropped and replaced: with foreign keys on,
    // the drop would cascade into its children. The check before commit proves the
    // new table satisfies every reference. (The pragma only changes outside a
    // transaction.)
    connection.pragma_update(None, "foreign_keys", "off")?;
    let migrated = (|| {
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
            tx.execute_batch(sql).map_err(|source| StoreError::Migrate { version: *version, source })?;
            tx.pragma_update(None, "user_version", version)?;
        }
        let broken: Option<String> = tx.query_row("PRAGMA foreign_key_check", [], |row| row.get(0)).optional()?;
        if let Some(table) = broken {
            return Err(StoreError::Corrupt(format!("a migration left rows in `{table}` without their parent")));
        }
        tx.commit()?;
        Ok(())
    })();
    connection.pragma_update(None, "foreign_keys", "on")?;
    migrated
}

impl SqliteStore {
    /// `url`: `sqlite://<path>` (relative to `base`) or `sqlite::memory:`.
    pub async fn open(url: &str, base: &Path) -> Result<SqliteStore> {
        let path = if url == "sqlite::memory:" || url == "sqlite://:memory:" {
            None
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
            Some(path)
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let location = path.as_ref().map_or_else(|| ":memory:".to_string(), |path| path.display().to_string());
        let open = |path: Option<&Path>| {
            open_connection(path).map_err(|source| StoreError::Open { location: location.clone(), source })
        };
        let mut write = open(path.as_deref())?;
        migrate(&mut write)?;
        let writer = Worker::spawn("updraft-store-w", write)?;
        // An in-memory database exists per connection: reads share the writer's.
        let reader = match &path {
            Some(path) => Worker::spawn("updraft-store-r", open(Some(path))?)?,
            None => writer.clone(),
        };
        Ok(SqliteStore { writer, reader, location, path })
    }

    async fn write<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        self.writer.transaction(Access::Write, job).await
    }

    async fn read<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        self.reader.transaction(Access::Read, job).await
    }
}

/// All rows of a query, decoded.
fn all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    decode: impl Fn(&rusqlite::Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode(row)?);
    }
    Ok(out)
}

fn json_ids(ids: &[i64]) -> String {
    serde_json::Value::from(ids.to_vec()).to_string()
}

/// A `users` row, from the columns every user query selects in this order.
fn user_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<UserRow>> {
    let teams: String = row.get(4)?;
    let locked_until: Option<i64> = row.get(7)?;
    let created_at: i64 = row.get(5)?;
    let failed: i64 = row.get(6)?;
    Ok((|| {
        Ok(UserRow {
            user_id: row.get(0)?,
            username: row.get(1)?,
            password_hash: row.get(2)?,
            role: row.get(3)?,
            teams: serde_json::from_str(&teams)
                .map_err(|error| StoreError::Corrupt(format!("teams `{teams}`: {error}")))?,
            created_at: from_db(created_at),
            failed_logins: u32::try_from(failed).unwrap_or(0),
            locked_until: opt_from_db(locked_until),
        })
    })())
}

fn variable_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<VariableRow> {
    Ok(VariableRow { key: row.get(0)?, value: row.get(1)?, description: row.get(2)?, updated_at: from_db(row.get(3)?) })
}

fn connection_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ConnectionRow> {
    Ok(ConnectionRow {
        conn_id: row.get(0)?,
        conn_type: row.get(1)?,
        host: row.get(2)?,
        schema: row.get(3)?,
        login: row.get(4)?,
        password: row.get(5)?,
        port: row.get(6)?,
        extra: row.get(7)?,
        description: row.get(8)?,
    })
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

/// Transitions written together: one statement for any number of rows.
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

    fn flush(&mut self, conn: &Connection, now: Timestamp) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = serde_json::Value::Array(std::mem::take(&mut self.rows)).to_string();
        conn.prepare_cached(
            "INSERT INTO state_transitions (run_pk, ti_pk, at, from_state, to_state, actor, detail)
             SELECT value ->> 0, value ->> 1, ?2, value ->> 2, value ->> 3, value ->> 4, value ->> 5
             FROM json_each(?1) ORDER BY key",
        )?
        .execute(params![rows, to_db(now)])?;
        Ok(())
    }
}

fn insert_transition(conn: &Connection, transition: Transition<'_>, now: Timestamp) -> Result<()> {
    let mut batch = TransitionBatch::default();
    batch.push(transition);
    batch.flush(conn, now)
}

/// Stores a version's definition once; runs pinned to it read it back.
fn insert_version(
    conn: &Connection,
    dag: &updraft_core::Dag,
    version: &DagVersion,
    source: Option<&str>,
    now: Timestamp,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO dag_versions (dag_id, version, definition, source, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (dag_id, version) DO UPDATE SET source = excluded.source
         WHERE dag_versions.source IS NULL AND excluded.source IS NOT NULL",
    )?
    .execute(params![dag.dag_id().as_str(), version.0, dag.to_json(), source, to_db(now)])?;
    Ok(())
}

fn insert_run(conn: &Connection, run: &NewRun, actor: &str, now: Timestamp) -> Result<Option<i64>> {
    insert_version(conn, &run.dag, &run.version, None, now)?;
    let conf = serde_json::Value::Object(run.conf.clone()).to_string();
    let run_pk: Option<i64> = conn
        .prepare_cached(
            "INSERT INTO dag_runs (dag_id, run_id, run_type, state, version, logical_date, data_interval_start,
                                   data_interval_end, conf, owner_process, queued_at)
             VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT DO NOTHING
             RETURNING id",
        )?
        .query_row(
            params![
                run.dag.dag_id().as_str(),
                run.run_id.as_str(),
                run.run_type.as_str(),
                run.version.0,
                to_db(run.logical_date),
                to_db(run.interval.start),
                to_db(run.interval.end),
                conf,
                run.owner_process,
                to_db(now),
            ],
            |row| row.get(0),
        )
        .optional()?;
    let Some(run_pk) = run_pk else { return Ok(None) };
    let tasks: Vec<serde_json::Value> = run
        .dag
        .tasks()
        .iter()
        .map(|task| {
            let max_tries = if run.with_retries { task.retries } else { 0 };
            serde_json::json!([task.task_id.as_str(), max_tries, task.pool, task.priority, task.queue])
        })
        .collect();
    conn.prepare_cached(
        "INSERT INTO task_instances (run_pk, task_id, state, try_number, max_tries, pool, priority, queue, updated_at)
         SELECT ?1, value ->> 0, 'none', 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, ?2
         FROM json_each(?3) ORDER BY key",
    )?
    .execute(params![run_pk, to_db(now), serde_json::Value::Array(tasks).to_string()])?;
    let detail = format!("{} run created", run.run_type.as_str());
    let transition =
        Transition { run_pk, ti_pk: None, from: None, to: RunState::Queued.as_str(), actor, detail: Some(&detail) };
    insert_transition(conn, transition, now)?;
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
        let process = process.clone();
        self.write(move |tx| {
            Ok(tx
                .prepare_cached(
                    "INSERT INTO processes (kind, hostname, pid, pid_start, state, started_at, heartbeat_at)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?5) RETURNING id",
                )?
                .query_row(
                    params![
                        process.kind.as_str(),
                        process.hostname,
                        process.pid,
                        process.pid_start.map(|s| s as i64),
                        to_db(now)
                    ],
                    |row| row.get(0),
                )?)
        })
        .await
    }

    async fn heartbeat(&self, process_id: i64, attempts: &[(i64, u32)], now: Timestamp) -> Result<Heartbeat> {
        let attempts = attempts.to_vec();
        self.write(move |tx| {
            let alive = tx
                .prepare_cached("UPDATE processes SET heartbeat_at = ?2 WHERE id = ?1 AND state = 'running'")?
                .execute(params![process_id, to_db(now)])?
                == 1;
            let mut lost = Vec::new();
            for (ti_pk, try_number) in attempts {
                // The try number fences: a replaced attempt's heartbeat renews nothing.
                let held = tx
                    .prepare_cached(
                        "UPDATE task_instances SET heartbeat_at = ?4
                         WHERE id = ?1 AND try_number = ?2 AND process_id = ?3 AND state = 'running'",
                    )?
                    .execute(params![ti_pk, try_number, process_id, to_db(now)])?;
                if held == 0 {
                    lost.push((ti_pk, try_number));
                }
            }
            Ok(Heartbeat { alive, lost })
        })
        .await
    }

    async fn set_process_state(
        &self,
        process_id: i64,
        from: ProcessState,
        to: ProcessState,
        now: Timestamp,
    ) -> Result<bool> {
        self.write(move |tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE processes SET state = ?3, heartbeat_at = MAX(heartbeat_at, ?4) WHERE id = ?1 AND state = ?2",
                )?
                .execute(params![process_id, from.as_str(), to.as_str(), to_db(now)])?;
            Ok(n == 1)
        })
        .await
    }

    async fn processes(&self, state: Option<ProcessState>) -> Result<Vec<ProcessRow>> {
        self.read(move |tx| all(tx, PROCESS_SELECT, params![state.map(ProcessState::as_str)], process_row)).await
    }

    async fn dag_index(&self) -> Result<Vec<DagIndexRow>> {
        self.read(|tx| {
            all(tx, "SELECT dag_id, latest_version, fileloc, is_active FROM dags", [], |row| {
                Ok(DagIndexRow {
                    dag_id: row.get(0)?,
                    latest_version: row.get(1)?,
                    fileloc: row.get(2)?,
                    is_active: row.get(3)?,
                })
            })
        })
        .await
    }

    async fn upsert_dags(&self, dags: &[DagUpsert], now: Timestamp) -> Result<()> {
        if dags.is_empty() {
            return Ok(());
        }
        let dags = dags.to_vec();
        self.write(move |tx| {
            for upsert in &dags {
                let dag = &upsert.dag;
                let spec = dag.spec();
                insert_version(tx, dag, &upsert.version, upsert.source.as_deref(), now)?;
                let tags = serde_json::to_string(&spec.tags).expect("tags serialise");
                tx.prepare_cached(
                    "INSERT INTO dags (dag_id, fileloc, owner, description, schedule, timezone, tags, is_paused,
                                       is_active, latest_version, next_due, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, TRUE, ?9, ?10, ?10, ?10)
                     ON CONFLICT (dag_id) DO UPDATE SET
                         fileloc = excluded.fileloc, owner = excluded.owner, description = excluded.description,
                         schedule = excluded.schedule, timezone = excluded.timezone, tags = excluded.tags,
                         is_active = TRUE, latest_version = excluded.latest_version,
                         next_due = CASE WHEN dags.latest_version <> excluded.latest_version OR NOT dags.is_active
                                         THEN excluded.next_due ELSE dags.next_due END,
                         updated_at = excluded.updated_at
                     WHERE dags.latest_version <> excluded.latest_version OR NOT dags.is_active
                           OR dags.fileloc <> excluded.fileloc",
                )?
                .execute(params![
                    dag.dag_id().as_str(),
                    spec.fileloc,
                    spec.owner,
                    spec.description,
                    spec.schedule.text(),
                    spec.timezone.name(),
                    tags,
                    upsert.paused_if_new,
                    upsert.version.0,
                    to_db(now),
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn deactivate_dags(&self, dag_ids: &[String], now: Timestamp) -> Result<()> {
        if dag_ids.is_empty() {
            return Ok(());
        }
        let dag_ids = dag_ids.to_vec();
        self.write(move |tx| {
            for dag_id in &dag_ids {
                tx.prepare_cached(
                    "UPDATE dags SET is_active = FALSE, updated_at = ?2 WHERE dag_id = ?1 AND is_active",
                )?
                .execute(params![dag_id, to_db(now)])?;
            }
            Ok(())
        })
        .await
    }

    async fn replace_import_errors(&self, errors: &[ImportError], now: Timestamp) -> Result<()> {
        let errors = errors.to_vec();
        self.write(move |tx| {
            tx.execute("DELETE FROM import_errors", [])?;
            for error in &errors {
                tx.prepare_cached("INSERT INTO import_errors (fileloc, message, updated_at) VALUES (?1, ?2, ?3)")?
                    .execute(params![error.fileloc, error.message, to_db(now)])?;
            }
            Ok(())
        })
        .await
    }

    async fn import_errors(&self) -> Result<Vec<ImportError>> {
        self.read(|tx| {
            all(tx, "SELECT fileloc, message FROM import_errors ORDER BY fileloc", [], |row| {
                Ok(ImportError { fileloc: row.get(0)?, message: row.get(1)? })
            })
        })
        .await
    }

    async fn list_dags(&self) -> Result<Vec<DagRow>> {
        self.read(|tx| all(tx, DAG_SELECT_ALL, [], dag_row)).await
    }

    async fn get_dag(&self, dag_id: &str) -> Result<Option<DagRow>> {
        let dag_id = dag_id.to_string();
        self.read(move |tx| Ok(all(tx, DAG_SELECT_ONE, params![dag_id], dag_row)?.pop())).await
    }

    async fn set_paused(&self, dag_id: &str, paused: bool, now: Timestamp) -> Result<bool> {
        let dag_id = dag_id.to_string();
        self.write(move |tx| {
            let n = tx
                .prepare_cached("UPDATE dags SET is_paused = ?2, updated_at = ?3 WHERE dag_id = ?1")?
                .execute(params![dag_id, paused, to_db(now)])?;
            Ok(n > 0)
        })
        .await
    }

    async fn dag_source(&self, dag_id: &str, version: &str) -> Result<Option<String>> {
        let (dag_id, version) = (dag_id.to_string(), version.to_string());
        self.read(move |tx| {
            Ok(tx
                .prepare_cached("SELECT source FROM dag_versions WHERE dag_id = ?1 AND version = ?2")?
                .query_row(params![dag_id, version], |row| row.get::<_, Option<String>>(0))
                .optional()?
                .flatten())
        })
        .await
    }

    async fn dag_definition(&self, dag_id: &str, version: &str) -> Result<Option<String>> {
        let (dag_id, version) = (dag_id.to_string(), version.to_string());
        self.read(move |tx| {
            Ok(tx
                .prepare_cached("SELECT definition FROM dag_versions WHERE dag_id = ?1 AND version = ?2")?
                .query_row(params![dag_id, version], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    async fn create_user(&self, user: &NewUser, now: Timestamp) -> Result<Option<i64>> {
        let user = user.clone();
        self.write(move |tx| {
            let teams = serde_json::to_string(&user.teams).expect("teams serialise");
            Ok(tx
                .prepare_cached(
                    "INSERT INTO users (username, password_hash, role, teams, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (username) DO NOTHING RETURNING id",
                )?
                .query_row(params![user.username, user.password_hash, user.role, teams, to_db(now)], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    async fn users(&self) -> Result<Vec<UserRow>> {
        self.read(move |tx| {
            let mut statement = tx.prepare_cached(concat!(
                "SELECT id, username, password_hash, role, teams, created_at, failed_logins, locked_until ",
                "FROM users ORDER BY username"
            ))?;
            let rows = statement.query_map([], user_row)?;
            rows.map(|row| row.map_err(StoreError::from).and_then(|row| row)).collect()
        })
        .await
    }

    async fn get_user(&self, username: &str) -> Result<Option<UserRow>> {
        let username = username.to_string();
        self.read(move |tx| {
            let found = tx
                .prepare_cached(concat!(
                    "SELECT id, username, password_hash, role, teams, created_at, failed_logins, locked_until ",
                    "FROM users WHERE username = ?1"
                ))?
                .query_row(params![username], user_row)
                .optional()?;
            found.transpose()
        })
        .await
    }

    async fn delete_user(&self, username: &str) -> Result<bool> {
        let username = username.to_string();
        self.write(move |tx| {
            Ok(tx.prepare_cached("DELETE FROM users WHERE username = ?1")?.execute(params![username])? > 0)
        })
        .await
    }

    async fn set_password(&self, username: &str, password_hash: &str) -> Result<bool> {
        let (username, hash) = (username.to_string(), password_hash.to_string());
        self.write(move |tx| {
            Ok(tx
                .prepare_cached(
                    "UPDATE users SET password_hash = ?2, failed_logins = 0, locked_until = NULL WHERE username = ?1",
                )?
                .execute(params![username, hash])?
                > 0)
        })
        .await
    }

    async fn set_login_state(&self, username: &str, failed_logins: u32, locked_until: Option<Timestamp>) -> Result<()> {
        let username = username.to_string();
        self.write(move |tx| {
            tx.prepare_cached("UPDATE users SET failed_logins = ?2, locked_until = ?3 WHERE username = ?1")?
                .execute(params![username, failed_logins, locked_until.map(to_db)])?;
            Ok(())
        })
        .await
    }

    async fn create_session(
        &self,
        token_hash: &str,
        user_id: i64,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<()> {
        let token_hash = token_hash.to_string();
        self.write(move |tx| {
            tx.prepare_cached("DELETE FROM sessions WHERE expires_at < ?1")?.execute(params![to_db(now)])?;
            tx.prepare_cached(
                "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![token_hash, user_id, to_db(now), to_db(expires_at)])?;
            Ok(())
        })
        .await
    }

    async fn session_user(&self, token_hash: &str, now: Timestamp) -> Result<Option<UserRow>> {
        let token_hash = token_hash.to_string();
        self.read(move |tx| {
            let found = tx
                .prepare_cached(concat!(
                    "SELECT u.id, u.username, u.password_hash, u.role, u.teams, u.created_at, u.failed_logins, ",
                    "u.locked_until FROM sessions s JOIN users u ON u.id = s.user_id ",
                    "WHERE s.token_hash = ?1 AND s.expires_at > ?2"
                ))?
                .query_row(params![token_hash, to_db(now)], user_row)
                .optional()?;
            found.transpose()
        })
        .await
    }

    async fn delete_session(&self, token_hash: &str) -> Result<()> {
        let token_hash = token_hash.to_string();
        self.write(move |tx| {
            tx.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?.execute(params![token_hash])?;
            Ok(())
        })
        .await
    }

    async fn create_api_token(
        &self,
        username: &str,
        name: &str,
        token_hash: &str,
        scope: &str,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<i64>> {
        let (username, name, hash, scope) =
            (username.to_string(), name.to_string(), token_hash.to_string(), scope.to_string());
        self.write(move |tx| {
            Ok(tx
                .prepare_cached(
                    "INSERT INTO api_tokens (user_id, name, token_hash, scope, created_at, expires_at)
                     SELECT id, ?2, ?3, ?4, ?5, ?6 FROM users WHERE username = ?1 RETURNING id",
                )?
                .query_row(params![username, name, hash, scope, to_db(now), expires_at.map(to_db)], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    async fn api_tokens(&self, username: Option<&str>) -> Result<Vec<ApiTokenRow>> {
        let username = username.map(str::to_string);
        self.read(move |tx| {
            let mut statement = tx.prepare_cached(
                "SELECT t.id, u.username, t.name, t.scope, t.created_at, t.expires_at, t.last_used_at
                 FROM api_tokens t JOIN users u ON u.id = t.user_id
                 WHERE ?1 IS NULL OR u.username = ?1 ORDER BY t.id DESC",
            )?;
            let rows = statement.query_map(params![username], |row| {
                Ok(ApiTokenRow {
                    token_id: row.get(0)?,
                    username: row.get(1)?,
                    name: row.get(2)?,
                    scope: row.get(3)?,
                    created_at: from_db(row.get(4)?),
                    expires_at: opt_from_db(row.get(5)?),
                    last_used_at: opt_from_db(row.get(6)?),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn api_token_user(&self, token_hash: &str, now: Timestamp) -> Result<Option<(UserRow, String)>> {
        let token_hash = token_hash.to_string();
        self.write(move |tx| {
            let found = tx
                .prepare_cached(
                    "UPDATE api_tokens SET last_used_at = ?2
                     WHERE token_hash = ?1 AND (expires_at IS NULL OR expires_at > ?2) RETURNING user_id, scope",
                )?
                .query_row(params![token_hash, to_db(now)], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))
                .optional()?;
            let Some((user_id, scope)) = found else { return Ok(None) };
            let user = tx
                .prepare_cached(concat!(
                    "SELECT id, username, password_hash, role, teams, created_at, failed_logins, locked_until ",
                    "FROM users WHERE id = ?1"
                ))?
                .query_row(params![user_id], user_row)
                .optional()?
                .transpose()?;
            Ok(user.map(|user| (user, scope)))
        })
        .await
    }

    async fn delete_api_token(&self, token_id: i64) -> Result<bool> {
        self.write(move |tx| {
            Ok(tx.prepare_cached("DELETE FROM api_tokens WHERE id = ?1")?.execute(params![token_id])? > 0)
        })
        .await
    }

    async fn create_worker_token(
        &self,
        name: &str,
        token_hash: &str,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<i64> {
        let (name, hash) = (name.to_string(), token_hash.to_string());
        self.write(move |tx| {
            Ok(tx
                .prepare_cached(
                    "INSERT INTO worker_tokens (name, token_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)
                     RETURNING id",
                )?
                .query_row(params![name, hash, to_db(now), expires_at.map(to_db)], |row| row.get(0))?)
        })
        .await
    }

    async fn worker_tokens(&self) -> Result<Vec<WorkerTokenRow>> {
        self.read(move |tx| {
            let mut statement = tx.prepare_cached(
                "SELECT id, name, created_at, expires_at, last_used_at FROM worker_tokens ORDER BY id DESC",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(WorkerTokenRow {
                    token_id: row.get(0)?,
                    name: row.get(1)?,
                    created_at: from_db(row.get(2)?),
                    expires_at: opt_from_db(row.get(3)?),
                    last_used_at: opt_from_db(row.get(4)?),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn worker_token_id(&self, token_hash: &str, now: Timestamp) -> Result<Option<i64>> {
        let token_hash = token_hash.to_string();
        let found = self
            .read({
                let token_hash = token_hash.clone();
                move |tx| {
                    Ok(tx
                        .prepare_cached(
                            "SELECT id, last_used_at FROM worker_tokens
                             WHERE token_hash = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                        )?
                        .query_row(params![token_hash, to_db(now)], |row| {
                            Ok((row.get::<_, i64>(0)?, row.get::<_, Option<i64>>(1)?))
                        })
                        .optional()?)
                }
            })
            .await?;
        let Some((id, last_used)) = found else { return Ok(None) };
        if last_used.is_none_or(|last| last < to_db(now) - crate::TOKEN_USE_EVERY) {
            self.write(move |tx| {
                tx.prepare_cached("UPDATE worker_tokens SET last_used_at = ?2 WHERE id = ?1")?
                    .execute(params![id, to_db(now)])?;
                Ok(())
            })
            .await?;
        }
        Ok(Some(id))
    }

    async fn delete_worker_token(&self, token_id: i64) -> Result<bool> {
        self.write(move |tx| {
            Ok(tx.prepare_cached("DELETE FROM worker_tokens WHERE id = ?1")?.execute(params![token_id])? > 0)
        })
        .await
    }

    async fn set_variable(&self, key: &str, value: &str, description: &str, now: Timestamp) -> Result<()> {
        let (key, value, description) = (key.to_string(), value.to_string(), description.to_string());
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO variables (key, value, description, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, description = excluded.description,
                     updated_at = excluded.updated_at",
            )?
            .execute(params![key, value, description, to_db(now)])?;
            Ok(())
        })
        .await
    }

    async fn variables(&self) -> Result<Vec<VariableRow>> {
        self.read(move |tx| {
            let mut statement =
                tx.prepare_cached("SELECT key, value, description, updated_at FROM variables ORDER BY key")?;
            let rows = statement.query_map([], variable_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn variable(&self, key: &str) -> Result<Option<VariableRow>> {
        let key = key.to_string();
        self.read(move |tx| {
            Ok(tx
                .prepare_cached("SELECT key, value, description, updated_at FROM variables WHERE key = ?1")?
                .query_row(params![key], variable_row)
                .optional()?)
        })
        .await
    }

    async fn delete_variable(&self, key: &str) -> Result<bool> {
        let key = key.to_string();
        self.write(move |tx| Ok(tx.prepare_cached("DELETE FROM variables WHERE key = ?1")?.execute(params![key])? > 0))
            .await
    }

    async fn set_connection(&self, connection: &ConnectionRow, now: Timestamp) -> Result<()> {
        let c = connection.clone();
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO connections (conn_id, conn_type, host, schema_name, login, password, port, extra,
                                          description, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (conn_id) DO UPDATE SET conn_type = excluded.conn_type, host = excluded.host,
                     schema_name = excluded.schema_name, login = excluded.login, password = excluded.password,
                     port = excluded.port, extra = excluded.extra, description = excluded.description,
                     updated_at = excluded.updated_at",
            )?
            .execute(params![
                c.conn_id,
                c.conn_type,
                c.host,
                c.schema,
                c.login,
                c.password,
                c.port,
                c.extra,
                c.description,
                to_db(now)
            ])?;
            Ok(())
        })
        .await
    }

    async fn connections(&self) -> Result<Vec<ConnectionRow>> {
        self.read(move |tx| {
            let mut statement = tx.prepare_cached(concat!(
                "SELECT conn_id, conn_type, host, schema_name, login, password, port, extra, description ",
                "FROM connections ORDER BY conn_id"
            ))?;
            let rows = statement.query_map([], connection_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn connection(&self, conn_id: &str) -> Result<Option<ConnectionRow>> {
        let conn_id = conn_id.to_string();
        self.read(move |tx| {
            Ok(tx
                .prepare_cached(concat!(
                    "SELECT conn_id, conn_type, host, schema_name, login, password, port, extra, description ",
                    "FROM connections WHERE conn_id = ?1"
                ))?
                .query_row(params![conn_id], connection_row)
                .optional()?)
        })
        .await
    }

    async fn delete_connection(&self, conn_id: &str) -> Result<bool> {
        let conn_id = conn_id.to_string();
        self.write(move |tx| {
            Ok(tx.prepare_cached("DELETE FROM connections WHERE conn_id = ?1")?.execute(params![conn_id])? > 0)
        })
        .await
    }

    async fn audit(&self, entry: &AuditEntry, now: Timestamp) -> Result<()> {
        let entry = entry.clone();
        self.write(move |tx| {
            tx.prepare_cached("INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)")?
                .execute(params![to_db(now), entry.actor, entry.action, entry.target, entry.detail])?;
            Ok(())
        })
        .await
    }

    async fn audit_log(&self, before_id: Option<i64>, limit: u32) -> Result<Vec<AuditRow>> {
        self.read(move |tx| {
            let mut statement = tx.prepare_cached(
                "SELECT id, at, actor, action, target, detail FROM audit_log
                 WHERE ?1 IS NULL OR id < ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = statement.query_map(params![before_id, limit], |row| {
                Ok(AuditRow {
                    id: row.get(0)?,
                    at: from_db(row.get(1)?),
                    entry: AuditEntry {
                        actor: row.get(2)?,
                        action: row.get(3)?,
                        target: row.get(4)?,
                        detail: row.get(5)?,
                    },
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn create_run(&self, run: &NewRun, actor: &str, now: Timestamp) -> Result<Option<i64>> {
        let (run, actor) = (run.clone(), actor.to_string());
        self.write(move |tx| insert_run(tx, &run, &actor, now)).await
    }

    async fn list_runs(&self, dag_id: &str, state: Option<RunState>, limit: u32) -> Result<Vec<RunRow>> {
        let dag_id = dag_id.to_string();
        self.read(move |tx| all(tx, RUN_SELECT_BY_DAG, params![dag_id, state.map(RunState::as_str), limit], run_row))
            .await
    }

    async fn get_run(&self, dag_id: &str, run_id: &str) -> Result<Option<RunRow>> {
        let (dag_id, run_id) = (dag_id.to_string(), run_id.to_string());
        self.read(move |tx| Ok(all(tx, RUN_SELECT_ONE, params![dag_id, run_id], run_row)?.pop())).await
    }

    async fn get_run_by_pk(&self, run_pk: i64) -> Result<Option<RunRow>> {
        self.read(move |tx| Ok(all(tx, RUN_SELECT_BY_PK, params![run_pk], run_row)?.pop())).await
    }

    async fn task_instances(&self, run_pk: i64) -> Result<Vec<TaskInstanceRow>> {
        self.read(move |tx| all(tx, TI_SELECT_BY_RUN, params![run_pk], ti_row)).await
    }

    async fn task_attempts(&self, ti_pk: i64) -> Result<Vec<AttemptRow>> {
        self.read(move |tx| all(tx, ATTEMPT_SELECT, params![ti_pk], attempt_row)).await
    }

    async fn transitions(&self, run_pk: i64, ti_pk: Option<i64>, after_id: i64) -> Result<Vec<TransitionRow>> {
        self.read(move |tx| {
            all(
                tx,
                "SELECT id, at, ti_pk, from_state, to_state, actor, detail FROM state_transitions
                 WHERE run_pk = ?1 AND (?2 IS NULL OR ti_pk = ?2) AND id > ?3 ORDER BY id",
                params![run_pk, ti_pk, after_id],
                |row| {
                    Ok(TransitionRow {
                        id: row.get(0)?,
                        at: crate::time::from_db(row.get(1)?),
                        ti_pk: row.get(2)?,
                        from_state: row.get(3)?,
                        to_state: row.get(4)?,
                        actor: row.get(5)?,
                        detail: row.get(6)?,
                    })
                },
            )
        })
        .await
    }

    async fn schedule_pass(&self, scope: Scope, now: Timestamp, pass: Pass) -> Result<PassReport> {
        // SQLite has one writer at a time: the pass takes the write lock and with it
        // every DAG; there is no batch to leave for others.
        self.write(move |tx| {
            let snapshot = read_snapshot(tx, scope, now)?;
            let actions = (pass.plan)(&snapshot);
            let applied = apply(tx, &actions, &pass.actor, now)?;
            Ok(PassReport { applied, more: false })
        })
        .await
    }

    async fn apply(&self, actions: &[Action], actor: &str, now: Timestamp) -> Result<ApplyReport> {
        if actions.is_empty() {
            return Ok(ApplyReport::default());
        }
        let (actions, actor) = (actions.to_vec(), actor.to_string());
        self.write(move |tx| apply(tx, &actions, &actor, now)).await
    }

    async fn claim(&self, scope: Scope, claimant: &Claimant, limit: u32, now: Timestamp) -> Result<Vec<Claimed>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let claimant = claimant.clone();
        self.write(move |tx| claim(tx, scope, &claimant, limit, now)).await
    }

    async fn record_attempt_process(
        &self,
        ti_pk: i64,
        try_number: u32,
        pid: u32,
        pid_start: Option<u64>,
        log_path: &str,
    ) -> Result<bool> {
        let log_path = log_path.to_string();
        self.write(move |tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE task_instances SET pid = ?3, pid_start = ?4 WHERE id = ?1 AND try_number = ?2 AND state = 'running'",
                )?
                .execute(params![ti_pk, try_number, pid, pid_start.map(|start| start as i64)])?;
            tx.prepare_cached("UPDATE task_attempts SET pid = ?3, log_path = ?4 WHERE ti_pk = ?1 AND try_number = ?2")?
                .execute(params![ti_pk, try_number, pid, log_path])?;
            Ok(n == 1)
        })
        .await
    }

    async fn run_outputs(&self, dag_id: &str, run_id: &str) -> Result<std::collections::BTreeMap<String, String>> {
        let (dag_id, run_id) = (dag_id.to_string(), run_id.to_string());
        self.read(move |tx| {
            let run_pk: Option<i64> = tx
                .prepare_cached("SELECT id FROM dag_runs WHERE dag_id = ?1 AND run_id = ?2")?
                .query_row(params![dag_id, run_id], |row| row.get(0))
                .optional()?;
            match run_pk {
                Some(run_pk) => outputs_of_run(tx, run_pk),
                None => Ok(Default::default()),
            }
        })
        .await
    }

    async fn finish_attempts(&self, ends: &[FinishedAttempt], actor: &str, now: Timestamp) -> Result<Vec<bool>> {
        for finished in ends {
            check_task_transition(TaskState::Running, finished.end.state)?;
        }
        let (ends, actor) = (ends.to_vec(), actor.to_string());
        self.write(move |tx| {
            let mut transitions = TransitionBatch::default();
            let mut done = Vec::with_capacity(ends.len());
            for FinishedAttempt { ti_pk, try_number, end } in &ends {
                let pid = end.process.as_ref().map(|process| process.pid);
                let pid_start = end.process.as_ref().and_then(|process| process.pid_start).map(|start| start as i64);
                let run_pk: Option<i64> = tx
                    .prepare_cached(
                        "UPDATE task_instances SET state = ?3, end_date = ?4, retry_at = ?5, exit_code = ?6, updated_at = ?4,
                             max_tries = CASE WHEN ?3 = 'scheduled' OR ?9 THEN max_tries + 1 ELSE max_tries END,
                             pid = COALESCE(?7, pid), pid_start = COALESCE(?8, pid_start)
                         WHERE id = ?1 AND try_number = ?2 AND state = 'running' RETURNING run_pk",
                    )?
                    .query_row(
                        params![
                            ti_pk,
                            try_number,
                            end.state.as_str(),
                            to_db(now),
                            end.retry_at.map(to_db),
                            end.exit_code,
                            pid,
                            pid_start,
                            end.reschedule
                        ],
                        |row| row.get(0),
                    )
                    .optional()?;
                let Some(run_pk) = run_pk else {
                    done.push(false);
                    continue;
                };
                let attempt_state = end.attempt_state();
                tx.prepare_cached(
                    "UPDATE task_attempts SET state = ?3, end_date = ?4, exit_code = ?5, reason = ?6,
                         pid = COALESCE(?7, pid), log_path = COALESCE(?8, log_path)
                     WHERE ti_pk = ?1 AND try_number = ?2",
                )?
                .execute(params![
                    ti_pk,
                    try_number,
                    attempt_state,
                    to_db(now),
                    end.exit_code,
                    end.reason,
                    pid,
                    end.process.as_ref().and_then(|process| process.log_path.clone()),
                ])?;
                // A new output replaces the last; a later try without one clears it.
                match &end.output {
                    Some(output) => {
                        tx.prepare_cached(
                            "INSERT INTO task_outputs (ti_pk, value) VALUES (?1, ?2)
                             ON CONFLICT (ti_pk) DO UPDATE SET value = excluded.value",
                        )?
                        .execute(params![ti_pk, output])?;
                    }
                    None if *try_number > 1 => {
                        tx.prepare_cached("DELETE FROM task_outputs WHERE ti_pk = ?1")?.execute(params![ti_pk])?;
                    }
                    None => {}
                }
                transitions.push(Transition {
                    run_pk,
                    ti_pk: Some(*ti_pk),
                    from: Some("running"),
                    to: end.state.as_str(),
                    actor: &actor,
                    detail: end.reason.as_deref(),
                });
                done.push(true);
            }
            transitions.flush(tx, now)?;
            Ok(done)
        })
        .await
    }

    async fn running_attempts(&self, process_id: i64) -> Result<Vec<RunningAttempt>> {
        self.read(move |tx| {
            all(
                tx,
                &format!("{RUNNING_ATTEMPTS} AND t.process_id = ?1 ORDER BY t.id"),
                params![process_id],
                running_attempt,
            )
        })
        .await
    }

    async fn adopt_attempt(
        &self,
        ti_pk: i64,
        try_number: u32,
        from: i64,
        claimant: &Claimant,
        now: Timestamp,
    ) -> Result<Option<Claimed>> {
        let claimant = claimant.clone();
        self.write(move |tx| {
            let taken = tx
                .prepare_cached(
                    "UPDATE task_instances SET process_id = ?4, hostname = ?5, heartbeat_at = ?6, updated_at = ?6
                     WHERE id = ?1 AND try_number = ?2 AND process_id = ?3 AND state = 'running'
                     RETURNING run_pk, task_id, max_tries, map_index, map_item, scheduled_at",
                )?
                .query_row(
                    params![ti_pk, try_number, from, claimant.process_id, claimant.hostname, to_db(now)],
                    |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, u32>(2)?,
                            row.get::<_, i32>(3)?,
                            row.get::<_, Option<String>>(4)?,
                            row.get::<_, Option<i64>>(5)?,
                        ))
                    },
                )
                .optional()?;
            let Some((run_pk, task_id, max_tries, map_index, map_item, ready_at)) = taken else { return Ok(None) };
            tx.prepare_cached(
                "UPDATE task_attempts SET process_id = ?3, hostname = ?4 WHERE ti_pk = ?1 AND try_number = ?2",
            )?
            .execute(params![ti_pk, try_number, claimant.process_id, claimant.hostname])?;
            let run = all(tx, RUN_SELECT_BY_PK, params![run_pk], run_row)?
                .pop()
                .ok_or_else(|| StoreError::Corrupt(format!("task instance of missing run {run_pk}")))?;
            Ok(Some(Claimed {
                ti_pk,
                run_pk,
                dag_id: run.dag_id,
                run_id: run.run_id,
                run_type: run.run_type,
                task_id,
                map_index,
                map_item,
                ready_at: ready_at.map(crate::time::from_db),
                try_number,
                max_tries,
                version: run.version,
                logical_date: run.logical_date,
                interval: run.interval,
                conf: run.conf,
            }))
        })
        .await
    }

    async fn stale_attempts(&self, cutoff: Timestamp) -> Result<Vec<RunningAttempt>> {
        self.read(move |tx| {
            all(
                tx,
                &format!("{RUNNING_ATTEMPTS} AND COALESCE(t.heartbeat_at, t.start_date) < ?1 ORDER BY t.id"),
                params![to_db(cutoff)],
                running_attempt,
            )
        })
        .await
    }

    async fn fail_owned_runs(&self, process_id: i64, now: Timestamp) -> Result<u64> {
        self.write(move |tx| {
            let runs = all(
                tx,
                "UPDATE dag_runs SET state = 'failed', end_date = ?2
                 WHERE owner_process = ?1 AND state IN ('queued', 'running') RETURNING id",
                params![process_id, to_db(now)],
                |row| Ok(row.get::<_, i64>(0)?),
            )?;
            let mut transitions = TransitionBatch::default();
            for run_pk in &runs {
                transitions.push(Transition {
                    run_pk: *run_pk,
                    ti_pk: None,
                    from: None,
                    to: "failed",
                    actor: "recovery",
                    detail: Some("the process running this test died"),
                });
            }
            transitions.flush(tx, now)?;
            Ok(runs.len() as u64)
        })
        .await
    }

    async fn append_logs(&self, chunks: &[LogChunk]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let chunks = chunks.to_vec();
        self.write(move |tx| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO task_log_chunks (ti_pk, try_number, byte_offset, data) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
            )?;
            for chunk in &chunks {
                insert.execute(params![chunk.ti_pk, chunk.try_number, chunk.offset as i64, chunk.data])?;
            }
            Ok(())
        })
        .await
    }

    async fn read_log(&self, ti_pk: i64, try_number: u32, from: u64) -> Result<Option<Vec<u8>>> {
        self.read(move |tx| {
            let pieces = all(
                tx,
                "SELECT byte_offset, data FROM task_log_chunks WHERE ti_pk = ?1 AND try_number = ?2
                 AND byte_offset + length(data) > ?3 ORDER BY byte_offset",
                params![ti_pk, try_number, from as i64],
                |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, Vec<u8>>(1)?)),
            )?;
            if pieces.is_empty() {
                let any: Option<i64> = tx
                    .prepare_cached("SELECT 1 FROM task_log_chunks WHERE ti_pk = ?1 AND try_number = ?2 LIMIT 1")?
                    .query_row(params![ti_pk, try_number], |row| row.get(0))
                    .optional()?;
                return Ok(any.map(|_| Vec::new()));
            }
            Ok(Some(join_log(&pieces, from)))
        })
        .await
    }

    async fn pools(&self) -> Result<Vec<PoolRow>> {
        self.read(|tx| {
            all(
                tx,
                "SELECT p.name, p.slots, p.description,
                        (SELECT COUNT(*) FROM task_instances t WHERE t.pool = p.name AND t.state IN ('queued', 'running'))
                 FROM pools p ORDER BY p.name",
                [],
                |row| {
                    Ok(PoolRow {
                        name: row.get(0)?,
                        slots: row.get::<_, i64>(1)?.max(0) as u32,
                        description: row.get(2)?,
                        occupied: row.get(3)?,
                    })
                },
            )
        })
        .await
    }

    async fn set_pool(&self, name: &str, slots: u32, description: &str) -> Result<()> {
        let (name, description) = (name.to_string(), description.to_string());
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO pools (name, slots, description) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET slots = excluded.slots, description = excluded.description",
            )?
            .execute(params![name, slots, description])?;
            Ok(())
        })
        .await
    }

    async fn intervene(&self, run_pk: i64, change: &Intervention, actor: &str, now: Timestamp) -> Result<()> {
        crate::grouped::check_intervention(change)?;
        let (change, actor) = (change.clone(), actor.to_string());
        self.write(move |tx| {
            let mut transitions = TransitionBatch::default();
            for (ti_pk, from, to) in &change.tasks {
                let end_date = if to.is_finished() { Some(to_db(now)) } else { None };
                // Back to `none`: the next try starts from a clean row.
                let moved = tx
                    .prepare_cached(
                        "UPDATE task_instances SET state = ?3, updated_at = ?4, end_date = ?5, wait_reason = NULL,
                             retry_at = NULL,
                             queued_at = CASE WHEN ?3 = 'none' THEN NULL ELSE queued_at END,
                             start_date = CASE WHEN ?3 = 'none' THEN NULL ELSE start_date END,
                             exit_code = CASE WHEN ?3 = 'none' THEN NULL ELSE exit_code END
                         WHERE id = ?1 AND run_pk = ?6 AND state = ?2",
                    )?
                    .execute(params![ti_pk, from.as_str(), to.as_str(), to_db(now), end_date, run_pk])?;
                if moved != 1 {
                    return Err(StoreError::Changed(format!("task instance {ti_pk}")));
                }
                transitions.push(Transition {
                    run_pk,
                    ti_pk: Some(*ti_pk),
                    from: Some(from.as_str()),
                    to: to.as_str(),
                    actor: &actor,
                    detail: Some("set by an operator"),
                });
            }
            for (ti_pk, max_tries) in &change.max_tries {
                tx.prepare_cached("UPDATE task_instances SET max_tries = ?2 WHERE id = ?1")?
                    .execute(params![ti_pk, max_tries])?;
            }
            for ti_pk in &change.unexpand {
                tx.prepare_cached(
                    "UPDATE task_instances SET map_index = -1, map_item = NULL WHERE id = ?1 AND map_index = 0",
                )?
                .execute(params![ti_pk])?;
            }
            if let Some((from, to)) = change.run {
                let end_date = if to.is_finished() { Some(to_db(now)) } else { None };
                let moved = tx
                    .prepare_cached("UPDATE dag_runs SET state = ?3, end_date = ?4 WHERE id = ?1 AND state = ?2")?
                    .execute(params![run_pk, from.as_str(), to.as_str(), end_date])?;
                if moved != 1 {
                    return Err(StoreError::Changed(format!("run {run_pk}")));
                }
                transitions.push(Transition {
                    run_pk,
                    ti_pk: None,
                    from: Some(from.as_str()),
                    to: to.as_str(),
                    actor: &actor,
                    detail: Some("set by an operator"),
                });
            }
            transitions.flush(tx, now)
        })
        .await
    }

    async fn delete_run(&self, run_pk: i64) -> Result<bool> {
        self.write(move |tx| {
            Ok(tx
                .prepare_cached("DELETE FROM dag_runs WHERE id = ?1 AND state IN ('success', 'failed')")?
                .execute(params![run_pk])?
                > 0)
        })
        .await
    }

    async fn clean_batch(&self, cutoff: Timestamp, batch: u32, dry_run: bool) -> Result<CleanReport> {
        self.write(move |tx| {
            let runs: Vec<(i64, String, String)> = all(
                tx,
                "SELECT id, dag_id, run_id FROM dag_runs
                 WHERE state IN ('success', 'failed') AND end_date < ?1 ORDER BY end_date LIMIT ?2",
                params![to_db(cutoff), batch],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?;
            let ids = json_ids(&runs.iter().map(|(id, _, _)| *id).collect::<Vec<_>>());
            let count = |sql: &str| -> Result<u64> {
                Ok(tx.prepare_cached(sql)?.query_row(params![ids], |row| row.get::<_, i64>(0))? as u64)
            };
            let in_runs = "(SELECT value FROM json_each(?1))";
            let mut report = CleanReport {
                runs: runs.len() as u64,
                task_instances: count(&format!("SELECT count(*) FROM task_instances WHERE run_pk IN {in_runs}"))?,
                attempts: count(&format!(
                    "SELECT count(*) FROM task_attempts WHERE ti_pk IN (SELECT id FROM task_instances WHERE run_pk IN {in_runs})"
                ))?,
                transitions: count(&format!("SELECT count(*) FROM state_transitions WHERE run_pk IN {in_runs}"))?,
                log_pieces: count(&format!(
                    "SELECT count(*) FROM task_log_chunks WHERE ti_pk IN (SELECT id FROM task_instances WHERE run_pk IN {in_runs})"
                ))?,
                audit_rows: 0,
                alerts: 0,
                removed_runs: runs.iter().map(|(_, dag_id, run_id)| (dag_id.clone(), run_id.clone())).collect(),
            };
            let audit: Vec<i64> = all(
                tx,
                "SELECT id FROM audit_log WHERE at < ?1 ORDER BY id LIMIT ?2",
                params![to_db(cutoff), batch],
                |row| Ok(row.get(0)?),
            )?;
            report.audit_rows = audit.len() as u64;
            let alerts: Vec<i64> = all(
                tx,
                "SELECT id FROM alert_outbox WHERE state <> 'pending' AND created_at < ?1 ORDER BY id LIMIT ?2",
                params![to_db(cutoff), batch],
                |row| Ok(row.get(0)?),
            )?;
            report.alerts = alerts.len() as u64;
            if !dry_run {
                tx.prepare_cached("DELETE FROM alert_outbox WHERE id IN (SELECT value FROM json_each(?1))")?
                    .execute(params![json_ids(&alerts)])?;
                tx.prepare_cached(&format!("DELETE FROM dag_runs WHERE id IN {in_runs}"))?.execute(params![ids])?;
                tx.prepare_cached("DELETE FROM audit_log WHERE id IN (SELECT value FROM json_each(?1))")?
                    .execute(params![json_ids(&audit)])?;
            }
            Ok(report)
        })
        .await
    }

    async fn alert_transitions(&self, after_id: i64, limit: u32) -> Result<AlertTransitions> {
        self.read(move |tx| {
            let ids = all(
                tx,
                "SELECT id FROM state_transitions WHERE id > ?1 ORDER BY id LIMIT ?2",
                params![after_id, limit],
                |row| Ok(row.get(0)?),
            )?;
            let Some(last) = ids.last().copied() else { return Ok(AlertTransitions::default()) };
            let events = all(tx, ALERT_TRANSITIONS, params![after_id, last], |row| {
                Ok(AlertTransition {
                    id: row.get(0)?,
                    at: from_db(row.get(1)?),
                    run_pk: row.get(2)?,
                    ti_pk: row.get(3)?,
                    from_state: row.get(4)?,
                    to_state: row.get(5)?,
                    actor: row.get(6)?,
                    detail: row.get(7)?,
                    dag_id: row.get(8)?,
                    run_id: row.get(9)?,
                    run_type: parse_run_type(&row.get::<_, String>(10)?)?,
                    version: DagVersion(row.get(11)?),
                    interval: updraft_core::DataInterval { start: from_db(row.get(12)?), end: from_db(row.get(13)?) },
                    task_id: row.get(14)?,
                    map_index: row.get::<_, Option<i32>>(15)?.unwrap_or(-1),
                    try_number: row.get::<_, Option<u32>>(16)?,
                })
            })?;
            Ok(AlertTransitions { ids, events })
        })
        .await
    }

    async fn last_transition_id(&self) -> Result<i64> {
        self.read(|tx| Ok(tx.query_row("SELECT COALESCE(max(id), 0) FROM state_transitions", [], |row| row.get(0))?))
            .await
    }

    async fn enqueue_alerts(&self, alerts: &[NewAlert], now: Timestamp) -> Result<Vec<bool>> {
        let alerts = alerts.to_vec();
        self.write(move |tx| {
            let mut statement = tx.prepare_cached(
                "INSERT INTO alert_outbox (dedup_key, notifier, payload, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (dedup_key) DO NOTHING",
            )?;
            let mut new = Vec::with_capacity(alerts.len());
            for alert in &alerts {
                new.push(statement.execute(params![alert.dedup_key, alert.notifier, alert.payload, to_db(now)])? > 0);
            }
            Ok(new)
        })
        .await
    }

    async fn claim_alerts(&self, now: Timestamp, lease_until: Timestamp, limit: u32) -> Result<Vec<AlertRow>> {
        self.write(move |tx| {
            all(
                tx,
                "UPDATE alert_outbox SET claimed_until = ?2
                 WHERE id IN (SELECT id FROM alert_outbox
                              WHERE state = 'pending' AND next_attempt_at <= ?1
                                AND (claimed_until IS NULL OR claimed_until <= ?1)
                              ORDER BY id LIMIT ?3)
                 RETURNING id, notifier, payload, attempts, created_at",
                params![to_db(now), to_db(lease_until), limit],
                alert_row,
            )
        })
        .await
        .map(|mut rows| {
            rows.sort_by_key(|row| row.id);
            rows
        })
    }

    async fn alerts_sent_since(&self, notifier: &str, since: Timestamp) -> Result<u64> {
        let notifier = notifier.to_string();
        self.read(move |tx| {
            let count: i64 = tx
                .prepare_cached(
                    "SELECT count(*) FROM alert_outbox WHERE state = 'sent' AND notifier = ?1 AND sent_at >= ?2",
                )?
                .query_row(params![notifier, to_db(since)], |row| row.get(0))?;
            Ok(count as u64)
        })
        .await
    }

    async fn settle_alerts(&self, outcomes: &[(i64, AlertOutcome)], now: Timestamp) -> Result<()> {
        let outcomes = outcomes.to_vec();
        self.write(move |tx| {
            for (id, outcome) in &outcomes {
                let (state, next, error) = outcome.columns();
                tx.prepare_cached(
                    "UPDATE alert_outbox SET state = ?2, next_attempt_at = COALESCE(?3, next_attempt_at),
                         last_error = COALESCE(?4, last_error), claimed_until = NULL, attempts = attempts + ?5,
                         sent_at = CASE WHEN ?2 IN ('sent', 'folded') THEN ?6 ELSE sent_at END
                     WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    state,
                    next.map(to_db),
                    error,
                    i64::from(outcome.counts_as_try()),
                    to_db(now)
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn alert_counts(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        self.read(|tx| {
            Ok(all(tx, "SELECT state, count(*) FROM alert_outbox GROUP BY state", [], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
            })?
            .into_iter()
            .collect())
        })
        .await
    }

    async fn record_deadline_miss(&self, run_pk: i64, task_id: Option<&str>, now: Timestamp) -> Result<bool> {
        let task_id = task_id.unwrap_or_default().to_string();
        self.write(move |tx| {
            Ok(tx
                .prepare_cached(
                    "INSERT INTO deadline_misses (run_pk, task_id, detected_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![run_pk, task_id, to_db(now)])?
                > 0)
        })
        .await
    }

    async fn recent_scheduled_runs(&self, since: Timestamp) -> Result<Vec<RunRow>> {
        self.read(move |tx| all(tx, RUN_SELECT_RECENT_SCHEDULED, params![to_db(since)], run_row)).await
    }

    async fn failed_runs_since(&self, since: Timestamp) -> Result<Vec<RunRow>> {
        self.read(move |tx| all(tx, RUN_SELECT_FAILED_SINCE, params![to_db(since)], run_row)).await
    }

    async fn stuck_task_instances(&self, before: Timestamp, limit: u32) -> Result<Vec<StuckTask>> {
        self.read(move |tx| {
            all(tx, STUCK_TASK_INSTANCES, params![to_db(before), limit], |row| {
                Ok(StuckTask {
                    dag_id: row.get(0)?,
                    run_id: row.get(1)?,
                    task_id: row.get(2)?,
                    map_index: row.get(3)?,
                    state: parse_task_state(&row.get::<_, String>(4)?)?,
                    since: from_db(row.get(5)?),
                })
            })
        })
        .await
    }

    async fn ops_value(&self, name: &str) -> Result<Option<OpsValue>> {
        let name = name.to_string();
        self.read(move |tx| {
            Ok(tx
                .prepare_cached("SELECT value, detail FROM ops_state WHERE name = ?1")?
                .query_row(params![name], |row| Ok(OpsValue { value: row.get(0)?, detail: row.get(1)? }))
                .optional()?)
        })
        .await
    }

    async fn set_ops_value(&self, name: &str, expected: Option<i64>, value: &OpsValue) -> Result<bool> {
        let (name, value) = (name.to_string(), value.clone());
        self.write(move |tx| {
            let changed = match expected {
                None => tx
                    .prepare_cached(
                        "INSERT INTO ops_state (name, value, detail) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    )?
                    .execute(params![name, value.value, value.detail])?,
                Some(expected) => tx
                    .prepare_cached("UPDATE ops_state SET value = ?2, detail = ?3 WHERE name = ?1 AND value = ?4")?
                    .execute(params![name, value.value, value.detail, expected])?,
            };
            Ok(changed > 0)
        })
        .await
    }

    async fn delete_pool(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.write(move |tx| Ok(tx.prepare_cached("DELETE FROM pools WHERE name = ?1")?.execute(params![name])? > 0))
            .await
    }

    async fn change_watcher(&self) -> Result<Box<dyn ChangeWatcher>> {
        let Some(path) = &self.path else { return Ok(Box::new(NeverChanges)) };
        let connection = open_connection(Some(path))
            .map_err(|source| StoreError::Open { location: self.location.clone(), source })?;
        let version: i64 = connection.query_row("PRAGMA data_version", [], |row| row.get(0))?;
        Ok(Box::new(DataVersionWatcher { worker: Worker::spawn("updraft-store-watch", connection)?, version }))
    }
}

fn alert_row(row: &rusqlite::Row<'_>) -> Result<AlertRow> {
    Ok(AlertRow {
        id: row.get(0)?,
        notifier: row.get(1)?,
        payload: row.get(2)?,
        attempts: row.get(3)?,
        created_at: from_db(row.get(4)?),
    })
}

/// Running attempts with what recovery needs; callers add a condition and order.
const RUNNING_ATTEMPTS: &str = "SELECT t.id, t.run_pk, t.task_id, t.try_number, t.max_tries, t.pid, t.pid_start,
        r.dag_id, r.run_id, r.run_type, r.version, a.log_path, t.process_id, t.hostname, t.map_index
     FROM task_instances t
     JOIN dag_runs r ON r.id = t.run_pk
     LEFT JOIN task_attempts a ON a.ti_pk = t.id AND a.try_number = t.try_number
     WHERE t.state = 'running'";

fn running_attempt(row: &rusqlite::Row<'_>) -> Result<RunningAttempt> {
    let run_type: String = row.get(9)?;
    let pid_start: Option<i64> = row.get(6)?;
    Ok(RunningAttempt {
        ti_pk: row.get(0)?,
        run_pk: row.get(1)?,
        task_id: row.get(2)?,
        map_index: row.get(14)?,
        try_number: row.get(3)?,
        max_tries: row.get(4)?,
        pid: row.get(5)?,
        pid_start: pid_start.map(|start| start as u64),
        dag_id: row.get(7)?,
        run_id: row.get(8)?,
        run_type: parse_run_type(&run_type)?,
        version: DagVersion(row.get(10)?),
        log_path: row.get(11)?,
        process_id: row.get(12)?,
        hostname: row.get(13)?,
    })
}

/// Active runs in scope, their task instances, the DAGs to schedule, and pools.
fn read_snapshot(tx: &Transaction<'_>, scope: Scope, now: Timestamp) -> Result<RawSnapshot> {
    let (runs, task_instances, dags) = match scope {
        Scope::All => (
            all(tx, RUN_SELECT_ACTIVE, [], run_row)?,
            all(tx, TI_SELECT_ACTIVE, [], ti_row)?,
            all(tx, DAG_SELECT_FOR_SCHEDULING, params![to_db(now)], dag_row)?,
        ),
        Scope::Run(run_pk) => (
            all(tx, RUN_SELECT_ACTIVE_ONE, params![run_pk], run_row)?,
            all(tx, TI_SELECT_BY_RUN, params![run_pk], ti_row)?,
            all(tx, DAG_SELECT_FOR_RUN, params![run_pk], dag_row)?,
        ),
    };
    // A `dags test` run ignores pools and runner capacity, and has no schedule.
    let Scope::All = scope else {
        return Ok(RawSnapshot { dags, runs, task_instances, ..RawSnapshot::default() });
    };
    let busy = all(
        tx,
        "SELECT t.pool, COUNT(*), SUM(CASE WHEN r.run_type <> 'test' THEN 1 ELSE 0 END)
         FROM task_instances t JOIN dag_runs r ON r.id = t.run_pk
         WHERE t.state IN ('queued', 'running') GROUP BY t.pool",
        [],
        |row| Ok((row.get::<_, String>(0)?, row.get::<_, u32>(1)?, row.get::<_, u32>(2)?)),
    )?;
    let busy_by_pool: HashMap<String, u32> = busy.iter().map(|(pool, n, _)| (pool.clone(), *n)).collect();
    let pools = all(tx, "SELECT name, slots, description FROM pools ORDER BY name", [], |row| {
        let name: String = row.get(0)?;
        Ok(PoolRow {
            occupied: busy_by_pool.get(&name).copied().unwrap_or(0),
            name,
            slots: row.get::<_, i64>(1)?.max(0) as u32,
            description: row.get(2)?,
        })
    })?;
    let next_dag_due: Option<i64> = tx
        .prepare_cached("SELECT MIN(next_due) FROM dags WHERE is_active AND NOT is_paused AND next_due > ?1")?
        .query_row(params![to_db(now)], |row| row.get(0))?;
    Ok(RawSnapshot {
        dags,
        runs,
        task_instances,
        pools,
        busy_slots: busy.iter().map(|(_, _, runner)| runner).sum(),
        next_dag_due: opt_from_db(next_dag_due),
        busy_pools: Vec::new(),
    })
}

/// Applies a plan, grouped as `grouped::group` explains.
fn apply(tx: &Transaction<'_>, actions: &[Action], actor: &str, now: Timestamp) -> Result<ApplyReport> {
    let grouped = group(actions)?;
    let mut report = ApplyReport::default();
    let mut transitions = TransitionBatch::default();
    for run in &grouped.creates {
        match insert_run(tx, run, actor, now)? {
            Some(_) => report.runs_created += 1,
            None => report.conflicts += 1,
        }
    }
    for (dag_id, last_automated, next_due) in &grouped.schedules {
        tx.prepare_cached(
            "UPDATE dags SET last_automated_start = ?2, last_automated_end = ?3, next_due = ?4 WHERE dag_id = ?1",
        )?
        .execute(params![
            dag_id.as_str(),
            last_automated.map(|interval| to_db(interval.start)),
            last_automated.map(|interval| to_db(interval.end)),
            next_due.map(to_db),
        ])?;
    }
    for run_pk in &grouped.starts {
        let n = tx
            .prepare_cached(
                "UPDATE dag_runs SET state = 'running', start_date = ?2 WHERE id = ?1 AND state = 'queued'",
            )?
            .execute(params![run_pk, to_db(now)])?;
        if n == 1 {
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
    for step in &grouped.state_steps {
        for StateGroup { from, to, ti_pks } in step {
            // The states are written into the SQL, not bound: a bound value compared
            // with `state`, which partial indexes filter on, would change the plan per
            // value. They come from an enum, so this is safe, and each (from, to) pair
            // is one cached statement.
            let (from_state, to_state) = (from.as_str(), to.as_str());
            let queued_at = if *to == TaskState::Queued { "?2" } else { "queued_at" };
            let end_date = if to.is_finished() { "?2" } else { "end_date" };
            let scheduled_at = if *to == TaskState::Scheduled { "?2" } else { "scheduled_at" };
            let moved: HashMap<i64, i64> = all(
                tx,
                &format!(
                    "UPDATE task_instances SET state = '{to_state}', wait_reason = NULL, updated_at = ?2,
                         queued_at = {queued_at}, end_date = {end_date}, scheduled_at = {scheduled_at}
                     WHERE id IN (SELECT value FROM json_each(?1)) AND state = '{from_state}' RETURNING id, run_pk"
                ),
                params![json_ids(ti_pks), to_db(now)],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?
            .into_iter()
            .collect();
            report.conflicts += ti_pks.len() - moved.len();
            if *to == TaskState::Queued {
                report.tasks_queued += moved.len();
            }
            // The plan's order is kept in the log.
            for ti_pk in ti_pks {
                if let Some(run_pk) = moved.get(ti_pk) {
                    transitions.push(Transition {
                        run_pk: *run_pk,
                        ti_pk: Some(*ti_pk),
                        from: Some(from_state),
                        to: to_state,
                        actor,
                        detail: None,
                    });
                }
            }
        }
    }
    for (reason, ti_pks) in &grouped.reasons {
        tx.prepare_cached(
            "UPDATE task_instances SET wait_reason = ?2
             WHERE id IN (SELECT value FROM json_each(?1)) AND state IN ('none', 'scheduled', 'up_for_retry')",
        )?
        .execute(params![json_ids(ti_pks), reason])?;
    }
    for expansion in &grouped.expansions {
        if !expand(tx, expansion, &mut transitions, actor, now)? {
            report.conflicts += 1;
        }
    }
    for (run_pk, state) in &grouped.finishes {
        let n = tx
            .prepare_cached(&format!(
                "UPDATE dag_runs SET state = ?2, end_date = ?3 WHERE id = ?1 AND state = 'running'
                 AND NOT EXISTS (SELECT 1 FROM task_instances WHERE run_pk = ?1 AND state NOT IN {FINISHED_STATES})"
            ))?
            .execute(params![run_pk, state.as_str(), to_db(now)])?;
        if n == 1 {
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
    transitions.flush(tx, now)?;
    Ok(report)
}

/// Expands a mapped task's unexpanded instance (compare-and-set on it being `none`
/// and unexpanded): it becomes item 0 and the others are added after it; no items
/// skip it, unreadable items fail it. False if it was no longer there to expand.
fn expand(
    tx: &Transaction<'_>,
    expansion: &Expansion<'_>,
    transitions: &mut TransitionBatch,
    actor: &str,
    now: Timestamp,
) -> Result<bool> {
    let outputs = if expansion.reads_outputs() { outputs_of_run(tx, expansion.run_pk)? } else { Default::default() };
    let (to, reason, detail) = match expansion.decide(&outputs) {
        Expanded::Items(items) => {
            let n = tx
                .prepare_cached(
                    "UPDATE task_instances SET map_index = 0, map_item = ?2, updated_at = ?3, wait_reason = NULL
                     WHERE id = ?1 AND state = 'none' AND map_index = -1",
                )?
                .execute(params![expansion.ti_pk, items[0], to_db(now)])?;
            if n == 0 {
                return Ok(false);
            }
            // After a clear, the last expansion's instances are reused (their try
            // numbers keep growing, so old attempts stay fenced off) or removed.
            tx.prepare_cached(
                "INSERT INTO task_instances (run_pk, task_id, state, try_number, max_tries, pool, priority, queue,
                     updated_at, map_index, map_item)
                 SELECT t.run_pk, t.task_id, 'none', 0, t.max_tries - t.try_number, t.pool, t.priority, t.queue, ?2,
                     j.key + 1, j.value
                 FROM task_instances t, json_each(?3) j WHERE t.id = ?1 ORDER BY j.key
                 ON CONFLICT (run_pk, task_id, map_index) DO UPDATE SET state = 'none', map_item = excluded.map_item,
                     wait_reason = NULL, end_date = NULL, updated_at = excluded.updated_at",
            )?
            .execute(params![
                expansion.ti_pk,
                to_db(now),
                serde_json::Value::from(&items[1..]).to_string()
            ])?;
            tx.prepare_cached(
                "UPDATE task_instances SET state = 'removed', updated_at = ?3
                 WHERE (run_pk, task_id) = (SELECT run_pk, task_id FROM task_instances WHERE id = ?1)
                   AND map_index >= ?2 AND state = 'none'",
            )?
            .execute(params![expansion.ti_pk, items.len() as i64, to_db(now)])?;
            let detail = crate::grouped::mapped_detail(items.len());
            transitions.push(Transition {
                run_pk: expansion.run_pk,
                ti_pk: Some(expansion.ti_pk),
                from: Some("none"),
                to: "none",
                actor,
                detail: Some(&detail),
            });
            return Ok(true);
        }
        Expanded::Skip => ("skipped", None, "for_each has no items".to_string()),
        Expanded::Fail(message) => ("failed", Some(Expansion::failure_reason(&message)), message),
    };
    let n = tx
        .prepare_cached(
            "UPDATE task_instances SET state = ?2, wait_reason = ?3, end_date = ?4, updated_at = ?4
             WHERE id = ?1 AND state = 'none' AND map_index = -1",
        )?
        .execute(params![expansion.ti_pk, to, reason, to_db(now)])?;
    if n == 0 {
        return Ok(false);
    }
    transitions.push(Transition {
        run_pk: expansion.run_pk,
        ti_pk: Some(expansion.ti_pk),
        from: Some("none"),
        to,
        actor,
        detail: Some(&detail),
    });
    Ok(true)
}

/// A run's outputs by task id, read inside a transaction.
fn outputs_of_run(tx: &Transaction<'_>, run_pk: i64) -> Result<std::collections::BTreeMap<String, String>> {
    let rows = tx
        .prepare_cached(
            "SELECT t.task_id, t.map_index, o.value FROM task_instances t LEFT JOIN task_outputs o ON o.ti_pk = t.id
             WHERE t.run_pk = ?1 AND (o.value IS NOT NULL OR t.map_index >= 0)",
        )?
        .query_map(params![run_pk], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(updraft_core::mapping::collect_outputs(rows))
}

fn claim(tx: &Transaction<'_>, scope: Scope, claimant: &Claimant, limit: u32, now: Timestamp) -> Result<Vec<Claimed>> {
    let process_id = claimant.process_id;
    let queues = claimant.queues.as_ref().map(|queues| serde_json::Value::from(queues.clone()).to_string());
    let only_run = match scope {
        Scope::All => None,
        Scope::Run(run_pk) => Some(run_pk),
    };
    struct Taken {
        ti_pk: i64,
        run_pk: i64,
        task_id: String,
        try_number: u32,
        max_tries: u32,
        order: (std::cmp::Reverse<i64>, Option<i64>, i64),
        map_index: i32,
        map_item: Option<String>,
        ready_at: Option<i64>,
    }
    let mut taken =
        all(tx, CLAIM, params![limit, process_id, claimant.hostname, to_db(now), only_run, queues], |row| {
            let ti_pk: i64 = row.get(0)?;
            Ok(Taken {
                ti_pk,
                run_pk: row.get(1)?,
                task_id: row.get(2)?,
                try_number: row.get(3)?,
                max_tries: row.get(4)?,
                order: (std::cmp::Reverse(row.get(5)?), row.get(6)?, ti_pk),
                map_index: row.get(7)?,
                map_item: row.get(8)?,
                ready_at: row.get(9)?,
            })
        })?;
    if taken.is_empty() {
        return Ok(Vec::new());
    }
    taken.sort_by_key(|taken| taken.order);
    let ids: Vec<i64> = taken.iter().map(|taken| taken.ti_pk).collect();
    tx.prepare_cached(
        "INSERT INTO task_attempts (ti_pk, try_number, state, process_id, hostname, start_date)
         SELECT id, try_number, 'running', process_id, hostname, start_date FROM task_instances
         WHERE id IN (SELECT value FROM json_each(?1))
         ON CONFLICT (ti_pk, try_number) DO UPDATE SET state = 'running', process_id = excluded.process_id,
             hostname = excluded.hostname, start_date = excluded.start_date",
    )?
    .execute(params![json_ids(&ids)])?;
    let actor = format!("runner:{process_id}");
    let mut transitions = TransitionBatch::default();
    let mut runs: HashMap<i64, RunRow> = HashMap::new();
    let mut claimed = Vec::with_capacity(taken.len());
    for taken in taken {
        if let std::collections::hash_map::Entry::Vacant(entry) = runs.entry(taken.run_pk) {
            let run = all(tx, RUN_SELECT_BY_PK, params![taken.run_pk], run_row)?
                .pop()
                .ok_or_else(|| StoreError::Corrupt(format!("task instance of missing run {}", taken.run_pk)))?;
            entry.insert(run);
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
            map_index: taken.map_index,
            map_item: taken.map_item,
            ready_at: taken.ready_at.map(crate::time::from_db),
            try_number: taken.try_number,
            max_tries: taken.max_tries,
            version: run.version.clone(),
            logical_date: run.logical_date,
            interval: run.interval,
            conf: run.conf.clone(),
        });
    }
    transitions.flush(tx, now)?;
    Ok(claimed)
}

/// Polls SQLite's `data_version` on a connection of its own; the value changes when
/// another connection commits. One cheap pragma every interval: it is how a running
/// `standalone` notices a trigger or pause from another shell.
struct DataVersionWatcher {
    worker: Worker,
    version: i64,
}

const WATCH_INTERVAL: StdDuration = StdDuration::from_millis(25);

#[async_trait]
impl ChangeWatcher for DataVersionWatcher {
    async fn changed(&mut self) -> Result<()> {
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let version: i64 = self
                .worker
                .call(|connection| Ok(connection.query_row("PRAGMA data_version", [], |row| row.get(0))?))
                .await?;
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
            let sql = format!("EXPLAIN QUERY PLAN {sql}");
            let lines: Vec<String> = store
                .reader
                .call(move |connection| {
                    let mut statement = connection.prepare(&sql)?;
                    let nulls = std::iter::repeat_n(rusqlite::types::Null, statement.parameter_count());
                    let mut rows = statement.query(rusqlite::params_from_iter(nulls))?;
                    let mut lines = Vec::new();
                    while let Some(row) = rows.next()? {
                        lines.push(row.get::<_, String>(3)?);
                    }
                    Ok(lines)
                })
                .await
                .unwrap();
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
