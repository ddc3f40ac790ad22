//! The chats' schedules and their runs. Only the gateway writes them: the model asks
//! through its worker, the operator lists them with `hermes-gateway schedules`.
//!
//! A run is fired in one transaction ([`Store::fire`]): its turn stored in the inbox (kind
//! 'scheduled'), the run recorded with that row, and the schedule moved to its next time
//! (or ended, for a one-off). So a gateway killed anywhere fires a run either not at all
//! or once, and a fired run is answered like any message: once, through the outbox. A
//! run is delivered when that row's reply left the outbox ([`RunCounts`]); one whose job
//! failed keeps why.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, now};

/// A schedule to keep.
pub struct NewSchedule<'a> {
    pub chat_id: i64,
    pub thread_id: Option<i64>,
    pub user_id: u64,
    pub prompt: &'a str,
    /// None: a one-off.
    pub cron: Option<&'a str>,
    pub time_zone: &'a str,
    pub next_at: i64,
}

/// A schedule as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRow {
    pub id: i64,
    pub chat_id: i64,
    pub thread_id: Option<i64>,
    pub user_id: u64,
    pub prompt: String,
    pub cron: Option<String>,
    pub time_zone: String,
    /// None once over.
    pub next_at: Option<i64>,
}

/// A run to fire: its schedule, and the time that comes after this one (None: over).
pub struct Due {
    pub schedule: ScheduleRow,
    pub then: Option<i64>,
    /// The text the turn asks.
    pub text: String,
    pub late: bool,
}

/// What became of the runs, for `status`. A run whose inbox row was pruned had been
/// done, so it counts as delivered unless it failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub active: u64,
    pub fired: u64,
    /// Their reply reached the chat.
    pub delivered: u64,
    pub failed: u64,
    pub last_failure: Option<String>,
}

const COLUMNS: &str = "id, chat_id, thread_id, user_id, prompt, cron, time_zone, next_at";

fn row(r: &rusqlite::Row) -> rusqlite::Result<ScheduleRow> {
    Ok(ScheduleRow {
        id: r.get(0)?,
        chat_id: r.get(1)?,
        thread_id: r.get(2)?,
        user_id: r.get::<_, i64>(3)? as u64,
        prompt: r.get(4)?,
        cron: r.get(5)?,
        time_zone: r.get(6)?,
        next_at: r.get(7)?,
    })
}

