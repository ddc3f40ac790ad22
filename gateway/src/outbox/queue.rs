//! The outbox's queue: each chat's pieces in the order they go, held in memory beside the
//! store's copy, and the one task per chat that sends them ([`super::delivery`]) started
//! when the first piece arrives. Its depth and age are what the health report shows of
//! the outbox.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use teloxide_core::types::MessageId;

use super::{Inner, Outbox};
use crate::store::Stored;
use crate::telegram::format::Piece;

/// One chat's pieces waiting to go, and whether its task runs.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) pieces: VecDeque<Queued>,
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

impl Outbox {
    pub(super) fn push(&self, chat: i64, pieces: Vec<Queued>) {
        if pieces.is_empty() {
            return;
        }
        let start = {
            let mut chats = self.inner.lock();
            let queue = chats.entry(chat).or_default();
            queue.pieces.extend(pieces);
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
            let depth = chats.values().map(|q| q.pieces.len()).sum();
            let oldest = chats
                .values()
                .filter_map(|q| q.pieces.iter().map(|p| p.created_at).min())
                .min();
            (depth, oldest)
        };
        self.config.health.outbox_changed(depth, oldest);
    }
}
