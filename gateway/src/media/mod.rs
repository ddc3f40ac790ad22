//! Voice notes, photos and files: what a message carries, fetched from Telegram for the
//! one job that needs it, and gone when that job ends.
//!
//! Only the gateway holds the bot token, and a file's download URL contains it
//! (`{api_url}/file/bot<token>/<path>`), so only the gateway calls `getFile` and
//! downloads. It does so for a job, not when the message arrives: the inbox keeps what
//! Telegram said about the file ([`MediaRef`]: its `file_id`, kind, size, type, name,
//! duration), never the bytes, so a message stored before a crash is fetched again and
//! answered after the restart. A file is refused by the size Telegram states before any
//! byte is fetched, and a download that passes the bound anyway (Telegram's size was
//! wrong, or missing) is stopped at the bound; every fetch is bounded in time too, and
//! goes to disk as it arrives, a chunk at a time, never whole in the gateway's memory
//! (DESIGN.md invariant 6: every per-job buffer in the parent has a stated bound).
//!
//! How the worker gets the file: a per-job directory (0700) under the state directory's
//! `files/` (on disk: the runtime directory is RAM under systemd), which the gateway
//! removes when the job ends, whatever happened ([`JobFiles`] is dropped with the job),
//! and wipes whole at start-up (what a SIGKILLed gateway left). All jobs' files together
//! stay within `telegram.max_files_total_mb` (see `job_files`). So a crashed or killed
//! worker leaves nothing behind: the worker never owns the file (invariant 4: nothing of
//! a job outlives it). The state directory is hidden from every tool server by its
//! sandbox, so a tool cannot read another job's file (invariant 7). The alternative, an unlinked file passed as a file
//! descriptor with `SCM_RIGHTS`, would leave nothing on disk even for a gateway killed
//! mid-download, but the framed byte stream both ends share (`hermes_protocol::Connection`)
//! would have to carry ancillary data on both ends, for one file per job: a path in the
//! job is smaller, and the start-up wipe covers the one case the fd would have.
//!
//! In parts: what a message carries and what stands for it in the text (`reference`),
//! what the configuration refuses (`refusal`), the job's directory and the fetch of each
//! file into it (`job_files`), and the bounded download itself (`download`).

mod download;
mod job_files;
mod reference;
mod refusal;

pub use job_files::{FILES_DIR, Fetched, Fetcher, JobFiles, wipe};
pub use reference::{DocumentKind, MediaRef, unsupported};
// Outside this module only tests (the store's) name a file's kind.
#[cfg(test)]
pub use reference::RefKind;
pub use refusal::{Limits, refuse};
