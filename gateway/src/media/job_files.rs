//! Where a job's files live: a directory (0700) of the job's own under the state
//! directory's `files/`, filled for the job and removed when it ends.
//!
//! On disk, not in the runtime directory: under systemd that is `/run`, a tmpfs in RAM
//! shared by the whole system, and a chat's turn may hold `max_queued_per_chat` files of
//! `max_file_mb` each (400 MB by default), every chat at once. The state directory is
//! 0700 and hidden from tools as a whole, so the files are as private as they were. All
//! chats' files share one room (`telegram.max_files_total_mb`, [`Room`]): a turn reserves
//! what Telegram stated for its files (the file bound when it stated nothing) before it
//! fetches any, and waits when that does not fit beside the other turns' files, since they
//! leave when their jobs end (each bounded by the job timeout) and the user's files are
//! fine, only early. Waiting is first come, first served, and all at once per turn, so two
//! turns never hold half the room each waiting for the other. A turn whose files alone
//! are larger than the room is told so at once; a download that grows past what Telegram
//! stated takes more room if there is some, else fails, so the room is never passed.
//!
//! The gateway, not the worker, owns the directory: [`JobFiles`] is dropped with the job
//! however it ends, so a crashed or killed worker leaves nothing behind (invariant 4:
//! nothing of a job outlives it), and the root is wiped whole at start-up (what a
//! SIGKILLed gateway left). Each file is judged against the limits ([`super::refuse`])
//! before it is fetched ([`super::download`]), and every fetch is bounded in time.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hermes_protocol::{Attachment, JobId, MediaProblem};
use teloxide_core::Bot;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::download::download;
use super::{Limits, MediaRef, refuse};
use crate::text::cut_at_char;

/// The directory of the job files in the state directory.
pub const FILES_DIR: &str = "files";

/// The root of the per-job directories (`<state>/files`), the room they share, and the
/// bot that fetches.
#[derive(Clone)]
pub struct Fetcher {
    bot: Bot,
    root: PathBuf,
    room: Room,
}

/// One job's files, removed (directory and all) when dropped, and the room they took
/// given back.
#[derive(Debug)]
pub struct JobFiles {
    dir: PathBuf,
    _room: Option<Allowance>,
}

impl Drop for JobFiles {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove the job's files {}: {e}", self.dir.display());
        }
    }
}

/// The disk every running turn's files share, counted in KiB (a semaphore's permits).
#[derive(Clone, Debug)]
pub struct Room {
    free: Arc<Semaphore>,
    kib: u32,
}

impl Room {
    pub fn new(bytes: u64) -> Room {
        let kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX);
        let kib = kib.min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        Room {
            free: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }

    fn bytes(&self) -> u64 {
        u64::from(self.kib) * 1024
    }

    /// Holds `bytes` of the room, waiting until they fit beside every other turn's
    /// files; at once a refusal when they could never fit.
    pub(crate) async fn reserve(&self, bytes: u64) -> Result<Allowance, MediaProblem> {
        let too_much = MediaProblem::TooMuchAtOnce {
            size: bytes,
            max: self.bytes(),
        };
        let kib = match u32::try_from(bytes.div_ceil(1024)) {
            Ok(kib) if kib <= self.kib => kib,
            _ => return Err(too_much),
        };
        let permit = match self.free.clone().try_acquire_many_owned(kib) {
            Ok(permit) => permit,
            Err(_) => {
                tracing::info!(
                    "the files of running turns fill telegram.max_files_total_mb; this turn's \
                     {bytes} bytes wait for room"
                );
                // The semaphore is never closed: an error here cannot happen, and would
                // be the room refusing.
                self.free
                    .clone()
                    .acquire_many_owned(kib)
                    .await
                    .map_err(|_| too_much)?
            }
        };
        Ok(Allowance {
            free: self.free.clone(),
            permit,
            left: u64::from(kib) * 1024,
        })
    }
}

/// A turn's share of the [`Room`]: what its downloads may still write.
#[derive(Debug)]
pub struct Allowance {
    free: Arc<Semaphore>,
    permit: OwnedSemaphorePermit,
    left: u64,
}

