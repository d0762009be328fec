-- A token per remote worker (besides the shared `worker.token`), so one worker's
-- access can be revoked alone. Only the SHA-256 of a token is stored.
CREATE TABLE worker_tokens (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    last_used_at BIGINT
);
