//! The conversations: each chat's turns (questions, answers, tool calls and their
//! results) in numbered conversations (`/new` starts the next), the history a job is sent
//! with, and the provider a chat chose with `/model`. All of it is kept per [`Place`]:
//! each topic of a chat with topics is a conversation of its own ([`crate::topics`]).

use hermes_protocol::{ChatMessage, Role, ToolCall};
use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, StoreError};
use crate::topics::Place;

/// A question and what the job added to the conversation for it: tool calls, their
/// results, and the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub chat_id: i64,
    /// The topic it was asked in.
    pub thread: Option<i32>,
    pub question: String,
    pub transcript: Vec<ChatMessage>,
    pub provider: String,
    pub model: String,
}

impl Exchange {
    /// The conversation it extends.
    pub fn place(&self) -> Place {
        Place::new(self.chat_id, self.thread)
    }
}

impl Store {
    fn conversation(conn: &Connection, place: Place) -> rusqlite::Result<i64> {
        conn.prepare_cached("SELECT conversation FROM chats WHERE chat_id = ?1 AND thread_id = ?2")
            .and_then(|mut st| st.query_row(params![place.chat, place.thread_key()], |r| r.get(0)))
            .optional()
            .map(|c| c.unwrap_or(1))
    }

    /// The last `limit` turns of the chat's current conversation, oldest first. The cut
    /// never starts inside a tool exchange: providers refuse a `tool` result (or an answer
    /// that follows one) whose call was cut off, so history starts at a user turn.
    pub fn history(
        &self,
        place: impl Into<Place>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let place = place.into();
        let conn = self.lock();
        let conversation = self.wrap(Store::conversation(&conn, place))?;
        let mut stmt = self.wrap(conn.prepare_cached(
            "SELECT role, content, tool_calls, tool_call_id FROM turns
             WHERE chat_id = ?1 AND thread_id = ?2 AND conversation = ?3 ORDER BY id DESC LIMIT ?4",
        ))?;
        let rows = self.wrap(stmt.query_map(
            params![place.chat, place.thread_key(), conversation, limit as i64],
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

    /// Adds `e` to its chat's current conversation: the question, then what the job
    /// added (tool calls, their results, the answer). Part of the transaction that commits
    /// the answer, so the conversation and the outbox cannot disagree.
    pub(super) fn add_exchange(conn: &Connection, e: &Exchange, at: i64) -> rusqlite::Result<()> {
        let place = e.place();
        let thread = place.thread_key();
        let conversation = Store::conversation(conn, place)?;
        conn.prepare_cached("INSERT INTO turns (chat_id, thread_id, conversation, role, content, at) VALUES (?1, ?2, ?3, 'user', ?4, ?5)").and_then(|mut st| st.execute(params![e.chat_id, thread, conversation, e.question, at]))?;
        for m in &e.transcript {
            let tool_calls = encode_tool_calls(&m.tool_calls);
            // Provider and model belong to what the model wrote, not to tool output.
            let (provider, model) = if m.role == Role::Assistant {
                (Some(e.provider.as_str()), Some(e.model.as_str()))
            } else {
                (None, None)
            };
            conn.prepare_cached("INSERT INTO turns (chat_id, thread_id, conversation, role, content, at, provider, model, tool_calls, tool_call_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)").and_then(|mut st| st.execute(params![e.chat_id, thread, conversation, m.role.as_str(), m.content, at, provider, model, tool_calls, m.tool_call_id]))?;
        }
        Ok(())
    }

    /// The question the chat's last job asked (its messages, joined), for `/retry`. Only
    /// ever what allowed users wrote: a stranger's message never becomes a question.
    pub fn last_question(&self, place: impl Into<Place>) -> Result<Option<String>, StoreError> {
        let place = place.into();
        let conn = self.lock();
        self.wrap(
            conn.prepare_cached(
                "SELECT last_question FROM chats WHERE chat_id = ?1 AND thread_id = ?2",
            )
            .and_then(|mut st| st.query_row(params![place.chat, place.thread_key()], |r| r.get(0)))
            .optional(),
        )
        .map(Option::flatten)
    }

    /// Starts a fresh conversation; the old one stays in the store, no longer sent.
    pub fn new_conversation(&self, place: impl Into<Place>) -> Result<(), StoreError> {
        let place = place.into();
        let conn = self.lock();
        self.wrap(
            conn.prepare_cached(
                "INSERT INTO chats (chat_id, thread_id, conversation) VALUES (?1, ?2, 2)
             ON CONFLICT (chat_id, thread_id) DO UPDATE SET conversation = conversation + 1",
            )
            .and_then(|mut st| st.execute(params![place.chat, place.thread_key()])),
        )
        .map(|_| ())
    }

    /// The provider this chat asked for with `/model`, if any.
    pub fn chat_provider(&self, place: impl Into<Place>) -> Result<Option<String>, StoreError> {
        let place = place.into();
        let conn = self.lock();
        self.wrap(
            conn.prepare_cached("SELECT provider FROM chats WHERE chat_id = ?1 AND thread_id = ?2")
                .and_then(|mut st| {
                    st.query_row(params![place.chat, place.thread_key()], |r| r.get(0))
                })
                .optional(),
        )
        .map(Option::flatten)
    }

    /// Sets (or with `None` clears) the chat's provider.
    pub fn set_chat_provider(
        &self,
        place: impl Into<Place>,
        provider: Option<&str>,
    ) -> Result<(), StoreError> {
        let place = place.into();
        let conn = self.lock();
        self.wrap(
            conn.prepare_cached(
                "INSERT INTO chats (chat_id, thread_id, provider) VALUES (?1, ?2, ?3)
             ON CONFLICT (chat_id, thread_id) DO UPDATE SET provider = excluded.provider",
            )
            .and_then(|mut st| st.execute(params![place.chat, place.thread_key(), provider])),
        )
        .map(|_| ())
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
