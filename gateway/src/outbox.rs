//! Sending what the gateway has committed to say, until Telegram has it.
//!
//! Every reply (a model's answer, an error, a command's reply, the stranger reply, a
//! notice) is committed to the store's outbox before any of it is sent, tied to the
//! messages it answers ([`Outbox::send`]). Each chat's pieces then go out in order, one at
//! a time, from a task of the chat's own: a piece is tried until Telegram accepts it,
//! waiting out flood control and backing off (capped, jittered) while Telegram or the
//! network fails, for as long as `telegram.outbox_max_age_secs` allows. Telegram refusing
//! it for good (the bot blocked, the chat gone) ends it; a group that became a supergroup
//! gets it at its new id, its conversation moved there. Each piece leaves the store once
//! Telegram accepted it: with the store's next write, and at the latest before its chat's
//! next piece goes, or [`RECORD_WITHIN`] after its chat's last; when a reply's last piece
//! has left, the messages it answers are done. Pieces a run did not deliver are the next
//! run's first work, in the same order.
//!
//! Telegram has no idempotency key, so exactly-once is "at most one piece of a chat
//! twice": a crash between Telegram accepting a piece and the store forgetting it, or an
//! accepted send whose answer was lost, sends that one piece again. Nothing else can.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use teloxide_core::types::MessageId;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::unix_now;
use crate::health::Health;
use crate::store::{Exchange, OutPiece, ReplyRecord, Store, StoreError, Stored};
use crate::telegram::format::Piece;
use crate::telegram::sender::{SendError, Sender};
use hermes_retry::Backoff;

/// First wait after a failed send; the cap is `telegram.retry_max_secs`.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// A chat that moves more often than this while one piece is sent is given up on.
const MAX_MOVES: u32 = 3;
/// A delivered piece is removed from the store within this time even when nothing else
/// is written (under load the next message's commit removes it sooner, at no cost).
const RECORD_WITHIN: Duration = Duration::from_millis(10);

#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

/// A reply to commit and send.
pub struct Reply<'a> {
    pub chat: i64,
    /// The inbox rows it answers.
    pub answers: &'a [i64],
    /// Its text, kept with the rows (for the record).
    pub text: &'a str,
    pub pieces: Vec<Piece>,
    /// The first piece replaces this message (a streamed answer's preview), not before
    /// the moment given (edits keep their spacing); sent anew if it cannot be edited.
    pub edit: Option<(MessageId, Instant)>,
    /// A model's answer, added to the conversation with the reply.
    pub exchange: Option<&'a Exchange>,
    /// The question a job asked, for `/retry`.
    pub question: Option<&'a str>,
}

/// What the outbox's settings and neighbours are.
pub struct OutboxConfig {
    pub store: Arc<Store>,
    pub sender: Sender,
    pub health: Arc<Health>,
    /// A piece still undelivered this long after it was committed is dropped.
    pub max_age: Duration,
    /// Cap of the backoff between failed sends.
    pub retry_max: Duration,
}

struct Inner {
    config: OutboxConfig,
    chats: Mutex<HashMap<i64, Queue>>,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// A task will remove the pieces that left from the store.
    recording: AtomicBool,
}

/// One chat's pieces waiting to go, and whether its task runs.
#[derive(Default)]
struct Queue {
    pieces: VecDeque<Queued>,
    draining: bool,
    /// The supergroup this group became: where its pieces go now.
    moved_to: Option<i64>,
}

#[derive(Debug, Clone)]
struct Queued {
    /// None when the store could not take it: sent once, best effort.
    id: Option<i64>,
    piece: Piece,
    edit: Option<MessageId>,
    /// Unix seconds.
    created_at: u64,
    not_before: Option<Instant>,
}

/// How a piece left the outbox.
enum Resolution {
    Delivered,
    Refused(String),
    Expired,
}

impl Queued {
    fn from_stored(stored: Stored, not_before: Option<Instant>) -> Queued {
        Queued {
            id: Some(stored.id),
            piece: Piece {
                html: stored.piece.html,
                plain: stored.piece.plain,
            },
            edit: stored.piece.edit_message_id.map(MessageId),
            created_at: u64::try_from(stored.created_at).unwrap_or(0),
            not_before,
        }
    }
}

impl Outbox {
    /// Drainers run on `tasks` until `stop`.
    pub fn new(config: OutboxConfig, tasks: TaskTracker, stop: CancellationToken) -> Outbox {
        Outbox {
            inner: Arc::new(Inner {
                config,
                chats: Mutex::new(HashMap::new()),
                tasks,
                stop,
                recording: AtomicBool::new(false),
            }),
        }
    }

