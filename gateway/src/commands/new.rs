//! `/new`: a fresh conversation. The old one stays in the store, no longer sent.

use super::Context;
use crate::replies;

pub fn run(ctx: &Context) -> String {
    match ctx.store.new_conversation(ctx.place()) {
        Ok(()) => replies::new::STARTED.into(),
        Err(e) => {
            tracing::error!(chat_id = ctx.chat, "cannot start a new conversation: {e}");
            replies::new::FAILED.into()
        }
    }
}
