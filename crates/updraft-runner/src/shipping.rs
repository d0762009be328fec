//! Shipping a remote attempt's log to the API server while it runs: the attempt
//! writes its log file on the worker as always; every second the new bytes go
//! out as a piece keyed by its offset, and the rest rides with the attempt's end.
//! A piece that fails to go out is sent again later from the same offset, and
//! the store keeps one copy per offset, so retries never duplicate lines.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use updraft_core::errors::chain;
use updraft_store::LogChunk;

use crate::source::WorkSource;

const SHIP_EVERY: Duration = Duration::from_secs(1);

/// The most one piece carries.
const PIECE_BYTES: usize = 1 << 20;

pub struct LogShipper {
    stop: oneshot::Sender<()>,
    task: JoinHandle<u64>,
    path: PathBuf,
    ti_pk: i64,
    try_number: u32,
}

impl LogShipper {
    pub fn start(source: Arc<dyn WorkSource>, ti_pk: i64, try_number: u32, path: &Path) -> LogShipper {
        let (stop, mut stopped) = oneshot::channel();
        let file = path.to_path_buf();
        let task = tokio::spawn(async move {
            let mut shipped = 0;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(SHIP_EVERY) => {}
                    _ = &mut stopped => return shipped,
                }
                loop {
                    let data = read_piece(&file, shipped).await;
                    if data.is_empty() {
                        break;
                    }
                    let full = data.len() == PIECE_BYTES;
                    let piece = LogChunk { ti_pk, try_number, offset: shipped, data };
                    match source.append_logs(std::slice::from_ref(&piece)).await {
                        Ok(()) => shipped = piece.end(),
                        Err(error) => {
                            tracing::warn!(error = %chain(&error), ti_pk, try_number, "cannot ship log; trying again");
                            break;
                        }
                    }
                    if !full {
                        break;
                    }
                }
            }
        });
        LogShipper { stop, task, path: path.to_path_buf(), ti_pk, try_number }
    }

    /// Stops shipping and returns what is left, to go with the attempt's end.
    pub async fn finish(self) -> Vec<LogChunk> {
        let _ = self.stop.send(());
        let mut offset = self.task.await.unwrap_or(0);
        let mut rest = Vec::new();
        loop {
            let data = read_piece(&self.path, offset).await;
            if data.is_empty() {
                return rest;
            }
            let piece = LogChunk { ti_pk: self.ti_pk, try_number: self.try_number, offset, data };
            offset = piece.end();
            rest.push(piece);
        }
    }
}

/// Up to [`PIECE_BYTES`] of the file from `offset`; nothing if it is not there yet.
async fn read_piece(path: &Path, offset: u64) -> Vec<u8> {
    let read = async {
        let mut file = tokio::fs::File::open(path).await?;
        file.seek(SeekFrom::Start(offset)).await?;
        let mut data = Vec::new();
        file.take(PIECE_BYTES as u64).read_to_end(&mut data).await?;
        Ok::<_, std::io::Error>(data)
    };
    read.await.unwrap_or_default()
}
