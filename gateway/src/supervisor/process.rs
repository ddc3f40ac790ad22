//! The Unix side of a worker process: how it is started and how its process group ends.
//!
//! A worker runs in a process group of its own (`process_group(0)`, so its pgid is its
//! pid), and everything it spawns (tools, shells, `sleep 1000`) stays in that group unless
//! it deliberately leaves. Ending a worker therefore means signalling the group, never just
//! the pid: SIGTERM to the group, a grace period, then SIGKILL to the group.
//!
//! In `per-request` mode the built-in worker is forked from a template instead
//! ([`super::zygote`]); everything below about groups, limits and ending holds for it too.
//!
//! A worker is started with `posix_spawn` (std uses it when there is no `pre_exec`): the
//! gateway's thread waits only until the child has begun its exec, and no page table of
//! the gateway is copied. A `fork` with limits set between fork and exec held the gateway's
//! only async thread for about a millisecond per worker, which in `per-request` mode was
//! on every message's path (docs/BENCHMARKS.md, "posix_spawn").
//!
//! The rest of the box is therefore set from outside, right after the spawn, while the new
//! process is still in its dynamic loader ([`crate::child::confine`]: resource limits and
//! the OOM score), for whatever program `workers.command` names.
//! The parent-death signal (a fast hint when the gateway dies; EOF on the socket is the
//! reliable one) cannot be set from outside: `hermes-worker serve` sets it on itself first
//! thing (`HERMES_WORKER_PARENT` says whose death it is tied to). The environment is
//! cleared down to what a worker needs, so no secret of the parent (the Telegram token,
//! `NOTIFY_SOCKET`, D-Bus and runtime-dir addresses) reaches it or anything it spawns.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use hermes_protocol::{CrashCause, Secret};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{ChildStderr, Command};

use super::forked::WorkerChild;
use crate::child::confine;

/// Environment variables a worker inherits from the gateway; everything else is dropped.
/// Proxy settings stay because providers may only be reachable through one.
const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "HERMES_LOG",
    "RUST_BACKTRACE",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub program: PathBuf,
    pub socket: PathBuf,
    /// Where each worker's scratch directory is made.
    pub scratch_root: PathBuf,
    /// `RLIMIT_AS` in MiB; 0 for none.
    pub memory_limit_mb: u64,
    /// `per-request` mode with the built-in worker: workers are forked from this.
    pub zygote: Option<std::sync::Arc<super::zygote::Zygote>>,
}

/// Starts `program serve` in its own process group with a one-time `token`, its tools to
/// run in `scratch`.
pub fn spawn(
    spec: &SpawnSpec,
    token: &Secret,
    scratch: &Path,
) -> io::Result<(WorkerChild, Option<ChildStderr>)> {
    let mut command = worker_command(spec, "serve");
    command
        .env("HERMES_WORKER_TOKEN", token.expose())
        .env("HERMES_WORKER_SCRATCH", scratch)
        .stdin(Stdio::null());
    let mut child = command.spawn()?;
    if let Some(pid) = child.id()
        && let Err(e) = confine(pid, spec.memory_limit_mb.saturating_mul(1024 * 1024))
    {
        // Dropping the child kills it (kill_on_drop): a worker without its limits never
        // gets a job.
        return Err(io::Error::new(
            e.kind(),
            format!("cannot set the limits of worker {pid}: {e}"),
        ));
    }
    let stderr = child.stderr.take();
    Ok((WorkerChild::Spawned(child), stderr))
}

