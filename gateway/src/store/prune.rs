//! Forgetting what is no longer needed, on a schedule, so a bot that runs for a year has
//! a store the size of its recent weeks (invariant 6: nothing grows without a bound).
//!
//! What goes: inbox rows answered and delivered more than [`KEEP_INBOX`] ago (a row
//! outlives Telegram's 24 hours of redelivery by days, so a message delivered again is
//! still known by its chat and message id); unparsed updates older than
//! [`KEEP_UNPARSED`]; turns of conversations a `/new` ended, older than
//! [`KEEP_PAST_CONVERSATIONS`]; and in every conversation the turns past the newest
//! [`KEEP_TURNS`], more than `agent.max_history_messages` may ever send. Deleting runs in
//! short batches, each its own transaction, so the gateway's own writes never wait behind
//! a long one.

use std::time::Duration;

use rusqlite::params;

use super::{Store, StoreError, now};

const DAY: i64 = 24 * 60 * 60;
pub const KEEP_INBOX: i64 = 7 * DAY;
pub const KEEP_UNPARSED: i64 = 30 * DAY;
pub const KEEP_PAST_CONVERSATIONS: i64 = 30 * DAY;
/// The most history a job may be sent is 1,000 messages (`agent.max_history_messages`).
pub const KEEP_TURNS: i64 = 1_000;
/// Rows deleted per transaction.
const BATCH: i64 = 500;
/// How often the gateway prunes.
pub const EVERY: Duration = Duration::from_secs(6 * 60 * 60);
/// When it first prunes after starting.
const FIRST_AFTER: Duration = Duration::from_secs(60);

/// What one pruning removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub inbox: usize,
    pub unparsed: usize,
    pub turns: usize,
}

impl Store {
    /// Removes what is no longer needed as of `now` (Unix seconds).
    pub fn prune_at(&self, now: i64) -> Result<Pruned, StoreError> {
        let inbox = self.delete_in_batches(
            "DELETE FROM inbox WHERE id IN (SELECT id FROM inbox
             WHERE done_at IS NOT NULL AND received_at < ?1 ORDER BY id LIMIT ?2)",
            now - KEEP_INBOX,
        )?;
        let unparsed = self.delete_in_batches(
            "DELETE FROM unparsed_updates WHERE id IN (SELECT id FROM unparsed_updates
             WHERE received_at < ?1 ORDER BY id LIMIT ?2)",
            now - KEEP_UNPARSED,
        )?;
        let mut turns = self.delete_in_batches(
            "DELETE FROM turns WHERE id IN (SELECT t.id FROM turns t
             JOIN chats c ON c.chat_id = t.chat_id AND c.thread_id = t.thread_id
             WHERE t.conversation < c.conversation AND t.at < ?1 ORDER BY t.id LIMIT ?2)",
            now - KEEP_PAST_CONVERSATIONS,
        )?;
        for (chat, thread, conversation) in self.long_conversations()? {
            turns += self.delete_in_batches_of(
                "DELETE FROM turns WHERE id IN (SELECT id FROM turns
                 WHERE chat_id = ?1 AND thread_id = ?5 AND conversation = ?2 AND id < (
                     SELECT id FROM turns WHERE chat_id = ?1 AND thread_id = ?5
                     AND conversation = ?2 ORDER BY id DESC LIMIT 1 OFFSET ?3 - 1)
                 ORDER BY id LIMIT ?4)",
                |st| st.execute(params![chat, conversation, KEEP_TURNS, BATCH, thread]),
            )?;
        }
        Ok(Pruned {
            inbox,
            unparsed,
            turns,
        })
    }

    /// Prunes as of now, logging what went.
    pub fn prune(&self) -> Result<Pruned, StoreError> {
        let pruned = self.prune_at(now())?;
        if pruned != Pruned::default() {
            tracing::info!(
                "state store pruned: {} inbox rows, {} unparsed updates, {} turns",
                pruned.inbox,
                pruned.unparsed,
                pruned.turns
            );
        }
        Ok(pruned)
    }

    /// Conversations holding more than [`KEEP_TURNS`] turns: chat, thread, number.
    fn long_conversations(&self) -> Result<Vec<(i64, i64, i64)>, StoreError> {
        let conn = self.lock();
        let mut st = self.wrap(conn.prepare_cached(
            "SELECT chat_id, thread_id, conversation FROM turns
             GROUP BY chat_id, thread_id, conversation HAVING count(*) > ?1",
        ))?;
        let rows =
            self.wrap(st.query_map([KEEP_TURNS], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))?;
        self.wrap(rows.collect())
    }

    fn delete_in_batches(&self, sql: &str, before: i64) -> Result<usize, StoreError> {
        self.delete_in_batches_of(sql, |st| st.execute(params![before, BATCH]))
    }

    /// Runs `delete` (which removes at most [`BATCH`] rows) until it removes fewer, each
    /// run its own transaction with the lock let go in between.
    fn delete_in_batches_of(
        &self,
        sql: &str,
        delete: impl Fn(&mut rusqlite::CachedStatement<'_>) -> rusqlite::Result<usize>,
    ) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let removed = {
                let mut conn = self.lock();
                let tx = self.wrap(conn.transaction())?;
                let removed =
                    self.wrap(tx.prepare_cached(sql).and_then(|mut st| delete(&mut st)))?;
                self.commit(tx)?;
                removed
            };
            total += removed;
            if removed < BATCH as usize {
                return Ok(total);
            }
        }
    }
}

/// Prunes a minute after start-up (not on its path: the first poll and the messages a
/// previous run left come first) and then every [`EVERY`], on the blocking pool (a batch
/// may take a few milliseconds), until `stop`. A failure is logged and tried again at the
/// next round.
pub async fn on_schedule(store: std::sync::Arc<Store>, stop: tokio_util::sync::CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep(FIRST_AFTER) => {}
    }
    loop {
        let pruning = store.clone();
        match tokio::task::spawn_blocking(move || pruning.prune()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("cannot prune the state store ({e}); trying again later"),
            Err(e) => tracing::warn!("pruning the state store stopped ({e}); trying again later"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
