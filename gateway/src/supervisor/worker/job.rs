//! One job on a started worker: the job sent within its deadline, the worker's events,
//! approvals and outcome passed on within the bounds of [`crate::supervisor::bounds`], and every
//! way the job can end early (its deadline, `/stop`, the gateway stopping, a worker that
//! breaks or says more than a worker can mean) turned into an outcome and the worker's
//! fate.

use std::pin::Pin;
use std::time::{Duration, Instant};

use hermes_protocol::{
    CancelReason, CrashCause, Decision, Event, Failure, FrameError, FromWorker, Job, Outcome,
    ScheduleAnswer, ToWorker,
};
use tokio::sync::oneshot::error::RecvError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use super::{DEADLINE_MARGIN, Worker};
use crate::approvals::Unaskable;
use crate::jobs::{ApprovalAsk, ScheduleAsk};
use crate::supervisor::bounds::{Kept, bounded};
use crate::supervisor::process;

/// Schedule requests of one job that may wait for their answers at once.
const MAX_SCHEDULE_WAITING: usize = 64;

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
        schedules: &mpsc::UnboundedSender<ScheduleAsk>,
        stops: Stops<'_>,
        kill_grace: Duration,
    ) -> JobRun {
        self.jobs_done += 1;
        let started = Instant::now();
        let deadline = started + Duration::from_millis(job.timeout_ms) + DEADLINE_MARGIN;
        // One timer for the whole job: registering one per frame costs more than the frame.
        let timer = tokio::time::sleep_until(deadline.into());
        tokio::pin!(timer);
        let mut sent = job.clone();
        sent.output_dir = self.job_output_dir().await;
        let frame = ToWorker::Job(sent);
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
        // Schedule answers on their way back to the worker, by request id.
        let mut scheduled: JoinSet<(u64, Result<ScheduleAnswer, RecvError>)> = JoinSet::new();
        loop {
            let frame = tokio::select! {
                frame = self.conn.read_frame::<FromWorker>() => frame,
                Some(decided) = decisions.join_next(), if !decisions.is_empty() => {
                    if let Err(run) = self.pass_on(decided, &mut kept, job, timer.as_mut(), &stops, kill_grace).await {
                        return run;
                    }
                    continue;
                }
                Some(answered) = scheduled.join_next(), if !scheduled.is_empty() => {
                    // The tasks only wait on a channel: they neither panic nor are aborted.
                    if let Ok((request, Ok(answer))) = answered {
                        let frame = ToWorker::Scheduled { job_id: job.id, request, answer };
                        if let Err(run) = self.tell(&frame, job, timer.as_mut(), &stops, kill_grace).await {
                            return run;
                        }
                    }
                    continue;
                }
                ended = ended(timer.as_mut(), &stops) => return self.end(ended, job, kill_grace).await,
            };
            match frame {
                Ok(FromWorker::Schedule { job_id, request }) if job_id == job.id => {
                    tracing::info!(worker_pid = self.pid, job_id = %job.id, "a schedule tool's call");
                    // Each call of a step is one request; a worker asking for more than
                    // its steps could make is not a worker.
                    if scheduled.len() >= MAX_SCHEDULE_WAITING {
                        return self
                            .violated(job, "too many schedule requests at once".into())
                            .await;
                    }
                    let (answer, answered) = oneshot::channel();
                    if schedules
                        .send(ScheduleAsk {
                            action: request.action,
                            answer,
                        })
                        .is_ok()
                    {
                        let id = request.id;
                        scheduled.spawn(async move { (id, answered.await) });
                    }
                }
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
                    | FromWorker::Approval { job_id, .. }
                    | FromWorker::Schedule { job_id, .. },
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
