//! One worker process as the supervisor sees it: started, authenticated, given jobs one at
//! a time, and ended with its whole process group.
//!
//! Every way a worker can misbehave ends here as a value: it cannot be started, it never
//! connects, it dies mid-job (panic, abort, signal, exit), it sends bytes that are not
//! frames, it hangs past the deadline, it sends more than a worker can mean (more
//! fallbacks than the job has providers, more tools running at once than
//! [`crate::telegram::live::MAX_TOOLS_RUNNING`], more approvals than its steps allow, or one approval id twice).
//! The job then gets a [`Failure`](hermes_protocol::Failure) and the worker is discarded; the gateway itself only
//! ever reads, waits and kills, and what it keeps for a job stays within the bounds of
//! [`super::bounds`].

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hermes_protocol::{Connection, CrashCause, Secret, ToWorker};
use interprocess::local_socket::tokio::Stream;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::forked::WorkerChild;
use super::listener::{self, AuthRefusal, Connected, PendingWorkers};
use super::process::{self, SpawnSpec};
use super::scratch::ScratchDir;
use super::stderr_log;

mod job;

pub use job::{Fate, Stops};

/// When a worker being started gets its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A job waits for it.
    Now,
    /// It waits for a job ([`super::spares`]): a forked one uses the time to bring in
    /// what its first job would otherwise fault in.
    Spare,
}

/// A started worker that has not connected by then is killed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The worker answers `TimedOut` itself at the job's deadline; the gateway waits this much
/// longer for that answer before it kills the group.
const DEADLINE_MARGIN: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("worker {pid} {cause} before connecting")]
    DiedBeforeConnecting { pid: u32, cause: CrashCause },
    #[error("worker {pid} did not connect within {CONNECT_TIMEOUT:?}")]
    NeverConnected { pid: u32 },
    #[error("worker {pid} was refused: {reason}")]
    Refused { pid: u32, reason: AuthRefusal },
    #[error("cannot make its scratch directory in {root}: {source}")]
    Scratch {
        root: String,
        source: std::io::Error,
    },
    #[error("stopping")]
    Stopping,
}

pub struct Worker {
    child: WorkerChild,
    pid: u32,
    conn: Connection<Stream>,
    pub jobs_done: u32,
    /// Its output directory was made at its start and no job has run since: nothing can
    /// have written there, so the first job skips looking (a `per-request` worker's only
    /// job always does).
    output_fresh: bool,
    /// Removed when the worker is dropped, which is after its group was ended.
    _scratch: ScratchDir,
}

impl Worker {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The output directory of its jobs, in its scratch directory, where its tools write.
    fn output_dir(&self) -> std::path::PathBuf {
        self._scratch.path().join(crate::files_back::OUTPUT_DIR)
    }

    /// Names an empty output directory for the next job: the one there if it is still as
    /// made (looked at on this thread: one open and one read), or else a new one (0700;
    /// whatever a tool left at that name is removed, never followed). `None` when it
    /// cannot be made: the job then sends no file back. Making and removing a directory
    /// for every job cost the parent more than all of a message's store work (ext4's
    /// inode and journal work, and two trips to the blocking threads on the job's path).
    async fn job_output_dir(&mut self) -> Option<String> {
        let dir = self.output_dir();
        if std::mem::take(&mut self.output_fresh) || crate::files_back::is_clean_output_dir(&dir) {
            return Some(dir.display().to_string());
        }
        // Off the async threads: a tool may have left much there since the last job.
        let made = tokio::task::spawn_blocking(move || remake_output_dir(&dir).map(|()| dir))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match made {
            Ok(dir) => Some(dir.display().to_string()),
            Err(e) => {
                tracing::warn!(
                    worker_pid = self.pid,
                    "cannot make the job's output directory: {e}"
                );
                None
            }
        }
    }

    /// Takes the files a reply names from the job's output directory into the store's
    /// file area (`files`) and tells the chat what came of them; a directory they were
    /// taken from is made anew for the next job, and any other is looked at when the next
    /// job starts. A reply whose chat wants no files has them dropped.
    pub async fn hand_over_files(
        &self,
        outcome: &mut hermes_protocol::Outcome,
        files: Option<crate::files_back::FileDrop>,
    ) {
        let names = match outcome {
            hermes_protocol::Outcome::Reply(reply) => std::mem::take(&mut reply.files),
            hermes_protocol::Outcome::Failed(_) => Vec::new(),
        };
        let Some(drop) = files else { return };
        if names.is_empty() {
            let _ = drop.done.send(crate::files_back::Collected::default());
            return;
        }
        let dir = self.output_dir();
        let collected = tokio::task::spawn_blocking(move || {
            let collected = crate::files_back::collect(&dir, &names, &drop.area, &drop.limits);
            let _ = remake_output_dir(&dir);
            (collected, drop)
        })
        .await;
        if let Ok((collected, drop)) = collected {
            let _ = drop.done.send(collected);
        }
    }

