//! From a stored message to its one reply.
//!
//! Each chat is served by its own task, one turn at a time and in arrival order, so a
//! conversation never answers out of order while many chats run side by side (as many as
//! the supervisor has slots). A turn is everything the chat's people wrote since the last
//! one began, asked as one question: several messages sent in a row are one thought, and
//! the model reads them together. The messages wait in the store's inbox, not in memory,
//! so a restart finds them there and asks them as one turn too. Beyond
//! `telegram.max_queued_per_chat` waiting messages a new one is refused with a reply that
//! says it was not processed. A chat task ends after a quiet minute. `/stop` does not wait
//! for a turn: it ends the job in flight, and the messages waiting behind it, the moment
//! it arrives.
//!
//! Whatever a turn's outcome, its messages get exactly one reply: the answer, or the
//! plain-language text for the failure (see [`crate::replies`]), committed to the outbox
//! ([`crate::outbox`]) with everything it settles before any of it is sent. A message
//! becomes a job in [`prepare`] and the job's progress and outcome reach the chat and the
//! store in [`deliver`]; a command runs in [`crate::commands`]. A message whose jobs keep
//! dying with the gateway (or its worker) is given up after [`MAX_ATTEMPTS`] starts, with
//! an apology, so it cannot take every restart down with it.

mod deliver;
mod prepare;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_protocol::{CancelReason, Failure, JobId, Outcome};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::approvals::Desk;
use crate::circuit::Circuits;
use crate::commands::stop::{InFlight, Stopping};
use crate::commands::{self, Command};
use crate::health::Health;
use crate::jobs::{JobLink, JobRunner};
use crate::media::{Fetcher, JobFiles, MediaRef};
use crate::outbox::{Outbox, Reply};
use crate::replies;
use crate::settings::{ChatSettings, LiveSettings};
use crate::store::{Kind, Pending, Store, Taken};
use crate::telegram::live::LiveReply;
use crate::telegram::sender::{Sender, plain_pieces};

/// A chat task with nothing to do for this long ends; the next message starts a new one.
const CHAT_IDLE: Duration = Duration::from_secs(60);
/// A message whose job was started this many times without an answer is given up.
pub const MAX_ATTEMPTS: u32 = 3;
/// Events of one job that may wait between its worker and its chat: the worker's stream
/// waits (the socket fills) rather than the gateway's memory.
const EVENTS_BOUND: usize = 64;

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
}

