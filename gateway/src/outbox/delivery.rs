//! The outbox's delivery: one chat's pieces sent in order, each tried until Telegram takes
//! it, refuses it for good, or it is too old, through flood control, network failures,
//! entities Telegram cannot parse, a preview that cannot be edited and a group that became
//! a supergroup; and the store told which pieces left, before the chat's next piece goes.
//!
//! A rich piece (`sendRichMessage`) that Telegram refuses, whatever the 400, falls back to
//! its HTML pieces, which follow it in the queue; once it is accepted they leave the
//! outbox with it, unsent, in the same record (so a crash cannot find them without it and
//! send the answer a second time), and the preview it replaces is deleted.
//!
//! A file piece goes the same way (as a photo, or again as a document when Telegram will
//! not take it as one); its file leaves the store's file area with it, and a file refused
//! for good is said in the chat, once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hermes_retry::Backoff;

use super::queue::Queued;
use super::{Inner, Outbox, Reply};
use crate::files_back;
use crate::replies;
use crate::telegram::bot_api::rich::SendRichMessage;
use crate::telegram::sender::{SendError, plain_pieces, refuses_the_chat};
use crate::topics::Place;

/// First wait after a failed send; the cap is `telegram.retry_max_secs`.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// A chat that moves more often than this while one piece is sent is given up on.
const MAX_MOVES: u32 = 3;
/// A delivered piece is removed from the store within this time even when nothing else
/// is written (under load the next message's commit removes it sooner, at no cost).
const RECORD_WITHIN: Duration = Duration::from_millis(10);

/// How a piece left the outbox.
enum Resolution {
    Delivered,
    Refused(String),
    Expired,
    /// A rich piece Telegram refused: its HTML pieces go instead.
    FellBack(String),
}

