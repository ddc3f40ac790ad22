//! `/retry`: the chat's last message (that was not a command) runs again, e.g. after a
//! quota error or a crash.

use super::{Context, Outcome};

pub fn run(ctx: &Context) -> Outcome {
    match ctx.store.last_user_text(ctx.chat) {
        Ok(Some(text)) => Outcome::Ask(text),
        Ok(None) => Outcome::Reply("There is no earlier message to retry.".into()),
        Err(e) => {
            tracing::error!(chat = ctx.chat, "cannot read the last message: {e}");
            Outcome::Reply("⚠️ I could not find your last message; please send it again.".into())
        }
    }
}
