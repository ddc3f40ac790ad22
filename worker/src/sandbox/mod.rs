//! The sandbox a tool server runs in: nothing a tool is told to do may read the gateway's
//! secrets or conversations, signal the gateway or another job, reach the systemd manager
//! or D-Bus, or write outside its scratch directory (issue 11). A prompt-injected model
//! can make a tool run any command; this module decides what that command can reach.
//!
//! # How
//!
//! The worker does not apply the sandbox itself: it starts each tool server through a
//! trampoline, `hermes-worker sandbox-exec --policy-json POLICY -- COMMAND ARGS...`, a fresh
//! single-threaded process that applies the [`Policy`] to itself and then `execvp`s the
//! command (same pid, so the process group, stdio and environment the worker set up are
//! the tool's). Doing it in `pre_exec` of the async worker would limit the set-up to
//! async-signal-safe calls; the ruleset needs directory listings and allocation. The
//! trampoline costs one extra `execve` per tool-server start (measured in `docs/TOOLS.md`).
//!
//! Three kernel mechanisms, each for what the others cannot express:
//!
//! - **Landlock** ([`fs`]; `landlock` crate, best effort across ABIs as in its
//!   `examples/sandboxer.rs`): the file system is readable and executable everywhere
//!   *except* the hidden paths (the gateway's state, runtime and credentials directories,
//!   its configuration and secret files). Landlock only grants, so the read grant is a
//!   cover: a directory is granted whole when no hidden path lies under it, otherwise its
//!   entries one by one; a hidden path and its ancestors are never granted (so they cannot
//!   be listed either). `/proc` is granted without its numeric pid directories, except the
//!   tool server's own (`/proc/self` at exec time): other processes' `environ`, `mem`,
//!   `cmdline`, `fd` and the `/proc/PID` directory handles that could serve as pidfds are
//!   out of reach. Landlock's ptrace rule closes other processes' memory a second way,
//!   but not their `environ` (measured on 6.18: with the pid directories granted, a
//!   sandboxed root reads the gateway's), so hiding the pid directories is what keeps the
//!   gateway's environment from a tool running as root; for the service's unprivileged
//!   user, the gateway's own `PR_SET_DUMPABLE 0` closes it as well.
//!   `/dev` offers only `null`, `zero`, `full`, `random`, `urandom` and `tty`. Writes go
//!   only to the scratch directory (the tool's cwd and `TMPDIR`) and the policy's writable
//!   paths, plus `/dev/null`, `/dev/zero`, `/dev/full` and `/dev/tty`. ABI 3 (Linux 6.2)
//!   adds truncation to what is controlled; ABI 6 (6.12) adds scoping: no signal to a
//!   process outside the tool's own domain (the gateway, other workers and their tools,
//!   the worker itself), no connection to an abstract Unix socket created outside it.
//! - **seccomp** ([`seccomp`]; `seccompiler` crate): `socket(AF_UNIX, …)` fails (socketpair
//!   still works), so nothing reaches D-Bus, the systemd manager, journald or the worker
//!   socket, whether at a path or abstract; `ptrace`, `process_vm_readv`/`writev`,
//!   `pidfd_getfd`, `process_madvise` and io_uring (which can create sockets past the
//!   filter) fail; the kill family (`kill`, `tgkill`, `rt_sigqueueinfo`,
//!   `rt_tgsigqueueinfo`, `pidfd_open`), `prlimit64` and `fcntl(F_SETOWN)` fail when aimed at
//!   a protected pid (the gateway's, and the worker's), its group, or every process (-1);
//!   `tkill` and `F_SETOWN_EX`, which name threads the filter cannot tell apart, fail
//!   always. That protects the gateway from signals even on kernels without Landlock
//!   scoping (Debian 12's 6.1). `setsid` and `setpgid` to another group fail, so
//!   everything a tool starts stays in the worker's process group and dies with the job
//!   (the invariant the gateway's per-job kill rests on); a tool that insists on a
//!   session of its own fails visibly rather than outliving its job. Every denial is
//!   `EPERM` (Landlock's are `EACCES`), never a kill: the tool fails visibly and the
//!   model reads an error. The filter is installed with `prctl(PR_SET_SECCOMP)`, which
//!   systemd's `@system-service` allows, rather than `seccomp(2)`, which it does not.
//! - **`PR_SET_NO_NEW_PRIVS`**, which both require, and which keeps setuid binaries from
//!   lifting either.
//!
//! A kernel without one of these runs the tool with what it has; [`probe`](mod@probe) says which
//! guarantee is then weaker and why, for the gateway to log and show. A policy that
//! cannot be applied for any other reason (unreadable, no scratch directory, a failed
//! system call) stops the trampoline with [`EXIT_SETUP`]: a tool never runs less guarded
//! than this kernel allows.
//!
//! Also in the worker (not here): `PR_SET_DUMPABLE 0` at start, so another process of
//! the same user cannot read the worker's `/proc/PID/environ` or memory.