impl Inner {
    /// Sends the chat's pieces in order until none is left.
    pub(super) async fn drain(self: &Arc<Self>, mut chat: i64) {
        let mut backoff = Backoff::new(FIRST_RETRY, self.config.retry_max);
        loop {
            let (next, lane, dest) = {
                let mut chats = self.lock();
                let Some(queue) = chats.get_mut(&chat) else {
                    return;
                };
                match queue.next() {
                    Some((next, lane)) => (next.clone(), lane, queue.moved_to.unwrap_or(chat)),
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
            let resolution = self.deliver(&mut chat, dest, &next, &mut backoff).await;
            // A schedule's run whose answer never reached the chat is not delivered.
            if let (Some(id), Resolution::Refused(_) | Resolution::Expired) = (next.id, &resolution)
            {
                let why = match &resolution {
                    Resolution::Refused(why) => format!("Telegram refused the answer: {why}"),
                    _ => "the answer could not be delivered in time".to_string(),
                };
                if let Err(e) = self.config.store.run_undelivered(id, &why) {
                    tracing::error!(
                        chat_id = dest,
                        "cannot record a schedule's undelivered run: {e}"
                    );
                }
            }
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
                Resolution::FellBack(why) => tracing::info!(
                    chat_id = dest,
                    "Telegram refused the answer as a rich message ({why}); sending it as HTML messages"
                ),
            }
            if let Some(file) = &next.file {
                // A chat that refuses the bot (blocked, gone) is not told either.
                if let Resolution::Refused(why) = &resolution
                    && !refuses_the_chat(why)
                {
                    let notice = replies::file_refused_by_telegram(&file.name, why);
                    // Committed before this piece leaves: a crash in between says it twice,
                    // never not at all.
                    let _ = Outbox {
                        inner: self.clone(),
                    }
                    .send(Reply {
                        chat: dest,
                        thread: next.thread,
                        answers: &[],
                        text: &notice,
                        pieces: plain_pieces(&notice),
                        rich: None,
                        edit: None,
                        exchange: None,
                        question: None,
                        files: Vec::new(),
                    });
                }
                files_back::forget(file);
            }
            if let Some(id) = next.id {
                self.config.store.piece_left(id);
            }
            let skip_fallback =
                next.rich.is_some() && !matches!(resolution, Resolution::FellBack(_));
            // Only this task takes pieces off the queue, so the one sent is still its
            // lane's first, whatever was added meanwhile; a rich piece's HTML pieces
            // follow it.
            let more = self.lock().get_mut(&chat).is_some_and(|queue| {
                let pieces = queue.lane(lane);
                pieces.pop_front();
                while skip_fallback && pieces.front().is_some_and(|p| p.fallback) {
                    if let Some(id) = pieces.pop_front().and_then(|p| p.id) {
                        self.config.store.piece_left(id);
                    }
                }
                !queue.is_empty()
            });
            if more {
                // Recorded before the chat's next piece goes: a crash sends one piece of
                // a chat again, never two.
                self.record_before_next(dest).await;
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

    /// Removes the pieces that left from the store before the chat's next piece goes,
    /// trying again with backoff while the store refuses: a piece sent before the one
    /// ahead of it is recorded would be a second piece sent again after a crash.
    async fn record_before_next(&self, chat: i64) {
        let mut backoff = Backoff::new(FIRST_RETRY, self.config.retry_max);
        while let Err(e) = self.config.store.record_left() {
            let wait = backoff.next_delay();
            tracing::warn!(
                chat_id = chat,
                "cannot record a delivered reply piece ({e}); the chat's next piece waits, next try in {wait:?}"
            );
            tokio::time::sleep(wait).await;
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

    /// Tries one piece until it is delivered, refused for good, or too old. `chat` is the
    /// key of the queue the piece is in: a move can put the queue under another.
    async fn deliver(
        &self,
        chat: &mut i64,
        mut dest: i64,
        queued: &Queued,
        backoff: &mut Backoff,
    ) -> Resolution {
        if let Some(at) = queued.not_before {
            tokio::time::sleep_until(at.into()).await;
        }
        let expires = queued.expires_at(self.config.max_age);
        let sender = &self.config.sender;
        let piece = &queued.piece;
        let mut plain = false;
        let mut photo = queued.file.as_ref().is_some_and(|f| f.photo);
        let mut edit = queued.edit;
        let mut failures = 0u32;
        let mut moves = 0u32;
        loop {
            if Instant::now() >= expires {
                return Resolution::Expired;
            }
            let result = match (&queued.file, &queued.rich, edit) {
                (Some(file), _, _) => {
                    if !file.path.exists() {
                        // Removed once Telegram took it, by a run killed before it
                        // recorded so: it was delivered.
                        tracing::info!(chat_id = dest, file = %file.name, "a file piece left by the previous run was already delivered");
                        return Resolution::Delivered;
                    }
                    sender
                        .send_file_once(Place::new(dest, queued.thread), file, photo)
                        .await
                }
                (None, Some(markdown), _) => sender
                    .call(SendRichMessage::markdown(
                        Place::new(dest, queued.thread),
                        markdown,
                    ))
                    .await
                    .map(|_| ()),
                (None, None, Some(id)) => sender.edit_once(dest, id, piece, plain).await,
                (None, None, None) => sender
                    .send_once(Place::new(dest, queued.thread), piece, plain)
                    .await
                    .map(|_| ()),
            };
            let wait = match result {
                Ok(()) => {
                    if queued.rich.is_some()
                        && let Some(preview) = edit
                    {
                        sender.delete_once(dest, preview).await;
                    }
                    if failures > 0 {
                        tracing::info!(
                            chat_id = dest,
                            "reply delivered after {failures} failed attempt(s)"
                        );
                    }
                    backoff.reset();
                    return Resolution::Delivered;
                }
                Err(
                    SendError::BadEntities(why)
                    | SendError::Refused(why)
                    | SendError::CannotEdit(why),
                ) if queued.rich.is_some() => {
                    return Resolution::FellBack(why);
                }
                Err(SendError::BadEntities(why)) if !plain => {
                    tracing::info!(
                        chat_id = dest,
                        "Telegram could not parse the reply's entities ({why}); sending it as plain text"
                    );
                    plain = true;
                    continue;
                }
                Err(SendError::Refused(why)) if photo => {
                    tracing::info!(
                        chat_id = dest,
                        "Telegram would not take a file as a photo ({why}); sending it as a document"
                    );
                    photo = false;
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
                    match self.config.store.migrate_chat(dest, to) {
                        // Its waiting messages are the new chat's now: they are taken
                        // there at once, not when someone next writes in it.
                        Ok(()) => self.chat_moved(dest, to),
                        Err(e) => {
                            tracing::error!(chat_id = dest, "cannot move the chat to {to}: {e}")
                        }
                    }
                    *chat = self.queue_moved(*chat, to);
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
            let left = expires.saturating_duration_since(Instant::now());
            tokio::time::sleep(wait.min(left)).await;
        }
    }
}
