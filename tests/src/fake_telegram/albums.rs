//! Albums and long pastes as users send them. The Bot API delivers an album as one
//! `message` update per photo or document, each carrying the same `media_group_id` (the
//! caption on the member it was written on), and nothing says how many members there are;
//! so does this fake, one update per [`Album`] call, which a test may spread over several
//! `getUpdates` answers as Telegram may. As on Telegram, an album has 2 to 10 members, and
//! documents are grouped only with documents. A text past Telegram's 4,096-character limit
//! is sent by its clients as several messages ([`split_paste`]).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use super::{FakeFile, FakeTelegram, files::document_field};

/// The most members an album has (`sendMediaGroup`'s 2-10, and what clients send).
pub const MAX_ALBUM: usize = 10;
/// Telegram's limit on a message's text, in UTF-16 code units.
pub const MAX_MESSAGE_TEXT: usize = 4096;

static NEXT_GROUP: AtomicU64 = AtomicU64::new(13_000_000_000_000_001);

/// An album a user is sending: each call adds one member, delivered as its own update.
pub struct Album {
    telegram: FakeTelegram,
    chat_id: i64,
    user_id: i64,
    /// The `media_group_id` every member carries.
    pub media_group_id: String,
    /// `photo` or `document`: what its members are.
    field: Option<&'static str>,
    members: usize,
}

impl FakeTelegram {
    /// A new album of `user_id` in `chat_id`; its members are sent one by one.
    pub fn album(&self, chat_id: i64, user_id: i64) -> Album {
        Album {
            telegram: self.clone(),
            chat_id,
            user_id,
            media_group_id: NEXT_GROUP.fetch_add(1, Ordering::Relaxed).to_string(),
            field: None,
            members: 0,
        }
    }
}

impl Album {
    /// A photo member (its sizes smallest first), with an optional caption. Returns the
    /// update id and the photo's files.
    pub fn photo(&mut self, sizes: &[&[u8]], caption: Option<&str>) -> (i64, Vec<FakeFile>) {
        let (photo, files) = self.telegram.photo_sizes(sizes);
        (self.member("photo", photo, caption), files)
    }

    /// A document member. Returns the update id.
    pub fn document(
        &mut self,
        name: &str,
        mime: Option<&str>,
        bytes: &[u8],
        caption: Option<&str>,
    ) -> i64 {
        let file = self.telegram.add_file(bytes);
        self.member("document", document_field(name, mime, &file), caption)
    }

    fn member(&mut self, field: &'static str, value: Value, caption: Option<&str>) -> i64 {
        assert!(
            self.members < MAX_ALBUM,
            "an album has at most {MAX_ALBUM} members"
        );
        match self.field {
            Some(kind) if (kind == "document") != (field == "document") => {
                panic!("Telegram groups documents only with documents, not with a {field}")
            }
            _ => self.field = Some(field),
        }
        self.members += 1;
        let mut message =
            self.telegram
                .media_message(self.chat_id, self.user_id, field, value, caption);
        message["media_group_id"] = json!(self.media_group_id);
        self.telegram.push_update(json!({ "message": message }))
    }
}

impl Drop for Album {
    fn drop(&mut self) {
        if self.members == 1 && !std::thread::panicking() {
            panic!("an album has at least 2 members; send a lone photo with send_photo");
        }
    }
}

/// `text` as Telegram's clients send a paste past the limit: parts of at most 4,096
/// UTF-16 code units, in order, each full but the last.
pub fn split_paste(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut units = 0;
    for c in text.chars() {
        if units + c.len_utf16() > MAX_MESSAGE_TEXT {
            parts.push(std::mem::take(&mut part));
            units = 0;
        }
        part.push(c);
        units += c.len_utf16();
    }
    if !part.is_empty() {
        parts.push(part);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_albums_members_are_separate_updates_with_one_media_group_id() {
        let fake = FakeTelegram::start().await;
        let mut album = fake.album(5, 5);
        let (first, _) = album.photo(&[b"one"], Some("both"));
        let (second, _) = album.photo(&[b"two"], None);
        assert_eq!(second, first + 1);
        let pending = fake.state.lock().pending.clone();
        let groups: Vec<&Value> = pending
            .iter()
            .map(|(_, u)| &u["message"]["media_group_id"])
            .collect();
        assert_eq!(groups, [&json!(album.media_group_id); 2]);
        assert_eq!(pending[0].1["message"]["caption"], "both");
        assert!(pending[1].1["message"].get("caption").is_none());
    }

    #[test]
    #[should_panic(expected = "documents only with documents")]
    fn documents_and_photos_are_not_one_album() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let fake = rt.block_on(FakeTelegram::start());
        let mut album = fake.album(5, 5);
        album.photo(&[b"one"], None);
        album.document("a.txt", None, b"a", None);
    }

    #[test]
    fn a_long_paste_is_split_at_the_limit() {
        let parts = split_paste(&"é".repeat(6000));
        assert_eq!(
            parts.iter().map(|p| p.chars().count()).collect::<Vec<_>>(),
            [4096, 1904]
        );
        let emoji = split_paste(&"😀".repeat(2049));
        assert_eq!(emoji[0].chars().count(), 2048, "two UTF-16 units each");
    }
}
