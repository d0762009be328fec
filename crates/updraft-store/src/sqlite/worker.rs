//! A SQLite connection owned by one thread. Each store operation is one closure
//! run there, so a whole transaction costs one hand-off between threads, where a
//! driver that hops per statement pays one per statement (and a 40-task run makes
//! hundreds of statements).

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::error::{Result, StoreError};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

#[derive(Clone)]
pub struct Worker {
    jobs: mpsc::Sender<Job>,
}

impl Worker {
    pub fn spawn(name: &str, mut connection: Connection) -> Result<Worker> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // Ends when every `Worker` handle is dropped.
                for job in queue {
                    job(&mut connection);
                }
            })
            .map_err(|source| StoreError::Thread(source.to_string()))?;
        Ok(Worker { jobs })
    }

    /// Runs `job` on the connection's thread and returns its result.
    pub async fn call<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            // A panic must not take the connection's thread down with it.
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| job(connection)))
                .unwrap_or_else(|_| Err(StoreError::Corrupt("a store operation panicked".to_string())));
            let _ = reply.send(outcome);
        });
        self.jobs.send(job).map_err(|_| StoreError::Thread("the store thread stopped".to_string()))?;
        result.await.map_err(|_| StoreError::Thread("the store thread stopped".to_string()))?
    }
}
