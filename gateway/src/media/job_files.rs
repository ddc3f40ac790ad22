//! Where a job's files live: a directory (0700) of the job's own under the gateway's
//! runtime directory, filled for the job and removed when it ends.
//!
//! The gateway, not the worker, owns the directory: [`JobFiles`] is dropped with the job
//! however it ends, so a crashed or killed worker leaves nothing behind (invariant 4:
//! nothing of a job outlives it), and the root is wiped whole at start-up (what a
//! SIGKILLed gateway left). Each file is judged against the limits ([`super::refuse`])
//! before it is fetched ([`super::download`]), and every fetch is bounded in time.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;

use hermes_protocol::{Attachment, JobId, MediaProblem};
use teloxide_core::Bot;

use super::download::download;
use super::{Limits, MediaRef, refuse};

/// The root of the per-job directories (`<runtime>/media`), and the bot that fetches.
#[derive(Clone)]
pub struct Fetcher {
    bot: Bot,
    root: PathBuf,
}

/// One job's files, removed (directory and all) when dropped.
#[derive(Debug)]
pub struct JobFiles {
    dir: PathBuf,
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

impl Fetcher {
    /// A fetcher whose job directories go under `root`, which is wiped first: anything
    /// there was left by a gateway that was killed during a job.
    pub fn new(bot: Bot, root: PathBuf) -> io::Result<Fetcher> {
        match std::fs::remove_dir_all(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
        Ok(Fetcher { bot, root })
    }

    /// Fetches each of `media` (with the placeholder standing for it) into a directory
    /// of job `job`'s own, within `limits`.
    pub async fn fetch(
        &self,
        job: JobId,
        media: &[(MediaRef, String)],
        limits: &Limits,
    ) -> Result<(JobFiles, Vec<Attachment>), MediaProblem> {
        let dir = self.root.join(format!("job-{}", job.0));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| MediaProblem::DownloadFailed {
                detail: format!("cannot make {}: {e}", dir.display()),
            })?;
        let files = JobFiles { dir };
        let mut attachments = Vec::new();
        for (i, (media, placeholder)) in media.iter().enumerate() {
            if let Some(problem) = refuse(media, limits) {
                return Err(problem);
            }
            let path = files.dir.join(file_name(i, &media.name()));
            let size = match tokio::time::timeout(
                limits.download_timeout,
                download(&self.bot, media, &path, limits.max_bytes),
            )
            .await
            {
                Ok(result) => result?,
                Err(_) => {
                    return Err(MediaProblem::DownloadFailed {
                        detail: format!(
                            "not fetched within {} s",
                            limits.download_timeout.as_secs()
                        ),
                    });
                }
            };
            attachments.push(Attachment {
                kind: media.media_kind(),
                path: path.display().to_string(),
                file_name: media.name(),
                mime_type: media.mime_type.clone(),
                size,
                duration_secs: media.duration_secs,
                placeholder: placeholder.clone(),
            });
        }
        Ok((files, attachments))
    }
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
    let stem = cut(stem, room.saturating_sub(extension.len()));
    format!("{prefix}{stem}{extension}")
}

/// The longest start of `text` of at most `max` bytes that ends on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
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
        drop(JobFiles { dir: dir.clone() });
        assert!(!dir.exists());
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
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
