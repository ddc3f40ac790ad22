//! From a stored message to its one reply.
//!
//! Each conversation is served by its own task, one turn at a time and in arrival order,
//! so a conversation never answers out of order while many run side by side (as many as
//! the supervisor has slots). A conversation is a chat, or in a chat with topics one
//! topic of it ([`crate::topics::Place`]): each topic has its own task, turns, queue and
//! `/stop`, and its answers go to that topic. A turn is everything the conversation's
//! people wrote since the last one began, asked as one question: several messages sent in
//! a row are one thought, and the model reads them together. The messages wait in the
//! store's inbox, not in memory, so a restart finds them there and asks them as one turn
//! too. Beyond `telegram.max_queued_per_chat` waiting messages (per conversation) a new
//! one is refused with a reply that says it was not processed. A task ends after a quiet
//! minute. `/stop` does not wait
//! for a turn: it ends the job in flight, and the messages waiting behind it, the moment
//! it arrives.
//!
//! Whatever a turn's outcome, its messages get exactly one reply: the answer, or the
//! plain-language text for the failure (see [`crate::replies`]), committed to the outbox
//! ([`crate::outbox`]) with everything it settles before any of it is sent. This module
//! routes each message to its chat's task; the task takes its turns in [`turns`], a
//! message becomes a job in [`prepare`] and the job's progress and outcome reach the chat
//! and the store in [`deliver`]; a command runs in [`crate::commands`]. Who a job answers
//! is decided in [`admit`]: a message whose jobs keep dying is given up with an apology.
//!
//! An album (its photos and documents arrive one update each) and a text Telegram split
//! past its length limit are one turn too: the task waits a short window for their rest
//! before it takes the turn ([`settle`]); nothing else waits.
//!
//! A stranger (someone not in `telegram.allowed_users`) is told their user id at most once
//! an hour ([`strangers`]); the rest of their messages are dropped, counted in the status.
//! Their replies wait behind the members' answers of the chat ([`Outbox::send_to_stranger`]).
//! A group that became a supergroup (the outbox learns it from Telegram) is served under its
//! new id at once, by the task that served it, so its waiting messages keep their turn.

mod admit;
mod deliver;
mod prepare;
mod reaction;
mod schedules_list;
mod settle;
mod stop_button;
mod strangers;
mod turn_files;
mod turns;

pub use stop_button::is_stop_press;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hermes_protocol::JobId;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::approvals::Desk;
use crate::circuit::Circuits;
use crate::commands::stop::{InFlight, Stopping};
use crate::commands::{self, Command};
use crate::health::Health;
use crate::jobs::JobRunner;
use crate::media::{Fetcher, MediaRef};
use crate::outbox::{Outbox, Reply};
use crate::replies;
use crate::schedules::Schedules;
use crate::settings::LiveSettings;
use crate::store::{Kind, Pending, Store};
use crate::telegram::reactions::Reactions;
use crate::telegram::sender::{Sender, plain_pieces};
use crate::topics::Place;

/// What the chats need to build and run a job.
pub struct JobContext {
    pub runner: Arc<dyn JobRunner>,
    pub health: Arc<Health>,
    pub circuits: Arc<Circuits>,
    pub sender: Sender,
    pub outbox: Outbox,
    pub settings: LiveSettings,
    pub store: Arc<Store>,
    /// Turns of history sent with each job.
    pub max_history: usize,
    /// Where a job's tool calls that need approval are asked about.
    pub desk: Desk,
    /// Fetches the voice notes, photos and files of a turn for its job.
    pub fetcher: Fetcher,
    /// The reactions that show a turn running and how it ended.
    pub reactions: Reactions,
    /// Where the schedule tools' calls are carried out, and `/schedules`.
    pub schedules: Schedules,
    /// The store's file area: where the files an answer sends back wait until sent.
    pub outgoing: std::path::PathBuf,
}

/// Decides what a message is before it is stored: a stranger's (its text and file are
/// not kept), a `/stop`, something the bot cannot use (as the poller found), or a message
/// for the chat's turns.
pub fn classify(settings: &LiveSettings, message: &mut Pending) {
    message.kind = if !settings.get().allowed.contains(&message.user_id) {
        message.text.clear();
        message.media = None;
        message.replied = None;
        message.media_group = None;
        Kind::Stranger
    } else if message.kind == Kind::Unsupported {
        Kind::Unsupported
    } else if message.media.is_none() && commands::parse(&message.text) == Some(Command::Stop) {
        Kind::Stop
    } else {
        Kind::Message
    };
}

#[derive(Clone)]
pub struct ChatRouter {
    inner: Arc<Inner>,
}

