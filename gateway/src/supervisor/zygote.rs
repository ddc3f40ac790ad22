//! The template process `per-request` workers are forked from (`hermes-worker zygote`),
//! as the gateway holds it: started at the first worker's start, asked for one worker at a
//! time, replaced after a reload (so a worker binary upgraded on disk is used from the
//! next job on) or when it died.
//!
//! An exec per worker was most of what a `per-request` message cost (the kernel making
//! and ending a process image, the dynamic loader, the runtime's start: about 2.3 ms of
//! CPU a message, docs/BENCHMARKS.md). The template pays it once; a fork of it is the
//! new worker. Only the built-in `hermes-worker` (a program of that name, wherever
//! `workers.command` puts it) is a template: a program of another name, such as a wrapper
//! script, is spawned for each job, as in `pool` mode.
//!
//! Nothing here can stop a worker from starting: a template that cannot be started,
//! answers nonsense or dies is ended and the worker is spawned instead; another template
//! is tried after [`RETRY_AFTER`].

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hermes_protocol::Secret;
use hermes_protocol::codec;
use hermes_protocol::zygote::{Fork, Forked, MAX_MESSAGE};
use interprocess::local_socket::tokio::Stream;
use interprocess::os::unix::uds_local_socket;
use nix::fcntl::OFlag;
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, recv, sendmsg, socketpair,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::{Mutex, watch};

use super::forked::{self, WorkerChild};
use super::process::{self, SpawnSpec};
use super::stderr_log;
use crate::child::confine;

/// A template that does not answer a request within this is taken for broken.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// After a template failed, workers are spawned for this long before another is tried.
const RETRY_AFTER: Duration = Duration::from_secs(30);

pub struct Zygote {
    state: Mutex<State>,
    /// Set by a reload: the next request starts a new template.
    stale: AtomicBool,
}

#[derive(Default)]
struct State {
    running: Option<Template>,
    failed_at: Option<Instant>,
}

struct Template {
    pid: u32,
    /// Set once it exited and was reaped (at once, by a task of its own: a killed
    /// template is no zombie until the next worker's start).
    exited: watch::Receiver<Option<Option<ExitStatus>>>,
    control: AsyncFd<OwnedFd>,
    /// Workers it forked.
    forks: u64,
}

pub struct ForkedWorker {
    pub child: WorkerChild,
    pub stderr: pipe::Receiver,
    /// The gateway's end of the worker's connection; the worker's hello is the first
    /// thing on it.
    pub connection: Stream,
}

impl std::fmt::Debug for Zygote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Zygote")
    }
}

impl Zygote {
    pub fn new() -> Zygote {
        Zygote {
            state: Mutex::new(State::default()),
            stale: AtomicBool::new(false),
        }
    }

