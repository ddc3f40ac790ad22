//! The outbox: every reply the gateway will send, committed before any of it is sent and
//! kept until Telegram accepted or refused each piece.
//!
//! A reply is committed in one transaction with everything it settles: the messages it
//! answers (marked answered, so no turn takes them again), and for a model's answer the
//! exchange added to the conversation. Each piece then leaves the outbox once Telegram
//! accepted it (or refused it for good): its row is deleted by the store's next
//! transaction, whichever it is ([`Store::piece_left`]), or on its own by
//! [`Store::record_left`], which the outbox calls before a chat's next piece goes and
//! shortly after its last. So a crash can only ever find one piece of a chat sent and
//! still here, and send it again, and under load a delivered piece costs no commit of its
//! own (a third of the store's commits per message, otherwise). When a reply's last piece
//! has left, the messages it answers are done: that is read from the outbox (no piece of
//! their reply left), not written; the next start writes `done_at` for them
//! ([`Store::outbox`]).

use rusqlite::{Transaction, params};

use super::{Exchange, Store, StoreError, now};
use crate::files_back::OutFile;
use crate::topics::Place;

/// One piece of a reply as stored: Telegram HTML, the same text without markup, and
/// whether it replaces a message already shown (a streamed answer's preview).
///
/// A reply sent as a rich message is its rich piece (`rich`: the Markdown), then its HTML
/// pieces marked `fallback`: sent only when Telegram refused the rich one, and leaving the
/// outbox with it when it accepted it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutPiece {
    pub html: String,
    pub plain: String,
    /// Edit this message to show the piece, or send it anew if it cannot be edited. For
    /// a rich piece: the preview to delete once it is sent.
    pub edit_message_id: Option<i32>,
    /// Sent as one rich message of this Markdown (`sendRichMessage`).
    pub rich: Option<String>,
    /// Part of the HTML form of the rich piece before it.
    pub fallback: bool,
    /// A file to send (`sendPhoto`/`sendDocument`) instead of text.
    pub file: Option<OutFile>,
}

/// A reply to commit.
pub struct ReplyRecord<'a> {
    pub chat_id: i64,
    /// The topic it goes to; the question it keeps is that topic's.
    pub thread: Option<i32>,
    /// The inbox rows it answers (none for a notice that answers nothing).
    pub answers: &'a [i64],
    /// Its text, kept with each row it answers.
    pub text: &'a str,
    pub pieces: &'a [OutPiece],
    /// A model's answer: added to the conversation in the same transaction.
    pub exchange: Option<&'a Exchange>,
    /// The question a job asked for these rows, for `/retry`.
    pub question: Option<&'a str>,
}

/// A piece in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: i64,
    /// The reply it belongs to: the id of the reply's first piece.
    pub reply: i64,
    pub chat_id: i64,
    pub thread: Option<i32>,
    pub piece: OutPiece,
    /// Unix seconds.
    pub created_at: i64,
}

impl Store {
    /// Commits `record`: its pieces into the outbox, the rows it answers marked answered
    /// (done at once when it has no pieces), the exchange and the question kept. Returns
    /// the pieces as stored, in order.
    pub fn commit_reply(&self, record: &ReplyRecord) -> Result<Vec<Stored>, StoreError> {
        let mut conn = self.lock();
        let tx = self.wrap(conn.transaction())?;
        let at = now();
        let thread = Place::new(record.chat_id, record.thread).thread_key();
        if let Some(exchange) = record.exchange {
            self.wrap(Store::add_exchange(&tx, exchange, at))?;
        }
        if let Some(question) = record.question {
            self.wrap(
                tx.prepare_cached(
                    "INSERT INTO chats (chat_id, thread_id, last_question) VALUES (?1, ?2, ?3)
                     ON CONFLICT (chat_id, thread_id)
                     DO UPDATE SET last_question = excluded.last_question",
                )
                .and_then(|mut st| st.execute(params![record.chat_id, thread, question])),
            )?;
        }
        let mut stored = Vec::with_capacity(record.pieces.len());
        let mut reply = None;
        for piece in record.pieces {
            let id = self.wrap(
                tx.prepare_cached(
                    "INSERT INTO outbox (reply, chat_id, html, plain, edit_message_id, created_at,
                     file, rich, fallback, thread_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .and_then(|mut st| {
                    st.insert(params![
                        reply,
                        record.chat_id,
                        piece.html,
                        piece.plain,
                        piece.edit_message_id,
                        at,
                        piece
                            .file
                            .as_ref()
                            .and_then(|f| serde_json::to_string(f).ok()),
                        piece.rich,
                        piece.fallback,
                        thread
                    ])
                }),
            )?;
            if let Some(message_id) = piece.edit_message_id {
                self.wrap(Store::preview_replaced(&tx, record.chat_id, message_id))?;
            }
            let reply_id = *reply.get_or_insert(id);
            stored.push(Stored {
                id,
                reply: reply_id,
                chat_id: record.chat_id,
                thread: Place::new(record.chat_id, record.thread).thread,
                piece: piece.clone(),
                created_at: at,
            });
        }
        for row in record.answers {
            self.wrap(
                tx.prepare_cached(
                    "UPDATE inbox SET answered_by = ?2, reply = ?3,
                     done_at = CASE WHEN ?2 IS NULL THEN ?4 ELSE NULL END WHERE id = ?1",
                )
                .and_then(|mut st| st.execute(params![row, reply, record.text, at])),
            )?;
        }
        self.commit(tx)?;
        Ok(stored)
    }

    /// Piece `id` reached its chat, or was refused or dropped for good: it leaves the
    /// outbox with the next transaction. Once its reply has no piece left, the rows that
    /// reply answers are done.
    pub fn piece_left(&self, id: i64) {
        super::lock(&self.left).push(id);
    }

    /// Removes the pieces that left from the outbox now (and adds the usage due), unless
    /// another transaction already did.
    pub fn record_left(&self) -> Result<(), StoreError> {
        let mut conn = self.lock();
        if super::lock(&self.left).is_empty() && super::lock(&self.usage_due).is_empty() {
            return Ok(());
        }
        let tx = self.wrap(conn.transaction())?;
        self.commit(tx)
    }

    /// Whether inbox row `row` is done: answered by a reply that has no piece left
    /// to send (or marked done when it was answered without one).
    #[cfg(test)]
    pub fn is_done(&self, row: i64) -> Result<bool, StoreError> {
        let conn = self.lock();
        self.wrap(conn.query_row(
            "SELECT done_at IS NOT NULL OR (answered_by IS NOT NULL AND answered_by NOT IN
             (SELECT coalesce(reply, id) FROM outbox)) FROM inbox WHERE id = ?1",
            params![row],
            |r| r.get(0),
        ))
    }

