//! One worker process as the supervisor sees it: started, authenticated, given jobs one at
//! a time, and ended with its whole process group.
//!
//! Every way a worker can misbehave ends here as a value: it cannot be started, it never
//! connects, it dies mid-job (panic, abort, signal, exit), it sends bytes that are not
//! frames, it hangs past the deadline. The job then gets a [`Failure`] and the worker is
//! discarded; the gateway itself only ever reads, waits and kills.

use std::pin::Pin;
use std::time::{Duration, Instant};

use hermes_protocol::{
    CancelReason, Connection, CrashCause, Decision, Event, Failure, FrameError, FromWorker, Job,
    Outcome, Secret, ToWorker,
};
use interprocess::local_socket::tokio::Stream;
use rand::Rng;
use tokio::process::Child;
use tokio::sync::oneshot::error::RecvError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use super::listener::{AuthRefusal, PendingWorkers};
use super::process::{self, SpawnSpec};
use super::scratch::ScratchDir;
use super::stderr_log;
use crate::jobs::{ApprovalAsk, MAX_ANSWER_BYTES};

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
    child: Child,
    pid: u32,
    conn: Connection<Stream>,
    pub jobs_done: u32,
    /// Removed when the worker is dropped, which is after its group was ended.
    _scratch: ScratchDir,
}

/// What may end a job before its outcome: the gateway stopping, or the user (`/stop`).
pub struct Stops<'a> {
    pub abort: &'a CancellationToken,
    pub cancel: &'a CancellationToken,
}

/// What running one job on a worker produced.
pub struct JobRun {
    pub outcome: Outcome,
    pub fate: Fate,
}

/// What becomes of the worker after a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It may take another job.
    Reusable,
    /// Its group was ended on purpose (`/stop`, the gateway stopping): no fault of its.
    Ended,
    /// It broke, hung or died: replaced, and counted against the restart intensity.
    Broken,
}

