//! The outbox's queue: each chat's pieces in the order they go, held in memory beside the
//! store's copy, and the one task per chat that sends them ([`super::delivery`]) started
//! when the first piece arrives. Its depth and age are what the health report shows of
//! the outbox.
//!
//! A chat's queue has two lanes: its members' replies, in the order they were committed,
//! and the replies to strangers, which go only when no member's piece waits. A crowd of
//! strangers in a group then costs the members at most the one stranger's piece being
//! sent when their answer comes, never the group's send limit for all of them.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use teloxide_core::types::MessageId;

use super::{Inner, Outbox};
use crate::clock::unix_now;
use crate::files_back::OutFile;
use crate::store::Stored;
use crate::telegram::format::Piece;

/// Whose reply a piece is: it decides which lane of its chat's queue it waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// The chat's allowed users: sent in the order committed.
    Members,
    /// People not allowed: sent when no member's piece waits.
    Strangers,
}

/// One chat's pieces waiting to go, and whether its task runs.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) pieces: VecDeque<Queued>,
    pub(super) strangers: VecDeque<Queued>,
    pub(super) draining: bool,
    /// The supergroup this group became: where its pieces go now. An empty queue with
    /// it only forwards: what is pushed for the group joins the supergroup's queue.
    pub(super) moved_to: Option<i64>,
}

#[derive(Debug, Clone)]
pub(super) struct Queued {
    /// None when the store could not take it: sent once, best effort.
    pub(super) id: Option<i64>,
    /// The topic of its chat it goes to.
    pub(super) thread: Option<i32>,
    pub(super) piece: Piece,
    /// A file sent instead of the text.
    pub(super) file: Option<OutFile>,
    pub(super) edit: Option<MessageId>,
    /// Sent as one rich message of this Markdown; `edit` is then the preview it replaces
    /// (deleted once it is sent).
    pub(super) rich: Option<String>,
    /// An HTML piece of the rich piece before it: sent only if that one was refused.
    pub(super) fallback: bool,
    /// Unix seconds: for the age the health report shows, never to expire it.
    pub(super) created_at: u64,
    /// When this process took it in, and how old it was then by the wall clock (nothing
    /// for a piece just committed; the time since a previous run stored it, after a
    /// restart). Its age counts on from there on the monotonic clock, so a forward jump
    /// of the wall clock (NTP after a dead RTC, a VM resumed) expires nothing.
    pub(super) known_at: Instant,
    pub(super) age_when_known: Duration,
    pub(super) not_before: Option<Instant>,
}

impl Queued {
    pub(super) fn from_stored(stored: Stored, not_before: Option<Instant>) -> Queued {
        let created_at = u64::try_from(stored.created_at).unwrap_or(0);
        Queued {
            id: Some(stored.id),
            thread: stored.thread,
            piece: Piece {
                html: stored.piece.html,
                plain: stored.piece.plain,
            },
            file: stored.piece.file,
            edit: stored.piece.edit_message_id.map(MessageId),
            rich: stored.piece.rich,
            fallback: stored.piece.fallback,
            created_at,
            known_at: Instant::now(),
            age_when_known: Duration::from_secs(unix_now().saturating_sub(created_at)),
            not_before,
        }
    }

    /// A piece not yet taken in from the store (it could not be committed): new now.
    pub(super) fn fresh(
        piece: Piece,
        thread: Option<i32>,
        edit: Option<MessageId>,
        not_before: Option<Instant>,
    ) -> Queued {
        Queued {
            id: None,
            thread,
            piece,
            file: None,
            edit,
            rich: None,
            fallback: false,
            created_at: unix_now(),
            known_at: Instant::now(),
            age_when_known: Duration::ZERO,
            not_before,
        }
    }

    /// The moment past which the piece is not sent any more, `max_age` after it was
    /// committed, on the monotonic clock.
    pub(super) fn expires_at(&self, max_age: Duration) -> Instant {
        self.known_at + max_age.saturating_sub(self.age_when_known)
    }
}

impl Queue {
    /// The piece to send next, and its lane: a member's first.
    pub(super) fn next(&self) -> Option<(&Queued, Lane)> {
        match self.pieces.front() {
            Some(piece) => Some((piece, Lane::Members)),
            None => self.strangers.front().map(|piece| (piece, Lane::Strangers)),
        }
    }

