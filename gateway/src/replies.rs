//! Everything the user reads that the gateway writes itself, in one place: the words for
//! each failure class, the chat's notices, and every command's replies.
//!
//! The failure texts are one short paragraph per class, in plain language: what happened,
//! whether it is about the user's message or about the service, and what they can do. The
//! technical detail goes to the log, not to the chat. The rest of the gateway decides
//! what to say; the words are here.

use hermes_protocol::{BudgetPeriod, CancelReason, CrashCause, Failure, MediaProblem};

pub fn failure_text(failure: &Failure) -> String {
    match failure {
        Failure::QuotaExhausted { .. } => "⚠️ I can't answer right now: the AI provider's quota or balance for this bot is exhausted. \
             Nothing is wrong with your message. Please try again later; if it keeps happening, \
             tell the bot's operator so they can top up the account."
            .into(),
        Failure::ProviderAuth { .. } => "⚠️ I can't answer right now: the AI provider rejected this bot's API key. \
             The bot's operator needs to fix the key; trying again won't help until then."
            .into(),
        Failure::RateLimited { .. } => "⏳ The AI provider is rate-limiting this bot right now. \
             Please wait a minute and send your message again."
            .into(),
        Failure::ProviderUnavailable { .. } => "⚠️ The AI provider is unavailable at the moment (it kept failing after several tries). \
             Please try again in a few minutes."
            .into(),
        Failure::ContextTooLong { .. } => "⚠️ This conversation has grown too long for the model. \
             Please send a shorter message or start over."
            .into(),
        Failure::ProviderRejected { status, .. } => format!(
            "⚠️ The AI provider refused this request (HTTP {status}). This is usually a setting of the bot \
             (for example the model name): please tell the bot's operator."
        ),
        Failure::ProviderProtocol { .. } => "⚠️ The AI provider sent an answer I couldn't read. \
             Please try again; if it keeps happening, tell the bot's operator."
            .into(),
        Failure::TimedOut { after_ms } => format!(
            "⏱ Your request took too long (over {} s) and was stopped. \
             Please try again, perhaps with a simpler question.",
            after_ms.div_ceil(1000)
        ),
        Failure::WorkerCrashed {
            cause: CrashCause::NotStarted { .. },
        } => "⚠️ The agent could not be started just now, so your message was not processed. \
             The bot itself is running: please try again in a minute."
            .into(),
        Failure::WorkerCrashed { .. } => "⚠️ The agent crashed while working on your message; the bot itself is fine. \
             Please send your message again."
            .into(),
        Failure::Cancelled {
            reason: CancelReason::ByUser,
        } => STOPPED.into(),
        Failure::Cancelled { .. } => "🔄 The bot is restarting. Your message is saved and will be \
             answered as soon as it is back; no need to send it again."
            .into(),
        Failure::Media { problem } => media_text(problem),
        Failure::OverBudget {
            everyone,
            period,
            cap,
            resets_in_secs,
            time_zone,
        } => {
            let whose = if *everyone {
                "This bot has used up its"
            } else {
                "You have used up your"
            };
            let scope = if *everyone { " for everyone" } else { "" };
            let when = match period {
                BudgetPeriod::Day => "at midnight",
                BudgetPeriod::Month => "on the first of the month",
            };
            format!(
                "💸 {whose} {} budget{scope} ({cap}), so I did not send your message to the AI. \
                 The budget starts again {when} ({time_zone}), in {}. Send /usage to see what was used.",
                period.as_str(),
                usage::wait(*resets_in_secs)
            )
        }
    }
}

/// What the bot understands, for every reply about a message it cannot use.
pub const UNDERSTOOD: &str = "I understand text messages, voice notes, photos and images, and \
text files (plain text, Markdown, CSV, JSON, source code) or PDFs.";

