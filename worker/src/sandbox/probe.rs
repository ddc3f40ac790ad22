//! What this kernel (and the system-call filter the service runs under) lets the sandbox
//! apply, and so which of issue 11's guarantees hold in full, weaker, or not at all. The
//! gateway shows it at start-up, in `status` and in `check-config`, so a weaker sandbox
//! is never a silent one; `hermes-worker sandbox-probe [--json]` prints it.
//!
//! Each mechanism is tried, not assumed: a forked child enforces a Landlock ruleset and
//! installs the real seccomp filter, then exits. The child makes only raw system calls,
//! so the probe is safe from a multi-threaded process too.

use super::fs::{TESTED_ABI, kernel_abi, unavailable_reason};
use super::seccomp::Filter;

/// The record's types are the protocol's: the gateway reads it from this binary's
/// `sandbox-probe --json`.
pub use hermes_protocol::sandbox::{Guarantee, Landlock, Level, PidNamespace, Probe, Seccomp};

/// Tries each mechanism and says what holds.
pub fn probe() -> Probe {
    let landlock = match kernel_abi() {
        Ok(abi) => match try_in_child(enforce_landlock) {
            Ok(()) => Landlock::Abi(abi.min(TESTED_ABI as u32)),
            Err(errno) => Landlock::Unavailable(format!(
                "ABI {abi}, but enforcing a ruleset failed: {}",
                unavailable_reason(&std::io::Error::from_raw_os_error(errno))
            )),
        },
        Err(error) => Landlock::Unavailable(unavailable_reason(&error).to_string()),
    };
    let seccomp = match Filter::new(&[1], Some(1), true) {
        Err(error) => Seccomp::Unavailable(error.to_string()),
        Ok(filter) => {
            let program = filter.program();
            match try_in_child(|| install_in_child(program)) {
                Ok(()) => Seccomp::Available,
                Err(errno) => Seccomp::Unavailable(format!(
                    "installing a filter failed: {}",
                    std::io::Error::from_raw_os_error(errno)
                )),
            }
        }
    };
    let maps = IdMaps::of_this_process();
    let pid_namespace = match try_in_child(|| enter_pid_namespace(&maps)) {
        Ok(()) => PidNamespace::Available,
        Err(errno) => PidNamespace::Unavailable(super::pid_namespace::unavailable_reason(
            &std::io::Error::from_raw_os_error(errno),
        )),
    };
    assess(landlock, seccomp, pid_namespace)
}

