//! A SQLite connection with a thread of its own, used only when needed.
//!
//! A store operation is one closure over a transaction. When the connection is free
//! and (for a write) the database's write lock can be taken at once, the closure runs
//! right where it is called: SQLite work takes microseconds, less than handing it to
//! another thread and back. When the write lock is held by another process (a CLI
//! writing next to `standalone`), the closure goes to the connection's own thread,
//! which waits on SQLite's busy timeout, so no async worker ever blocks for long.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use crate::error::{Result, StoreError};

/// How long a queued write waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

#[derive(Clone)]
pub struct Worker {
    connection: Arc<Mutex<Connection>>,
    jobs: mpsc::Sender<Job>,
}

#[derive(Clone, Copy)]
pub enum Access {
    Read,
    Write,
}

impl Worker {
    pub fn spawn(name: &str, connection: Connection) -> Result<Worker> {
        let connection = Arc::new(Mutex::new(connection));
        let (jobs, queue) = mpsc::channel::<Job>();
        let owned = connection.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // Ends when every `Worker` handle is dropped.
                for job in queue {
                    job(&mut lock(&owned));
                }
            })
            .map_err(|source| StoreError::Thread(source.to_string()))?;
        Ok(Worker { connection, jobs })
    }

    /// Runs `job` in a transaction (`BEGIN IMMEDIATE` for writes) and commits.
    pub async fn transaction<T, F>(&self, access: Access, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let behavior = match access {
            Access::Read => TransactionBehavior::Deferred,
            Access::Write => TransactionBehavior::Immediate,
        };
        let mut job = Some(job);
        if let Ok(mut connection) = self.connection.try_lock() {
            // Take the write lock without waiting; if another process holds it, queue.
            connection.busy_timeout(Duration::ZERO)?;
            let outcome = match connection.transaction_with_behavior(behavior) {
                Ok(tx) => {
                    // Inside the transaction, statements may wait as usual (a checkpoint).
                    let _ = tx.busy_timeout(BUSY_TIMEOUT);
                    let job = job.take().expect("the job is still here");
                    Some(guarded(|| run(tx, job)))
                }
                Err(error) if is_busy(&error) => None,
                Err(error) => Some(Err(error.into())),
            };
            connection.busy_timeout(BUSY_TIMEOUT)?;
            if let Some(outcome) = outcome {
                return outcome;
            }
        }
        let job = job.take().expect("the job is still here");
        self.queue(move |connection| run(connection.transaction_with_behavior(behavior)?, job)).await
    }

    /// Runs `job` on the connection outside any transaction (pragmas).
    pub async fn call<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        if let Ok(mut connection) = self.connection.try_lock() {
            return guarded(|| job(&mut connection));
        }
        self.queue(job).await
    }

    async fn queue<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let _ = reply.send(guarded(|| job(connection)));
        });
        self.jobs.send(job).map_err(|_| StoreError::Thread("the store thread stopped".to_string()))?;
        result.await.map_err(|_| StoreError::Thread("the store thread stopped".to_string()))?
    }
}

fn run<T>(tx: Transaction<'_>, job: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
    let value = job(&tx)?;
    tx.commit()?;
    Ok(value)
}

/// A panic must not take a thread down with it; the transaction rolls back.
fn guarded<T>(job: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(job))
        .unwrap_or_else(|_| Err(StoreError::Corrupt("a store operation panicked".to_string())))
}

fn lock(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic inside a job rolled its transaction back; the connection is usable.
    connection.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(error.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}
