//! A worker that misbehaves on request, to prove the gateway survives every way a worker
//! can fail. It speaks the real protocol; the fault is chosen by the user's message (so
//! one running gateway can be shown a crash and then a normal answer), or, for faults that
//! happen before any message, by the name it is started under (`argv[0]`: tests symlink
//! it as `never-connect`, `wrong-token`, `old-protocol` (the version before this one),
//! `new-protocol` (the one after), `garbage-hello`, `alloc-at-start`, `deaf`: connects,
//! then never reads its socket again).
//!
//! Messages it understands: `panic`, `abort`, `segv`, `exit 0`, `exit 1`, `hang`,
//! `partial then hang`, `spawn and hang`, `garbage`, `oversized`, `wrong job`, `alloc`,
//! `stderr flood`, the floods of what the gateway keeps per job ([`flood`]): `flood
//! tools`, `flood fallbacks`, `flood approvals`, and the stubborn ones only SIGKILL ends
//! ([`stubborn`]): `ignore sigterm and hang`, `spawn a child that ignores sigterm and
//! hang`. Anything else is answered `ok: <message>`.

use std::time::Duration;

use hermes_protocol::codec;
use hermes_protocol::{
    ApprovalRequest, Connection, Event, Failure, FromWorker, Hello, Job, JobId, Outcome,
    PROTOCOL_VERSION, Reply, Secret, ToWorker, Welcome,
};
use interprocess::local_socket::tokio::{Stream, prelude::*};
use interprocess::local_socket::{GenericFilePath, ToFsName};
use tokio::io::AsyncWriteExt;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let name = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let socket = std::env::var("HERMES_WORKER_SOCKET").unwrap_or_default();
    let token = std::env::var("HERMES_WORKER_TOKEN").unwrap_or_default();
    if name == "never-connect" {
        std::future::pending::<()>().await;
    }
    if name == "alloc-at-start" {
        // For the real-systemd test: grow until the unit's MemoryMax makes the kernel's
        // OOM killer end this process (touching every page, so the memory is real).
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 8 * 1024 * 1024]);
        }
    }
    let Ok(fs_name) = socket.as_str().to_fs_name::<GenericFilePath>() else {
        std::process::exit(2);
    };
    let Ok(stream) = Stream::connect(fs_name).await else {
        std::process::exit(2);
    };
    let mut conn = Connection::new(stream);
    let hello = |version: u32, token: &str| Hello {
        version,
        token: Secret::new(token),
        pid: std::process::id(),
    };
    let first = match name.as_str() {
        "wrong-token" => codec_frame(&hello(PROTOCOL_VERSION, "not-the-token")),
        "old-protocol" => codec_frame(&hello(PROTOCOL_VERSION - 1, &token)),
        "new-protocol" => codec_frame(&hello(PROTOCOL_VERSION + 1, &token)),
        "garbage-hello" => b"\x00\x00\x00\x05\xff\xff\xff\xff\xff".to_vec(),
        _ => codec_frame(&hello(PROTOCOL_VERSION, &token)),
    };
    // Written raw: some of these first frames are not what a worker may send.
    if conn.get_mut().write_all(&first).await.is_err() {
        std::process::exit(2);
    }
    match conn.read_frame::<Welcome>().await {
        Ok(Welcome::Accepted) => {}
        Ok(Welcome::Rejected { reason }) => {
            eprintln!("bad-worker: rejected: {reason}");
            // Stay alive: the gateway must not depend on a rejected worker leaving.
            std::future::pending::<()>().await;
        }
        Err(e) => {
            eprintln!("bad-worker: no welcome: {e}");
            std::process::exit(2);
        }
    }
    if name == "deaf" {
        std::future::pending::<()>().await;
    }
    loop {
        match conn.read_frame::<ToWorker>().await {
            Ok(ToWorker::Job(job)) => act(&mut conn, job).await,
            // It never asks for an approval, so no decision is its business.
            Ok(ToWorker::Decision { .. }) => {}
            Ok(ToWorker::Shutdown) | Err(_) => std::process::exit(0),
        }
    }
}

