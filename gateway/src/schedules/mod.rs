//! Schedules: reminders and scheduled tasks the model sets up for a chat with the
//! worker's built-in tools, kept by the gateway alone and fired as turns like any other.
//!
//! The model asks through its worker (`FromWorker::Schedule`); [`Schedules::answer`]
//! checks the time (a local date-time, a delay, or a cron expression, in the chat's time
//! zone: `[schedules] time_zone`, or the chat's `/timezone`), bounds the chat's count
//! (`max_per_chat`) and writes the store. [`Schedules::run`] is the timer: it looks at the
//! wall clock every [`TICK`] (so a clock that jumps, a suspended machine, or a test's
//! libfaketime offset is seen within it, and nothing waits on a monotonic sleep computed
//! from a wall time) and fires what is due: in one store transaction the run's turn goes
//! into the inbox and the schedule moves to its next time, then the chat's task is woken.
//! From there a run is a message: answered once, through the outbox, across restarts. A
//! schedule found overdue (the gateway was down) fires once, marked late, and moves to its
//! next time after now: never once per missed slot. A run whose user is no longer in
//! `telegram.allowed_users` is skipped.
//!
//! Here: the handle, the tools' answers and the timer; the times in [`times`]; the
//! `/schedules` list with its cancel buttons and `/timezone` in [`chat`]; the operator's
//! `hermes-gateway schedules` in [`cli`].

pub mod chat;
pub mod cli;
pub mod times;

use std::sync::Arc;
use std::time::Duration;

use hermes_config::SchedulesConfig;
use hermes_protocol::{ScheduleAction, ScheduleAnswer, ScheduleOffer, When};

use crate::topics::Place;
use tokio_util::sync::CancellationToken;

use crate::chats::ChatRouter;
use crate::clock::unix_now;
use crate::health::Health;
use crate::settings::LiveSettings;
use crate::store::{Due, NewSchedule, Store};

/// How often the timer reads the wall clock.
const TICK: Duration = Duration::from_secs(1);
/// A run fired this long after its time is marked late (the gateway was down, or the
/// machine asleep).
const LATE_AFTER_SECS: i64 = 90;
/// The status's run counts are read from the store every this many ticks.
const COUNT_EVERY: u32 = 5;

/// The gateway's schedules: the store they live in and the `[schedules]` section.
#[derive(Clone)]
pub struct Schedules {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    config: SchedulesConfig,
}

fn now() -> i64 {
    i64::try_from(unix_now()).unwrap_or(i64::MAX)
}

impl Schedules {
    pub fn new(store: Arc<Store>, config: SchedulesConfig) -> Self {
        Schedules {
            inner: Arc::new(Inner { store, config }),
        }
    }

    /// The chat's time zone: its own (`/timezone`), else the configured default.
    pub fn zone_of(&self, chat: i64) -> String {
        match self.inner.store.chat_time_zone(chat) {
            Ok(Some(zone)) => zone,
            Ok(None) => self.inner.config.time_zone.clone(),
            Err(e) => {
                tracing::warn!(chat_id = chat, "cannot read the chat's time zone: {e}");
                self.inner.config.time_zone.clone()
            }
        }
    }

    /// What a job of `chat` is told: its zone, and the local time now; None when the
    /// tools are off (`max_per_chat = 0`).
    pub fn offer(&self, chat: i64) -> Option<ScheduleOffer> {
        if self.inner.config.max_per_chat == 0 {
            return None;
        }
        let zone = self.zone_of(chat);
        Some(ScheduleOffer {
            local_now: times::local_now(now(), times::zone(&zone)),
            time_zone: zone,
        })
    }

    /// Carries out a schedule tool's call for `chat` (topic `thread`), made in a turn of
    /// `user`: the result the model reads.
    pub fn answer(
        &self,
        chat: i64,
        thread: Option<i64>,
        user: u64,
        action: ScheduleAction,
    ) -> ScheduleAnswer {
        let result = match action {
            ScheduleAction::Create { prompt, when } => {
                self.create(chat, thread, user, &prompt, when)
            }
            ScheduleAction::List => self.list_for_model(chat),
            ScheduleAction::Cancel { id } => match self.inner.store.cancel_schedule(chat, id) {
                Ok(true) => {
                    tracing::info!(
                        chat_id = chat,
                        schedule = id,
                        "schedule cancelled by the model"
                    );
                    Ok(format!("Schedule #{id} is cancelled."))
                }
                Ok(false) => Err(format!("this chat has no active schedule #{id}")),
                Err(e) => Err(store_trouble(e)),
            },
        };
        match result {
            Ok(text) => ScheduleAnswer { ok: true, text },
            Err(text) => ScheduleAnswer { ok: false, text },
        }
    }

