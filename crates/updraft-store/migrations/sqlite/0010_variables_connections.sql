-- Variables and connections. Values, passwords and extras are Fernet tokens
-- (encrypted with `core.fernet_key`); nothing secret is stored in clear.
CREATE TABLE variables (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    updated_at BIGINT NOT NULL
);
CREATE TABLE connections (
    conn_id TEXT PRIMARY KEY,
    conn_type TEXT NOT NULL,
    host TEXT,
    schema_name TEXT,
    login TEXT,
    password TEXT,
    port INTEGER,
    extra TEXT,
    description TEXT NOT NULL DEFAULT '',
    updated_at BIGINT NOT NULL
);
