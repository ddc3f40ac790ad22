//! The files of a turn, made into what the model reads: a voice note or audio file into
//! its transcript (the user's words), an image into an `image_url` part (base64 `data:`
//! URL) for a provider with vision, a document into its text under its name. The gateway
//! downloaded each file into a private per-job directory and named it in the user's
//! message by a placeholder; this replaces each placeholder with what the file says.
//!
//! It runs in the worker, not the gateway, because this is where a hostile file is
//! harmless: a PDF or an audio file built to crash a parser ends this process at most
//! (the gateway answers "the agent crashed" and starts another), and the transcription
//! provider's key and answers are provider code, which lives here. Shared by `serve` and
//! `ask --file`, so an operator debugging a transcription or vision problem runs exactly
//! this.

use std::path::Path;
use std::time::Instant;

use base64::Engine;
use hermes_protocol::{
    Attachment, ChatMessage, Event, Failure, Job, MediaKind, MediaProblem, ProviderPlan, Role,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::provider::{ProviderError, transcribe};

/// A document's text given to the model is cut here (about 25 000 tokens): a longer file
/// gets its beginning and a line saying it was cut.
pub const MAX_DOCUMENT_CHARS: usize = 100_000;
/// A file the worker reads into memory at most (the gateway's bound is 20 MiB at most;
/// this only guards against a file that grew since).
const MAX_READ_BYTES: u64 = 20 * 1024 * 1024;

/// The job's messages with every placeholder replaced, and what came of its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub messages: Vec<ChatMessage>,
    /// `data:` URLs of the turn's images, for its last user message.
    pub images: Vec<String>,
    /// What each voice note or audio file said, in the job's order.
    pub heard: Vec<String>,
}

/// Reads, transcribes and converts the job's attachments, until `deadline`.
pub async fn prepare(
    job: &Job,
    client: &reqwest::Client,
    deadline: Instant,
    events: &UnboundedSender<Event>,
) -> Result<Turn, ProviderError> {
    let mut messages = job.messages.clone();
    let mut images = Vec::new();
    let mut heard = Vec::new();
    if job.attachments.is_empty() {
        return Ok(Turn {
            messages,
            images,
            heard,
        });
    }
    let media = |problem| ProviderError::Failed(Failure::Media { problem });
    for attachment in &job.attachments {
        let replacement = match attachment.kind {
            MediaKind::Voice | MediaKind::Audio => {
                let Some(plan) = &job.transcription else {
                    return Err(media(MediaProblem::VoiceNotEnabled));
                };
                let bytes = read(attachment).map_err(media)?;
                let text =
                    transcribe::transcribe(client, plan, attachment, bytes, deadline, events)
                        .await?;
                heard.push(text.clone());
                text
            }
            MediaKind::Image => {
                let bytes = read(attachment).map_err(media)?;
                images.push(data_url(attachment, &bytes));
                String::new()
            }
            MediaKind::Document => {
                let bytes = read(attachment).map_err(media)?;
                // Parsing (a PDF above all) is CPU work: off the thread that listens to
                // the gateway.
                let owned = attachment.clone();
                let text = tokio::task::spawn_blocking(move || document_text(&owned, &bytes))
                    .await
                    .unwrap_or_else(|_| {
                        Err(MediaProblem::Unreadable {
                            file_name: attachment.file_name.clone(),
                            detail: "it could not be read".into(),
                        })
                    })
                    .map_err(media)?;
                format!(
                    "File {}:\n{text}\n(end of {})",
                    attachment.file_name, attachment.file_name
                )
            }
        };
        replace_placeholder(&mut messages, &attachment.placeholder, &replacement);
    }
    if !images.is_empty() && !job.providers.iter().any(|p| p.vision) {
        return Err(media(MediaProblem::NoVision));
    }
    Ok(Turn {
        messages,
        images,
        heard,
    })
}

/// The providers of the chain that can take this turn: those with vision when it holds an
/// image, all of them otherwise.
pub fn usable(providers: &[ProviderPlan], has_images: bool) -> Vec<ProviderPlan> {
    providers
        .iter()
        .filter(|p| p.vision || !has_images)
        .cloned()
        .collect()
}

/// Puts `replacement` where `placeholder` stands in the last user message (the new one).
fn replace_placeholder(messages: &mut [ChatMessage], placeholder: &str, replacement: &str) {
    if let Some(last) = messages.iter_mut().rev().find(|m| m.role == Role::User) {
        if last.content.contains(placeholder) {
            last.content = last.content.replacen(placeholder, replacement, 1);
        } else if !replacement.is_empty() {
            last.content = format!("{replacement}\n{}", last.content);
        }
        last.content = last.content.trim().to_string();
    }
}

