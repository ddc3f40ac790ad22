//! The streamed previews on show: a message the gateway sent while an answer was being
//! written, which the final reply is to replace.
//!
//! A preview is recorded as soon as Telegram gives its id, and forgotten in the same
//! transaction that commits the reply replacing it ([`Store::commit_reply`]), so a reply
//! already committed (or delivered) is never mistaken for one. A preview still here at a
//! start was left by a run that was killed mid-answer: the outbox edits it to say so,
//! rather than leave a half-written answer beside the new one.

use rusqlite::{Transaction, params};

use super::{Store, StoreError};

/// A preview a run showed and no reply replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preview {
    pub chat_id: i64,
    pub message_id: i32,
}

impl Store {
    /// Message `message_id` in `chat_id` shows a preview now.
    pub fn preview_shown(&self, chat_id: i64, message_id: i32) -> Result<(), StoreError> {
        let conn = self.lock();
        self.wrap(
            conn.prepare_cached(
                "INSERT OR IGNORE INTO previews (chat_id, message_id) VALUES (?1, ?2)",
            )
            .and_then(|mut st| st.execute(params![chat_id, message_id])),
        )?;
        Ok(())
    }

    /// Message `message_id` in `chat_id` is no preview any more, though no reply that
    /// replaces it could be committed.
    pub fn preview_forgotten(&self, chat_id: i64, message_id: i32) -> Result<(), StoreError> {
        let conn = self.lock();
        self.wrap(
            conn.prepare_cached("DELETE FROM previews WHERE chat_id = ?1 AND message_id = ?2")
                .and_then(|mut st| st.execute(params![chat_id, message_id])),
        )?;
        Ok(())
    }

    /// The previews no reply replaced, oldest first.
    pub fn previews(&self) -> Result<Vec<Preview>, StoreError> {
        let conn = self.lock();
        let mut stmt = self
            .wrap(conn.prepare_cached("SELECT chat_id, message_id FROM previews ORDER BY rowid"))?;
        let rows = self.wrap(stmt.query_map([], |r| {
            Ok(Preview {
                chat_id: r.get(0)?,
                message_id: r.get(1)?,
            })
        }))?;
        self.wrap(rows.collect())
    }

    /// In `tx`, which commits a reply that replaces message `message_id`: it is no
    /// preview any more.
    pub(super) fn preview_replaced(
        tx: &Transaction,
        chat_id: i64,
        message_id: i32,
    ) -> rusqlite::Result<()> {
        tx.prepare_cached("DELETE FROM previews WHERE chat_id = ?1 AND message_id = ?2")
            .and_then(|mut st| st.execute(params![chat_id, message_id]))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{OutPiece, ReplyRecord};
    use super::*;

    fn replace(store: &Store, chat_id: i64, message_id: Option<i32>) {
        store
            .commit_reply(&ReplyRecord {
                chat_id,
                answers: &[],
                text: "done",
                pieces: &[OutPiece {
                    html: "done".into(),
                    plain: "done".into(),
                    edit_message_id: message_id,
                    file: None,
                }],
                exchange: None,
                question: None,
            })
            .unwrap();
    }

    #[test]
    fn a_preview_is_kept_until_a_reply_that_replaces_it_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.preview_shown(7, 40).unwrap();
        store.preview_shown(7, 40).unwrap();
        store.preview_shown(8, 40).unwrap();
        replace(&store, 7, None);
        replace(&store, 7, Some(41));
        assert_eq!(
            store.previews().unwrap(),
            [
                Preview {
                    chat_id: 7,
                    message_id: 40
                },
                Preview {
                    chat_id: 8,
                    message_id: 40
                }
            ]
        );
        replace(&store, 7, Some(40));
        store.preview_shown(9, 1).unwrap();
        store.preview_forgotten(9, 1).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.previews().unwrap(),
            [Preview {
                chat_id: 8,
                message_id: 40
            }],
            "what a killed run showed is still known at the next start"
        );
    }
}