/// `program SUBCOMMAND` in its own process group, with the worker's environment and no
/// stdout: a worker's (`serve`) or the template's its workers are forked from (`zygote`).
pub fn worker_command(spec: &SpawnSpec, subcommand: &str) -> Command {
    let mut command = Command::new(&spec.program);
    command
        .arg(subcommand)
        .env_clear()
        .envs(inherited_env())
        .env("HERMES_WORKER_SOCKET", &spec.socket)
        .env("HERMES_WORKER_PARENT", std::process::id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        // A handle dropped without being stopped (a bug, or a panic unwinding a task)
        // must not leave the process running.
        .kill_on_drop(true);
    command
}

fn inherited_env() -> Vec<(OsString, OsString)> {
    INHERITED_ENV
        .iter()
        .filter_map(|name| std::env::var_os(name).map(|v| (OsString::from(name), v)))
        .collect()
}

/// Sends `signal` to the whole group. A group that is already gone is not an error.
pub fn signal_group(pgid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pgid) else {
        return;
    };
    // pgid 0 or 1 would mean "our own group" or init: never a worker's.
    if raw <= 1 {
        return;
    }
    if let Err(e) = killpg(Pid::from_raw(raw), signal)
        && e != nix::errno::Errno::ESRCH
    {
        tracing::warn!(pgid, %signal, "cannot signal worker process group: {e}");
    }
}

/// Ends the worker and everything in its group and reaps it: SIGTERM to the group, up to
/// `grace` for the worker to exit, then SIGKILL to the group either way (its children may
/// have ignored SIGTERM, or outlived a worker that did exit).
///
/// The final SIGKILL goes to the group after the leader is reaped; the kernel does not
/// reuse a pid as long as a process group of that id has members, so it can only reach
/// leftovers of this worker.
pub async fn terminate(child: &mut WorkerChild, grace: Duration) -> Option<ExitStatus> {
    let Some(pgid) = child.id() else {
        // Already reaped.
        return None;
    };
    signal_group(pgid, Signal::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            tracing::warn!(
                worker_pid = pgid,
                "worker still running {grace:?} after SIGTERM; sending SIGKILL to its process group"
            );
            signal_group(pgid, Signal::SIGKILL);
            child.wait().await.ok()
        }
    };
    signal_group(pgid, Signal::SIGKILL);
    status
}

/// Kills the group at once and reaps the worker: for a worker that already broke (its
/// connection closed or it broke the protocol), where waiting for it serves nobody.
pub async fn kill(child: &mut WorkerChild) -> Option<ExitStatus> {
    let pgid = child.id()?;
    signal_group(pgid, Signal::SIGKILL);
    if let WorkerChild::Forked(_) = child
        && let Ok(pid) = i32::try_from(pgid)
    {
        // A forked worker makes its group itself, a moment after its pid is known.
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    child.wait().await.ok()
}

/// What an exit status tells the user and the log.
pub fn crash_cause(status: Option<ExitStatus>) -> CrashCause {
    match status {
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => CrashCause::Exited { code },
            (None, Some(signal)) => CrashCause::Signalled {
                signal,
                name: Signal::try_from(signal)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {signal}")),
            },
            (None, None) => CrashCause::Disconnected,
        },
        None => CrashCause::Disconnected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_become_causes() {
        assert_eq!(
            crash_cause(Some(ExitStatus::from_raw(1 << 8))),
            CrashCause::Exited { code: 1 }
        );
        assert_eq!(
            crash_cause(Some(ExitStatus::from_raw(6))),
            CrashCause::Signalled {
                signal: 6,
                name: "SIGABRT".into()
            }
        );
        assert_eq!(crash_cause(None), CrashCause::Disconnected);
    }

    #[test]
    fn the_environment_keeps_only_the_allow_list() {
        for (name, _) in inherited_env() {
            assert!(INHERITED_ENV.contains(&name.to_str().unwrap_or("")));
        }
        assert!(!INHERITED_ENV.contains(&"NOTIFY_SOCKET"));
        assert!(!INHERITED_ENV.contains(&"TELEGRAM_BOT_TOKEN"));
        assert!(!INHERITED_ENV.contains(&"XDG_RUNTIME_DIR"));
        assert!(!INHERITED_ENV.contains(&"DBUS_SESSION_BUS_ADDRESS"));
    }
}
