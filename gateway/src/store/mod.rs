//! Durable state in SQLite (`state.db` in the state directory): the inbox of updates, the
//! outbox of replies, and the conversations.
//!
//! The inbox is what makes "no message is lost" true (DESIGN.md invariant 5): an update is
//! committed here before the offset that acknowledges it is ever sent to Telegram. The outbox makes the answer as durable as the question
//! (invariant 8): a reply is committed here, tied to the messages it answers, before any
//! of it is sent, and each piece leaves it once Telegram accepted or refused it for good;
//! a message is done only when its whole reply is. A gateway killed anywhere in between
//! finds the message waiting, or its reply waiting, when it starts again, and goes on
//! from there: the message is answered once.
//!
//! The schema is versioned. A file written by a newer version is refused (the operator
//! must not lose data to a downgrade); a file SQLite cannot read is moved aside and a fresh
//! one started, with a loud log line saying what it held.
//!
//! Whether the store takes writes is reported as it happens ([`crate::health::StoreWrites`]:
//! every error, and every commit that clears it), so the status says when it does not.
//! An error says whether it can pass by itself ([`StoreError::is_transient`]): a busy,
//! full or failing disk is retried (or restarted from), a file the operator must deal
//! with is not.
//!
//! This module opens, migrates and guards the file; [`inbox`], [`outbox`],
//! [`conversation`] and [`usage`] (what the providers' calls used) are what is kept in it, [`checkpoint`] keeps the write-ahead log
//! short off the async thread, [`prune`] forgets what is no longer needed, and
//! [`schedules`] keeps the chats' schedules and their runs.

mod attempts;
mod checkpoint;
mod conversation;
mod inbox;
mod outbox;
mod previews;
mod prune;
mod schedules;
#[cfg(test)]
mod tests;
mod usage;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::health::StoreWrites;
use checkpoint::Checkpointer;
pub use conversation::Exchange;
pub use inbox::{Kind, Pending, Taken, Unparsed};
pub use outbox::{OutPiece, ReplyRecord, Stored};
pub use previews::Preview;
pub use prune::on_schedule as prune_on_schedule;
use rusqlite::Connection;
pub use schedules::{Due, NewSchedule, RunCounts, ScheduleRow};
pub use usage::{Days, Totals, UsageReader};

/// The schema this build writes. Bump it with a new entry in [`MIGRATIONS`].
pub const SCHEMA_VERSION: i64 = 12;

/// What [`MIGRATIONS`] make of an empty store, made in one step on a new one (checked
/// against them in `tests.rs`).
const SCHEMA: &str = include_str!("schema.sql");

/// `MIGRATIONS[n]` takes a store from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE telegram_offset (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        next_update_id INTEGER NOT NULL
    );
    CREATE TABLE inbox (
        update_id INTEGER PRIMARY KEY,
        chat_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        text TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        done_at INTEGER,
        reply TEXT
    );
    CREATE INDEX inbox_pending ON inbox (update_id) WHERE done_at IS NULL;
    CREATE INDEX inbox_by_chat ON inbox (chat_id, update_id);
    CREATE TABLE chats (
        chat_id INTEGER PRIMARY KEY,
        conversation INTEGER NOT NULL DEFAULT 1
    );
    CREATE TABLE turns (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        chat_id INTEGER NOT NULL,
        conversation INTEGER NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        at INTEGER NOT NULL,
        provider TEXT,
        model TEXT
    );
    CREATE INDEX turns_by_chat ON turns (chat_id, conversation, id);
"#,
    // 2: tool calls and their results are turns too (`tool_calls` as JSON on the
    // assistant's turn, `tool_call_id` on the result); a chat may pick its provider.
    r#"
    ALTER TABLE turns ADD COLUMN tool_calls TEXT;
    ALTER TABLE turns ADD COLUMN tool_call_id TEXT;
    ALTER TABLE chats ADD COLUMN provider TEXT;