pub mod fs;
pub mod pid_namespace;
pub mod probe;
pub mod seccomp;

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use hermes_protocol::sandbox::Confinement;
use serde::{Deserialize, Serialize};

pub use probe::{Guarantee, Landlock, Level, PidNamespace, Probe, Seccomp, probe};

/// The trampoline's exit status when the sandbox could not be set up (the command did
/// not run). 126 and 127 keep the shell's meanings: found but not executable, not found.
pub const EXIT_SETUP: i32 = 125;
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

/// What a sandboxed tool may reach. Whether to sandbox at all is the caller's decision;
/// a policy always applies whole.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(default)]
pub struct Policy {
    /// Neither readable, writable nor executable, nor anything beneath them: the
    /// gateway's state directory, runtime directory, configuration file, secret files,
    /// the systemd credentials directory. A path that does not exist yet is hidden from
    /// its nearest existing ancestor down: whatever appears there later is not granted.
    pub hidden: Vec<PathBuf>,
    /// Readable and executable, even inside a hidden path or `/dev` (an explicit grant
    /// wins over hiding).
    pub readable: Vec<PathBuf>,
    /// Readable, writable and executable, even inside a hidden path.
    pub writable: Vec<PathBuf>,
    /// The tool's own writable directory, its working directory and `TMPDIR`; created
    /// (mode 0700) if missing. Removing it is the caller's business.
    pub scratch: PathBuf,
    /// Processes the tool may not signal, trace, re-limit or open a pidfd to: the
    /// gateway's pid. The trampoline adds the worker (its parent) itself.
    pub protected_pids: Vec<i32>,
    /// Deny `setsid` and `setpgid` to another group, so a job's kill reaches every
    /// process its tools start.
    pub keep_process_group: bool,
    /// Confine as a kernel whose Landlock ABI is at most this would (None: this kernel's
    /// ABI): how the tests run the older kernels' fallbacks, a PID namespace below ABI 6
    /// and the truncation filter below ABI 3, on a newer kernel.
    pub landlock_abi_limit: Option<u32>,
    /// Set by the trampoline for its second stage, which runs inside the tool's PID
    /// namespace where the worker and the process group are out of sight: what the first
    /// stage saw of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside: Option<Outside>,
}

/// The worker's pid and the process group, as the trampoline saw them before it made
/// the tool's PID namespace.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outside {
    pub worker: i32,
    pub process_group: i32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            hidden: Vec::new(),
            readable: Vec::new(),
            writable: Vec::new(),
            scratch: PathBuf::new(),
            protected_pids: Vec::new(),
            keep_process_group: true,
            landlock_abi_limit: None,
            outside: None,
        }
    }
}

impl Policy {
    /// This policy with what a job's `confinement` hides, grants and protects added (the
    /// gateway computes those; the worker contributes its scratch directory).
    pub fn confined(mut self, confinement: &Confinement) -> Policy {
        self.hidden.extend(confinement.hidden.iter().cloned());
        self.readable.extend(confinement.readable.iter().cloned());
        self.writable.extend(confinement.writable.iter().cloned());
        self.protected_pids
            .extend(confinement.protected_pids.iter().copied());
        self
    }

    /// What is wrong with it, if anything: relative paths would depend on the
    /// trampoline's working directory, and a pid of 0 or less names no single process.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.scratch.as_os_str().is_empty() {
            problems.push("no scratch directory".to_string());
        }
        let named = [
            ("hidden", &self.hidden),
            ("readable", &self.readable),
            ("writable", &self.writable),
        ];
        for (what, paths) in named {
            for path in paths.iter().filter(|p| !p.is_absolute()) {
                problems.push(format!("{what} path {} is not absolute", path.display()));
            }
        }
        if !self.scratch.as_os_str().is_empty() && !self.scratch.is_absolute() {
            problems.push(format!(
                "scratch directory {} is not absolute",
                self.scratch.display()
            ));
        }
        for pid in self.protected_pids.iter().filter(|p| **p <= 0) {
            problems.push(format!("protected pid {pid} is not a process id"));
        }
        problems
    }
}

/// How the worker starts a program under a [`Policy`]: through the trampoline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub policy: Policy,
    /// The `hermes-worker` binary that applies it. Default `/proc/self/exe`: resolved in
    /// the forked child, it is the running worker binary even after an upgrade replaced
    /// the file on disk.
    pub trampoline: PathBuf,
}