impl Worker {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub async fn start(
        spec: &SpawnSpec,
        pending: &PendingWorkers,
        stop: &CancellationToken,
    ) -> Result<Worker, StartError> {
        let token = Secret::new(new_token());
        let scratch =
            ScratchDir::create(&spec.scratch_root).map_err(|source| StartError::Scratch {
                root: spec.scratch_root.display().to_string(),
                source,
            })?;
        let (mut child, stderr) =
            process::spawn(spec, &token, scratch.path()).map_err(|source| StartError::Spawn {
                program: spec.program.display().to_string(),
                source,
            })?;
        let Some(pid) = child.id() else {
            return Err(StartError::DiedBeforeConnecting {
                pid: 0,
                cause: process::crash_cause(child.wait().await.ok()),
            });
        };
        let connected = pending.register(token.expose(), pid);
        if let Some(stderr) = stderr {
            tokio::spawn(stderr_log::pump(stderr, pid));
        }
        let outcome = tokio::select! {
            connected = connected => match connected {
                Ok(Ok(conn)) => Some(conn),
                Ok(Err(reason)) => {
                    process::kill(&mut child).await;
                    return Err(StartError::Refused { pid, reason });
                }
                Err(_) => None,
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
        Ok(Worker {
            child,
            pid,
            conn,
            jobs_done: 0,
            _scratch: scratch,
        })
    }

    /// Sends `job` and waits for its outcome, the worker's death, the deadline, or a stop.
    /// Both the sending and the waiting mind the deadline and the stops: a worker that
    /// does not read its socket, or a chat that does not take its events, cannot hold a
    /// job past them. Approvals the worker asks for go to `approvals`; their decisions go
    /// back to it.
    pub async fn run_job(
        &mut self,
        job: &Job,
        events: &mpsc::Sender<Event>,
        approvals: &mpsc::UnboundedSender<ApprovalAsk>,
        stops: Stops<'_>,
        kill_grace: Duration,
    ) -> JobRun {
        self.jobs_done += 1;
        let started = Instant::now();
        let deadline = started + Duration::from_millis(job.timeout_ms) + DEADLINE_MARGIN;
        // One timer for the whole job: registering one per frame costs more than the frame.
        let timer = tokio::time::sleep_until(deadline.into());
        tokio::pin!(timer);
        let frame = ToWorker::Job(job.clone());
        let sent = tokio::select! {
            sent = self.conn.write_frame(&frame) => sent,
            ended = ended(timer.as_mut(), &stops) => return self.end(ended, job, kill_grace).await,
        };
        match sent {
            Ok(()) => {}
            // Nothing was written: the worker is as it was, and the job is the gateway's
            // problem (the chats trim a job to fit, so this is a bug), not the worker's.
            Err(e @ (FrameError::Oversized { .. } | FrameError::Unencodable(_))) => {
                tracing::error!(worker_pid = self.pid, job_id = %job.id, "cannot send job: {e}");
                self.jobs_done -= 1;
                return JobRun {
                    outcome: Outcome::Failed(Failure::ContextTooLong {
                        provider: "gateway".into(),
                        detail: format!("the job could not be sent: {e}"),
                    }),
                    fate: Fate::Reusable,
                };
            }
            Err(e) => {
                tracing::warn!(worker_pid = self.pid, job_id = %job.id, "cannot send job: {e}");
                return self.broken(e).await;
            }
        }
        // Decisions on their way back to the worker, by approval id.
        let mut decisions: JoinSet<(u64, Result<Decision, RecvError>)> = JoinSet::new();
        loop {
            let frame = tokio::select! {
                frame = self.conn.read_frame::<FromWorker>() => frame,
                Some(decided) = decisions.join_next(), if !decisions.is_empty() => {
                    let Ok((approval, Ok(decision))) = decided else {
                        // The chat let the question go (the job is ending): the worker
                        // waits until its deadline or its end, whichever comes first.
                        continue;
                    };
                    let answer = ToWorker::Decision { job_id: job.id, approval, decision };
                    let sent = tokio::select! {
                        sent = self.conn.write_frame(&answer) => sent,
                        ended = ended(timer.as_mut(), &stops) => return self.end(ended, job, kill_grace).await,
                    };
                    if let Err(e) = sent {
                        tracing::warn!(worker_pid = self.pid, job_id = %job.id, "cannot send a decision: {e}");
                        return self.broken(e).await;
                    }
                    continue;
                }
                ended = ended(timer.as_mut(), &stops) => return self.end(ended, job, kill_grace).await,
            };
            match frame {
                Ok(FromWorker::Event { job_id, event }) if job_id == job.id => {
                    tracing::debug!(worker_pid = self.pid, job_id = %job.id, ?event, "event");
                    let event = bounded(event);
                    tokio::select! {
                        // A chat that is gone no longer wants events; the job goes on.
                        _ = events.send(event) => {}
                        ended = ended(timer.as_mut(), &stops) => return self.end(ended, job, kill_grace).await,
                    }
                }
                Ok(FromWorker::Approval { job_id, request }) if job_id == job.id => {
                    tracing::info!(worker_pid = self.pid, job_id = %job.id, tool = %request.tool, "a tool call waits for approval");
                    let (decide, decision) = oneshot::channel();
                    let approval = request.id;
                    if approvals.send(ApprovalAsk { request, decide }).is_ok() {
                        decisions.spawn(async move { (approval, decision.await) });
                    }
                }
                Ok(FromWorker::Outcome {
                    job_id,
                    outcome,
                    retire,
                }) if job_id == job.id => {
                    if retire {
                        tracing::info!(worker_pid = self.pid, job_id = %job.id, "worker asks to be retired (a tool outlived the job); ending its process group");
                        process::terminate(&mut self.child, kill_grace).await;
                    }
                    let fate = if retire { Fate::Ended } else { Fate::Reusable };
                    return JobRun { outcome, fate };
                }
                Ok(
                    FromWorker::Event { job_id, .. }
                    | FromWorker::Outcome { job_id, .. }
                    | FromWorker::Approval { job_id, .. },
                ) => {
                    tracing::warn!(worker_pid = self.pid, job_id = %job.id, "dropped a message for {job_id}, which is not the job in flight");
                }
                Err(e) => {
                    tracing::warn!(worker_pid = self.pid, job_id = %job.id, "worker connection failed: {e}");
                    return self.broken(e).await;
                }
            }
        }
    }

    /// The job ends before its outcome: its whole process group goes.
    async fn end(&mut self, ended: Ended, job: &Job, kill_grace: Duration) -> JobRun {
        match ended {
            Ended::Deadline => {
                tracing::warn!(worker_pid = self.pid, job_id = %job.id, "job overran its deadline; ending the worker's process group");
                process::terminate(&mut self.child, kill_grace).await;
                JobRun {
                    outcome: Outcome::Failed(Failure::TimedOut {
                        after_ms: job.timeout_ms,
                    }),
                    fate: Fate::Broken,
                }
            }
            Ended::Abort => {
                tracing::info!(worker_pid = self.pid, job_id = %job.id, "cancelling job: the gateway is stopping");
                self.cancel(CancelReason::Shutdown, kill_grace).await
            }
            Ended::Cancel => {
                tracing::info!(worker_pid = self.pid, job_id = %job.id, "cancelling job: /stop; ending the worker's process group");
                self.cancel(CancelReason::ByUser, kill_grace).await
            }
        }
    }

    /// Ends the worker's whole group mid-job: a worker is not told to drop a job, since a
    /// tool it runs may not listen either.
    async fn cancel(&mut self, reason: CancelReason, kill_grace: Duration) -> JobRun {
        process::terminate(&mut self.child, kill_grace).await;
        JobRun {
            outcome: Outcome::Failed(Failure::Cancelled { reason }),
            fate: Fate::Ended,
        }
    }

    /// The connection broke or carried garbage: kill the group, reap, and say why. A
    /// worker that went away is described by how its process ended; one that is still
    /// there broke the protocol.
    async fn broken(&mut self, error: FrameError) -> JobRun {
        let status = process::kill(&mut self.child).await;
        let cause = if error.is_disconnect() {
            process::crash_cause(status)
        } else {
            CrashCause::ProtocolViolation {
                detail: error.to_string(),
            }
        };
        tracing::warn!(worker_pid = self.pid, "worker {cause}");
        JobRun {
            outcome: Outcome::Failed(Failure::WorkerCrashed { cause }),
            fate: Fate::Broken,
        }
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

/// What ended a job before its outcome.
enum Ended {
    Deadline,
    Abort,
    Cancel,
}

/// Resolves when the job must end: its deadline passed, the gateway stops, or `/stop`.
async fn ended(deadline: Pin<&mut Sleep>, stops: &Stops<'_>) -> Ended {
    tokio::select! {
        _ = deadline => Ended::Deadline,
        _ = stops.abort.cancelled() => Ended::Abort,
        _ = stops.cancel.cancelled() => Ended::Cancel,
    }
}

/// A streamed piece as the chat may hold it: at most [`MAX_ANSWER_BYTES`] of text.
fn bounded(event: Event) -> Event {
    match event {
        Event::Delta(text) if text.len() > MAX_ANSWER_BYTES => {
            let mut end = MAX_ANSWER_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            Event::Delta(text[..end].to_string())
        }
        other => other,
    }
}

fn new_token() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
