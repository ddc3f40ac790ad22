//! Who among the strangers may be answered now, and the answer to a stranger's message.
//!
//! A stranger (someone not in `telegram.allowed_users`) is told their user id so they can
//! ask the operator for access; once an hour is enough for that, and anything more lets a
//! crowd of them spend the chat's share of Telegram's send limit. Fifty strangers
//! mentioning the bot in a group would otherwise queue fifty replies at 20 a minute. The
//! memory of whom the bot answered is bounded twice: an entry is forgotten an hour after
//! its reply, and at most [`MAX_REMEMBERED`] are kept; a stranger who arrives while it is
//! full is not answered (a crowd that large in an hour is a flood, not people asking in).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::ChatRouter;
use crate::outbox::Reply;
use crate::replies;
use crate::telegram::sender::plain_pieces;
use crate::topics::Place;

/// A stranger gets at most one reply in this time.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// Strangers answered within the hour that are remembered at most.
pub const MAX_REMEMBERED: usize = 10_000;

#[derive(Default)]
pub struct StrangerLimit {
    /// When each stranger was last answered.
    answered: HashMap<u64, Instant>,
    /// The same, oldest first, to forget in order.
    order: VecDeque<(Instant, u64)>,
}

impl StrangerLimit {
    /// Whether `user` may be answered at `now`; if so, it is remembered as answered.
    pub fn admit(&mut self, user: u64, now: Instant) -> bool {
        self.forget_before(now);
        if self.answered.contains_key(&user) || self.answered.len() >= MAX_REMEMBERED {
            return false;
        }
        self.answered.insert(user, now);
        self.order.push_back((now, user));
        true
    }

    /// Forgets whoever was answered an hour or more before `now`. Each stranger is in
    /// `order` once (admitted again only after being forgotten), so the two stay equal.
    fn forget_before(&mut self, now: Instant) {
        while let Some(&(at, user)) = self.order.front() {
            if now.saturating_duration_since(at) < WINDOW {
                break;
            }
            self.order.pop_front();
            self.answered.remove(&user);
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.answered.len()
    }
}

impl ChatRouter {
    /// A stranger's message: answered with their id once an hour, behind the chat's
    /// members; otherwise closed without a reply (so a restart does not answer it either).
    pub(super) fn stranger(&self, place: Place, row: i64, user_id: u64) {
        let chat = place.chat;
        let admitted = self
            .inner
            .strangers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(user_id, Instant::now());
        self.inner.ctx.health.stranger(admitted);
        let text = if admitted {
            tracing::info!(
                chat_id = chat,
                user_id,
                "message from a user not in telegram.allowed_users"
            );
            replies::stranger_text(user_id)
        } else {
            // Not logged at info: a crowd of strangers would flood the journal instead.
            tracing::debug!(
                chat_id = chat,
                user_id,
                "a stranger's message dropped: answered within the hour"
            );
            String::new()
        };
        // A store error is logged where it happens; the reply still goes out.
        let _ = self.inner.ctx.outbox.send_to_stranger(Reply {
            chat,
            thread: place.thread,
            answers: &[row],
            text: &text,
            pieces: if admitted {
                plain_pieces(&text)
            } else {
                Vec::new()
            },
            rich: None,
            edit: None,
            exchange: None,
            question: None,
            files: Vec::new(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reply_per_stranger_per_hour() {
        let mut limit = StrangerLimit::default();
        let t0 = Instant::now();
        assert!(limit.admit(7, t0));
        assert!(!limit.admit(7, t0 + Duration::from_secs(1)));
        assert!(!limit.admit(7, t0 + WINDOW - Duration::from_millis(1)));
        // Another stranger is not held back by the first.
        assert!(limit.admit(8, t0 + Duration::from_secs(2)));
        assert!(limit.admit(7, t0 + WINDOW));
        assert!(!limit.admit(7, t0 + WINDOW + Duration::from_secs(1)));
    }

    #[test]
    fn the_memory_is_bounded_and_forgets_after_the_hour() {
        let mut limit = StrangerLimit::default();
        let t0 = Instant::now();
        for user in 0..MAX_REMEMBERED as u64 {
            assert!(limit.admit(user, t0));
        }
        // Full: a new stranger within the hour is not answered, and not remembered.
        assert!(!limit.admit(u64::MAX, t0 + Duration::from_secs(60)));
        assert_eq!(limit.remembered(), MAX_REMEMBERED);
        // An hour later everyone is forgotten as the next one arrives.
        assert!(limit.admit(u64::MAX, t0 + WINDOW));
        assert_eq!(limit.remembered(), 1);
        assert_eq!(limit.order.len(), 1);
    }
}
