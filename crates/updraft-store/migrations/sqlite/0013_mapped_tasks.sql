-- Mapped task instances (`for_each`): one task instance per item, told apart by
-- `map_index` (-1: not mapped, or not expanded yet), with the item it runs (JSON).
-- SQLite cannot change a UNIQUE constraint in place, so the table is rebuilt, the
-- way SQLite's documentation describes (foreign keys are off while migrating).
CREATE TABLE task_instances_new (
    id INTEGER PRIMARY KEY,
    run_pk BIGINT NOT NULL REFERENCES dag_runs (id) ON DELETE CASCADE,
    task_id TEXT NOT NULL,
    state TEXT NOT NULL,
    try_number INTEGER NOT NULL DEFAULT 0,
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
    wait_reason TEXT,
    updated_at BIGINT NOT NULL,
    queue TEXT NOT NULL DEFAULT 'default',
    heartbeat_at BIGINT,
    map_index INTEGER NOT NULL DEFAULT -1,
    map_item TEXT,
    UNIQUE (run_pk, task_id, map_index)
);
INSERT INTO task_instances_new (id, run_pk, task_id, state, try_number, max_tries, pool, priority, queued_at,
    start_date, end_date, retry_at, process_id, hostname, pid, pid_start, exit_code, wait_reason, updated_at, queue,
    heartbeat_at)
SELECT id, run_pk, task_id, state, try_number, max_tries, pool, priority, queued_at, start_date, end_date, retry_at,
    process_id, hostname, pid, pid_start, exit_code, wait_reason, updated_at, queue, heartbeat_at
FROM task_instances;
DROP TABLE task_instances;
ALTER TABLE task_instances_new RENAME TO task_instances;
CREATE INDEX task_instances_busy ON task_instances (state, pool) WHERE state IN ('queued', 'running');
CREATE INDEX task_instances_process ON task_instances (process_id) WHERE state = 'running';
CREATE INDEX task_instances_queued ON task_instances (priority DESC, queued_at, id) WHERE state = 'queued';
CREATE INDEX task_instances_running ON task_instances (heartbeat_at) WHERE state = 'running';
