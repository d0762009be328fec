//! Where a runner gets its work and reports on it: the store itself (`standalone`,
//! `dags test`, and workers allowed to reach the database), or the API server over
//! HTTP ([`crate::remote::ApiSource`], workers without database credentials). The
//! runner loop, heartbeats and lease fencing are the same either way.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use updraft_core::Dag;
use updraft_core::clock::Clock;
use updraft_core::plan::DagVersion;
use updraft_store::{
    ChangeWatcher, Claimant, Claimed, DefinitionCache, FinishedAttempt, Heartbeat, LogChunk, NewProcess, ProcessState,
    Scope, Store, StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot reach the API server at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the API server at {url} answered {status}: {message}")]
    Refused { url: String, status: u16, message: String },
    #[error("the API server at {url} sent an answer that is not what a worker expects: {detail}")]
    Unreadable { url: String, detail: String },
    #[error("cannot read variables and connections: {0}")]
    Secrets(String),
}

pub type SourceResult<T> = std::result::Result<T, SourceError>;

#[async_trait]
pub trait WorkSource: Send + Sync + 'static {
    /// Where the work comes from, for messages.
    fn location(&self) -> String;
    /// Registers this process; its id names it in leases and heartbeats.
    async fn register(&self, process: &NewProcess) -> SourceResult<i64>;
    /// Records that this process stopped cleanly.
    async fn deregister(&self, process_id: i64) -> SourceResult<()>;
    /// Takes up to `limit` queued attempts. A source that long-polls holds the call
    /// up to `wait` until work appears; the store answers at once.
    async fn claim(&self, scope: Scope, claimant: &Claimant, limit: u32, wait: Duration) -> SourceResult<Vec<Claimed>>;
    /// Whether [`WorkSource::claim`] waits for work itself (so the runner asks again
    /// at once instead of waiting for a wake-up).
    fn long_polls(&self) -> bool;
    /// Something that wakes when other processes change the store, if this source
    /// can watch it.
    async fn watcher(&self) -> SourceResult<Option<Box<dyn ChangeWatcher>>>;
    /// Records the OS process of a running attempt (for the UI and crash recovery).
    async fn record_process(
        &self,
        ti_pk: i64,
        try_number: u32,
        pid: u32,
        pid_start: Option<u64>,
        log_path: &str,
    ) -> SourceResult<()>;
    /// Ends attempts (and stores their last log pieces first); for each, whether it
    /// was recorded (false: the attempt was replaced meanwhile).
    async fn finish(&self, ends: &[FinishedAttempt], logs: &[LogChunk], actor: &str) -> SourceResult<Vec<bool>>;
    /// Whether attempts' logs must be shipped ([`WorkSource::append_logs`]): the
    /// files of a remote worker are out of the API server's reach.
    fn ships_logs(&self) -> bool;
    async fn append_logs(&self, chunks: &[LogChunk]) -> SourceResult<()>;
    /// Renews this process's heartbeat and its attempts' leases.
    async fn heartbeat(&self, process_id: i64, leases: &[(i64, u32)]) -> SourceResult<Heartbeat>;
    /// The definition a run is pinned to.
    async fn definition(&self, dag_id: &str, version: &DagVersion) -> SourceResult<Arc<Dag>>;
    /// The database's variables and connections in clear, for templates.
    async fn secrets(&self) -> SourceResult<updraft_store::Secrets>;
    /// The outputs of a run's tasks so far (JSON text by task id).
    async fn outputs(&self, dag_id: &str, run_id: &str) -> SourceResult<std::collections::BTreeMap<String, String>>;
}

/// The store itself.
pub struct StoreSource {
    pub store: Store,
    pub definitions: Arc<DefinitionCache>,
    pub clock: Arc<dyn Clock>,
    /// Wake on the store's changes: for a runner without a scheduler in its process
    /// (`updraft worker`), which learns of queued work only through the store.
    pub watch: bool,
    /// Decrypts variables and connections (`core.fernet_key`).
    pub cipher: Option<Arc<updraft_auth::Cipher>>,
}

#[async_trait]
impl WorkSource for StoreSource {
    fn location(&self) -> String {
        self.store.location()
    }

    async fn register(&self, process: &NewProcess) -> SourceResult<i64> {
        Ok(self.store.register_process(process, self.clock.now()).await?)
    }

    async fn deregister(&self, process_id: i64) -> SourceResult<()> {
        let now = self.clock.now();
        self.store.set_process_state(process_id, ProcessState::Running, ProcessState::Stopped, now).await?;
        Ok(())
    }

    async fn claim(
        &self,
        scope: Scope,
        claimant: &Claimant,
        limit: u32,
        _wait: Duration,
    ) -> SourceResult<Vec<Claimed>> {
        Ok(self.store.claim(scope, claimant, limit, self.clock.now()).await?)
    }

    fn long_polls(&self) -> bool {
        false
    }

    async fn watcher(&self) -> SourceResult<Option<Box<dyn ChangeWatcher>>> {
        match self.watch {
            true => Ok(Some(self.store.change_watcher().await?)),
            false => Ok(None),
        }
    }

    async fn record_process(
        &self,
        ti_pk: i64,
        try_number: u32,
        pid: u32,
        pid_start: Option<u64>,
        log_path: &str,
    ) -> SourceResult<()> {
        self.store.record_attempt_process(ti_pk, try_number, pid, pid_start, log_path).await?;
        Ok(())
    }

    async fn finish(&self, ends: &[FinishedAttempt], logs: &[LogChunk], actor: &str) -> SourceResult<Vec<bool>> {
        self.store.append_logs(logs).await?;
        Ok(self.store.finish_attempts(ends, actor, self.clock.now()).await?)
    }

    fn ships_logs(&self) -> bool {
        false
    }

    async fn append_logs(&self, chunks: &[LogChunk]) -> SourceResult<()> {
        Ok(self.store.append_logs(chunks).await?)
    }

    async fn heartbeat(&self, process_id: i64, leases: &[(i64, u32)]) -> SourceResult<Heartbeat> {
        Ok(self.store.heartbeat(process_id, leases, self.clock.now()).await?)
    }

    async fn definition(&self, dag_id: &str, version: &DagVersion) -> SourceResult<Arc<Dag>> {
        Ok(self.definitions.get(self.store.as_ref(), dag_id, version).await?)
    }

    async fn secrets(&self) -> SourceResult<updraft_store::Secrets> {
        crate::secrets::load(self.store.as_ref(), self.cipher.as_deref()).await.map_err(SourceError::Secrets)
    }

    async fn outputs(&self, dag_id: &str, run_id: &str) -> SourceResult<std::collections::BTreeMap<String, String>> {
        Ok(self.store.run_outputs(dag_id, run_id).await?)
    }
}
