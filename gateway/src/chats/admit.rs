//! Who in a turn is answered by a job: a message of someone no longer allowed (a reload
//! removed them after it was stored) is answered as a stranger's, or, a schedule's run,
//! closed without a word; a message whose jobs were started [`MAX_ATTEMPTS`] times
//! without an answer is given up with an apology, so it cannot take every restart down
//! with it.

use super::ChatRouter;
use crate::replies;
use crate::store::Taken;
use crate::topics::Place;

/// A message whose job was started this many times without an answer is given up.
pub const MAX_ATTEMPTS: u32 = 3;

impl ChatRouter {
    /// The messages of `turn` a job may answer; the others are answered (or closed) here.
    pub(super) fn admitted(&self, place: Place, turn: Vec<Taken>) -> Vec<Taken> {
        let chat = place.chat;
        let ctx = &self.inner.ctx;
        let settings = ctx.settings.get();
        // Allowed when stored; a reload may have removed them since.
        let (turn, strangers): (Vec<Taken>, Vec<Taken>) = turn
            .into_iter()
            .partition(|m| settings.allowed.contains(&m.user_id));
        for stranger in strangers {
            if stranger.scheduled {
                // A schedule of someone no longer allowed: closed without a run or a word.
                tracing::info!(
                    chat_id = chat,
                    "a schedule's run dropped: its user is no longer in telegram.allowed_users"
                );
                let _ = ctx.outbox.send(crate::outbox::Reply::closing(
                    chat,
                    place.thread,
                    &[stranger.id],
                    "",
                ));
                continue;
            }
            self.inner.reply(
                place,
                &[stranger.id],
                &replies::stranger_text(stranger.user_id),
            );
        }
        let (poisoned, turn): (Vec<Taken>, Vec<Taken>) = turn
            .into_iter()
            .partition(|m| m.earlier_attempts >= MAX_ATTEMPTS);
        if !poisoned.is_empty() {
            let rows: Vec<i64> = poisoned.iter().map(|m| m.id).collect();
            tracing::warn!(
                chat_id = chat,
                rows = ?rows,
                "giving up on message(s) whose job was started {MAX_ATTEMPTS} times without an answer"
            );
            self.inner
                .reply(place, &rows, &replies::gave_up(MAX_ATTEMPTS));
        }
        turn
    }
}