/// A file of the turn that could not be given to the model.
fn media_text(problem: &MediaProblem) -> String {
    let mb = |bytes: u64| bytes.div_ceil(1024 * 1024);
    match problem {
        MediaProblem::TooBig { size, max } => format!(
            "📎 That file is too big for me ({} MB); I can take files up to {} MB. \
             Please send a smaller one.",
            mb(*size),
            mb(*max)
        ),
        MediaProblem::TooLong { seconds, max } => format!(
            "🎤 That recording is {} long; I can listen to up to {}. \
             Please send a shorter one, or type your message.",
            duration(*seconds),
            duration(*max)
        ),
        MediaProblem::VoiceNotEnabled => "🎤 Voice messages are not enabled on this bot, so I \
             can't listen to this one. Please type your message instead."
            .into(),
        MediaProblem::NoVision => "🖼 The AI model this bot uses can't look at images, so I \
             can't see this one. Please describe it in words."
            .into(),
        MediaProblem::UnsupportedFile { file_name } => {
            format!("📄 I can't read {file_name}. {UNDERSTOOD}")
        }
        MediaProblem::Unreadable { file_name, detail } => {
            format!("📄 I couldn't read {file_name}: {detail}. {UNDERSTOOD}")
        }
        MediaProblem::DownloadFailed { .. } => "⚠️ I couldn't fetch your file from Telegram just \
             now, so it was not processed. Please send it again."
            .into(),
        MediaProblem::TooMuchAtOnce { size, max } => format!(
            "📎 These files together are too much for me at once ({} MB); I can take up to \
             {} MB of files at a time. Please send them in smaller groups.",
            mb(*size),
            mb(*max)
        ),
    }
}

fn duration(seconds: u32) -> String {
    if seconds < 120 {
        format!("{seconds} s")
    } else {
        format!("{} min", seconds.div_ceil(60))
    }
}

/// The reply to a sticker, a location, a video and the like (`what`: "stickers").
pub fn not_understood(what: &str) -> String {
    format!("🤷 I can't use {what}. {UNDERSTOOD}")
}

/// The line above an answer to a voice note: what was heard, quoted and kept short.
pub fn heard(transcripts: &[String]) -> String {
    const SHOWN_CHARS: usize = 200;
    let all = transcripts.join(" ");
    let all = all.trim();
    let shown: String = all.chars().take(SHOWN_CHARS).collect();
    let cut = if shown.len() < all.len() { "…" } else { "" };
    format!("🎤 “{shown}{cut}”")
}

/// The answer to someone not on `telegram.allowed_users`: their id, so the operator can
/// add it.
pub fn stranger_text(user_id: u64) -> String {
    format!(
        "Sorry, this bot only talks to people its operator has allowed. \
         Your Telegram user id is {user_id}: if you should have access, \
         send it to the operator to add to telegram.allowed_users."
    )
}

/// A chat has `telegram.max_queued_per_chat` messages waiting already: this one is not
/// answered, and the user is told so (never answered later, unannounced).
pub const QUEUE_FULL: &str = "⏳ I'm still working on your earlier messages, so I did not process this one. \
Please send it again once I have answered them.";

/// The gateway stops while messages of the chat still wait (no job of theirs was cut
/// short to say so): they stay stored and the next run answers them.
pub const SAVED_FOR_RESTART: &str = "🔄 The bot is restarting. Your messages are saved and will be \
answered as soon as it is back; no need to send them again.";

/// A message whose jobs kept ending without an answer (the gateway or its worker died each
/// time): answered with this instead of a further attempt.
pub fn gave_up(attempts: u32) -> String {
    format!(
        "⚠️ Sorry: I tried to answer this message {attempts} times and each attempt was cut short \
         (the bot restarted or crashed while working on it), so I have given up on it. \
         Please send it again, perhaps in other words."
    )
}

/// Ends an answer cut at the parent's bound on one answer.
pub fn answer_cut(limit_kib: usize) -> String {
    format!("\n\n✂️ (The answer was cut here: it was longer than {limit_kib} KiB.)")
}

