//! `[telegram]`: the bot (its token's source and the Bot API server), who may talk to it,
//! and how the gateway polls, queues, streams and downloads. Every key has a default; the
//! token's source defaults to `$TELEGRAM_BOT_TOKEN`.

use serde::Deserialize;

use crate::report::Problem;
use crate::secrets::{SecretFrom, SecretSource};
use crate::section::{Doc, Section, Table};

#[derive(Debug, Clone)]
pub struct TelegramConfig {
    pub token: SecretSource,
    pub api_url: String,
    /// Telegram user ids allowed to talk to the agent. Empty: nobody.
    pub allowed_users: Vec<i64>,
    /// Long-poll duration of one `getUpdates`.
    pub poll_timeout_secs: u32,
    /// Cap of the backoff between failed Telegram calls.
    pub retry_max_secs: u64,
    /// Messages a chat may have waiting for its next turn; one more is refused.
    pub max_queued_per_chat: usize,
    /// A reply still undelivered this long after it was committed is dropped.
    pub outbox_max_age_secs: u64,
    /// Users who may switch the model with `/model NAME` (they must also be allowed).
    pub admin_users: Vec<i64>,
    /// Show the answer while it is written (one message, edited as text arrives).
    pub streaming: bool,
    /// Least time between two edits of a streamed answer.
    pub edit_interval_ms: u64,
    /// Which group messages the bot answers.
    pub group_mode: GroupMode,
    /// Files (voice notes, photos, documents) larger than this are refused; 20 is the Bot
    /// API's own limit for bots.
    pub max_file_mb: u64,
    /// Bound on fetching one file from Telegram (`getFile` and the download).
    pub download_timeout_secs: u64,
    /// Disk all chats' files may take at once (the files of running turns, in the state
    /// directory); a turn whose files do not fit waits for others to end. At least
    /// `max_file_mb`, so any one file fits.
    pub max_files_total_mb: u64,
    /// How long an album's members (one `media_group_id`) and the parts of a text Telegram
    /// split are waited for after the last one arrived, so they are asked as one turn. A
    /// single ordinary message never waits.
    pub settle_ms: u64,
    /// Files an answer sends back (a tool's chart, CSV or image) larger than this are not
    /// sent, and the chat is told; 50 is the Bot API's own upload limit for bots.
    pub max_send_file_mb: u64,
    /// Files one answer may send back; the rest are not sent, and the chat is told.
    pub max_send_files: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupMode {
    /// Only messages that mention the bot or reply to one of its messages.
    Mention,
    /// Every text message in the group.
    All,
}

impl Doc<'_> {
    pub(crate) fn telegram(&mut self, table: Option<&Table>) -> TelegramConfig {
        let mut s = Section::new("telegram", table.cloned());
        let token = self
            .secret(&mut s, "token_env", "token_file")
            .unwrap_or(SecretSource {
                from: SecretFrom::Env("TELEGRAM_BOT_TOKEN".into()),
                key: "telegram.token_env".into(),
                line: None,
            });
        let api_url = s.take("api_url", self);
        let api_url = match api_url {
            Some(u) => self.url(&mut s, "api_url", Some(u)),
            None => "https://api.telegram.org".to_string(),
        };
        let config = TelegramConfig {
            token,
            api_url: api_url.trim_end_matches('/').to_string(),
            allowed_users: s.take_or("allowed_users", Vec::new(), self),
            poll_timeout_secs: s.take_in("poll_timeout_secs", 30, 0..=50, self),
            retry_max_secs: s.take_in("retry_max_secs", 30, 1..=3600, self),
            max_queued_per_chat: s.take_in("max_queued_per_chat", 20, 1..=1000, self),
            outbox_max_age_secs: s.take_in("outbox_max_age_secs", 86_400, 60..=30 * 86_400, self),
            admin_users: s.take_or("admin_users", Vec::new(), self),
            streaming: s.take_or("streaming", true, self),
            edit_interval_ms: s.take_in("edit_interval_ms", 1500, 100..=60_000, self),
            group_mode: s.take_or("group_mode", GroupMode::Mention, self),
            max_file_mb: s.take_in("max_file_mb", 20, 1..=20, self),
            download_timeout_secs: s.take_in("download_timeout_secs", 60, 1..=3600, self),
            max_files_total_mb: s.take_in("max_files_total_mb", 1024, 1..=1_048_576, self),
            settle_ms: s.take_in("settle_ms", 1000, 0..=10_000, self),
            max_send_file_mb: s.take_in("max_send_file_mb", 50, 1..=50, self),
            max_send_files: s.take_in("max_send_files", 10, 0..=50, self),
        };
        if config.max_files_total_mb < config.max_file_mb {
            self.problems.push(Problem {
                line: s.raw_line("max_files_total_mb", self),
                key: s.key_path("max_files_total_mb"),
                message: format!(
                    "{} is less than max_file_mb ({}): one file would never fit",
                    config.max_files_total_mb, config.max_file_mb
                ),
            });
        }
        s.finish(self);
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{MINIMAL, parse, problem_lines};

    #[test]
    fn token_defaults_to_the_conventional_variable() {
        let c = parse("[[providers]]\nname='a'\nbase_url='http://x'\nmodel='m'\n").unwrap();
        assert_eq!(
            c.telegram.token.from,
            SecretFrom::Env("TELEGRAM_BOT_TOKEN".into())
        );
    }

    #[test]
    fn the_room_for_files_holds_at_least_one_file() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.telegram.max_files_total_mb, 1024);
        let text = MINIMAL.replace(
            "token_env = \"TG\"",
            "token_env = \"TG\"\nmax_file_mb = 20\nmax_files_total_mb = 10",
        );
        let lines = problem_lines(&text);
        assert!(
            lines.iter().any(|l| l
                .contains("line 5: telegram.max_files_total_mb: 10 is less than max_file_mb (20)")),
            "{lines:#?}"
        );
    }

    #[test]
    fn chat_keys_have_defaults_and_are_checked() {
        let c = parse(MINIMAL).unwrap();
        assert!(c.telegram.streaming);
        assert_eq!(c.telegram.edit_interval_ms, 1500);
        assert_eq!(c.telegram.group_mode, GroupMode::Mention);
        assert_eq!(c.agent.max_steps, 8);
        assert_eq!(c.telegram.settle_ms, 1000);
        let text = MINIMAL.replace(
            "token_env = \"TG\"",
            "token_env = \"TG\"\ngroup_mode = \"everyone\"\nedit_interval_ms = 5",
        );
        let lines = problem_lines(&text);
        assert!(
            lines.iter().any(|l| l.contains("telegram.group_mode")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("telegram.edit_interval_ms: 5 is out of range")),
            "{lines:#?}"
        );
    }
}
