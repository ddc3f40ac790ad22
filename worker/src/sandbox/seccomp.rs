//! The seccomp half of the sandbox: the system calls Landlock cannot express, each failing
//! with `EPERM` (never a kill, so a tool fails visibly and the model reads an error).
//!
//! - `socket(AF_UNIX, …)`: the systemd manager (`/run/systemd/private`), D-Bus (system and
//!   user bus), journald and the worker socket are all Unix sockets, at a path or
//!   abstract. `socketpair` stays: it connects nothing outside the process.
//! - `ptrace`, `process_vm_readv`, `process_vm_writev`, `pidfd_getfd`, `process_madvise`:
//!   another process's memory and descriptors.
//! - `io_uring_setup` (and `_enter`, `_register`): io_uring creates sockets and opens files
//!   without the system calls this filter sees.
//! - Aimed at a protected pid, its process group (the negated pid), every process (-1) or
//!   the caller's own process group (0: the worker leads it): `kill`, `rt_sigqueueinfo`; aimed at a protected pid: `tgkill`, `rt_tgsigqueueinfo`,
//!   `pidfd_open` (the way to `pidfd_send_signal`), `prlimit64` (a tiny `RLIMIT_CPU` is a
//!   kill by other means), `fcntl(F_SETOWN)` (SIGIO, or any signal `F_SETSIG` picks).
//!   `tkill`, `F_SETOWN_EX` and thread pidfds (`PIDFD_THREAD`) name a thread, whose id the
//!   filter cannot relate to a process, so they fail whatever they name (glibc and
//!   common runtimes use `tgkill`).
//! - `setsid`, and `setpgid` into any group but the worker's, when the policy keeps the
//!   process group.
//! - `ioctl(TIOCSTI)` and `ioctl(TIOCLINUX)`: typing into, or pasting into, the terminal
//!   the gateway may have been started from (Landlock controls device ioctls only from
//!   ABI 5).
//! - Where Landlock cannot control truncation (ABI < 3, e.g. Debian 12's 6.1): `truncate`,
//!   `open`/`openat` of a file read-only with `O_TRUNC` (which truncates what Landlock
//!   let it read), and `openat2`, whose flags the filter cannot see. `ftruncate` of a file
//!   opened for writing stays: Landlock already checked that write.
//!
//! On x86-64 the filter also refuses the x32 ABI's system-call numbers, which would
//! otherwise reach the same calls under numbers the rules above do not name.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the filter compiler does not know this architecture ({0})")]
    Architecture(String),
    #[error("cannot build the filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("cannot install the filter: {0}")]
    Install(std::io::Error),
}

/// `PIDFD_THREAD` (Linux 6.9): a pidfd for one thread.
const PIDFD_THREAD: u64 = libc::O_EXCL as u64;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// `F_SETOWN_EX` (Linux 2.6.32; not in every libc binding).
const F_SETOWN_EX: i32 = 15;

/// A compiled filter, ready to install.
pub struct Filter {
    program: Vec<libc::sock_filter>,
}

impl Filter {
    /// The filter protecting `protected` pids; `own_group` is the process group the tool
    /// must stay in (None: it may leave); `truncation` adds the rules that stand in for
    /// Landlock's control of truncation.
    pub fn new(
        protected: &[i32],
        own_group: Option<i32>,
        truncation: bool,
    ) -> Result<Filter, Error> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|_| Error::Architecture(std::env::consts::ARCH.to_string()))?;
        let program: BpfProgram = SeccompFilter::new(
            rules(protected, own_group, truncation)?,
            SeccompAction::Allow,
            deny(),
            arch,
        )?
        .try_into()?;
        let mut program: Vec<libc::sock_filter> = program
            .into_iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        if arch == TargetArch::x86_64 {
            // After seccompiler's architecture check (3 instructions, whose jumps stay
            // within them), before its rules: BPF jumps only forward, so nothing jumps
            // over the insertion.
            let at = 3.min(program.len());
            program.splice(at..at, refuse_x32());
        }
        Ok(Filter { program })
    }

    /// Installs it on the calling thread (inherited by everything it starts), after
    /// setting `PR_SET_NO_NEW_PRIVS` as the kernel requires of an unprivileged process.
    /// Uses `prctl(PR_SET_SECCOMP)`: systemd's `@system-service` allows `prctl` but not
    /// `seccomp(2)`.
    pub fn install(&self) -> Result<(), Error> {
        nix::sys::prctl::set_no_new_privs().map_err(|e| Error::Install(e.into()))?;
        let program = libc::sock_fprog {
            len: u16::try_from(self.program.len())
                .map_err(|_| Error::Install(std::io::Error::other("filter too long")))?,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: the kernel copies the program; `program` and the vector it points into
        // outlive the call.
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &program as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(Error::Install(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The instructions (for the probe, which installs an equivalent in a child).
    pub fn program(&self) -> &[libc::sock_filter] {
        &self.program
    }
}

fn deny() -> SeccompAction {
    SeccompAction::Errno(libc::EPERM as u32)
}

fn refuse_x32() -> [libc::sock_filter; 3] {
    // `struct seccomp_data` starts with the system-call number.
    const NR_OFFSET: u32 = 0;
    let code = |bits: u32| bits as u16;
    [
        libc::sock_filter {
            code: code(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS),
            jt: 0,
            jf: 0,
            k: NR_OFFSET,
        },
        libc::sock_filter {
            code: code(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K),
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        libc::sock_filter {
            code: code(libc::BPF_RET | libc::BPF_K),
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA),
        },
    ]
}

fn arg_is(index: u8, value: i64) -> Result<SeccompCondition, seccompiler::BackendError> {
    // Pids are C ints: compare the low 32 bits only, whatever the caller left above them.
    SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        u64::from(value as i32 as u32),
    )
}

/// The open flags at argument `index` ask for a read-only open with `O_TRUNC`.
fn read_only_truncating(index: u8) -> Result<SeccompRule, seccompiler::BackendError> {
    let mask = (libc::O_ACCMODE | libc::O_TRUNC) as u64;
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        (libc::O_RDONLY | libc::O_TRUNC) as u64,
    )?])
}

