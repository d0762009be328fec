//! The production store: PostgreSQL, through `sqlx`.
//!
//! What differs from SQLite is concurrency. Any number of schedulers, API servers
//! and workers share one database:
//! - A scheduling pass locks a batch of `dags` rows with `FOR UPDATE SKIP LOCKED`
//!   (least recently passed first) and works only on those DAGs and their runs, so
//!   two schedulers never plan the same run; it locks pool rows the same way and
//!   queues only into pools it holds, so two schedulers never overfill a pool.
//! - A claim picks queued task instances with `FOR UPDATE SKIP LOCKED`: concurrent
//!   claimants take disjoint rows and never wait for each other.
//! - Every state change is still compare-and-set on the expected state (and, for an
//!   attempt, on its try number), so even a plan made from a stale read loses
//!   harmlessly.
//! - Changes others should react to end with `NOTIFY updraft`, delivered at commit;
//!   [`PgWatcher`] is the other side.
//!
//! Batches are arrays (`= ANY($1)`, `UNNEST`): a pass that moves 200 tasks is a
//! handful of statements.

mod rows;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Row, Transaction};
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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The channel every process listens on.
const CHANNEL: &str = "updraft";

type Tx<'a> = Transaction<'a, Postgres>;

pub struct PgStore {
    pool: PgPool,
    location: String,
}

impl PgStore {
    /// Connects with up to `pool_size` connections and applies pending migrations
    /// (under an advisory lock, so processes migrating at once take turns).
    pub async fn open(url: &str, pool_size: u32) -> Result<PgStore> {
        let location = crate::redact(url);
        // One plain connection first: a wrong URL or a server that is down fails at
        // once, where the pool would retry until its acquire timeout.
        let probe = sqlx::postgres::PgConnection::connect(url)
            .await
            .map_err(|source| StoreError::Connect { location: location.clone(), source })?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(2))
            .acquire_timeout(Duration::from_secs(60))
            .connect(url)
            .await
            .map_err(|source| StoreError::Connect { location: location.clone(), source })?;
        MIGRATOR.run(&pool).await.map_err(StoreError::MigratePostgres)?;
        Ok(PgStore { pool, location })
    }
}

fn user_row(row: &sqlx::postgres::PgRow) -> Result<UserRow> {
    let teams: String = row.try_get(4)?;
    let failed: i32 = row.try_get(6)?;
    Ok(UserRow {
        user_id: row.try_get(0)?,
        username: row.try_get(1)?,
        password_hash: row.try_get(2)?,
        role: row.try_get(3)?,
        teams: serde_json::from_str(&teams)
            .map_err(|error| StoreError::Corrupt(format!("teams `{teams}`: {error}")))?,
        created_at: from_db(row.try_get(5)?),
        failed_logins: u32::try_from(failed).unwrap_or(0),
        locked_until: opt_from_db(row.try_get(7)?),
    })
}

fn variable_row(row: &sqlx::postgres::PgRow) -> Result<VariableRow> {
    Ok(VariableRow {
        key: row.try_get(0)?,
        value: row.try_get(1)?,
        description: row.try_get(2)?,
        updated_at: from_db(row.try_get(3)?),
    })
}

fn connection_row(row: &sqlx::postgres::PgRow) -> Result<ConnectionRow> {
    let port: Option<i32> = row.try_get(6)?;
    Ok(ConnectionRow {
        conn_id: row.try_get(0)?,
        conn_type: row.try_get(1)?,
        host: row.try_get(2)?,
        schema: row.try_get(3)?,
        login: row.try_get(4)?,
        password: row.try_get(5)?,
        port: port.and_then(|port| u16::try_from(port).ok()),
        extra: row.try_get(7)?,
        description: row.try_get(8)?,
    })
}

async fn notify(tx: &mut Tx<'_>) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(&mut **tx).await?;
    Ok(())
}

/// Transitions written together, as arrays: one statement for any number of rows.
#[derive(Default)]
struct TransitionBatch {
    run_pks: Vec<i64>,
    ti_pks: Vec<Option<i64>>,
    froms: Vec<Option<String>>,
    tos: Vec<String>,
    actors: Vec<String>,
    details: Vec<Option<String>>,
}

impl TransitionBatch {
    fn push(
        &mut self,
        run_pk: i64,
        ti_pk: Option<i64>,
        from: Option<&str>,
        to: &str,
        actor: &str,
        detail: Option<&str>,
    ) {
        self.run_pks.push(run_pk);
        self.ti_pks.push(ti_pk);
        self.froms.push(from.map(str::to_string));
        self.tos.push(to.to_string());
        self.actors.push(actor.to_string());
        self.details.push(detail.map(str::to_string));
    }

    async fn flush(self, tx: &mut Tx<'_>, now: Timestamp) -> Result<()> {
        if self.run_pks.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO state_transitions (run_pk, ti_pk, at, from_state, to_state, actor, detail)
             SELECT r, t, $7, f, s, a, d
             FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])
                  WITH ORDINALITY AS x(r, t, f, s, a, d, n)
             ORDER BY n",
        )
        .bind(self.run_pks)
        .bind(self.ti_pks)
        .bind(self.froms)
        .bind(self.tos)
        .bind(self.actors)
        .bind(self.details)
        .bind(to_db(now))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

