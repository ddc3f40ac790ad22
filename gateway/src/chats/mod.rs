//! From a Telegram update to a reply in the chat.
//!
//! Each chat is served by its own task, one job at a time and in arrival order, so a
//! conversation never answers out of order while many chats run side by side (as many as
//! the supervisor has slots). Messages arriving while a chat's job runs wait in a bounded
//! queue; beyond it the sender is asked to wait. A chat task ends after a quiet minute.
//! `/stop` does not queue: it cancels the job in flight the moment it arrives.
//!
//! Whatever the job's outcome, the chat gets exactly one reply: the answer, or the
//! plain-language text for the failure (see [`crate::replies`]). Running one job is
//! [`job`]'s business.

mod job;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::circuit::Circuits;
use crate::commands::{self, Command};
use crate::health::Health;
use crate::jobs::JobRunner;
use crate::replies;
use crate::settings::LiveSettings;
use crate::store::{Exchange, Pending, Store};
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
    in_flight: Arc<InFlightSlot>,
}

/// The chat's job in flight, if any, where `/stop` finds it.
#[derive(Default)]
struct InFlightSlot(Mutex<Option<InFlight>>);

struct InFlight {
    cancel: CancellationToken,
    /// `/stop` messages that asked for this job's end; answered with it.
    stop_requests: Vec<i64>,
}

impl InFlightSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<InFlight>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin(&self) -> CancellationToken {
        let cancel = CancellationToken::new();
        *self.lock() = Some(InFlight {
            cancel: cancel.clone(),
            stop_requests: Vec::new(),
        });
        cancel
    }

    /// Ends the job's stay in the slot; the `/stop` messages that came for it.
    fn end(&self) -> Vec<i64> {
        self.lock()
            .take()
            .map(|f| f.stop_requests)
            .unwrap_or_default()
    }

    /// Cancels the job in flight for `/stop` message `update_id`; false when none runs.
    fn stop(&self, update_id: i64) -> bool {
        match self.lock().as_mut() {
            Some(in_flight) => {
                in_flight.stop_requests.push(update_id);
                in_flight.cancel.cancel();
                true
            }
            None => false,
        }
    }
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
            tracing::warn!(update = update_id, "cannot mark the message answered: {e}");
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
                chat,
                user = user_id,
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
        let stopping = self
            .inner
            .chats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&chat)
            .is_some_and(|entry| entry.in_flight.stop(update_id));
        if stopping {
            tracing::info!(chat, "stopping the job in flight (/stop)");
        } else {
            self.inner
                .reply_later(chat, update_id, commands::stop::NOTHING_RUNNING.to_string());
        }
    }

    fn enqueue(&self, chat: i64, message: Pending) {
        let mut chats = self.inner.chats.lock().unwrap_or_else(|e| e.into_inner());
        let message = match chats.get(&chat) {
            None => message,
            Some(entry) => match entry.queue.try_send(message) {
                Ok(()) => return,
                Err(TrySendError::Full(_)) => {
                    tracing::info!(chat, "chat queue full; asking the user to wait");
                    let sender = self.inner.ctx.sender.clone();
                    self.inner.tasks.spawn(async move {
                        sender
                            .send_text(
                                chat,
                                "⏳ I'm still working on your earlier messages. Please wait for those answers before sending more.",
                            )
                            .await;
                    });
                    return;
                }
                Err(TrySendError::Closed(message)) => message,
            },
        };
        let (tx, rx) = mpsc::channel(self.inner.queue_capacity);
        // A fresh channel has room for one message.
        let _ = tx.try_send(message);
        let in_flight = Arc::new(InFlightSlot::default());
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
        in_flight: Arc<InFlightSlot>,
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

    async fn answer(&self, chat: i64, message: Pending, in_flight: &InFlightSlot) {
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
        let id = hermes_protocol::JobId(self.inner.next_job.fetch_add(1, Ordering::Relaxed));
        job::run(
            &self.inner,
            job::Request {
                id,
                chat,
                update_id: message.update_id,
                user_id: message.user_id,
                text,
            },
            in_flight,
        )
        .await;
    }
}
