//! `hermes-worker zygote`: the template `per-request` workers are forked from.
//!
//! A fresh worker per job is `per-request` mode's isolation, and an exec per worker was
//! most of its cost: the kernel building and tearing down a process image, the dynamic
//! loader, the runtime's start (docs/BENCHMARKS.md). The gateway starts this process once;
//! it pays all of that, then waits on its stdin (a `SOCK_SEQPACKET` socket) for
//! [`Fork`] requests, each with the new worker's stderr attached, and forks one worker
//! per request. It never has a job, a chat's data or a token other than the one of the
//! request in hand (wiped once the worker is forked).
//!
//! The fork is `clone(CLONE_PARENT)`: the new worker is the gateway's child, not the
//! template's, so the gateway reaps it, reads its exit status and ends its process group
//! exactly as for a worker it spawned, and the template's own death touches no worker. The
//! template answers with the new pid ([`Forked::Started`]); the worker puts itself in a
//! process group of its own first thing (only it can: it is not the template's child),
//! takes its stderr, leaves the template's socket and ties its life to the gateway's (the
//! parent-death signal is not inherited). From there it is `hermes-worker serve`, with its
//! own runtime and the HTTP client the template built, on the connection the request
//! brought (one end of a socket pair the gateway made for this worker).
//!
//! What forked workers share that spawned ones do not: the template's address-space
//! layout (each exec randomised it anew), and the template's limits, environment and
//! `oom_score_adj`, which the gateway set as for any worker.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use hermes_protocol::codec;
use hermes_protocol::zygote::{Fork, Forked, MAX_MESSAGE};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::{code_pages, lifetime, serve};

/// The control socket: the template's stdin, which each worker inherits and answers on.
const CONTROL: RawFd = 0;

/// Forks workers until the gateway closes the control socket. Must run before anything
/// starts a thread: a fork copies only the calling thread.
pub fn run(client: reqwest::Client) -> ! {
    warm_up(&client);
    if let Err(why) = only_thread() {
        eprintln!("hermes-worker zygote: {why}");
        std::process::exit(serve::EXIT_FAILED);
    }
    match code_pages::move_code() {
        code_pages::Moved::Yes { bytes, huge } => tracing::debug!(
            "code moved into anonymous memory: {} KiB, {} KiB of it in huge pages",
            bytes / 1024,
            huge / 1024
        ),
        code_pages::Moved::No(why) => tracing::info!("code left mapped from its file: {why}"),
    }
    let prepared = match Prepared::new() {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("hermes-worker zygote: cannot open /dev/null: {e}");
            std::process::exit(serve::EXIT_FAILED);
        }
    };
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (len, fds) = match receive(&mut buf) {
            Ok(Some(request)) => request,
            Ok(None) => std::process::exit(serve::EXIT_OK),
            Err(e) => {
                eprintln!("hermes-worker zygote: cannot read a request: {e}");
                std::process::exit(serve::EXIT_FAILED);
            }
        };
        let request = codec::from_bytes::<Fork>(&buf[..len]);
        buf[..len].fill(0);
        let forked = match (request, fds) {
            (Ok(fork), Ok(fds)) => {
                let forked = fork_worker(&fork, fds, &client, &prepared);
                wipe(fork);
                forked
            }
            (Err(e), _) => Forked::Failed {
                why: format!("a request that is not one: {e}"),
            },
            (Ok(fork), Err(why)) => {
                wipe(fork);
                Forked::Failed { why: why.into() }
            }
        };
        if let Err(e) = answer(&forked) {
            eprintln!("hermes-worker zygote: cannot answer the gateway: {e}");
            std::process::exit(serve::EXIT_FAILED);
        }
    }
}