    /// Queues every piece a previous run left in the store, in order, and starts sending;
    /// the number of pieces.
    pub fn resume(&self) -> Result<usize, StoreError> {
        let stored = self.inner.config.store.outbox()?;
        let count = stored.len();
        for piece in stored {
            let chat = piece.chat_id;
            self.push(chat, vec![Queued::from_stored(piece, None)]);
        }
        Ok(count)
    }

    /// Commits `reply` and queues it for its chat. When the store refuses the commit the
    /// reply is still sent, once, and the error returned: its messages stay unanswered.
    pub fn send(&self, reply: Reply) -> Result<(), StoreError> {
        let stored_pieces: Vec<OutPiece> = reply
            .pieces
            .iter()
            .enumerate()
            .map(|(i, p)| OutPiece {
                html: p.html.clone(),
                plain: p.plain.clone(),
                edit_message_id: reply.edit.filter(|_| i == 0).map(|(id, _)| id.0),
            })
            .collect();
        let not_before = reply.edit.map(|(_, at)| at);
        let committed = self.inner.config.store.commit_reply(&ReplyRecord {
            chat_id: reply.chat,
            answers: reply.answers,
            text: reply.text,
            pieces: &stored_pieces,
            exchange: reply.exchange,
            question: reply.question,
        });
        let (queued, result) = match committed {
            Ok(stored) => (
                stored
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| Queued::from_stored(s, not_before.filter(|_| i == 0)))
                    .collect(),
                Ok(()),
            ),
            Err(e) => {
                tracing::error!(
                    chat_id = reply.chat,
                    "cannot store a reply ({e}); sending it without a record"
                );
                let queued = stored_pieces
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| Queued {
                        id: None,
                        piece: Piece {
                            html: p.html,
                            plain: p.plain,
                        },
                        edit: p.edit_message_id.map(MessageId),
                        created_at: unix_now(),
                        not_before: not_before.filter(|_| i == 0),
                    })
                    .collect();
                (queued, Err(e))
            }
        };
        self.push(reply.chat, queued);
        result
    }

    fn push(&self, chat: i64, pieces: Vec<Queued>) {
        if pieces.is_empty() {
            return;
        }
        let start = {
            let mut chats = self.inner.lock();
            let queue = chats.entry(chat).or_default();
            queue.pieces.extend(pieces);
            !std::mem::replace(&mut queue.draining, true)
        };
        self.inner.report();
        if start {
            let inner = self.inner.clone();
            self.inner.tasks.spawn(async move {
                tokio::select! {
                    _ = inner.drain(chat) => {}
                    _ = inner.stop.cancelled() => {}
                }
            });
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Queue>> {
        self.chats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the health report how deep the outbox is and how old its oldest piece.
    fn report(&self) {
        let (depth, oldest) = {
            let chats = self.lock();
            let depth = chats.values().map(|q| q.pieces.len()).sum();
            let oldest = chats
                .values()
                .filter_map(|q| q.pieces.iter().map(|p| p.created_at).min())
                .min();
            (depth, oldest)
        };
        self.config.health.outbox_changed(depth, oldest);
    }

    /// Sends the chat's pieces in order until none is left.
    async fn drain(self: &Arc<Self>, chat: i64) {
        let mut backoff = Backoff::new(FIRST_RETRY, self.config.retry_max);
        loop {
            let (next, dest) = {
                let mut chats = self.lock();
                let Some(queue) = chats.get_mut(&chat) else {
                    return;
                };
                match queue.pieces.front() {
                    Some(next) => (next.clone(), queue.moved_to.unwrap_or(chat)),
                    None => {
                        if queue.moved_to.is_none() {
                            chats.remove(&chat);
                        } else {
                            queue.draining = false;
                        }
                        return;
                    }
                }
            };
            let resolution = self.deliver(chat, dest, &next, &mut backoff).await;
            match &resolution {
                Resolution::Delivered => {}
                Resolution::Refused(why) => {
                    tracing::warn!(
                        chat_id = dest,
                        "Telegram refused a reply for good ({why}); it is dropped"
                    );
                    self.config.health.outbox_refused();
                }
                Resolution::Expired => {
                    tracing::warn!(
                        chat_id = dest,
                        "dropped a reply that could not be delivered within {} s",
                        self.config.max_age.as_secs()
                    );
                    self.config.health.outbox_expired();
                }
            }
            if let Some(id) = next.id {
                self.config.store.piece_left(id);
            }
            let more = self.lock().get_mut(&chat).is_some_and(|queue| {
                queue.pieces.pop_front();
                !queue.pieces.is_empty()
            });
            if more {
                // Recorded before the chat's next piece goes: a crash sends one piece of
                // a chat again, never two.
                self.record_left();
            } else {
                self.record_soon();
            }
            self.report();
        }
    }

    /// Removes the pieces that left from the store now.
    fn record_left(&self) {
        if let Err(e) = self.config.store.record_left() {
            // Left in the store, a piece goes again at the next start: one duplicate.
            tracing::error!("cannot record delivered replies: {e}");
        }
    }

    /// Makes sure the pieces that left are removed from the store within
    /// [`RECORD_WITHIN`], or at once when the gateway stops.
    fn record_soon(self: &Arc<Self>) {
        if self.recording.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(RECORD_WITHIN) => {}
                _ = inner.stop.cancelled() => {}
            }
            // Cleared first: a piece that leaves from now on asks for a task of its own.
            inner.recording.store(false, Ordering::Release);
            inner.record_left();
        });
    }

    /// Tries one piece until it is delivered, refused for good, or too old.
    async fn deliver(
        &self,
        chat: i64,
        mut dest: i64,
        queued: &Queued,
        backoff: &mut Backoff,
    ) -> Resolution {
        if let Some(at) = queued.not_before {
            tokio::time::sleep_until(at.into()).await;
        }
        let expires = queued
            .created_at
            .saturating_add(self.config.max_age.as_secs());
        let sender = &self.config.sender;
        let piece = &queued.piece;
        let mut plain = false;
        let mut edit = queued.edit;
        let mut failures = 0u32;
        let mut moves = 0u32;
        loop {
            let now = unix_now();
            if now >= expires {
                return Resolution::Expired;
            }
            let result = match edit {
                Some(id) => sender.edit_once(dest, id, piece, plain).await,
                None => sender.send_once(dest, piece, plain).await.map(|_| ()),
            };
            let wait = match result {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(
                            chat_id = dest,
                            "reply delivered after {failures} failed attempt(s)"
                        );
                    }
                    backoff.reset();
                    return Resolution::Delivered;
                }
                Err(SendError::BadEntities(why)) if !plain => {
                    tracing::info!(
                        chat_id = dest,
                        "Telegram could not parse the reply's entities ({why}); sending it as plain text"
                    );
                    plain = true;
                    continue;
                }
                Err(SendError::BadEntities(why) | SendError::Refused(why)) => {
                    return Resolution::Refused(why);
                }
                Err(SendError::CannotEdit(why)) => {
                    tracing::info!(
                        chat_id = dest,
                        "the answer's message cannot be edited ({why}); sending it anew"
                    );
                    edit = None;
                    continue;
                }
                Err(SendError::Migrated(to)) if to == dest || moves >= MAX_MOVES => {
                    return Resolution::Refused(format!(
                        "the chat keeps moving (to {to}); given up after {moves} moves"
                    ));
                }
                Err(SendError::Migrated(to)) => {
                    moves += 1;
                    tracing::warn!(
                        chat_id = dest,
                        "the group became supergroup {to}: sending there, and moving its conversation"
                    );
                    if let Err(e) = self.config.store.migrate_chat(dest, to) {
                        tracing::error!(chat_id = dest, "cannot move the chat to {to}: {e}");
                    }
                    if let Some(queue) = self.lock().get_mut(&chat) {
                        queue.moved_to = Some(to);
                    }
                    dest = to;
                    continue;
                }
                Err(SendError::RetryAfter(wait)) => {
                    tracing::info!(chat_id = dest, "flood control: sending again in {wait:?}");
                    wait.max(FIRST_RETRY)
                }
                Err(SendError::Transient(why)) => {
                    let wait = backoff.next_delay();
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(
                            chat_id = dest,
                            "cannot deliver a reply ({why}); retrying (next in {wait:?}) for up to {} s",
                            self.config.max_age.as_secs()
                        );
                    } else {
                        tracing::info!(
                            chat_id = dest,
                            attempt = failures + 1,
                            "reply still not delivered ({why}); next try in {wait:?}"
                        );
                    }
                    wait
                }
            };
            let left = Duration::from_secs(expires.saturating_sub(unix_now()));
            tokio::time::sleep(wait.min(left)).await;
        }
    }
}
