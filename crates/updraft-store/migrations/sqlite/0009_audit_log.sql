-- Who did what and when: sign-ins, triggers, pauses, clears, marks, deletions,
-- account and token changes. Rows are only ever added.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT
);
