//! `/retry`: the chat's last message (that was not a command) runs again, e.g. after a
//! quota error or a crash.

use super::{Context, Outcome};
use crate::replies;

pub fn run(ctx: &Context) -> Outcome {
    match ctx.store.last_user_text(ctx.chat) {
        Ok(Some(text)) => Outcome::Ask(text),
        Ok(None) => Outcome::Reply(replies::retry::NOTHING.into()),
        Err(e) => {
            tracing::error!(chat_id = ctx.chat, "cannot read the last message: {e}");
            Outcome::Reply(replies::retry::FAILED.into())
        }
    }
}
