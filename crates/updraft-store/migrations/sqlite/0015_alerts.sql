-- Alerts: messages to notifiers, written before they are sent (an outbox), each
-- once: `dedup_key` names the event and the notifier, so a second scheduler or a
-- restart that sees the same event adds nothing.
CREATE TABLE alert_outbox (
    id INTEGER PRIMARY KEY,
    dedup_key TEXT NOT NULL UNIQUE,
    notifier TEXT NOT NULL,
    payload TEXT NOT NULL,
    -- pending, sent, folded (into a rate-limit summary) or failed (gave up).
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    claimed_until INTEGER,
    sent_at INTEGER,
    last_error TEXT
);
CREATE INDEX alert_outbox_due ON alert_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX alert_outbox_sent ON alert_outbox (notifier, sent_at) WHERE state = 'sent';

-- Background jobs' progress, one row each: the transition the alerts read up to,
-- the last digest window, the last maintenance clean-up (with its report).
CREATE TABLE ops_state (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    detail TEXT
);

-- Deadlines missed, once per run (task_id '' for the run's own deadline).
CREATE TABLE deadline_misses (
    run_pk INTEGER NOT NULL REFERENCES dag_runs (id) ON DELETE CASCADE,
    task_id TEXT NOT NULL,
    detected_at INTEGER NOT NULL,
    PRIMARY KEY (run_pk, task_id)
);

-- The digest's stuck tasks: ready for long, or queued for long.
CREATE INDEX task_instances_ready ON task_instances (scheduled_at) WHERE state = 'scheduled';
CREATE INDEX dag_runs_end ON dag_runs (end_date);
