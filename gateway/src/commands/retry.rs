//! `/retry`: the chat's last question runs again, e.g. after a quota error or a crash: the
//! messages its last job asked about (several, joined, when they came together). Only
//! allowed users' messages ever become a question, so a stranger's never runs here.

use super::{Context, Outcome};
use crate::replies;

pub fn run(ctx: &Context) -> Outcome {
    match ctx.store.last_question(ctx.place()) {
        Ok(Some(text)) => Outcome::Ask(text),
        Ok(None) => Outcome::Reply(replies::retry::NOTHING.into()),
        Err(e) => {
            tracing::error!(chat_id = ctx.chat, "cannot read the last question: {e}");
            Outcome::Reply(replies::retry::FAILED.into())
        }
    }
}
