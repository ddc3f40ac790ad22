//! From a Telegram update to a reply in the chat.
//!
//! Each chat is served by its own task, one job at a time and in arrival order, so a
//! conversation never answers out of order while many chats run side by side (as many as
//! the supervisor has slots). Messages arriving while a chat's job runs wait in a bounded
//! queue; beyond it the sender is asked to wait. A chat task ends after a quiet minute.
//!
//! Whatever the job's outcome, the chat gets exactly one reply: the answer, or the
//! plain-language text for the failure (see [`crate::replies`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_protocol::{ChatMessage, Event, Failure, Job, JobId, Outcome, Role};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::circuit::Circuits;
use crate::commands::{self, Command};
use crate::health::Health;
use crate::replies;
use crate::settings::LiveSettings;
use crate::store::{Exchange, Pending, Store};
use crate::supervisor::Supervisor;
use crate::telegram::sender::Sender;

/// A chat task with nothing to do for this long ends; the next message starts a new one.
const CHAT_IDLE: Duration = Duration::from_secs(60);
/// How often "typing…" is renewed while a job runs (Telegram shows it for ~5 s).
const TYPING_EVERY: Duration = Duration::from_secs(4);
/// "typing…" starts only once a job has run this long: a reply that comes sooner makes
/// the indicator invisible anyway, and skipping it saves a Bot API call per message
/// (a sixth of the gateway's instructions per message in the throughput benchmark).
const TYPING_AFTER: Duration = Duration::from_millis(300);

