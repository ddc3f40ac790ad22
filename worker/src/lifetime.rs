//! A worker's life tied to the gateway's: what it sets on itself at start (its OOM score,
//! the parent-death signal) and how it ends once `serve` returns.

/// First thing in `serve`, before the process makes itself non-dumpable: what the gateway
/// cannot set from outside after `posix_spawn` (gateway's `supervisor::process`).
///
/// - The OOM score: under memory pressure the kernel should kill a worker, never the
///   gateway. The gateway raises it too, but once this process is non-dumpable its /proc
///   files belong to root and only this process may still write it.
/// - The parent-death signal, SIGKILL: a worker stuck in a loop must not outlive the
///   gateway. It is set after exec, so the gateway may already have died; then this
///   process's parent is no longer `HERMES_WORKER_PARENT`, and it exits at once.
pub fn tie_to_the_gateway() {
    // Best effort, as the gateway's own write is: where /proc refuses it (a read-only
    // /proc in some containers), a line per worker would say nothing new each message.
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    die_with_the_gateway();
}

/// Ends a worker whose [`crate::serve::serve`] has returned, with its status, at once.
///
/// Its last frame is with the kernel by then, its log lines went to an unbuffered stderr,
/// and its tool servers are shut down, so `exit`'s work is all waste here: the runtime's
/// teardown, std's, and every loaded library's destructors, which touch code and data a
/// forked `per-request` worker never touched before. `perf` put about a fifth of such a
/// worker's samples there; ending here took about a tenth off its CPU (docs/BENCHMARKS.md).
pub fn end(code: i32) -> ! {
    // SAFETY: `_exit` only ends the process; nothing of this process's is used after it.
    unsafe { nix::libc::_exit(code) }
}

/// The parent-death signal half of [`tie_to_the_gateway`], for a worker forked from the
/// template: the fork inherits the template's OOM score, but not this signal.
pub fn die_with_the_gateway() {
    let Some(parent) = std::env::var("HERMES_WORKER_PARENT")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        // Not started by a gateway; `serve` refuses to run without its socket anyway.
        return;
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        eprintln!("cannot tie this worker to the gateway's life: {e}");
        std::process::exit(crate::serve::EXIT_FAILED);
    }
    if nix::unistd::getppid().as_raw() != parent {
        eprintln!("the gateway (pid {parent}) died before this worker started");
        std::process::exit(crate::serve::EXIT_FAILED);
    }
}
