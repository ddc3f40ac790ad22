//! `hermes-worker serve`: the mode the gateway starts.
//!
//! Connect to the gateway's socket (a forked worker is given its connection instead,
//! [`Gateway`]), prove who we are with the one-time token, then run the
//! jobs we are given, one at a time, streaming events and ending each with one outcome.
//! While a job runs the worker still listens: the gateway has nothing to say then, so a
//! message means it is confused and the connection closing means it is gone, and either
//! way the worker exits at once rather than finish work nobody will read (the parent-death
//! signal is only a fast hint; this is the reliable one).
//!
//! What the gateway may say during a job is a [`ToWorker::Decision`]: the answer
//! to an approval this worker asked for (a tool call its entry says to confirm waits for
//! it), and since version 5 a [`ToWorker::Scheduled`]: the answer to a built-in schedule
//! tool's call, which only the gateway can carry out (it alone keeps schedules). Answers
//! nobody waits for any more are dropped.
//!
//! Tool servers run in the sandbox, with the scratch directory the gateway made for this
//! worker (`HERMES_WORKER_SCRATCH`) as their working directory and `TMPDIR`; it is emptied
//! after every job (and removed by the gateway when the worker is gone), except the job's
//! output directory, which the gateway made there and takes the answer's files from.
//!
//! Tool servers live as long as their configuration: started by the first job that
//! names them, kept for the next jobs while their entry is unchanged, replaced after a
//! job in which one died or timed out a call, and ended with the worker. A job whose
//! deadline passes during a tool call is the exception: that tool may still be running,
//! and only ending the worker's process group ends everything it started, so the worker
//! leaves the job unanswered and lets the gateway do that (it kills the group shortly
//! after the deadline and answers "timed out" itself).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::time::Duration;

use hermes_protocol::frame::FrameError;
use hermes_protocol::{
    ApprovalRequest, Connection, Decision, FromWorker, Job, JobId, Outcome, ScheduleAnswer,
    ScheduleRequest, Secret, ToWorker, handshake,
};
use interprocess::local_socket::tokio::{Stream, prelude::*};
use interprocess::local_socket::{GenericFilePath, ToFsName};
use tokio::sync::mpsc;

use crate::agent;
use crate::outcome_frame::fit;
use hermes_worker::sandbox::{self, Policy, Sandbox};
use hermes_worker::tools::schedules::ScheduleAsk;
use hermes_worker::tools::{Ask, Toolbox};

/// How long a worker that abandoned a tool call waits for the gateway to end it before
/// answering anyway and exiting (the gateway normally acts about a second after the
/// deadline; this only matters if it does not).
const ABANDONED_GRACE: Duration = Duration::from_secs(15);

type Conn = Connection<Stream>;

/// Exit statuses of `serve`.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_REFUSED: i32 = 2;

/// What a job needs besides the connection: its tools, the approvals they ask for, and
/// the scratch directory to empty after it.
struct Workbench {
    tools: Toolbox,
    asks: mpsc::UnboundedReceiver<Ask>,
    /// The built-in schedule tools' calls, for the gateway to answer.
    schedule_asks: mpsc::UnboundedReceiver<ScheduleAsk>,
    scratch: PathBuf,
    /// Whether the scratch directory is emptied after each job ([`Start::one_job`]).
    empty_scratch: bool,
}

/// How a worker came to be, which decides what it does around its jobs.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// Use the HTTP client once while waiting for the first job (a spawned worker, and a
    /// forked spare; a worker forked for a job that waits has the template's client, used
    /// once already, and goes straight to the job).
    pub warm_up: bool,
    /// Forked for one job (`per-request`): it leaves once the job's outcome is sent, and
    /// its scratch directory is not emptied, as the gateway removes it once the worker's
    /// group is gone. Emptying it cost a forked worker about 45 µs (the directory stream's
    /// buffer, faulted in for one entry).
    pub one_job: bool,
}

/// Where a worker's connection to the gateway comes from.
#[derive(Debug)]
pub enum Gateway {
    /// The gateway's socket at this path, to connect to (a spawned worker).
    Socket(String),
    /// Its end of a socket pair the gateway made for it (a forked worker).
    Connected(OwnedFd),
}