/// The end of an answer's last message when the answer would have taken more than
/// `messages` messages.
pub fn answer_too_many_messages(messages: usize) -> String {
    format!("\n\n✂️ (The answer was cut here: it was longer than {messages} messages.)")
}

/// What replaces [`answer_too_many_messages`] when the whole answer follows as a file:
/// never longer, so the last message still fits.
pub fn answer_follows_as(file: &str) -> String {
    format!("\n\n✂️ (Cut here: the whole answer follows as {file}.)")
}

/// The model answered with nothing but whitespace.
pub const EMPTY_ANSWER: &str = "(The model returned an empty answer.)";

/// The status line of a streamed answer while tools run.
pub fn tools_running(tools: &[String]) -> String {
    format!("⚙️ using {} …", tools.join(", "))
}

/// `/stop`: the reply once the job is cancelled and its processes are gone.
pub const STOPPED: &str = "⏹ Stopped. Send a new message whenever you like.";

/// `/stop` with nothing to stop.
pub const NOTHING_RUNNING: &str =
    "There is nothing to stop: I'm not working on anything for this chat.";

/// `/stop` that lost the race against the answer.
pub const TOO_LATE: &str = "There was nothing left to stop: the answer had already been sent.";

/// `/start` and `/help`.
pub const HELP: &str = "👋 I'm an AI assistant. Send me a message and I'll answer; I remember \
the conversation until you start a new one. In a group, mention me or reply to one of my \
messages.\n\n\
/new – start a new conversation (I forget the earlier messages)\n\
/stop – stop the answer I'm working on\n\
/retry – ask your last message again\n\
/model – which AI model answers here (admins can switch it)\n\
/status – how the bot is doing right now\n\
/usage – how much of the AI you have used\n\
/help – this message";

/// The commands Telegram shows in its menu, with their descriptions.
pub const MENU: [(&str, &str); 7] = [
    ("new", "Start a new conversation"),
    ("stop", "Stop the answer in progress"),
    ("retry", "Ask your last message again"),
    ("model", "Show or switch the AI model"),
    ("status", "How the bot is doing"),
    ("usage", "How much of the AI you have used"),
    ("help", "What this bot does"),
];

pub fn unknown_command(name: &str) -> String {
    format!("I don't know the command /{name}. Send /help to see what I understand.")
}

/// `/new`.
pub mod new {
    pub const STARTED: &str =
        "🆕 Started a new conversation: earlier messages are no longer sent to the model.";
    pub const FAILED: &str = "⚠️ I could not start a new conversation; please try again.";
}

/// `/retry`.
pub mod retry {
    pub const NOTHING: &str = "There is no earlier message to retry.";
    pub const FAILED: &str = "⚠️ I could not find your last message; please send it again.";
}

/// `/model`: providers are shown as `name (model)`.
pub mod model {
    pub const ADMINS_ONLY: &str =
        "Only the bot's admins can switch the model. Send /model to see which one answers here.";
    pub const FAILED: &str = "⚠️ I could not switch the model; please try again.";
    pub const HOW_TO_SWITCH: &str =
        "\nSwitch with /model NAME; back to the default with /model default.";
    pub const NO_PROVIDER: &str = "no provider";

    /// Which provider answers: `(name, model)`, and whether the chat chose it.
    pub fn current(name: &str, model: &str, chosen: bool) -> String {
        if chosen {
            format!("{name} ({model}), chosen with /model")
        } else {
            format!("{name} ({model}), the default")
        }
    }

    pub fn available<'a>(providers: impl Iterator<Item = (&'a str, &'a str)>) -> String {
        let list: Vec<String> = providers
            .map(|(name, model)| format!("• {name} ({model})"))
            .collect();
        format!("Available:\n{}", list.join("\n"))
    }

    pub fn uses(current: &str, available: &str) -> String {
        format!("This chat uses {current}.\n{available}")
    }

    pub fn back_to_default(current: &str) -> String {
        format!("This chat is back to the default: {current}.")
    }

    pub fn switched(name: &str, model: &str) -> String {
        format!("This chat now uses {name} ({model}).")
    }

    pub fn not_found(wanted: &str, available: &str) -> String {
        format!("There is no provider or model called {wanted:?} here.\n{available}")
    }
}

