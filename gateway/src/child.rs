//! What every process the gateway starts from the worker binary gets between fork and
//! exec, whoever starts it: a worker (`supervisor::process`) and the sandbox probe
//! (`sandbox::probe`) alike. It sits below both, so starting a process never needs the
//! supervisor, and the supervisor, the sandbox and the health report depend on it, not on
//! each other.
//!
//! Supervision (watching a worker, ending its group) stays in `supervisor`; only what is
//! true of starting any such child is here.

/// In a child between fork and exec: makes it the OOM killer's first choice, whatever the
/// binary it becomes does (it would otherwise inherit the gateway's own lowered score, and
/// under a unit's `MemoryMax=` the kernel could pick the gateway while a worker's memory
/// is still being freed). Only async-signal-safe calls (prctl, open, write, close).
pub fn first_for_the_oom_killer() {
    // The fork inherits the gateway's PR_SET_DUMPABLE 0, under which /proc/self belongs
    // to root and an unprivileged service could not write its own score; exec resets the
    // flag anyway (and the worker clears it again at start).
    let _ = nix::sys::prctl::set_dumpable(true);
    if let Ok(fd) = nix::fcntl::open(
        c"/proc/self/oom_score_adj",
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        let _ = nix::unistd::write(&fd, b"1000");
    }
}
