//! `POST /v1/audio/transcriptions` and image content parts, as strict as OpenAI's API.
//!
//! A transcription request must be `multipart/form-data` with a `model` field and a `file`
//! part that has a file name in a format the API takes (by its extension: flac, m4a, mp3,
//! mp4, mpeg, mpga, oga, ogg, wav, webm); anything else gets OpenAI's 400. With nothing
//! scripted the transcript is the file's own bytes read as text, so a test "says" what its
//! voice note holds. Scripted answers ([`FakeProvider::push_transcription`]) may be any
//! [`ProviderReply`] (a text, a status such as the seed 402, a hang).
//!
//! Image parts of a chat request (`{"type": "image_url", "image_url": {"url": ...}}`) must
//! carry an `http(s)` URL or a `data:image/<png|jpeg|gif|webp>;base64,` URL with valid
//! base64, and are refused as OpenAI refuses them when the provider is set to a model
//! without vision ([`FakeProvider::set_vision`]).

use std::time::Instant;

use serde_json::{Value, json};

use super::{FakeProvider, ProviderReply, ProviderRequest, State, openai_error};
use crate::http::{Request, Response};

/// The formats OpenAI's transcription endpoint takes, by extension.
const AUDIO_FORMATS: [&str; 10] = [
    "flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm",
];

/// One part of a multipart body.
#[derive(Debug, Clone)]
pub struct FormPart {
    pub name: String,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

impl FakeProvider {
    /// Queue an answer for the next transcription request.
    pub fn push_transcription(&self, reply: ProviderReply) {
        self.state.lock().transcriptions.push_back(reply);
    }

    /// Whether the model reads images (by default it does); one that does not answers
    /// a request with an image part as OpenAI does for such a model.
    pub fn set_vision(&self, on: bool) {
        self.state.lock().no_vision = !on;
    }

    /// Every image URL the chat requests carried, in order.
    pub fn image_urls(&self) -> Vec<String> {
        self.requests()
            .iter()
            .flat_map(|r| image_urls(&r.body))
            .collect()
    }
}

/// The `image_url` URLs of a chat request's messages.
pub fn image_urls(body: &Value) -> Vec<String> {
    body.get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content")?.as_array())
        .flatten()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("image_url"))
        .filter_map(|p| p.pointer("/image_url/url")?.as_str().map(str::to_string))
        .collect()
}

/// Why OpenAI would refuse the content parts of this chat body, if it would.
pub fn content_problem(body: &Value, no_vision: bool) -> Option<Response> {
    let messages = body.get("messages")?.as_array()?;
    for (i, message) in messages.iter().enumerate() {
        let Some(parts) = message.get("content").and_then(Value::as_array) else {
            continue;
        };
        for (j, part) in parts.iter().enumerate() {
            let bad = |what: &str| {
                Some(openai_error(
                    400,
                    &format!("Invalid content part messages[{i}].content[{j}]: {what}"),
                ))
            };
            match part.get("type").and_then(Value::as_str) {
                Some("text") if part.get("text").is_some_and(Value::is_string) => {}
                Some("text") => return bad("'text' must be a string"),
                Some("image_url") => {
                    if no_vision {
                        return Some(openai_error(
                            400,
                            "Invalid content type. image_url is only supported by certain models.",
                        ));
                    }
                    let Some(url) = part.pointer("/image_url/url").and_then(Value::as_str) else {
                        return bad("'image_url.url' is required");
                    };
                    if !valid_image_url(url) {
                        return Some(openai_error(
                            400,
                            "You uploaded an unsupported image. Please make sure your image has of one the following formats: ['png', 'jpeg', 'gif', 'webp'].",
                        ));
                    }
                }
                _ => return bad("unknown type"),
            }
        }
    }
    None
}

fn valid_image_url(url: &str) -> bool {
    if url.starts_with("https://") || url.starts_with("http://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("data:image/") else {
        return false;
    };
    let Some((format, data)) = rest.split_once(";base64,") else {
        return false;
    };
    ["png", "jpeg", "gif", "webp"].contains(&format) && valid_base64(data)
}

