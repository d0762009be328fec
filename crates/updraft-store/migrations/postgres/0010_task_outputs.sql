-- What a task's latest try handed to its downstream tasks (`$UPDRAFT_OUTPUT`, JSON
-- text), apart from `task_instances` so scans of that table stay narrow.
CREATE TABLE task_outputs (
    ti_pk BIGINT PRIMARY KEY REFERENCES task_instances (id) ON DELETE CASCADE,
    value TEXT NOT NULL
);