"#,
    // 3: delivery. The outbox holds every reply piece until Telegram accepted or refused
    // it (`reply` is NULL on a reply's first piece, whose id names the reply, and that id
    // on the others; `edit_message_id`: edit that message, or send anew if it cannot be
    // edited). An inbox row knows its kind (a stranger's keeps no text), the jobs started
    // for it, and the reply that answers it; it is done once that reply is delivered (no
    // piece of it left in the outbox; `done_at` is written at the next start).
    // Updates the Bot API client cannot parse are kept whole. A chat remembers the
    // question it last asked, for `/retry`.
    r#"
    ALTER TABLE inbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'message';
    ALTER TABLE inbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE inbox ADD COLUMN answered_by INTEGER;
    DROP INDEX inbox_pending;
    DROP INDEX inbox_by_chat;
    CREATE INDEX inbox_waiting ON inbox (chat_id, update_id)
        WHERE done_at IS NULL AND answered_by IS NULL;
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        reply INTEGER,
        chat_id INTEGER NOT NULL,
        html TEXT NOT NULL,
        plain TEXT NOT NULL,
        edit_message_id INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE unparsed_updates (
        update_id INTEGER PRIMARY KEY,
        raw TEXT NOT NULL,
        received_at INTEGER NOT NULL
    );
    ALTER TABLE chats ADD COLUMN last_question TEXT;
"#,
    // 4: media. A message with a voice note, photo or file keeps what Telegram said about
    // it (`media`: JSON of `media::MediaRef`: kind, file_id, size, type, name, duration;
    // never the bytes), so it is fetched again and answered after a restart; its caption
    // is its `text`. A message the bot cannot use (a sticker, a location) has kind
    // 'unsupported' and `text` saying what it was.
    r#"
    ALTER TABLE inbox ADD COLUMN media TEXT;
"#,
    // 5: Telegram's update_id is no key. It starts over lower after a quiet week (and at 1
    // when a local Bot API server restarts), so a reused id was dropped as a duplicate. An
    // inbox row's id is now its own, in arrival order (old rows keep theirs, new ones
    // count on from the highest), and a message delivered twice is known by its chat and
    // message id. The offset is no longer kept: every run starts from what Telegram has
    // not had acknowledged (`telegram::poller`). Unparsed updates get a row id too.
    r#"
    ALTER TABLE inbox RENAME COLUMN update_id TO id;
    ALTER TABLE inbox ADD COLUMN message_id INTEGER;
    CREATE UNIQUE INDEX inbox_message ON inbox (chat_id, message_id)
        WHERE message_id IS NOT NULL;
    DROP TABLE telegram_offset;
    CREATE TABLE unparsed (
        id INTEGER PRIMARY KEY,
        update_id INTEGER NOT NULL,
        raw TEXT NOT NULL,
        received_at INTEGER NOT NULL
    );
    INSERT INTO unparsed (update_id, raw, received_at)
        SELECT update_id, raw, received_at FROM unparsed_updates ORDER BY update_id;
    DROP TABLE unparsed_updates;
    ALTER TABLE unparsed RENAME TO unparsed_updates;
"#,
    // 6: the streamed previews on show (`previews`: the chat and the message), each until
    // a reply that replaces it is committed; one left at a start is what a killed run
    // showed, and is edited to say it was interrupted.
    r#"
    CREATE TABLE previews (
        chat_id INTEGER NOT NULL,
        message_id INTEGER NOT NULL,
        PRIMARY KEY (chat_id, message_id)
    );
"#,
    // 7: files back to the user. An outbox piece may be a file (`file`: JSON of
    // `files_back::OutFile`: its path in the state directory's `outgoing/`, the name the
    // chat sees, photo or document); its text columns are then empty.
    r#"
    ALTER TABLE outbox ADD COLUMN file TEXT;
"#,
    // 8: what the providers' calls used (`usage`), summed per user, chat, provider and
    // calendar day in `budgets.time_zone` (`YYYY-MM-DD`): tokens, the cost where known (in
    // millionths of a dollar) and the calls whose cost is not. Read by user and day range
    // for the budgets and `/usage`, by day range for everyone's.
    r#"
    CREATE TABLE usage_daily (
        user_id INTEGER NOT NULL,
        chat_id INTEGER NOT NULL,
        provider TEXT NOT NULL,
        day TEXT NOT NULL,
        calls INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        cost_micros INTEGER NOT NULL,
        uncosted_calls INTEGER NOT NULL,
        PRIMARY KEY (user_id, day, chat_id, provider)
    );
    CREATE INDEX usage_by_day ON usage_daily (day);
