//! Files as the Bot API serves them, for voice notes, photos and documents.
//!
//! A test adds a file's bytes and sends a message that carries it (a voice note, a photo
//! in several sizes, a document with its name and type). The bot then calls `getFile`
//! with the message's `file_id`, as strictly as Telegram answers it (an unknown id is
//! "invalid file_id"; a file over the Bot API's 20 MB is "file is too big"), and
//! downloads `GET /file/bot<token>/<file_path>`, which is the only way to the bytes and
//! holds the token, so only the gateway can make it. Every download is logged. A file
//! may state a size that is not its own (Telegram's is usually right; a test of the
//! download's own bound needs one that is not), and its body may come in chunks with
//! no length announced, so the client cannot know the size before reading it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::chats::entities_of;
use super::{FakeTelegram, State, TOKEN, api_error, ok, unix_now};
use crate::http::{Chunk, Request, Response};

/// The most the Bot API lets a bot download (`getFile`).
pub const MAX_DOWNLOAD_BYTES: u64 = 20 * 1024 * 1024;

/// A file Telegram holds.
#[derive(Debug, Clone)]
pub struct FakeFile {
    pub file_id: String,
    pub unique_id: String,
    pub path: String,
    pub bytes: Vec<u8>,
    /// What messages and `getFile` say its size is; `None`: they omit it.
    pub stated_size: Option<u64>,
    pub body: Body,
}

/// How a file's bytes are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// With a `Content-Length`, whole.
    Whole,
    /// Chunked, without a length: the client learns the size only by reading it.
    Chunked,
    /// A `Content-Length` 1 MiB past the bytes, the bytes, then nothing more, ever: a
    /// client that reads on waits until its own time bound.
    NeverEnds,
}

impl FakeFile {
    /// The `file_id`/`file_unique_id`/`file_size` fields a message's object carries.
    fn meta(&self) -> Value {
        let mut meta = json!({"file_id": self.file_id, "file_unique_id": self.unique_id});
        if let Some(size) = self.stated_size {
            meta["file_size"] = json!(size);
        }
        meta
    }
}

/// One download of a file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDownload {
    pub path: String,
    pub at: Instant,
}

impl FakeTelegram {
    /// Adds a file with `bytes`, stating its true size; returns it.
    pub fn add_file(&self, bytes: &[u8]) -> FakeFile {
        self.add_file_stating(bytes, Some(bytes.len() as u64), Body::Whole)
    }

    /// Adds a file that states `stated_size` (`None`: no size), served as `body` says.
    pub fn add_file_stating(&self, bytes: &[u8], stated_size: Option<u64>, body: Body) -> FakeFile {
        let mut g = self.state.lock();
        g.last_file += 1;
        let n = g.last_file;
        let file = FakeFile {
            file_id: format!("BQACAgIAAxkBAAI{n:05}"),
            unique_id: format!("AgAD{n:05}"),
            path: format!("documents/file_{n}"),
            bytes: bytes.to_vec(),
            stated_size,
            body,
        };
        g.files.push(file.clone());
        file
    }

    /// A voice note (Ogg Opus, `duration` seconds) whose bytes are `bytes`. Returns the
    /// update id.
    pub fn send_voice(&self, chat_id: i64, user_id: i64, bytes: &[u8], duration: u32) -> i64 {
        let file = self.add_file(bytes);
        self.send_voice_file(chat_id, user_id, &file, duration)
    }

    pub fn send_voice_file(
        &self,
        chat_id: i64,
        user_id: i64,
        file: &FakeFile,
        duration: u32,
    ) -> i64 {
        let mut voice = file.meta();
        voice["duration"] = json!(duration);
        voice["mime_type"] = json!("audio/ogg");
        self.send_media(chat_id, user_id, "voice", voice, None)
    }

    /// A photo in the sizes given (smallest first, as Telegram lists them), with an
    /// optional caption. Returns the update id and the files, in the same order.
    pub fn send_photo(
        &self,
        chat_id: i64,
        user_id: i64,
        sizes: &[&[u8]],
        caption: Option<&str>,
    ) -> (i64, Vec<FakeFile>) {
        let (photo, files) = self.photo_sizes(sizes);
        let id = self.send_media(chat_id, user_id, "photo", photo, caption);
        (id, files)
    }

