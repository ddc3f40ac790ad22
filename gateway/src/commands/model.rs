//! `/model`: which provider and model answer in this chat, and, for admins
//! (`telegram.admin_users`), switching among the configured ones.
//!
//! A chat's choice is stored with the chat, so it survives restarts and `/new`. The chosen
//! provider goes first in the chat's chain; the others stay behind it as fallbacks, so a
//! switch never costs the chat its fallbacks. A choice that a reload removed from the
//! configuration is ignored (the default applies) rather than failing the chat.

use super::Context;

/// What resets a chat to the configured order.
const DEFAULT_WORDS: [&str; 2] = ["default", "reset"];

pub fn run(ctx: &Context, argument: Option<&str>) -> String {
    match argument {
        None => show(ctx),
        Some(_) if !is_admin(ctx) => "Only the bot's admins can switch the model. \
            Send /model to see which one answers here."
            .into(),
        Some(word) if DEFAULT_WORDS.iter().any(|d| word.eq_ignore_ascii_case(d)) => {
            match ctx.store.set_chat_provider(ctx.chat, None) {
                Ok(()) => format!("This chat is back to the default: {}.", current(ctx)),
                Err(e) => store_failed(ctx, e),
            }
        }
        Some(wanted) => {
            let providers = &ctx.settings.provider_models;
            let found = providers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
                .or_else(|| {
                    providers
                        .iter()
                        .find(|(_, model)| model.eq_ignore_ascii_case(wanted))
                });
            match found {
                Some((name, model)) => match ctx.store.set_chat_provider(ctx.chat, Some(name)) {
                    Ok(()) => {
                        tracing::info!(chat = ctx.chat, user = ctx.user, provider = %name, "chat switched provider");
                        format!("This chat now uses {name} ({model}).")
                    }
                    Err(e) => store_failed(ctx, e),
                },
                None => format!(
                    "There is no provider or model called {wanted:?} here.\n{}",
                    available(ctx)
                ),
            }
        }
    }
}

fn show(ctx: &Context) -> String {
    let mut text = format!("This chat uses {}.\n{}", current(ctx), available(ctx));
    if is_admin(ctx) {
        text.push_str("\nSwitch with /model NAME; back to the default with /model default.");
    }
    text
}

fn current(ctx: &Context) -> String {
    let chosen = chosen(ctx);
    match chain_for_chat(ctx).first() {
        Some((name, model)) if chosen.is_some() => format!("{name} ({model}), chosen with /model"),
        Some((name, model)) => format!("{name} ({model}), the default"),
        None => "no provider".into(),
    }
}

fn available(ctx: &Context) -> String {
    let list: Vec<String> = ctx
        .settings
        .provider_models
        .iter()
        .map(|(name, model)| format!("• {name} ({model})"))
        .collect();
    format!("Available:\n{}", list.join("\n"))
}

fn is_admin(ctx: &Context) -> bool {
    ctx.settings.admins.contains(&ctx.user)
}

fn store_failed(ctx: &Context, e: crate::store::StoreError) -> String {
    tracing::error!(chat = ctx.chat, "cannot store the chat's model: {e}");
    "⚠️ I could not switch the model; please try again.".into()
}

/// The chat's chosen provider, if it is still configured.
fn chosen(ctx: &Context) -> Option<String> {
    let name = match ctx.store.chat_provider(ctx.chat) {
        Ok(name) => name?,
        Err(e) => {
            tracing::warn!(chat = ctx.chat, "cannot read the chat's model: {e}");
            return None;
        }
    };
    ctx.settings
        .provider_models
        .iter()
        .any(|(n, _)| *n == name)
        .then_some(name)
}

/// (name, model) of the chat's chain, its choice first.
pub fn chain_for_chat(ctx: &Context) -> Vec<(String, String)> {
    let mut chain = ctx.settings.provider_models.clone();
    if let Some(name) = chosen(ctx) {
        first(&mut chain, |(n, _)| *n == name);
    }
    chain
}

/// Moves the first element matching `pred` to the front, keeping the others in order.
pub fn first<T>(items: &mut [T], pred: impl Fn(&T) -> bool) {
    if let Some(i) = items.iter().position(pred) {
        items[..=i].rotate_right(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chosen_one_goes_first_and_the_rest_keep_their_order() {
        let mut chain = vec!["a", "b", "c", "d"];
        first(&mut chain, |x| *x == "c");
        assert_eq!(chain, ["c", "a", "b", "d"]);
        first(&mut chain, |x| *x == "zzz");
        assert_eq!(chain, ["c", "a", "b", "d"]);
    }
}
