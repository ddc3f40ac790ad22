//! `hermes-worker serve`: the mode the gateway starts.
//!
//! Connect to the gateway's socket, prove who we are with the one-time token, then run the
//! jobs we are given, one at a time, streaming events and ending each with one outcome.
//! The gateway sends nothing while a job runs, so anything readable on the socket then
//! means the gateway is gone: the worker exits at once rather than finish work nobody
//! will read (the parent-death signal is only a fast hint; this is the reliable one).

use std::pin::pin;

use hermes_protocol::{
    FromWorker, Hello, Job, PROTOCOL_VERSION, Secret, ToWorker, Welcome, read_frame, write_frame,
};
use interprocess::local_socket::tokio::{Stream, prelude::*};
use interprocess::local_socket::{GenericFilePath, ToFsName};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::agent;

/// Exit statuses of `serve`.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_REFUSED: i32 = 2;

pub async fn serve(socket: &str, token: &str, client: reqwest::Client) -> i32 {
    raise_oom_score();
    let stream = match socket.to_fs_name::<GenericFilePath>() {
        Ok(name) => match Stream::connect(name).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::error!("cannot connect to the gateway at {socket}: {e}");
                return EXIT_REFUSED;
            }
        },
        Err(e) => {
            tracing::error!("bad socket path {socket}: {e}");
            return EXIT_REFUSED;
        }
    };
    serve_connection(stream, token, &client).await
}

/// The protocol over an established connection; separate from `serve` so tests can drive
/// it over a socket of their own.
pub async fn serve_connection(stream: Stream, token: &str, client: &reqwest::Client) -> i32 {
    let mut conn = BufReader::new(stream);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        token: Secret::new(token),
        pid: std::process::id(),
    };
    if let Err(e) = write_frame(conn.get_mut(), &hello).await {
        tracing::error!("handshake failed: {e}");
        return EXIT_REFUSED;
    }
    match read_frame::<Welcome, _>(&mut conn).await {
        Ok(Welcome::Accepted) => {}
        Ok(Welcome::Rejected { reason }) => {
            tracing::error!("the gateway refused this worker: {reason}");
            return EXIT_REFUSED;
        }
        Err(e) => {
            tracing::error!("handshake failed: {e}");
            return EXIT_REFUSED;
        }
    }
    loop {
        match read_frame::<ToWorker, _>(&mut conn).await {
            Ok(ToWorker::Job(job)) => {
                if let Err(code) = run_job(&mut conn, job, client).await {
                    return code;
                }
            }
            Ok(ToWorker::Shutdown) => return EXIT_OK,
            Err(e) if e.is_disconnect() => return EXIT_OK,
            Err(e) => {
                tracing::error!("bad frame from the gateway: {e}");
                return EXIT_FAILED;
            }
        }
    }
}

/// Runs one job, forwarding its events; `Err` carries the exit status when the worker
/// must stop (the gateway went away or the socket broke).
async fn run_job(
    conn: &mut BufReader<Stream>,
    job: Job,
    client: &reqwest::Client,
) -> Result<(), i32> {
    let job_id = job.id;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut agent = pin!(async move { agent::run(&job, client, &events_tx).await });
    let outcome = loop {
        tokio::select! {
            outcome = &mut agent => break outcome,
            Some(event) = events.recv() => {
                send(conn, &FromWorker::Event { job_id, event }).await?;
            }
            readable = conn.fill_buf() => {
                match readable {
                    Ok(bytes) if !bytes.is_empty() => {
                        tracing::error!("the gateway spoke during a job; exiting");
                        return Err(EXIT_FAILED);
                    }
                    _ => {
                        tracing::info!("the gateway went away; abandoning {job_id}");
                        return Err(EXIT_OK);
                    }
                }
            }
        }
    };
    while let Ok(event) = events.try_recv() {
        send(conn, &FromWorker::Event { job_id, event }).await?;
    }
    send(conn, &FromWorker::Outcome { job_id, outcome }).await
}

async fn send(conn: &mut BufReader<Stream>, message: &FromWorker) -> Result<(), i32> {
    write_frame(conn.get_mut(), message).await.map_err(|e| {
        if e.is_disconnect() {
            EXIT_OK
        } else {
            tracing::error!("cannot send to the gateway: {e}");
            EXIT_FAILED
        }
    })
}

/// Under memory pressure the kernel should kill a worker, never the gateway.
fn raise_oom_score() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "1000") {
        tracing::debug!("cannot raise oom_score_adj: {e}");
    }
}
