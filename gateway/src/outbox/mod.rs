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
//! next piece goes, or `delivery::RECORD_WITHIN` after its chat's last; when a reply's last piece
//! has left, the messages it answers are done. Pieces a run did not deliver are the next
//! run's first work, in the same order. A reply to a stranger waits behind every member's
//! piece of its chat ([`Outbox::send_to_stranger`]).
//!
//! Telegram has no idempotency key, so exactly-once is "at most one piece of a chat
//! twice": a crash between Telegram accepting a piece and the store forgetting it, or an
//! accepted send whose answer was lost, sends that one piece again. Nothing else can.
//!
//! A reply the store refuses for a reason that can pass (busy, full, failing disk) is not
//! sent: sent without its record, its messages would still wait, and the next turn or the
//! next run would answer them again. It is held, with every later reply of its chat, and
//! committed again with backoff until the store takes it; only then does it go
//! ([`held`]). Its chat takes no further turn meanwhile ([`Outbox::committed`]).
//!
//! Here: committing a reply and resuming a previous run's pieces; each chat's queue in
//! [`queue`], sending it in [`delivery`], replies waiting for the store in [`held`].

mod delivery;
mod held;
mod queue;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use teloxide_core::types::MessageId;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::files_back::OutFile;
use crate::health::Health;
use crate::store::{Exchange, OutPiece, Preview, ReplyRecord, Store, StoreError, Stored};
use crate::telegram::format::Piece;
use crate::telegram::sender::Sender;
use crate::telegram::sender::plain_pieces;
use held::{Held, HeldReplies};
use queue::{Lane, Queue, Queued};

/// Told that a group became a supergroup: old id, new id.
type MovedHook = Box<dyn Fn(i64, i64) + Send + Sync>;

/// What a preview left by a killed run is edited to say. The message it was answering is
/// answered again by the new run (or given up with an apology), in a message of its own.
const INTERRUPTED: &str = "⚠️ This answer was cut short: the bot restarted while writing it. The answer follows in a new message.";

#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

/// A reply to commit and send.
pub struct Reply<'a> {
    pub chat: i64,
    /// The topic it goes to (see [`crate::topics`]); the chat's queue is one for all its
    /// topics, as Telegram's flood limits are per chat.
    pub thread: Option<i32>,
    /// The inbox rows it answers.
    pub answers: &'a [i64],
    /// Its text, kept with the rows (for the record).
    pub text: &'a str,
    pub pieces: Vec<Piece>,
    /// Send the reply as one rich message of this Markdown, `pieces` only if Telegram
    /// refuses it.
    pub rich: Option<&'a str>,
    /// The first piece replaces this message (a streamed answer's preview), not before
    /// the moment given (edits keep their spacing); sent anew if it cannot be edited.
    pub edit: Option<(MessageId, Instant)>,
    /// A model's answer, added to the conversation with the reply.
    pub exchange: Option<&'a Exchange>,
    /// The question a job asked, for `/retry`.
    pub question: Option<&'a str>,
    /// Files sent after the text pieces, each a piece of its own ([`crate::files_back`]).
    pub files: Vec<OutFile>,
}

impl<'a> Reply<'a> {
    /// Settles `answers` with nothing sent: `note` is kept with them as the record of
    /// what became of them (a schedule's run dropped, a list sent with its buttons).
    pub fn closing(chat: i64, thread: Option<i32>, answers: &'a [i64], note: &'a str) -> Self {
        Reply {
            chat,
            thread,
            answers,
            text: note,
            pieces: Vec::new(),
            rich: None,
            edit: None,
            exchange: None,
            question: None,
            files: Vec::new(),
        }
    }
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
    /// Replies the store has not taken yet, per chat.
    held: HeldReplies,
    /// Who is told when a chat moved ([`Outbox::on_chat_moved`]).
    moved: OnceLock<MovedHook>,
}