"#,
    // 9: albums and replies. A message of an album keeps its `media_group_id`, so one
    // found waiting at a start is still waited with for the rest of its album; a reply
    // keeps what it replies to (`replied_to`: JSON of `replied::Replied`: who wrote it,
    // the quoted text, its photo or document's reference), so its turn carries it after a
    // restart too.
    r#"
    ALTER TABLE inbox ADD COLUMN media_group TEXT;
    ALTER TABLE inbox ADD COLUMN replied_to TEXT;
"#,
    // 10: rich messages in the outbox: a piece sent as one rich message (`rich`: its
    // Markdown), and the HTML pieces sent in its place only if Telegram refuses it
    // (`fallback`).
    r#"
    ALTER TABLE outbox ADD COLUMN rich TEXT;
    ALTER TABLE outbox ADD COLUMN fallback INTEGER NOT NULL DEFAULT 0;
"#,
    // 11: schedules (`store::schedules`). A schedule belongs to a chat (and a topic:
    // `thread_id`), asks `prompt` at `next_at` (Unix seconds; NULL once it is over: a
    // one-off that fired, or one cancelled), again and again when it has a `cron`
    // expression, read in its `time_zone`. Each run is a row of `schedule_runs`, tied to
    // the inbox row (kind 'scheduled') it became; a chat may choose its own time zone.
    r#"
    CREATE TABLE schedules (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        chat_id INTEGER NOT NULL,
        thread_id INTEGER,
        user_id INTEGER NOT NULL,
        prompt TEXT NOT NULL,
        cron TEXT,
        time_zone TEXT NOT NULL,
        next_at INTEGER,
        created_at INTEGER NOT NULL,
        cancelled_at INTEGER
    );
    CREATE INDEX schedules_due ON schedules (next_at) WHERE next_at IS NOT NULL;
    CREATE INDEX schedules_by_chat ON schedules (chat_id, id);
    CREATE TABLE schedule_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        schedule_id INTEGER NOT NULL,
        chat_id INTEGER NOT NULL,
        due_at INTEGER NOT NULL,
        fired_at INTEGER NOT NULL,
        late INTEGER NOT NULL,
        inbox_row INTEGER,
        failure TEXT
    );
    CREATE INDEX schedule_runs_by_row ON schedule_runs (inbox_row);
    CREATE TABLE chat_time_zones (
        chat_id INTEGER PRIMARY KEY,
        time_zone TEXT NOT NULL
    );
"#,
    // 12: topics are conversations (`topics::Place`). What is kept per conversation is
    // keyed by the chat and its topic (`thread_id`, 0 for none: the General topic, or a
    // chat without topics, so every conversation before this is its chat's General
    // topic's): the waiting messages, the turns, and a chat's numbered conversation,
    // `/model` choice and last question (`chats` is rebuilt with the key, its rows kept
    // as thread 0's). Every outbox piece and preview keeps the topic it goes to, so a
    // restart still answers there.
    r#"
    ALTER TABLE inbox ADD COLUMN thread_id INTEGER NOT NULL DEFAULT 0;
    DROP INDEX inbox_waiting;
    CREATE INDEX inbox_waiting ON inbox (chat_id, thread_id, id)
        WHERE done_at IS NULL AND answered_by IS NULL;
    ALTER TABLE turns ADD COLUMN thread_id INTEGER NOT NULL DEFAULT 0;
    DROP INDEX turns_by_chat;
    CREATE INDEX turns_by_chat ON turns (chat_id, thread_id, conversation, id);
    ALTER TABLE outbox ADD COLUMN thread_id INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE previews ADD COLUMN thread_id INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE chats_by_thread (
        chat_id INTEGER NOT NULL,
        thread_id INTEGER NOT NULL DEFAULT 0,
        conversation INTEGER NOT NULL DEFAULT 1,
        provider TEXT,
        last_question TEXT,
        PRIMARY KEY (chat_id, thread_id)
    );
    INSERT INTO chats_by_thread (chat_id, conversation, provider, last_question)
        SELECT chat_id, conversation, provider, last_question FROM chats;
    DROP TABLE chats;
    ALTER TABLE chats_by_thread RENAME TO chats;
