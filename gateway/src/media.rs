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
//! How the worker gets the file: a per-job directory (0700) under the gateway's runtime
//! directory, which the gateway removes when the job ends, whatever happened ([`JobFiles`]
//! is dropped with the job), and wipes whole at start-up (what a SIGKILLed gateway left).
//! So a crashed or killed worker leaves nothing behind: the worker never owns the file
//! (invariant 4: nothing of a job outlives it). The runtime directory is hidden from every
//! tool server by its sandbox, as the scratch directories are, so a tool cannot read
//! another job's file (invariant 7). The alternative, an unlinked file passed as a file
//! descriptor with `SCM_RIGHTS`, would leave nothing on disk even for a gateway killed
//! mid-download, but the framed byte stream both ends share (`hermes_protocol::Connection`)
//! would have to carry ancillary data on both ends, for one file per job: a path in the
//! job is smaller, and the start-up wipe covers the one case the fd would have.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hermes_protocol::{Attachment, JobId, MediaKind, MediaProblem};
use serde::{Deserialize, Serialize};
use teloxide_core::net::Download;
use teloxide_core::prelude::*;
use teloxide_core::types::{FileId, Message};
use teloxide_core::{DownloadError, RequestError};
use tokio::io::AsyncWrite;

/// What Telegram said about a file a message carries: enough to fetch it again, never
/// its bytes. Kept in the inbox (as JSON) until the message is answered.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    pub kind: RefKind,
    pub file_id: String,
    /// Bytes, as Telegram states them (it may not).
    pub size: Option<u64>,
    pub mime_type: Option<String>,
    pub file_name: Option<String>,
    /// Voice notes and audio.
    pub duration_secs: Option<u32>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RefKind {
    Voice,
    Audio,
    Photo,
    /// A document: what it holds is judged by [`MediaRef::document_kind`].
    Document,
}

/// What a document is, by its type and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    /// An image sent "as a file": given to the model like a photo.
    Image,
    Pdf,
    /// Plain text, Markdown, CSV, JSON, source code, …: given as text if its bytes are
    /// UTF-8 (the worker checks).
    Text,
    Other,
}

/// Extensions taken as text whatever the type says (clients send many as
/// `application/octet-stream`).
const TEXT_EXTENSIONS: &[&str] = &[
    "txt",
    "text",
    "md",
    "markdown",
    "rst",
    "csv",
    "tsv",
    "json",
    "jsonl",
    "ndjson",
    "xml",
    "yaml",
    "yml",
    "toml",
    "ini",
    "cfg",
    "conf",
    "env",
    "log",
    "rs",
    "py",
    "js",
    "mjs",
    "ts",
    "tsx",
    "jsx",
    "go",
    "c",
    "h",
    "cc",
    "cpp",
    "hpp",
    "cs",
    "java",
    "kt",
    "swift",
    "rb",
    "php",
    "pl",
    "lua",
    "r",
    "scala",
    "sh",
    "bash",
    "zsh",
    "fish",
    "ps1",
    "sql",
    "html",
    "htm",
    "css",
    "scss",
    "vue",
    "svelte",
    "tex",
    "srt",
    "vtt",
    "diff",
    "patch",
    "proto",
    "graphql",
    "dockerfile",
    "makefile",
    "gitignore",
];
const TEXT_MIME_TYPES: &[&str] = &[
    "application/json",
    "application/xml",
    "application/x-yaml",
    "application/yaml",
    "application/toml",
    "application/javascript",
    "application/x-javascript",
    "application/x-sh",
    "application/x-python",
    "application/sql",
    "application/x-ndjson",
];
const IMAGE_MIME_TYPES: &[&str] = &["image/jpeg", "image/png", "image/webp", "image/gif"];

