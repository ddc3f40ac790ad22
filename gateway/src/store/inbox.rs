//! The inbox: every text message Telegram delivered, stored with the offset that
//! acknowledges it before that offset is sent. A message waits here until its chat takes
//! it into a turn ([`Store::take_turn`]: all the chat's waiting messages at once, so a
//! burst becomes one question); it is answered once a reply for it is committed to the
//! outbox, and done once that reply reached the chat (see [`super::outbox`]). So the
//! backlog of a busy chat lives here, not in memory, and a restart loses none of it.
//!
//! A stranger's message (someone not in `telegram.allowed_users`) is kept only as far as
//! its reply needs: who wrote, and where; never its text. Updates the Bot API client
//! cannot parse are kept whole in a table of their own.

use rusqlite::params;

use super::{Store, StoreError, now};
use crate::media::MediaRef;
use crate::replied::Replied;

/// What an inbox row is, decided when it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// A message (or a command) for the chat's next turn.
    #[default]
    Message,
    /// `/stop`: about the job in flight, never part of a turn.
    Stop,
    /// From someone not allowed: answered with their id, its text not kept.
    Stranger,
    /// Something the bot cannot use (a sticker, a location, …; `text` says what):
    /// answered with what it understands.
    Unsupported,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Stop => "stop",
            Kind::Stranger => "stranger",
            Kind::Unsupported => "unsupported",
        }
    }

    fn parse(s: &str) -> Kind {
        match s {
            "stop" => Kind::Stop,
            "stranger" => Kind::Stranger,
            "unsupported" => Kind::Unsupported,
            _ => Kind::Message,
        }
    }
}

/// An update waiting for (or being given) its answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pending {
    /// Its inbox row, in arrival order: given by the store as it keeps the message (0
    /// before). Not Telegram's `update_id`, which starts over at a random lower number
    /// after a quiet week, and at 1 when a local Bot API server restarts.
    pub id: i64,
    /// Telegram's id of the message in its chat: with the chat, what tells a message
    /// delivered again from a new one.
    pub message_id: i64,
    pub chat_id: i64,
    pub user_id: u64,
    /// The text, or a file's caption.
    pub text: String,
    pub kind: Kind,
    /// Its job's start is counted as it is stored: its chat is idle, so the job starts at
    /// once, and the store is written once for both (the turn that takes it then writes
    /// nothing). Only a gateway that dies between the two counts a start that did not
    /// happen.
    pub counted: bool,
    /// The voice note, photo or file the message carries.
    pub media: Option<MediaRef>,
    /// The album it is part of (Telegram's `media_group_id`).
    pub media_group: Option<String>,
    /// What it replies to, as the turn takes it along.
    pub replied: Option<Replied>,
}

/// A message taken into a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// Its inbox row ([`Pending::id`]).
    pub id: i64,
    pub user_id: u64,
    pub text: String,
    pub media: Option<MediaRef>,
    pub replied: Option<Replied>,
    /// Jobs started for it before this one (by this run or earlier ones) that ended
    /// without an answer.
    pub earlier_attempts: u32,
}

fn encode_media(media: &MediaRef) -> Option<String> {
    serde_json::to_string(media).ok()
}

/// A stored reference; one this build cannot read is logged and dropped (the message is
/// then answered from its caption alone).
fn decode_media(json: Option<String>) -> Option<MediaRef> {
    let json = json?;
    match serde_json::from_str(&json) {
        Ok(media) => Some(media),
        Err(e) => {
            tracing::warn!("an unreadable media reference in the inbox ({e}): {json}");
            None
        }
    }
}

fn encode_replied(replied: &Replied) -> Option<String> {
    serde_json::to_string(replied).ok()
}

/// What a reply was to; one this build cannot read is logged and dropped (the message is
/// then asked without it).
fn decode_replied(json: Option<String>) -> Option<Replied> {
    let json = json?;
    match serde_json::from_str(&json) {
        Ok(replied) => Some(replied),
        Err(e) => {
            tracing::warn!("an unreadable reply context in the inbox ({e})");
            None
        }
    }
}

/// An update the Bot API client could not parse, as Telegram sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unparsed {
    pub update_id: i64,
    pub raw: String,
}

impl Store {
    /// Stores a batch of updates to answer and the updates that could not be parsed, in
    /// one transaction: after this returns, acknowledging the batch to Telegram is safe.
    /// Each new message gets its row id; one already stored (the same message of the same
    /// chat, delivered again because its acknowledgement was lost) is taken out of
    /// `messages`, so it is answered once. (A stranger's message comes without its text:
    /// `chats::classify` drops it.)
    pub fn accept(
        &self,
        messages: &mut Vec<Pending>,
        unparsed: &[Unparsed],
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = self.wrap(conn.transaction())?;
        let at = now();
        let mut new = Vec::with_capacity(messages.len());
        for mut m in messages.drain(..) {
            let media = m.media.as_ref().and_then(encode_media);
            let replied = m.replied.as_ref().and_then(encode_replied);
            let inserted = self.wrap(tx.prepare_cached("INSERT OR IGNORE INTO inbox (message_id, chat_id, user_id, text, received_at, kind, media, attempts, media_group, replied_to) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)").and_then(|mut st| st.execute(params![m.message_id, m.chat_id, m.user_id as i64, m.text, at, m.kind.as_str(), media, i64::from(m.counted), m.media_group, replied])))?;
            if inserted == 1 {
                m.id = tx.last_insert_rowid();
                new.push(m);
            } else {
                tracing::info!(
                    chat_id = m.chat_id,
                    message_id = m.message_id,
                    "a message delivered again was already stored: answering it once"
                );
            }
        }
        for u in unparsed {
            self.wrap(tx.prepare_cached("INSERT INTO unparsed_updates (update_id, raw, received_at) VALUES (?1, ?2, ?3)").and_then(|mut st| st.execute(params![u.update_id, u.raw, at])))?;
        }
        self.commit(tx)?;
        *messages = new;
        Ok(())
    }