/// The answer to a request: the new worker's pid, or why there is none.
fn fork_worker(
    fork: &Fork,
    fds: Descriptors,
    client: &reqwest::Client,
    prepared: &Prepared,
) -> Forked {
    // SAFETY: this process has one thread (checked at start, and nothing here starts one),
    // so the child is a consistent copy, free to do anything, as after `fork`. The raw
    // system call (not glibc's `fork`) is what passes CLONE_PARENT; glibc's own view of
    // the thread id stays the template's, which only its pthread functions for other
    // threads read (a child raising a signal on itself asks the kernel for its id).
    let pid = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_clone,
            (nix::libc::CLONE_PARENT | nix::libc::SIGCHLD) as nix::libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match u32::try_from(pid) {
        Ok(0) => become_worker(fork, fds, client, prepared),
        // The worker's stderr is its own now; the template keeps none.
        Ok(pid) => Forked::Started { pid },
        Err(_) => Forked::Failed {
            why: format!("cannot fork a worker: {}", std::io::Error::last_os_error()),
        },
    }
}

/// The new worker: its own group, its stderr, an empty stdin, tied to the gateway, then
/// `serve` on the connection it was given, as if spawned.
fn become_worker(
    fork: &Fork,
    fds: Descriptors,
    client: &reqwest::Client,
    prepared: &Prepared,
) -> ! {
    let Descriptors { stderr, connection } = fds;
    if let Err(e) =
        nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
    {
        eprintln!("cannot put the worker in a process group of its own: {e}");
        std::process::exit(serve::EXIT_FAILED);
    }
    if stderr.as_raw_fd() != 2 {
        // SAFETY: dup2 onto fd 2, which this process owns; the new worker's log goes to
        // its own pipe, read by the gateway under its pid.
        if unsafe { nix::libc::dup2(stderr.as_raw_fd(), 2) } < 0 {
            std::process::exit(serve::EXIT_FAILED);
        }
        drop(stderr);
    }
    // The control socket is the template's: a worker's stdin is empty, as when spawned.
    // SAFETY: dup2 onto fd 0, which this process owns.
    if unsafe { nix::libc::dup2(prepared.null.as_raw_fd(), CONTROL) } < 0 {
        eprintln!(
            "cannot close the template's socket in a worker: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(serve::EXIT_FAILED);
    }
    lifetime::die_with_the_gateway();
    show_as_serve(prepared.argument_area);
    let token = fork.token.clone();
    let scratch = PathBuf::from(std::ffi::OsStr::from_bytes(&fork.scratch));
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => lifetime::end(runtime.block_on(serve::serve(
            serve::Gateway::Connected(connection),
            &token,
            &scratch,
            client.clone(),
            serve::Start {
                warm_up: fork.warm_up,
                one_job: true,
            },
        ))),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            std::process::exit(serve::EXIT_FAILED)
        }
    }
}

/// What a request carries besides its bytes.
struct Descriptors {
    stderr: OwnedFd,
    /// The worker's end of its connection to the gateway.
    connection: OwnedFd,
}

/// Reads one request: its length and the descriptors it carries, or why they are not a
/// worker's. `None` at EOF.
fn receive(buf: &mut [u8]) -> nix::Result<Option<(usize, Result<Descriptors, &'static str>)>> {
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [IoSliceMut::new(buf)];
    let message = recvmsg::<()>(
        CONTROL,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let len = message.bytes;
    let mut fds = Vec::new();
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just gave this process these descriptors, which nothing
            // else owns; any beyond the two expected are closed with the vector.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    let mut fds = fds.into_iter();
    let descriptors = match (fds.next(), fds.next()) {
        (Some(stderr), Some(connection)) if is_socket(&connection) => {
            Ok(Descriptors { stderr, connection })
        }
        // A gateway of the build before this one sent a pipe its worker waited on, and
        // is still running after an upgrade put this template's binary on disk: it is
        // told so, and spawns its workers until it is restarted.
        (Some(_), Some(_)) => Err(
            "the worker's connection is not a socket: a gateway of another build (restart \
             hermes-gateway after an upgrade)",
        ),
        _ => Err("a request without the worker's stderr and connection"),
    };
    Ok(Some((len, descriptors)))
}

fn is_socket(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd).is_ok_and(|stat| {
        nix::sys::stat::SFlag::from_bits_truncate(stat.st_mode)
            .contains(nix::sys::stat::SFlag::S_IFSOCK)
    })
}