fn codec_frame(hello: &Hello) -> Vec<u8> {
    let payload = codec::to_bytes(hello).unwrap_or_default();
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

async fn act(conn: &mut Connection<Stream>, job: Job) {
    let text = job
        .messages
        .last()
        .map(|m| m.content.trim().to_string())
        .unwrap_or_default();
    match text.as_str() {
        "panic" => panic!("bad-worker was asked to panic"),
        "abort" => std::process::abort(),
        "segv" => {
            // Rust's runtime handles SIGSEGV itself (to report stack overflows); restore
            // the default action so the signal kills the process as a real fault would.
            use nix::sys::signal::{SigHandler, Signal, raise, signal};
            // SAFETY: installing the default disposition runs no code of ours.
            let _ = unsafe { signal(Signal::SIGSEGV, SigHandler::SigDfl) };
            let _ = raise(Signal::SIGSEGV);
            hang().await
        }
        "exit 0" => std::process::exit(0),
        "exit 1" => std::process::exit(1),
        "hang" => hang().await,
        "partial then hang" => {
            let _ = conn
                .write_frame(&FromWorker::Event {
                    job_id: job.id,
                    event: Event::Delta("partial".into()),
                })
                .await;
            hang().await
        }
        "spawn and hang" => {
            // A child, and a grandchild of its own, both left in this process group.
            let _ = std::process::Command::new("sh")
                .args(["-c", "sleep 1000 & sleep 1000"])
                .spawn();
            hang().await
        }
        "garbage" => {
            let _ = conn
                .get_mut()
                .write_all(b"\x00\x00\x00\x08\xde\xad\xbe\xef\xde\xad\xbe\xef")
                .await;
            hang().await
        }
        "oversized" => {
            let _ = conn.get_mut().write_all(&u32::MAX.to_be_bytes()).await;
            hang().await
        }
        "wrong job" => {
            let _ = conn
                .write_frame(&reply(JobId(job.id.0 + 1_000_000), "not yours"))
                .await;
            hang().await
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 16 * 1024 * 1024]);
            }
        }
        "ignore sigterm and hang" | "spawn a child that ignores sigterm and hang" => {
            stubborn(&text).await
        }
        "flood tools" | "flood fallbacks" | "flood approvals" => flood(conn, &job, &text).await,
        "stderr flood" => {
            let line = "x".repeat(10_000);
            for _ in 0..800 {
                eprintln!("{line}");
            }
            let _ = conn.write_frame(&reply(job.id, "ok: flooded")).await;
        }
        _ => {
            let _ = conn
                .write_frame(&reply(job.id, &format!("ok: {text}")))
                .await;
        }
    }
}

/// How many of each the floods send: far past any bound the gateway may keep per job.
const FLOOD: u64 = 20_000;

/// Sends what the gateway would keep for the job, far more than an honest worker can
/// (tools that never finish, a fallback per message, approvals it never waits for),
/// then answers as if all was well: a gateway without bounds grows and replies `ok`.
/// Whatever the gateway says meanwhile (decisions) is read and dropped, so it is never
/// held up by a full socket: the flood alone is the fault.
async fn flood(conn: &mut Connection<Stream>, job: &Job, text: &str) {
    let (read, write) = tokio::io::split(conn.get_mut());
    let mut reader = Connection::new(read);
    let mut writer = Connection::new(write);
    let drain = async { while reader.read_frame::<ToWorker>().await.is_ok() {} };
    let send = async {
        for i in 0..FLOOD {
            // The gateway hangs up once it has seen enough: the flood is over then.
            if writer
                .write_frame(&flood_frame(job, text, i))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = writer.write_frame(&reply(job.id, "ok: flooded")).await;
    };
    tokio::select! {
        _ = drain => {}
        _ = send => {}
    }
}

fn flood_frame(job: &Job, text: &str, i: u64) -> FromWorker {
    match text {
        "flood tools" => FromWorker::Event {
            job_id: job.id,
            event: Event::ToolStarted {
                name: format!("flood.tool{i}"),
            },
        },
        "flood fallbacks" => FromWorker::Event {
            job_id: job.id,
            event: Event::FellBack {
                from: format!("provider{i}"),
                failure: Failure::ProviderUnavailable {
                    provider: format!("provider{i}"),
                    detail: "flood".into(),
                },
            },
        },
        _ => FromWorker::Approval {
            job_id: job.id,
            request: ApprovalRequest {
                id: i,
                tool: "flood.tool".into(),
                arguments: format!("{{\"i\": {i}}}"),
                timeout_ms: 60_000,
            },
        },
    }
}

/// Faults that outlive SIGTERM, so the gateway's SIGKILL after `kill_grace_secs` is what
/// ends them: this worker itself ignoring SIGTERM, or a child of it that does (the worker
/// then dies on SIGTERM and leaves the child behind in its group).
async fn stubborn(text: &str) {
    if text == "ignore sigterm and hang" {
        use nix::sys::signal::{SigHandler, Signal, signal};
        // SAFETY: ignoring a signal runs no code of ours.
        let _ = unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) };
    } else {
        // An ignored signal stays ignored across exec, so `sleep` ignores it too.
        let _ = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; exec sleep 1000"])
            .spawn();
    }
    hang().await
}

fn reply(job_id: JobId, text: &str) -> FromWorker {
    FromWorker::Outcome {
        job_id,
        retire: false,
        outcome: Outcome::Reply(Reply {
            text: text.into(),
            provider: "bad-worker".into(),
            model: "none".into(),
            transcript: vec![hermes_protocol::ChatMessage::new(
                hermes_protocol::Role::Assistant,
                text,
            )],
            heard: Vec::new(),
            files: Vec::new(),
        }),
    }
}

async fn hang() {
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
