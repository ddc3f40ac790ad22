//! The ⏹ button under a streamed answer: a press does what `/stop` does, for the job whose
//! preview carries it, when the user who asked presses it.
//!
//! Each job's button carries a random key in its data (`stop:KEY`), known only to the
//! chat's [`InFlight`] slot while that job runs: a press of an earlier job's button (or
//! one a client forged) matches nothing and is answered "already finished", and its
//! buttons go. Anyone else who presses it, another allowed member of a group included,
//! gets a callback answer saying only the asker can stop it, and nothing happens. The
//! press arrives as a `callback_query` (not stored: it is about a job of this run), and is
//! answered on a task of its own, off the poller. The job's end then replies "⏹ Stopped."
//! in place of the preview, which takes the button away, as `/stop` would
//! ([`super::deliver`]).

use rand::Rng;
use teloxide_core::types::{CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup};

use super::ChatRouter;
use crate::commands::stop::{InFlight, Press};
use crate::replies;
use crate::topics::Place;

/// Prefix of the button's callback data.
const DATA_PREFIX: &str = "stop:";

/// Whether `query` is a press of a ⏹ button.
pub fn is_stop_press(query: &CallbackQuery) -> bool {
    query
        .data
        .as_deref()
        .is_some_and(|d| d.starts_with(DATA_PREFIX))
}

/// A new job's button: its key (for [`InFlight::button`]) and the keyboard to show.
pub fn new_button() -> (String, InlineKeyboardMarkup) {
    let bytes: [u8; 12] = rand::rng().random();
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let keyboard = InlineKeyboardMarkup::new([[InlineKeyboardButton::callback(
        replies::STOP_BUTTON,
        format!("{DATA_PREFIX}{key}"),
    )]]);
    (key, keyboard)
}

impl ChatRouter {
    /// A ⏹ button was pressed. Never blocks the poller: it is answered on its own task.
    pub fn on_stop_press(&self, query: CallbackQuery) {
        let router = self.clone();
        tokio::spawn(async move { router.stop_pressed(query).await });
    }

    async fn stop_pressed(&self, query: CallbackQuery) {
        let ctx = &self.inner.ctx;
        let key = query
            .data
            .as_deref()
            .and_then(|d| d.strip_prefix(DATA_PREFIX))
            .unwrap_or_default();
        // The preview is in the topic of its job: the press comes from there.
        let message = query.message.as_ref().map(|m| {
            let place = m
                .regular_message()
                .map_or(Place::new(m.chat().id.0, None), Place::of);
            (place, m.id())
        });
        let user = query.from.id.0;
        let allowed = ctx.settings.get().allowed.contains(&user);
        let in_flight = message.and_then(|(place, _)| {
            self.inner
                .lock()
                .get(&place)
                .map(|entry| (place, entry.in_flight.clone()))
        });
        let press = match &in_flight {
            None => Press::Over,
            Some(_) if !allowed => Press::NotYours,
            Some((place, slot)) => press(ctx, *place, slot, key, user),
        };
        let text = match press {
            Press::Stopping => {
                tracing::info!(
                    chat_id = in_flight.as_ref().map(|(p, _)| p.chat),
                    user_id = user,
                    "stopping the job in flight (the ⏹ button)"
                );
                replies::STOP_PRESSED
            }
            Press::NotYours => {
                tracing::info!(
                    user_id = user,
                    "the ⏹ button pressed by someone other than the user who asked: ignored"
                );
                replies::STOP_NOT_YOURS
            }
            Press::Over => replies::STOP_OVER,
        };
        ctx.sender.answer_callback(&query.id, Some(text)).await;
        if press == Press::Over
            && let Some((place, id)) = message
        {
            let chat = place.chat;
            // A button of a job that is over, or of an earlier run: none stays.
            ctx.sender.remove_keyboard(chat, id).await;
        }
    }
}

/// Presses the button of the chat's job: the messages waiting now end with it.
fn press(ctx: &super::JobContext, place: Place, slot: &InFlight, key: &str, user: u64) -> Press {
    let through = match ctx.store.waiting(place, i64::MAX) {
        Ok(waiting) => waiting.last().copied().unwrap_or(0),
        Err(e) => {
            // Then only the job itself ends; what waits is answered after it.
            tracing::error!(
                chat_id = place.chat,
                "cannot read the waiting messages: {e}"
            );
            0
        }
    };
    slot.press(key, user, through)
}

#[cfg(test)]
mod tests {
    use super::*;
    use teloxide_core::types::InlineKeyboardButtonKind;

    #[test]
    fn the_button_fits_telegrams_64_bytes() {
        let (key, keyboard) = new_button();
        let button = &keyboard.inline_keyboard[0][0];
        let InlineKeyboardButtonKind::CallbackData(data) = &button.kind else {
            panic!("{button:?}");
        };
        assert!(data.len() <= 64, "{data}");
        assert_eq!(data.strip_prefix(DATA_PREFIX), Some(key.as_str()));
        assert_ne!(new_button().0, key, "each job's key is its own");
    }
}
