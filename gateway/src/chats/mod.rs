//! From a Telegram update to a reply in the chat.
//!
//! Each chat is served by its own task, one job at a time and in arrival order, so a
//! conversation never answers out of order while many chats run side by side (as many as
//! the supervisor has slots). Messages arriving while a chat's job runs wait in a bounded
//! queue; beyond it the sender is asked to wait. A chat task ends after a quiet minute.
//! `/stop` does not queue: it cancels the job in flight the moment it arrives.
//!
//! Whatever the job's outcome, the chat gets exactly one reply: the answer, or the
//! plain-language text for the failure (see [`crate::replies`]). A message becomes a job
//! in [`prepare`] and the job's progress and outcome reach the chat and the store in
//! [`deliver`]; a command runs in [`crate::commands`].

mod deliver;
mod prepare;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_protocol::{JobId, Outcome};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::approvals::Desk;
use crate::circuit::Circuits;
use crate::commands::stop::{InFlight, Stopping};
use crate::commands::{self, Command};
use crate::health::Health;
use crate::jobs::{JobLink, JobRunner};
use crate::replies;
use crate::settings::LiveSettings;
use crate::store::{Exchange, Pending, Store};
use crate::telegram::live::LiveReply;
use crate::telegram::sender::Sender;

/// A chat task with nothing to do for this long ends; the next message starts a new one.
const CHAT_IDLE: Duration = Duration::from_secs(60);

/// What the chats need to build and run a job.
pub struct JobContext {
    pub runner: Arc<dyn JobRunner>,
    pub health: Arc<Health>,
    pub circuits: Arc<Circuits>,
    pub sender: Sender,
    pub settings: LiveSettings,
    pub store: Arc<Store>,
    /// Turns of history sent with each job.
    pub max_history: usize,
    /// Where a job's tool calls that need approval are asked about.
    pub desk: Desk,
}

/// A chat task stops waiting for messages: idle too long, or the gateway is stopping.
struct ChatEnds;

impl From<tokio::time::error::Elapsed> for ChatEnds {
    fn from(_: tokio::time::error::Elapsed) -> Self {
        ChatEnds
    }
}

#[derive(Clone)]
pub struct ChatRouter {
    inner: Arc<Inner>,
}

/// One chat's task, as the router reaches it.
struct ChatEntry {
    queue: mpsc::Sender<Pending>,
    in_flight: Arc<InFlight>,
}

/// One message on its way to becoming a job.
pub struct Request {
    pub id: JobId,
    pub chat: i64,
    pub update_id: i64,
    pub user_id: u64,
    /// What the model is asked: the message, or the earlier one for `/retry`.
    pub text: String,
}

struct Inner {
    chats: Mutex<HashMap<i64, ChatEntry>>,
    ctx: JobContext,
    queue_capacity: usize,
    next_job: AtomicU64,
    tasks: TaskTracker,
    /// Cancelled when the gateway stops: chat tasks then answer what they hold and end.
    closing: CancellationToken,
}

impl Inner {
    /// Marks a stored message answered; failing that, it is answered again after a restart.
    fn done(&self, update_id: i64, reply: &str) {
        self.finish(update_id, reply, None);
    }

    fn finish(&self, update_id: i64, reply: &str, exchange: Option<&Exchange>) {
        if let Err(e) = self.ctx.store.finish(update_id, reply, exchange) {
            tracing::warn!(update_id, "cannot mark the message answered: {e}");
        }
    }

    /// Replies with the gateway's own words and marks `update_id` answered, off the
    /// caller's task.
    fn reply_later(self: &Arc<Self>, chat: i64, update_id: i64, text: String) {
        let inner = self.clone();
        self.tasks.spawn(async move {
            inner.ctx.sender.send_text(chat, &text).await;
            inner.done(update_id, &text);
        });
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

    /// Takes one stored message (from the poller, or left unanswered by the previous
    /// run). Never blocks: jobs run in chat tasks.
    pub fn handle(&self, message: Pending) {
        let chat = message.chat_id;
        let user_id = message.user_id;
        if !self.inner.ctx.settings.get().allowed.contains(&user_id) {
            tracing::info!(
                chat_id = chat,
                user_id,
                "message from a user not in telegram.allowed_users"
            );
            self.inner
                .reply_later(chat, message.update_id, replies::stranger_text(user_id));
            return;
        }
        if commands::parse(&message.text) == Some(Command::Stop) {
            self.stop(chat, message.update_id);
            return;
        }
        self.enqueue(chat, message);
    }

    /// `/stop`: the job's own task answers once the job's processes are gone.
    fn stop(&self, chat: i64, update_id: i64) {
        let in_flight = self
            .inner
            .chats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&chat)
            .map(|entry| entry.in_flight.clone());
        match in_flight.map_or(Stopping::NothingRunning, |slot| slot.stop(update_id)) {
            Stopping::Cancelled => {
                tracing::info!(chat_id = chat, "stopping the job in flight (/stop)")
            }
            Stopping::NothingRunning => {
                self.inner
                    .reply_later(chat, update_id, replies::NOTHING_RUNNING.to_string())
            }
        }
    }