/// One rule per value: any match denies.
fn any_of(
    index: u8,
    values: &[i64],
    also: &[SeccompCondition],
) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    values
        .iter()
        .map(|v| {
            let mut conditions = vec![arg_is(index, *v)?];
            conditions.extend(also.iter().cloned());
            SeccompRule::new(conditions)
        })
        .collect()
}

fn rules(
    protected: &[i32],
    own_group: Option<i32>,
    truncation: bool,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let pids: Vec<i64> = protected
        .iter()
        .filter(|p| **p > 0)
        .map(|p| i64::from(*p))
        .collect();
    // A pid, its process group, every process, and the caller's own group.
    let mut targets: Vec<i64> = pids.iter().flat_map(|p| [*p, -*p]).collect();
    targets.extend([-1, 0]);

    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![arg_is(
            0,
            i64::from(libc::AF_UNIX),
        )?])?],
    );
    for always in [
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_process_madvise,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_tkill,
    ] {
        rules.insert(always, Vec::new());
    }
    rules.insert(libc::SYS_kill, any_of(0, &targets, &[])?);
    rules.insert(libc::SYS_rt_sigqueueinfo, any_of(0, &targets, &[])?);
    if !pids.is_empty() {
        rules.insert(libc::SYS_tgkill, any_of(0, &pids, &[])?);
        rules.insert(libc::SYS_rt_tgsigqueueinfo, any_of(0, &pids, &[])?);
        rules.insert(libc::SYS_prlimit64, any_of(0, &pids, &[])?);
    }
    let mut pidfd_open = any_of(0, &pids, &[])?;
    pidfd_open.push(SeccompRule::new(vec![SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(PIDFD_THREAD),
        PIDFD_THREAD,
    )?])?);
    rules.insert(libc::SYS_pidfd_open, pidfd_open);
    let set_owner = arg_is(1, i64::from(libc::F_SETOWN))?;
    let mut fcntl = any_of(2, &targets, &[set_owner])?;
    fcntl.push(SeccompRule::new(vec![arg_is(1, i64::from(F_SETOWN_EX))?])?);
    rules.insert(libc::SYS_fcntl, fcntl);
    rules.insert(
        libc::SYS_ioctl,
        vec![
            SeccompRule::new(vec![arg_is(1, i64::from(libc::TIOCSTI as u32))?])?,
            SeccompRule::new(vec![arg_is(1, i64::from(libc::TIOCLINUX as u32))?])?,
        ],
    );
    if truncation {
        rules.insert(libc::SYS_truncate, Vec::new());
        rules.insert(libc::SYS_openat2, Vec::new());
        rules.insert(libc::SYS_openat, vec![read_only_truncating(2)?]);
        #[cfg(target_arch = "x86_64")]
        rules.insert(libc::SYS_open, vec![read_only_truncating(1)?]);
    }
    if let Some(group) = own_group {
        rules.insert(libc::SYS_setsid, Vec::new());
        rules.insert(
            libc::SYS_setpgid,
            vec![SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                u64::from(group as u32),
            )?])?],
        );
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_for_many_protected_pids() {
        let pids: Vec<i32> = (1000..1064).collect();
        let filter = Filter::new(&pids, Some(4242), true).unwrap();
        assert!(filter.program().len() < 4096);
    }
}