impl Inner {
    /// Chat `from` moved to `to`, its waiting messages with it (in the store).
    fn chat_moved(&self, from: i64, to: i64) {
        if let Some(hook) = self.moved.get() {
            hook(from, to);
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
                moved: OnceLock::new(),
                held: HeldReplies::default(),
            }),
        }
    }

    /// `hook` is told when sending showed that a group became a supergroup, after its
    /// conversation and waiting messages moved in the store (set once: later calls are
    /// ignored).
    pub fn on_chat_moved(&self, hook: impl Fn(i64, i64) + Send + Sync + 'static) {
        if self.inner.moved.set(Box::new(hook)).is_err() {
            tracing::warn!("the outbox's chat-moved hook was set twice; kept the first");
        }
    }

    /// Queues every piece a previous run left in the store (`stored`, as
    /// [`Store::outbox`] read it), in order, and starts sending; the number of pieces.
    /// Then each preview a killed run left showing a half-written answer (`previews`, as
    /// [`Store::previews`] read it) is edited to say it was interrupted (committed like
    /// any reply), before the chat's new answer.
    pub fn resume(&self, stored: Vec<Stored>, previews: Vec<Preview>) -> usize {
        let count = stored.len();
        for piece in stored {
            let chat = piece.chat_id;
            // The store does not say whose a piece is: a previous run's replies go in the
            // order they were committed.
            self.push(chat, Lane::Members, vec![Queued::from_stored(piece, None)]);
        }
        for preview in previews {
            tracing::info!(
                chat_id = preview.chat_id,
                "the previous run was killed while it showed an answer being written; marking it interrupted"
            );
            // A store error is logged by `send`, which still sends the edit.
            let _ = self.send(Reply {
                chat: preview.chat_id,
                thread: preview.thread,
                answers: &[],
                text: INTERRUPTED,
                pieces: plain_pieces(INTERRUPTED),
                rich: None,
                edit: Some((MessageId(preview.message_id), Instant::now())),
                exchange: None,
                question: None,
                files: Vec::new(),
            });
        }
        count
    }

    /// Commits `reply` and queues it for its chat. When the store refuses the commit for
    /// a reason that can pass, the reply is held and committed again until the store
    /// takes it, then sent ([`held`]); so is every reply of its chat that comes while one
    /// is held, in order. When it refuses it for good, the reply is still sent, once,
    /// and the error returned: its messages stay unanswered.
    pub fn send(&self, reply: Reply) -> Result<(), StoreError> {
        self.commit(reply, Lane::Members)
    }

    /// Like [`Outbox::send`], for a reply to a stranger: it waits until no member's piece
    /// of its chat does.
    pub fn send_to_stranger(&self, reply: Reply) -> Result<(), StoreError> {
        self.commit(reply, Lane::Strangers)
    }

    fn commit(&self, reply: Reply, lane: Lane) -> Result<(), StoreError> {
        if self.inner.held.holds(reply.chat) {
            self.inner.held.push(Held::new(&reply, lane));
            return Ok(());
        }
        let stored_pieces = out_pieces(&reply);
        let not_before = reply.edit.map(|(_, at)| at);
        let committed = self.inner.config.store.commit_reply(&ReplyRecord {
            chat_id: reply.chat,
            thread: reply.thread,
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
            Err(e) if e.is_transient() => {
                tracing::error!(
                    chat_id = reply.chat,
                    "cannot store a reply ({e}); holding it until the store takes it"
                );
                self.inner.held.push(Held::new(&reply, lane));
                self.inner.spawn_committer(reply.chat);
                return Err(e);
            }
            Err(e) => {
                tracing::error!(
                    chat_id = reply.chat,
                    "cannot store a reply ({e}); sending it without a record"
                );
                // The preview it replaces must not be taken for a killed run's at the
                // next start (and edited over the answer): forgotten, if the store lets.
                if let Some((id, _)) = reply.edit {
                    let _ = self.inner.config.store.preview_forgotten(reply.chat, id.0);
                }
                (unrecorded(stored_pieces, reply.thread, not_before), Err(e))
            }
        };
        self.push(reply.chat, lane, queued);
        result
    }
}

/// `reply`'s pieces as the store keeps them: its text (a rich reply's rich piece first,
/// then its HTML pieces as the fallback), then its files.
fn out_pieces(reply: &Reply) -> Vec<OutPiece> {
    let edit_message_id = reply.edit.map(|(id, _)| id.0);
    let rich = reply.rich.map(|markdown| OutPiece {
        edit_message_id,
        rich: Some(markdown.to_string()),
        ..OutPiece::default()
    });
    let fallback = rich.is_some();
    let text = reply.pieces.iter().enumerate().map(|(i, p)| OutPiece {
        html: p.html.clone(),
        plain: p.plain.clone(),
        edit_message_id: edit_message_id.filter(|_| i == 0),
        fallback,
        ..OutPiece::default()
    });
    let files = reply.files.iter().map(|f| OutPiece {
        file: Some(f.clone()),
        ..OutPiece::default()
    });
    rich.into_iter().chain(text).chain(files).collect()
}

/// Pieces the store refused for good, to send once, best effort.
fn unrecorded(
    pieces: Vec<OutPiece>,
    thread: Option<i32>,
    not_before: Option<Instant>,
) -> Vec<Queued> {
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let mut queued = Queued::fresh(
                Piece {
                    html: p.html,
                    plain: p.plain,
                },
                thread,
                p.edit_message_id.map(MessageId),
                not_before.filter(|_| i == 0),
            );
            queued.file = p.file;
            queued.rich = p.rich;
            queued.fallback = p.fallback;
            queued
        })
        .collect()
}
