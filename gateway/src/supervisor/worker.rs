//! One worker process as the supervisor sees it: started, authenticated, given jobs one at
//! a time, and ended with its whole process group.
//!
//! Every way a worker can misbehave ends here as a value: it cannot be started, it never
//! connects, it dies mid-job (panic, abort, signal, exit), it sends bytes that are not
//! frames, it hangs past the deadline, it sends more than a worker can mean (more
//! fallbacks than the job has providers, more tools running at once than
//! [`MAX_TOOLS_RUNNING`], more approvals than its steps allow, or one approval id twice).
//! The job then gets a [`Failure`] and the worker is discarded; the gateway itself only
//! ever reads, waits and kills, and what it keeps for a job stays within stated bounds.

use std::collections::{HashMap, HashSet};
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
use crate::approvals::{MAX_WAITING, Unaskable};
use crate::jobs::{ApprovalAsk, MAX_ANSWER_BYTES};
use crate::telegram::live::{MAX_TOOL_NAME_BYTES, MAX_TOOLS_RUNNING, cut_at_char};

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
        let mut kept = Kept::new(job.providers.len(), job.max_steps);
        loop {
            let frame = tokio::select! {
                frame = self.conn.read_frame::<FromWorker>() => frame,
                Some(decided) = decisions.join_next(), if !decisions.is_empty() => {
                    if let Err(run) = self.pass_on(decided, &mut kept, job, timer.as_mut(), &stops, kill_grace).await {
                        return run;
                    }
                    continue;
                }
                ended = ended(timer.as_mut(), &stops) => return self.end(ended, job, kill_grace).await,
            };
            match frame {
                Ok(FromWorker::Event { job_id, event }) if job_id == job.id => {
                    tracing::debug!(worker_pid = self.pid, job_id = %job.id, ?event, "event");
                    let event = bounded(event);
                    if let Err(detail) = kept.event(&event) {
                        return self.violated(job, detail).await;
                    }
                    tokio::select! {
                        // A chat that is gone no longer wants events; the job goes on.
                        _ = events.send(event) => {}
                        ended = ended(timer.as_mut(), &stops) => return self.end(ended, job, kill_grace).await,
                    }
                }
                Ok(FromWorker::Approval { job_id, request }) if job_id == job.id => {
                    tracing::info!(worker_pid = self.pid, job_id = %job.id, tool = %request.tool, "a tool call waits for approval");
                    // Decisions already made are passed on first, so they make room.
                    while let Some(decided) = decisions.try_join_next() {
                        if let Err(run) = self
                            .pass_on(decided, &mut kept, job, timer.as_mut(), &stops, kill_grace)
                            .await
                        {
                            return run;
                        }
                    }
                    let approval = request.id;
                    match kept.approval(approval) {
                        Err(detail) => return self.violated(job, detail).await,
                        Ok(false) => {
                            let denial = ToWorker::Decision {
                                job_id: job.id,
                                approval,
                                decision: Decision::Unavailable {
                                    reason: Unaskable::TooManyWaiting.for_model(),
                                },
                            };
                            if let Err(run) = self
                                .tell(&denial, job, timer.as_mut(), &stops, kill_grace)
                                .await
                            {
                                return run;
                            }
                        }
                        Ok(true) => {
                            let (decide, decision) = oneshot::channel();
                            if approvals.send(ApprovalAsk { request, decide }).is_ok() {
                                decisions.spawn(async move { (approval, decision.await) });
                            } else {
                                kept.waiting.remove(&approval);
                            }
                        }
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

    /// Passes a decision the chat made on to the worker; one the chat let go (the job is
    /// ending) is not passed on: the worker waits until its deadline or its end.
    async fn pass_on(
        &mut self,
        decided: Result<(u64, Result<Decision, RecvError>), tokio::task::JoinError>,
        kept: &mut Kept,
        job: &Job,
        timer: Pin<&mut Sleep>,
        stops: &Stops<'_>,
        kill_grace: Duration,
    ) -> Result<(), JobRun> {
        // The tasks only wait on a channel: they neither panic nor are aborted.
        let Ok((approval, decision)) = decided else {
            return Ok(());
        };
        kept.waiting.remove(&approval);
        let Ok(decision) = decision else {
            return Ok(());
        };
        let answer = ToWorker::Decision {
            job_id: job.id,
            approval,
            decision,
        };
        self.tell(&answer, job, timer, stops, kill_grace).await
    }

    /// Writes `frame` to the worker, still minding the deadline and the stops.
    async fn tell(
        &mut self,
        frame: &ToWorker,
        job: &Job,
        timer: Pin<&mut Sleep>,
        stops: &Stops<'_>,
        kill_grace: Duration,
    ) -> Result<(), JobRun> {
        let sent = tokio::select! {
            sent = self.conn.write_frame(frame) => sent,
            ended = ended(timer, stops) => return Err(self.end(ended, job, kill_grace).await),
        };
        if let Err(e) = sent {
            tracing::warn!(worker_pid = self.pid, job_id = %job.id, "cannot send a decision: {e}");
            return Err(self.broken(e).await);
        }
        Ok(())
    }

    /// The worker sent more than a worker can mean: the same end as for garbage bytes.
    async fn violated(&mut self, job: &Job, detail: String) -> JobRun {
        process::kill(&mut self.child).await;
        let cause = CrashCause::ProtocolViolation { detail };
        tracing::warn!(worker_pid = self.pid, job_id = %job.id, "worker {cause}");
        JobRun {
            outcome: Outcome::Failed(Failure::WorkerCrashed { cause }),
            fate: Fate::Broken,
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

/// The longest name, reason or detail an event keeps: plenty for a provider's error
/// message, and the most a chat's queue of events holds is then stated by its length.
const MAX_EVENT_TEXT_BYTES: usize = 1024;

/// An event as the chat may hold it: at most [`MAX_ANSWER_BYTES`] of streamed text, tool
/// names of at most [`MAX_TOOL_NAME_BYTES`], every other text of at most
/// [`MAX_EVENT_TEXT_BYTES`] (a frame may carry 4 MiB of it, and the chat's queue of
/// events is bounded by count).
fn bounded(event: Event) -> Event {
    match event {
        Event::Delta(mut text) => {
            cut(&mut text, MAX_ANSWER_BYTES);
            Event::Delta(text)
        }
        Event::ToolStarted { mut name } => {
            cut(&mut name, MAX_TOOL_NAME_BYTES);
            Event::ToolStarted { name }
        }
        Event::ToolFinished { mut name, ok, ms } => {
            cut(&mut name, MAX_TOOL_NAME_BYTES);
            Event::ToolFinished { name, ok, ms }
        }
        Event::Attempt {
            mut provider,
            attempt,
        } => {
            cut(&mut provider, MAX_EVENT_TEXT_BYTES);
            Event::Attempt { provider, attempt }
        }
        Event::Retrying {
            mut provider,
            after_ms,
            mut reason,
        } => {
            cut(&mut provider, MAX_EVENT_TEXT_BYTES);
            cut(&mut reason, MAX_EVENT_TEXT_BYTES);
            Event::Retrying {
                provider,
                after_ms,
                reason,
            }
        }
        Event::FellBack {
            mut from,
            mut failure,
        } => {
            cut(&mut from, MAX_EVENT_TEXT_BYTES);
            for text in failure_texts(&mut failure) {
                cut(text, MAX_EVENT_TEXT_BYTES);
            }
            Event::FellBack { from, failure }
        }
    }
}

fn cut(text: &mut String, max: usize) {
    let end = cut_at_char(text, max).len();
    text.truncate(end);
}

/// Every text a failure carries.
fn failure_texts(failure: &mut Failure) -> Vec<&mut String> {
    use hermes_protocol::MediaProblem;
    match failure {
        Failure::QuotaExhausted { provider, detail }
        | Failure::RateLimited { provider, detail }
        | Failure::ProviderUnavailable { provider, detail }
        | Failure::ContextTooLong { provider, detail }
        | Failure::ProviderProtocol { provider, detail }
        | Failure::ProviderAuth {
            provider, detail, ..
        }
        | Failure::ProviderRejected {
            provider, detail, ..
        } => vec![provider, detail],
        Failure::WorkerCrashed { cause } => match cause {
            CrashCause::Signalled { name, .. } => vec![name],
            CrashCause::ProtocolViolation { detail } | CrashCause::NotStarted { detail } => {
                vec![detail]
            }
            CrashCause::Exited { .. } | CrashCause::Disconnected => Vec::new(),
        },
        Failure::Media { problem } => match problem {
            MediaProblem::UnsupportedFile { file_name } => vec![file_name],
            MediaProblem::Unreadable { file_name, detail } => vec![file_name, detail],
            MediaProblem::DownloadFailed { detail } => vec![detail],
            MediaProblem::TooBig { .. }
            | MediaProblem::TooLong { .. }
            | MediaProblem::TooMuchAtOnce { .. }
            | MediaProblem::VoiceNotEnabled
            | MediaProblem::NoVision => Vec::new(),
        },
        Failure::TimedOut { .. } | Failure::Cancelled { .. } => Vec::new(),
    }
}

/// What one job's messages made the gateway keep, each within what an honest worker can
/// send: one fallback per provider of the job, at most [`MAX_TOOLS_RUNNING`] tools running
/// at once, at most that many approvals per step, each id waiting once. Past a bound the
/// worker is broken (its own words say so), not merely busy.
struct Kept {
    max_fallbacks: usize,
    fallbacks: usize,
    /// Tools started and not finished, by name (a name may run more than once at once).
    running: HashMap<String, usize>,
    running_total: usize,
    max_approvals: usize,
    approvals: usize,
    /// Approvals asked in the chat and not yet decided.
    waiting: HashSet<u64>,
}

impl Kept {
    fn new(providers: usize, max_steps: u32) -> Kept {
        let steps = usize::try_from(max_steps.max(1)).unwrap_or(usize::MAX);
        Kept {
            max_fallbacks: providers,
            fallbacks: 0,
            running: HashMap::new(),
            running_total: 0,
            max_approvals: steps.saturating_mul(MAX_TOOLS_RUNNING),
            approvals: 0,
            waiting: HashSet::new(),
        }
    }

    /// Counts `event` (already [`bounded`]); Err says which bound it broke.
    fn event(&mut self, event: &Event) -> Result<(), String> {
        match event {
            Event::FellBack { .. } => {
                self.fallbacks += 1;
                if self.fallbacks > self.max_fallbacks {
                    return Err(format!(
                        "{} fallback events for a job of {} provider(s)",
                        self.fallbacks, self.max_fallbacks
                    ));
                }
            }
            Event::ToolStarted { name } => {
                if self.running_total >= MAX_TOOLS_RUNNING {
                    return Err(format!(
                        "more than {MAX_TOOLS_RUNNING} tools running at once"
                    ));
                }
                *self.running.entry(name.clone()).or_default() += 1;
                self.running_total += 1;
            }
            Event::ToolFinished { name, .. } => {
                if let Some(count) = self.running.get_mut(name) {
                    *count -= 1;
                    self.running_total -= 1;
                    if *count == 0 {
                        self.running.remove(name);
                    }
                }
            }
            Event::Attempt { .. } | Event::Retrying { .. } | Event::Delta(_) => {}
        }
        Ok(())
    }

    /// Counts an approval request `id`: Ok(true) to ask the chat, Ok(false) to deny it
    /// as one too many waiting, Err for a bound broken.
    fn approval(&mut self, id: u64) -> Result<bool, String> {
        self.approvals += 1;
        if self.approvals > self.max_approvals {
            return Err(format!(
                "{} approval requests in a job allowed at most {}",
                self.approvals, self.max_approvals
            ));
        }
        if self.waiting.contains(&id) {
            return Err(format!("approval {id} asked again while it waits"));
        }
        if self.waiting.len() >= MAX_WAITING {
            return Ok(false);
        }
        self.waiting.insert(id);
        Ok(true)
    }
}

fn new_token() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(name: &str) -> Event {
        Event::ToolStarted { name: name.into() }
    }

    fn finished(name: &str) -> Event {
        Event::ToolFinished {
            name: name.into(),
            ok: true,
            ms: 1,
        }
    }

    #[test]
    fn a_worker_past_a_bound_is_told_apart_from_a_busy_one() {
        let mut kept = Kept::new(2, 1);
        let fell = Event::FellBack {
            from: "p".into(),
            failure: Failure::TimedOut { after_ms: 1 },
        };
        assert!(kept.event(&fell).is_ok());
        assert!(kept.event(&fell).is_ok());
        assert!(
            kept.event(&fell).is_err(),
            "a third fallback for two providers"
        );

        // The same tool may run many times at once; only what is running counts.
        let mut kept = Kept::new(1, 1);
        for _ in 0..MAX_TOOLS_RUNNING {
            assert!(kept.event(&started("s.t")).is_ok());
        }
        assert!(kept.event(&started("s.u")).is_err());
        let mut kept = Kept::new(1, 1);
        for _ in 0..10 * MAX_TOOLS_RUNNING {
            assert!(kept.event(&started("s.t")).is_ok());
            assert!(kept.event(&finished("s.t")).is_ok());
        }
        // A finish for a tool never started frees nothing.
        for _ in 0..MAX_TOOLS_RUNNING {
            assert!(kept.event(&finished("s.x")).is_ok());
            assert!(kept.event(&started("s.t")).is_ok());
        }
        assert!(kept.event(&started("s.t")).is_err());
    }

    #[test]
    fn every_text_of_an_event_is_cut_to_its_bound() {
        let huge = "é".repeat(1024 * 1024);
        let fell = bounded(Event::FellBack {
            from: huge.clone(),
            failure: Failure::ProviderRejected {
                provider: huge.clone(),
                status: 400,
                detail: huge.clone(),
            },
        });
        let Event::FellBack {
            from,
            failure: Failure::ProviderRejected {
                provider, detail, ..
            },
        } = fell
        else {
            panic!("{fell:?}");
        };
        for text in [from, provider, detail] {
            assert!(text.len() <= MAX_EVENT_TEXT_BYTES && text.len() > 1000);
        }
        let retrying = bounded(Event::Retrying {
            provider: "p".into(),
            after_ms: 1,
            reason: huge.clone(),
        });
        assert!(
            matches!(retrying, Event::Retrying { reason, .. } if reason.len() <= MAX_EVENT_TEXT_BYTES)
        );
        let delta = bounded(Event::Delta(huge));
        assert!(matches!(delta, Event::Delta(text) if text.len() <= MAX_ANSWER_BYTES));
    }

    #[test]
    fn approvals_wait_three_at_a_time_once_each_within_the_steps() {
        let mut kept = Kept::new(1, 1);
        assert_eq!(kept.approval(1), Ok(true));
        assert!(
            kept.approval(1).is_err(),
            "one id asked twice while it waits"
        );
        let mut kept = Kept::new(1, 1);
        for id in 0..MAX_WAITING as u64 {
            assert_eq!(kept.approval(id), Ok(true));
        }
        assert_eq!(kept.approval(100), Ok(false), "denied: three wait");
        kept.waiting.remove(&0);
        assert_eq!(
            kept.approval(101),
            Ok(true),
            "room again once one is decided"
        );
        // One step allows MAX_TOOLS_RUNNING requests in all, denied or not.
        let mut asked = 5;
        while asked < MAX_TOOLS_RUNNING {
            assert_eq!(kept.approval(1000 + asked as u64), Ok(false));
            asked += 1;
        }
        assert!(kept.approval(5000).is_err());
    }
}
