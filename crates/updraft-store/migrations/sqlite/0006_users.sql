-- Accounts. A password is stored only as its argon2id hash; `teams` is a JSON
-- list of team names (a DAG's team is its owner).
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    teams TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until BIGINT
);