    pub(super) fn lane(&mut self, lane: Lane) -> &mut VecDeque<Queued> {
        match lane {
            Lane::Members => &mut self.pieces,
            Lane::Strangers => &mut self.strangers,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pieces.is_empty() && self.strangers.is_empty()
    }

    /// The queue that takes this chat's pieces instead, if this one only forwards.
    fn forwards_to(&self) -> Option<i64> {
        self.moved_to.filter(|_| self.is_empty() && !self.draining)
    }

    fn all(&self) -> impl Iterator<Item = &Queued> {
        self.pieces.iter().chain(&self.strangers)
    }
}

impl Outbox {
    pub(super) fn push(&self, chat: i64, lane: Lane, pieces: Vec<Queued>) {
        if pieces.is_empty() {
            return;
        }
        let (chat, start) = {
            let mut chats = self.inner.lock();
            // One queue per place the pieces go, so a group's answers and its
            // supergroup's leave in the order they were committed.
            let chat = chats
                .get(&chat)
                .and_then(Queue::forwards_to)
                .unwrap_or(chat);
            let queue = chats.entry(chat).or_default();
            queue.lane(lane).extend(pieces);
            (chat, !std::mem::replace(&mut queue.draining, true))
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
    /// Group `from` became supergroup `to` while its task sent a piece: its queue, that
    /// piece first, goes under `to`, and the group's key only forwards from now on.
    /// Returns the queue's key. If `to` has a task sending already (a message came
    /// from the supergroup first), the group's queue stays and its task sends it there.
    pub(super) fn queue_moved(&self, from: i64, to: i64) -> i64 {
        let mut chats = self.lock();
        if chats.get(&to).is_some_and(|queue| queue.draining) {
            if let Some(queue) = chats.get_mut(&from) {
                queue.moved_to = Some(to);
            }
            return from;
        }
        let Some(mut queue) = chats.remove(&from) else {
            return from;
        };
        queue.moved_to = None;
        let forward = Queue {
            moved_to: Some(to),
            ..Queue::default()
        };
        chats.insert(from, forward);
        // `to` is idle, so its queue (if any) is empty: nothing of it is overwritten.
        chats.insert(to, queue);
        to
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Queue>> {
        self.chats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the health report how deep the outbox is and how old its oldest piece.
    pub(super) fn report(&self) {
        let (depth, oldest) = {
            let chats = self.lock();
            let depth = chats
                .values()
                .map(|q| q.pieces.len() + q.strangers.len())
                .sum();
            let oldest = chats
                .values()
                .filter_map(|q| q.all().map(|p| p.created_at).min())
                .min();
            (depth, oldest)
        };
        self.config.health.outbox_changed(depth, oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OutPiece;

    fn stored(created_at: u64) -> Stored {
        Stored {
            id: 1,
            reply: 1,
            chat_id: 7,
            thread: None,
            piece: OutPiece {
                html: "a".into(),
                plain: "a".into(),
                edit_message_id: None,
                ..OutPiece::default()
            },
            created_at: i64::try_from(created_at).unwrap_or(i64::MAX),
        }
    }

    /// The wall clock is read once, when a piece is taken in; from then on its age is
    /// monotonic, so no later reading of the wall clock (after a forward jump) moves it.
    #[test]
    fn a_piece_expires_on_the_monotonic_clock_from_when_it_was_taken_in() {
        let max_age = Duration::from_secs(3600);
        let now = unix_now();
        let committed = Queued::from_stored(stored(now), None);
        let due = committed.expires_at(max_age);
        assert!(due > committed.known_at + max_age - Duration::from_secs(2));
        assert!(due <= committed.known_at + max_age);
        // A fixed moment on the monotonic clock: the same whenever it is asked.
        assert_eq!(committed.expires_at(max_age), due);
        // Left by a run that stopped 50 minutes ago: about 10 minutes left.
        let left = Queued::from_stored(stored(now - 3000), None);
        let rest = left.expires_at(max_age) - left.known_at;
        assert!(
            rest <= Duration::from_secs(600) && rest > Duration::from_secs(590),
            "{rest:?}"
        );
        // Older than the bound when taken in: due at once.
        let stale = Queued::from_stored(stored(now - 7200), None);
        assert_eq!(stale.expires_at(max_age), stale.known_at);
        // Never committed (the store failed): new now.
        let unstored = Queued::fresh(committed.piece.clone(), None, None, None);
        assert_eq!(unstored.expires_at(max_age), unstored.known_at + max_age);
    }
}
