use updraft_core::state::IllegalTransition;
use updraft_core::{RunState, TaskState};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL `{0}`: expected `sqlite://<path>`, `sqlite::memory:` or `postgres://...`")]
    UnsupportedUrl(String),
    #[error("cannot create the state folder `{path}`")]
    CreateFolder {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the database `{location}`")]
    Open {
        location: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot connect to the database `{location}`")]
    Connect {
        location: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate the database schema")]
    MigratePostgres(#[source] sqlx::migrate::MigrateError),
    #[error("database error")]
    Postgres(#[from] sqlx::Error),
    #[error("cannot migrate the database schema to version {version}")]
    Migrate {
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the database schema is version {found}, newer than this Updraft knows ({known}); upgrade Updraft")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("database error")]
    Database(#[from] rusqlite::Error),
    #[error("store thread: {0}")]
    Thread(String),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    /// A compare-and-set of an operator's change missed: someone changed the state
    /// meanwhile, and nothing was written.
    #[error("{0} changed meanwhile; nothing was changed, look again and retry")]
    Changed(String),
    #[error(transparent)]
    IllegalTask(#[from] IllegalTransition<TaskState>),
    #[error(transparent)]
    IllegalRun(#[from] IllegalTransition<RunState>),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
