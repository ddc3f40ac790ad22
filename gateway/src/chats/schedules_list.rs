//! `/schedules` answered in the chat: the list with its cancel buttons.

use super::ChatRouter;
use crate::topics::Place;

impl ChatRouter {
    /// `/schedules`: the list with its cancel buttons, sent directly; the command is
    /// answered by a reply of no pieces. Should the list not go, its text goes through
    /// the outbox instead, without buttons.
    pub(super) async fn show_schedules(&self, place: Place, rows: &[i64]) {
        let (chat, ctx) = (place.chat, &self.inner.ctx);
        match crate::schedules::chat::show(&ctx.schedules, &ctx.sender, place).await {
            Ok(()) => {
                let _ = ctx.outbox.send(crate::outbox::Reply::closing(
                    chat,
                    place.thread,
                    rows,
                    "(the schedules, shown with their buttons)",
                ));
            }
            Err(text) => self.inner.reply(place, rows, &text),
        }
    }
}