impl Store {
    /// Keeps `new` unless its chat already has `max` active schedules: its id, or None.
    pub fn add_schedule(&self, new: &NewSchedule, max: u32) -> Result<Option<i64>, StoreError> {
        let mut conn = self.lock();
        let tx = self.wrap(conn.transaction())?;
        let active: i64 = self.wrap(tx.query_row(
            "SELECT count(*) FROM schedules WHERE chat_id = ?1 AND next_at IS NOT NULL",
            params![new.chat_id],
            |r| r.get(0),
        ))?;
        if active >= i64::from(max) {
            return Ok(None);
        }
        self.wrap(tx.execute(
            "INSERT INTO schedules (chat_id, thread_id, user_id, prompt, cron, time_zone, next_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                new.chat_id,
                new.thread_id,
                new.user_id as i64,
                new.prompt,
                new.cron,
                new.time_zone,
                new.next_at,
                now()
            ],
        ))?;
        let id = tx.last_insert_rowid();
        self.commit(tx)?;
        Ok(Some(id))
    }

    /// The chat's active schedules, oldest first; every chat's with None.
    pub fn schedules(&self, chat_id: Option<i64>) -> Result<Vec<ScheduleRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = self.wrap(conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM schedules WHERE next_at IS NOT NULL
             AND (?1 IS NULL OR chat_id = ?1) ORDER BY id"
        )))?;
        let rows = self.wrap(stmt.query_map(params![chat_id], row))?;
        self.wrap(rows.collect())
    }

    /// Ends the chat's schedule `id`; false when the chat has no such active schedule.
    pub fn cancel_schedule(&self, chat_id: i64, id: i64) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = self.wrap(conn.transaction())?;
        let changed = self.wrap(tx.execute(
            "UPDATE schedules SET next_at = NULL, cancelled_at = ?3
             WHERE id = ?1 AND chat_id = ?2 AND next_at IS NOT NULL",
            params![id, chat_id, now()],
        ))?;
        self.commit(tx)?;
        Ok(changed == 1)
    }

    /// Schedules whose time came by `at`, oldest first.
    pub fn due_schedules(&self, at: i64) -> Result<Vec<ScheduleRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = self.wrap(conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM schedules WHERE next_at IS NOT NULL AND next_at <= ?1
             ORDER BY next_at, id"
        )))?;
        let rows = self.wrap(stmt.query_map(params![at], row))?;
        self.wrap(rows.collect())
    }

    /// Fires `due`: its turn into the inbox, the run recorded, the schedule moved on; the
    /// inbox row. With `skip` (its user is no longer allowed) only the schedule moves on.
    pub fn fire(&self, due: &Due, skip: bool) -> Result<Option<i64>, StoreError> {
        let mut conn = self.lock();
        let tx = self.wrap(conn.transaction())?;
        let at = now();
        let s = &due.schedule;
        let inbox_row = if skip {
            None
        } else {
            self.wrap(tx.execute(
                "INSERT INTO inbox (chat_id, thread_id, user_id, text, received_at, kind)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'scheduled')",
                params![
                    s.chat_id,
                    s.thread_id.unwrap_or(0),
                    s.user_id as i64,
                    due.text,
                    at
                ],
            ))?;
            let row = tx.last_insert_rowid();
            self.wrap(tx.execute(
                "INSERT INTO schedule_runs (schedule_id, chat_id, due_at, fired_at, late, inbox_row)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![s.id, s.chat_id, s.next_at, at, due.late, row],
            ))?;
            Some(row)
        };
        self.wrap(tx.execute(
            "UPDATE schedules SET next_at = ?2 WHERE id = ?1",
            params![s.id, due.then],
        ))?;
        self.commit(tx)?;
        Ok(inbox_row)
    }

    /// The runs that inbox rows `rows` are failed with `why` (the chat was told).
    pub fn runs_failed(&self, rows: &[i64], why: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = self.wrap(conn.transaction())?;
        for r in rows {
            self.wrap(
                tx.prepare_cached("UPDATE schedule_runs SET failure = ?2 WHERE inbox_row = ?1")
                    .and_then(|mut st| st.execute(params![r, why])),
            )?;
        }
        self.commit(tx)
    }

    /// Outbox piece `piece` was refused for good or dropped: a run its reply answers failed
    /// with `why` (nothing else does: the chat could not be told).
    pub fn run_undelivered(&self, piece: i64, why: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = self.wrap(conn.transaction())?;
        self.wrap(tx.execute(
            "UPDATE schedule_runs SET failure = ?2 WHERE failure IS NULL AND inbox_row IN
             (SELECT i.id FROM inbox i JOIN outbox o ON i.answered_by = coalesce(o.reply, o.id)
              WHERE o.id = ?1)",
            params![piece, why],
        ))?;
        self.commit(tx)
    }

    /// What became of the runs, for the status.
    pub fn run_counts(&self) -> Result<RunCounts, StoreError> {
        let conn = self.lock();
        let active: i64 = self.wrap(conn.query_row(
            "SELECT count(*) FROM schedules WHERE next_at IS NOT NULL",
            [],
            |r| r.get(0),
        ))?;
        let (fired, failed, delivered): (i64, i64, i64) = self.wrap(conn.query_row(
            "SELECT count(*), count(r.failure),
                    sum(r.failure IS NULL AND (i.id IS NULL OR i.done_at IS NOT NULL OR (i.answered_by IS NOT NULL
                        AND i.answered_by NOT IN (SELECT coalesce(reply, id) FROM outbox))))
             FROM schedule_runs r LEFT JOIN inbox i ON i.id = r.inbox_row",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, Option<i64>>(2)?.unwrap_or(0))),
        ))?;
        let last_failure: Option<String> = self.wrap(
            conn.query_row(
                "SELECT failure FROM schedule_runs WHERE failure IS NOT NULL ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional(),
        )?;
        Ok(RunCounts {
            active: active as u64,
            fired: fired as u64,
            delivered: delivered as u64,
            failed: failed as u64,
            last_failure,
        })
    }

    /// The chat's own time zone (`/timezone`), if it chose one.
    pub fn chat_time_zone(&self, chat_id: i64) -> Result<Option<String>, StoreError> {
        let conn = self.lock();
        self.wrap(
            conn.prepare_cached("SELECT time_zone FROM chat_time_zones WHERE chat_id = ?1")
                .and_then(|mut st| st.query_row(params![chat_id], |r| r.get(0)).optional()),
        )
    }

    pub fn set_chat_time_zone(&self, chat_id: i64, zone: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = self.wrap(conn.transaction())?;
        self.wrap(tx.execute(
            "INSERT INTO chat_time_zones (chat_id, time_zone) VALUES (?1, ?2)
             ON CONFLICT (chat_id) DO UPDATE SET time_zone = excluded.time_zone",
            params![chat_id, zone],
        ))?;
        self.commit(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{OutPiece, ReplyRecord};

    fn new(chat_id: i64, next_at: i64) -> NewSchedule<'static> {
        NewSchedule {
            chat_id,
            thread_id: None,
            user_id: 5,
            prompt: "tea",
            cron: None,
            time_zone: "UTC",
            next_at,
        }
    }

    /// A fired run is a turn of its own in the inbox, taken alone; it is delivered once
    /// its reply left the outbox, and a chat keeps at most its bound of schedules.
    #[test]
    fn a_run_is_a_turn_of_its_own_and_delivered_when_its_reply_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store.add_schedule(&new(7, 100), 2).unwrap().unwrap();
        assert!(store.add_schedule(&new(7, 100), 2).unwrap().is_some());
        assert_eq!(store.add_schedule(&new(7, 100), 2).unwrap(), None, "bound");
        assert!(
            store.add_schedule(&new(8, 100), 2).unwrap().is_some(),
            "per chat"
        );
        assert!(store.due_schedules(99).unwrap().is_empty());
        let schedule = store.due_schedules(100).unwrap().remove(0);
        assert_eq!(schedule.id, id);
        let due = Due {
            schedule,
            then: None,
            text: "⏰ #1\n\ntea".into(),
            late: false,
        };
        let row = store.fire(&due, false).unwrap().unwrap();
        assert_eq!(
            store.schedules(Some(7)).unwrap().len(),
            1,
            "the one-off ended"
        );
        let turn = store.take_turn(7, |_| false, |_| false).unwrap();
        assert_eq!(turn.len(), 1);
        assert!(turn[0].scheduled && turn[0].id == row);
        let counts = store.run_counts().unwrap();
        assert_eq!((counts.fired, counts.delivered, counts.active), (1, 0, 2));
        let stored = store
            .commit_reply(&ReplyRecord {
                chat_id: 7,
                thread: None,
                answers: &[row],
                text: "ok",
                pieces: &[OutPiece {
                    html: "ok".into(),
                    plain: "ok".into(),
                    edit_message_id: None,
                    file: None,
                    rich: None,
                    fallback: false,
                }],
                exchange: None,
                question: None,
            })
            .unwrap();
        assert_eq!(store.run_counts().unwrap().delivered, 0, "not sent yet");
        store.piece_left(stored[0].id);
        store.record_left().unwrap();
        assert_eq!(store.run_counts().unwrap().delivered, 1);
        assert!(
            store.cancel_schedule(8, id).is_ok_and(|c| !c),
            "another chat's"
        );
        store.runs_failed(&[row], "boom").unwrap();
        store.run_undelivered(stored[0].id, "not this").unwrap();
        let counts = store.run_counts().unwrap();
        assert_eq!((counts.delivered, counts.failed), (0, 1));
        assert_eq!(counts.last_failure.as_deref(), Some("boom"));
        // A run whose answer Telegram refused for good failed, though its piece left.
        let due = Due {
            schedule: store.due_schedules(100).unwrap().remove(0),
            then: None,
            text: "⏰ #2\n\ntea".into(),
            late: false,
        };
        let row = store.fire(&due, false).unwrap().unwrap();
        let stored = store
            .commit_reply(&ReplyRecord {
                chat_id: 7,
                thread: None,
                answers: &[row],
                text: "ok",
                pieces: &[OutPiece {
                    html: "ok".into(),
                    plain: "ok".into(),
                    edit_message_id: None,
                    file: None,
                    rich: None,
                    fallback: false,
                }],
                exchange: None,
                question: None,
            })
            .unwrap();
        store.run_undelivered(stored[0].id, "blocked").unwrap();
        store.piece_left(stored[0].id);
        store.record_left().unwrap();
        let counts = store.run_counts().unwrap();
        assert_eq!((counts.fired, counts.delivered, counts.failed), (2, 0, 2));
        assert_eq!(counts.last_failure.as_deref(), Some("blocked"));
    }
}
