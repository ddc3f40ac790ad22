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
//!
//! The log only starts over (and stops growing) when a commit finds every frame in it
//! copied back, and under a steady stream of messages a checkpoint on another connection
//! never catches the commits made while it ran: the log grew past 38 MiB in a 2,000-message
//! burst, and since SQLite appends each frame to a hash of the log by linear probing, a
//! commit cost more the more often its pages were already in the log (walIndexAppend went
//! from 7 K to 44 K instructions per message). So once the log holds [`RESTART_FRAMES`],
//! the thread holds the gateway's connection for one more passive checkpoint, of the frames
//! written during the first, and the next commit starts the log over. The gateway waits
//! for it: a median 1.3 ms (at most 5.5 ms) once every few hundred messages in the
//! throughput benchmark, for commits that stay cheap.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// Commits between two nudges: a few pages each, so the log stays around a few MiB.
const WRITES_PER_CHECKPOINT: u64 = 64;
/// A store written to and then left alone is checkpointed after this long.
const QUIET_CHECKPOINT: Duration = Duration::from_secs(10);
/// Frames (pages written) in the log after which the thread makes it start over: 4 MiB
/// with SQLite's 4 KiB pages, a few hundred messages.
const RESTART_FRAMES: i64 = 1024;

pub struct Checkpointer {
    wake: Option<SyncSender<()>>,
    writes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    /// Checkpoints begun, for tests that write while one runs.
    #[cfg(test)]
    passes: Arc<AtomicU64>,
}

impl Checkpointer {
    /// Starts the thread for the database at `path`, whose writer is `writer`; an error
    /// leaves checkpoints to SQLite.
    pub fn start(path: &Path, writer: Arc<Mutex<Connection>>) -> std::io::Result<Checkpointer> {
        let (wake, nudges) = mpsc::sync_channel(1);
        let writes = Arc::new(AtomicU64::new(0));
        let counted = writes.clone();
        #[cfg(test)]
        let passes_started = Arc::new(AtomicU64::new(0));
        #[cfg(test)]
        let passes = passes_started.clone();
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
                        #[cfg(test)]
                        passes_started.fetch_add(1, Ordering::Release);
                        let mode = if closing { "TRUNCATE" } else { "PASSIVE" };
                        let log = checkpoint(&conn, mode);
                        if !closing && log >= RESTART_FRAMES {
                            // The log was this long as the pass began, and commits went on
                            // during it. Nothing commits meanwhile: this one copies what
                            // they wrote, and the next commit starts the log over.
                            let _writer = super::lock(&writer);
                            checkpoint(&conn, "PASSIVE");
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
            #[cfg(test)]
            passes,
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

    #[cfg(test)]
    pub fn passes_started(&self) -> u64 {
        self.passes.load(Ordering::Acquire)
    }
}

/// Runs one checkpoint; the frames the log held as it began (0 after an error, which is
/// logged).
fn checkpoint(conn: &Connection, mode: &str) -> i64 {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(1))
        .unwrap_or_else(|e| {
            tracing::warn!("WAL checkpoint failed: {e}");
            0
        })
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
