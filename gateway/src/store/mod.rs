//! Durable state in SQLite (`state.db` in the state directory): the inbox of updates and
//! the conversations.
//!
//! The inbox is what makes "no message is lost" true (DESIGN.md invariant 5): an update is
//! committed here, together with the offset that will acknowledge it, before that offset
//! is ever sent to Telegram; it is marked done only after its reply was sent. A gateway
//! killed in between finds the update still pending when it starts again and answers it
//! then, once.
//!
//! The schema is versioned. A file written by a newer version is refused (the operator
//! must not lose data to a downgrade); a file SQLite cannot read is moved aside and a fresh
//! one started, with a loud log line saying what it held.

mod checkpoint;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use checkpoint::Checkpointer;

use hermes_protocol::{ChatMessage, Role, ToolCall};
use rusqlite::{Connection, OptionalExtension, params};

/// The schema this build writes. Bump it with a new entry in [`MIGRATIONS`].
pub const SCHEMA_VERSION: i64 = 2;

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

/// A question and what the job added to the conversation for it: tool calls, their
/// results, and the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub chat_id: i64,
    pub question: String,
    pub transcript: Vec<ChatMessage>,
    pub provider: String,
    pub model: String,
}

/// An update waiting for (or being given) its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub update_id: i64,
    pub chat_id: i64,
    pub user_id: u64,
    pub text: String,
}

pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// None when its thread could not start: SQLite then checkpoints on its own.
    checkpointer: Option<Checkpointer>,
}

