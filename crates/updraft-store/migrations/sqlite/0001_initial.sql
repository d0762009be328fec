-- Updraft metadata schema, version 1 (SQLite).
-- Timestamps are microseconds since the Unix epoch (UTC) in BIGINT columns: one
-- representation for SQLite and PostgreSQL, exact, and cheap to compare.
-- States are text, one column each; legal moves are checked in updraft-core and
-- written as compare-and-set (`WHERE state = <expected>`).

CREATE TABLE dags (
    dag_id TEXT PRIMARY KEY NOT NULL,
    fileloc TEXT NOT NULL,
    owner TEXT NOT NULL,
    description TEXT,
    schedule TEXT,
    timezone TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '[]',
    is_paused BOOLEAN NOT NULL,
    -- False once its file is gone; its runs stay readable.
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    latest_version TEXT NOT NULL,
    -- The data interval of the newest scheduled run: where the schedule resumes.
    last_automated_start BIGINT,
    last_automated_end BIGINT,
    -- When the scheduler should next look at this DAG's schedule; NULL: never again.
    next_due BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX dags_due ON dags (next_due) WHERE is_active AND NOT is_paused;

CREATE TABLE dag_versions (
    dag_id TEXT NOT NULL,
    version TEXT NOT NULL,
    -- The parsed definition (JSON) that runs of this version execute.
    definition TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (dag_id, version)
);

CREATE TABLE processes (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    hostname TEXT NOT NULL,
    pid BIGINT NOT NULL,
    -- The OS start time of `pid`, so a reused pid is never mistaken for it.
    pid_start BIGINT,
    state TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
CREATE INDEX processes_state ON processes (state, kind);

CREATE TABLE dag_runs (
    id INTEGER PRIMARY KEY,
    dag_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    run_type TEXT NOT NULL,
    state TEXT NOT NULL,
    -- The DAG version this run executes, fixed when it is created.
    version TEXT NOT NULL,
    logical_date BIGINT NOT NULL,
    data_interval_start BIGINT NOT NULL,
    data_interval_end BIGINT NOT NULL,
    conf TEXT NOT NULL DEFAULT '{}',
    -- For `dags test` runs: the process executing it.
    owner_process BIGINT,
    queued_at BIGINT NOT NULL,
    start_date BIGINT,
    end_date BIGINT,
    UNIQUE (dag_id, run_id)
);
-- One scheduled or backfill run per data interval.
CREATE UNIQUE INDEX dag_runs_interval ON dag_runs (dag_id, logical_date) WHERE run_type IN ('scheduled', 'backfill');
CREATE INDEX dag_runs_active ON dag_runs (state) WHERE state IN ('queued', 'running');
CREATE INDEX dag_runs_by_dag ON dag_runs (dag_id, logical_date);

CREATE TABLE task_instances (
    id INTEGER PRIMARY KEY,
    run_pk BIGINT NOT NULL REFERENCES dag_runs (id) ON DELETE CASCADE,
    task_id TEXT NOT NULL,
    state TEXT NOT NULL,
    -- Attempts started so far; with `id` it names an attempt, and since it only
    -- grows it fences writes from an attempt that was replaced.
    try_number INTEGER NOT NULL DEFAULT 0,
    -- Retries granted (Airflow's max_tries): a failed try n is retried while n <= max_tries.
    max_tries INTEGER NOT NULL,
    pool TEXT NOT NULL,
    priority INTEGER NOT NULL,
    queued_at BIGINT,
    start_date BIGINT,
    end_date BIGINT,
    retry_at BIGINT,
    process_id BIGINT,
    hostname TEXT,
    pid BIGINT,
    pid_start BIGINT,
    exit_code INTEGER,
    -- The scheduler's latest reason for not running it yet (JSON), for `tasks explain`.
    wait_reason TEXT,
    updated_at BIGINT NOT NULL,
    UNIQUE (run_pk, task_id)
);
CREATE INDEX task_instances_busy ON task_instances (state, pool) WHERE state IN ('queued', 'running');
CREATE INDEX task_instances_process ON task_instances (process_id) WHERE state = 'running';

CREATE TABLE task_attempts (
    ti_pk BIGINT NOT NULL REFERENCES task_instances (id) ON DELETE CASCADE,
    try_number INTEGER NOT NULL,
    state TEXT NOT NULL,
    process_id BIGINT,
    hostname TEXT,
    pid BIGINT,
    start_date BIGINT NOT NULL,
    end_date BIGINT,
    exit_code INTEGER,
    -- Why it ended, when not by the command itself (timeout, lost runner, shutdown).
    reason TEXT,
    log_path TEXT,
    PRIMARY KEY (ti_pk, try_number)
);

CREATE TABLE state_transitions (
    id INTEGER PRIMARY KEY,
    run_pk BIGINT NOT NULL REFERENCES dag_runs (id) ON DELETE CASCADE,
    -- NULL for a run's own transitions.
    ti_pk BIGINT,
    at BIGINT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    actor TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX state_transitions_ti ON state_transitions (ti_pk, id);
CREATE INDEX state_transitions_run ON state_transitions (run_pk, id);

CREATE TABLE pools (
    name TEXT PRIMARY KEY NOT NULL,
    slots INTEGER NOT NULL,
    description TEXT NOT NULL DEFAULT ''
);
INSERT INTO pools (name, slots, description) VALUES ('default', 128, 'Default pool');

CREATE TABLE import_errors (
    fileloc TEXT PRIMARY KEY NOT NULL,
    -- Every diagnostic of the file, rendered `path:line:column: message`, one per line.
    message TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