/// The guarantees that `landlock`, `seccomp` and `pid_namespace` give (separate from
/// [`probe`] so every combination can be tested on one kernel).
pub fn assess(landlock: Landlock, seccomp: Seccomp, pid_namespace: PidNamespace) -> Probe {
    let abi = match &landlock {
        Landlock::Abi(abi) => *abi,
        Landlock::Unavailable(_) => 0,
    };
    // The reasons themselves are said once, in the mechanisms part of the summary.
    let no_landlock = "no Landlock";
    let filter = seccomp == Seccomp::Available;
    let no_filter = "no seccomp";
    let guarantee = |number, what: &str, level, why: String| Guarantee {
        number,
        what: what.to_string(),
        level,
        why,
    };
    let read = if abi >= 1 {
        guarantee(
            1,
            "cannot read the gateway's environment, memory, secrets or state",
            Level::Full,
            "Landlock hides the hidden paths and other processes' /proc entries, and its \
             ptrace rule closes their memory"
                .into(),
        )
    } else {
        guarantee(
            1,
            "cannot read the gateway's environment, memory, secrets or state",
            Level::Weaker,
            format!(
                "{no_landlock}: the state directory, configuration and credential files are \
                 readable by the service's user; only PR_SET_DUMPABLE 0 (gateway and worker){} \
                 keeps their /proc environ and memory closed",
                if filter {
                    " and seccomp's ptrace/process_vm_readv denial"
                } else {
                    ""
                }
            ),
        )
    };
    // The trampoline gives a tool a PID namespace where Landlock cannot scope signals.
    let namespace = abi < 6 && pid_namespace == PidNamespace::Available;
    let signal_what = "cannot signal the gateway or any process outside its job";
    let signal = match (abi >= 6, filter, namespace) {
        (true, true, _) => guarantee(
            2,
            signal_what,
            Level::Full,
            "Landlock scopes signals to the tool's own processes; seccomp protects the \
             gateway's and the worker's pids, also from prlimit and pidfds"
                .into(),
        ),
        (true, false, _) => guarantee(
            2,
            signal_what,
            Level::Weaker,
            format!(
                "{no_filter}: Landlock scopes signals, but a tool can still set the gateway's \
                 resource limits (prlimit)"
            ),
        ),
        (false, _, true) => guarantee(
            2,
            signal_what,
            if filter { Level::Full } else { Level::Weaker },
            format!(
                "no Landlock signal scoping ({}), so each tool server runs in a PID \
                 namespace of its own: it sees, signals, traces and re-limits only its own \
                 processes{}",
                landlock_here(abi),
                if filter {
                    "; seccomp refuses signals to its process group, which the worker leads"
                } else {
                    ", but without seccomp it can signal its process group, the worker's"
                }
            ),
        ),
        (false, true, false) => guarantee(
            2,
            signal_what,
            Level::Weaker,
            format!(
                "no Landlock signal scoping ({}) and no PID namespace ({}): seccomp \
                 protects the gateway and the worker, but other workers and their tools \
                 can be signalled",
                landlock_here(abi),
                namespace_reason(&pid_namespace)
            ),
        ),
        (false, false, false) => guarantee(
            2,
            signal_what,
            Level::None,
            format!(
                "{no_filter}, no Landlock signal scoping and no PID namespace ({})",
                namespace_reason(&pid_namespace)
            ),
        ),
    };
    let reach = match (filter, abi >= 6) {
        (true, _) => guarantee(
            3,
            "cannot reach the systemd manager or D-Bus",
            Level::Full,
            "seccomp refuses to create Unix sockets (socketpair excepted)".into(),
        ),
        (false, true) => guarantee(
            3,
            "cannot reach the systemd manager or D-Bus",
            Level::Weaker,
            format!(
                "{no_filter}: Landlock closes abstract Unix sockets, but sockets at a path \
                 (/run/systemd/private, the D-Bus buses) stay reachable"
            ),
        ),
        (false, false) => guarantee(
            3,
            "cannot reach the systemd manager or D-Bus",
            Level::None,
            format!("{no_filter}, and no Landlock scoping of abstract sockets"),
        ),
    };
    let write_what = "can write only to its scratch directory and its grants";
    let write = if abi >= 3 {
        guarantee(
            4,
            write_what,
            Level::Full,
            "Landlock grants writing only there (truncation included)".into(),
        )
    } else if abi >= 1 && filter {
        guarantee(
            4,
            write_what,
            Level::Full,
            format!(
                "Landlock grants writing only there; ABI {abi} cannot control truncation \
                 (ABI 3, Linux 6.2), so seccomp refuses truncate(2) and opening a file \
                 read-only with O_TRUNC (ftruncate of a file opened for writing stays)"
            ),
        )
    } else if abi >= 1 {
        guarantee(
            4,
            write_what,
            Level::Weaker,
            format!(
                "Landlock ABI {abi} cannot control truncation (ABI 3, Linux 6.2) and \
                 {no_filter}: a tool can empty any file the service's user may write"
            ),
        )
    } else {
        guarantee(
            4,
            write_what,
            Level::None,
            format!(
                "{no_landlock}: a tool writes wherever the service's user may (the unit's \
                 ProtectSystem= still applies)"
            ),
        )
    };
    let guarantees = vec![read, signal, reach, write];
    let mechanisms = format!(
        "{}; {}",
        match &landlock {
            Landlock::Abi(abi) if *abi >= 6 => {
                format!("Landlock ABI {abi} with signal and abstract-socket scoping")
            }
            Landlock::Abi(abi) => format!("Landlock ABI {abi}, no scoping"),
            Landlock::Unavailable(reason) => format!("no Landlock ({reason})"),
        },
        match &seccomp {
            Seccomp::Available => "seccomp".to_string(),
            Seccomp::Unavailable(reason) => format!("no seccomp ({reason})"),
        }
    ) + if namespace {
        "; a PID namespace per tool server"
    } else {
        ""
    };
    let weaker: Vec<String> = guarantees
        .iter()
        .filter(|g| g.level != Level::Full)
        .map(|g| format!("{} {}: {}", g.number, g.level, g.why))
        .collect();
    let summary = if weaker.is_empty() {
        format!("tool sandbox: every guarantee holds ({mechanisms})")
    } else {
        format!(
            "tool sandbox: weaker ({mechanisms}); guarantee {}",
            weaker.join("; guarantee ")
        )
    };
    Probe {
        signal_scope: abi >= 6,
        abstract_socket_scope: abi >= 6,
        landlock,
        seccomp,
        pid_namespace,
        guarantees,
        summary,
    }
}

