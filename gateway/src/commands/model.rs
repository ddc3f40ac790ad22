//! `/model`: which provider and model answer in this chat, and, for admins
//! (`telegram.admin_users`), switching among the configured ones.
//!
//! A chat's choice is stored with the chat (in a chat with topics, with the topic: each is
//! a conversation of its own), so it survives restarts and `/new`. The chosen
//! provider goes first in the chat's chain; the others stay behind it as fallbacks, so a
//! switch never costs the chat its fallbacks. A choice that a reload removed from the
//! configuration is ignored (the default applies) rather than failing the chat. The
//! chain is [`chain`]'s, for the chat's jobs as for what `/model` and `/status` say.

use hermes_protocol::ProviderPlan;

use super::Context;
use crate::replies;
use crate::settings::ChatSettings;
use crate::store::Store;
use crate::topics::Place;

/// What resets a chat to the configured order.
const DEFAULT_WORDS: [&str; 2] = ["default", "reset"];

/// A chat's providers in the order its jobs try them.
pub struct Chain {
    pub providers: Vec<ProviderPlan>,
    /// The first is there because the chat chose it with `/model`.
    pub chosen: bool,
}

/// The conversation's provider chain (a chat's, or one topic's of it): its choice first
/// while that provider is still configured, the others behind it in configured order.
pub fn chain(settings: &ChatSettings, store: &Store, place: Place) -> Chain {
    let choice = match store.chat_provider(place) {
        Ok(choice) => choice,
        Err(e) => {
            tracing::warn!(
                chat_id = place.chat,
                "cannot read the chat's model, using the default: {e}"
            );
            None
        }
    };
    let mut providers = settings.providers.clone();
    let chosen = choice.is_some_and(|name| first(&mut providers, |p| p.name == name));
    Chain { providers, chosen }
}

pub fn run(ctx: &Context, argument: Option<&str>) -> String {
    match argument {
        None => show(ctx),
        Some(_) if !is_admin(ctx) => replies::model::ADMINS_ONLY.into(),
        Some(word) if DEFAULT_WORDS.iter().any(|d| word.eq_ignore_ascii_case(d)) => {
            match ctx.store.set_chat_provider(ctx.place(), None) {
                Ok(()) => replies::model::back_to_default(&current(ctx)),
                Err(e) => store_failed(ctx, e),
            }
        }
        Some(wanted) => {
            let providers = &ctx.settings.providers;
            let found = providers
                .iter()
                .find(|p| p.name.eq_ignore_ascii_case(wanted))
                .or_else(|| {
                    providers
                        .iter()
                        .find(|p| p.model.eq_ignore_ascii_case(wanted))
                });
            match found {
                Some(p) => match ctx.store.set_chat_provider(ctx.place(), Some(&p.name)) {
                    Ok(()) => {
                        tracing::info!(chat_id = ctx.chat, user_id = ctx.user, provider = %p.name, "chat switched provider");
                        replies::model::switched(&p.name, &p.model)
                    }
                    Err(e) => store_failed(ctx, e),
                },
                None => replies::model::not_found(wanted, &available(ctx)),
            }
        }
    }
}

fn show(ctx: &Context) -> String {
    let mut text = replies::model::uses(&current(ctx), &available(ctx));
    if is_admin(ctx) {
        text.push_str(replies::model::HOW_TO_SWITCH);
    }
    text
}

fn current(ctx: &Context) -> String {
    let chain = chain(ctx.settings, ctx.store, ctx.place());
    match chain.providers.first() {
        Some(p) => replies::model::current(&p.name, &p.model, chain.chosen),
        None => replies::model::NO_PROVIDER.into(),
    }
}

fn available(ctx: &Context) -> String {
    replies::model::available(
        ctx.settings
            .providers
            .iter()
            .map(|p| (p.name.as_str(), p.model.as_str())),
    )
}

fn is_admin(ctx: &Context) -> bool {
    ctx.settings.admins.contains(&ctx.user)
}

fn store_failed(ctx: &Context, e: crate::store::StoreError) -> String {
    tracing::error!(chat_id = ctx.chat, "cannot store the chat's model: {e}");
    replies::model::FAILED.into()
}

/// Moves the first element matching `pred` to the front, keeping the others in order;
/// false when none matches.
fn first<T>(items: &mut [T], pred: impl Fn(&T) -> bool) -> bool {
    match items.iter().position(pred) {
        Some(i) => {
            items[..=i].rotate_right(1);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chosen_one_goes_first_and_the_rest_keep_their_order() {
        let mut chain = vec!["a", "b", "c", "d"];
        assert!(first(&mut chain, |x| *x == "c"));
        assert_eq!(chain, ["c", "a", "b", "d"]);
        assert!(!first(&mut chain, |x| *x == "zzz"));
        assert_eq!(chain, ["c", "a", "b", "d"]);
    }
}