    fn enqueue(&self, chat: i64, message: Pending) {
        let mut chats = self.inner.chats.lock().unwrap_or_else(|e| e.into_inner());
        let message = match chats.get(&chat) {
            None => message,
            Some(entry) => match entry.queue.try_send(message) {
                Ok(()) => return,
                Err(TrySendError::Full(_)) => {
                    tracing::info!(chat_id = chat, "chat queue full; asking the user to wait");
                    let sender = self.inner.ctx.sender.clone();
                    self.inner.tasks.spawn(async move {
                        sender.send_text(chat, replies::QUEUE_FULL).await;
                    });
                    return;
                }
                Err(TrySendError::Closed(message)) => message,
            },
        };
        let (tx, rx) = mpsc::channel(self.inner.queue_capacity);
        // A fresh channel has room for one message.
        let _ = tx.try_send(message);
        let in_flight = Arc::new(InFlight::default());
        chats.insert(
            chat,
            ChatEntry {
                queue: tx.clone(),
                in_flight: in_flight.clone(),
            },
        );
        let router = self.clone();
        self.inner
            .tasks
            .spawn(async move { router.serve_chat(chat, tx, rx, in_flight).await });
    }

    async fn serve_chat(
        self,
        chat: i64,
        own: mpsc::Sender<Pending>,
        mut rx: mpsc::Receiver<Pending>,
        in_flight: Arc<InFlight>,
    ) {
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(CHAT_IDLE, rx.recv()) => next.map_err(ChatEnds::from),
                _ = self.inner.closing.cancelled() => Err(ChatEnds),
            };
            match next {
                Ok(Some(message)) => self.answer(chat, message, &in_flight).await,
                Ok(None) => break,
                Err(_) => {
                    // Close first, then drain: a message that got in before the close is
                    // still answered; one after it finds the channel closed and starts a
                    // new task.
                    rx.close();
                    while let Ok(message) = rx.try_recv() {
                        self.answer(chat, message, &in_flight).await;
                    }
                    break;
                }
            }
        }
        let mut chats = self.inner.chats.lock().unwrap_or_else(|e| e.into_inner());
        if chats
            .get(&chat)
            .is_some_and(|entry| entry.queue.same_channel(&own))
        {
            chats.remove(&chat);
        }
    }

    async fn answer(&self, chat: i64, message: Pending, in_flight: &InFlight) {
        let ctx = &self.inner.ctx;
        let text = match commands::parse(&message.text) {
            Some(command) => {
                let settings = ctx.settings.get();
                let command_ctx = commands::Context {
                    chat,
                    user: message.user_id,
                    store: &ctx.store,
                    settings: &settings,
                    health: &ctx.health,
                    circuits: &ctx.circuits,
                };
                match commands::execute(&command_ctx, command) {
                    commands::Outcome::Reply(reply) => {
                        ctx.sender.send_text(chat, &reply).await;
                        self.inner.done(message.update_id, &reply);
                        return;
                    }
                    commands::Outcome::Ask(text) => text,
                }
            }
            None => message.text.clone(),
        };
        let id = JobId(self.inner.next_job.fetch_add(1, Ordering::Relaxed));
        let request = Request {
            id,
            chat,
            update_id: message.update_id,
            user_id: message.user_id,
            text,
        };
        self.run_job(request, in_flight).await;
    }

    /// One message through one job: prepared, run with its progress shown, delivered.
    async fn run_job(&self, request: Request, in_flight: &InFlight) {
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
        let outcome = match prepare::prepare(ctx, &settings, &request, started) {
            Ok(prepared) => {
                let (events, events_rx) = mpsc::unbounded_channel();
                let (approvals, approvals_rx) = mpsc::unbounded_channel();
                let link = JobLink {
                    events,
                    approvals,
                    cancel: in_flight.begin(),
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
        ctx.health.job_done(&outcome);
        deliver::deliver(&self.inner, request, outcome, live, stop_requests, started).await;
    }
}
