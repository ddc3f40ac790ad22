//! What a message carries, as Telegram describes it: [`MediaRef`] (a voice note, audio,
//! photo or document: its `file_id`, kind, size, type, name, duration), what a document
//! is by its type and name, and what stands for the file in the turn's text. The inbox
//! keeps this, never the bytes, so a message stored before a crash is fetched again and
//! answered after the restart. Also what a message the bot cannot use is (a sticker, a
//! location), for the reply that says what it understands.

use hermes_protocol::MediaKind;
use serde::{Deserialize, Serialize};
use teloxide_core::types::Message;

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

/// A size Telegram stated; teloxide reads a missing one as `u32::MAX`, which is unknown
/// here (the download's own bound still applies).
pub fn stated(size: u32) -> Option<u64> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A document as Telegram would describe it, for the tests of what is done with one.
    pub fn document(name: &str, mime: Option<&str>) -> MediaRef {
        MediaRef {
            kind: RefKind::Document,
            file_id: "f".into(),
            size: Some(10),
            mime_type: mime.map(str::to_string),
            file_name: Some(name.into()),
            duration_secs: None,
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
}
