//! Replies the store has not taken yet.
//!
//! A reply is sent only once it is committed with what it settles (the messages it
//! answers, the exchange): a reply sent without its record leaves its messages waiting,
//! and the chat's next turn, or the next run, would answer them a second time. So when
//! the store refuses a commit for a reason that can pass (busy, full, failing disk), the
//! reply waits here, in memory, and a task of its chat commits it again with capped
//! backoff until the store takes it; then it goes out like any other. Every later reply
//! of that chat queues behind it, so the chat's order holds, and the chat takes no new
//! turn until its replies are committed ([`Outbox::committed`]): its messages are still
//! waiting in the store, and must not be taken again.
//!
//! The wait is bounded from outside: a store failing for a whole watchdog period stops
//! the watchdog (see `health`), and systemd restarts the gateway. A reply still held
//! when the gateway stops was never sent, and its messages were never marked answered:
//! the next run answers them, once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hermes_retry::Backoff;
use tokio::sync::Notify;

use super::queue::Lane;
use super::queue::Queued;
use super::{Inner, Outbox, Reply, out_pieces};
use crate::store::{Exchange, OutPiece, ReplyRecord};

/// First wait before committing a held reply again.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Cap of that wait: the store is tried at least this often while it fails.
const RETRY_MAX: Duration = Duration::from_secs(10);

/// A reply as [`Reply`] has it, owned, to commit later.
#[derive(Clone)]
pub(super) struct Held {
    chat: i64,
    thread: Option<i32>,
    answers: Vec<i64>,
    text: String,
    pieces: Vec<OutPiece>,
    exchange: Option<Exchange>,
    question: Option<String>,
    not_before: Option<Instant>,
    /// The lane it waits in once committed: a stranger's reply stays behind members'.
    lane: Lane,
}

impl Held {
    pub(super) fn new(reply: &Reply, lane: Lane) -> Held {
        Held {
            lane,
            chat: reply.chat,
            thread: reply.thread,
            answers: reply.answers.to_vec(),
            text: reply.text.to_string(),
            pieces: out_pieces(reply),
            exchange: reply.exchange.cloned(),
            question: reply.question.map(str::to_string),
            not_before: reply.edit.map(|(_, at)| at),
        }
    }

    fn record(&self) -> ReplyRecord<'_> {
        ReplyRecord {
            chat_id: self.chat,
            thread: self.thread,
            answers: &self.answers,
            text: &self.text,
            pieces: &self.pieces,
            exchange: self.exchange.as_ref(),
            question: self.question.as_deref(),
        }
    }
}

#[derive(Default)]
pub(super) struct HeldReplies {
    chats: Mutex<HashMap<i64, VecDeque<Held>>>,
    /// Woken whenever a chat has no reply held any more.
    released: Notify,
}

impl HeldReplies {
    fn lock(&self) -> MutexGuard<'_, HashMap<i64, VecDeque<Held>>> {
        self.chats.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn holds(&self, chat: i64) -> bool {
        self.lock().contains_key(&chat)
    }

    pub(super) fn push(&self, held: Held) {
        self.lock().entry(held.chat).or_default().push_back(held);
    }

    fn front(&self, chat: i64) -> Option<Held> {
        self.lock().get(&chat).and_then(|q| q.front().cloned())
    }

    /// Drops the chat's first held reply, running `then` (which queues it) before a
    /// reply sent after it can be queued; the number still held.
    fn pop(&self, chat: i64, then: impl FnOnce()) -> usize {
        let mut chats = self.lock();
        then();
        let left = chats.get_mut(&chat).map_or(0, |q| {
            q.pop_front();
            q.len()
        });
        if left == 0 {
            chats.remove(&chat);
            self.released.notify_waiters();
        }
        left
    }

    /// Gives up on the chat's held replies; how many there were.
    fn drop_chat(&self, chat: i64) -> usize {
        let dropped = self.lock().remove(&chat).map_or(0, |q| q.len());
        self.released.notify_waiters();
        dropped
    }
}

impl Outbox {
    /// Resolves once no reply of `chat` waits for the store: its messages are then either
    /// answered in the store or still waiting for a turn, never both.
    pub async fn committed(&self, chat: i64) {
        let held = &self.inner.held;
        loop {
            let released = held.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !held.holds(chat) {
                return;
            }
            released.await;
        }
    }
}

impl Inner {
    /// Starts committing the chat's held replies, in order, until none is left or the
    /// gateway stops.
    pub(super) fn spawn_committer(self: &Arc<Self>, chat: i64) {
        let inner = self.clone();
        self.tasks
            .spawn(async move { inner.commit_held(chat).await });
    }

    async fn commit_held(self: Arc<Self>, chat: i64) {
        let mut backoff = Backoff::new(FIRST_RETRY, RETRY_MAX);
        let mut tries = 1u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = self.stop.cancelled() => {
                    let dropped = self.held.drop_chat(chat);
                    tracing::error!(
                        chat_id = chat,
                        "stopping with {dropped} reply(ies) the state store never took: not sent; their messages are answered by the next run"
                    );
                    return;
                }
            }
            tries += 1;
            while let Some(held) = self.held.front(chat) {
                let queued: Vec<Queued> = match self.config.store.commit_reply(&held.record()) {
                    Ok(stored) => {
                        tracing::info!(
                            chat_id = chat,
                            "a held reply was stored after {tries} tries; sending it"
                        );
                        stored
                            .into_iter()
                            .enumerate()
                            .map(|(i, s)| {
                                Queued::from_stored(s, held.not_before.filter(|_| i == 0))
                            })
                            .collect()
                    }
                    Err(e) if e.is_transient() => {
                        tracing::info!(
                            chat_id = chat,
                            "the state store still refuses a held reply ({e}); try {tries}"
                        );
                        break;
                    }
                    Err(e) => {
                        // Refused for good: what `Outbox::send` does with such a reply.
                        tracing::error!(
                            chat_id = chat,
                            "cannot store a held reply ({e}); sending it without a record"
                        );
                        super::unrecorded(held.pieces.clone(), held.thread, held.not_before)
                    }
                };
                let outbox = Outbox {
                    inner: self.clone(),
                };
                if self.held.pop(chat, || outbox.push(chat, held.lane, queued)) == 0 {
                    return;
                }
            }
        }
    }
}