impl Allowance {
    /// Counts `bytes` about to be written: from the share, else from the room's free
    /// part without waiting (a file larger than Telegram stated). False when neither
    /// has them.
    pub fn take(&mut self, bytes: u64) -> bool {
        if bytes > self.left {
            let more = u32::try_from((bytes - self.left).div_ceil(1024)).unwrap_or(u32::MAX);
            match self.free.clone().try_acquire_many_owned(more) {
                Ok(permit) => {
                    self.permit.merge(permit);
                    self.left += u64::from(more) * 1024;
                }
                Err(_) => return false,
            }
        }
        self.left -= bytes;
        true
    }

    /// Gives back `bytes` taken but not written.
    pub fn give_back(&mut self, bytes: u64) {
        self.left += bytes;
    }
}

/// Removes `root` and everything under it: the files a killed run left. Absent is fine.
pub fn wipe(root: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Fetcher {
    /// A fetcher whose job directories go under `root`, which is wiped first: anything
    /// there was left by a gateway that was killed during a job. All jobs' files together
    /// stay within `room_bytes`.
    pub fn new(bot: Bot, root: PathBuf, room_bytes: u64) -> io::Result<Fetcher> {
        wipe(&root)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
        Ok(Fetcher {
            bot,
            root,
            room: Room::new(room_bytes),
        })
    }

    /// Fetches each of `media` (with the placeholder standing for it) into a directory
    /// of job `job`'s own, within `limits`. A file refused or not fetched does not stop
    /// the others: it is in [`Fetched::refused`], and the turn goes on without it. Only a
    /// directory that cannot be made fails the whole.
    pub async fn fetch(
        &self,
        job: JobId,
        media: &[(MediaRef, String)],
        limits: &Limits,
    ) -> Result<Fetched, MediaProblem> {
        let dir = self.root.join(format!("job-{}", job.0));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| MediaProblem::DownloadFailed {
                detail: format!("cannot make {}: {e}", dir.display()),
            })?;
        let mut fetched = Fetched {
            files: JobFiles { dir, _room: None },
            attachments: Vec::new(),
            refused: Vec::new(),
        };
        // Refused by the configuration: never fetched, never given room.
        let mut wanted = Vec::new();
        for (i, (media, placeholder)) in media.iter().enumerate() {
            match refuse(media, limits) {
                Some(problem) => fetched.refused.push((i, problem)),
                None => wanted.push((i, media, placeholder)),
            }
        }
        if wanted.is_empty() {
            return Ok(fetched);
        }
        // The room for all of them at once: what Telegram stated, else the most a file may
        // be (the download stops there).
        let stated: u64 = wanted
            .iter()
            .map(|(_, m, _)| m.size.unwrap_or(limits.max_bytes).min(limits.max_bytes))
            .sum();
        let mut allowance = match self.room.reserve(stated).await {
            Ok(allowance) => allowance,
            Err(problem) => {
                fetched
                    .refused
                    .extend(wanted.iter().map(|(i, _, _)| (*i, problem.clone())));
                fetched.refused.sort_by_key(|(i, _)| *i);
                return Ok(fetched);
            }
        };
        for (i, media, placeholder) in wanted {
            let path = fetched.files.dir.join(file_name(i, &media.name()));
            match self.fetch_one(media, &path, limits, &mut allowance).await {
                Ok(size) => fetched.attachments.push(Attachment {
                    kind: media.media_kind(),
                    path: path.display().to_string(),
                    file_name: media.name(),
                    mime_type: media.mime_type.clone(),
                    size,
                    duration_secs: media.duration_secs,
                    placeholder: placeholder.clone(),
                }),
                Err(problem) => {
                    // A partial download is not left for the job to find.
                    let _ = std::fs::remove_file(&path);
                    fetched.refused.push((i, problem));
                }
            }
        }
        fetched.refused.sort_by_key(|(i, _)| *i);
        fetched.files._room = Some(allowance);
        Ok(fetched)
    }

    /// One file, downloaded to `path` within the time bound and the turn's room; its size.
    async fn fetch_one(
        &self,
        media: &MediaRef,
        path: &std::path::Path,
        limits: &Limits,
        allowance: &mut Allowance,
    ) -> Result<u64, MediaProblem> {
        tokio::time::timeout(
            limits.download_timeout,
            download(&self.bot, media, path, limits.max_bytes, allowance),
        )
        .await
        .unwrap_or_else(|_| {
            Err(MediaProblem::DownloadFailed {
                detail: format!("not fetched within {} s", limits.download_timeout.as_secs()),
            })
        })
    }
}