fn now() -> i64 {
    i64::try_from(crate::clock::unix_now()).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating or migrating) `dir/state.db`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("state.db");
        match Store::open_at(&path) {
            Err(StoreError::Sqlite { source, .. }) if is_corruption(&source) => {
                let aside = dir.join(format!("state.db.corrupt-{}", now()));
                let held = describe_corrupt(&path);
                tracing::error!(
                    "STATE STORE UNREADABLE ({source}): moved {} to {} and starting with an empty store. It held: {held}",
                    path.display(),
                    aside.display()
                );
                let _ = std::fs::rename(&path, &aside);
                for suffix in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(dir.join(format!("state.db{suffix}")));
                }
                Store::open_at(&path)
            }
            other => other,
        }
    }

    fn open_at(path: &Path) -> Result<Store, StoreError> {
        let err = |source| StoreError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(path).map_err(err)?;
        // Without the planner stability guarantee, SQLite re-prepares a statement each
        // time a new value is bound to a parameter the planner looked at, such as
        // `LIMIT ?`: the history query was parsed and planned again for every message, 12%
        // of the gateway's instructions per message in the throughput benchmark.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
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
        for (from, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(err)?;
            tx.execute_batch(migration).map_err(err)?;
            tx.pragma_update(None, "user_version", from as i64 + 1)
                .map_err(err)?;
            tx.commit().map_err(err)?;
            tracing::info!("state store migrated to schema {}", from + 1);
        }
        let checkpointer = match Checkpointer::start(path) {
            Ok(c) => {
                conn.pragma_update(None, "wal_autocheckpoint", 0)
                    .map_err(err)?;
                Some(c)
            }
            Err(e) => {
                tracing::warn!("no checkpoint thread ({e}); SQLite checkpoints inside commits");
                None
            }
        };
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            checkpointer,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits `tx` and counts the write for the checkpointer.
    fn commit(&self, tx: rusqlite::Transaction) -> Result<(), StoreError> {
        self.wrap(tx.commit())?;
        if let Some(c) = &self.checkpointer {
            c.wrote();
        }
        Ok(())
    }

    fn wrap<T>(&self, result: rusqlite::Result<T>) -> Result<T, StoreError> {
        result.map_err(|source| StoreError::Sqlite {
            path: self.path.display().to_string(),
            source,
        })
    }

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

    fn conversation(conn: &Connection, chat_id: i64) -> rusqlite::Result<i64> {
        conn.prepare_cached("SELECT conversation FROM chats WHERE chat_id = ?1")
            .and_then(|mut st| st.query_row(params![chat_id], |r| r.get(0)))
            .optional()
            .map(|c| c.unwrap_or(1))
    }

    /// The last `limit` turns of the chat's current conversation, oldest first. The cut
    /// never starts inside a tool exchange: providers refuse a `tool` result (or an answer
    /// that follows one) whose call was cut off, so history starts at a user turn.
    pub fn history(&self, chat_id: i64, limit: usize) -> Result<Vec<ChatMessage>, StoreError> {
        let conn = self.lock();
        let conversation = self.wrap(Store::conversation(&conn, chat_id))?;
        let mut stmt = self.wrap(conn.prepare_cached(
            "SELECT role, content, tool_calls, tool_call_id FROM turns
             WHERE chat_id = ?1 AND conversation = ?2 ORDER BY id DESC LIMIT ?3",
        ))?;
        let rows = self.wrap(stmt.query_map(
            params![chat_id, conversation, limit as i64],
            |r| {
                let role: String = r.get(0)?;
                let tool_calls: Option<String> = r.get(2)?;
                Ok(ChatMessage {
                    role: Role::parse(&role).unwrap_or(Role::User),
                    content: r.get(1)?,
                    tool_calls: tool_calls
                        .and_then(|json| decode_tool_calls(&json))
                        .unwrap_or_default(),
                    tool_call_id: r.get(3)?,
                })
            },
        ))?;
        let mut turns: Vec<ChatMessage> = self.wrap(rows.collect())?;
        turns.reverse();
        let start = turns
            .iter()
            .position(|m| m.role == Role::User)
            .unwrap_or(turns.len());
        turns.drain(..start);
        Ok(turns)
    }

    /// Marks a message answered with `reply` and, for a model's answer, records the
    /// exchange in the chat's conversation: one transaction, so the two cannot disagree.
    pub fn finish(
        &self,
        update_id: i64,
        reply: &str,
        exchange: Option<&Exchange>,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = self.wrap(conn.transaction())?;
        let at = now();
        if let Some(e) = exchange {
            let conversation = self.wrap(Store::conversation(&tx, e.chat_id))?;
            self.wrap(tx.prepare_cached("INSERT INTO turns (chat_id, conversation, role, content, at) VALUES (?1, ?2, 'user', ?3, ?4)").and_then(|mut st| st.execute(params![e.chat_id, conversation, e.question, at])))?;
            for m in &e.transcript {
                let tool_calls = encode_tool_calls(&m.tool_calls);
                // Provider and model belong to what the model wrote, not to tool output.
                let (provider, model) = if m.role == Role::Assistant {
                    (Some(e.provider.as_str()), Some(e.model.as_str()))
                } else {
                    (None, None)
                };
                self.wrap(tx.prepare_cached("INSERT INTO turns (chat_id, conversation, role, content, at, provider, model, tool_calls, tool_call_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)").and_then(|mut st| st.execute(params![e.chat_id, conversation, m.role.as_str(), m.content, at, provider, model, tool_calls, m.tool_call_id])))?;
            }
        }
        self.wrap(
            tx.prepare_cached("UPDATE inbox SET done_at = ?2, reply = ?3 WHERE update_id = ?1")
                .and_then(|mut st| st.execute(params![update_id, at, reply])),
        )?;
        self.commit(tx)
    }

    /// Starts a fresh conversation; the old one stays in the store, no longer sent.
    pub fn new_conversation(&self, chat_id: i64) -> Result<(), StoreError> {
        let conn = self.lock();
        self.wrap(
            conn.prepare_cached(
                "INSERT INTO chats (chat_id, conversation) VALUES (?1, 2)
             ON CONFLICT (chat_id) DO UPDATE SET conversation = conversation + 1",
            )
            .and_then(|mut st| st.execute(params![chat_id])),
        )
        .map(|_| ())
    }

    /// The provider this chat asked for with `/model`, if any.
    pub fn chat_provider(&self, chat_id: i64) -> Result<Option<String>, StoreError> {
        let conn = self.lock();
        self.wrap(
            conn.prepare_cached("SELECT provider FROM chats WHERE chat_id = ?1")
                .and_then(|mut st| st.query_row(params![chat_id], |r| r.get(0)))
                .optional(),
        )
        .map(Option::flatten)
    }

    /// Sets (or with `None` clears) the chat's provider.
    pub fn set_chat_provider(
        &self,
        chat_id: i64,
        provider: Option<&str>,
    ) -> Result<(), StoreError> {
        let conn = self.lock();
        self.wrap(
            conn.prepare_cached(
                "INSERT INTO chats (chat_id, provider) VALUES (?1, ?2)
             ON CONFLICT (chat_id) DO UPDATE SET provider = excluded.provider",
            )
            .and_then(|mut st| st.execute(params![chat_id, provider])),
        )
        .map(|_| ())
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

/// Tool calls as stored: a JSON array of `[id, name, arguments]`, or NULL when none.
fn encode_tool_calls(calls: &[ToolCall]) -> Option<String> {
    if calls.is_empty() {
        return None;
    }
    let rows: Vec<[&str; 3]> = calls
        .iter()
        .map(|c| [c.id.as_str(), c.name.as_str(), c.arguments.as_str()])
        .collect();
    serde_json::to_string(&rows).ok()
}

fn decode_tool_calls(json: &str) -> Option<Vec<ToolCall>> {
    let rows: Vec<[String; 3]> = serde_json::from_str(json).ok()?;
    Some(
        rows.into_iter()
            .map(|[id, name, arguments]| ToolCall {
                id,
                name,
                arguments,
            })
            .collect(),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: i64, text: &str) -> Pending {
        Pending {
            update_id: id,
            chat_id: 7,
            user_id: 7,
            text: text.into(),
        }
    }

    #[test]
    fn the_inbox_survives_a_reopen_and_answers_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.next_update_id().unwrap(), 0);
        store
            .accept(&[pending(5, "a"), pending(6, "b")], 7)
            .unwrap();
        store.accept(&[pending(6, "b")], 7).unwrap();
        store.finish(5, "answer", None).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.next_update_id().unwrap(), 7);
        assert_eq!(store.pending().unwrap(), vec![pending(6, "b")]);
    }

    #[test]
    fn history_is_per_conversation_and_limited() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..5 {
            let exchange = Exchange {
                chat_id: 7,
                question: format!("q{i}"),
                transcript: vec![ChatMessage::new(Role::Assistant, format!("a{i}"))],
                provider: "p".into(),
                model: "m".into(),
            };
            store.finish(i, "", Some(&exchange)).unwrap();
        }
        let h = store.history(7, 4).unwrap();
        let texts: Vec<&str> = h.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["q3", "a3", "q4", "a4"]);
        assert_eq!(h[0].role, Role::User);
        store.new_conversation(7).unwrap();
        assert!(store.history(7, 4).unwrap().is_empty());
        assert!(store.history(8, 4).unwrap().is_empty());
    }

    #[test]
    fn tool_turns_round_trip_and_history_never_starts_inside_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let call = ToolCall {
            id: "call-1".into(),
            name: "time__now".into(),
            arguments: "{}".into(),
        };
        let mut asking = ChatMessage::new(Role::Assistant, "");
        asking.tool_calls = vec![call.clone()];
        let transcript = vec![
            asking.clone(),
            ChatMessage::tool_result("call-1", "12:00"),
            ChatMessage::new(Role::Assistant, "It is noon."),
        ];
        let exchange = Exchange {
            chat_id: 7,
            question: "what time is it?".into(),
            transcript: transcript.clone(),
            provider: "p".into(),
            model: "m".into(),
        };
        store.finish(1, "It is noon.", Some(&exchange)).unwrap();
        let all = store.history(7, 10).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0], ChatMessage::new(Role::User, "what time is it?"));
        assert_eq!(all[1..], transcript[..]);
        // The last 3 turns start with a tool call: they are cut back to no history at all
        // rather than sent without the question that started them.
        assert!(store.history(7, 3).unwrap().is_empty());
    }

    #[test]
    fn a_chat_keeps_its_provider_choice_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.chat_provider(7).unwrap(), None);
        store.set_chat_provider(7, Some("backup")).unwrap();
        store.new_conversation(7).unwrap();
        assert_eq!(store.chat_provider(7).unwrap().as_deref(), Some("backup"));
        store.set_chat_provider(7, None).unwrap();
        assert_eq!(store.chat_provider(7).unwrap(), None);
    }

    #[test]
    fn a_version_1_store_is_migrated_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO turns (chat_id, conversation, role, content, at) VALUES (7, 1, 'user', 'old', 0);
             INSERT INTO inbox (update_id, chat_id, user_id, text, received_at) VALUES (3, 7, 7, 'pending', 0);",
        )
        .unwrap();
        drop(conn);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.history(7, 10).unwrap()[0].content, "old");
        assert_eq!(store.pending().unwrap()[0].text, "pending");
        store.set_chat_provider(7, Some("p")).unwrap();
    }

    #[test]
    fn retry_finds_the_last_message_that_is_not_a_command() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_user_text(7).unwrap(), None);
        store
            .accept(&[pending(1, "hello"), pending(2, "/retry")], 3)
            .unwrap();
        assert_eq!(store.last_user_text(7).unwrap().as_deref(), Some("hello"));
    }

    #[test]
    fn statements_are_not_prepared_again_for_new_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let conn = store.lock();
        for limit in [20, 5, 20] {
            let mut st = conn
                .prepare_cached("SELECT id FROM turns WHERE chat_id = ?1 ORDER BY id DESC LIMIT ?2")
                .unwrap();
            st.query_map(params![7, limit], |r| r.get::<_, i64>(0))
                .unwrap()
                .for_each(drop);
            assert_eq!(st.get_status(rusqlite::StatementStatus::RePrepare), 0);
        }
    }

    #[test]
    fn checkpoints_happen_off_the_writer_and_empty_the_log_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let automatic: i64 = store
            .lock()
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(automatic, 0, "commits must not checkpoint");
        for i in 0..200 {
            store.accept(&[pending(i, "x")], i + 1).unwrap();
        }
        let wal = dir.path().join("state.db-wal");
        drop(store);
        let left = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert_eq!(left, 0, "the last checkpoint truncates the log");
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.pending().unwrap().len(), 200);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::TooNew { .. })
        ));
    }

    #[test]
    fn a_corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("state.db"),
            b"this is not a database, not even close........",
        )
        .unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.pending().unwrap().is_empty());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("state.db.corrupt-")
            });
        assert!(aside);
    }
}
