//! The inbox: every text message Telegram delivered, stored with the offset that
//! acknowledges it before that offset is sent, and marked done once answered (see
//! [`Store::finish`]), so a message is answered once, across restarts.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, now};

/// An update waiting for (or being given) its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub update_id: i64,
    pub chat_id: i64,
    pub user_id: u64,
    pub text: String,
}

impl Store {
    /// The offset to poll from: everything before it is stored.
    pub fn next_update_id(&self) -> Result<i64, StoreError> {
        let conn = self.lock();
        self.wrap(
            conn.prepare_cached("SELECT next_update_id FROM telegram_offset WHERE id = 1")
                .and_then(|mut st| st.query_row([], |r| r.get(0)))
                .optional(),
        )
        .map(|v| v.unwrap_or(0))
    }

    /// Stores a batch of updates to answer and the offset past the whole batch, in one
    /// transaction: after this returns, acknowledging the batch to Telegram is safe.
    pub fn accept(&self, messages: &[Pending], next_update_id: i64) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = self.wrap(conn.transaction())?;
        for m in messages {
            self.wrap(tx.prepare_cached("INSERT OR IGNORE INTO inbox (update_id, chat_id, user_id, text, received_at) VALUES (?1, ?2, ?3, ?4, ?5)").and_then(|mut st| st.execute(params![m.update_id, m.chat_id, m.user_id as i64, m.text, now()])))?;
        }
        self.wrap(tx.prepare_cached("INSERT INTO telegram_offset (id, next_update_id) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET next_update_id = max(next_update_id, excluded.next_update_id)").and_then(|mut st| st.execute(params![next_update_id])))?;
        self.commit(tx)
    }

    /// Updates stored but not answered, oldest first.
    pub fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        let conn = self.lock();
        let mut stmt = self.wrap(conn.prepare_cached(
            "SELECT update_id, chat_id, user_id, text FROM inbox WHERE done_at IS NULL ORDER BY update_id",
        ))?;
        let rows = self.wrap(stmt.query_map([], |r| {
            Ok(Pending {
                update_id: r.get(0)?,
                chat_id: r.get(1)?,
                user_id: r.get::<_, i64>(2)? as u64,
                text: r.get(3)?,
            })
        }))?;
        self.wrap(rows.collect())
    }

    /// The chat's last message that was not a command, for `/retry`.
    pub fn last_user_text(&self, chat_id: i64) -> Result<Option<String>, StoreError> {
        let conn = self.lock();
        self.wrap(
            conn.prepare_cached("SELECT text FROM inbox WHERE chat_id = ?1 AND text NOT LIKE '/%' ORDER BY update_id DESC LIMIT 1").and_then(|mut st| st.query_row(params![chat_id], |r| r.get(0)))
            .optional(),
        )
    }
}