/// One conversation's task (a chat's, or one topic's of it), as the router reaches it.
struct ChatEntry {
    /// The chat the task serves: a group's id changes when it becomes a supergroup (its
    /// topic does not: a group has none).
    id: Arc<AtomicI64>,
    wake: Arc<Notify>,
    in_flight: Arc<InFlight>,
    /// Messages that arrived in this run and were not taken into a turn yet.
    waiting: usize,
    /// Of those, the ones whose job start was counted as they were stored.
    counted: HashSet<i64>,
    /// The chat's task has a turn in hand (from taking it to its reply).
    busy: bool,
    /// The rest of an album or a split text its next turn waits for.
    holds: settle::Holds,
}

/// One turn on its way to becoming a job.
pub struct Request {
    pub id: JobId,
    pub chat: i64,
    /// The topic it was asked in: the job's history is that topic's, its answer goes there.
    pub thread: Option<i32>,
    /// The inbox rows the turn answers.
    pub rows: Vec<i64>,
    pub user_id: u64,
    /// What the model is asked: the turn's messages, or the earlier question for `/retry`.
    /// A voice note, photo or file stands in it as its placeholder.
    pub text: String,
    /// The turn's files, each with the placeholder that stands for it in `text`.
    pub media: Vec<(MediaRef, String)>,
    /// A schedule's run: the line its reply starts with (which schedule, and whether it
    /// is late).
    pub heading: Option<String>,
}

impl Request {
    /// The conversation the turn belongs to.
    pub fn place(&self) -> Place {
        Place::new(self.chat, self.thread)
    }
}

struct Inner {
    chats: Mutex<HashMap<Place, ChatEntry>>,
    ctx: JobContext,
    queue_capacity: usize,
    next_job: AtomicU64,
    tasks: TaskTracker,
    /// Cancelled when the gateway stops: chat tasks take no further turn and end.
    closing: CancellationToken,
    /// Which strangers were answered within the hour.
    strangers: Mutex<strangers::StrangerLimit>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Place, ChatEntry>> {
        self.chats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits the gateway's own words as the reply to `answers` and sends them.
    fn reply(&self, place: Place, answers: &[i64], text: &str) {
        // A reply the store refuses is the outbox's to hold and commit again before it goes.
        let _ = self.ctx.outbox.send(Reply {
            pieces: plain_pieces(text),
            ..Reply::closing(place.chat, place.thread, answers, text)
        });
    }

    /// `count` of the conversation's waiting messages were answered or taken.
    fn no_longer_waiting(&self, place: Place, count: usize) {
        if let Some(entry) = self.lock().get_mut(&place) {
            entry.waiting = entry.waiting.saturating_sub(count);
        }
    }
}

impl ChatRouter {
    pub fn new(
        ctx: JobContext,
        queue_capacity: usize,
        tasks: TaskTracker,
        closing: CancellationToken,
    ) -> Self {
        let inner = Arc::new(Inner {
            chats: Mutex::new(HashMap::new()),
            ctx,
            queue_capacity: queue_capacity.max(1),
            next_job: AtomicU64::new(1),
            tasks,
            closing,
            strangers: Mutex::new(strangers::StrangerLimit::default()),
        });
        // Weak: the outbox lives in the router's context and must not keep it alive.
        let router: Weak<Inner> = Arc::downgrade(&inner);
        inner.ctx.outbox.on_chat_moved(move |from, to| {
            if let Some(inner) = router.upgrade() {
                ChatRouter { inner }.moved(from, to);
            }
        });
        ChatRouter { inner }
    }

    /// Decides what `message` is before it is stored ([`classify`]), and whether its job's
    /// start is counted with it ([`Pending::counted`]): when its chat is idle, the job
    /// starts as soon as it is stored (unless it waits for the rest of its album or text).
    pub fn classify(&self, message: &mut Pending) {
        classify(&self.inner.ctx.settings, message);
        message.counted = message.kind == Kind::Message
            && !settle::may_continue(message)
            && self
                .inner
                .lock()
                .get(&message.place())
                .is_none_or(|entry| !entry.busy && entry.waiting == 0);
    }

    /// Takes one message just stored by the poller. Never blocks: jobs run in chat tasks.
    pub fn handle(&self, message: Pending) {
        let place = message.place();
        match message.kind {
            Kind::Stranger => self.stranger(place, message.id, message.user_id),
            Kind::Stop => self.stop(place, message.id),
            Kind::Unsupported => {
                tracing::info!(
                    chat_id = place.chat,
                    "a message the bot cannot use ({})",
                    message.text
                );
                self.inner.reply(
                    place,
                    &[message.id],
                    &replies::not_understood(&message.text),
                );
            }
            Kind::Message => self.arrived(&message),
            // Stored by the timer, which wakes the chat itself.
            Kind::Scheduled => self.wake(place, None, None),
        }
    }

