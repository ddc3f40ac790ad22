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
use std::time::Instant;

use teloxide_core::types::MessageId;

use super::{Inner, Outbox};
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
    /// The supergroup this group became: where its pieces go now.
    pub(super) moved_to: Option<i64>,
}

#[derive(Debug, Clone)]
pub(super) struct Queued {
    /// None when the store could not take it: sent once, best effort.
    pub(super) id: Option<i64>,
    pub(super) piece: Piece,
    pub(super) edit: Option<MessageId>,
    /// Unix seconds.
    pub(super) created_at: u64,
    pub(super) not_before: Option<Instant>,
}

impl Queued {
    pub(super) fn from_stored(stored: Stored, not_before: Option<Instant>) -> Queued {
        Queued {
            id: Some(stored.id),
            piece: Piece {
                html: stored.piece.html,
                plain: stored.piece.plain,
            },
            edit: stored.piece.edit_message_id.map(MessageId),
            created_at: u64::try_from(stored.created_at).unwrap_or(0),
            not_before,
        }
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

    fn all(&self) -> impl Iterator<Item = &Queued> {
        self.pieces.iter().chain(&self.strangers)
    }
}

impl Outbox {
    pub(super) fn push(&self, chat: i64, lane: Lane, pieces: Vec<Queued>) {
        if pieces.is_empty() {
            return;
        }
        let start = {
            let mut chats = self.inner.lock();
            let queue = chats.entry(chat).or_default();
            queue.lane(lane).extend(pieces);
            !std::mem::replace(&mut queue.draining, true)
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