    /// After a reload: the next worker comes from a new template.
    pub fn refresh(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    /// A worker forked from the template, with the read end of its stderr and the
    /// gateway's end of its connection; `None` when there is no working template now (the
    /// caller spawns the worker).
    pub async fn fork(
        &self,
        spec: &SpawnSpec,
        token: &Secret,
        scratch: &Path,
        warm_up: bool,
    ) -> Option<ForkedWorker> {
        let mut state = self.state.lock().await;
        if self.stale.swap(false, Ordering::SeqCst)
            && let Some(old) = state.running.take()
        {
            old.end().await;
        }
        // A template that served before and died (killed, OOM) is replaced at once; one
        // that fails its first request is given up on for RETRY_AFTER.
        loop {
            let exited = state
                .running
                .as_ref()
                .and_then(|template| *template.exited.borrow());
            if let Some(status) = exited {
                tracing::warn!(
                    "the worker template exited ({}); starting another",
                    process::crash_cause(status)
                );
                state.running = None;
            }
            if state.running.is_none() {
                if state.failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
                    return None;
                }
                match Template::start(spec) {
                    Ok(template) => state.running = Some(template),
                    Err(e) => {
                        tracing::warn!(
                            "cannot start the worker template ({e}); spawning workers for {} s",
                            RETRY_AFTER.as_secs()
                        );
                        state.failed_at = Some(Instant::now());
                        return None;
                    }
                }
            }
            let template = state.running.as_mut()?;
            let answer =
                tokio::time::timeout(ANSWER_WITHIN, template.fork(token, scratch, warm_up)).await;
            let why = match answer {
                Ok(Ok(worker)) => {
                    template.forks += 1;
                    return Some(worker);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {ANSWER_WITHIN:?}"),
            };
            let served = template.forks > 0;
            if let Some(template) = state.running.take() {
                template.end().await;
            }
            if served {
                tracing::warn!("the worker template failed ({why}); starting another");
                continue;
            }
            tracing::warn!(
                "the worker template failed ({why}); spawning workers for {} s",
                RETRY_AFTER.as_secs()
            );
            state.failed_at = Some(Instant::now());
            return None;
        }
    }
}

impl Template {
    /// `program zygote` with the template's end of a socket pair as its stdin, confined as
    /// a worker (its forks inherit the limits).
    fn start(spec: &SpawnSpec) -> io::Result<Template> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )?;
        // Its end blocks: the template waits for requests and does nothing else.
        nix::fcntl::fcntl(&theirs, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))?;
        let mut command = process::worker_command(spec, "zygote");
        command.stdin(Stdio::from(theirs));
        let mut child = command.spawn()?;
        let Some(pid) = child.id() else {
            return Err(io::Error::other("the template exited at once"));
        };
        // Dropped (killed) with the child on an early return.
        confine(pid, spec.memory_limit_mb.saturating_mul(1024 * 1024))?;
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(stderr_log::pump(stderr, pid));
        }
        let control = forked::register(ours, Interest::READABLE | Interest::WRITABLE)?;
        let (tell, exited) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            let _ = tell.send(Some(status));
        });
        tracing::debug!(worker_pid = pid, "worker template started");
        Ok(Template {
            pid,
            exited,
            control,
            forks: 0,
        })
    }

    async fn fork(
        &mut self,
        token: &Secret,
        scratch: &Path,
        warm_up: bool,
    ) -> io::Result<ForkedWorker> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // A stream pair rather than a connection to the worker socket: no accept, no
        // lookup of the token, and no go-ahead for the worker to wait on (it could connect
        // before the gateway expected it). Both ends non-blocking, as the runtimes want.
        let (connection, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )?;
        let request = codec::to_bytes(&Fork {
            token: token.expose().to_string(),
            scratch: scratch.as_os_str().as_bytes().to_vec(),
            warm_up,
        })
        .map_err(io::Error::other)?;
        let fds = [write.as_raw_fd(), theirs.as_raw_fd()];
        let rights = [ControlMessage::ScmRights(&fds)];
        loop {
            let mut ready = self.control.writable().await?;
            match ready.try_io(|control| {
                sendmsg::<()>(
                    control.get_ref().as_raw_fd(),
                    &[IoSlice::new(&request)],
                    &rights,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            }) {
                Ok(sent) => {
                    sent?;
                    break;
                }
                Err(_would_block) => continue,
            }
        }
        drop(write);
        drop(theirs);
        let mut answer = vec![0u8; MAX_MESSAGE];
        let len = loop {
            let mut ready = self.control.readable().await?;
            match ready.try_io(|control| {
                recv(
                    control.get_ref().as_raw_fd(),
                    &mut answer,
                    MsgFlags::empty(),
                )
                .map_err(io::Error::from)
            }) {
                Ok(len) => break len?,
                Err(_would_block) => continue,
            }
        };
        if len == 0 {
            return Err(io::Error::other("the template closed its socket"));
        }
        let pid = match codec::from_bytes::<Forked>(&answer[..len]).map_err(io::Error::other)? {
            Forked::Started { pid } => pid,
            Forked::Failed { why } => return Err(io::Error::other(why)),
        };
        let child = match forked::Forked::adopt(pid) {
            Ok(forked) => WorkerChild::Forked(forked),
            Err(e) => {
                forked::kill_and_reap(pid);
                return Err(e);
            }
        };
        // No `confine` here: a fork has the template's limits and OOM score already (the
        // template was confined with this spec, and a reload replaces it), and its /proc
        // files are root's from the start (it is non-dumpable, as the template is).
        Ok(ForkedWorker {
            child,
            stderr: pipe::Receiver::from_owned_fd(read)?,
            connection: uds_local_socket::tokio::Stream::try_from(connection)?.into(),
        })
    }

    /// Closing its socket ends it; a template that does not go is killed.
    async fn end(mut self) {
        drop(self.control);
        let gone = self.exited.wait_for(Option::is_some);
        if tokio::time::timeout(Duration::from_secs(1), gone)
            .await
            .is_err()
            && let Ok(pid) = i32::try_from(self.pid)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