    /// Group `from` became supergroup `to`, and its waiting messages moved there in the
    /// store: the task that served it serves `to` from now on and looks at once (after
    /// the turn it has in hand, so the turns stay in order); if `to` has a task of its
    /// own already (a message came from the supergroup first), that one looks. (A group
    /// has no topics: its one conversation moves.)
    fn moved(&self, from: i64, to: i64) {
        let (from, to) = (Place::from(from), Place::from(to));
        let mut chats = self.inner.lock();
        if let Some(entry) = chats.get(&to) {
            entry.wake.notify_one();
            return;
        }
        match chats.remove(&from) {
            Some(entry) => {
                entry.id.store(to.chat, Ordering::Release);
                entry.wake.notify_one();
                chats.insert(to, entry);
            }
            None => {
                drop(chats);
                self.wake(to, None, None);
            }
        }
    }

    /// Takes up what the previous run left: `unanswered` messages, oldest first. Each
    /// chat's waiting messages become its next turn (however many; none is refused).
    pub fn resume(&self, unanswered: Vec<Pending>) {
        for message in unanswered {
            match message.kind {
                Kind::Message => self.wake(message.place(), None, Some(&message)),
                Kind::Scheduled => self.wake(message.place(), None, None),
                Kind::Stop | Kind::Stranger | Kind::Unsupported => self.handle(message),
            }
        }
    }

    fn arrived(&self, message: &Pending) {
        let (place, row) = (message.place(), message.id);
        let full = self
            .inner
            .lock()
            .get(&place)
            .is_some_and(|entry| entry.waiting >= self.inner.queue_capacity);
        if full {
            tracing::info!(
                chat_id = place.chat,
                "too many messages waiting; refusing one"
            );
            self.inner.reply(place, &[row], replies::QUEUE_FULL);
            return;
        }
        self.wake(place, Some((row, message.counted)), Some(message));
    }

    /// Makes sure the conversation's task runs and looks for a turn; `arrived`: one more
    /// message waits for it (and whether its start was counted as it was stored), recorded
    /// before the task can look; `message`: that message (or one found waiting at a
    /// start), for whether the turn waits for more of it ([`settle`]). What starts a turn
    /// in a given chat and topic (a message stored in the inbox for `place`, then this) is
    /// all a caller needs.
    fn wake(&self, place: Place, arrived: Option<(i64, bool)>, message: Option<&Pending>) {
        // Read only for a message that may continue: the settings are not on every
        // message's path.
        let window = message
            .filter(|m| settle::may_continue(m))
            .map_or(Duration::ZERO, |_| self.inner.ctx.settings.get().settle);
        let now = Instant::now();
        let mut chats = self.inner.lock();
        if let Some(entry) = chats.get_mut(&place) {
            if let Some(message) = message {
                entry.holds.arrived(message, now, window);
            }
            if let Some((row, counted)) = arrived {
                entry.waiting += 1;
                if counted {
                    entry.counted.insert(row);
                }
            }
            entry.wake.notify_one();
            return;
        }
        let id = Arc::new(AtomicI64::new(place.chat));
        let wake = Arc::new(Notify::new());
        let in_flight = Arc::new(InFlight::default());
        let mut holds = settle::Holds::default();
        if let Some(message) = message {
            holds.arrived(message, now, window);
        }
        chats.insert(
            place,
            ChatEntry {
                id: id.clone(),
                wake: wake.clone(),
                in_flight: in_flight.clone(),
                waiting: usize::from(arrived.is_some()),
                counted: arrived
                    .filter(|(_, counted)| *counted)
                    .map(|(row, _)| row)
                    .into_iter()
                    .collect(),
                busy: false,
                holds,
            },
        );
        let router = self.clone();
        self.inner
            .tasks
            .spawn(async move { router.serve_chat(id, place.thread, wake, in_flight).await });
    }

    /// A schedule's run for `place` was stored: its task takes it as a turn of its own.
    pub fn scheduled(&self, place: Place) {
        self.wake(place, None, None);
    }

    /// `/stop`: ends the job in flight in its conversation (its task answers, once the
    /// job's processes are gone) and the messages waiting behind it; a job in another
    /// topic of the chat runs on.
    fn stop(&self, place: Place, row: i64) {
        let chat = place.chat;
        let in_flight = self
            .inner
            .lock()
            .get(&place)
            .map(|entry| entry.in_flight.clone());
        match in_flight.map_or(Stopping::NothingRunning, |slot| slot.stop(row)) {
            Stopping::Cancelled => {
                tracing::info!(chat_id = chat, "stopping the job in flight (/stop)")
            }
            Stopping::NothingRunning => {
                // Messages that came with the /stop but were not taken yet are ended too.
                let waiting = self
                    .inner
                    .ctx
                    .store
                    .waiting(place, row)
                    .unwrap_or_else(|e| {
                        tracing::error!(chat_id = chat, "cannot read the waiting messages: {e}");
                        Vec::new()
                    });
                if waiting.is_empty() {
                    self.inner.reply(place, &[row], replies::NOTHING_RUNNING);
                } else {
                    self.inner.no_longer_waiting(place, waiting.len());
                    let mut answers = waiting;
                    answers.push(row);
                    self.inner.reply(place, &answers, replies::STOPPED);
                }
            }
        }
    }
}
