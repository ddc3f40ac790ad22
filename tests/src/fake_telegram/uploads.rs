//! Files the bot sends: `sendDocument` and `sendPhoto` as multipart uploads (what
//! teloxide sends for a local file: the field says `attach://<part>`, the part holds the
//! file and its name), recorded with the chat, the file's name and its
//! bytes (and its topic, as strictly as [`super::topics`] checks it). As strict as
//! Telegram where it matters here: a photo must be a JPEG, PNG or
//! WebP whose width and height add up to at most 10000 and differ by at most a factor of
//! 20, or it is refused with Telegram's words (400); a file needs its field and may not
//! be empty. A test can
//! make uploads fail with 500 for a while ([`FakeTelegram::fail_uploads`]), or have their
//! connection reset ([`FakeTelegram::reset_uploads`]).

use std::time::{Duration, Instant};

use serde_json::json;

use super::{ApiCall, FakeTelegram, Request, Response, State, api_error, bot_user, ok, unix_now};

/// A file the bot delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// `sendDocument` or `sendPhoto`.
    pub method: String,
    pub chat_id: i64,
    /// The topic it was sent into (see `fake_telegram::topics`).
    pub thread: Option<i64>,
    pub file_name: String,
    pub bytes: Vec<u8>,
    pub at: Instant,
}

/// What the fake keeps of uploads.
#[derive(Default)]
pub(super) struct Uploads {
    done: Vec<Upload>,
    /// Upload attempts answered 500 before this one, in order.
    failed: usize,
    /// The next this many uploads are answered 500 (or reset, `reset`).
    to_fail: usize,
    reset: bool,
}

impl FakeTelegram {
    /// Every file delivered, in order.
    pub fn uploads(&self) -> Vec<Upload> {
        self.state.lock().uploads.done.clone()
    }

    /// Upload attempts answered 500 so far.
    pub fn failed_uploads(&self) -> usize {
        self.state.lock().uploads.failed
    }

    /// Answers the next `n` uploads with 500 (Telegram failing on the way). teloxide
    /// waits 10 s after any 5xx before it returns the error, so each costs that.
    pub fn fail_uploads(&self, n: usize) {
        let mut g = self.state.lock();
        g.uploads.to_fail = n;
        g.uploads.reset = false;
    }

    /// Resets the connection of the next `n` uploads before answering (the network
    /// failing on the way), which costs the client no pause.
    pub fn reset_uploads(&self, n: usize) {
        let mut g = self.state.lock();
        g.uploads.to_fail = n;
        g.uploads.reset = true;
    }

    /// Waits until at least `n` files were delivered.
    pub async fn wait_for_uploads(&self, n: usize, timeout: Duration) -> Vec<Upload> {
        self.state
            .wait_until(timeout, |g| (g.uploads.done.len() >= n).then_some(()))
            .await;
        self.uploads()
    }

    /// Waits until at least `n` uploads were answered 500.
    pub async fn wait_for_failed_uploads(&self, n: usize, timeout: Duration) -> bool {
        self.state
            .wait_until(timeout, |g| (g.uploads.failed >= n).then_some(()))
            .await
            .is_some()
    }
}