pub async fn serve(
    gateway: Gateway,
    token: &str,
    scratch: &Path,
    client: reqwest::Client,
    start: Start,
) -> i32 {
    let stream = match connect(gateway).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::error!("{e}");
            return EXIT_REFUSED;
        }
    };
    let mut conn = Connection::new(stream);
    if let Err(e) = handshake::introduce(&mut conn, &Secret::new(token)).await {
        tracing::error!("{e}");
        return EXIT_REFUSED;
    }
    if scratch.as_os_str().is_empty() {
        // The trampoline refuses a policy without one: sandboxed servers will not start.
        tracing::error!(
            "no scratch directory given (HERMES_WORKER_SCRATCH): sandboxed tool servers cannot start"
        );
    }
    let (asks_tx, asks) = mpsc::unbounded_channel();
    let mut tools = Toolbox::default();
    tools.set_sandbox(Some(Sandbox::new(Policy {
        scratch: scratch.to_path_buf(),
        ..Policy::default()
    })));
    tools.set_approvals(Some(asks_tx));
    let (schedules_tx, schedule_asks) = mpsc::unbounded_channel();
    tools.set_schedules(Some(schedules_tx));
    let mut bench = Workbench {
        tools,
        asks,
        schedule_asks,
        scratch: scratch.to_path_buf(),
        empty_scratch: !start.one_job,
    };
    // Until it is done or the first frame comes, whichever is first.
    let mut warm_up = start
        .warm_up
        .then(|| Box::pin(crate::warm_up::http_client(&client)));
    let code = loop {
        let frame = match warm_up.as_mut() {
            Some(warming) => tokio::select! {
                frame = conn.read_frame::<ToWorker>() => {
                    warm_up = None;
                    frame
                }
                _ = warming => {
                    warm_up = None;
                    continue;
                }
            },
            None => conn.read_frame::<ToWorker>().await,
        };
        match frame {
            Ok(ToWorker::Job(job)) => {
                if let Err(code) = run_job(&mut conn, job, &client, &mut bench).await {
                    break code;
                }
                // Its scratch directory holds the job's leftovers, and the gateway ends it
                // anyway: it leaves at once rather than wait to be told (a wake-up and a
                // read less for every `per-request` message).
                if start.one_job {
                    break EXIT_OK;
                }
            }
            Ok(ToWorker::Decision { job_id, .. } | ToWorker::Scheduled { job_id, .. }) => {
                tracing::debug!("dropped an answer for {job_id}, which is over");
            }
            Ok(ToWorker::Shutdown) => break EXIT_OK,
            Err(e) if e.is_disconnect() => break EXIT_OK,
            Err(e) => {
                tracing::error!("bad frame from the gateway: {e}");
                break EXIT_FAILED;
            }
        }
    };
    bench.tools.shutdown().await;
    code
}

async fn connect(gateway: Gateway) -> Result<Stream, String> {
    match gateway {
        Gateway::Socket(socket) => {
            let name = socket
                .as_str()
                .to_fs_name::<GenericFilePath>()
                .map_err(|e| format!("bad socket path {socket}: {e}"))?;
            Stream::connect(name)
                .await
                .map_err(|e| format!("cannot connect to the gateway at {socket}: {e}"))
        }
        Gateway::Connected(fd) => {
            interprocess::os::unix::uds_local_socket::tokio::Stream::try_from(fd)
                .map(Stream::from)
                .map_err(|e| format!("cannot use the connection the template passed: {e}"))
        }
    }
}

