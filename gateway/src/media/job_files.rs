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
            files: JobFiles { dir },
            attachments: Vec::new(),
            refused: Vec::new(),
        };
        for (i, (media, placeholder)) in media.iter().enumerate() {
            let path = fetched
                .files
                .dir
                .join(format!("{i}-{}", safe_name(&media.name())));
            match self.fetch_one(media, &path, limits).await {
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
        Ok(fetched)
    }

    /// One file: judged against `limits`, then downloaded to `path` within the time bound;
    /// its size.
    async fn fetch_one(
        &self,
        media: &MediaRef,
        path: &std::path::Path,
        limits: &Limits,
    ) -> Result<u64, MediaProblem> {
        if let Some(problem) = refuse(media, limits) {
            return Err(problem);
        }
        tokio::time::timeout(
            limits.download_timeout,
            download(&self.bot, media, path, limits.max_bytes),
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
        .take(80)
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
}
