//! The bot's commands, one module each: [`new`], [`stop`], [`retry`], [`status`],
//! [`model`], [`usage`]; `/start` and `/help` only answer (their text, like every reply's, is in
//! [`crate::replies`]).
//!
//! All but `/stop` run in the chat's task, in order with its messages, so `/new` sent
//! after a question applies after that question is answered. `/stop` is about the job in
//! flight, so the router hands it to [`stop::InFlight`] the moment it arrives.

pub mod model;
pub mod new;
pub mod retry;
pub mod status;
pub mod stop;
pub mod usage;

use std::sync::Arc;

use teloxide_core::types::BotCommand;

use crate::circuit::Circuits;
use crate::health::Health;
use crate::replies;
use crate::settings::ChatSettings;
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    New,
    Stop,
    Retry,
    Status,
    /// `/model` alone shows; with a name, switches (admins only).
    Model(Option<String>),
    Usage,
    Unknown(String),
}

/// What a command asks the chat to do.
pub enum Outcome {
    Reply(String),
    /// Run this text as a job (`/retry`).
    Ask(String),
}

/// What a command may read and change.
pub struct Context<'a> {
    pub chat: i64,
    pub user: u64,
    pub store: &'a Store,
    pub settings: &'a ChatSettings,
    pub health: &'a Arc<Health>,
    pub circuits: &'a Circuits,
}

/// The commands Telegram shows in its menu (`setMyCommands`).
pub fn menu() -> Vec<BotCommand> {
    replies::MENU
        .iter()
        .map(|(name, description)| BotCommand::new(*name, *description))
        .collect()
}

/// A command, if `text` is one (`/name` or `/name@bot`, then an optional argument).
pub fn parse(text: &str) -> Option<Command> {
    let mut words = text.split_whitespace();
    let first = words.next()?;
    let name = first.strip_prefix('/')?;
    let name = name.split('@').next().unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    let argument = words.next().map(str::to_string);
    Some(match name.as_str() {
        "start" | "help" => Command::Help,
        "new" => Command::New,
        "stop" => Command::Stop,
        "retry" => Command::Retry,
        "status" => Command::Status,
        "model" => Command::Model(argument),
        "usage" => Command::Usage,
        _ => Command::Unknown(name),
    })
}

/// Runs a command that answers in the chat's turn (everything but `/stop`).
pub fn execute(ctx: &Context, command: Command) -> Outcome {
    match command {
        Command::Help => Outcome::Reply(replies::HELP.to_string()),
        Command::New => Outcome::Reply(new::run(ctx)),
        Command::Retry => retry::run(ctx),
        Command::Status => Outcome::Reply(status::run(ctx)),
        Command::Model(argument) => Outcome::Reply(model::run(ctx, argument.as_deref())),
        Command::Usage => Outcome::Reply(usage::run(ctx)),
        // Reached only if the router did not take it first.
        Command::Stop => Outcome::Reply(replies::NOTHING_RUNNING.to_string()),
        Command::Unknown(name) => Outcome::Reply(replies::unknown_command(&name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_and_without_the_bot_name() {
        assert_eq!(parse("/new"), Some(Command::New));
        assert_eq!(parse("  /NEW@hermes_bot please"), Some(Command::New));
        assert_eq!(parse("/start"), Some(Command::Help));
        assert_eq!(parse("/retry"), Some(Command::Retry));
        assert_eq!(parse("/stop"), Some(Command::Stop));
        assert_eq!(parse("/model"), Some(Command::Model(None)));
        assert_eq!(parse("/usage"), Some(Command::Usage));
        assert_eq!(
            parse("/model@hermes_bot backup"),
            Some(Command::Model(Some("backup".into())))
        );
        assert_eq!(
            parse("/frobnicate"),
            Some(Command::Unknown("frobnicate".into()))
        );
        assert_eq!(parse("hello /new"), None);
        assert_eq!(parse("/"), None);
        assert_eq!(parse(""), None);
    }
}
