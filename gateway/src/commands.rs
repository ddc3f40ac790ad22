//! The bot's commands: `/start` and `/help` (what the bot is), `/new` (a fresh
//! conversation), `/retry` (the last message again), `/status` (a short health summary).
//! They run in the chat's task, in order with its messages, so `/new` sent after a
//! question applies after that question is answered.

use std::time::Instant;

use teloxide_core::types::BotCommand;

use crate::circuit::{Circuits, View};
use crate::health::Snapshot;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    New,
    Retry,
    Status,
    Unknown(String),
}

pub const HELP: &str = "👋 I'm an AI assistant. Send me a message and I'll answer; I remember \
the conversation until you start a new one.\n\n\
/new – start a new conversation (I forget the earlier messages)\n\
/retry – ask your last message again\n\
/status – how the bot is doing right now\n\
/help – this message";

/// The commands Telegram shows in its menu (`setMyCommands`).
pub fn menu() -> Vec<BotCommand> {
    vec![
        BotCommand::new("new", "Start a new conversation"),
        BotCommand::new("retry", "Ask your last message again"),
        BotCommand::new("status", "How the bot is doing"),
        BotCommand::new("help", "What this bot does"),
    ]
}

/// A command, if `text` is one (`/name` or `/name@bot`, arguments ignored).
pub fn parse(text: &str) -> Option<Command> {
    let first = text.split_whitespace().next()?;
    let name = first.strip_prefix('/')?;
    let name = name.split('@').next().unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    Some(match name.as_str() {
        "start" | "help" => Command::Help,
        "new" => Command::New,
        "retry" => Command::Retry,
        "status" => Command::Status,
        _ => Command::Unknown(name),
    })
}

/// `/status`: the same facts as `hermes-gateway status`, in a few lines.
pub fn status_text(
    snapshot: &Snapshot,
    providers: &[(String, String)],
    circuits: &Circuits,
) -> String {
    let now = Instant::now();
    let answering = providers
        .iter()
        .find(|(name, _)| matches!(circuits.view(name, now), View::Closed | View::Probing));
    let mut lines = vec![if snapshot.degraded_reasons().is_empty() {
        "✅ All good.".to_string()
    } else {
        format!("⚠️ Degraded: {}.", snapshot.degraded_reasons().join("; "))
    }];
    match answering {
        Some((name, model)) => lines.push(format!("Answering now: {name} ({model}).")),
        None => lines.push("No provider is answering now (quota exhausted everywhere).".into()),
    }
    lines.push(format!(
        "Up {} min; {} answered, {} failed.",
        snapshot.uptime_secs / 60,
        snapshot.jobs.answered,
        snapshot.jobs.failed.values().sum::<u64>()
    ));
    lines.join("\n")
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
        assert_eq!(
            parse("/frobnicate"),
            Some(Command::Unknown("frobnicate".into()))
        );
        assert_eq!(parse("hello /new"), None);
        assert_eq!(parse("/"), None);
        assert_eq!(parse(""), None);
    }
}
