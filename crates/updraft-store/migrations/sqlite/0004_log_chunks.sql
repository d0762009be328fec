-- Logs of attempts run by remote workers, shipped in pieces while they run. A
-- piece is keyed by its byte offset in the worker's log file, so a piece sent
-- twice (a retried request) is stored once.
CREATE TABLE task_log_chunks (
    ti_pk INTEGER NOT NULL REFERENCES task_instances (id) ON DELETE CASCADE,
    try_number INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (ti_pk, try_number, byte_offset)
) WITHOUT ROWID;