fn valid_base64(data: &str) -> bool {
    !data.is_empty()
        && data.len().is_multiple_of(4)
        && data.trim_end_matches('=').len() + 2 >= data.len()
        && data
            .trim_end_matches('=')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The parts of a `multipart/form-data` body, or why it is not one.
pub fn multipart(req: &Request) -> Result<Vec<FormPart>, String> {
    let content_type = req.header("content-type").unwrap_or_default();
    let (kind, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(format!(
            "Invalid Content-Type header ({content_type}), expected multipart/form-data."
        ));
    }
    let boundary = params
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"').to_string())
        .ok_or("no boundary in the Content-Type")?;
    let delimiter = format!("--{boundary}").into_bytes();
    let body = &req.body;
    let mut parts = Vec::new();
    let mut at = find(body, &delimiter, 0).ok_or("the body has no boundary")?;
    loop {
        at += delimiter.len();
        if body[at..].starts_with(b"--") {
            return Ok(parts);
        }
        at += 2; // CRLF
        let head_end = find(body, b"\r\n\r\n", at).ok_or("a part without headers")?;
        let head = String::from_utf8_lossy(&body[at..head_end]).to_string();
        let data_start = head_end + 4;
        let next = find(body, &delimiter, data_start).ok_or("a part without an end")?;
        let data = body[data_start..next.saturating_sub(2)].to_vec();
        let mut part = FormPart {
            name: String::new(),
            file_name: None,
            content_type: None,
            data,
        };
        for line in head.split("\r\n") {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            if name.eq_ignore_ascii_case("content-disposition") {
                for field in value.split(';').map(str::trim) {
                    if let Some(v) = field.strip_prefix("name=") {
                        part.name = v.trim_matches('"').to_string();
                    } else if let Some(v) = field.strip_prefix("filename=") {
                        part.file_name = Some(v.trim_matches('"').to_string());
                    }
                }
            } else if name.eq_ignore_ascii_case("content-type") {
                part.content_type = Some(value.trim().to_string());
            }
        }
        parts.push(part);
        at = next;
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// What the request log keeps of a transcription request, or OpenAI's refusal.
pub fn transcription_request(req: &Request) -> Result<(Value, String), Response> {
    let parts = multipart(req).map_err(|e| openai_error(400, &e))?;
    let field = |name: &str| parts.iter().find(|p| p.name == name);
    let Some(model) = field("model") else {
        return Err(openai_error(400, "you must provide a model parameter"));
    };
    let Some(file) = field("file") else {
        return Err(openai_error(400, "Missing required parameter: 'file'."));
    };
    let file_name = file.file_name.clone().unwrap_or_default();
    let format = file_name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    let logged = json!({
        "model": String::from_utf8_lossy(&model.data),
        "file_name": file_name,
        "file_bytes": file.data.len(),
        "content_type": file.content_type,
        "response_format": field("response_format").map(|p| String::from_utf8_lossy(&p.data).to_string()),
    });
    if !AUDIO_FORMATS.contains(&format.as_str()) {
        return Err(openai_error(
            400,
            &format!(
                "Invalid file format. Supported formats: {:?}",
                AUDIO_FORMATS
            ),
        ));
    }
    Ok((
        logged,
        String::from_utf8_lossy(&file.data).trim().to_string(),
    ))
}

/// A transcription answer: `{"text": ...}`.
pub fn transcript(text: &str) -> Response {
    Response::json(200, &json!({ "text": text }))
}

impl State {
    /// `POST /v1/audio/transcriptions`.
    pub(super) async fn transcription(&self, req: Request) -> Response {
        let path = req.path_only().to_string();
        let checked = if req.method.eq_ignore_ascii_case("POST") {
            transcription_request(&req)
        } else {
            Err(openai_error(405, "Method not allowed"))
        };
        let refusal = self.key_problem(req.header("authorization"));
        let (logged, said) = match &checked {
            Ok((logged, said)) => (logged.clone(), said.clone()),
            Err(_) => (
                Value::String(String::from_utf8_lossy(&req.body).into_owned()),
                String::new(),
            ),
        };
        let scripted = {
            let mut g = self.lock();
            g.requests.push(ProviderRequest {
                at: Instant::now(),
                path,
                authorization: req.header("authorization").map(str::to_string),
                body: logged,
            });
            if refusal.is_none() && checked.is_ok() {
                g.transcriptions.pop_front()
            } else {
                None
            }
        };
        self.changed.send_replace(());
        if let Some(refusal) = refusal {
            return refusal;
        }
        if let Err(refusal) = checked {
            return refusal;
        }
        match scripted {
            None => transcript(&said),
            Some(ProviderReply::Text(text)) => transcript(&text),
            Some(ProviderReply::Status {
                status,
                headers,
                body,
            }) => Response::new(status, headers, body),
            Some(ProviderReply::Hang) => Response::Hang,
            Some(ProviderReply::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                transcript(&said)
            }
            Some(ProviderReply::Reset) => Response::Reset,
            Some(ProviderReply::RawBody(raw)) => Response::with_type(200, "application/json", raw),
            Some(ProviderReply::Json(value)) => Response::json(200, &value),
            Some(other) => openai_error(500, &format!("not a transcription answer: {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::API_KEY;
    use super::*;
    use reqwest::multipart::{Form, Part};

    fn form(file_name: &str, bytes: &[u8], model: bool) -> Form {
        let mut form = Form::new().part(
            "file",
            Part::bytes(bytes.to_vec()).file_name(file_name.to_string()),
        );
        if model {
            form = form.text("model", "whisper-1");
        }
        form
    }

    /// The transcript of an accepted file is its bytes as text; a missing model, an
    /// unsupported format, a JSON body and a wrong key are refused as OpenAI refuses them.
    #[tokio::test]
    async fn transcriptions_are_as_strict_as_openai() {
        let fake = FakeProvider::start().await;
        let url = format!("{}/audio/transcriptions", fake.base_url());
        let client = reqwest::Client::new();
        let post = |form: Form| {
            client
                .post(&url)
                .bearer_auth(API_KEY)
                .multipart(form)
                .send()
        };
        let ok = post(form("voice.ogg", b"hi there", true)).await.unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(
            ok.json::<Value>().await.unwrap(),
            json!({"text": "hi there"})
        );
        for (form, needle) in [
            (form("voice.ogg", b"x", false), "model"),
            (form("voice.oga.exe", b"x", true), "Invalid file format"),
        ] {
            let refused = post(form).await.unwrap();
            assert_eq!(refused.status(), 400);
            assert!(refused.text().await.unwrap().contains(needle), "{needle}");
        }
        let json_body = client
            .post(&url)
            .bearer_auth(API_KEY)
            .json(&json!({"model": "whisper-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(json_body.status(), 400);
        let no_key = client
            .post(&url)
            .multipart(form("voice.ogg", b"x", true))
            .send()
            .await
            .unwrap();
        assert_eq!(no_key.status(), 401);
        fake.push_transcription(ProviderReply::seed_402());
        assert_eq!(post(form("a.mp3", b"x", true)).await.unwrap().status(), 402);
    }

    #[test]
    fn image_parts_must_be_valid_images_for_a_model_with_vision() {
        let body = |url: &str| {
            json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "what?"},
                {"type": "image_url", "image_url": {"url": url}},
            ]}]})
        };
        assert!(content_problem(&body("data:image/png;base64,AAAA"), false).is_none());
        assert!(content_problem(&body("data:image/png;base64,AAAA"), true).is_some());
        assert!(content_problem(&body("data:image/png;base64,A@A="), false).is_some());
        assert!(content_problem(&body("data:image/tiff;base64,AAAA"), false).is_some());
        assert!(content_problem(&body("file:///etc/passwd"), false).is_some());
        assert!(
            content_problem(
                &json!({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}),
                false
            )
            .is_some()
        );
    }
}