impl MediaRef {
    /// The voice note, audio, photo or document `message` carries, if any. Of a photo's
    /// sizes the largest within `max_bytes` is taken (Telegram lists them smallest first).
    pub fn of(message: &Message, max_bytes: u64) -> Option<MediaRef> {
        if let Some(voice) = message.voice() {
            return Some(MediaRef {
                kind: RefKind::Voice,
                file_id: voice.file.id.0.clone(),
                size: stated(voice.file.size),
                mime_type: mime(voice.mime_type.as_ref()),
                file_name: None,
                duration_secs: Some(voice.duration.seconds()),
            });
        }
        if let Some(audio) = message.audio() {
            return Some(MediaRef {
                kind: RefKind::Audio,
                file_id: audio.file.id.0.clone(),
                size: stated(audio.file.size),
                mime_type: mime(audio.mime_type.as_ref()),
                file_name: audio.file_name.clone(),
                duration_secs: Some(audio.duration.seconds()),
            });
        }
        if let Some(sizes) = message.photo() {
            let fitting = sizes
                .iter()
                .filter(|p| u64::from(p.file.size) <= max_bytes)
                .max_by_key(|p| (u64::from(p.width) * u64::from(p.height), p.file.size));
            // None fits: the largest, so the user hears it is too big.
            let photo = fitting.or_else(|| sizes.iter().max_by_key(|p| p.file.size))?;
            return Some(MediaRef {
                kind: RefKind::Photo,
                file_id: photo.file.id.0.clone(),
                size: stated(photo.file.size),
                mime_type: Some("image/jpeg".into()),
                file_name: None,
                duration_secs: None,
            });
        }
        if let Some(document) = message.document() {
            return Some(MediaRef {
                kind: RefKind::Document,
                file_id: document.file.id.0.clone(),
                size: stated(document.file.size),
                mime_type: mime(document.mime_type.as_ref()),
                file_name: document.file_name.clone(),
                duration_secs: None,
            });
        }
        None
    }

    pub fn document_kind(&self) -> DocumentKind {
        let mime = self.mime_type.as_deref().unwrap_or_default();
        let name = self
            .file_name
            .as_deref()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let extension = name.rsplit_once('.').map_or(name.as_str(), |(_, e)| e);
        if IMAGE_MIME_TYPES.contains(&mime)
            || ["jpg", "jpeg", "png", "webp", "gif"].contains(&extension)
        {
            DocumentKind::Image
        } else if mime == "application/pdf" || extension == "pdf" {
            DocumentKind::Pdf
        } else if mime.starts_with("text/")
            || TEXT_MIME_TYPES.contains(&mime)
            || TEXT_EXTENSIONS.contains(&extension)
        {
            DocumentKind::Text
        } else {
            DocumentKind::Other
        }
    }

    /// How the worker is to give it to the model.
    pub fn media_kind(&self) -> MediaKind {
        match self.kind {
            RefKind::Voice => MediaKind::Voice,
            RefKind::Audio => MediaKind::Audio,
            RefKind::Photo => MediaKind::Image,
            RefKind::Document if self.document_kind() == DocumentKind::Image => MediaKind::Image,
            RefKind::Document => MediaKind::Document,
        }
    }

    /// The file's name as the model and the user know it.
    pub fn name(&self) -> String {
        if let Some(name) = self.file_name.as_ref().filter(|n| !n.trim().is_empty()) {
            return name.clone();
        }
        match self.kind {
            RefKind::Voice => "voice.ogg".into(),
            RefKind::Audio => "audio".into(),
            RefKind::Photo => "photo.jpg".into(),
            RefKind::Document => "file".into(),
        }
    }

    /// What stands for the file in the turn's text: replaced by the worker with what the
    /// file says for the turn it came with, and kept in the stored conversation (a voice
    /// note's by its transcript), so later turns carry only this short reference.
    pub fn placeholder(&self) -> String {
        match self.media_kind() {
            MediaKind::Voice => "[voice note]".into(),
            MediaKind::Audio => format!("[audio: {}]", self.name()),
            MediaKind::Image if self.kind == RefKind::Photo => "[photo]".into(),
            MediaKind::Image => format!("[image: {}]", self.name()),
            MediaKind::Document => format!("[file: {}]", self.name()),
        }
    }
}

