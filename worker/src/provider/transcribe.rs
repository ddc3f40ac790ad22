//! Voice notes and audio into text: an OpenAI-compatible `POST
//! {base_url}/audio/transcriptions` (multipart: the file and `model`), with the
//! `[transcription]` provider's key. Its failures are the chat's failures: the same
//! [`classify`] decides what an error answer means (402 quota, 401 key, 429 with
//! `Retry-After`, 5xx), the same retry policy and the job's deadline apply, and the user
//! reads the same plain words.

use std::time::{Duration, Instant, SystemTime};

use hermes_protocol::{Attachment, Event, Failure, TranscriptionPlan};
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use super::classify::{Verdict, classify, describe, shorten};
use super::{ProviderError, gave_up, retry};

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
    let provider = plan.provider.name.clone();
    let mut retries = 0u32;
    let mut attempt = 0u32;
    let mut protocol_retried = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ProviderError::Deadline);
        }
        attempt += 1;
        let _ = events.send(Event::Attempt {
            provider: format!("{provider} (transcription)"),
            attempt,
        });
        let budget = Duration::from_millis(plan.provider.request_timeout_ms).min(deadline - now);
        let (verdict, detail, retry_after) =
            match send_once(client, plan, attachment, bytes.clone(), budget).await {
                Ok(text) => return Ok(text),
                Err(Failed::Status {
                    status,
                    body,
                    retry_after,
                }) => {
                    let detail = describe(status, &body);
                    match classify(status, &body) {
                        Verdict::Quota => {
                            return fail(Failure::QuotaExhausted { provider, detail });
                        }
                        Verdict::Auth => {
                            return fail(Failure::ProviderAuth {
                                provider,
                                status,
                                detail,
                            });
                        }
                        Verdict::Rejected | Verdict::ContextTooLong => {
                            return fail(Failure::ProviderRejected {
                                provider,
                                status,
                                detail,
                            });
                        }
                        v @ (Verdict::RateLimited | Verdict::Unavailable) => {
                            (v, detail, retry_after)
                        }
                    }
                }
                Err(Failed::Protocol(detail)) if !protocol_retried => {
                    protocol_retried = true;
                    tracing::info!(
                        provider,
                        "unreadable transcription ({detail}); retrying once"
                    );
                    continue;
                }
                Err(Failed::Protocol(detail)) => {
                    return fail(Failure::ProviderProtocol { provider, detail });
                }
                Err(Failed::TimedOut) if Instant::now() >= deadline => {
                    return Err(ProviderError::Deadline);
                }
                Err(Failed::TimedOut) => (
                    Verdict::Unavailable,
                    format!("no answer within {:.0} s", budget.as_secs_f64()),
                    None,
                ),
                Err(Failed::Transport(detail)) => (Verdict::Unavailable, detail, None),
            };
        let give_up = || gave_up(verdict, &provider, &detail);
        if retries >= plan.provider.max_retries {
            return fail(give_up());
        }
        retries += 1;
        let wait = retry::delay(retries, retry_after);
        if Instant::now() + wait >= deadline {
            return fail(give_up());
        }
        let _ = events.send(Event::Retrying {
            provider: format!("{provider} (transcription)"),
            after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            reason: detail.clone(),
        });
        tokio::time::sleep(wait).await;
    }
}

fn fail(failure: Failure) -> Result<String, ProviderError> {
    Err(ProviderError::Failed(failure))
}

enum Failed {
    Status {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    Transport(String),
    TimedOut,
    Protocol(String),
}

async fn send_once(
    client: &reqwest::Client,
    plan: &TranscriptionPlan,
    attachment: &Attachment,
    bytes: Vec<u8>,
    budget: Duration,
) -> Result<String, Failed> {
    let mut part = Part::bytes(bytes).file_name(upload_name(attachment));
    if let Some(mime) = &attachment.mime_type {
        part = part
            .mime_str(mime)
            .map_err(|e| Failed::Protocol(format!("bad mime type {mime:?}: {e}")))?;
    }
    let form = Form::new()
        .text("model", plan.model.clone())
        .text("response_format", "json")
        .part("file", part);
    let mut request = client
        .post(format!(
            "{}/audio/transcriptions",
            plan.provider.base_url.trim_end_matches('/')
        ))
        .timeout(budget)
        .multipart(form);
    if let Some(key) = &plan.provider.api_key {
        request = request.bearer_auth(key.expose());
    }
    let response = request.send().await.map_err(|e| transport(&e))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
    let body = response.text().await.map_err(|e| transport(&e))?;
    if !(200..300).contains(&status) {
        return Err(Failed::Status {
            status,
            body,
            retry_after,
        });
    }
    let value: Value = serde_json::from_str(&body)
        .map_err(|_| Failed::Protocol(format!("the answer is not JSON: {}", shorten(&body))))?;
    match value.get("text").and_then(Value::as_str) {
        Some(text) => Ok(text.trim().to_string()),
        None => Err(Failed::Protocol("the answer has no text".into())),
    }
}

fn transport(error: &reqwest::Error) -> Failed {
    if error.is_timeout() {
        Failed::TimedOut
    } else {
        Failed::Transport(format!(
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