fn landlock_here(abi: u32) -> String {
    if abi >= 1 {
        format!("ABI 6, Linux 6.12; here ABI {abi}")
    } else {
        "ABI 6, Linux 6.12; here no Landlock".into()
    }
}

fn namespace_reason(pid_namespace: &PidNamespace) -> &str {
    match pid_namespace {
        PidNamespace::Available => "available",
        PidNamespace::Unavailable(reason) => reason,
    }
}

/// Runs `check` in a forked child and returns its errno (0: it worked). `check` must make
/// only async-signal-safe calls: the parent may have other threads.
fn try_in_child(check: impl Fn() -> i32) -> Result<(), i32> {
    // SAFETY: the child runs `check` (raw system calls only) and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EAGAIN));
    }
    if pid == 0 {
        let errno = check();
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(errno.clamp(0, 255)) };
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for the child just forked.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(libc::ECHILD);
        }
    }
    if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => Ok(()),
            errno => Err(errno),
        }
    } else {
        Err(libc::EINTR)
    }
}

fn errno() -> i32 {
    // SAFETY: reads this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// The id maps the trampoline writes for its namespace, made before the fork (the child
/// may not allocate).
struct IdMaps {
    uid: String,
    gid: String,
}

impl IdMaps {
    fn of_this_process() -> IdMaps {
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        IdMaps {
            uid: format!("{uid} {uid} 1"),
            gid: format!("{gid} {gid} 1"),
        }
    }
}

/// What the trampoline does for a tool on a kernel without Landlock signal scoping, up to
/// its start of the tool: dumpable again, the namespaces made, the service's ids mapped.
fn enter_pid_namespace(maps: &IdMaps) -> i32 {
    let files: [(&[u8], &[u8]); 3] = [
        (b"/proc/self/uid_map\0", maps.uid.as_bytes()),
        (b"/proc/self/setgroups\0", b"deny"),
        (b"/proc/self/gid_map\0", maps.gid.as_bytes()),
    ];
    // SAFETY: raw system calls, in the forked child that `try_in_child` runs this in, on
    // buffers made before the fork.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) != 0 {
            return errno();
        }
        if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID) != 0 {
            return errno();
        }
        for (path, content) in files {
            let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY);
            if fd < 0 {
                return errno();
            }
            let written = libc::write(fd, content.as_ptr().cast(), content.len());
            let error = errno();
            libc::close(fd);
            if written < 0 {
                return error;
            }
        }
    }
    0
}

