-- Queues: a task names one; a worker takes tasks of the queues it serves.
ALTER TABLE task_instances ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
-- The last heartbeat of the running attempt (renewing its lease). A running attempt
-- whose heartbeat is older than the timeout is a zombie: failed, then retried.
ALTER TABLE task_instances ADD COLUMN heartbeat_at BIGINT;
CREATE INDEX task_instances_running ON task_instances (heartbeat_at) WHERE state = 'running';