fn read(attachment: &Attachment) -> Result<Vec<u8>, MediaProblem> {
    let path = Path::new(&attachment.path);
    let unreadable = |detail: String| MediaProblem::Unreadable {
        file_name: attachment.file_name.clone(),
        detail,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| unreadable(e.to_string()))?
        .len();
    if size > MAX_READ_BYTES {
        return Err(MediaProblem::TooBig {
            size,
            max: MAX_READ_BYTES,
        });
    }
    std::fs::read(path).map_err(|e| unreadable(e.to_string()))
}

fn data_url(attachment: &Attachment, bytes: &[u8]) -> String {
    let mime = attachment
        .mime_type
        .as_deref()
        .filter(|m| m.starts_with("image/"))
        .unwrap_or("image/jpeg");
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The text of a document: a PDF's extracted text, or a text-like file's bytes as UTF-8,
/// cut at [`MAX_DOCUMENT_CHARS`].
pub fn document_text(attachment: &Attachment, bytes: &[u8]) -> Result<String, MediaProblem> {
    let file_name = attachment.file_name.clone();
    let text = if is_pdf(&file_name, attachment.mime_type.as_deref()) {
        pdf_text(bytes).map_err(|detail| MediaProblem::Unreadable {
            file_name: file_name.clone(),
            detail,
        })?
    } else {
        match std::str::from_utf8(bytes) {
            Ok(text) => text.to_string(),
            Err(_) => {
                return Err(MediaProblem::Unreadable {
                    file_name,
                    detail: "it is not UTF-8 text".into(),
                });
            }
        }
    };
    if text.trim().is_empty() {
        return Err(MediaProblem::Unreadable {
            file_name,
            detail: "it holds no text".into(),
        });
    }
    Ok(cut(text))
}

fn cut(text: String) -> String {
    match text.char_indices().nth(MAX_DOCUMENT_CHARS) {
        None => text,
        Some((at, _)) => format!(
            "{}\n[… cut here: the file is longer than {MAX_DOCUMENT_CHARS} characters]",
            &text[..at]
        ),
    }
}

pub fn is_pdf(file_name: &str, mime_type: Option<&str>) -> bool {
    mime_type == Some("application/pdf") || file_name.to_ascii_lowercase().ends_with(".pdf")
}

/// A PDF's text, by `pdf-extract` (maintained, pure Rust, on `lopdf`). A PDF built to
/// crash a parser can panic it: that is caught here and told as unreadable; one that
/// hangs it ends with the job's deadline, when the gateway ends this worker's group.
fn pdf_text(bytes: &[u8]) -> Result<String, String> {
    match std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem(bytes)) {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(e)) => Err(format!("the PDF could not be read ({e})")),
        Err(_) => Err("the PDF could not be read".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(name: &str, mime: Option<&str>) -> Attachment {
        Attachment {
            kind: MediaKind::Document,
            path: String::new(),
            file_name: name.into(),
            mime_type: mime.map(str::to_string),
            size: 0,
            duration_secs: None,
            placeholder: "[file]".into(),
        }
    }

    #[test]
    fn a_text_file_is_its_text_and_a_binary_one_is_refused_by_name() {
        let notes = attachment("notes.md", Some("text/markdown"));
        assert_eq!(
            document_text(&notes, b"# Hi\nthere").unwrap(),
            "# Hi\nthere"
        );
        assert_eq!(
            document_text(&notes, &[0xff, 0xfe, 0x00]),
            Err(MediaProblem::Unreadable {
                file_name: "notes.md".into(),
                detail: "it is not UTF-8 text".into()
            })
        );
        let long = "é".repeat(MAX_DOCUMENT_CHARS + 10);
        let kept = document_text(&notes, long.as_bytes()).unwrap();
        assert!(kept.starts_with(&"é".repeat(MAX_DOCUMENT_CHARS)));
        assert!(kept.ends_with("characters]"));
    }

    #[test]
    fn a_pdfs_text_is_extracted_and_a_broken_one_is_unreadable() {
        let report = attachment("report.pdf", Some("application/pdf"));
        let pdf = hermes_tests::pdf::one_page("Quarterly revenue grew 12 percent");
        let text = document_text(&report, &pdf).unwrap();
        assert!(
            text.contains("Quarterly revenue grew 12 percent"),
            "{text:?}"
        );
        let broken = document_text(&report, b"%PDF-1.4 garbage");
        assert!(
            matches!(&broken, Err(MediaProblem::Unreadable { detail, .. }) if detail.contains("PDF")),
            "{broken:?}"
        );
    }

    #[test]
    fn a_placeholder_is_replaced_in_the_new_message_only() {
        let mut messages = vec![
            ChatMessage::new(Role::User, "[voice] earlier"),
            ChatMessage::new(Role::Assistant, "ok"),
            ChatMessage::new(Role::User, "[voice]\nand a caption"),
        ];
        replace_placeholder(&mut messages, "[voice]", "what I said");
        assert_eq!(messages[0].content, "[voice] earlier");
        assert_eq!(messages[2].content, "what I said\nand a caption");
        replace_placeholder(&mut messages, "[photo]", "");
        assert_eq!(messages[2].content, "what I said\nand a caption");
    }
}
