use updraft_core::state::IllegalTransition;
use updraft_core::{RunState, TaskState};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL `{0}`: expected `sqlite://<path>` or `sqlite::memory:`")]
    UnsupportedUrl(String),
    #[error("PostgreSQL is not available in this build yet (`{0}`); use `sqlite://<path>`")]
    PostgresUnavailable(String),
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
        source: sqlx::Error,
    },
    #[error("cannot migrate the database schema")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error(transparent)]
    IllegalTask(#[from] IllegalTransition<TaskState>),
    #[error(transparent)]
    IllegalRun(#[from] IllegalTransition<RunState>),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