    /// A photo's `photo` field (its sizes, smallest first) and its files.
    pub(super) fn photo_sizes(&self, sizes: &[&[u8]]) -> (Value, Vec<FakeFile>) {
        let files: Vec<FakeFile> = sizes.iter().map(|b| self.add_file(b)).collect();
        let photo: Vec<Value> = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut size = f.meta();
                let side = 90 * (i as u64 + 1);
                size["width"] = json!(side);
                size["height"] = json!(side);
                size
            })
            .collect();
        (Value::Array(photo), files)
    }

    /// A document named `name` of type `mime` (if any). Returns the update id.
    pub fn send_document(
        &self,
        chat_id: i64,
        user_id: i64,
        name: &str,
        mime: Option<&str>,
        bytes: &[u8],
        caption: Option<&str>,
    ) -> i64 {
        let file = self.add_file(bytes);
        self.send_document_file(chat_id, user_id, name, mime, &file, caption)
    }

    pub fn send_document_file(
        &self,
        chat_id: i64,
        user_id: i64,
        name: &str,
        mime: Option<&str>,
        file: &FakeFile,
        caption: Option<&str>,
    ) -> i64 {
        self.send_media(
            chat_id,
            user_id,
            "document",
            document_field(name, mime, file),
            caption,
        )
    }

    /// A sticker (a static WebP one, as Telegram describes it). Returns the update id.
    pub fn send_sticker(&self, chat_id: i64, user_id: i64) -> i64 {
        let file = self.add_file(b"RIFF....WEBP");
        let mut sticker = file.meta();
        for (k, v) in [
            ("type", json!("regular")),
            ("width", json!(512)),
            ("height", json!(512)),
            ("is_animated", json!(false)),
            ("is_video", json!(false)),
            ("emoji", json!("👍")),
        ] {
            sticker[k] = v;
        }
        self.send_media(chat_id, user_id, "sticker", sticker, None)
    }

    /// A shared location. Returns the update id.
    pub fn send_location(&self, chat_id: i64, user_id: i64) -> i64 {
        self.send_media(
            chat_id,
            user_id,
            "location",
            json!({"latitude": 52.52, "longitude": 13.405}),
            None,
        )
    }

    /// The user edits their message `message_id` to `text`: an `edited_message` update
    /// (queued only if the bot's `allowed_updates` asks for them). Returns the update id.
    pub fn edit_user_message(
        &self,
        chat_id: i64,
        user_id: i64,
        message_id: i64,
        text: &str,
    ) -> i64 {
        let chat = self.state.lock().chat(chat_id);
        self.push_update(json!({"edited_message": {
            "message_id": message_id,
            "date": unix_now(),
            "edit_date": unix_now(),
            "chat": chat,
            "from": {"id": user_id, "is_bot": false, "first_name": "Test"},
            "text": text,
        }}))
    }

    /// While `on`, every download is reset before a byte is sent (Telegram's file server
    /// unreachable).
    pub fn fail_downloads(&self, on: bool) {
        self.state.lock().downloads_fail = on;
    }

    /// Every download of a file's bytes, in order.
    pub fn downloads(&self) -> Vec<FileDownload> {
        self.state.lock().downloads.clone()
    }

    fn send_media(
        &self,
        chat_id: i64,
        user_id: i64,
        field: &str,
        value: Value,
        caption: Option<&str>,
    ) -> i64 {
        let message = self.media_message(chat_id, user_id, field, value, caption);
        self.push_update(json!({ "message": message }))
    }

    /// A new message of `user_id` in `chat_id` carrying `value` as its `field`, not sent.
    pub(super) fn media_message(
        &self,
        chat_id: i64,
        user_id: i64,
        field: &str,
        value: Value,
        caption: Option<&str>,
    ) -> Value {
        let mut g = self.state.lock();
        g.last_message_id += 1;
        let mut message = json!({
            "message_id": g.last_message_id,
            "date": unix_now(),
            "chat": g.chat(chat_id),
            "from": {"id": user_id, "is_bot": false, "first_name": "Test"},
        });
        message[field] = value;
        if let Some(caption) = caption {
            message["caption"] = json!(caption);
            // Clients mark a caption's mentions as they do a text's.
            let entities = entities_of(caption);
            if !entities.is_empty() {
                message["caption_entities"] = Value::Array(entities);
            }
        }
        message
    }
}

/// A document's `document` field.
pub(super) fn document_field(name: &str, mime: Option<&str>, file: &FakeFile) -> Value {
    let mut document = file.meta();
    document["file_name"] = json!(name);
    if let Some(mime) = mime {
        document["mime_type"] = json!(mime);
    }
    document
}