/// Decides what a message is before it is stored: a stranger's (its text and file are
/// not kept), a `/stop`, something the bot cannot use (as the poller found), or a message
/// for the chat's turns.
pub fn classify(settings: &LiveSettings, message: &mut Pending) {
    message.kind = if !settings.get().allowed.contains(&message.user_id) {
        message.text.clear();
        message.media = None;
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

/// One chat's task, as the router reaches it.
struct ChatEntry {
    wake: Arc<Notify>,
    in_flight: Arc<InFlight>,
    /// Messages that arrived in this run and were not taken into a turn yet.
    waiting: usize,
    /// Of those, the ones whose job start was counted as they were stored.
    counted: HashSet<i64>,
    /// The chat's task has a turn in hand (from taking it to its reply).
    busy: bool,
}

/// One turn on its way to becoming a job.
pub struct Request {
    pub id: JobId,
    pub chat: i64,
    /// The inbox rows the turn answers.
    pub rows: Vec<i64>,
    pub user_id: u64,
    /// What the model is asked: the turn's messages, or the earlier question for `/retry`.
    /// A voice note, photo or file stands in it as its placeholder.
    pub text: String,
    /// The turn's files, each with the placeholder that stands for it in `text`.
    pub media: Vec<(MediaRef, String)>,
}

struct Inner {
    chats: Mutex<HashMap<i64, ChatEntry>>,
    ctx: JobContext,
    queue_capacity: usize,
    next_job: AtomicU64,
    tasks: TaskTracker,
    /// Cancelled when the gateway stops: chat tasks take no further turn and end.
    closing: CancellationToken,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, ChatEntry>> {
        self.chats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits the gateway's own words as the reply to `answers` and sends them.
    fn reply(&self, chat: i64, answers: &[i64], text: &str) {
        // A store error is logged where it happens; the reply still goes out.
        let _ = self.ctx.outbox.send(Reply {
            chat,
            answers,
            text,
            pieces: plain_pieces(text),
            edit: None,
            exchange: None,
            question: None,
        });
    }

    /// `count` of the chat's waiting messages were answered or taken.
    fn no_longer_waiting(&self, chat: i64, count: usize) {
        if let Some(entry) = self.lock().get_mut(&chat) {
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
        ChatRouter {
            inner: Arc::new(Inner {
                chats: Mutex::new(HashMap::new()),
                ctx,
                queue_capacity: queue_capacity.max(1),
                next_job: AtomicU64::new(1),
                tasks,
                closing,
            }),
        }
    }

    /// Decides what `message` is before it is stored ([`classify`]), and whether its job's
    /// start is counted with it ([`Pending::counted`]): when its chat is idle, the job
    /// starts as soon as it is stored.
    pub fn classify(&self, message: &mut Pending) {
        classify(&self.inner.ctx.settings, message);
        message.counted = message.kind == Kind::Message
            && self
                .inner
                .lock()
                .get(&message.chat_id)
                .is_none_or(|entry| !entry.busy && entry.waiting == 0);
    }

    /// Takes one message just stored by the poller. Never blocks: jobs run in chat tasks.
    pub fn handle(&self, message: Pending) {
        let chat = message.chat_id;
        match message.kind {
            Kind::Stranger => {
                tracing::info!(
                    chat_id = chat,
                    user_id = message.user_id,
                    "message from a user not in telegram.allowed_users"
                );
                self.inner.reply(
                    chat,
                    &[message.update_id],
                    &replies::stranger_text(message.user_id),
                );
            }
            Kind::Stop => self.stop(chat, message.update_id),
            Kind::Unsupported => {
                tracing::info!(
                    chat_id = chat,
                    "a message the bot cannot use ({})",
                    message.text
                );
                self.inner.reply(
                    chat,
                    &[message.update_id],
                    &replies::not_understood(&message.text),
                );
            }
            Kind::Message => self.arrived(chat, message.update_id, message.counted),
        }
    }

    /// Takes up what the previous run left: `unanswered` messages, oldest first. Each
    /// chat's waiting messages become its next turn (however many; none is refused).
    pub fn resume(&self, unanswered: Vec<Pending>) {
        for message in unanswered {
            match message.kind {
                Kind::Message => self.wake(message.chat_id, None),
                Kind::Stop | Kind::Stranger | Kind::Unsupported => self.handle(message),
            }
        }
    }

    fn arrived(&self, chat: i64, update_id: i64, counted: bool) {
        let full = self
            .inner
            .lock()
            .get(&chat)
            .is_some_and(|entry| entry.waiting >= self.inner.queue_capacity);
        if full {
            tracing::info!(chat_id = chat, "too many messages waiting; refusing one");
            self.inner.reply(chat, &[update_id], replies::QUEUE_FULL);
            return;
        }
        self.wake(chat, Some((update_id, counted)));
    }

    /// Makes sure the chat's task runs and looks for a turn; `arrived`: one more message
    /// waits for it (and whether its start was counted as it was stored), recorded before
    /// the task can look.
    fn wake(&self, chat: i64, arrived: Option<(i64, bool)>) {
        let mut chats = self.inner.lock();
        if let Some(entry) = chats.get_mut(&chat) {
            if let Some((update_id, counted)) = arrived {
                entry.waiting += 1;
                if counted {
                    entry.counted.insert(update_id);
                }
            }
            entry.wake.notify_one();
            return;
        }
        let wake = Arc::new(Notify::new());
        let in_flight = Arc::new(InFlight::default());
        chats.insert(
            chat,
            ChatEntry {
                wake: wake.clone(),
                in_flight: in_flight.clone(),
                waiting: usize::from(arrived.is_some()),
                counted: arrived
                    .filter(|(_, counted)| *counted)
                    .map(|(update_id, _)| update_id)
                    .into_iter()
                    .collect(),
                busy: false,
            },
        );
        let router = self.clone();
        self.inner
            .tasks
            .spawn(async move { router.serve_chat(chat, wake, in_flight).await });
    }

    /// `/stop`: ends the job in flight (its task answers, once the job's processes are
    /// gone) and the messages waiting behind it.
    fn stop(&self, chat: i64, update_id: i64) {
        let in_flight = self
            .inner
            .lock()
            .get(&chat)
            .map(|entry| entry.in_flight.clone());
        match in_flight.map_or(Stopping::NothingRunning, |slot| slot.stop(update_id)) {
            Stopping::Cancelled => {
                tracing::info!(chat_id = chat, "stopping the job in flight (/stop)")
            }
            Stopping::NothingRunning => {
                // Messages that came with the /stop but were not taken yet are ended too.
                let waiting = self
                    .inner
                    .ctx
                    .store
                    .waiting(chat, update_id)
                    .unwrap_or_else(|e| {
                        tracing::error!(chat_id = chat, "cannot read the waiting messages: {e}");
                        Vec::new()
                    });
                if waiting.is_empty() {
                    self.inner
                        .reply(chat, &[update_id], replies::NOTHING_RUNNING);
                } else {
                    self.inner.no_longer_waiting(chat, waiting.len());
                    let mut answers = waiting;
                    answers.push(update_id);
                    self.inner.reply(chat, &answers, replies::STOPPED);
                }
            }
        }
    }

    async fn serve_chat(self, chat: i64, wake: Arc<Notify>, in_flight: Arc<InFlight>) {
        // Whether this chat was told that the gateway restarts and its messages wait.
        let mut announced = false;
        loop {
            if self.inner.closing.is_cancelled() {
                self.announce_restart(chat, announced);
                break;
            }
            let counted = self
                .inner
                .lock()
                .get(&chat)
                .map(|entry| entry.counted.clone())
                .unwrap_or_default();
            let turn = match self.inner.ctx.store.take_turn(
                chat,
                |text| commands::parse(text).is_some(),
                |update_id| counted.contains(&update_id),
            ) {
                Ok(turn) => turn,
                Err(e) => {
                    tracing::error!(chat_id = chat, "cannot take the chat's next messages: {e}");
                    Vec::new()
                }
            };
            if let Some(entry) = self.inner.lock().get_mut(&chat) {
                entry.busy = !turn.is_empty();
                if turn.is_empty() {
                    entry.waiting = 0;
                    entry.counted.clear();
                } else {
                    entry.waiting = entry.waiting.saturating_sub(turn.len());
                    for taken in &turn {
                        entry.counted.remove(&taken.update_id);
                    }
                }
            }
            if !turn.is_empty() {
                announced |= self.run_turn(chat, turn, &in_flight).await;
                continue;
            }
            let idle = tokio::select! {
                _ = wake.notified() => false,
                _ = self.inner.closing.cancelled() => false,
                _ = tokio::time::sleep(CHAT_IDLE) => true,
            };
            // A message that arrived as the minute ran out counts: it is taken first.
            if idle && self.inner.lock().get(&chat).is_none_or(|e| e.waiting == 0) {
                break;
            }
        }
        let mut chats = self.inner.lock();
        if chats
            .get(&chat)
            .is_some_and(|entry| Arc::ptr_eq(&entry.wake, &wake))
        {
            chats.remove(&chat);
        }
    }

    /// The gateway stops with messages of this chat still waiting and nobody told: they
    /// are kept for the next run, and the chat hears so.
    fn announce_restart(&self, chat: i64, announced: bool) {
        if announced {
            return;
        }
        match self.inner.ctx.store.waiting(chat, i64::MAX) {
            Ok(waiting) if !waiting.is_empty() => {
                self.inner.reply(chat, &[], replies::SAVED_FOR_RESTART);
            }
            Ok(_) => {}
            Err(e) => tracing::error!(chat_id = chat, "cannot read the waiting messages: {e}"),
        }
    }

    /// One turn: the messages taken, as a command or as one question for a job. True when
    /// the chat was told its messages wait for the next run.
    async fn run_turn(&self, chat: i64, turn: Vec<Taken>, in_flight: &InFlight) -> bool {
        let ctx = &self.inner.ctx;
        let settings = ctx.settings.get();
        // Allowed when stored; a reload may have removed them since.
        let (turn, strangers): (Vec<Taken>, Vec<Taken>) = turn
            .into_iter()
            .partition(|m| settings.allowed.contains(&m.user_id));
        for stranger in strangers {
            self.inner.reply(
                chat,
                &[stranger.update_id],
                &replies::stranger_text(stranger.user_id),
            );
        }
        let (poisoned, turn): (Vec<Taken>, Vec<Taken>) = turn
            .into_iter()
            .partition(|m| m.earlier_attempts >= MAX_ATTEMPTS);
        if !poisoned.is_empty() {
            let rows: Vec<i64> = poisoned.iter().map(|m| m.update_id).collect();
            tracing::warn!(
                chat_id = chat,
                update_ids = ?rows,
                "giving up on message(s) whose job was started {MAX_ATTEMPTS} times without an answer"
            );
            self.inner
                .reply(chat, &rows, &replies::gave_up(MAX_ATTEMPTS));
        }
        let Some(first) = turn.first() else {
            return false;
        };
        let user_id = first.user_id;
        let rows: Vec<i64> = turn.iter().map(|m| m.update_id).collect();
        // A command is always taken alone; a caption is never one.
        let mut media = Vec::new();
        let command =
            commands::parse(&first.text).filter(|_| turn.len() == 1 && first.media.is_none());
        let text = match command {
            Some(command) => {
                let command_ctx = commands::Context {
                    chat,
                    user: user_id,
                    store: &ctx.store,
                    settings: &settings,
                    health: &ctx.health,
                    circuits: &ctx.circuits,
                };
                match commands::execute(&command_ctx, command) {
                    commands::Outcome::Reply(reply) => {
                        self.inner.reply(chat, &rows, &reply);
                        return false;
                    }
                    commands::Outcome::Ask(text) => text,
                }
            }
            None => {
                let texts: Vec<Cow<str>> = turn
                    .iter()
                    .map(|m| match &m.media {
                        None => Cow::Borrowed(m.text.as_str()),
                        Some(file) => {
                            let placeholder = file.placeholder();
                            media.push((file.clone(), placeholder.clone()));
                            Cow::Owned(if m.text.trim().is_empty() {
                                placeholder
                            } else {
                                format!("{placeholder}\n{}", m.text)
                            })
                        }
                    })
                    .collect();
                texts.join("\n")
            }
        };
        let id = JobId(self.inner.next_job.fetch_add(1, Ordering::Relaxed));
        let request = Request {
            id,
            chat,
            rows,
            user_id,
            text,
            media,
        };
        self.run_job(request, in_flight).await
    }

    /// One turn through one job: prepared, run with its progress shown, delivered. True
    /// when the job was cut short by the gateway stopping (and the chat told).
    async fn run_job(&self, request: Request, in_flight: &InFlight) -> bool {
        let ctx = &self.inner.ctx;
        // The settings this job starts with; a reload meanwhile does not change them.
        let settings = ctx.settings.get();
        let started = Instant::now();
        let mut live = LiveReply::new(
            ctx.sender.clone(),
            request.chat,
            settings.streaming,
            settings.edit_interval,
        );
        let mut stop_requests = Vec::new();
        // The turn's files, kept for its job and removed when it ends, however it ends.
        let mut files: Option<JobFiles> = None;
        let outcome = match prepare::prepare(ctx, &settings, &request, started) {
            Ok(mut prepared) => 'job: {
                let cancel = in_flight.begin();
                if !request.media.is_empty() {
                    match fetch(ctx, &settings, &request, &cancel).await {
                        Ok((fetched, attachments)) => {
                            files = Some(fetched);
                            prepared.job.attachments = attachments;
                        }
                        Err(failure) => {
                            stop_requests = in_flight.end();
                            break 'job Outcome::Failed(failure);
                        }
                    }
                }
                let (events, events_rx) = mpsc::channel(EVENTS_BOUND);
                let (approvals, approvals_rx) = mpsc::unbounded_channel();
                let link = JobLink {
                    events,
                    approvals,
                    cancel,
                };
                let run = ctx.runner.run(prepared.job, link);
                let (outcome, fallbacks) = deliver::follow(
                    ctx,
                    request.chat,
                    run,
                    deliver::Incoming {
                        events: events_rx,
                        approvals: approvals_rx,
                    },
                    &mut live,
                )
                .await;
                stop_requests = in_flight.end();
                ctx.circuits
                    .settle(&prepared.plan, &fallbacks, &outcome, Instant::now());
                outcome
            }
            Err(failure) => Outcome::Failed(failure),
        };
        drop(files);
        ctx.health.job_done(&outcome);
        deliver::deliver(&self.inner, request, outcome, live, stop_requests, started)
    }
}

/// Fetches the files of `request` for its job, within the limits and the time bound, or
/// until `/stop`.
async fn fetch(
    ctx: &JobContext,
    settings: &ChatSettings,
    request: &Request,
    cancel: &CancellationToken,
) -> Result<(JobFiles, Vec<hermes_protocol::Attachment>), Failure> {
    tokio::select! {
        _ = cancel.cancelled() => Err(Failure::Cancelled { reason: CancelReason::ByUser }),
        fetched = ctx.fetcher.fetch(request.id, &request.media, &settings.media) => {
            fetched.map_err(|problem| {
                tracing::info!(chat_id = request.chat, "a file of the turn is refused: {problem}");
                Failure::Media { problem }
            })
        }
    }
}