impl Sandbox {
    pub fn new(policy: Policy) -> Self {
        Sandbox {
            policy,
            trampoline: PathBuf::from("/proc/self/exe"),
        }
    }

    /// The same policy applied by another `hermes-worker` binary (tests, whose own
    /// executable is not the worker).
    pub fn with_trampoline(mut self, trampoline: impl Into<PathBuf>) -> Self {
        self.trampoline = trampoline.into();
        self
    }

    /// The arguments to give [`Sandbox::trampoline`] so that it runs `program` (the
    /// program's own arguments follow them).
    pub fn arguments(&self, program: &OsStr) -> Vec<OsString> {
        // Serialising plain paths, numbers and booleans cannot fail; if it ever did, an
        // empty policy makes the trampoline refuse rather than run unguarded.
        let json = serde_json::to_string(&self.policy).unwrap_or_default();
        vec![
            "sandbox-exec".into(),
            "--policy-json".into(),
            json.into(),
            "--".into(),
            program.to_os_string(),
        ]
    }
}

/// Why the trampoline did not become the command.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot set up the tool sandbox: {0}")]
    Setup(String),
    #[error("cannot run {program:?}: {error}")]
    Exec {
        program: OsString,
        error: std::io::Error,
    },
}

impl ExecError {
    /// The trampoline's exit status for it.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExecError::Setup(_) => EXIT_SETUP,
            ExecError::Exec { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
                EXIT_NOT_FOUND
            }
            ExecError::Exec { .. } => EXIT_CANNOT_EXECUTE,
        }
    }
}

/// Applies `policy` to this process and replaces it with `program` (looked up on `PATH`
/// like `execvp`), in the scratch directory with `TMPDIR` pointing there. Returns only
/// on failure. Call it from a single-threaded process: Landlock and seccomp restrict the
/// calling thread (and what it starts), not threads that already exist.
pub fn exec(policy: &Policy, program: &OsStr, args: &[OsString]) -> ExecError {
    let problems = policy.problems();
    if !problems.is_empty() {
        return ExecError::Setup(format!("invalid policy: {}", problems.join("; ")));
    }
    if let Err(error) = prepare_scratch(&policy.scratch) {
        return ExecError::Setup(format!(
            "scratch directory {}: {error}",
            policy.scratch.display()
        ));
    }
    close_inherited_on_exec();
    let outside = policy.outside.unwrap_or_else(|| Outside {
        worker: nix::unistd::getppid().as_raw(),
        process_group: nix::unistd::getpgrp().as_raw(),
    });
    let abi = fs::abi_in_effect(policy);
    if abi < 6 && policy.outside.is_none() {
        // No Landlock signal scoping: the tool gets a PID namespace of its own, and this
        // process waits outside it. Where namespaces cannot be made, the tool runs as
        // before, with what the probe reported.
        match pid_namespace::run(policy, outside, program, args) {
            pid_namespace::NotRun::Unsupported(_) => {}
            pid_namespace::NotRun::Failed(error) => return error,
        }
    }
    let mut protected = policy.protected_pids.clone();
    // The worker: a tool may end its own job by failing, not by killing its agent.
    protected.push(outside.worker);
    let own_group = policy.keep_process_group.then_some(outside.process_group);
    // Without Landlock (none here, or blocked by the unit's filter) there is nothing to
    // restrict with; the probe says which guarantee that weakens.
    if abi > 0
        && let Err(error) = fs::restrict(policy, abi)
    {
        return ExecError::Setup(format!("Landlock: {error}"));
    }
    // Below ABI 3 Landlock does not control truncation: the filter refuses it instead.
    match seccomp::Filter::new(&protected, own_group, abi < 3) {
        Ok(filter) => {
            if let Err(error) = filter.install() {
                return ExecError::Setup(format!("seccomp: {error}"));
            }
        }
        // An architecture the filter compiler does not know: run with Landlock alone, as
        // on a kernel without seccomp; the probe reports it.
        Err(seccomp::Error::Architecture(_)) => {}
        Err(error) => return ExecError::Setup(format!("seccomp: {error}")),
    }
    let error = std::process::Command::new(program)
        .args(args)
        .current_dir(&policy.scratch)
        .env("TMPDIR", &policy.scratch)
        .exec();
    ExecError::Exec {
        program: program.to_os_string(),
        error,
    }
}

fn prepare_scratch(scratch: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(scratch)?;
    if !scratch.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    Ok(())
}

