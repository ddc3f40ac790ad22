//! The state directory is private and belongs to one gateway.
//!
//! It holds every conversation (`state.db`), so it is made 0700 and every file in it 0600
//! whatever the umask the gateway was started with: the process umask is set to 077 before
//! anything is created, and a directory or files left with wider modes (by an older
//! version, or created by hand) are narrowed at start-up.
//!
//! Two gateways on one state directory would both answer the stored messages, both poll
//! (evicting each other with 409s) and both write the status file. So `run` takes an
//! exclusive `flock` on a lock file there before anything else touches the state, and
//! writes its pid in it; a second `run` finds the lock held, says which pid holds it, and
//! exits with [`EXIT_ALREADY_RUNNING`] having touched nothing. The kernel drops the lock
//! when the process ends, however it ends, so a crash never leaves a stale lock behind.
//!
//! Any other failure to claim it ([`ClaimError::Io`]: the directory cannot be made, the
//! lock file cannot be opened or written) keeps its `io::Error`, so `run` can tell what
//! the operator must fix (permission denied, a read-only file system: exit 78) from what
//! passes by itself (a full disk, an I/O error: exit 74, restarted).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::{Mode, umask};

/// Exit status of a `run` that found another gateway on its state directory:
/// `EX_TEMPFAIL`, so a unit started while a manual run holds the directory is restarted
/// and gets it once that run ends (78, `EX_CONFIG`, would stop the restarts).
pub const EXIT_ALREADY_RUNNING: i32 = 75;

/// The lock file, in the state directory.
pub const LOCK_FILE: &str = "gateway.lock";

/// The lock on the state directory; released when dropped (or the process ends).
pub struct StateLock {
    _file: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "another hermes-gateway ({holder}) is running with the state directory {dir}; \
         stop it first, or give this one another state.dir"
    )]
    Taken { dir: String, holder: String },
    #[error("state directory {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

/// From here on, whatever this process creates is private to its user.
pub fn private_umask() {
    umask(Mode::from_bits_truncate(0o077));
}

/// Creates `dir` if needed, narrows it (0700) and the files in it (0600), and takes the
/// lock. Nothing else in the directory is touched when the lock is taken already.
pub fn claim(dir: &Path) -> Result<StateLock, ClaimError> {
    let io = |source| ClaimError::Io {
        dir: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let holder = match pid.trim() {
                "" => "pid unknown".to_string(),
                pid => format!("pid {pid}"),
            };
            return Err(ClaimError::Taken {
                dir: dir.display().to_string(),
                holder,
            });
        }
        Err((_, errno)) => return Err(io(errno.into())),
    };
    narrow(dir).map_err(io)?;
    lock.set_len(0).map_err(io)?;
    lock.rewind().map_err(io)?;
    writeln!(lock, "{}", std::process::id()).map_err(io)?;
    Ok(StateLock { _file: lock })
}

/// The directory 0700, its files 0600, its directories 0700 (one level: the worker
/// socket's directory lives below, and makes itself private).
fn narrow(dir: &Path) -> std::io::Result<()> {
    set_mode(dir, 0o700)?;
    let entries = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<std::io::Result<Vec<_>>>()?;
    narrow_entries(&entries)
}

/// An entry can be gone by the time it is looked at (a SQLite journal another process
/// closed, say): nothing is left to narrow then, and start-up goes on. A restarted gateway
/// in a CI run failed to start here with "No such file or directory".
fn narrow_entries(entries: &[std::path::PathBuf]) -> std::io::Result<()> {
    for path in entries {
        match narrow_entry(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

fn narrow_entry(path: &Path) -> std::io::Result<()> {
    let kind = std::fs::symlink_metadata(path)?.file_type();
    let mode = if kind.is_dir() {
        0o700
    } else if kind.is_file() {
        0o600
    } else {
        return Ok(());
    };
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current != mode {
        tracing::info!(
            "{} was mode {current:o}; making it {mode:o}",
            path.display()
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_with_the_holders_pid_and_a_dropped_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = claim(&state).unwrap();
        match claim(&state) {
            Err(ClaimError::Taken { holder, .. }) => {
                assert_eq!(holder, format!("pid {}", std::process::id()))
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        drop(first);
        assert!(claim(&state).is_ok());
    }

    #[test]
    fn a_wide_directory_and_its_files_are_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = state.join("state.db");
        std::fs::write(&db, b"x").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _lock = claim(&state).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&state.join(LOCK_FILE)), 0o600);
    }

    #[test]
    fn an_entry_gone_before_it_is_narrowed_does_not_stop_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("state.db-journal");
        let kept = dir.path().join("state.db");
        std::fs::write(&kept, "x").unwrap();
        std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o644)).unwrap();
        narrow_entries(&[gone, kept.clone()]).unwrap();
        let mode = std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