async fn insert_version(
    tx: &mut Tx<'_>,
    dag: &updraft_core::Dag,
    version: &DagVersion,
    source: Option<&str>,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO dag_versions (dag_id, version, definition, source, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (dag_id, version) DO UPDATE SET source = excluded.source
         WHERE dag_versions.source IS NULL AND excluded.source IS NOT NULL",
    )
    .bind(dag.dag_id().as_str())
    .bind(&version.0)
    .bind(dag.to_json())
    .bind(source)
    .bind(to_db(now))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_run(tx: &mut Tx<'_>, run: &NewRun, actor: &str, now: Timestamp) -> Result<Option<i64>> {
    insert_version(tx, &run.dag, &run.version, None, now).await?;
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
    .fetch_optional(&mut **tx)
    .await?;
    let Some(run_pk) = run_pk else { return Ok(None) };
    let tasks = run.dag.tasks();
    sqlx::query(
        "INSERT INTO task_instances (run_pk, task_id, state, try_number, max_tries, pool, priority, queue, updated_at)
         SELECT $1, t, 'none', 0, m, p, r, q, $2
         FROM UNNEST($3::text[], $4::int[], $5::text[], $6::int[], $7::text[]) WITH ORDINALITY AS x(t, m, p, r, q, n)
         ORDER BY n",
    )
    .bind(run_pk)
    .bind(to_db(now))
    .bind(tasks.iter().map(|task| task.task_id.to_string()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|task| if run.with_retries { task.retries as i32 } else { 0 }).collect::<Vec<_>>())
    .bind(tasks.iter().map(|task| task.pool.clone()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|task| task.priority).collect::<Vec<_>>())
    .bind(tasks.iter().map(|task| task.queue.clone()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    let mut transitions = TransitionBatch::default();
    let detail = format!("{} run created", run.run_type.as_str());
    transitions.push(run_pk, None, None, RunState::Queued.as_str(), actor, Some(&detail));
    transitions.flush(tx, now).await?;
    Ok(Some(run_pk))
}

#[async_trait]
impl MetadataStore for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn register_process(&self, process: &NewProcess, now: Timestamp) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO processes (kind, hostname, pid, pid_start, state, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, 'running', $5, $5) RETURNING id",
        )
        .bind(process.kind.as_str())
        .bind(&process.hostname)
        .bind(i64::from(process.pid))
        .bind(process.pid_start.map(|start| start as i64))
        .bind(to_db(now))
        .fetch_one(&self.pool)
        .await?)
    }

    async fn heartbeat(&self, process_id: i64, attempts: &[(i64, u32)], now: Timestamp) -> Result<Heartbeat> {
        let mut tx = self.pool.begin().await?;
        let alive = sqlx::query("UPDATE processes SET heartbeat_at = $2 WHERE id = $1 AND state = 'running'")
            .bind(process_id)
            .bind(to_db(now))
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        let ids: Vec<i64> = attempts.iter().map(|(ti_pk, _)| *ti_pk).collect();
        let tries: Vec<i32> = attempts.iter().map(|(_, try_number)| *try_number as i32).collect();
        // The try number fences: a replaced attempt's heartbeat renews nothing.
        let renewed: Vec<(i64, i32)> = sqlx::query_as(
            "UPDATE task_instances t SET heartbeat_at = $4
             FROM UNNEST($1::bigint[], $2::int[]) AS a(id, try_number)
             WHERE t.id = a.id AND t.try_number = a.try_number AND t.process_id = $3 AND t.state = 'running'
             RETURNING t.id, t.try_number",
        )
        .bind(ids)
        .bind(tries)
        .bind(process_id)
        .bind(to_db(now))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let lost = attempts
            .iter()
            .copied()
            .filter(|(ti_pk, try_number)| !renewed.contains(&(*ti_pk, *try_number as i32)))
            .collect();
        Ok(Heartbeat { alive, lost })
    }

    async fn set_process_state(
        &self,
        process_id: i64,
        from: ProcessState,
        to: ProcessState,
        now: Timestamp,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE processes SET state = $3, heartbeat_at = GREATEST(heartbeat_at, $4) WHERE id = $1 AND state = $2",
        )
        .bind(process_id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(to_db(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn processes(&self, state: Option<ProcessState>) -> Result<Vec<ProcessRow>> {
        let rows = sqlx::query(PROCESS_SELECT).bind(state.map(ProcessState::as_str)).fetch_all(&self.pool).await?;
        rows.iter().map(process_row).collect()
    }

    async fn dag_index(&self) -> Result<Vec<DagIndexRow>> {
        let rows =
            sqlx::query("SELECT dag_id, latest_version, fileloc, is_active FROM dags").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(DagIndexRow {
                    dag_id: row.try_get(0)?,
                    latest_version: row.try_get(1)?,
                    fileloc: row.try_get(2)?,
                    is_active: row.try_get(3)?,
                })
            })
            .collect()
    }

    async fn upsert_dags(&self, dags: &[DagUpsert], now: Timestamp) -> Result<()> {
        if dags.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for upsert in dags {
            let dag = &upsert.dag;
            let spec = dag.spec();
            insert_version(&mut tx, dag, &upsert.version, upsert.source.as_deref(), now).await?;
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
            .bind(serde_json::to_string(&spec.tags).expect("tags serialise"))
            .bind(upsert.paused_if_new)
            .bind(&upsert.version.0)
            .bind(to_db(now))
            .execute(&mut *tx)
            .await?;
        }
        notify(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn deactivate_dags(&self, dag_ids: &[String], now: Timestamp) -> Result<()> {
        if dag_ids.is_empty() {
            return Ok(());
        }
        sqlx::query("UPDATE dags SET is_active = FALSE, updated_at = $2 WHERE dag_id = ANY($1) AND is_active")
            .bind(dag_ids.to_vec())
            .bind(to_db(now))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn replace_import_errors(&self, errors: &[ImportError], now: Timestamp) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM import_errors").execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO import_errors (fileloc, message, updated_at) SELECT f, m, $3 FROM UNNEST($1::text[], $2::text[]) AS x(f, m)",
        )
        .bind(errors.iter().map(|error| error.fileloc.clone()).collect::<Vec<_>>())
        .bind(errors.iter().map(|error| error.message.clone()).collect::<Vec<_>>())
        .bind(to_db(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn import_errors(&self) -> Result<Vec<ImportError>> {
        let rows =
            sqlx::query("SELECT fileloc, message FROM import_errors ORDER BY fileloc").fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok(ImportError { fileloc: row.try_get(0)?, message: row.try_get(1)? })).collect()
    }

    async fn list_dags(&self) -> Result<Vec<DagRow>> {
        let rows = sqlx::query(DAG_SELECT_ALL).fetch_all(&self.pool).await?;
        rows.iter().map(dag_row).collect()
    }

    async fn get_dag(&self, dag_id: &str) -> Result<Option<DagRow>> {
        let row = sqlx::query(DAG_SELECT_ONE).bind(dag_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(dag_row).transpose()
    }

    async fn set_paused(&self, dag_id: &str, paused: bool, now: Timestamp) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE dags SET is_paused = $2, updated_at = $3 WHERE dag_id = $1")
            .bind(dag_id)
            .bind(paused)
            .bind(to_db(now))
            .execute(&mut *tx)
            .await?;
        notify(&mut tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn dag_source(&self, dag_id: &str, version: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar::<_, Option<String>>(
            "SELECT source FROM dag_versions WHERE dag_id = $1 AND version = $2",
        )
        .bind(dag_id)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?
        .flatten())
    }

    async fn dag_definition(&self, dag_id: &str, version: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT definition FROM dag_versions WHERE dag_id = $1 AND version = $2")
            .bind(dag_id)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn create_user(&self, user: &NewUser, now: Timestamp) -> Result<Option<i64>> {
        let teams = serde_json::to_string(&user.teams).expect("teams serialise");
        Ok(sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, role, teams, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (username) DO NOTHING RETURNING id",
        )
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(&user.role)
        .bind(teams)
        .bind(to_db(now))
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn users(&self) -> Result<Vec<UserRow>> {
        let rows = sqlx::query(concat!(
            "SELECT id, username, password_hash, role, teams, created_at, failed_logins, locked_until ",
            "FROM users ORDER BY username"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_row).collect()
    }

    async fn get_user(&self, username: &str) -> Result<Option<UserRow>> {
        let row = sqlx::query(concat!(
            "SELECT id, username, password_hash, role, teams, created_at, failed_logins, locked_until ",
            "FROM users WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_row).transpose()
    }

    async fn delete_user(&self, username: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM users WHERE username = $1").bind(username).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_password(&self, username: &str, password_hash: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE users SET password_hash = $2, failed_logins = 0, locked_until = NULL WHERE username = $1",
        )
        .bind(username)
        .bind(password_hash)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_login_state(&self, username: &str, failed_logins: u32, locked_until: Option<Timestamp>) -> Result<()> {
        sqlx::query("UPDATE users SET failed_logins = $2, locked_until = $3 WHERE username = $1")
            .bind(username)
            .bind(failed_logins as i32)
            .bind(locked_until.map(to_db))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_session(
        &self,
        token_hash: &str,
        user_id: i64,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1").bind(to_db(now)).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(token_hash)
            .bind(user_id)
            .bind(to_db(now))
            .bind(to_db(expires_at))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn session_user(&self, token_hash: &str, now: Timestamp) -> Result<Option<UserRow>> {
        let row = sqlx::query(concat!(
            "SELECT u.id, u.username, u.password_hash, u.role, u.teams, u.created_at, u.failed_logins, ",
            "u.locked_until FROM sessions s JOIN users u ON u.id = s.user_id ",
            "WHERE s.token_hash = $1 AND s.expires_at > $2"
        ))
        .bind(token_hash)
        .bind(to_db(now))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_row).transpose()
    }

    async fn delete_session(&self, token_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(token_hash).execute(&self.pool).await?;
        Ok(())
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
        Ok(sqlx::query_scalar(
            "INSERT INTO api_tokens (user_id, name, token_hash, scope, created_at, expires_at)
             SELECT id, $2, $3, $4, $5, $6 FROM users WHERE username = $1 RETURNING id",
        )
        .bind(username)
        .bind(name)
        .bind(token_hash)
        .bind(scope)
        .bind(to_db(now))
        .bind(expires_at.map(to_db))
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn api_tokens(&self, username: Option<&str>) -> Result<Vec<ApiTokenRow>> {
        let rows = sqlx::query(
            "SELECT t.id, u.username, t.name, t.scope, t.created_at, t.expires_at, t.last_used_at
             FROM api_tokens t JOIN users u ON u.id = t.user_id
             WHERE $1::text IS NULL OR u.username = $1 ORDER BY t.id DESC",
        )
        .bind(username)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ApiTokenRow {
                    token_id: row.try_get(0)?,
                    username: row.try_get(1)?,
                    name: row.try_get(2)?,
                    scope: row.try_get(3)?,
                    created_at: from_db(row.try_get(4)?),
                    expires_at: opt_from_db(row.try_get(5)?),
                    last_used_at: opt_from_db(row.try_get(6)?),
                })
            })
            .collect()
    }

    async fn api_token_user(&self, token_hash: &str, now: Timestamp) -> Result<Option<(UserRow, String)>> {
        let found: Option<(i64, String)> = sqlx::query_as(
            "UPDATE api_tokens SET last_used_at = $2
             WHERE token_hash = $1 AND (expires_at IS NULL OR expires_at > $2) RETURNING user_id, scope",
        )
        .bind(token_hash)
        .bind(to_db(now))
        .fetch_optional(&self.pool)
        .await?;
        let Some((user_id, scope)) = found else { return Ok(None) };
        let row = sqlx::query(concat!(
            "SELECT id, username, password_hash, role, teams, created_at, failed_logins, locked_until ",
            "FROM users WHERE id = $1"
        ))
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(user_row).transpose()?.map(|user| (user, scope)))
    }

    async fn delete_api_token(&self, token_id: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM api_tokens WHERE id = $1").bind(token_id).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn create_worker_token(
        &self,
        name: &str,
        token_hash: &str,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO worker_tokens (name, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(token_hash)
        .bind(to_db(now))
        .bind(expires_at.map(to_db))
        .fetch_one(&self.pool)
        .await?)
    }

    async fn worker_tokens(&self) -> Result<Vec<WorkerTokenRow>> {
        let rows =
            sqlx::query("SELECT id, name, created_at, expires_at, last_used_at FROM worker_tokens ORDER BY id DESC")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(WorkerTokenRow {
                    token_id: row.try_get(0)?,
                    name: row.try_get(1)?,
                    created_at: from_db(row.try_get(2)?),
                    expires_at: opt_from_db(row.try_get(3)?),
                    last_used_at: opt_from_db(row.try_get(4)?),
                })
            })
            .collect()
    }

    async fn worker_token_id(&self, token_hash: &str, now: Timestamp) -> Result<Option<i64>> {
        let found: Option<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT id, last_used_at FROM worker_tokens WHERE token_hash = $1 AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(token_hash)
        .bind(to_db(now))
        .fetch_optional(&self.pool)
        .await?;
        let Some((id, last_used)) = found else { return Ok(None) };
        if last_used.is_none_or(|last| last < to_db(now) - crate::TOKEN_USE_EVERY) {
            sqlx::query("UPDATE worker_tokens SET last_used_at = $2 WHERE id = $1")
                .bind(id)
                .bind(to_db(now))
                .execute(&self.pool)
                .await?;
        }
        Ok(Some(id))
    }

    async fn delete_worker_token(&self, token_id: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM worker_tokens WHERE id = $1").bind(token_id).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_variable(&self, key: &str, value: &str, description: &str, now: Timestamp) -> Result<()> {
        sqlx::query(
            "INSERT INTO variables (key, value, description, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, description = excluded.description,
                 updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(value)
        .bind(description)
        .bind(to_db(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn variables(&self) -> Result<Vec<VariableRow>> {
        let rows = sqlx::query("SELECT key, value, description, updated_at FROM variables ORDER BY key")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(variable_row).collect()
    }

    async fn variable(&self, key: &str) -> Result<Option<VariableRow>> {
        let row = sqlx::query("SELECT key, value, description, updated_at FROM variables WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(variable_row).transpose()
    }

    async fn delete_variable(&self, key: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM variables WHERE key = $1").bind(key).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_connection(&self, c: &ConnectionRow, now: Timestamp) -> Result<()> {
        sqlx::query(
            "INSERT INTO connections (conn_id, conn_type, host, schema_name, login, password, port, extra,
                                      description, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (conn_id) DO UPDATE SET conn_type = excluded.conn_type, host = excluded.host,
                 schema_name = excluded.schema_name, login = excluded.login, password = excluded.password,
                 port = excluded.port, extra = excluded.extra, description = excluded.description,
                 updated_at = excluded.updated_at",
        )
        .bind(&c.conn_id)
        .bind(&c.conn_type)
        .bind(&c.host)
        .bind(&c.schema)
        .bind(&c.login)
        .bind(&c.password)
        .bind(c.port.map(i32::from))
        .bind(&c.extra)
        .bind(&c.description)
        .bind(to_db(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn connections(&self) -> Result<Vec<ConnectionRow>> {
        let rows = sqlx::query(concat!(
            "SELECT conn_id, conn_type, host, schema_name, login, password, port, extra, description ",
            "FROM connections ORDER BY conn_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(connection_row).collect()
    }

    async fn connection(&self, conn_id: &str) -> Result<Option<ConnectionRow>> {
        let row = sqlx::query(concat!(
            "SELECT conn_id, conn_type, host, schema_name, login, password, port, extra, description ",
            "FROM connections WHERE conn_id = $1"
        ))
        .bind(conn_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(connection_row).transpose()
    }

    async fn delete_connection(&self, conn_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM connections WHERE conn_id = $1").bind(conn_id).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn audit(&self, entry: &AuditEntry, now: Timestamp) -> Result<()> {
        sqlx::query("INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)")
            .bind(to_db(now))
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.target)
            .bind(&entry.detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn audit_log(&self, before_id: Option<i64>, limit: u32) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail FROM audit_log
             WHERE $1::bigint IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRow {
                    id: row.try_get(0)?,
                    at: from_db(row.try_get(1)?),
                    entry: AuditEntry {
                        actor: row.try_get(2)?,
                        action: row.try_get(3)?,
                        target: row.try_get(4)?,
                        detail: row.try_get(5)?,
                    },
                })
            })
            .collect()
    }

    async fn create_run(&self, run: &NewRun, actor: &str, now: Timestamp) -> Result<Option<i64>> {
        let mut tx = self.pool.begin().await?;
        let run_pk = insert_run(&mut tx, run, actor, now).await?;
        notify(&mut tx).await?;
        tx.commit().await?;
        Ok(run_pk)
    }

    async fn list_runs(&self, dag_id: &str, state: Option<RunState>, limit: u32) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(RUN_SELECT_BY_DAG)
            .bind(dag_id)
            .bind(state.map(RunState::as_str))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(run_row).collect()
    }

    async fn get_run(&self, dag_id: &str, run_id: &str) -> Result<Option<RunRow>> {
        let row = sqlx::query(RUN_SELECT_ONE).bind(dag_id).bind(run_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(run_row).transpose()
    }

    async fn get_run_by_pk(&self, run_pk: i64) -> Result<Option<RunRow>> {
        let row = sqlx::query(RUN_SELECT_BY_PK).bind(run_pk).fetch_optional(&self.pool).await?;
        row.as_ref().map(run_row).transpose()
    }

    async fn task_instances(&self, run_pk: i64) -> Result<Vec<TaskInstanceRow>> {
        let rows = sqlx::query(TI_SELECT_BY_RUNS).bind(vec![run_pk]).fetch_all(&self.pool).await?;
        rows.iter().map(ti_row).collect()
    }

    async fn task_attempts(&self, ti_pk: i64) -> Result<Vec<AttemptRow>> {
        let rows = sqlx::query(ATTEMPT_SELECT).bind(ti_pk).fetch_all(&self.pool).await?;
        rows.iter().map(attempt_row).collect()
    }

    async fn transitions(&self, run_pk: i64, ti_pk: Option<i64>, after_id: i64) -> Result<Vec<TransitionRow>> {
        let rows = sqlx::query(
            "SELECT id, at, ti_pk, from_state, to_state, actor, detail FROM state_transitions
             WHERE run_pk = $1 AND ($2::bigint IS NULL OR ti_pk = $2) AND id > $3 ORDER BY id",
        )
        .bind(run_pk)
        .bind(ti_pk)
        .bind(after_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(TransitionRow {
                    id: row.try_get(0)?,
                    at: crate::time::from_db(row.try_get(1)?),
                    ti_pk: row.try_get(2)?,
                    from_state: row.try_get(3)?,
                    to_state: row.try_get(4)?,
                    actor: row.try_get(5)?,
                    detail: row.try_get(6)?,
                })
            })
            .collect()
    }

    async fn schedule_pass(&self, scope: Scope, now: Timestamp, pass: Pass) -> Result<PassReport> {
        let mut tx = self.pool.begin().await?;
        let (snapshot, locked_dags, full_batch) = read_snapshot(&mut tx, scope, now, pass.batch).await?;
        let actions = (pass.plan)(&snapshot);
        let applied = apply(&mut tx, &actions, &pass.actor, now).await?;
        if !locked_dags.is_empty() {
            sqlx::query("UPDATE dags SET last_pass_at = $2 WHERE dag_id = ANY($1)")
                .bind(locked_dags)
                .bind(to_db(now))
                .execute(&mut *tx)
                .await?;
        }
        if !actions.is_empty() {
            notify(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(PassReport { applied, more: full_batch || !snapshot.busy_pools.is_empty() })
    }

    async fn apply(&self, actions: &[Action], actor: &str, now: Timestamp) -> Result<ApplyReport> {
        if actions.is_empty() {
            return Ok(ApplyReport::default());
        }
        let mut tx = self.pool.begin().await?;
        let report = apply(&mut tx, actions, actor, now).await?;
        notify(&mut tx).await?;
        tx.commit().await?;
        Ok(report)
    }

    async fn intervene(&self, run_pk: i64, change: &Intervention, actor: &str, now: Timestamp) -> Result<()> {
        crate::grouped::check_intervention(change)?;
        let mut tx = self.pool.begin().await?;
        let mut transitions = TransitionBatch::default();
        for (ti_pk, from, to) in &change.tasks {
            let end_date = to.is_finished().then(|| to_db(now));
            // Back to `none`: the next try starts from a clean row.
            let moved = sqlx::query(
                "UPDATE task_instances SET state = $3, updated_at = $4, end_date = $5, wait_reason = NULL,
                     retry_at = NULL,
                     queued_at = CASE WHEN $3 = 'none' THEN NULL ELSE queued_at END,
                     start_date = CASE WHEN $3 = 'none' THEN NULL ELSE start_date END,
                     exit_code = CASE WHEN $3 = 'none' THEN NULL ELSE exit_code END
                 WHERE id = $1 AND run_pk = $6 AND state = $2",
            )
            .bind(ti_pk)
            .bind(from.as_str())
            .bind(to.as_str())
            .bind(to_db(now))
            .bind(end_date)
            .bind(run_pk)
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() != 1 {
                return Err(StoreError::Changed(format!("task instance {ti_pk}")));
            }
            transitions.push(run_pk, Some(*ti_pk), Some(from.as_str()), to.as_str(), actor, Some("set by an operator"));
        }
        for (ti_pk, max_tries) in &change.max_tries {
            sqlx::query("UPDATE task_instances SET max_tries = $2 WHERE id = $1")
                .bind(ti_pk)
                .bind(*max_tries as i32)
                .execute(&mut *tx)
                .await?;
        }
        if !change.unexpand.is_empty() {
            sqlx::query(
                "UPDATE task_instances SET map_index = -1, map_item = NULL WHERE id = ANY($1) AND map_index = 0",
            )
            .bind(&change.unexpand)
            .execute(&mut *tx)
            .await?;
        }
        if let Some((from, to)) = change.run {
            let end_date = to.is_finished().then(|| to_db(now));
            let moved = sqlx::query("UPDATE dag_runs SET state = $3, end_date = $4 WHERE id = $1 AND state = $2")
                .bind(run_pk)
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(end_date)
                .execute(&mut *tx)
                .await?;
            if moved.rows_affected() != 1 {
                return Err(StoreError::Changed(format!("run {run_pk}")));
            }
            transitions.push(run_pk, None, Some(from.as_str()), to.as_str(), actor, Some("set by an operator"));
        }
        transitions.flush(&mut tx, now).await?;
        notify(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_run(&self, run_pk: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM dag_runs WHERE id = $1 AND state IN ('success', 'failed')")
            .bind(run_pk)
            .execute(&mut *tx)
            .await?;
        notify(&mut tx).await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn claim(&self, scope: Scope, claimant: &Claimant, limit: u32, now: Timestamp) -> Result<Vec<Claimed>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let only_run = match scope {
            Scope::All => None,
            Scope::Run(run_pk) => Some(run_pk),
        };
        let mut tx = self.pool.begin().await?;
        // Claimants skip each other's rows: none ever waits for another. The pick is a
        // materialized CTE so it runs exactly once (a subquery may be rescanned, and
        // with SKIP LOCKED a rescan can pick more rows than the limit).
        let rows = sqlx::query(
            "WITH picked AS MATERIALIZED (
                 SELECT c.id FROM task_instances c JOIN dag_runs r ON r.id = c.run_pk
                 WHERE c.state = 'queued'
                   AND CASE WHEN $5::bigint IS NULL THEN r.run_type <> 'test' ELSE c.run_pk = $5 END
                   AND ($6::text[] IS NULL OR c.queue = ANY($6))
                 ORDER BY c.priority DESC, c.queued_at, c.id LIMIT $1
                 FOR UPDATE OF c SKIP LOCKED)
             UPDATE task_instances t SET state = 'running', try_number = t.try_number + 1, process_id = $2,
                 hostname = $3, pid = NULL, pid_start = NULL, exit_code = NULL, start_date = $4, heartbeat_at = $4,
                 end_date = NULL, retry_at = NULL, wait_reason = NULL, updated_at = $4
             FROM picked WHERE t.id = picked.id AND t.state = 'queued'
             RETURNING t.id, t.run_pk, t.task_id, t.try_number, t.max_tries, t.priority, t.queued_at, t.map_index,
                 t.map_item, t.scheduled_at",
        )
        .bind(i64::from(limit))
        .bind(claimant.process_id)
        .bind(&claimant.hostname)
        .bind(to_db(now))
        .bind(only_run)
        .bind(claimant.queues.clone())
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
            try_number: i32,
            max_tries: i32,
            order: (std::cmp::Reverse<i32>, Option<i64>, i64),
            map_index: i32,
            map_item: Option<String>,
            ready_at: Option<i64>,
        }
        let mut taken = rows
            .iter()
            .map(|row| {
                let ti_pk: i64 = row.try_get(0)?;
                Ok(Taken {
                    ti_pk,
                    run_pk: row.try_get(1)?,
                    task_id: row.try_get(2)?,
                    try_number: row.try_get(3)?,
                    max_tries: row.try_get(4)?,
                    order: (std::cmp::Reverse(row.try_get(5)?), row.try_get(6)?, ti_pk),
                    map_index: row.try_get(7)?,
                    map_item: row.try_get(8)?,
                    ready_at: row.try_get(9)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        taken.sort_by_key(|taken| taken.order);
        let ids: Vec<i64> = taken.iter().map(|taken| taken.ti_pk).collect();
        sqlx::query(
            "INSERT INTO task_attempts (ti_pk, try_number, state, process_id, hostname, start_date)
             SELECT id, try_number, 'running', process_id, hostname, start_date FROM task_instances WHERE id = ANY($1)
             ON CONFLICT (ti_pk, try_number) DO UPDATE SET state = 'running', process_id = excluded.process_id,
                 hostname = excluded.hostname, start_date = excluded.start_date",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        let run_pks: Vec<i64> = taken.iter().map(|taken| taken.run_pk).collect();
        let runs: HashMap<i64, RunRow> = sqlx::query(RUN_SELECT_BY_PKS)
            .bind(run_pks)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| run_row(row).map(|run| (run.run_pk, run)))
            .collect::<Result<_>>()?;
        let actor = format!("runner:{}", claimant.process_id);
        let mut transitions = TransitionBatch::default();
        let mut claimed = Vec::with_capacity(taken.len());
        for taken in taken {
            let run = runs
                .get(&taken.run_pk)
                .ok_or_else(|| StoreError::Corrupt(format!("task instance of missing run {}", taken.run_pk)))?;
            transitions.push(
                taken.run_pk,
                Some(taken.ti_pk),
                Some("queued"),
                "running",
                &actor,
                Some(&format!("try {}", taken.try_number)),
            );
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
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE task_instances SET pid = $3, pid_start = $4 WHERE id = $1 AND try_number = $2 AND state = 'running'",
        )
        .bind(ti_pk)
        .bind(try_number as i32)
        .bind(i64::from(pid))
        .bind(pid_start.map(|start| start as i64))
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE task_attempts SET pid = $3, log_path = $4 WHERE ti_pk = $1 AND try_number = $2")
            .bind(ti_pk)
            .bind(try_number as i32)
            .bind(i64::from(pid))
            .bind(log_path)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn run_outputs(&self, dag_id: &str, run_id: &str) -> Result<std::collections::BTreeMap<String, String>> {
        let rows: Vec<(String, i32, Option<String>)> = sqlx::query_as(
            "SELECT t.task_id, t.map_index, o.value FROM task_instances t
             JOIN dag_runs r ON r.id = t.run_pk LEFT JOIN task_outputs o ON o.ti_pk = t.id
             WHERE r.dag_id = $1 AND r.run_id = $2 AND (o.value IS NOT NULL OR t.map_index >= 0)",
        )
        .bind(dag_id)
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(updraft_core::mapping::collect_outputs(rows))
    }

    async fn finish_attempts(&self, ends: &[FinishedAttempt], actor: &str, now: Timestamp) -> Result<Vec<bool>> {
        for finished in ends {
            check_task_transition(TaskState::Running, finished.end.state)?;
        }
        let column = |f: &dyn Fn(&FinishedAttempt) -> Option<i64>| ends.iter().map(f).collect::<Vec<_>>();
        let mut tx = self.pool.begin().await?;
        let moved: Vec<(i64, i64)> = sqlx::query_as(
            "UPDATE task_instances t SET state = v.state, end_date = $8, retry_at = v.retry_at, exit_code = v.exit_code,
                 updated_at = $8,
                 max_tries = CASE WHEN v.state = 'scheduled' OR v.reschedule THEN t.max_tries + 1 ELSE t.max_tries END,
                 pid = COALESCE(v.pid, t.pid), pid_start = COALESCE(v.pid_start, t.pid_start)
             FROM UNNEST($1::bigint[], $2::int[], $3::text[], $4::bigint[], $5::int[], $6::bigint[], $7::bigint[],
                         $9::bool[])
                  AS v(id, try_number, state, retry_at, exit_code, pid, pid_start, reschedule)
             WHERE t.id = v.id AND t.try_number = v.try_number AND t.state = 'running'
             RETURNING t.id, t.run_pk",
        )
        .bind(ends.iter().map(|f| f.ti_pk).collect::<Vec<_>>())
        .bind(ends.iter().map(|f| f.try_number as i32).collect::<Vec<_>>())
        .bind(ends.iter().map(|f| f.end.state.as_str().to_string()).collect::<Vec<_>>())
        .bind(column(&|f| f.end.retry_at.map(to_db)))
        .bind(ends.iter().map(|f| f.end.exit_code).collect::<Vec<_>>())
        .bind(column(&|f| f.end.process.as_ref().map(|process| i64::from(process.pid))))
        .bind(column(&|f| f.end.process.as_ref().and_then(|process| process.pid_start).map(|start| start as i64)))
        .bind(to_db(now))
        .bind(ends.iter().map(|f| f.end.reschedule).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let moved: HashMap<i64, i64> = moved.into_iter().collect();
        let done: Vec<bool> = ends.iter().map(|f| moved.contains_key(&f.ti_pk)).collect();
        let recorded: Vec<&FinishedAttempt> = ends.iter().filter(|f| moved.contains_key(&f.ti_pk)).collect();
        sqlx::query(
            "UPDATE task_attempts a SET state = v.state, end_date = $7, exit_code = v.exit_code, reason = v.reason,
                 pid = COALESCE(v.pid, a.pid), log_path = COALESCE(v.log_path, a.log_path)
             FROM UNNEST($1::bigint[], $2::int[], $3::text[], $4::int[], $5::text[], $6::bigint[], $8::text[])
                  AS v(id, try_number, state, exit_code, reason, pid, log_path)
             WHERE a.ti_pk = v.id AND a.try_number = v.try_number",
        )
        .bind(recorded.iter().map(|f| f.ti_pk).collect::<Vec<_>>())
        .bind(recorded.iter().map(|f| f.try_number as i32).collect::<Vec<_>>())
        .bind(recorded.iter().map(|f| f.end.attempt_state().to_string()).collect::<Vec<_>>())
        .bind(recorded.iter().map(|f| f.end.exit_code).collect::<Vec<_>>())
        .bind(recorded.iter().map(|f| f.end.reason.clone()).collect::<Vec<_>>())
        .bind(recorded.iter().map(|f| f.end.process.as_ref().map(|process| i64::from(process.pid))).collect::<Vec<_>>())
        .bind(to_db(now))
        .bind(
            recorded
                .iter()
                .map(|f| f.end.process.as_ref().and_then(|process| process.log_path.clone()))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        // Outputs: a new one replaces the last; a later try without one clears it.
        // A first try without output, the common case, costs nothing here.
        let stale: Vec<i64> =
            recorded.iter().filter(|f| f.end.output.is_none() && f.try_number > 1).map(|f| f.ti_pk).collect();
        let outputs: Vec<(i64, String)> =
            recorded.iter().filter_map(|f| f.end.output.clone().map(|output| (f.ti_pk, output))).collect();
        if !stale.is_empty() || !outputs.is_empty() {
            sqlx::query(
                "WITH gone AS (DELETE FROM task_outputs WHERE ti_pk = ANY($1::bigint[]))
                 INSERT INTO task_outputs (ti_pk, value) SELECT * FROM UNNEST($2::bigint[], $3::text[])
                 ON CONFLICT (ti_pk) DO UPDATE SET value = excluded.value",
            )
            .bind(stale)
            .bind(outputs.iter().map(|(ti_pk, _)| *ti_pk).collect::<Vec<_>>())
            .bind(outputs.into_iter().map(|(_, output)| output).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        let mut transitions = TransitionBatch::default();
        for finished in &recorded {
            let run_pk = moved[&finished.ti_pk];
            let end = &finished.end;
            transitions.push(
                run_pk,
                Some(finished.ti_pk),
                Some("running"),
                end.state.as_str(),
                actor,
                end.reason.as_deref(),
            );
        }
        transitions.flush(&mut tx, now).await?;
        if !recorded.is_empty() {
            notify(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    async fn running_attempts(&self, process_id: i64) -> Result<Vec<RunningAttempt>> {
        let rows = sqlx::query(RUNNING_ATTEMPTS_OF_PROCESS).bind(process_id).fetch_all(&self.pool).await?;
        rows.iter().map(running_attempt).collect()
    }

    async fn adopt_attempt(
        &self,
        ti_pk: i64,
        try_number: u32,
        from: i64,
        claimant: &Claimant,
        now: Timestamp,
    ) -> Result<Option<Claimed>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE task_instances SET process_id = $4, hostname = $5, heartbeat_at = $6, updated_at = $6
             WHERE id = $1 AND try_number = $2 AND process_id = $3 AND state = 'running'
             RETURNING run_pk, task_id, max_tries, map_index, map_item, scheduled_at",
        )
        .bind(ti_pk)
        .bind(try_number as i32)
        .bind(from)
        .bind(claimant.process_id)
        .bind(&claimant.hostname)
        .bind(to_db(now))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let run_pk: i64 = row.try_get(0)?;
        sqlx::query("UPDATE task_attempts SET process_id = $3, hostname = $4 WHERE ti_pk = $1 AND try_number = $2")
            .bind(ti_pk)
            .bind(try_number as i32)
            .bind(claimant.process_id)
            .bind(&claimant.hostname)
            .execute(&mut *tx)
            .await?;
        let run = sqlx::query(RUN_SELECT_BY_PK).bind(run_pk).fetch_optional(&mut *tx).await?;
        let run = run
            .as_ref()
            .map(run_row)
            .transpose()?
            .ok_or_else(|| StoreError::Corrupt(format!("task instance of missing run {run_pk}")))?;
        tx.commit().await?;
        let max_tries: i32 = row.try_get(2)?;
        let ready_at: Option<i64> = row.try_get(5)?;
        Ok(Some(Claimed {
            ti_pk,
            run_pk,
            dag_id: run.dag_id,
            run_id: run.run_id,
            run_type: run.run_type,
            task_id: row.try_get(1)?,
            map_index: row.try_get(3)?,
            map_item: row.try_get(4)?,
            ready_at: ready_at.map(crate::time::from_db),
            try_number,
            max_tries: max_tries as u32,
            version: run.version,
            logical_date: run.logical_date,
            interval: run.interval,
            conf: run.conf,
        }))
    }

    async fn stale_attempts(&self, cutoff: Timestamp) -> Result<Vec<RunningAttempt>> {
        let rows = sqlx::query(RUNNING_ATTEMPTS_STALE).bind(to_db(cutoff)).fetch_all(&self.pool).await?;
        rows.iter().map(running_attempt).collect()
    }

    async fn fail_owned_runs(&self, process_id: i64, now: Timestamp) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let runs: Vec<i64> = sqlx::query_scalar(
            "UPDATE dag_runs SET state = 'failed', end_date = $2
             WHERE owner_process = $1 AND state IN ('queued', 'running') RETURNING id",
        )
        .bind(process_id)
        .bind(to_db(now))
        .fetch_all(&mut *tx)
        .await?;
        let mut transitions = TransitionBatch::default();
        for run_pk in &runs {
            transitions.push(*run_pk, None, None, "failed", "recovery", Some("the process running this test died"));
        }
        transitions.flush(&mut tx, now).await?;
        tx.commit().await?;
        Ok(runs.len() as u64)
    }

    async fn append_logs(&self, chunks: &[LogChunk]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let ti_pks: Vec<i64> = chunks.iter().map(|chunk| chunk.ti_pk).collect();
        let tries: Vec<i32> = chunks.iter().map(|chunk| chunk.try_number as i32).collect();
        let offsets: Vec<i64> = chunks.iter().map(|chunk| chunk.offset as i64).collect();
        let data: Vec<&[u8]> = chunks.iter().map(|chunk| chunk.data.as_slice()).collect();
        sqlx::query(
            "INSERT INTO task_log_chunks (ti_pk, try_number, byte_offset, data)
             SELECT * FROM UNNEST($1::bigint[], $2::int[], $3::bigint[], $4::bytea[])
             ON CONFLICT DO NOTHING",
        )
        .bind(&ti_pks)
        .bind(&tries)
        .bind(&offsets)
        .bind(&data)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn read_log(&self, ti_pk: i64, try_number: u32, from: u64) -> Result<Option<Vec<u8>>> {
        let rows = sqlx::query(
            "SELECT byte_offset, data FROM task_log_chunks WHERE ti_pk = $1 AND try_number = $2
             AND byte_offset + length(data) > $3 ORDER BY byte_offset",
        )
        .bind(ti_pk)
        .bind(try_number as i32)
        .bind(from as i64)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            let any = sqlx::query("SELECT 1 FROM task_log_chunks WHERE ti_pk = $1 AND try_number = $2 LIMIT 1")
                .bind(ti_pk)
                .bind(try_number as i32)
                .fetch_optional(&self.pool)
                .await?;
            return Ok(any.map(|_| Vec::new()));
        }
        let pieces = rows
            .iter()
            .map(|row| Ok((row.try_get::<i64, _>(0)? as u64, row.try_get::<Vec<u8>, _>(1)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(join_log(&pieces, from)))
    }

    async fn pools(&self) -> Result<Vec<PoolRow>> {
        let rows = sqlx::query(
            "SELECT p.name, p.slots, p.description,
                    (SELECT COUNT(*) FROM task_instances t WHERE t.pool = p.name AND t.state IN ('queued', 'running'))
             FROM pools p ORDER BY p.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PoolRow {
                    name: row.try_get(0)?,
                    slots: row.try_get::<i32, _>(1)?.max(0) as u32,
                    description: row.try_get(2)?,
                    occupied: row.try_get::<i64, _>(3)? as u32,
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
        .bind(i32::try_from(slots).unwrap_or(i32::MAX))
        .bind(description)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn clean_batch(&self, cutoff: Timestamp, batch: u32, dry_run: bool) -> Result<CleanReport> {
        let mut tx = self.pool.begin().await?;
        // SKIP LOCKED: a run a scheduler holds right now is left for the next batch.
        let runs: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT id, dag_id, run_id FROM dag_runs WHERE state IN ('success', 'failed') AND end_date < $1
             ORDER BY end_date LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(to_db(cutoff))
        .bind(i64::from(batch))
        .fetch_all(&mut *tx)
        .await?;
        let ids: Vec<i64> = runs.iter().map(|(id, _, _)| *id).collect();
        let counted: (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM task_instances WHERE run_pk = ANY($1)),
                    (SELECT count(*) FROM task_attempts WHERE ti_pk IN (SELECT id FROM task_instances WHERE run_pk = ANY($1))),
                    (SELECT count(*) FROM state_transitions WHERE run_pk = ANY($1)),
                    (SELECT count(*) FROM task_log_chunks WHERE ti_pk IN (SELECT id FROM task_instances WHERE run_pk = ANY($1)))",
        )
        .bind(&ids)
        .fetch_one(&mut *tx)
        .await?;
        let audit: Vec<i64> = sqlx::query_scalar("SELECT id FROM audit_log WHERE at < $1 ORDER BY id LIMIT $2")
            .bind(to_db(cutoff))
            .bind(i64::from(batch))
            .fetch_all(&mut *tx)
            .await?;
        let alerts: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM alert_outbox WHERE state <> 'pending' AND created_at < $1 ORDER BY id LIMIT $2",
        )
        .bind(to_db(cutoff))
        .bind(i64::from(batch))
        .fetch_all(&mut *tx)
        .await?;
        if !dry_run {
            sqlx::query("DELETE FROM alert_outbox WHERE id = ANY($1)").bind(&alerts).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM dag_runs WHERE id = ANY($1)").bind(&ids).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM audit_log WHERE id = ANY($1)").bind(&audit).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(CleanReport {
            runs: runs.len() as u64,
            task_instances: counted.0 as u64,
            attempts: counted.1 as u64,
            transitions: counted.2 as u64,
            log_pieces: counted.3 as u64,
            audit_rows: audit.len() as u64,
            alerts: alerts.len() as u64,
            removed_runs: runs.into_iter().map(|(_, dag_id, run_id)| (dag_id, run_id)).collect(),
        })
    }

    async fn alert_transitions(&self, after_id: i64, limit: u32) -> Result<AlertTransitions> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM state_transitions WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        let Some(last) = ids.last().copied() else { return Ok(AlertTransitions::default()) };
        let rows = sqlx::query(ALERT_TRANSITIONS).bind(after_id).bind(last).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let events = rows
            .iter()
            .map(|row| {
                let run_type: String = row.try_get(10)?;
                Ok(AlertTransition {
                    id: row.try_get(0)?,
                    at: from_db(row.try_get(1)?),
                    run_pk: row.try_get(2)?,
                    ti_pk: row.try_get(3)?,
                    from_state: row.try_get(4)?,
                    to_state: row.try_get(5)?,
                    actor: row.try_get(6)?,
                    detail: row.try_get(7)?,
                    dag_id: row.try_get(8)?,
                    run_id: row.try_get(9)?,
                    run_type: updraft_core::plan::RunType::parse(&run_type)
                        .ok_or_else(|| StoreError::Corrupt(format!("run type `{run_type}`")))?,
                    version: DagVersion(row.try_get(11)?),
                    interval: updraft_core::DataInterval {
                        start: from_db(row.try_get(12)?),
                        end: from_db(row.try_get(13)?),
                    },
                    task_id: row.try_get(14)?,
                    map_index: row.try_get::<Option<i32>, _>(15)?.unwrap_or(-1),
                    try_number: row.try_get::<Option<i32>, _>(16)?.map(|number| number.max(0) as u32),
                })
            })
            .collect::<Result<_>>()?;
        Ok(AlertTransitions { ids, events })
    }

    async fn last_transition_id(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COALESCE(max(id), 0)::BIGINT FROM state_transitions")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn enqueue_alerts(&self, alerts: &[NewAlert], now: Timestamp) -> Result<Vec<bool>> {
        let mut tx = self.pool.begin().await?;
        let mut new = Vec::with_capacity(alerts.len());
        for alert in alerts {
            let done = sqlx::query(
                "INSERT INTO alert_outbox (dedup_key, notifier, payload, created_at, next_attempt_at)
                 VALUES ($1, $2, $3, $4, $4) ON CONFLICT (dedup_key) DO NOTHING",
            )
            .bind(&alert.dedup_key)
            .bind(&alert.notifier)
            .bind(&alert.payload)
            .bind(to_db(now))
            .execute(&mut *tx)
            .await?;
            new.push(done.rows_affected() > 0);
        }
        tx.commit().await?;
        Ok(new)
    }

    async fn claim_alerts(&self, now: Timestamp, lease_until: Timestamp, limit: u32) -> Result<Vec<AlertRow>> {
        let rows = sqlx::query(
            "UPDATE alert_outbox SET claimed_until = $2
             WHERE id IN (SELECT id FROM alert_outbox
                          WHERE state = 'pending' AND next_attempt_at <= $1
                            AND (claimed_until IS NULL OR claimed_until <= $1)
                          ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING id, notifier, payload, attempts, created_at",
        )
        .bind(to_db(now))
        .bind(to_db(lease_until))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut alerts = rows
            .iter()
            .map(|row| {
                Ok(AlertRow {
                    id: row.try_get(0)?,
                    notifier: row.try_get(1)?,
                    payload: row.try_get(2)?,
                    attempts: row.try_get::<i32, _>(3)?.max(0) as u32,
                    created_at: from_db(row.try_get(4)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        alerts.sort_by_key(|alert| alert.id);
        Ok(alerts)
    }

    async fn alerts_sent_since(&self, notifier: &str, since: Timestamp) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM alert_outbox WHERE state = 'sent' AND notifier = $1 AND sent_at >= $2",
        )
        .bind(notifier)
        .bind(to_db(since))
        .fetch_one(&self.pool)
        .await?;
        Ok(count as u64)
    }

    async fn settle_alerts(&self, outcomes: &[(i64, AlertOutcome)], now: Timestamp) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (id, outcome) in outcomes {
            let (state, next, error) = outcome.columns();
            sqlx::query(
                "UPDATE alert_outbox SET state = $2, next_attempt_at = COALESCE($3, next_attempt_at),
                     last_error = COALESCE($4, last_error), claimed_until = NULL, attempts = attempts + $5,
                     sent_at = CASE WHEN $2 IN ('sent', 'folded') THEN $6 ELSE sent_at END
                 WHERE id = $1",
            )
            .bind(id)
            .bind(state)
            .bind(next.map(to_db))
            .bind(error)
            .bind(i32::from(outcome.counts_as_try()))
            .bind(to_db(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn alert_counts(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM alert_outbox GROUP BY state").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|(state, count)| (state, count as u64)).collect())
    }

    async fn record_deadline_miss(&self, run_pk: i64, task_id: Option<&str>, now: Timestamp) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO deadline_misses (run_pk, task_id, detected_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(run_pk)
        .bind(task_id.unwrap_or_default())
        .bind(to_db(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn recent_scheduled_runs(&self, since: Timestamp) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(RUN_SELECT_RECENT_SCHEDULED).bind(to_db(since)).fetch_all(&self.pool).await?;
        rows.iter().map(run_row).collect()
    }

    async fn failed_runs_since(&self, since: Timestamp) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(RUN_SELECT_FAILED_SINCE).bind(to_db(since)).fetch_all(&self.pool).await?;
        rows.iter().map(run_row).collect()
    }

    async fn stuck_task_instances(&self, before: Timestamp, limit: u32) -> Result<Vec<StuckTask>> {
        let rows =
            sqlx::query(STUCK_TASK_INSTANCES).bind(to_db(before)).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get(4)?;
                Ok(StuckTask {
                    dag_id: row.try_get(0)?,
                    run_id: row.try_get(1)?,
                    task_id: row.try_get(2)?,
                    map_index: row.try_get(3)?,
                    state: state.parse().map_err(|_| StoreError::Corrupt(format!("task state `{state}`")))?,
                    since: from_db(row.try_get(5)?),
                })
            })
            .collect()
    }

    async fn ops_value(&self, name: &str) -> Result<Option<OpsValue>> {
        let row: Option<(i64, Option<String>)> = sqlx::query_as("SELECT value, detail FROM ops_state WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(value, detail)| OpsValue { value, detail }))
    }

    async fn set_ops_value(&self, name: &str, expected: Option<i64>, value: &OpsValue) -> Result<bool> {
        let done = match expected {
            None => {
                sqlx::query("INSERT INTO ops_state (name, value, detail) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(name)
                    .bind(value.value)
                    .bind(&value.detail)
                    .execute(&self.pool)
                    .await?
            }
            Some(expected) => {
                sqlx::query("UPDATE ops_state SET value = $2, detail = $3 WHERE name = $1 AND value = $4")
                    .bind(name)
                    .bind(value.value)
                    .bind(&value.detail)
                    .bind(expected)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(done.rows_affected() > 0)
    }

    async fn delete_pool(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM pools WHERE name = $1").bind(name).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn change_watcher(&self) -> Result<Box<dyn ChangeWatcher>> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Box::new(PgWatcher { listener }))
    }
}

/// Reads a pass's snapshot: locks a batch of DAGs (skipping those another
/// scheduler holds, oldest pass first), their active runs and task instances, and
/// the pools this pass may fill. Returns the DAGs locked and whether the batch was
/// full (more may be waiting).
async fn read_snapshot(
    tx: &mut Tx<'_>,
    scope: Scope,
    now: Timestamp,
    batch: u32,
) -> Result<(RawSnapshot, Vec<String>, bool)> {
    let (dags, runs) = match scope {
        Scope::All => {
            let dags: Vec<DagRow> = sqlx::query(DAG_LOCK_FOR_SCHEDULING)
                .bind(to_db(now))
                .bind(i64::from(batch))
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(dag_row)
                .collect::<Result<_>>()?;
            let ids: Vec<String> = dags.iter().map(|dag| dag.dag_id.clone()).collect();
            let runs: Vec<RunRow> = sqlx::query(RUN_SELECT_ACTIVE_OF_DAGS)
                .bind(ids)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(run_row)
                .collect::<Result<_>>()?;
            (dags, runs)
        }
        Scope::Run(run_pk) => {
            let runs: Vec<RunRow> = sqlx::query(RUN_SELECT_ACTIVE_ONE)
                .bind(run_pk)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(run_row)
                .collect::<Result<_>>()?;
            let dags: Vec<DagRow> = sqlx::query(DAG_SELECT_FOR_RUN)
                .bind(run_pk)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(dag_row)
                .collect::<Result<_>>()?;
            (dags, runs)
        }
    };
    let run_pks: Vec<i64> = runs.iter().map(|run| run.run_pk).collect();
    let task_instances: Vec<TaskInstanceRow> = sqlx::query(TI_SELECT_BY_RUNS)
        .bind(run_pks)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(ti_row)
        .collect::<Result<_>>()?;
    let locked_dags: Vec<String> = match scope {
        Scope::All => dags.iter().map(|dag| dag.dag_id.clone()).collect(),
        Scope::Run(_) => Vec::new(),
    };
    let full_batch = matches!(scope, Scope::All) && locked_dags.len() as u32 >= batch;
    // A `dags test` run ignores pools and runner capacity, and has no schedule.
    let Scope::All = scope else {
        let snapshot = RawSnapshot { dags, runs, task_instances, ..RawSnapshot::default() };
        return Ok((snapshot, locked_dags, false));
    };
    // Only the holder of a pool's row queues into it, so pools are never overfilled.
    let all_pools: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pools ORDER BY name").fetch_all(&mut **tx).await?;
    let held = sqlx::query("SELECT name, slots, description FROM pools ORDER BY name FOR UPDATE SKIP LOCKED")
        .fetch_all(&mut **tx)
        .await?;
    // The active `dags test` runs are looked up once, not joined: a join lets the
    // planner scan every run ever made.
    let busy = sqlx::query(
        "SELECT t.pool, COUNT(*), COUNT(*) FILTER (WHERE t.run_pk <> ALL(ARRAY(
             SELECT id FROM dag_runs WHERE state IN ('queued', 'running') AND run_type = 'test')))
         FROM task_instances t WHERE t.state IN ('queued', 'running') GROUP BY t.pool",
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut busy_by_pool: HashMap<String, u32> = HashMap::new();
    let mut busy_slots = 0u32;
    for row in &busy {
        let pool: String = row.try_get(0)?;
        busy_by_pool.insert(pool, row.try_get::<i64, _>(1)? as u32);
        busy_slots += row.try_get::<i64, _>(2)? as u32;
    }
    let pools = held
        .iter()
        .map(|row| {
            let name: String = row.try_get(0)?;
            Ok(PoolRow {
                occupied: busy_by_pool.get(&name).copied().unwrap_or(0),
                name,
                slots: row.try_get::<i32, _>(1)?.max(0) as u32,
                description: row.try_get(2)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let busy_pools = all_pools.into_iter().filter(|name| !pools.iter().any(|pool| &pool.name == name)).collect();
    let next_dag_due: Option<i64> =
        sqlx::query_scalar("SELECT MIN(next_due) FROM dags WHERE is_active AND NOT is_paused AND next_due > $1")
            .bind(to_db(now))
            .fetch_one(&mut **tx)
            .await?;
    let snapshot = RawSnapshot {
        dags,
        runs,
        task_instances,
        pools,
        busy_slots,
        next_dag_due: opt_from_db(next_dag_due),
        busy_pools,
    };
    Ok((snapshot, locked_dags, full_batch))
}

/// Applies a plan, grouped as `grouped::group` explains.
async fn apply(tx: &mut Tx<'_>, actions: &[Action], actor: &str, now: Timestamp) -> Result<ApplyReport> {
    let grouped = group(actions)?;
    let mut report = ApplyReport::default();
    let mut transitions = TransitionBatch::default();
    for run in &grouped.creates {
        match insert_run(tx, run, actor, now).await? {
            Some(_) => report.runs_created += 1,
            None => report.conflicts += 1,
        }
    }
    for (dag_id, last_automated, next_due) in &grouped.schedules {
        sqlx::query(
            "UPDATE dags SET last_automated_start = $2, last_automated_end = $3, next_due = $4 WHERE dag_id = $1",
        )
        .bind(dag_id.as_str())
        .bind(last_automated.map(|interval| to_db(interval.start)))
        .bind(last_automated.map(|interval| to_db(interval.end)))
        .bind(next_due.map(to_db))
        .execute(&mut **tx)
        .await?;
    }
    if !grouped.starts.is_empty() {
        let started: Vec<i64> =
            sqlx::query_scalar("UPDATE dag_runs SET state = 'running', start_date = $2 WHERE id = ANY($1) AND state = 'queued' RETURNING id")
                .bind(&grouped.starts)
                .bind(to_db(now))
                .fetch_all(&mut **tx)
                .await?;
        report.conflicts += grouped.starts.len() - started.len();
        for run_pk in grouped.starts.iter().filter(|run_pk| started.contains(run_pk)) {
            transitions.push(*run_pk, None, Some("queued"), "running", actor, None);
        }
    }
    for step in &grouped.state_steps {
        for StateGroup { from, to, ti_pks } in step {
            let queued_at = if *to == TaskState::Queued { "$2" } else { "queued_at" };
            let end_date = if to.is_finished() { "$2" } else { "end_date" };
            let scheduled_at = if *to == TaskState::Scheduled { "$2" } else { "scheduled_at" };
            // Safe to assemble: both parts are chosen from literals above.
            let moved: HashMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(format!(
                "UPDATE task_instances SET state = $3, wait_reason = NULL, updated_at = $2,
                     queued_at = {queued_at}, end_date = {end_date}, scheduled_at = {scheduled_at}
                 WHERE id = ANY($1) AND state = $4 RETURNING id, run_pk"
            )))
            .bind(ti_pks)
            .bind(to_db(now))
            .bind(to.as_str())
            .bind(from.as_str())
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
            report.conflicts += ti_pks.len() - moved.len();
            if *to == TaskState::Queued {
                report.tasks_queued += moved.len();
            }
            for ti_pk in ti_pks {
                if let Some(run_pk) = moved.get(ti_pk) {
                    transitions.push(*run_pk, Some(*ti_pk), Some(from.as_str()), to.as_str(), actor, None);
                }
            }
        }
    }
    for (reason, ti_pks) in &grouped.reasons {
        sqlx::query(
            "UPDATE task_instances SET wait_reason = $2
             WHERE id = ANY($1) AND state IN ('none', 'scheduled', 'up_for_retry')",
        )
        .bind(ti_pks)
        .bind(reason)
        .execute(&mut **tx)
        .await?;
    }
    for expansion in &grouped.expansions {
        if !expand(tx, expansion, &mut transitions, actor, now).await? {
            report.conflicts += 1;
        }
    }
    for (run_pk, state) in &grouped.finishes {
        let done = sqlx::query(
            "UPDATE dag_runs SET state = $2, end_date = $3 WHERE id = $1 AND state = 'running'
             AND NOT EXISTS (SELECT 1 FROM task_instances WHERE run_pk = $1
                             AND state NOT IN ('success', 'failed', 'skipped', 'upstream_failed', 'removed'))",
        )
        .bind(run_pk)
        .bind(state.as_str())
        .bind(to_db(now))
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 1 {
            report.runs_finished += 1;
            transitions.push(*run_pk, None, Some("running"), state.as_str(), actor, None);
        } else {
            report.conflicts += 1;
        }
    }
    transitions.flush(tx, now).await?;
    Ok(report)
}

/// Expands a mapped task's unexpanded instance (compare-and-set on it being `none`
/// and unexpanded): it becomes item 0 and the others are added after it; no items
/// skip it, unreadable items fail it. False if it was no longer there to expand.
async fn expand(
    tx: &mut Tx<'_>,
    expansion: &Expansion<'_>,
    transitions: &mut TransitionBatch,
    actor: &str,
    now: Timestamp,
) -> Result<bool> {
    let outputs = if expansion.reads_outputs() {
        let rows: Vec<(String, i32, Option<String>)> = sqlx::query_as(
            "SELECT t.task_id, t.map_index, o.value FROM task_instances t LEFT JOIN task_outputs o ON o.ti_pk = t.id
             WHERE t.run_pk = $1 AND (o.value IS NOT NULL OR t.map_index >= 0)",
        )
        .bind(expansion.run_pk)
        .fetch_all(&mut **tx)
        .await?;
        updraft_core::mapping::collect_outputs(rows)
    } else {
        Default::default()
    };
    let (to, reason, detail) = match expansion.decide(&outputs) {
        Expanded::Items(items) => {
            let done = sqlx::query(
                "UPDATE task_instances SET map_index = 0, map_item = $2, updated_at = $3, wait_reason = NULL
                 WHERE id = $1 AND state = 'none' AND map_index = -1",
            )
            .bind(expansion.ti_pk)
            .bind(&items[0])
            .bind(to_db(now))
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() == 0 {
                return Ok(false);
            }
            // After a clear, the last expansion's instances are reused (their try
            // numbers keep growing, so old attempts stay fenced off) or removed.
            sqlx::query(
                "INSERT INTO task_instances (run_pk, task_id, state, try_number, max_tries, pool, priority, queue,
                     updated_at, map_index, map_item)
                 SELECT t.run_pk, t.task_id, 'none', 0, t.max_tries - t.try_number, t.pool, t.priority, t.queue, $2,
                     item.ordinality::integer, item.value
                 FROM task_instances t, unnest($3::text[]) WITH ORDINALITY AS item (value, ordinality)
                 WHERE t.id = $1 ORDER BY item.ordinality
                 ON CONFLICT (run_pk, task_id, map_index) DO UPDATE SET state = 'none', map_item = excluded.map_item,
                     wait_reason = NULL, end_date = NULL, updated_at = excluded.updated_at",
            )
            .bind(expansion.ti_pk)
            .bind(to_db(now))
            .bind(&items[1..])
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "UPDATE task_instances SET state = 'removed', updated_at = $3
                 WHERE (run_pk, task_id) = (SELECT run_pk, task_id FROM task_instances WHERE id = $1)
                   AND map_index >= $2 AND state = 'none'",
            )
            .bind(expansion.ti_pk)
            .bind(items.len() as i32)
            .bind(to_db(now))
            .execute(&mut **tx)
            .await?;
            let detail = crate::grouped::mapped_detail(items.len());
            transitions.push(expansion.run_pk, Some(expansion.ti_pk), Some("none"), "none", actor, Some(&detail));
            return Ok(true);
        }
        Expanded::Skip => ("skipped", None, "for_each has no items".to_string()),
        Expanded::Fail(message) => ("failed", Some(Expansion::failure_reason(&message)), message),
    };
    let done = sqlx::query(
        "UPDATE task_instances SET state = $2, wait_reason = $3, end_date = $4, updated_at = $4
         WHERE id = $1 AND state = 'none' AND map_index = -1",
    )
    .bind(expansion.ti_pk)
    .bind(to)
    .bind(reason)
    .bind(to_db(now))
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    transitions.push(expansion.run_pk, Some(expansion.ti_pk), Some("none"), to, actor, Some(&detail));
    Ok(true)
}

/// Wakes on `NOTIFY updraft` from any process. After a lost connection it
/// reconnects and reports a change, since notifications may have been missed.
pub struct PgWatcher {
    listener: PgListener,
}

#[async_trait]
impl ChangeWatcher for PgWatcher {
    async fn changed(&mut self) -> Result<()> {
        // `try_recv` yields `None` when the connection dropped; it reconnects on the
        // next call. Either way something may have changed.
        self.listener.try_recv().await?;
        Ok(())
    }
}
