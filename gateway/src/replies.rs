//! What the user reads when their message could not be answered.
//!
//! One short paragraph per failure class, in plain language: what happened, whether it is
//! about their message or about the service, and what they can do. The technical detail
//! goes to the log, not to the chat.

use hermes_protocol::{CrashCause, Failure};

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
            reason: hermes_protocol::CancelReason::ByUser,
        } => crate::commands::stop::STOPPED.into(),
        Failure::Cancelled { .. } => "🔄 The bot is restarting. Your message is saved and will be \
             answered as soon as it is back; no need to send it again."
            .into(),
    }
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
                reason: hermes_protocol::CancelReason::Shutdown,
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
    }
}