"#,
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{path} was written by a newer hermes-gateway (schema {found}, this build knows up to {SCHEMA_VERSION}); upgrade hermes-gateway or point state.dir elsewhere"
    )]
    TooNew { path: String, found: i64 },
    #[error("state store {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// Whether the error can pass by itself (the database busy or locked by another
    /// process, the disk full or failing, memory short, no file descriptor or inode left
    /// to open it with), as opposed to what the operator must fix: a store of a newer
    /// version, a file the gateway may not write. Anything SQLite does not say is
    /// permanent counts as transient (its "cannot open" too: the state directory was
    /// claimed, so it is writable, and what is left is a full disk or descriptor table):
    /// giving up on a passing error leaves the bot silent, retrying a lasting one only
    /// repeats its log line.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::TooNew { .. } => false,
            StoreError::Sqlite { source, .. } => !matches!(
                source.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::ReadOnly
                        | rusqlite::ErrorCode::PermissionDenied
                        | rusqlite::ErrorCode::AuthorizationForStatementDenied
                )
            ),
        }
    }
}

pub struct Store {
    /// Shared with the checkpointer, which holds it to let the log start over.
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// None when its thread could not start: SQLite then checkpoints on its own.
    checkpointer: Option<Checkpointer>,
    /// Outbox pieces that left (delivered, or refused for good) and are still in the
    /// table: removed by the next transaction, whatever it commits (see [`outbox`]).
    left: Mutex<Vec<i64>>,
    /// Usage of ended jobs, added by the next transaction that commits ([`usage`]).
    usage_due: Mutex<Vec<usage::UsageRow>>,
    /// Told of every error and every commit, for the health report.
    writes: Arc<StoreWrites>,
}