/// What went wrong with a Bot API call, without the request's URL: it holds the token.
fn without_token(error: &RequestError) -> String {
    match error {
        RequestError::Network(e) => format!("network error: {}", hermes_retry::root_cause(e)),
        RequestError::InvalidJson { .. } => "the answer is not Bot API JSON".into(),
        other => other.to_string(),
    }
}

/// A size Telegram stated; teloxide reads a missing one as `u32::MAX`, which is unknown
/// here (the download's own bound still applies).
fn stated(size: u32) -> Option<u64> {
    (size != u32::MAX).then_some(u64::from(size))
}

/// A MIME type without its parameters (`text/plain; charset=utf-8` is `text/plain`).
fn mime<M: std::fmt::Display>(m: Option<&M>) -> Option<String> {
    m.map(|m| {
        let full = m.to_string();
        full.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    })
}

/// What a message the bot cannot use is, for the reply saying what it understands:
/// stickers, locations, contacts, polls, video and the like. `None` for service
/// messages (someone joined, the title changed), which get no reply.
pub fn unsupported(message: &Message) -> Option<&'static str> {
    let what = if message.sticker().is_some() {
        "stickers"
    } else if message.video_note().is_some() {
        "video messages"
    } else if message.video().is_some() {
        "videos"
    } else if message.animation().is_some() {
        "GIFs and animations"
    } else if message.venue().is_some() || message.location().is_some() {
        "locations"
    } else if message.contact().is_some() {
        "contacts"
    } else if message.poll().is_some() {
        "polls"
    } else if message.dice().is_some() {
        "dice"
    } else if message.game().is_some() {
        "games"
    } else if message.story().is_some() {
        "stories"
    } else {
        return None;
    };
    Some(what)
}

/// What the configuration allows a file to be.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: u64,
    pub download_timeout: Duration,
    /// `Some(max_seconds)` when `[transcription]` is configured.
    pub voice_max_secs: Option<u32>,
    /// Some provider has `vision = true`.
    pub vision: bool,
}

/// Why `media` cannot be given to the model, judged from what Telegram said about it,
/// before anything is fetched.
pub fn refuse(media: &MediaRef, limits: &Limits) -> Option<MediaProblem> {
    match media.media_kind() {
        MediaKind::Voice | MediaKind::Audio => {
            let Some(max) = limits.voice_max_secs else {
                return Some(MediaProblem::VoiceNotEnabled);
            };
            if let Some(seconds) = media.duration_secs.filter(|&s| s > max) {
                return Some(MediaProblem::TooLong { seconds, max });
            }
        }
        MediaKind::Image if !limits.vision => return Some(MediaProblem::NoVision),
        MediaKind::Document if media.document_kind() == DocumentKind::Other => {
            return Some(MediaProblem::UnsupportedFile {
                file_name: media.name(),
            });
        }
        _ => {}
    }
    match media.size {
        Some(size) if size > limits.max_bytes => Some(MediaProblem::TooBig {
            size,
            max: limits.max_bytes,
        }),
        _ => None,
    }
}

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
            let path = files.dir.join(format!("{i}-{}", safe_name(&media.name())));
            let size = match tokio::time::timeout(
                limits.download_timeout,
                self.download(media, &path, limits.max_bytes),
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

    async fn download(
        &self,
        media: &MediaRef,
        path: &Path,
        max_bytes: u64,
    ) -> Result<u64, MediaProblem> {
        let failed = |detail: String| MediaProblem::DownloadFailed { detail };
        let file = self
            .bot
            .get_file(FileId(media.file_id.clone()))
            .send()
            .await
            .map_err(|e| failed(format!("getFile: {}", without_token(&e))))?;
        if let Some(size) = stated(file.meta.size).filter(|&s| s > max_bytes) {
            return Err(MediaProblem::TooBig {
                size,
                max: max_bytes,
            });
        }
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| failed(format!("cannot create {}: {e}", path.display())))?;
        let mut sink = Bounded {
            file: tokio::fs::File::from_std(out),
            written: 0,
            max: max_bytes,
        };
        let result = self.bot.download_file(&file.path, &mut sink).await;
        if sink.written > max_bytes {
            return Err(MediaProblem::TooBig {
                size: sink.written,
                max: max_bytes,
            });
        }
        result.map_err(|e| {
            failed(match &e {
                DownloadError::Network(e) => {
                    format!("download: {}", hermes_retry::root_cause(e))
                }
                DownloadError::Io(e) => format!("download: {e}"),
            })
        })?;
        tokio::io::AsyncWriteExt::flush(&mut sink.file)
            .await
            .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))?;
        Ok(sink.written)
    }
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