    /// Messages stored and not answered yet (no reply committed for them), oldest first:
    /// what a run finds left by the one before.
    pub fn unanswered(&self) -> Result<Vec<Pending>, StoreError> {
        let conn = self.lock();
        let mut stmt = self.wrap(conn.prepare_cached(
            "SELECT id, chat_id, user_id, text, kind, media, message_id, media_group FROM inbox
             WHERE done_at IS NULL AND answered_by IS NULL ORDER BY id",
        ))?;
        let rows = self.wrap(stmt.query_map([], |r| {
            Ok(Pending {
                id: r.get(0)?,
                // Rows of stores before schema 5 have none; nothing is delivered again
                // for them any more.
                message_id: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
                chat_id: r.get(1)?,
                user_id: r.get::<_, i64>(2)? as u64,
                text: r.get(3)?,
                kind: Kind::parse(&r.get::<_, String>(4)?),
                counted: false,
                media: decode_media(r.get(5)?),
                media_group: r.get(7)?,
                // Read when the turn is taken.
                replied: None,
            })
        }))?;
        self.wrap(rows.collect())
    }

    /// Takes the chat's next turn from its waiting messages, oldest first, and counts a
    /// job started for each, committed before it returns (so the count survives a crash
    /// of the job and of the gateway): every waiting message up to the first command, or
    /// that command alone when it comes first. Empty when nothing waits. Messages
    /// `counted_at_arrival` (this run counted their start as it stored them, see
    /// [`Pending::counted`]) are not counted again.
    pub fn take_turn(
        &self,
        chat_id: i64,
        is_command: impl Fn(&str) -> bool,
        counted_at_arrival: impl Fn(i64) -> bool,
    ) -> Result<Vec<Taken>, StoreError> {
        let mut conn = self.lock();
        // One connection, behind this lock, and one gateway per store: nothing writes
        // between the read and the update.
        let waiting: Vec<Taken> = {
            let mut stmt = self.wrap(conn.prepare_cached(
                "SELECT id, user_id, text, attempts, media, replied_to FROM inbox
                 WHERE chat_id = ?1 AND done_at IS NULL AND answered_by IS NULL AND kind = 'message'
                 ORDER BY id",
            ))?;
            let rows = self.wrap(stmt.query_map(params![chat_id], |r| {
                Ok(Taken {
                    id: r.get(0)?,
                    user_id: r.get::<_, i64>(1)? as u64,
                    text: r.get(2)?,
                    earlier_attempts: r.get::<_, i64>(3)?.clamp(0, i64::from(u32::MAX)) as u32,
                    media: decode_media(r.get(4)?),
                    replied: decode_replied(r.get(5)?),
                })
            }))?;
            self.wrap(rows.collect())?
        };
        // A caption is never a command.
        let turn = match waiting
            .iter()
            .position(|m| m.media.is_none() && is_command(&m.text))
        {
            Some(0) => 1,
            Some(first_command) => first_command,
            None => waiting.len(),
        };
        let mut taken = waiting;
        taken.truncate(turn);
        let mut to_count = Vec::new();
        for m in &mut taken {
            if counted_at_arrival(m.id) {
                m.earlier_attempts = m.earlier_attempts.saturating_sub(1);
            } else {
                to_count.push(m.id);
            }
        }
        if to_count.is_empty() {
            return Ok(taken);
        }
        let tx = self.wrap(conn.transaction())?;
        for row in to_count {
            self.wrap(
                tx.prepare_cached("UPDATE inbox SET attempts = attempts + 1 WHERE id = ?1")
                    .and_then(|mut st| st.execute(params![row])),
            )?;
        }
        self.commit(tx)?;
        Ok(taken)
    }

    /// The chat's waiting messages (not taken into a turn, no reply committed) up to and
    /// including row `through`.
    pub fn waiting(&self, chat_id: i64, through: i64) -> Result<Vec<i64>, StoreError> {
        let conn = self.lock();
        let mut stmt = self.wrap(conn.prepare_cached(
            "SELECT id FROM inbox
             WHERE chat_id = ?1 AND done_at IS NULL AND answered_by IS NULL AND kind = 'message'
             AND id <= ?2 ORDER BY id",
        ))?;
        let rows = self.wrap(stmt.query_map(params![chat_id, through], |r| r.get(0)))?;
        self.wrap(rows.collect())
    }

    /// The raw JSON of every update kept because it could not be parsed, oldest first.
    #[cfg(test)]
    pub fn unparsed(&self) -> Result<Vec<Unparsed>, StoreError> {
        let conn = self.lock();
        let mut stmt = self
            .wrap(conn.prepare_cached("SELECT update_id, raw FROM unparsed_updates ORDER BY id"))?;
        let rows = self.wrap(stmt.query_map([], |r| {
            Ok(Unparsed {
                update_id: r.get(0)?,
                raw: r.get(1)?,
            })
        }))?;
        self.wrap(rows.collect())
    }
}