/// Runs one job, forwarding its events; `Err` carries the exit status when the worker
/// must stop (the gateway went away or the socket broke).
async fn run_job(
    conn: &mut Conn,
    job: Job,
    client: &reqwest::Client,
    bench: &mut Workbench,
) -> Result<(), i32> {
    let job_id = job.id;
    let deadline = agent::deadline_of(&job);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let Workbench {
        tools,
        asks,
        schedule_asks,
        ..
    } = bench;
    tools.offer_schedules(job.schedules.clone());
    // Schedule requests sent and not yet answered, by id.
    let mut scheduling: HashMap<u64, tokio::sync::oneshot::Sender<ScheduleAnswer>> = HashMap::new();
    let mut next_schedule = 0u64;
    // Approvals asked for and not yet decided, by id.
    let mut waiting: HashMap<u64, tokio::sync::oneshot::Sender<Decision>> = HashMap::new();
    let mut next_approval = 0u64;
    tools.set_output(job.output_dir.as_deref().map(PathBuf::from));
    let run = {
        let mut agent = pin!(async {
            tools.prepare(&job.tools, deadline).await;
            agent::run_with_tools(&job, client, &events_tx, tools, deadline).await
        });
        loop {
            tokio::select! {
                run = &mut agent => break run,
                Some(event) = events.recv() => {
                    send(conn, &FromWorker::Event { job_id, event }).await?;
                }
                Some(ask) = asks.recv() => {
                    next_approval += 1;
                    let request = ApprovalRequest {
                        id: next_approval,
                        tool: ask.tool,
                        arguments: ask.arguments,
                        timeout_ms: ask.timeout_ms,
                    };
                    waiting.insert(next_approval, ask.decide);
                    send(conn, &FromWorker::Approval { job_id, request }).await?;
                }
                Some(ask) = schedule_asks.recv() => {
                    next_schedule += 1;
                    scheduling.insert(next_schedule, ask.answer);
                    let request = ScheduleRequest { id: next_schedule, action: ask.action };
                    send(conn, &FromWorker::Schedule { job_id, request }).await?;
                }
                message = conn.read_frame::<ToWorker>() => match message {
                    Ok(ToWorker::Scheduled { job_id: for_job, request, answer }) if for_job == job_id => {
                        match scheduling.remove(&request) {
                            Some(reply) => { let _ = reply.send(answer); }
                            None => tracing::warn!("dropped a schedule answer {request} of {job_id}, which nobody waits for"),
                        }
                    }
                    Ok(ToWorker::Scheduled { job_id: other, .. }) => {
                        tracing::warn!("dropped a schedule answer for {other} during {job_id}");
                    }
                    Ok(ToWorker::Decision { job_id: for_job, approval, decision }) if for_job == job_id => {
                        match waiting.remove(&approval) {
                            Some(decide) => { let _ = decide.send(decision); }
                            None => tracing::warn!("dropped a decision for approval {approval} of {job_id}, which nobody waits for"),
                        }
                    }
                    Ok(ToWorker::Decision { job_id: other, .. }) => {
                        tracing::warn!("dropped a decision for {other} during {job_id}");
                    }
                    other => return Err(gateway_spoke(job_id, other)),
                },
            }
        }
    };
    // Asked for too late to be sent: their callers read "not approved".
    while asks.try_recv().is_ok() {}
    while schedule_asks.try_recv().is_ok() {}
    while let Ok(event) = events.try_recv() {
        send(conn, &FromWorker::Event { job_id, event }).await?;
    }
    if run.abandoned_tools {
        return leave_to_the_gateway(conn, job_id, run.outcome).await;
    }
    send(conn, &fit(job_id, run.outcome)).await?;
    // Now rather than at the next job: whatever a timed-out call left running should not
    // outlive the job by more than this.
    tools.stop_stale().await;
    // The next job starts with an empty scratch directory: what one job's tools wrote
    // there is not the next job's to read (a worker forked for one job has no next one). The job's output directory is the gateway's
    // to take files from and remove (it makes a new one for the next job).
    let output = job.output_dir.as_deref().map(Path::new);
    if bench.empty_scratch
        && let Err(e) = sandbox::empty_dir_keeping(&bench.scratch, output)
    {
        tracing::warn!(
            "cannot empty the scratch directory {}: {e}",
            bench.scratch.display()
        );
    }
    Ok(())
}

/// A tool call outlived the deadline: answer, asking the gateway to retire this worker, so
/// it ends the whole group (the tool's processes included) before the chat is told. This
/// worker takes no further job either way; if the gateway does not end it, it leaves.
async fn leave_to_the_gateway(conn: &mut Conn, job_id: JobId, outcome: Outcome) -> Result<(), i32> {
    tracing::warn!(
        "a tool call outlived the deadline of {job_id}; asking the gateway to end this \
         worker's process group"
    );
    let FromWorker::Outcome { outcome, .. } = fit(job_id, outcome) else {
        return Err(EXIT_FAILED);
    };
    send(
        conn,
        &FromWorker::Outcome {
            job_id,
            outcome,
            retire: true,
        },
    )
    .await?;
    tokio::select! {
        _ = conn.read_frame::<ToWorker>() => Err(EXIT_OK),
        _ = tokio::time::sleep(ABANDONED_GRACE) => {
            tracing::error!("the gateway did not end this worker; exiting");
            Err(EXIT_FAILED)
        }
    }
}

/// What the gateway saying anything during a job means: the exit status to leave with.
fn gateway_spoke(job_id: JobId, message: Result<ToWorker, FrameError>) -> i32 {
    match message {
        Err(e) if e.is_disconnect() => {
            tracing::info!("the gateway went away; abandoning {job_id}");
            EXIT_OK
        }
        Ok(_) => {
            tracing::error!("the gateway spoke during a job; exiting");
            EXIT_FAILED
        }
        Err(e) => {
            tracing::error!("bad frame from the gateway during {job_id}: {e}");
            EXIT_FAILED
        }
    }
}

async fn send(conn: &mut Conn, message: &FromWorker) -> Result<(), i32> {
    conn.write_frame(message).await.map_err(|e| {
        if e.is_disconnect() {
            EXIT_OK
        } else {
            tracing::error!("cannot send to the gateway: {e}");
            EXIT_FAILED
        }
    })
}
