//! Voice notes and audio into text: an OpenAI-compatible `POST
//! {base_url}/audio/transcriptions` (multipart: the file and `model`), with the
//! `[transcription]` provider's key. Its failures are the chat's failures: it goes
//! through the chat's own attempt loop (`attempts`), so the same
//! [`classify`](super::classify) decides what an error answer means (402 quota, 401 key,
//! 429 with `Retry-After`, 5xx), the same retry policy and the job's deadline apply, and
//! the user reads the same plain words.

use std::time::{Duration, Instant};

use hermes_protocol::{Attachment, Event, Failure, TranscriptionPlan};
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use super::ProviderError;
use super::attempts::{self, Attempt, Request};
use super::classify::shorten;

/// The transcript of `attachment` (its bytes in `bytes`), retrying what is worth
/// retrying, until `deadline`.
pub async fn transcribe(
    client: &reqwest::Client,
    plan: &TranscriptionPlan,
    attachment: &Attachment,
    bytes: Vec<u8>,
    deadline: Instant,
    events: &UnboundedSender<Event>,
) -> Result<String, ProviderError> {
    let label = format!("{} (transcription)", plan.provider.name);
    let mut request = Transcription {
        client,
        plan,
        attachment,
        bytes,
    };
    attempts::run(&mut request, &plan.provider, &label, deadline, events).await
}

/// One file to transcribe, as `attempts::run` sends it.
struct Transcription<'a> {
    client: &'a reqwest::Client,
    plan: &'a TranscriptionPlan,
    attachment: &'a Attachment,
    bytes: Vec<u8>,
}

impl Request for Transcription<'_> {
    type Answer = String;
    const ANSWER: &'static str = "transcription";

    async fn send(&mut self, budget: Duration) -> Result<String, Attempt> {
        let mut part = Part::bytes(self.bytes.clone()).file_name(upload_name(self.attachment));
        if let Some(mime) = &self.attachment.mime_type {
            part = part
                .mime_str(mime)
                .map_err(|e| Attempt::Protocol(format!("bad mime type {mime:?}: {e}")))?;
        }
        let form = Form::new()
            .text("model", self.plan.model.clone())
            .text("response_format", "json")
            .part("file", part);
        let response = attempts::post(
            self.client,
            &self.plan.provider,
            "audio/transcriptions",
            budget,
        )
        .multipart(form)
        .send()
        .await
        .map_err(|e| transport(&e, budget))?;
        let body = attempts::check(response, |e| transport(e, budget))
            .await?
            .text()
            .await
            .map_err(|e| transport(&e, budget))?;
        let value: Value = serde_json::from_str(&body).map_err(|_| {
            Attempt::Protocol(format!("the answer is not JSON: {}", shorten(&body)))
        })?;
        match value.get("text").and_then(Value::as_str) {
            Some(text) => Ok(text.trim().to_string()),
            None => Err(Attempt::Protocol("the answer has no text".into())),
        }
    }

    /// A recording has no history to trim: the provider refuses it.
    fn context_too_long(
        &mut self,
        provider: &str,
        status: u16,
        detail: String,
    ) -> Result<(), Failure> {
        Err(Failure::ProviderRejected {
            provider: provider.to_string(),
            status,
            detail,
        })
    }
}

fn transport(error: &reqwest::Error, budget: Duration) -> Attempt {
    if error.is_timeout() {
        Attempt::TimedOut(budget)
    } else {
        Attempt::Transport(format!(
            "transcription request failed: {}",
            hermes_retry::root_cause(error)
        ))
    }
}

/// The name the file is uploaded under: providers decide the format by its extension,
/// and Telegram's voice notes are Ogg Opus (`.oga`, which some refuse: `.ogg` is the
/// same format under the name they take).
fn upload_name(attachment: &Attachment) -> String {
    let name = attachment.file_name.as_str();
    match name.rsplit_once('.') {
        Some((stem, "oga")) => format!("{stem}.ogg"),
        Some(_) => name.to_string(),
        None => format!("{name}.ogg"),
    }
}