fn answer(forked: &Forked) -> std::io::Result<()> {
    let bytes = codec::to_bytes(forked).map_err(std::io::Error::other)?;
    sendmsg::<()>(
        CONTROL,
        &[IoSlice::new(&bytes)],
        &[] as &[ControlMessage],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// What every worker needs from the process it is a copy of, looked up once by the
/// template rather than by each worker (an `open` of `/dev/null`, and of `/proc/self/stat`
/// and its reads: about a tenth of a forked worker's system calls).
struct Prepared {
    /// A worker's stdin, dup'ed over the template's socket.
    null: OwnedFd,
    /// The argument area, which a fork shares with its template (same addresses).
    argument_area: Option<(usize, usize)>,
}

impl Prepared {
    fn new() -> std::io::Result<Prepared> {
        Ok(Prepared {
            null: std::fs::File::open("/dev/null")?.into(),
            argument_area: argument_area(),
        })
    }
}

/// `ps` and `/proc/PID/cmdline` show a forked worker as `hermes-worker serve`, as a
/// spawned one, not as the template it is a copy of: the template's argument is
/// overwritten in this process's own copy of the argument area (as `setproctitle` does).
fn show_as_serve(argument_area: Option<(usize, usize)>) {
    const TEMPLATE: &[u8] = b"zygote\0";
    const WORKER: &[u8] = b"serve\0\0";
    let Some((start, end)) = argument_area else {
        return;
    };
    let Some(len) = end.checked_sub(start) else {
        return;
    };
    // SAFETY: [start, end) is this process's argument area, as the kernel reported it to
    // the template (a fork's is at the same addresses): mapped and writable (at the top of the main thread's stack), and read by nothing in
    // this process after start-up.
    let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, len) };
    if let Some(at) = area.windows(TEMPLATE.len()).position(|w| w == TEMPLATE) {
        area[at..at + WORKER.len()].copy_from_slice(WORKER);
    }
}

/// `arg_start` and `arg_end` of `/proc/self/stat` (fields 48 and 49).
fn argument_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields are counted after the command name, which may hold spaces and parentheses.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ').skip(48 - 3);
    let start = fields.next()?.parse().ok()?;
    let end = fields.next()?.parse().ok()?;
    Some((start, end))
}

/// What every worker would otherwise do first, done once here and inherited: the HTTP
/// client's first use ([`crate::warm_up`]: its lazily made state, the CPU-feature probes
/// of std and the crates, whose `cpuid` is a VM exit each), in a runtime of its own that
/// is gone, with its descriptors, before the first fork.
fn warm_up(client: &reqwest::Client) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(crate::warm_up::http_client(client));
    drop(runtime);
}

/// A request's token, once its worker has it: not left in the template's freed memory
/// for the next worker's copy of it.
fn wipe(fork: Fork) {
    let mut token = fork.token.into_bytes();
    token.fill(0);
    std::hint::black_box(&token);
}

/// A fork copies only the calling thread: with another thread running, a lock it held
/// would stay locked in every worker.
fn only_thread() -> Result<(), String> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(|e| format!("cannot count this process's threads: {e}"))?
        .count();
    if threads == 1 {
        Ok(())
    } else {
        Err(format!("{threads} threads run; a template must have one"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What tells this template's request from one of the build before it, whose second
    /// descriptor was a pipe.
    #[test]
    fn a_connection_is_a_socket_and_a_go_ahead_pipe_is_not() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        assert!(is_socket(&OwnedFd::from(ours)));
        assert!(is_socket(&OwnedFd::from(theirs)));
        let (read, write) = nix::unistd::pipe().expect("pipe");
        assert!(!is_socket(&read));
        assert!(!is_socket(&write));
    }
}