fn now() -> i64 {
    i64::try_from(crate::clock::unix_now()).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating or migrating) `dir/state.db`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("state.db");
        // SQLite removes a log it cannot use when the failed connection closes, so the log
        // of a store that turns out unreadable is held by a second name until the open is
        // over (a hard link: no copy, and the log itself is untouched).
        let wal = dir.join("state.db-wal");
        let held_wal = dir.join("state.db-wal.opening");
        let _ = std::fs::remove_file(&held_wal);
        let holding = std::fs::hard_link(&wal, &held_wal).is_ok();
        let opened = Store::open_at(&path);
        match opened {
            Err(StoreError::Sqlite { source, .. }) if is_corruption(&source) => {
                let aside = dir.join(format!("state.db.corrupt-{}", now()));
                let held = describe_corrupt(&path);
                tracing::error!(
                    "STATE STORE UNREADABLE ({source}): moved {} to {} and starting with an empty store. It held: {held}",
                    path.display(),
                    aside.display()
                );
                let _ = std::fs::rename(&path, &aside);
                // The log may hold the newest commits: it goes with the copy, where SQLite
                // looks for it (`<db>-wal`), so the copy opens with them. The shared
                // memory index is rebuilt from the log; it only goes.
                let aside_wal = PathBuf::from(format!("{}-wal", aside.display()));
                if holding {
                    let _ = std::fs::rename(&held_wal, &aside_wal);
                }
                let _ = std::fs::remove_file(&wal);
                let _ = std::fs::remove_file(dir.join("state.db-shm"));
                Store::open_at(&path)
            }
            other => {
                let _ = std::fs::remove_file(&held_wal);
                other
            }
        }
    }

    fn open_at(path: &Path) -> Result<Store, StoreError> {
        let err = |source| StoreError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        // A new store has nothing to lose: it is made without waiting for the disk (its
        // first fsyncs waited behind other writes for tens of milliseconds on the way to
        // the first poll), then written as every store is (`synchronous = NORMAL`: what a
        // power cut can take is what it could take of any commit before a checkpoint). A
        // crash while it is made leaves an unreadable file, which the next start moves
        // aside, or an empty store.
        let new = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
        let mut conn = Connection::open(path).map_err(err)?;
        if new {
            conn.execute_batch("PRAGMA synchronous = OFF;")
                .map_err(err)?;
        }
        // Without the planner stability guarantee, SQLite re-prepares a statement each
        // time a new value is bound to a parameter the planner looked at, such as
        // `LIMIT ?`: the history query was parsed and planned again for every message, 12%
        // of the gateway's instructions per message in the throughput benchmark.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map_err(err)?;
        conn.execute_batch(if new {
            "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;"
        } else {
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;"
        })
        .map_err(err)?;
        let ok: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(err)?;
        if ok != "ok" {
            return Err(err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(ok),
            )));
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.display().to_string(),
                found: version,
            });
        }
        // A new store is made at the newest schema in one step: its migrations, each
        // statement of which makes SQLite parse the whole schema again, took a third of a
        // first start's time to its first poll. An older store takes all that are due in
        // one transaction, so one that fails keeps the schema it had.
        if version < SCHEMA_VERSION {
            let tx = conn.transaction().map_err(err)?;
            if version == 0 {
                tx.execute_batch(SCHEMA).map_err(err)?;
            } else {
                for migration in MIGRATIONS.iter().skip(version as usize) {
                    tx.execute_batch(migration).map_err(err)?;
                }
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(err)?;
            tx.commit().map_err(err)?;
            if new {
                conn.execute_batch("PRAGMA synchronous = NORMAL;")
                    .map_err(err)?;
            }
            if version == 0 {
                tracing::info!("state store made at schema {SCHEMA_VERSION}");
            } else {
                tracing::info!("state store migrated from schema {version} to {SCHEMA_VERSION}");
            }
        }
        let conn = Arc::new(Mutex::new(conn));
        let checkpointer = match Checkpointer::start(path, conn.clone()) {
            Ok(c) => {
                lock(&conn)
                    .pragma_update(None, "wal_autocheckpoint", 0)
                    .map_err(err)?;
                Some(c)
            }
            Err(e) => {
                tracing::warn!("no checkpoint thread ({e}); SQLite checkpoints inside commits");
                None
            }
        };
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            checkpointer,
            left: Mutex::new(Vec::new()),
            usage_due: Mutex::new(Vec::new()),
            writes: Arc::default(),
        })
    }

    /// Whether the store's writes succeed, as it finds out.
    pub fn writes(&self) -> Arc<StoreWrites> {
        self.writes.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        lock(&self.conn)
    }

    /// Commits `tx` with the outbox pieces that left since the last commit removed and the
    /// usage due added, and counts the write for the checkpointer. When it fails, those
    /// wait for the next one.
    fn commit(&self, tx: rusqlite::Transaction) -> Result<(), StoreError> {
        let left = std::mem::take(&mut *lock(&self.left));
        let usage = std::mem::take(&mut *lock(&self.usage_due));
        let removed = left.iter().try_for_each(|id| {
            tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")
                .and_then(|mut st| st.execute([id]))
                .map(|_| ())
        });
        let committed = removed
            .and_then(|()| usage.iter().try_for_each(|row| usage::insert(&tx, row)))
            .and_then(|()| tx.commit());
        if committed.is_err() {
            lock(&self.left).extend(left);
            lock(&self.usage_due).extend(usage);
        }
        self.wrap(committed)?;
        self.writes.committed();
        if let Some(c) = &self.checkpointer {
            c.wrote();
        }
        Ok(())
    }

    fn wrap<T>(&self, result: rusqlite::Result<T>) -> Result<T, StoreError> {
        result.map_err(|source| {
            // An absent row is an answer, not trouble.
            if !matches!(source, rusqlite::Error::QueryReturnedNoRows) {
                self.writes.failed(&source);
            }
            StoreError::Sqlite {
                path: self.path.display().to_string(),
                source,
            }
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.record_left() {
            tracing::error!("cannot record the delivered replies: {e}");
        }
    }
}

/// `mutex`'s value, also when a thread panicked holding it: a transaction either committed
/// or rolled back with its guard, and a list of ids is whole after each push.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_corruption(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// What can still be read of a store that failed to open, for the log: counts when the
/// tables are readable, else its size.
fn describe_corrupt(path: &Path) -> String {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let counted = Connection::open(path).ok().and_then(|c| {
        let pending: i64 = c
            .query_row(
                "SELECT count(*) FROM inbox WHERE done_at IS NULL",
                [],
                |r| r.get(0),
            )
            .ok()?;
        let turns: i64 = c
            .query_row("SELECT count(*) FROM turns", [], |r| r.get(0))
            .ok()?;
        Some(format!(
            "{pending} unanswered messages, {turns} conversation turns"
        ))
    });
    counted.unwrap_or_else(|| format!("{size} bytes that could not be read"))
}
