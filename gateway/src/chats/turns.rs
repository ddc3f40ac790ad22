//! A chat's task: its turns, one at a time, in arrival order.
//!
//! The task takes everything the chat's people wrote since the last turn began, as one
//! turn, from the store's inbox (so a restart finds the same messages and asks them as one
//! turn too), once the rest of an album or a split text is in ([`super::settle`]), runs
//! it, and looks again; after a quiet minute it ends. A turn is a command
//! (taken alone, answered at once unless it asks the model again, as `/retry` does) or one
//! question for one job: prepared ([`super::prepare`]), its files fetched, run with its
//! progress shown, and delivered ([`super::deliver`]). A message whose file is refused or
//! cannot be fetched is answered with why ([`super::turn_files`]), and the rest of the
//! turn still goes to the model: one bad file does not swallow the questions sent with
//! it. A message whose jobs keep dying with the gateway (or its worker) is given up after
//! [`super::admit::MAX_ATTEMPTS`] starts, with an apology, so it cannot take every restart
//! down with it.
//! When the gateway stops, a chat whose messages still wait is told they are kept for the
//! next run.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use hermes_protocol::{JobId, Outcome};
use tokio::sync::{Notify, mpsc, oneshot};

use super::prepare::{self, Asked, compose};
use super::{ChatRouter, Request, deliver, reaction, stop_button, turn_files};
use crate::commands;
use crate::commands::stop::{InFlight, Stops};
use crate::files_back::{Collected, FileDrop};
use crate::jobs::JobLink;
use crate::media::JobFiles;
use crate::replies;
use crate::store::Taken;
use crate::telegram::live::LiveReply;
use crate::topics::Place;
use crate::usage;

/// A chat task with nothing to do for this long ends; the next message starts a new one.
const CHAT_IDLE: Duration = Duration::from_secs(60);
/// Events of one job that may wait between its worker and its chat: the worker's stream
/// waits (the socket fills) rather than the gateway's memory.
const EVENTS_BOUND: usize = 64;