    pub async fn start(
        spec: &SpawnSpec,
        pending: &PendingWorkers,
        stop: &CancellationToken,
        usage: Use,
    ) -> Result<Worker, StartError> {
        let token = Secret::new(new_token());
        let scratch =
            ScratchDir::create(&spec.scratch_root).map_err(|source| StartError::Scratch {
                root: spec.scratch_root.display().to_string(),
                source,
            })?;
        let forked = match &spec.zygote {
            Some(zygote) => {
                zygote
                    .fork(spec, &token, scratch.path(), usage == Use::Spare)
                    .await
            }
            None => None,
        };
        let (mut child, pid, connection) =
            match forked {
                Some(forked) => {
                    let pid = forked.child.id().unwrap_or(0);
                    tokio::spawn(stderr_log::pump(forked.stderr, pid));
                    (forked.child, pid, Some(forked.connection))
                }
                None => {
                    let (mut child, stderr) = process::spawn(spec, &token, scratch.path())
                        .map_err(|source| StartError::Spawn {
                            program: spec.program.display().to_string(),
                            source,
                        })?;
                    let Some(pid) = child.id() else {
                        return Err(StartError::DiedBeforeConnecting {
                            pid: 0,
                            cause: process::crash_cause(child.wait().await.ok()),
                        });
                    };
                    if let Some(stderr) = stderr {
                        tokio::spawn(stderr_log::pump(stderr, pid));
                    }
                    (child, pid, None)
                }
            };
        // A forked worker was given its connection; a spawned one connects to the socket.
        let connected: Pin<Box<dyn Future<Output = Option<Connected>> + Send>> = match connection {
            Some(stream) => Box::pin(listener::introduced(stream, token.expose().to_owned(), pid)),
            None => {
                let connected = pending.register(token.expose(), pid);
                Box::pin(async move { connected.await.ok() })
            }
        };
        let outcome = tokio::select! {
            connected = connected => match connected {
                Some(Ok(conn)) => Some(conn),
                Some(Err(reason)) => {
                    process::kill(&mut child).await;
                    return Err(StartError::Refused { pid, reason });
                }
                None => None,
            },
            status = child.wait() => {
                pending.forget(token.expose());
                let cause = process::crash_cause(status.ok());
                process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                return Err(StartError::DiedBeforeConnecting { pid, cause });
            }
            _ = tokio::time::sleep(CONNECT_TIMEOUT) => None,
            _ = stop.cancelled() => {
                pending.forget(token.expose());
                process::kill(&mut child).await;
                return Err(StartError::Stopping);
            }
        };
        let Some(conn) = outcome else {
            pending.forget(token.expose());
            process::kill(&mut child).await;
            return Err(StartError::NeverConnected { pid });
        };
        tracing::debug!(worker_pid = pid, "worker connected");
        // Made while the worker starts, off a message's path (a spare's start is); a
        // failure shows again, and is said, at the first job.
        let output_fresh =
            remake_output_dir(&scratch.path().join(crate::files_back::OUTPUT_DIR)).is_ok();
        Ok(Worker {
            child,
            pid,
            conn,
            jobs_done: 0,
            output_fresh,
            _scratch: scratch,
        })
    }

    /// Resolves when an idle worker's connection shows anything (bytes or EOF): an idle
    /// worker has nothing to say, so either way it is done for.
    pub async fn idle_broken(&mut self) {
        self.conn.readable().await;
    }

    /// Asks the worker to leave, then makes sure its whole group is gone.
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.conn.write_frame(&ToWorker::Shutdown).await;
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => process::kill(&mut self.child).await,
        };
        process::signal_group(self.pid, nix::sys::signal::Signal::SIGKILL);
        tracing::debug!(worker_pid = self.pid, ?status, "worker stopped");
    }

    /// Ends a worker that is known to be broken.
    pub async fn discard(mut self, grace: Duration) {
        process::terminate(&mut self.child, grace).await;
    }
}

fn new_token() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes `dir` anew, empty and 0700, after removing whatever was at its name (at a
/// worker's start there is nothing: one mkdir).
fn remake_output_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let make = || std::fs::DirBuilder::new().mode(0o700).create(dir);
    match make() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            remove(dir)?;
            make()
        }
        made => made,
    }
}

/// Removes `dir` (a directory or whatever a tool put at its name), never following a link.
fn remove(dir: &std::path::Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(dir),
        Ok(_) => std::fs::remove_file(dir),
        Err(e) => Err(e),
    }
}