/// Removes everything inside `dir` and keeps `dir` itself: how a worker clears its
/// scratch directory between jobs (Landlock's grant is on the directory's inode, which a
/// running tool server keeps as its working directory). Entries a tool made unreadable or
/// unwritable to its owner are given their permissions back first. A `dir` that does not
/// exist is already empty.
pub fn empty_dir(dir: &Path) -> std::io::Result<()> {
    empty_dir_keeping(dir, None)
}

/// [`empty_dir`], leaving `keep` (an entry of `dir`) as it is.
pub fn empty_dir_keeping(dir: &Path, keep: Option<&Path>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut first_error = None;
    for entry in entries.flatten() {
        let path = entry.path();
        // By name: `keep` is an entry of `dir`, however either path is spelled.
        if keep.is_some_and(|k| k.file_name() == Some(entry.file_name().as_os_str())) {
            continue;
        }
        let removed = match entry.file_type() {
            // remove_dir_all does not follow symlinks, so nothing outside is touched.
            Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(&path).or_else(|_| {
                let _ = allow_owner(&path);
                std::fs::remove_dir_all(&path)
            }),
            _ => std::fs::remove_file(&path),
        };
        if let Err(e) = removed {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Gives the owner read, write and search permission on `dir` and every directory
/// beneath it (not through symlinks).
fn allow_owner(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|k| k.is_dir()) {
            let _ = allow_owner(&entry.path());
        }
    }
    Ok(())
}

/// Descriptors the worker leaked to its child (none should: Rust and tokio open
/// everything close-on-exec) must not reach the tool: one could be the gateway socket.
fn close_inherited_on_exec() {
    // SAFETY: close_range only changes descriptor flags; 3.. leaves stdio alone.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if done {
        return;
    }
    // Kernels before 5.11: mark every open descriptor found in /proc/self/fd.
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: setting FD_CLOEXEC on a descriptor number; a stale one fails with EBADF.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_round_trips_and_missing_fields_take_their_defaults() {
        let policy = Policy {
            hidden: vec!["/var/lib/hermes".into()],
            scratch: "/run/hermes/scratch/1".into(),
            protected_pids: vec![42],
            ..Policy::default()
        };
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), policy);
        let sparse: Policy = serde_json::from_str(r#"{"scratch": "/tmp/s"}"#).unwrap();
        assert!(sparse.keep_process_group, "process group kept unless said");
        assert!(sparse.problems().is_empty());
    }

    #[test]
    fn a_policy_with_relative_paths_or_no_scratch_is_refused() {
        let policy = Policy {
            hidden: vec!["state".into()],
            protected_pids: vec![0],
            ..Policy::default()
        };
        let problems = policy.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn emptying_the_scratch_keeps_the_directory_and_nothing_outside_it_is_touched() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let scratch = root.path().join("scratch");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(scratch.join("deep/er")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        std::fs::write(scratch.join("file"), "x").unwrap();
        std::fs::write(scratch.join("deep/er/file"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, scratch.join("link")).unwrap();
        std::fs::set_permissions(scratch.join("deep"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        let inode = std::fs::metadata(&scratch).unwrap();
        empty_dir(&scratch).unwrap();
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&scratch).unwrap().ino(), inode.ino());
        assert!(outside.join("keep").exists(), "followed a symlink out");
        empty_dir(&root.path().join("never-made")).unwrap();
    }

    #[test]
    fn a_confinement_adds_to_the_workers_policy() {
        let base = Policy {
            scratch: "/run/scratch/1".into(),
            ..Policy::default()
        };
        let policy = base.confined(&Confinement {
            hidden: vec!["/var/lib/hermes".into()],
            readable: vec!["/srv/docs".into()],
            writable: vec!["/srv/out".into()],
            protected_pids: vec![42],
        });
        assert_eq!(policy.scratch, PathBuf::from("/run/scratch/1"));
        assert_eq!(policy.hidden, [PathBuf::from("/var/lib/hermes")]);
        assert_eq!(policy.readable, [PathBuf::from("/srv/docs")]);
        assert_eq!(policy.writable, [PathBuf::from("/srv/out")]);
        assert_eq!(policy.protected_pids, [42]);
        assert!(policy.keep_process_group);
    }

    #[test]
    fn the_trampoline_arguments_carry_the_policy_then_the_program() {
        let sandbox = Sandbox::new(Policy {
            scratch: "/tmp/s".into(),
            ..Policy::default()
        });
        let args = sandbox.arguments(OsStr::new("python3"));
        assert_eq!(args[0], "sandbox-exec");
        assert_eq!(args[3], "--");
        assert_eq!(args[4], "python3");
        let policy: Policy = serde_json::from_str(args[2].to_str().unwrap()).unwrap();
        assert_eq!(policy, sandbox.policy);
    }
}