    fn create(
        &self,
        chat: i64,
        thread: Option<i64>,
        user: u64,
        prompt: &str,
        when: When,
    ) -> Result<String, String> {
        let zone_name = self.zone_of(chat);
        let zone = times::zone(&zone_name);
        let now = now();
        let prompt: String = prompt.chars().take(MAX_PROMPT_CHARS).collect();
        let (cron, next) = match &when {
            When::After { seconds } => {
                let at = now.saturating_add(i64::try_from(*seconds).unwrap_or(i64::MAX));
                times::check_one_off(at, now)?;
                (None, at)
            }
            When::At(local) => {
                let at = times::parse_local(local, zone)?;
                times::check_one_off(at, now)?;
                (None, at)
            }
            When::Cron(expr) => {
                let cron = times::parse_cron(expr)?;
                let next = times::next_of_cron(&cron, zone, now)
                    .ok_or_else(|| format!("{expr:?} never comes"))?;
                (Some(expr.trim().to_string()), next)
            }
        };
        let new = NewSchedule {
            chat_id: chat,
            thread_id: thread,
            user_id: user,
            prompt: &prompt,
            cron: cron.as_deref(),
            time_zone: &zone_name,
            next_at: next,
        };
        match self
            .inner
            .store
            .add_schedule(&new, self.inner.config.max_per_chat)
        {
            Ok(Some(id)) => {
                tracing::info!(
                    chat_id = chat,
                    schedule = id,
                    next_at = next,
                    "schedule created"
                );
                let how = match &cron {
                    Some(expr) => format!("repeating ({expr})"),
                    None => "once".to_string(),
                };
                Ok(format!(
                    "Schedule #{id} created, {how}; next run {} ({zone_name}).",
                    times::show(next, zone)
                ))
            }
            Ok(None) => Err(format!(
                "this chat already has {} active schedules, the most it may keep; cancel one first",
                self.inner.config.max_per_chat
            )),
            Err(e) => Err(store_trouble(e)),
        }
    }

    fn list_for_model(&self, chat: i64) -> Result<String, String> {
        let rows = self
            .inner
            .store
            .schedules(Some(chat))
            .map_err(store_trouble)?;
        if rows.is_empty() {
            return Ok("This chat has no schedules.".into());
        }
        Ok(rows.iter().map(chat::line).collect::<Vec<_>>().join("\n"))
    }

    /// The timer: fires due schedules until `stop`, waking their chats through `router`,
    /// and publishes the run counts to `health`.
    pub async fn run(
        self,
        router: ChatRouter,
        settings: LiveSettings,
        health: Arc<Health>,
        stop: CancellationToken,
    ) {
        let mut ticks = 0u32;
        loop {
            self.fire_due(&router, &settings);
            if ticks.is_multiple_of(COUNT_EVERY) {
                match self.inner.store.run_counts() {
                    Ok(counts) => health.schedules(counts),
                    Err(e) => tracing::warn!("cannot count the schedules' runs: {e}"),
                }
            }
            ticks = ticks.wrapping_add(1);
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    fn fire_due(&self, router: &ChatRouter, settings: &LiveSettings) {
        let now = now();
        let due = match self.inner.store.due_schedules(now) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!("cannot read the due schedules: {e}");
                return;
            }
        };
        for schedule in due {
            let Some(due_at) = schedule.next_at else {
                continue;
            };
            let zone = times::zone(&schedule.time_zone);
            let then = match schedule.cron.as_deref().map(times::parse_cron) {
                // After now, not after the slot: missed slots are not fired one by one.
                Some(Ok(cron)) => times::next_of_cron(&cron, zone, now),
                Some(Err(e)) => {
                    tracing::error!(
                        schedule = schedule.id,
                        "a stored cron expression no longer parses ({e}); ending it"
                    );
                    None
                }
                None => None,
            };
            let late = now - due_at > LATE_AFTER_SECS;
            let mut heading = format!("⏰ Scheduled task #{}", schedule.id);
            if late {
                heading.push_str(&format!(
                    " (late: was due at {})",
                    times::show(due_at, zone)
                ));
            }
            let text = format!("{heading}\n\n{}", schedule.prompt);
            let allowed = settings.get().allowed.contains(&schedule.user_id);
            let (chat, thread) = (schedule.chat_id, schedule.thread_id.unwrap_or(0));
            let fired = Due {
                schedule,
                then,
                text,
                late,
            };
            match self.inner.store.fire(&fired, !allowed) {
                Ok(Some(row)) => {
                    tracing::info!(
                        chat_id = chat,
                        schedule = fired.schedule.id,
                        late,
                        "schedule fired (inbox row {row})"
                    );
                    router.scheduled(Place::from_key(chat, thread));
                }
                Ok(None) => tracing::info!(
                    chat_id = chat,
                    schedule = fired.schedule.id,
                    "a schedule's run skipped: its user is no longer in telegram.allowed_users"
                ),
                Err(e) => {
                    // Left due: tried again at the next tick.
                    tracing::error!(
                        chat_id = chat,
                        schedule = fired.schedule.id,
                        "cannot fire a schedule: {e}"
                    );
                    return;
                }
            }
        }
    }
}

/// The longest prompt kept for a schedule.
const MAX_PROMPT_CHARS: usize = 4000;

fn store_trouble(e: crate::store::StoreError) -> String {
    tracing::error!("schedules: {e}");
    "the gateway's store is not available right now; try again later".into()
}

/// A scheduled run's heading, from the text its turn asks (its first paragraph).
pub fn heading_of(text: &str) -> Option<String> {
    text.split_once("\n\n").map(|(h, _)| h.to_string())
}
