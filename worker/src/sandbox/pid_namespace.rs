//! A PID namespace per tool server, for kernels whose Landlock cannot scope signals (ABI
//! < 6; Debian 12's Linux 6.1 has ABI 2). seccomp can protect the pids it knows (the
//! gateway's, the worker's), not the changing set of other workers and their tools. In a
//! PID namespace of its own a tool sees only its own processes: `kill`, `pidfd_open`,
//! `ptrace` and `prlimit` cannot name anything else, whatever number they are given.
//!
//! A user namespace comes with it (`unshare(CLONE_NEWUSER | CLONE_NEWPID)`), so no
//! privilege is needed. It maps the service's own uid and gid to themselves only: files
//! keep their owners, `id` prints what it printed before, and a tool holds no capability
//! after its `execve` (unless the service runs as root, whose capabilities then reach only
//! what its own namespaces own). The unit allows exactly these two namespace types.
//!
//! The first process in a new PID namespace is its init, and the process that made the
//! namespace is not in it. So the trampoline runs in two stages: this one makes the
//! namespaces, starts itself again as the namespace's init (the second stage confines
//! itself as usual and becomes the tool), and waits outside:
//!
//! ```text
//! worker ── trampoline (waits) ── tool server = pid 1 of its namespace ── what it runs
//! ```
//!
//! - The tool server ends when the trampoline is told to end (SIGTERM, SIGINT, SIGHUP,
//!   SIGQUIT) or dies (`PR_SET_PDEATHSIG`): SIGKILL, because an init ignores every signal
//!   it has no handler for, SIGTERM included. When the init dies, the kernel kills
//!   everything else in its namespace: nothing a tool started outlives it.
//! - The trampoline exits with the tool server's status (128 + the signal that killed it).
//! - Everything stays in the worker's process group, so the gateway's kill of the job's
//!   group reaches the trampoline and the tool server directly as well. seccomp refuses
//!   signals to that group (`kill(0, …)`), which would reach the worker.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};

use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::unistd::Pid;

use super::{ExecError, Outside, Policy};

/// Signals that end the tool: the worker's and the gateway's stop, a terminal's.
const ENDING: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Why [`run`] returned instead of running the tool to its end.
#[derive(Debug)]
pub enum NotRun {
    /// This system cannot make the namespaces (the probe says so too); nothing changed.
    Unsupported(io::Error),
    /// The namespaces exist but the tool could not be started in them.
    Failed(ExecError),
}

/// Runs `program` as the init of a new PID namespace under `policy`, and exits this
/// process with its status. Returns only if it did not run it. Call it from a
/// single-threaded process (a user namespace requires one).
pub fn run(policy: &Policy, outside: Outside, program: &OsStr, args: &[OsString]) -> NotRun {
    // Read before: in the new namespace they read as the overflow ids until mapped.
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    // The worker binary makes itself non-dumpable at start, and a non-dumpable process's
    // /proc/self files belong to root: the service's user could not write its own id
    // maps. This process holds nothing to hide (the tool's scrubbed environment, the
    // policy), and the tool's own exec makes it dumpable anyway.
    if let Err(errno) = nix::sys::prctl::set_dumpable(true) {
        return NotRun::Failed(setup("cannot make the trampoline dumpable", &errno.into()));
    }
    if let Err(errno) = unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWPID) {
        let error = io::Error::from(errno);
        return match errno {
            nix::Error::EPERM | nix::Error::EINVAL | nix::Error::ENOSYS => {
                NotRun::Unsupported(error)
            }
            _ => NotRun::Failed(setup("cannot make the tool's PID namespace", &error)),
        };
    }
    if let Err(error) = map_own_ids(uid, gid) {
        return NotRun::Failed(setup("cannot map the service's user into it", &error));
    }
    let mut stage_two = policy.clone();
    stage_two.outside = Some(outside);
    let json = match serde_json::to_string(&stage_two) {
        Ok(json) => json,
        Err(e) => return NotRun::Failed(ExecError::Setup(e.to_string())),
    };
    let mut ending = SigSet::empty();
    for signal in ENDING.into_iter().chain([Signal::SIGCHLD]) {
        ending.add(signal);
    }
    // Blocked here and taken with sigwait below; the child unblocks them before its exec
    // (a signal mask is inherited through both, and std leaves it alone).
    if let Err(errno) = ending.thread_block() {
        return NotRun::Failed(setup("cannot block signals", &io::Error::from(errno)));
    }
    let mut command = std::process::Command::new("/proc/self/exe");
    command
        .args(["sandbox-exec", "--policy-json", &json, "--"])
        .arg(program)
        .args(args);
    // SAFETY: sigprocmask and prctl are async-signal-safe and change only this child.
    unsafe {
        command.pre_exec(|| {
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return NotRun::Failed(setup("cannot start the tool in its PID namespace", &error));
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    loop {
        match ending.wait() {
            Ok(Signal::SIGCHLD) => match child.try_wait() {
                Ok(Some(status)) => std::process::exit(
                    status
                        .code()
                        .or_else(|| status.signal().map(|s| 128 + s))
                        .unwrap_or(1),
                ),
                Ok(None) => {}
                Err(error) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    eprintln!("hermes-worker sandbox-exec: cannot wait for the tool: {error}");
                    std::process::exit(super::EXIT_SETUP);
                }
            },
            // Its init ignores what it does not handle: end the namespace outright.
            Ok(_) => {
                let _ = kill(pid, Signal::SIGKILL);
            }
            Err(_) => {}
        }
    }
}

/// Maps this process's uid and gid in its new user namespace to themselves (one id each,
/// the only mapping an unprivileged process may write, after giving up `setgroups`).
fn map_own_ids(uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> io::Result<()> {
    std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))
}

fn setup(what: &str, error: &io::Error) -> ExecError {
    ExecError::Setup(format!("{what}: {error}"))
}

/// Why no PID namespace can be made here, as a sentence, from the error of `unshare`.
pub fn unavailable_reason(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::EPERM) => "not permitted (the unit's RestrictNamespaces= must allow \
                              user and pid; or the kernel forbids unprivileged user \
                              namespaces: kernel.unprivileged_userns_clone, AppArmor)"
            .into(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) => "not supported by this kernel".into(),
        Some(libc::ENOSPC) => "too many namespaces (user.max_user_namespaces, \
                               user.max_pid_namespaces)"
            .into(),
        _ => format!("cannot make or map it: {error}"),
    }
}
