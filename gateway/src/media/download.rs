//! The download: `getFile`, then the file's bytes streamed to disk a chunk at a time,
//! never whole in the gateway's memory, and never past the size bound.
//!
//! A file is refused by the size `getFile` states before any byte is fetched, and a
//! download that passes the bound anyway (Telegram's size was wrong, or missing) is
//! stopped at the bound by the file it writes to ([`Bounded`]): DESIGN.md invariant 6,
//! every per-job buffer in the parent has a stated bound. The download URL holds the bot
//! token, so no error it causes is reported with the URL in it.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use hermes_protocol::MediaProblem;
use teloxide_core::net::Download;
use teloxide_core::prelude::*;
use teloxide_core::types::FileId;
use teloxide_core::{DownloadError, RequestError};
use tokio::io::AsyncWrite;

use super::MediaRef;
use super::job_files::Allowance;
use super::reference::stated;

/// Fetches `media` with `bot` into a new file at `path` (0600), within `max_bytes` and
/// what `room` lets the turn's files take; the bytes written.
pub async fn download(
    bot: &Bot,
    media: &MediaRef,
    path: &Path,
    max_bytes: u64,
    room: &mut Allowance,
) -> Result<u64, MediaProblem> {
    let failed = |detail: String| MediaProblem::DownloadFailed { detail };
    let file = bot
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
        room,
        no_room: false,
    };
    let result = bot.download_file(&file.path, &mut sink).await;
    if sink.written > max_bytes {
        return Err(MediaProblem::TooBig {
            size: sink.written,
            max: max_bytes,
        });
    }
    if sink.no_room {
        return Err(failed(
            "larger than Telegram stated, and the files of running turns fill \
             telegram.max_files_total_mb"
                .into(),
        ));
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

/// What went wrong with a Bot API call, without the request's URL: it holds the token.
fn without_token(error: &RequestError) -> String {
    match error {
        RequestError::Network(e) => format!("network error: {}", hermes_retry::root_cause(e)),
        RequestError::InvalidJson { .. } => "the answer is not Bot API JSON".into(),
        other => other.to_string(),
    }
}

/// A file that refuses to grow past `max` bytes, or past the room the turn's files may
/// take: the download stops at the bound (the writer's error ends it) instead of
/// trusting the size Telegram stated.
struct Bounded<'a> {
    file: tokio::fs::File,
    written: u64,
    max: u64,
    room: &'a mut Allowance,
    /// The room had no more to give.
    no_room: bool,
}

impl AsyncWrite for Bounded<'_> {
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
        if !this.room.take(len) {
            this.no_room = true;
            return Poll::Ready(Err(io::Error::other("no room left for the turn's files")));
        }
        let polled = Pin::new(&mut this.file).poll_write(cx, buf);
        let written = match &polled {
            Poll::Ready(Ok(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        this.written += written;
        this.room.give_back(len - written.min(len));
        polled
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
    use crate::media::job_files::Room;

    /// A download that passes the bound fails at the write that would pass it: the file
    /// on disk never holds more than the bound.
    #[tokio::test]
    async fn nothing_is_written_past_the_bound() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut room = Room::new(1 << 20).reserve(10).await.unwrap();
        let mut sink = Bounded {
            file: tokio::fs::File::create(&path).await.unwrap(),
            written: 0,
            max: 10,
            room: &mut room,
            no_room: false,
        };
        sink.write_all(b"12345678").await.unwrap();
        assert!(sink.write_all(b"901").await.is_err());
        assert!(sink.written > sink.max, "seen as over the bound");
        sink.flush().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"12345678");
    }
}
