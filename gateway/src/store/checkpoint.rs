//! WAL checkpoints on a thread of their own.
//!
//! In WAL mode SQLite copies the log back into the database every 1000 pages by default,
//! inside whichever commit crosses the line, with an fsync: every hundred or so messages,
//! one message waited 3-5 ms on the gateway's single async thread, and with it every
//! chat (the benchmark's p99 was made of exactly those). Here automatic checkpoints are
//! off and this thread runs them instead, on its own connection: nudged after every
//! [`WRITES_PER_CHECKPOINT`] commits, after a quiet while, and once more when the store
//! closes. A passive checkpoint never blocks the writer, so commits on the async thread
//! stay log appends.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// Commits between two nudges: a few pages each, so the log stays around a few MiB.
const WRITES_PER_CHECKPOINT: u64 = 64;
/// A store written to and then left alone is checkpointed after this long.
const QUIET_CHECKPOINT: Duration = Duration::from_secs(10);

pub struct Checkpointer {
    wake: Option<SyncSender<()>>,
    writes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread for the database at `path`; an error leaves checkpoints to SQLite.
    pub fn start(path: &Path) -> std::io::Result<Checkpointer> {
        let (wake, nudges) = mpsc::sync_channel(1);
        let writes = Arc::new(AtomicU64::new(0));
        let counted = writes.clone();
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("hermes-checkpoint".into())
            .spawn(move || {
                let conn = match Connection::open(&path) {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::error!(
                            "the checkpoint thread cannot open {}: {e}",
                            path.display()
                        );
                        return;
                    }
                };
                let _ = conn.busy_timeout(Duration::from_secs(5));
                let mut checkpointed_at = 0;
                loop {
                    let closing = match nudges.recv_timeout(QUIET_CHECKPOINT) {
                        Ok(()) => false,
                        Err(RecvTimeoutError::Timeout) => false,
                        Err(RecvTimeoutError::Disconnected) => true,
                    };
                    let writes = counted.load(Ordering::Relaxed);
                    if writes != checkpointed_at || closing {
                        let mode = if closing { "TRUNCATE" } else { "PASSIVE" };
                        if let Err(e) = conn.query_row(
                            &format!("PRAGMA wal_checkpoint({mode})"),
                            [],
                            |_| Ok(()),
                        ) {
                            tracing::warn!("WAL checkpoint failed: {e}");
                        }
                        checkpointed_at = writes;
                    }
                    if closing {
                        return;
                    }
                }
            })?;
        Ok(Checkpointer {
            wake: Some(wake),
            writes,
            thread: Some(thread),
        })
    }

    /// Counts one committed write transaction.
    pub fn wrote(&self) {
        let n = self.writes.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(WRITES_PER_CHECKPOINT)
            && let Some(wake) = &self.wake
        {
            // Full means a nudge is already waiting: one is enough.
            let _ = wake.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Closing the channel asks for the last checkpoint; waiting for it leaves a short
        // log behind, not a long one to replay at the next start.
        self.wake.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