/// `/usage`, and usage as the operator's commands describe it.
pub mod usage {
    use hermes_protocol::format_money;

    use crate::store::Totals;

    pub const FAILED: &str = "⚠️ I could not read the usage just now; please try again.";

    /// `240 tokens (200 in, 80 of them cached; 40 out) in 2 calls, $0.00024`.
    pub fn describe(t: &Totals) -> String {
        if t.calls == 0 {
            return "nothing".into();
        }
        let cached = if t.cached_tokens > 0 {
            format!(", {} of them cached", t.cached_tokens)
        } else {
            String::new()
        };
        let calls = if t.calls == 1 { "call" } else { "calls" };
        let cost = match (t.uncosted_calls, t.uncosted_calls == t.calls) {
            (_, true) => "cost unknown".to_string(),
            (0, _) => format_money(t.cost_micros),
            (n, _) => format!("{} and {n} of unknown cost", format_money(t.cost_micros)),
        };
        format!(
            "{} tokens ({} in{cached}; {} out) in {} {calls}, {cost}",
            t.tokens(),
            t.prompt_tokens,
            t.completion_tokens,
            t.calls
        )
    }

    /// One cell of the operator's table: `240 tokens, $0.00024`; `-` for nothing.
    pub fn brief(t: &Totals) -> String {
        if t.calls == 0 {
            return "-".into();
        }
        let cost = match (t.uncosted_calls, t.uncosted_calls == t.calls) {
            (_, true) => "cost unknown".to_string(),
            (0, _) => format_money(t.cost_micros),
            (_, _) => format!("{} + unknown", format_money(t.cost_micros)),
        };
        format!("{} tokens, {cost}", t.tokens())
    }

    /// The reply to `/usage`: `periods` are (name, totals) pairs, `budgets` lines about
    /// the caps that apply.
    pub fn yours(time_zone: &str, periods: &[(&str, Totals)], budgets: &[String]) -> String {
        let mut lines = vec![format!("📊 Your usage (days in {time_zone}):")];
        lines.extend(
            periods
                .iter()
                .map(|(name, t)| format!("{name}: {}", describe(t))),
        );
        lines.extend(budgets.iter().cloned());
        lines.join("\n")
    }

    /// One cap and what was used of it: `Your daily budget: 240 of 1000 tokens used.`
    pub fn budget_line(everyone: bool, period: &str, used: &str, cap: &str) -> String {
        let whose = if everyone { "Everyone's" } else { "Your" };
        format!("{whose} {period} budget: {used} of {cap} used.")
    }

    /// How long until a budget starts again: `40 min`, `3 h 12 min`, `12 days 4 h`.
    pub fn wait(secs: u64) -> String {
        let minutes = secs.div_ceil(60);
        match (minutes / (24 * 60), (minutes / 60) % 24, minutes % 60) {
            (0, 0, m) => format!("{} min", m.max(1)),
            (0, h, 0) => format!("{h} h"),
            (0, h, m) => format!("{h} h {m} min"),
            (1, h, _) => format!("1 day {h} h"),
            (d, h, _) => format!("{d} days {h} h"),
        }
    }
}

/// `/status`.
pub mod status {
    pub const ALL_GOOD: &str = "✅ All good.";
    pub const NONE_ANSWERING: &str = "No provider is answering now (quota exhausted everywhere).";

    pub fn degraded(reasons: &[String]) -> String {
        format!("⚠️ Degraded: {}.", reasons.join("; "))
    }

    pub fn answering(name: &str, model: &str) -> String {
        format!("Answering now: {name} ({model}).")
    }

