//! The settle window: an album, or a long text Telegram split, is one turn.
//!
//! Telegram delivers an album as one update per photo or document, sharing a
//! `media_group_id`, and a text past its 4,096-character limit as several messages; the
//! updates may come in separate `getUpdates` answers. A chat's task takes every waiting
//! message as its next turn ([`super::turns`]), so it only has to not take the turn while
//! the rest is plausibly on its way: while the newest album member, or a text at or near
//! the limit, arrived less than `telegram.settle_ms` ago (each arrival starts it anew). A
//! text that continues a split (the same user's next message) ends that wait at once, and
//! an ordinary message never waits: nothing is held unless it can have more to come.
//!
//! The window lives in the parent because the parent is the only process that sees updates
//! (DESIGN.md, "the process model": it owns the poller, the offset and the inbox; a worker
//! gets one job, a turn already formed, and is disposable). Nothing is held in memory but
//! a deadline: every message of the batch is in the inbox before Telegram is told it
//! arrived (invariant 5), so a gateway killed during the window loses none of it. The next
//! run finds them waiting and waits the window again from its own start (the rest of an
//! album may still be at Telegram, unacknowledged), then asks them as one turn, once.

use std::time::{Duration, Instant};

use crate::store::{Kind, Pending};

/// A text at least this long, in UTF-16 code units (as Telegram counts its 4,096), may be
/// the first part of a split: clients cut at a paragraph or a word before the limit, so
/// the part is rarely exactly 4,096. A real message this long only waits the window.
pub const SPLIT_NEAR: usize = 4096 - 512;
/// Holds one chat keeps at most: each is an album or a user's split text among its waiting
/// messages, which `telegram.max_queued_per_chat` bounds already; this bounds it here.
const MAX_HOLDS: usize = 16;

/// Why a chat's next turn waits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hold {
    /// The album with this `media_group_id` may have more members on their way.
    Album(String),
    /// This user's last message was at or near the limit: its rest may follow.
    Split(u64),
}

/// What one chat waits for before it takes its next turn.
#[derive(Debug, Default)]
pub struct Holds {
    held: Vec<(Hold, Instant)>,
}

/// Whether `message` may have more to come: an album member, or a text at or near the
/// limit (a file's caption is never split).
pub fn may_continue(message: &Pending) -> bool {
    message.kind == Kind::Message
        && (message.media_group.is_some() || (message.media.is_none() && near_limit(&message.text)))
}

fn near_limit(text: &str) -> bool {
    // Counting UTF-16 units stops early: a text under the threshold in bytes is under it.
    text.len() >= SPLIT_NEAR && text.encode_utf16().count() >= SPLIT_NEAR
}

impl Holds {
    /// `message` of the chat arrived (or was found waiting at a start) at `now`. The same
    /// user writing again ends the wait for their split text; a message that may continue
    /// waits `window` from now.
    pub fn arrived(&mut self, message: &Pending, now: Instant, window: Duration) {
        self.held
            .retain(|(hold, until)| *until > now && *hold != Hold::Split(message.user_id));
        if window.is_zero() || !may_continue(message) {
            return;
        }
        let hold = match &message.media_group {
            Some(group) => Hold::Album(group.clone()),
            None => Hold::Split(message.user_id),
        };
        self.held.retain(|(h, _)| *h != hold);
        if self.held.len() >= MAX_HOLDS {
            self.held.remove(0);
        }
        self.held.push((hold, now + window));
    }

    /// Until when the chat's next turn waits, if it does at `now`.
    pub fn until(&mut self, now: Instant) -> Option<Instant> {
        self.held.retain(|(_, until)| *until > now);
        self.held.iter().map(|(_, until)| *until).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(1000);

    fn text(user: u64, text: &str) -> Pending {
        Pending {
            user_id: user,
            text: text.into(),
            ..Pending::default()
        }
    }

    fn album(group: &str) -> Pending {
        Pending {
            user_id: 1,
            media_group: Some(group.into()),
            ..Pending::default()
        }
    }

    #[test]
    fn an_ordinary_message_never_waits() {
        let mut holds = Holds::default();
        let now = Instant::now();
        holds.arrived(&text(1, "hello"), now, WINDOW);
        assert_eq!(holds.until(now), None);
        holds.arrived(&text(1, &"x".repeat(SPLIT_NEAR - 1)), now, WINDOW);
        assert_eq!(holds.until(now), None);
    }

    #[test]
    fn an_album_waits_from_its_newest_member() {
        let mut holds = Holds::default();
        let t0 = Instant::now();
        holds.arrived(&album("g"), t0, WINDOW);
        let t1 = t0 + Duration::from_millis(400);
        holds.arrived(&album("g"), t1, WINDOW);
        assert_eq!(holds.until(t1), Some(t1 + WINDOW));
        // Another message does not end an album's wait: its members may still come.
        holds.arrived(&text(1, "and?"), t1, WINDOW);
        assert_eq!(holds.until(t1), Some(t1 + WINDOW));
        assert_eq!(holds.until(t1 + WINDOW), None);
    }

    #[test]
    fn a_split_text_waits_until_its_rest_comes_from_the_same_user() {
        let mut holds = Holds::default();
        let now = Instant::now();
        // Telegram counts UTF-16 units: 2,048 emoji are 4,096 of them.
        holds.arrived(&text(1, &"😀".repeat(2048)), now, WINDOW);
        assert_eq!(holds.until(now), Some(now + WINDOW));
        holds.arrived(&text(2, "someone else"), now, WINDOW);
        assert_eq!(holds.until(now), Some(now + WINDOW));
        holds.arrived(&text(1, "the rest"), now, WINDOW);
        assert_eq!(holds.until(now), None);
    }

    #[test]
    fn a_window_of_zero_holds_nothing() {
        let mut holds = Holds::default();
        let now = Instant::now();
        holds.arrived(&album("g"), now, Duration::ZERO);
        assert_eq!(holds.until(now), None);
    }
}