    /// Every piece still to send, in the order it was committed. Rows whose reply has no
    /// piece left (delivered by an earlier run) get their `done_at` first.
    pub fn outbox(&self) -> Result<Vec<Stored>, StoreError> {
        let mut conn = self.lock();
        let tx = self.wrap(conn.transaction())?;
        self.wrap(tx.execute(
            "UPDATE inbox SET done_at = ?1 WHERE done_at IS NULL AND answered_by IS NOT NULL
             AND answered_by NOT IN (SELECT coalesce(reply, id) FROM outbox)",
            params![now()],
        ))?;
        let pieces: Vec<Stored> = {
            let mut stmt = self.wrap(tx.prepare(
                "SELECT id, coalesce(reply, id), chat_id, html, plain, edit_message_id, created_at,
                 file, rich, fallback, thread_id FROM outbox ORDER BY id",
            ))?;
            let rows = self.wrap(stmt.query_map([], |r| {
                let chat_id = r.get(2)?;
                Ok(Stored {
                    id: r.get(0)?,
                    reply: r.get(1)?,
                    chat_id,
                    thread: Place::from_key(chat_id, r.get(10)?).thread,
                    piece: OutPiece {
                        html: r.get(3)?,
                        plain: r.get(4)?,
                        edit_message_id: r.get(5)?,
                        // A file that cannot be read back is sent as its (empty) text:
                        // nothing; its file goes as an orphan at start-up.
                        file: r
                            .get::<_, Option<String>>(7)?
                            .and_then(|f| serde_json::from_str(&f).ok()),
                        rich: r.get(8)?,
                        fallback: r.get(9)?,
                    },
                    created_at: r.get(6)?,
                })
            }))?;
            self.wrap(rows.collect())?
        };
        self.commit(tx)?;
        Ok(pieces)
    }

    /// A group became a supergroup (`from` → `to`): its conversation, its settings, its
    /// waiting messages and its outbox move to the new id.
    pub fn migrate_chat(&self, from: i64, to: i64) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = self.wrap(conn.transaction())?;
        self.wrap(migrate(&tx, from, to))?;
        self.commit(tx)
    }
}

fn migrate(tx: &Transaction, from: i64, to: i64) -> rusqlite::Result<()> {
    // The new chat's own row wins if it has one: messages may already have come from it.
    tx.execute(
        "UPDATE OR IGNORE chats SET chat_id = ?2 WHERE chat_id = ?1",
        params![from, to],
    )?;
    tx.execute("DELETE FROM chats WHERE chat_id = ?1", params![from])?;
    tx.execute(
        "UPDATE turns SET chat_id = ?2 WHERE chat_id = ?1",
        params![from, to],
    )?;
    tx.execute(
        "UPDATE outbox SET chat_id = ?2 WHERE chat_id = ?1",
        params![from, to],
    )?;
    tx.execute(
        "UPDATE inbox SET chat_id = ?2 WHERE chat_id = ?1 AND done_at IS NULL",
        params![from, to],
    )?;
    Ok(())
}