    pub fn counts(uptime_min: u64, answered: u64, failed: u64) -> String {
        format!("Up {uptime_min} min; {answered} answered, {failed} failed.")
    }

    /// The outbox: replies committed and not yet delivered.
    pub fn outbox(depth: usize, oldest_age_secs: Option<u64>) -> String {
        match oldest_age_secs {
            Some(age) if depth > 0 => {
                format!("Replies waiting to be sent: {depth}, the oldest for {age} s.")
            }
            _ => "No replies waiting to be sent.".into(),
        }
    }
}

/// Telegram refused a file of an answer for good (`name`, Telegram's words `why`).
pub fn file_refused_by_telegram(name: &str, why: &str) -> String {
    format!("⚠️ The file {name} could not be sent: Telegram refused it ({why}).")
}

/// The files of an answer the gateway did not send, each with why: the answer's last piece.
pub fn files_not_sent(refused: &[(String, String)]) -> String {
    let mut text = String::from("⚠️ Not sent:");
    for (name, why) in refused {
        text.push_str(&format!("\n• {name}: {why}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use hermes_protocol::FailureClass;

    #[test]
    fn every_class_has_its_own_words() {
        let failures = [
            Failure::QuotaExhausted {
                provider: "p".into(),
                detail: String::new(),
            },
            Failure::ProviderAuth {
                provider: "p".into(),
                status: 401,
                detail: String::new(),
            },
            Failure::RateLimited {
                provider: "p".into(),
                detail: String::new(),
            },
            Failure::ProviderUnavailable {
                provider: "p".into(),
                detail: String::new(),
            },
            Failure::ContextTooLong {
                provider: "p".into(),
                detail: String::new(),
            },
            Failure::ProviderRejected {
                provider: "p".into(),
                status: 404,
                detail: String::new(),
            },
            Failure::ProviderProtocol {
                provider: "p".into(),
                detail: String::new(),
            },
            Failure::TimedOut { after_ms: 1500 },
            Failure::WorkerCrashed {
                cause: CrashCause::Exited { code: 1 },
            },
            Failure::Cancelled {
                reason: CancelReason::Shutdown,
            },
            Failure::OverBudget {
                everyone: false,
                period: BudgetPeriod::Day,
                cap: "1000 tokens".into(),
                resets_in_secs: 3 * 3600 + 60 * 12,
                time_zone: "Europe/Berlin".into(),
            },
        ];
        let texts: Vec<String> = failures.iter().map(failure_text).collect();
        for (i, a) in texts.iter().enumerate() {
            for b in &texts[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert!(texts[0].contains("quota or balance"));
        assert!(texts[7].contains("over 2 s"));
        assert_eq!(failures[0].class(), FailureClass::QuotaExhausted);
        assert!(
            texts[10].contains("daily budget (1000 tokens)")
                && texts[10].contains("at midnight (Europe/Berlin), in 3 h 12 min"),
            "{}",
            texts[10]
        );
    }

    #[test]
    fn usage_reads_in_tokens_and_dollars_with_what_is_unknown_said() {
        use crate::store::Totals;
        use hermes_protocol::Usage;
        assert_eq!(usage::describe(&Totals::default()), "nothing");
        let mut t = Totals::default();
        t.add(&Usage {
            prompt_tokens: 200,
            completion_tokens: 40,
            cached_tokens: 80,
            cost_micros: Some(240),
        });
        assert_eq!(
            usage::describe(&t),
            "240 tokens (200 in, 80 of them cached; 40 out) in 1 call, $0.00024"
        );
        t.add(&Usage::default());
        assert!(usage::describe(&t).ends_with("in 2 calls, $0.00024 and 1 of unknown cost"));
        assert_eq!(usage::wait(30), "1 min");
        assert_eq!(usage::wait(7200), "2 h");
        assert_eq!(usage::wait(30 * 86_400 + 3600), "30 days 1 h");
    }
}