impl ChatRouter {
    /// The conversation's task (a chat's, or its topic `thread`'s): takes turns until a
    /// quiet minute passes or the gateway stops.
    pub(super) async fn serve_chat(
        self,
        id: Arc<AtomicI64>,
        thread: Option<i32>,
        wake: Arc<Notify>,
        in_flight: Arc<InFlight>,
    ) {
        // Whether this chat was told that the gateway restarts and its messages wait.
        let mut announced = false;
        let mut store_retry =
            hermes_retry::Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            // Read at every look: a group that became a supergroup is served at its new id.
            let chat = id.load(Ordering::Acquire);
            let place = Place::new(chat, thread);
            if self.inner.closing.is_cancelled() {
                self.announce_restart(place, announced);
                break;
            }
            // A reply the store has not taken yet leaves its messages waiting there:
            // taken again now, they would be answered twice.
            tokio::select! {
                _ = self.inner.ctx.outbox.committed(chat) => {}
                _ = self.inner.closing.cancelled() => continue,
            }
            // The rest of an album or of a split text may be on its way: the turn waits
            // for it ([`super::settle`]), looking again at each message that comes.
            let settling = self
                .inner
                .lock()
                .get_mut(&place)
                .and_then(|entry| entry.holds.until(Instant::now()));
            if let Some(until) = settling {
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = wake.notified() => {}
                    _ = self.inner.closing.cancelled() => {}
                }
                continue;
            }
            let counted = self
                .inner
                .lock()
                .get(&place)
                .map(|entry| entry.counted.clone())
                .unwrap_or_default();
            let turn = match self.inner.ctx.store.take_turn(
                place,
                |text| commands::parse(text).is_some(),
                |row| counted.contains(&row),
            ) {
                Ok(turn) => {
                    store_retry.reset();
                    turn
                }
                Err(e) => {
                    // The messages stay in the store, taken once it reads again: not left
                    // for the chat's next message or the next run to find.
                    let delay = store_retry.next_delay();
                    tracing::error!(
                        chat_id = chat,
                        "cannot take the chat's next messages ({e}); trying again in {:.1} s",
                        delay.as_secs_f64()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.inner.closing.cancelled() => {}
                    }
                    continue;
                }
            };
            if let Some(entry) = self.inner.lock().get_mut(&place) {
                entry.busy = !turn.is_empty();
                if turn.is_empty() {
                    entry.waiting = 0;
                    entry.counted.clear();
                } else {
                    entry.waiting = entry.waiting.saturating_sub(turn.len());
                    for taken in &turn {
                        entry.counted.remove(&taken.id);
                    }
                }
            }
            if !turn.is_empty() {
                announced |= self.run_turn(place, turn, &in_flight).await;
                continue;
            }
            let idle = tokio::select! {
                _ = wake.notified() => false,
                _ = self.inner.closing.cancelled() => false,
                _ = tokio::time::sleep(CHAT_IDLE) => true,
            };
            // A message that arrived as the minute ran out counts: it is taken first; so
            // does a move as it ran out (read under the lock that a move takes).
            let chats = self.inner.lock();
            let quiet = id.load(Ordering::Acquire) == chat
                && chats.get(&place).is_none_or(|e| e.waiting == 0);
            drop(chats);
            if idle && quiet {
                break;
            }
        }
        let mut chats = self.inner.lock();
        // Read under the lock that a move takes to change it.
        let place = Place::new(id.load(Ordering::Acquire), thread);
        if chats
            .get(&place)
            .is_some_and(|entry| Arc::ptr_eq(&entry.wake, &wake))
        {
            chats.remove(&place);
        }
    }

    /// The gateway stops with messages of this chat still waiting and nobody told: they
    /// are kept for the next run, and the chat hears so.
    fn announce_restart(&self, place: Place, announced: bool) {
        if announced {
            return;
        }
        match self.inner.ctx.store.waiting(place, i64::MAX) {
            Ok(waiting) if !waiting.is_empty() => {
                self.inner.reply(place, &[], replies::SAVED_FOR_RESTART);
            }
            Ok(_) => {}
            Err(e) => tracing::error!(
                chat_id = place.chat,
                "cannot read the waiting messages: {e}"
            ),
        }
    }

    /// One turn: the messages taken, as a command or as one question for a job. True when
    /// the chat was told its messages wait for the next run.
    async fn run_turn(&self, place: Place, turn: Vec<Taken>, in_flight: &InFlight) -> bool {
        let chat = place.chat;
        let ctx = &self.inner.ctx;
        let settings = ctx.settings.get();
        let turn = self.admitted(place, turn);
        let Some(first) = turn.first() else {
            return false;
        };
        let user_id = first.user_id;
        // A command is always taken alone; a caption is never one.
        let command = commands::parse(&first.text)
            .filter(|_| turn.len() == 1 && first.media.is_none() && !first.scheduled);
        let heading = first
            .scheduled
            .then(|| crate::schedules::heading_of(&first.text))
            .flatten();
        let asked: Vec<Asked> = match command {
            Some(command) => {
                let rows: Vec<i64> = turn.iter().map(|m| m.id).collect();
                let command_ctx = commands::Context {
                    chat,
                    thread: place.thread,
                    user: user_id,
                    store: &ctx.store,
                    settings: &settings,
                    health: &ctx.health,
                    circuits: &ctx.circuits,
                    schedules: &ctx.schedules,
                };
                match commands::execute(&command_ctx, command) {
                    commands::Outcome::Reply(reply) => {
                        self.inner.reply(place, &rows, &reply);
                        return false;
                    }
                    commands::Outcome::ShowSchedules => {
                        self.show_schedules(place, &rows).await;
                        return false;
                    }
                    commands::Outcome::Ask(text) => vec![Asked {
                        row: first.id,
                        text,
                        file: None,
                        replied: None,
                    }],
                }
            }
            None => turn
                .iter()
                .map(|m| Asked {
                    row: m.id,
                    text: m.text.clone(),
                    file: m.media.clone().map(|file| {
                        let placeholder = file.placeholder();
                        (file, placeholder)
                    }),
                    replied: m.replied.clone().map(|replied| {
                        let placeholder = replied.media.as_ref().map(|m| m.placeholder());
                        (replied, placeholder)
                    }),
                })
                .collect(),
        };
        let (rows, text, media) = compose(&asked);
        let id = JobId(self.inner.next_job.fetch_add(1, Ordering::Relaxed));
        let request = Request {
            id,
            chat,
            thread: place.thread,
            rows,
            user_id,
            text,
            media,
            heading,
        };
        self.run_job(request, asked, in_flight).await
    }

    /// One turn through one job: prepared, its files fetched, run with its progress shown,
    /// delivered. A message whose file is refused or not fetched is answered with why, and
    /// the rest of the turn (`asked`) goes on without it. True when the job was cut short
    /// by the gateway stopping (and the chat told).
    async fn run_job(
        &self,
        mut request: Request,
        mut asked: Vec<Asked>,
        in_flight: &InFlight,
    ) -> bool {
        let ctx = &self.inner.ctx;
        // The settings this job starts with; a reload meanwhile does not change them.
        let settings = ctx.settings.get();
        let started = Instant::now();
        let mut live = LiveReply::new(
            ctx.sender.clone(),
            request.place(),
            settings.streaming,
            settings.edit_interval,
        )
        .recorded_in(ctx.store.clone());
        let turn_reaction = reaction::start(ctx, &settings, &request);
        let mut stop_requests = Stops::default();
        // The turn's files, kept for its job and removed when it ends, however it ends.
        let mut files: Option<JobFiles> = None;
        // The files the answer sends back, as the runner took them.
        let mut sent_back = Collected::default();
        // Until it is settled, `prepared.plan` holds the turn's probes of providers after
        // their quota cool-down: every way out of this block before the job ran drops it,
        // which gives them back.
        let outcome = match prepare::prepare(ctx, &settings, &request, started) {
            Ok(mut prepared) => 'job: {
                let cancel = in_flight.begin();
                if settings.stop_button && settings.streaming {
                    let (key, buttons) = stop_button::new_button();
                    if in_flight.button(request.user_id, &key) {
                        live.with_buttons(buttons);
                    }
                }
                if !request.media.is_empty() {
                    match turn_files::fetch(ctx, &settings, &request, &cancel).await {
                        Ok(fetched) => {
                            files = Some(fetched.files);
                            prepared.job.attachments = fetched.attachments;
                            if !fetched.refused.is_empty() {
                                if let Some(failure) =
                                    self.leave_out(&mut request, &mut asked, fetched.refused)
                                {
                                    stop_requests = in_flight.end();
                                    break 'job Outcome::Failed(failure);
                                }
                                prepared.narrow_to(&settings, &request);
                            }
                        }
                        Err(failure) => {
                            stop_requests = in_flight.end();
                            break 'job Outcome::Failed(failure);
                        }
                    }
                }
                let (events, events_rx) = mpsc::channel(EVENTS_BOUND);
                let (approvals, approvals_rx) = mpsc::unbounded_channel();
                let (schedules, schedules_rx) = mpsc::unbounded_channel();
                let (files_done, mut files_taken) = oneshot::channel();
                let link = JobLink {
                    events,
                    approvals,
                    schedules,
                    cancel,
                    files: Some(FileDrop {
                        area: ctx.outgoing.clone(),
                        limits: settings.send_files,
                        done: files_done,
                    }),
                };
                let run = ctx.runner.run(prepared.job, link);
                let followed = deliver::follow(
                    ctx,
                    request.place(),
                    run,
                    deliver::Incoming {
                        events: events_rx,
                        approvals: approvals_rx,
                        schedules: schedules_rx,
                        user: request.user_id,
                    },
                    &mut live,
                )
                .await;
                stop_requests = in_flight.end();
                // Whatever the outcome: every call a provider answered was paid for.
                usage::record(
                    &ctx.store,
                    &settings.budgets.zone,
                    request.user_id,
                    request.chat,
                    &followed.usage,
                );
                prepared
                    .plan
                    .settle(&followed.fallbacks, &followed.outcome, Instant::now());
                // The runner answered after it took the files, or not at all.
                sent_back = files_taken.try_recv().unwrap_or_default();
                followed.outcome
            }
            Err(failure) => Outcome::Failed(failure),
        };
        drop(files);
        ctx.health.job_done(&outcome);
        ctx.health.metrics().job_took(started.elapsed());
        let (chat, rows) = (request.chat, request.rows.clone());
        let ending = reaction::ending(&outcome);
        let cut_short = deliver::deliver(
            &self.inner,
            request,
            outcome,
            sent_back,
            live,
            stop_requests,
            started,
        )
        .await;
        if let Some(ending) = ending {
            turn_reaction.settle(ending);
        }
        // The gateway's own stop cut the job short: not the messages' fault, so their
        // start does not count toward giving up on them (a crash is never taken back).
        if cut_short && let Err(e) = ctx.store.uncount_start(&rows) {
            tracing::error!(
                chat_id = chat,
                "cannot take back the start of a job cut short by the stop: {e}"
            );
        }
        cut_short
    }
}
