//! Which message of a turn shows the turn's reactions ([`crate::telegram::reactions`]),
//! and which reaction its outcome ends with. The turn's last message gets them: it is the
//! one the answer follows.

use hermes_protocol::{CancelReason, Failure, Outcome};

use super::{JobContext, Request};
use crate::settings::ChatSettings;
use crate::telegram::reactions::{Ending, TurnReaction};

/// Starts the turn's reactions, when they are on. The message's Telegram id is read from
/// the store on the reaction's own task.
pub(super) fn start(ctx: &JobContext, settings: &ChatSettings, request: &Request) -> TurnReaction {
    let Some(row) = request.rows.last().copied().filter(|_| settings.reactions) else {
        return TurnReaction::none();
    };
    let store = ctx.store.clone();
    let chat = request.chat;
    ctx.reactions
        .start(chat, move || match store.message_id_of(row) {
            Ok(id) => id.and_then(|id| i32::try_from(id).ok()),
            Err(e) => {
                tracing::info!(
                    chat_id = chat,
                    "no reaction: cannot read the message's id: {e}"
                );
                None
            }
        })
}

/// The reaction `outcome` ends with; None when the gateway's stop cut the job short (its
/// messages wait for the next run, which reacts again).
pub(super) fn ending(outcome: &Outcome) -> Option<Ending> {
    match outcome {
        Outcome::Reply(_) => Some(Ending::Answered),
        Outcome::Failed(Failure::Cancelled {
            reason: CancelReason::ByUser,
        }) => Some(Ending::Stopped),
        Outcome::Failed(Failure::Cancelled { .. }) => None,
        Outcome::Failed(_) => Some(Ending::Failed),
    }
}