/// What the chats need to build and run a job.
pub struct JobContext {
    pub supervisor: Supervisor,
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

struct Incoming {
    message: Pending,
}

#[derive(Clone)]
pub struct ChatRouter {
    inner: Arc<Inner>,
}

enum CommandResult {
    Reply(String),
    /// Run this text as a job (`/retry`).
    Ask(String),
}

struct Inner {
    chats: Mutex<HashMap<i64, mpsc::Sender<Incoming>>>,
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
            let ctx = self.inner.clone();
            self.inner.tasks.spawn(async move {
                let text = replies::stranger_text(user_id);
                ctx.ctx.sender.send_text(chat, &text).await;
                ctx.done(message.update_id, &text);
            });
            return;
        }
        self.enqueue(chat, Incoming { message });
    }

    fn enqueue(&self, chat: i64, incoming: Incoming) {
        let mut chats = self.inner.chats.lock().unwrap_or_else(|e| e.into_inner());
        let incoming = match chats.get(&chat) {
            None => incoming,
            Some(tx) => match tx.try_send(incoming) {
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
                Err(TrySendError::Closed(incoming)) => incoming,
            },
        };
        let (tx, rx) = mpsc::channel(self.inner.queue_capacity);
        // A fresh channel has room for one message.
        let _ = tx.try_send(incoming);
        chats.insert(chat, tx.clone());
        let router = self.clone();
        self.inner
            .tasks
            .spawn(async move { router.serve_chat(chat, tx, rx).await });
    }

    async fn serve_chat(
        self,
        chat: i64,
        own: mpsc::Sender<Incoming>,
        mut rx: mpsc::Receiver<Incoming>,
    ) {
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(CHAT_IDLE, rx.recv()) => next.map_err(ChatEnds::from),
                _ = self.inner.closing.cancelled() => Err(ChatEnds),
            };
            match next {
                Ok(Some(incoming)) => self.answer(chat, incoming).await,
                Ok(None) => break,
                Err(_) => {
                    // Close first, then drain: a message that got in before the close is
                    // still answered; one after it finds the channel closed and starts a
                    // new task.
                    rx.close();
                    while let Ok(incoming) = rx.try_recv() {
                        self.answer(chat, incoming).await;
                    }
                    break;
                }
            }
        }
        let mut chats = self.inner.chats.lock().unwrap_or_else(|e| e.into_inner());
        if chats.get(&chat).is_some_and(|tx| tx.same_channel(&own)) {
            chats.remove(&chat);
        }
    }

    async fn answer(&self, chat: i64, incoming: Incoming) {
        let message = incoming.message;
        let text = match commands::parse(&message.text) {
            Some(command) => match self.command(chat, command).await {
                CommandResult::Reply(reply) => {
                    self.inner.ctx.sender.send_text(chat, &reply).await;
                    self.inner.done(message.update_id, &reply);
                    return;
                }
                CommandResult::Ask(text) => text,
            },
            None => message.text.clone(),
        };
        self.run_job(chat, message.update_id, message.user_id, text)
            .await;
    }

    async fn command(&self, chat: i64, command: Command) -> CommandResult {
        let ctx = &self.inner.ctx;
        match command {
            Command::Help => CommandResult::Reply(commands::HELP.to_string()),
            Command::New => match ctx.store.new_conversation(chat) {
                Ok(()) => CommandResult::Reply(
                    "🆕 Started a new conversation: earlier messages are no longer sent to the model.".into(),
                ),
                Err(e) => {
                    tracing::error!(chat, "cannot start a new conversation: {e}");
                    CommandResult::Reply("⚠️ I could not start a new conversation; please try again.".into())
                }
            },
            Command::Retry => match ctx.store.last_user_text(chat) {
                Ok(Some(text)) => CommandResult::Ask(text),
                Ok(None) => CommandResult::Reply("There is no earlier message to retry.".into()),
                Err(e) => {
                    tracing::error!(chat, "cannot read the last message: {e}");
                    CommandResult::Reply("⚠️ I could not find your last message; please send it again.".into())
                }
            },
            Command::Status => {
                let settings = ctx.settings.get();
                let snapshot = ctx.health.snapshot(Vec::new());
                CommandResult::Reply(commands::status_text(&snapshot, &settings.provider_models, &ctx.circuits))
            }
            Command::Unknown(name) => CommandResult::Reply(format!(
                "I don't know the command /{name}. Send /help to see what I understand."
            )),
        }
    }

    async fn run_job(&self, chat: i64, update_id: i64, user_id: u64, text: String) {
        let ctx = &self.inner.ctx;
        let id = JobId(self.inner.next_job.fetch_add(1, Ordering::Relaxed));
        // The settings this job starts with; a reload meanwhile does not change them.
        let settings = ctx.settings.get();
        let mut messages = Vec::new();
        if let Some(prompt) = &settings.system_prompt {
            messages.push(ChatMessage::new(Role::System, prompt.clone()));
        }
        match ctx.store.history(chat, ctx.max_history) {
            Ok(history) => messages.extend(history),
            Err(e) => tracing::warn!(
                chat,
                "cannot read the conversation history, sending none: {e}"
            ),
        }
        messages.push(ChatMessage::new(Role::User, text.clone()));
        let started = Instant::now();
        let plan = ctx.circuits.plan(&settings.providers, started);
        if plan.providers.is_empty() {
            let (provider, remaining) = plan.first_skipped.clone().unwrap_or_default();
            let failure = Failure::QuotaExhausted {
                provider,
                detail: format!(
                    "quota circuit open for {} s more; no request sent",
                    remaining.as_secs()
                ),
            };
            tracing::warn!(job = %id, chat, user = user_id, class = %failure.class(), "failed: {failure}");
            ctx.health.job_done(&Outcome::Failed(failure.clone()));
            let reply = replies::failure_text(&failure);
            ctx.sender.send_text(chat, &reply).await;
            self.inner.done(update_id, &reply);
            return;
        }
        let job = Job {
            id,
            chat_id: chat,
            messages,
            providers: plan.providers.clone(),
            timeout_ms: u64::try_from(settings.job_timeout.as_millis()).unwrap_or(u64::MAX),
            stream: false,
            tools: settings.tools.clone(),
            max_steps: settings.max_steps,
        };
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let run = ctx.supervisor.run(job, Some(events_tx));
        tokio::pin!(run);
        let typing = keep_typing(&ctx.sender, chat);
        tokio::pin!(typing);
        // Only fallbacks matter once the job is over; keep those, let the rest go.
        let mut fallbacks = Vec::new();
        let outcome = loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                Some(event) = events_rx.recv() => {
                    if matches!(event, Event::FellBack { .. }) {
                        fallbacks.push(event);
                    }
                }
                never = &mut typing => match never {},
            }
        };
        while let Ok(event) = events_rx.try_recv() {
            if matches!(event, Event::FellBack { .. }) {
                fallbacks.push(event);
            }
        }
        ctx.circuits
            .settle(&plan, &fallbacks, &outcome, Instant::now());
        ctx.health.job_done(&outcome);
        let elapsed_ms = started.elapsed().as_millis();
        let (reply, exchange, answered) = match outcome {
            Outcome::Reply(reply) => {
                tracing::info!(job = %id, chat, user = user_id, provider = %reply.provider, elapsed_ms, "answered");
                let shown = if reply.text.trim().is_empty() {
                    "(The model returned an empty answer.)".to_string()
                } else {
                    reply.text.clone()
                };
                let exchange = Exchange {
                    chat_id: chat,
                    question: text,
                    answer: reply.text,
                    provider: reply.provider,
                    model: reply.model,
                };
                (shown, Some(exchange), true)
            }
            Outcome::Failed(failure) => {
                tracing::warn!(job = %id, chat, user = user_id, class = %failure.class(), elapsed_ms, "failed: {failure}");
                // A job cancelled by a stop stays in the inbox: the next run answers it.
                let answered = !matches!(failure, Failure::Cancelled { .. });
                (replies::failure_text(&failure), None, answered)
            }
        };
        ctx.sender.send_text(chat, &reply).await;
        if answered {
            self.inner.finish(update_id, &reply, exchange.as_ref());
        }
    }
}

async fn keep_typing(sender: &Sender, chat: i64) -> std::convert::Infallible {
    tokio::time::sleep(TYPING_AFTER).await;
    loop {
        sender.typing(chat).await;
        tokio::time::sleep(TYPING_EVERY).await;
    }
}