fn enforce_landlock() -> i32 {
    const READ_FILE: u64 = 1 << 2;
    let handled: u64 = READ_FILE;
    // SAFETY: raw system calls with a valid attribute (its first field only, as ABI 1
    // accepts) and the descriptor they return.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return errno();
        }
        let fd = libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &handled as *const u64,
            std::mem::size_of::<u64>(),
            0u32,
        );
        if fd < 0 {
            return errno();
        }
        if libc::syscall(libc::SYS_landlock_restrict_self, fd as libc::c_int, 0u32) != 0 {
            return errno();
        }
    }
    0
}

fn install_in_child(program: &[libc::sock_filter]) -> i32 {
    let Ok(len) = u16::try_from(program.len()) else {
        return libc::E2BIG;
    };
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: raw prctl calls; the kernel copies the program.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return errno();
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        ) != 0
        {
            return errno();
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_namespace() -> PidNamespace {
        PidNamespace::Unavailable("not permitted".into())
    }

    #[test]
    fn every_guarantee_holds_with_landlock_6_and_seccomp() {
        let probe = assess(Landlock::Abi(7), Seccomp::Available, no_namespace());
        assert_eq!(probe.level(), Level::Full, "{probe}");
        assert!(
            probe
                .summary
                .starts_with("tool sandbox: every guarantee holds")
        );
    }

    #[test]
    fn debian_12s_kernel_keeps_every_guarantee_with_a_pid_namespace_and_seccomp() {
        let probe = assess(
            Landlock::Abi(2),
            Seccomp::Available,
            PidNamespace::Available,
        );
        assert_eq!(probe.level(), Level::Full, "{probe}");
        assert!(probe.guarantees[1].why.contains("PID namespace"), "{probe}");
        assert!(probe.guarantees[3].why.contains("O_TRUNC"), "{probe}");
        assert!(
            probe.summary.contains("a PID namespace per tool server"),
            "{probe}"
        );
    }

    #[test]
    fn without_a_pid_namespace_debian_12s_kernel_leaves_other_workers_open_to_signals() {
        let probe = assess(Landlock::Abi(2), Seccomp::Available, no_namespace());
        let levels: Vec<Level> = probe.guarantees.iter().map(|g| g.level).collect();
        assert_eq!(
            levels,
            [Level::Full, Level::Weaker, Level::Full, Level::Full],
            "{probe}"
        );
        assert!(probe.summary.contains("other workers"), "{}", probe.summary);
        assert!(
            probe.summary.contains("no PID namespace (not permitted)"),
            "{}",
            probe.summary
        );
    }

    #[test]
    fn without_seccomp_old_landlock_cannot_keep_truncation_or_the_workers_group() {
        let probe = assess(
            Landlock::Abi(2),
            Seccomp::Unavailable("no".into()),
            PidNamespace::Available,
        );
        let levels: Vec<Level> = probe.guarantees.iter().map(|g| g.level).collect();
        assert_eq!(
            levels,
            [Level::Full, Level::Weaker, Level::None, Level::Weaker],
            "{probe}"
        );
    }

    #[test]
    fn landlock_blocked_by_the_units_filter_is_named_in_the_summary() {
        let reason = unavailable_reason(&std::io::Error::from_raw_os_error(libc::EPERM));
        let probe = assess(
            Landlock::Unavailable(reason.into()),
            Seccomp::Available,
            no_namespace(),
        );
        assert_eq!(probe.level(), Level::None);
        assert!(
            probe.summary.contains("SystemCallFilter"),
            "{}",
            probe.summary
        );
    }

    #[test]
    fn nothing_holds_without_either() {
        let probe = assess(
            Landlock::Unavailable("not built into this kernel".into()),
            Seccomp::Unavailable("no".into()),
            no_namespace(),
        );
        assert_eq!(probe.level(), Level::None);
        let json = serde_json::to_string(&probe).unwrap();
        assert_eq!(serde_json::from_str::<Probe>(&json).unwrap(), probe);
    }
}