/// What a turn's fetch brought: the files for its job, and the ones it could not have.
#[derive(Debug)]
pub struct Fetched {
    pub files: JobFiles,
    /// The files fetched, in the turn's order.
    pub attachments: Vec<Attachment>,
    /// The files refused or not fetched: their index in the turn's media, and why.
    pub refused: Vec<(usize, MediaProblem)>,
}

/// The longest file name Linux file systems take (`NAME_MAX`), in bytes.
const NAME_MAX: usize = 255;
/// An extension longer than this is not one worth keeping over the name's stem.
const MAX_EXTENSION: usize = 16;

/// The name of the job's `index`th file on disk: `name` made safe ([`safe_name`]) behind
/// the index, cut to fit `NAME_MAX` bytes on a character boundary, its extension kept
/// (the worker knows a file's kind by it). The model is told the name as sent.
fn file_name(index: usize, name: &str) -> String {
    let prefix = format!("{index}-");
    let safe = safe_name(name);
    let room = NAME_MAX.saturating_sub(prefix.len());
    if safe.len() <= room {
        return format!("{prefix}{safe}");
    }
    let (stem, extension) = match safe.rfind('.') {
        Some(dot) if safe.len() - dot <= MAX_EXTENSION && dot > 0 => safe.split_at(dot),
        _ => (safe.as_str(), ""),
    };
    let stem = cut_at_char(stem, room.saturating_sub(extension.len()));
    format!("{prefix}{stem}{extension}")
}

/// A file name safe to use in the job's directory (no separators, no leading dot).
fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    cleaned.trim_start_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_files_go_with_the_job() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("job-1");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("0-voice.ogg"), b"x").unwrap();
        drop(JobFiles {
            dir: dir.clone(),
            _room: None,
        });
        assert!(!dir.exists());
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
    }

    #[tokio::test]
    async fn the_room_refuses_what_never_fits_waits_for_the_rest_and_is_never_passed() {
        use std::time::Duration;
        const K: u64 = 1024;
        let room = Room::new(10 * K);
        match room.reserve(11 * K).await {
            Err(MediaProblem::TooMuchAtOnce { size, max }) => {
                assert_eq!((size, max), (11 * K, 10 * K));
            }
            other => panic!("{other:?}"),
        }
        let mut first = room.reserve(6 * K).await.unwrap();
        // A download larger than stated grows into the free room, and no further.
        assert!(first.take(6 * K));
        assert!(first.take(3 * K));
        assert!(!first.take(2 * K), "past the room");
        // A turn that does not fit waits (a zero timeout polls it once) until the first
        // turn's files are gone.
        let waiting = room.reserve(5 * K);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::ZERO, &mut waiting)
                .await
                .is_err()
        );
        drop(first);
        let second = tokio::time::timeout(Duration::ZERO, &mut waiting).await;
        assert!(matches!(second, Ok(Ok(_))), "{second:?}");
    }

    #[test]
    fn a_name_is_cut_to_name_max_on_a_character_boundary_keeping_its_extension() {
        let root = tempfile::tempdir().unwrap();
        for (name, extension) in [
            (format!("{}.txt", "\u{20000}".repeat(74)), ".txt"),
            (format!("{}.pdf", "é".repeat(200)), ".pdf"),
            ("a".repeat(400), ""),
            (format!("x.{}", "y".repeat(300)), ""),
        ] {
            let on_disk = file_name(12, &name);
            assert!(on_disk.len() <= NAME_MAX, "{} bytes", on_disk.len());
            assert!(on_disk.len() > NAME_MAX - 4, "cut too short: {on_disk}");
            assert!(on_disk.starts_with("12-") && on_disk.ends_with(extension));
            std::fs::write(root.path().join(&on_disk), b"x").unwrap();
        }
        assert_eq!(file_name(0, "notes.md"), "0-notes.md");
    }
}