impl State {
    /// `sendDocument` or `sendPhoto` (`method`, as spelled) with a multipart body.
    pub(super) fn upload(&self, method: &str, req: &Request) -> Response {
        let parts = match multipart(req) {
            Ok(parts) => parts,
            Err(e) => return api_error(400, &format!("Bad Request: {e}"), None),
        };
        let field = |name: &str| parts.iter().find(|p| p.name == name);
        let chat_id = field("chat_id")
            .and_then(|p| String::from_utf8_lossy(&p.data).trim().parse::<i64>().ok());
        let (canonical, file_field) = match method.to_ascii_lowercase().as_str() {
            "sendphoto" => ("sendPhoto", "photo"),
            _ => ("sendDocument", "document"),
        };
        let mut g = self.lock();
        g.calls.push(ApiCall {
            at: Instant::now(),
            method: method.to_string(),
            params: json!({"chat_id": chat_id}),
        });
        self.bump();
        if g.uploads.to_fail > 0 {
            g.uploads.to_fail -= 1;
            g.uploads.failed += 1;
            self.bump();
            if g.uploads.reset {
                return Response::Reset;
            }
            return api_error(500, "Internal Server Error", None);
        }
        let Some(chat_id) = chat_id else {
            return api_error(400, "Bad Request: chat_id is empty", None);
        };
        let thread = field("message_thread_id")
            .map(|p| json!({"message_thread_id": String::from_utf8_lossy(&p.data).trim()}))
            .map_or(Ok(None), |params| g.thread_to(chat_id, &params));
        let Ok(thread) = thread else {
            return api_error(400, super::topics::THREAD_NOT_FOUND, None);
        };
        // A field naming `attach://<part>` has its file in that part (teloxide sends
        // files so); otherwise the field is the file.
        let file = field(file_field).and_then(|f| {
            match String::from_utf8_lossy(&f.data).strip_prefix("attach://") {
                Some(part) => field(part),
                None => Some(f),
            }
        });
        let Some(file) = file else {
            return api_error(
                400,
                &format!("Bad Request: there is no {file_field} in the request"),
                None,
            );
        };
        if file.data.is_empty() {
            return api_error(400, "Bad Request: file must be non-empty", None);
        }
        if canonical == "sendPhoto"
            && let Err(why) = takes_as_photo(&file.data)
        {
            return api_error(400, &format!("Bad Request: {why}"), None);
        }
        g.last_message_id += 1;
        let message_id = g.last_message_id;
        let chat = g.chat(chat_id);
        let file_name = file.file_name.clone().unwrap_or_default();
        let mut message = json!({
            "message_id": message_id,
            "date": unix_now(),
            "chat": chat,
            "from": bot_user(),
        });
        if let Some(thread) = thread {
            message["message_thread_id"] = json!(thread);
            message["is_topic_message"] = json!(true);
            g.threads.insert((chat_id, message_id), thread);
        }
        let described = json!({
            "file_id": format!("sent-{message_id}"),
            "file_unique_id": format!("u-sent-{message_id}"),
            "file_size": file.data.len(),
        });
        if canonical == "sendPhoto" {
            let mut size = described;
            size["width"] = json!(1);
            size["height"] = json!(1);
            message["photo"] = json!([size]);
        } else {
            let mut document = described;
            document["file_name"] = json!(file_name);
            message["document"] = document;
        }
        g.uploads.done.push(Upload {
            method: canonical.to_string(),
            chat_id,
            thread,
            file_name,
            bytes: file.data.clone(),
            at: Instant::now(),
        });
        self.bump();
        ok(message)
    }
}

/// Telegram's rules for a photo, with its words when refused.
fn takes_as_photo(data: &[u8]) -> Result<(), &'static str> {
    let size = if data.starts_with(b"\x89PNG\r\n\x1a\n") && data.get(12..16) == Some(b"IHDR") {
        let be = |at: usize| {
            data.get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
        };
        be(16).zip(be(20))
    } else if data.starts_with(&[0xFF, 0xD8]) || data.starts_with(b"RIFF") {
        // Taken as they come: the tests send PNGs when the size matters.
        Some((1, 1))
    } else {
        return Err("IMAGE_PROCESS_FAILED");
    };
    match size {
        Some((w, h)) if w > 0 && h > 0 && w + h <= 10_000 && w.max(h) <= 20 * w.min(h) => Ok(()),
        _ => Err("PHOTO_INVALID_DIMENSIONS"),
    }
}

/// One part of a multipart body.
struct Part {
    name: String,
    file_name: Option<String>,
    data: Vec<u8>,
}

fn multipart(req: &Request) -> Result<Vec<Part>, String> {
    let content_type = req.header("content-type").unwrap_or("");
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"').to_string())
        .ok_or("multipart body without a boundary")?;
    let delimiter = format!("--{boundary}").into_bytes();
    let body = &req.body;
    let mut parts = Vec::new();
    let mut at = find(body, &delimiter, 0).ok_or("no first boundary")? + delimiter.len();
    loop {
        if body.get(at..at + 2) == Some(b"--") {
            return Ok(parts);
        }
        at += 2; // CRLF after the boundary
        let head_end = find(body, b"\r\n\r\n", at).ok_or("a part without a head")?;
        let head = String::from_utf8_lossy(&body[at..head_end]).to_string();
        let data_start = head_end + 4;
        let next = find(body, &delimiter, data_start).ok_or("a part without an end")?;
        // The CRLF before the next boundary is not the part's.
        let data = body[data_start..next.saturating_sub(2)].to_vec();
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))
            .unwrap_or("");
        let param = |key: &str| {
            disposition
                .split(';')
                .filter_map(|p| p.trim().strip_prefix(&format!("{key}=")))
                .next()
                .map(|v| v.trim_matches('"').to_string())
        };
        parts.push(Part {
            name: param("name").unwrap_or_default(),
            file_name: param("filename"),
            data,
        });
        at = next + delimiter.len();
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}
