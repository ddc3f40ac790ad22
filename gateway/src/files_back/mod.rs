//! Files back to the user: the chart, CSV or image a job's tools made, sent to the chat
//! after the answer with the same guarantee as its text.
//!
//! The supervisor makes each job an output directory inside its worker's scratch
//! directory (the one place the sandbox lets the job's tools write) and names it in the
//! job; the worker names the files to send in the outcome. Nothing of that is trusted:
//! right after the outcome, before the worker may take another job, each named file is
//! opened here without following any link, relative to the directory opened the same way
//! (`openat` with `O_NOFOLLOW`: no `..`, no symlink, no race between a check and the
//! open), and judged by what the open file is (a regular file with one link, within
//! Telegram's upload limit and `telegram.max_send_file_mb`, at most
//! `telegram.max_send_files` of them) ([`collect`](mod@collect)). A file that passes is copied from
//! that open file into the store's file area (`<state>/outgoing`, 0700, hidden from every
//! tool with the state directory), and the output directory is removed.
//!
//! The chat then commits the files as outbox pieces after the answer's text pieces, in
//! the same transaction, and the outbox sends them in order like any piece
//! (`sendPhoto` for what Telegram takes as a photo, [`photo`], `sendDocument` with its
//! name otherwise): retried through failures and restarts, removed from the file area
//! once Telegram took it or refused it for good, a refusal said in the chat once. A file
//! refused here is never uploaded; the answer says so in a last text piece. Files in the
//! area that no outbox piece names (a gateway killed between the copy and the commit) are
//! removed at start-up ([`remove_orphans`]).
//!
//! The same pieces carry an answer too long for Telegram's messages: cut after
//! `format::MAX_PIECES` messages as before, its last message says the whole answer
//! follows, and it does, as `answer.md` ([`keep_answer`]).

mod collect;
pub mod photo;

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use collect::{collect, is_clean_output_dir};

/// The store's file area, in the state directory.
pub const OUTGOING_DIR: &str = "outgoing";
/// The output directory's name inside a worker's scratch directory (`out`, as the tools
/// see it from their working directory).
pub const OUTPUT_DIR: &str = "out";
/// Telegram's upload limit for documents (Bot API, `sendDocument`).
pub const TELEGRAM_MAX_DOCUMENT: u64 = 50 * 1024 * 1024;
/// Telegram's limit for photos (`sendPhoto`).
pub const TELEGRAM_MAX_PHOTO: u64 = 10 * 1024 * 1024;

/// What may be sent back for one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes per file: `telegram.max_send_file_mb`, never over Telegram's limit.
    pub max_bytes: u64,
    /// Files per answer: `telegram.max_send_files`.
    pub max_files: usize,
}

/// Where a job's files go, and where the chat learns what came of them: handed to the
/// runner with the job (`JobLink::files`).
pub struct FileDrop {
    pub area: PathBuf,
    pub limits: Limits,
    pub done: oneshot::Sender<Collected>,
}

/// What came of an answer's files.
#[derive(Debug, Default)]
pub struct Collected {
    /// Taken into the file area, in the answer's order.
    pub files: Vec<OutFile>,
    /// Refused, by the name the worker gave.
    pub refused: Vec<(String, Refusal)>,
}

/// A file in the store's file area, as an outbox piece names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutFile {
    /// In the file area.
    pub path: PathBuf,
    /// The name the chat sees.
    pub name: String,
    /// Sent with `sendPhoto` (else `sendDocument`).
    pub photo: bool,
}

/// Why a named file is not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not one plain name in the output directory (a path, `..`).
    NotAName,
    /// A link, a directory, a device, a file with other names: not what a tool makes
    /// to send.
    NotARegularFile,
    /// Not there, or not readable.
    Unreadable(String),
    TooBig {
        max: u64,
    },
    /// Past `telegram.max_send_files`.
    TooMany {
        max: usize,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotAName => f.write_str("it is not a file in the answer's output directory"),
            Refusal::NotARegularFile => {
                f.write_str("it is not a regular file (a link or something else)")
            }
            Refusal::Unreadable(why) => write!(f, "it cannot be read ({why})"),
            Refusal::TooBig { max } => {
                write!(
                    f,
                    "it is larger than the {} MB allowed",
                    max / (1024 * 1024)
                )
            }
            Refusal::TooMany { max } => write!(f, "no more than {max} files go with one answer"),
        }
    }
}

/// Makes the file area (0700) if missing: `<state>/outgoing`.
pub fn area(state_dir: &Path) -> io::Result<PathBuf> {
    let dir = state_dir.join(OUTGOING_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Removes every file of the area that `kept` (the outbox's file pieces) does not name;
/// how many.
pub fn remove_orphans(area: &Path, kept: &HashSet<PathBuf>) -> usize {
    let Ok(entries) = std::fs::read_dir(area) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if !kept.contains(&path) && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The name an answer too long for its messages is sent under, whole.
pub const WHOLE_ANSWER: &str = "answer.md";

/// Writes `answer` into the area as a file to send ([`WHOLE_ANSWER`]). Blocking.
pub fn keep_answer(area: &Path, answer: &str) -> io::Result<OutFile> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = area.join(format!("{:016x}-{WHOLE_ANSWER}", rand::random::<u64>()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(answer.as_bytes())?;
    file.sync_all()?;
    Ok(OutFile {
        path,
        name: WHOLE_ANSWER.to_string(),
        photo: false,
    })
}

/// Removes a file of the area once its piece is over (sent, refused, too old).
pub fn forget(file: &OutFile) {
    if let Err(e) = std::fs::remove_file(&file.path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", file.path.display());
    }
}
