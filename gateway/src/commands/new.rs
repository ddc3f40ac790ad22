//! `/new`: a fresh conversation. The old one stays in the store, no longer sent.

use super::Context;

pub fn run(ctx: &Context) -> String {
    match ctx.store.new_conversation(ctx.chat) {
        Ok(()) => {
            "🆕 Started a new conversation: earlier messages are no longer sent to the model."
                .into()
        }
        Err(e) => {
            tracing::error!(chat = ctx.chat, "cannot start a new conversation: {e}");
            "⚠️ I could not start a new conversation; please try again.".into()
        }
    }
}
