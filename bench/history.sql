-- A metadata database with a long past, so that the hot queries can be checked
-- (bench/history) against the history a busy installation has after months:
-- 500 finished runs of `fanout_1000` (501,000 task instances) and 1,000 finished
-- runs of each of 50 ten-task DAGs (500,000), one attempt and three state
-- transitions per task instance. Run on a migrated, otherwise empty database.
\set ON_ERROR_STOP on
BEGIN;
INSERT INTO dag_runs (dag_id, run_id, run_type, state, version, logical_date, data_interval_start,
                      data_interval_end, queued_at, start_date, end_date)
SELECT 'fanout_1000', 'history__' || g, 'manual', 'success', 'history', t, t, t, t, t, t + 5000000
FROM generate_series(1, 500) g, LATERAL (SELECT (1700000000 + g * 60)::bigint * 1000000 AS t) x;
INSERT INTO dag_runs (dag_id, run_id, run_type, state, version, logical_date, data_interval_start,
                      data_interval_end, queued_at, start_date, end_date)
SELECT 'history_' || d, 'scheduled__' || g, 'scheduled', 'success', 'history', t, t, t + 3600000000, t, t, t + 5000000
FROM generate_series(1, 50) d, generate_series(1, 1000) g,
     LATERAL (SELECT (1700000000 + g * 3600)::bigint * 1000000 AS t) x;

INSERT INTO task_instances (run_pk, task_id, state, try_number, max_tries, pool, priority, queued_at,
                            start_date, end_date, heartbeat_at, process_id, hostname, exit_code, updated_at)
SELECT r.id, tasks.task, 'success', 1, 1, 'default', 1, r.start_date, r.start_date, r.end_date, r.end_date,
       1, 'history', 0, r.end_date
FROM dag_runs r,
     LATERAL (SELECT 'start' UNION ALL SELECT 'work_' || i FROM generate_series(0, 999) i
              UNION ALL SELECT 'finish') tasks(task)
WHERE r.run_id LIKE 'history\_\_%';
INSERT INTO task_instances (run_pk, task_id, state, try_number, max_tries, pool, priority, queued_at,
                            start_date, end_date, heartbeat_at, process_id, hostname, exit_code, updated_at)
SELECT r.id, 'step_' || i, 'success', 1, 1, 'default', 1, r.start_date, r.start_date, r.end_date, r.end_date,
       1, 'history', 0, r.end_date
FROM dag_runs r, generate_series(0, 9) i
WHERE r.dag_id LIKE 'history\_%';

INSERT INTO task_attempts (ti_pk, try_number, state, process_id, hostname, start_date, end_date, exit_code)
SELECT id, 1, 'success', 1, 'history', start_date, end_date, 0 FROM task_instances WHERE hostname = 'history';

INSERT INTO state_transitions (run_pk, ti_pk, at, from_state, to_state, actor)
SELECT t.run_pk, t.id, t.start_date, s.from_state, s.to_state, 'history'
FROM task_instances t,
     (VALUES (NULL, 'queued'), ('queued', 'running'), ('running', 'success')) s(from_state, to_state)
WHERE t.hostname = 'history';

-- Logs shipped by remote workers: one piece for each task of ten of the DAGs.
INSERT INTO task_log_chunks (ti_pk, try_number, byte_offset, data)
SELECT t.id, 1, 0, convert_to('[history] a line of log for ' || t.task_id || E'\n', 'UTF8')
FROM task_instances t JOIN dag_runs r ON r.id = t.run_pk
WHERE r.dag_id IN ('history_1', 'history_2', 'history_3', 'history_4', 'history_5',
                   'history_6', 'history_7', 'history_8', 'history_9', 'history_10');
COMMIT;
ANALYZE;
