//! How `run` ends when it cannot start: the exit status says who can fix it.
//!
//! The shipped units restart every status but 78 (`EX_CONFIG`) and systemd's 243, so 78
//! is kept for what only the operator can fix: the configuration, a directory the
//! service may not write, a store of a newer version. Trouble that can pass by itself (a
//! database busy or locked by another process, a disk or runtime directory full, an I/O
//! error, too many open files) exits with [`EXIT_IO_ERROR`], which the units restart
//! every `RestartSec` for as long as it lasts. What cannot be told apart counts as
//! passing: a restart loop repeats a log line, giving up leaves the bot silent.

use std::io;

use hermes_config::EXIT_CONFIG;

use crate::state_dir::ClaimError;
use crate::store::StoreError;

/// Exit status when local trouble that can pass by itself stopped the start:
/// `EX_IOERR`, which the units restart.
pub const EXIT_IO_ERROR: i32 = 74;

/// Exit status when the operating system refuses the basics (a runtime, a signal handler):
/// `EX_OSERR`, which the units restart.
pub const EXIT_OS_ERROR: i32 = 71;

/// The exit status for a file-system error on one of the gateway's own directories.
pub fn for_io(error: &io::Error) -> i32 {
    use nix::errno::Errno;
    let permanent = error.raw_os_error().is_some_and(|raw| {
        matches!(
            Errno::from_raw(raw),
            Errno::EACCES
                | Errno::EPERM
                | Errno::EROFS
                | Errno::ENOTDIR
                | Errno::EISDIR
                | Errno::EEXIST
                | Errno::ELOOP
                | Errno::ENAMETOOLONG
        )
    });
    if permanent {
        EXIT_CONFIG
    } else {
        EXIT_IO_ERROR
    }
}

/// The exit status for a state directory that could not be claimed (other than being
/// taken by another gateway, which has its own).
pub fn for_claim(error: &ClaimError) -> i32 {
    match error {
        ClaimError::Io { source, .. } => for_io(source),
        ClaimError::Taken { .. } => crate::state_dir::EXIT_ALREADY_RUNNING,
    }
}

/// The exit status for a store that could not be opened or read at start-up.
pub fn for_store(error: &StoreError) -> i32 {
    if error.is_transient() {
        EXIT_IO_ERROR
    } else {
        EXIT_CONFIG
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_operator_must_fix_is_78() {
        let errno = |e: nix::errno::Errno| io::Error::from_raw_os_error(e as i32);
        use nix::errno::Errno::*;
        for passing in [
            ENOSPC, EDQUOT, EIO, EAGAIN, EMFILE, ENFILE, ENOLCK, ENOMEM, EBUSY,
        ] {
            assert_eq!(for_io(&errno(passing)), EXIT_IO_ERROR, "{passing}");
        }
        for permanent in [EACCES, EPERM, EROFS, ENOTDIR] {
            assert_eq!(for_io(&errno(permanent)), EXIT_CONFIG, "{permanent}");
        }
        assert_eq!(for_io(&io::Error::other("unknown")), EXIT_IO_ERROR);
        let sqlite = |code: i32| StoreError::Sqlite {
            path: "state.db".into(),
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        };
        for passing in [
            rusqlite::ffi::SQLITE_BUSY,
            rusqlite::ffi::SQLITE_LOCKED,
            rusqlite::ffi::SQLITE_FULL,
            rusqlite::ffi::SQLITE_IOERR,
            rusqlite::ffi::SQLITE_NOMEM,
            rusqlite::ffi::SQLITE_CANTOPEN,
        ] {
            assert_eq!(for_store(&sqlite(passing)), EXIT_IO_ERROR, "{passing}");
        }
        for permanent in [rusqlite::ffi::SQLITE_READONLY, rusqlite::ffi::SQLITE_PERM] {
            assert_eq!(for_store(&sqlite(permanent)), EXIT_CONFIG, "{permanent}");
        }
        let too_new = StoreError::TooNew {
            path: "state.db".into(),
            found: 99,
        };
        assert_eq!(for_store(&too_new), EXIT_CONFIG);
    }
}