impl State {
    /// `getFile`: the file's `file_path` for the download, as the Bot API answers.
    pub(super) fn get_file(&self, params: &Value) -> Response {
        let Some(file_id) = params.get("file_id").and_then(Value::as_str) else {
            return api_error(400, "Bad Request: file_id not specified", None);
        };
        let g = self.lock();
        let Some(file) = g.files.iter().find(|f| f.file_id == file_id) else {
            return api_error(400, "Bad Request: invalid file_id", None);
        };
        if file.bytes.len() as u64 > MAX_DOWNLOAD_BYTES {
            return api_error(400, "Bad Request: file is too big", None);
        }
        let mut answer = file.meta();
        answer["file_path"] = json!(file.path);
        ok(answer)
    }

    /// `GET /file/bot<token>/<file_path>`: the bytes, or the 404 Telegram gives for a
    /// wrong token or path.
    pub(super) fn download(&self, req: &Request, rest: &str) -> Response {
        let not_found = || api_error(404, "Not Found", None);
        let Some((token, path)) = rest.split_once('/') else {
            return not_found();
        };
        if !req.method.eq_ignore_ascii_case("GET") {
            return not_found();
        }
        if token != TOKEN {
            self.lock().unauthorized += 1;
            self.bump();
            return not_found();
        }
        let mut g = self.lock();
        let Some(file) = g.files.iter().find(|f| f.path == path).cloned() else {
            return not_found();
        };
        g.downloads.push(FileDownload {
            path: path.to_string(),
            at: Instant::now(),
        });
        let fail = g.downloads_fail;
        drop(g);
        self.bump();
        if fail {
            return Response::Reset;
        }
        let content_type = vec![(
            "Content-Type".to_string(),
            "application/octet-stream".to_string(),
        )];
        match file.body {
            Body::Chunked => Response::Stream {
                status: 200,
                headers: content_type,
                chunks: file
                    .bytes
                    .chunks(64 * 1024)
                    .map(|piece| Chunk {
                        after: Duration::ZERO,
                        data: piece.to_vec(),
                    })
                    .collect(),
                complete: true,
            },
            Body::NeverEnds => Response::PartialBodyThenHang {
                status: 200,
                headers: content_type,
                declared_len: file.bytes.len() + 1024 * 1024,
                body_prefix: file.bytes,
            },
            Body::Whole => Response::new(200, content_type, file.bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use teloxide_core::net::Download;
    use teloxide_core::prelude::Requester;
    use teloxide_core::types::FileId;

    fn bot(fake: &FakeTelegram, token: &str) -> teloxide_core::Bot {
        teloxide_core::Bot::with_client(token, reqwest::Client::new())
            .set_api_url(reqwest::Url::parse(&fake.api_url()).unwrap())
    }

    /// teloxide reads a voice note as Telegram sends it, gets its path, and downloads the
    /// bytes; a wrong id, a wrong token and a file over 20 MB are refused as Telegram
    /// refuses them.
    #[tokio::test]
    async fn files_are_fetched_as_the_bot_api_serves_them() {
        let fake = FakeTelegram::start().await;
        let id = fake.send_voice(5, 5, b"hello there", 3);
        let updates = bot(&fake, TOKEN).get_updates().await.unwrap();
        let update = updates.iter().find(|u| u.id.0 as i64 == id).unwrap();
        let teloxide_core::types::UpdateKind::Message(message) = &update.kind else {
            panic!("{update:?}")
        };
        let voice = message.voice().expect("a voice note");
        assert_eq!(voice.duration.seconds(), 3);
        let file = bot(&fake, TOKEN)
            .get_file(voice.file.id.clone())
            .await
            .unwrap();
        assert_eq!(file.meta.size, 11);
        let mut bytes = Vec::new();
        bot(&fake, TOKEN)
            .download_file(&file.path, &mut bytes)
            .await
            .unwrap();
        assert_eq!(bytes, b"hello there");
        assert_eq!(fake.downloads().len(), 1);

        let err = bot(&fake, TOKEN)
            .get_file(FileId("nope".into()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid file_id"), "{err}");
        let mut sink = Vec::new();
        assert!(
            bot(&fake, "1:WRONG")
                .download_file(&file.path, &mut sink)
                .await
                .is_err()
        );
        assert!(sink.is_empty());
        let huge = fake.add_file(&vec![0; MAX_DOWNLOAD_BYTES as usize + 1]);
        let err = bot(&fake, TOKEN)
            .get_file(FileId(huge.file_id))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("file is too big"), "{err}");
    }
}
