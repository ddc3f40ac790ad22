//! What every process the gateway starts from the worker binary gets right after it is
//! spawned, whoever starts it: a worker (`supervisor::process`) and the sandbox probe
//! (`sandbox::probe`) alike. It sits below both, so starting a process never needs the
//! supervisor, and the supervisor, the sandbox and the health report depend on it, not on
//! each other.
//!
//! Both are started with `posix_spawn` (std's choice when there is no `pre_exec`), so
//! nothing runs between fork and exec: the limits are set from outside with `prlimit`, while
//! the new process is still in its dynamic loader. Supervision (watching a worker, ending
//! its group) stays in `supervisor`; only what is true of starting any such child is here.

use std::io;

use nix::libc;
use nix::sys::resource::{Resource, getrlimit};

/// Open files a child may hold: enough for an agent with tools, bounded so a leak in one
/// job cannot exhaust the unit's descriptors.
const CHILD_NOFILE: u64 = 4096;

/// Sets a just-spawned child's limits: no core dumps (a dump would hold the conversation),
/// `memory_limit` bytes of address space (0: none), a bounded number of open files, and the
/// OOM killer's first place, whatever the binary does itself (it would otherwise inherit
/// the gateway's own lowered score, and under a unit's `MemoryMax=` the kernel could pick
/// the gateway while a worker's memory is still being freed). A child that has already
/// exited is not an error here: whoever waits for it sees the exit.
pub fn confine(pid: u32, memory_limit: u64) -> io::Result<()> {
    let (_, hard_nofile) = getrlimit(Resource::RLIMIT_NOFILE)?;
    set_limit(pid, Resource::RLIMIT_NOFILE, CHILD_NOFILE.min(hard_nofile))?;
    set_limit(pid, Resource::RLIMIT_CORE, 0)?;
    if memory_limit > 0 {
        set_limit(pid, Resource::RLIMIT_AS, memory_limit)?;
    }
    // A child that made itself non-dumpable before this write (`hermes-worker serve` does,
    // after raising its own score), or one so early in its exec that its new image is not
    // yet marked dumpable (it shares the gateway's non-dumpable memory until then), has a
    // /proc/PID owned by root, so the write is refused to an unprivileged gateway; that is
    // not an error.
    if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "1000")
        && e.kind() != io::ErrorKind::PermissionDenied
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(
            worker_pid = pid,
            "cannot raise the oom_score_adj of a child: {e}"
        );
    }
    Ok(())
}

/// `prlimit(pid, resource, value, value)`; nix has no `prlimit`.
fn set_limit(pid: u32, resource: Resource, value: u64) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: prlimit reads `limit`, which lives across the call, and writes nothing (the
    // old value's pointer is null).
    let rc = unsafe { libc::prlimit(pid, resource as _, &limit, std::ptr::null_mut()) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        return Ok(());
    }
    Err(e)
}
