//! A worker process as the supervisor holds it, whichever way it was started: spawned
//! (`tokio`'s child) or forked by the template ([`super::zygote`]). A forked worker is
//! this process's child too (the template forks with `CLONE_PARENT`), but not one `tokio`
//! knows: it is waited for through a pidfd, and reaped with `waitid` on that pidfd, so
//! its exit status is read as a spawned worker's is, and no other child is ever reaped
//! by mistake.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::libc;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::process::Child;

pub enum WorkerChild {
    Spawned(Child),
    Forked(Forked),
}

impl WorkerChild {
    /// Its pid, until it is reaped.
    pub fn id(&self) -> Option<u32> {
        match self {
            WorkerChild::Spawned(child) => child.id(),
            WorkerChild::Forked(forked) => forked.status.is_none().then_some(forked.pid),
        }
    }

    /// Waits for it to exit and reaps it; after that, the same status again.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            WorkerChild::Spawned(child) => child.wait().await,
            WorkerChild::Forked(forked) => forked.wait().await,
        }
    }
}

/// A worker the template forked: its pid and a pidfd for it.
pub struct Forked {
    pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

impl Forked {
    /// Takes `pid`, a child of this process not yet reaped (so the pid cannot have been
    /// reused).
    pub fn adopt(pid: u32) -> io::Result<Forked> {
        Ok(Forked {
            pid,
            pidfd: register(Forked::open_pidfd(pid)?, Interest::READABLE)?,
            status: None,
        })
    }

    fn open_pidfd(pid: u32) -> io::Result<OwnedFd> {
        let raw =
            libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd =
            i32::try_from(fd).map_err(|_| io::Error::other("pidfd_open returned no descriptor"))?;
        // SAFETY: the kernel just made this descriptor for this process, and nothing else
        // owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        loop {
            // A pidfd is readable once its process has exited.
            let mut ready = self.pidfd.readable().await?;
            if let Some(status) = reap(self.pidfd.get_ref(), WaitPidFlag::WNOHANG)? {
                self.status = Some(status);
                return Ok(status);
            }
            ready.clear_ready();
        }
    }
}

impl Drop for Forked {
    /// As `kill_on_drop` for a spawned worker: a handle dropped before its worker was
    /// reaped (a bug, or a task unwinding) kills it, and it is reaped in the background.
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        if let Ok(raw) = i32::try_from(self.pid) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
        if let Ok(Some(_)) = reap(self.pidfd.get_ref(), WaitPidFlag::WNOHANG) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(pidfd) = self.pidfd.get_ref().try_clone() else {
            return;
        };
        let pid = self.pid;
        handle.spawn(async move {
            if let Ok(pidfd) = register(pidfd, Interest::READABLE) {
                let mut forked = Forked {
                    pid,
                    pidfd,
                    status: None,
                };
                let _ = forked.wait().await;
            }
        });
    }
}

/// Whether this kernel has pidfds (Linux 5.4 for `waitid` on one): without them no
/// worker is forked, as a forked worker could not be waited for.
pub fn pidfds_work() -> bool {
    let Ok(fd) = Forked::open_pidfd(std::process::id()) else {
        return false;
    };
    // This process is not its own child: ECHILD where waitid knows P_PIDFD, EINVAL where
    // it does not.
    !matches!(
        waitid(
            Id::PIDFd(fd.as_fd()),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG
        ),
        Err(nix::errno::Errno::EINVAL)
    )
}

/// Kills and reaps a child that could not be adopted (it cannot be waited for otherwise).
pub fn kill_and_reap(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(Pid::from_raw(raw), None);
    }
}

/// `fd` watched by the runtime for `interest`.
pub(super) fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open, and names the same file description, until it is dropped,
    // which is with the AsyncFd that owns it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

/// `waitid` on the pidfd: the exit status once the process has exited, `None` while it
/// runs (with `WNOHANG`).
fn reap(pidfd: &OwnedFd, flags: WaitPidFlag) -> io::Result<Option<ExitStatus>> {
    let status =
        waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED | flags).map_err(io::Error::from)?;
    Ok(match status {
        WaitStatus::Exited(_, code) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
        WaitStatus::Signaled(_, signal, core) => Some(ExitStatus::from_raw(
            signal as i32 | if core { 0x80 } else { 0 },
        )),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child forked without tokio (as the template's are) is waited for and reaped
    /// with its real status.
    // The children are reaped through their pidfds, which is what is tested.
    #[allow(clippy::zombie_processes)]
    #[tokio::test]
    async fn a_forked_childs_exit_status_is_read_through_its_pidfd() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .expect("spawn sh");
        let mut forked = WorkerChild::Forked(Forked::adopt(child.id()).expect("pidfd"));
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), forked.wait())
            .await
            .expect("exits")
            .expect("status");
        assert_eq!(status.code(), Some(7));
        assert_eq!(forked.id(), None, "reaped");
        assert_eq!(forked.wait().await.expect("again").code(), Some(7));
        let killed = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .expect("spawn sleep");
        let mut forked = Forked::adopt(killed.id()).expect("pidfd");
        kill(Pid::from_raw(killed.id() as i32), Signal::SIGKILL).expect("kill");
        let status = forked.wait().await.expect("status");
        assert_eq!(status.signal(), Some(9));
    }

    #[test]
    fn this_kernel_has_pidfds() {
        assert!(pidfds_work());
    }

    /// Dropped unreaped, a forked worker is killed and reaped: no zombie is left.
    #[allow(clippy::zombie_processes)]
    #[tokio::test]
    async fn a_dropped_forked_child_is_killed_and_reaped() {
        let child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        drop(Forked::adopt(pid).expect("pidfd"));
        let gone = async {
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(10), gone)
                .await
                .is_ok(),
            "worker {pid} still there (a zombie is)"
        );
    }
}