/// A file that refuses to grow past `max` bytes: the download stops at the bound (the
/// writer's error ends it) instead of trusting the size Telegram stated.
struct Bounded {
    file: tokio::fs::File,
    written: u64,
    max: u64,
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        if self.written.saturating_add(len) > self.max {
            self.written = self.written.saturating_add(len);
            return Poll::Ready(Err(io::Error::other("the file passed the size bound")));
        }
        let this = &mut *self;
        match Pin::new(&mut this.file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.written += u64::try_from(n).unwrap_or(0);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(name: &str, mime: Option<&str>) -> MediaRef {
        MediaRef {
            kind: RefKind::Document,
            file_id: "f".into(),
            size: Some(10),
            mime_type: mime.map(str::to_string),
            file_name: Some(name.into()),
            duration_secs: None,
        }
    }

    fn limits() -> Limits {
        Limits {
            max_bytes: 1000,
            download_timeout: Duration::from_secs(1),
            voice_max_secs: Some(60),
            vision: true,
        }
    }

    #[test]
    fn documents_are_judged_by_type_and_name() {
        assert_eq!(
            document("a.PNG", Some("application/octet-stream")).document_kind(),
            DocumentKind::Image
        );
        assert_eq!(
            document("r", Some("application/pdf")).document_kind(),
            DocumentKind::Pdf
        );
        assert_eq!(
            document("main.rs", None).document_kind(),
            DocumentKind::Text
        );
        assert_eq!(
            document("d", Some("text/csv")).document_kind(),
            DocumentKind::Text
        );
        assert_eq!(
            document("x.zip", Some("application/zip")).document_kind(),
            DocumentKind::Other
        );
        assert_eq!(
            document("a.png", Some("image/png")).placeholder(),
            "[image: a.png]"
        );
    }

    #[test]
    fn a_file_is_refused_before_any_byte_by_what_telegram_said() {
        let l = limits();
        let mut big = document("a.txt", Some("text/plain"));
        big.size = Some(1001);
        assert_eq!(
            refuse(&big, &l),
            Some(MediaProblem::TooBig {
                size: 1001,
                max: 1000
            })
        );
        assert_eq!(
            refuse(&document("x.zip", None), &l),
            Some(MediaProblem::UnsupportedFile {
                file_name: "x.zip".into()
            })
        );
        let voice = MediaRef {
            kind: RefKind::Voice,
            file_id: "v".into(),
            size: Some(10),
            mime_type: None,
            file_name: None,
            duration_secs: Some(61),
        };
        assert_eq!(
            refuse(&voice, &l),
            Some(MediaProblem::TooLong {
                seconds: 61,
                max: 60
            })
        );
        let no_voice = Limits {
            voice_max_secs: None,
            ..limits()
        };
        assert_eq!(
            refuse(&voice, &no_voice),
            Some(MediaProblem::VoiceNotEnabled)
        );
        assert_eq!(refuse(&document("a.txt", None), &l), None);
    }

    /// A download that passes the bound fails at the write that would pass it: the file
    /// on disk never holds more than the bound.
    #[tokio::test]
    async fn nothing_is_written_past_the_bound() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut sink = Bounded {
            file: tokio::fs::File::create(&path).await.unwrap(),
            written: 0,
            max: 10,
        };
        sink.write_all(b"12345678").await.unwrap();
        assert!(sink.write_all(b"901").await.is_err());
        assert!(sink.written > sink.max, "seen as over the bound");
        sink.flush().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"12345678");
    }

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
