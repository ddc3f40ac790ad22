//! How a job ends: a [`Reply`], or a [`Failure`] typed from where it happened (the
//! provider's answer, the worker's exit, the deadline, the user's file) to the sentence
//! the user reads, with the classes an operator counts.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ChatMessage;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reply(Reply),
    Failed(Failure),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    pub provider: String,
    pub model: String,
    /// Every message the job added after the user's, in order: assistant messages with
    /// tool calls, the tool results, and last the answer itself. Stored as the
    /// conversation, so a follow-up question can refer to what the tools returned.
    pub transcript: Vec<ChatMessage>,
    /// What each voice note or audio file of the job said, in the order of the job's
    /// attachments: the user's words, stored as their turn and shown above the answer.
    pub heard: Vec<String>,
    /// Files to send to the chat after the answer, each by its name inside the job's
    /// [`Job::output_dir`](super::Job::output_dir) (one path component), in the order the
    /// model attached them. The gateway trusts none of it: it opens each without
    /// following links and checks what it finds.
    pub files: Vec<String>,
}

/// Why a job produced no answer. Provider variants come from the worker; the others from
/// the gateway, which sees exits, deadlines and broken connections.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// HTTP 402, or 429 with a quota or balance code: the account is out of money or quota.
    QuotaExhausted { provider: String, detail: String },
    /// HTTP 401 or 403: the key is wrong, revoked, or lacks access.
    ProviderAuth {
        provider: String,
        status: u16,
        detail: String,
    },
    /// HTTP 429 (without a quota code) after every retry.
    RateLimited { provider: String, detail: String },
    /// 5xx, 408, 409, 425, timeouts and broken connections after every retry.
    ProviderUnavailable { provider: String, detail: String },
    /// HTTP 400 about the context window, still so after trimming history once.
    ContextTooLong { provider: String, detail: String },
    /// Any other 4xx: the provider refuses this request (bad model name, bad parameters).
    ProviderRejected {
        provider: String,
        status: u16,
        detail: String,
    },
    /// A 2xx answer that is not a usable chat completion.
    ProviderProtocol { provider: String, detail: String },
    /// The job's deadline passed.
    TimedOut { after_ms: u64 },
    /// The worker died, broke the protocol, or could not be started.
    WorkerCrashed { cause: CrashCause },
    /// The job was stopped on purpose.
    Cancelled { reason: CancelReason },
    /// A file of the turn could not be given to the model.
    Media { problem: MediaProblem },
    /// A budget (`[budgets]`) is spent: the gateway refused the job before any worker or
    /// provider call.
    OverBudget {
        /// Everyone's budget, not only the user's.
        everyone: bool,
        period: BudgetPeriod,
        /// The cap as people read it (`200000 tokens`, `$5.00`).
        cap: String,
        /// Until the period starts again, in the configured time zone.
        resets_in_secs: u64,
        /// That time zone's name.
        time_zone: String,
    },
}

/// The calendar period a budget counts.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    Day,
    Month,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "daily",
            BudgetPeriod::Month => "monthly",
        }
    }
}

/// Why a voice note, photo or file could not be given to the model: each one a reply
/// that says what the user can do instead.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MediaProblem {
    /// Over `telegram.max_file_mb` (as Telegram stated it, or as it downloaded).
    TooBig { size: u64, max: u64 },
    /// A voice note or audio longer than `transcription.max_seconds`.
    TooLong { seconds: u32, max: u32 },
    /// No `[transcription]` configured.
    VoiceNotEnabled,
    /// No provider of the chain has `vision = true`.
    NoVision,
    /// A file that is neither text-like, a PDF nor an image.
    UnsupportedFile { file_name: String },
    /// A file that claimed to be text but is not UTF-8, or a PDF without extractable text.
    Unreadable { file_name: String, detail: String },
    /// Telegram would not give the file (getFile or the download failed, or took too long).
    DownloadFailed { detail: String },
    /// The turn's files together are larger than all chats' files may be at once
    /// (`telegram.max_files_total_mb`); `size` is what Telegram stated, or the file bound
    /// for a file whose size it did not.
    TooMuchAtOnce { size: u64, max: u64 },
}

impl fmt::Display for MediaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MediaProblem::TooBig { size, max } => {
                write!(f, "file of {size} bytes is over the {max}-byte bound")
            }
            MediaProblem::TooLong { seconds, max } => {
                write!(f, "recording of {seconds} s is over the {max} s bound")
            }
            MediaProblem::VoiceNotEnabled => f.write_str("no [transcription] configured"),
            MediaProblem::NoVision => f.write_str("no provider of the chain has vision = true"),
            MediaProblem::UnsupportedFile { file_name } => {
                write!(f, "unsupported file type: {file_name}")
            }
            MediaProblem::Unreadable { file_name, detail } => {
                write!(f, "cannot read {file_name}: {detail}")
            }
            MediaProblem::DownloadFailed { detail } => write!(f, "download failed: {detail}"),
            MediaProblem::TooMuchAtOnce { size, max } => {
                write!(
                    f,
                    "files of {size} bytes together are over the {max}-byte room"
                )
            }
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum CrashCause {
    Exited {
        code: i32,
    },
    Signalled {
        signal: i32,
        name: String,
    },
    /// The connection broke while the process was still running.
    Disconnected,
    ProtocolViolation {
        detail: String,
    },
    /// No worker could be started or connected for this job.
    NotStarted {
        detail: String,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The gateway is stopping.
    Shutdown,
    /// The user sent `/stop`.
    ByUser,
}

/// The failure kinds a user is told about and an operator counts, without their details.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureClass {
    QuotaExhausted,
    ProviderAuth,
    RateLimited,
    ProviderUnavailable,
    ContextTooLong,
    ProviderRejected,
    ProviderProtocol,
    TimedOut,
    WorkerCrashed,
    Cancelled,
    Media,
    OverBudget,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::QuotaExhausted => "quota_exhausted",
            FailureClass::ProviderAuth => "provider_auth",
            FailureClass::RateLimited => "rate_limited",
            FailureClass::ProviderUnavailable => "provider_unavailable",
            FailureClass::ContextTooLong => "context_too_long",
            FailureClass::ProviderRejected => "provider_rejected",
            FailureClass::ProviderProtocol => "provider_protocol",
            FailureClass::TimedOut => "timed_out",
            FailureClass::WorkerCrashed => "worker_crashed",
            FailureClass::Cancelled => "cancelled",
            FailureClass::Media => "media",
            FailureClass::OverBudget => "over_budget",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Failure {
    pub fn class(&self) -> FailureClass {
        match self {
            Failure::QuotaExhausted { .. } => FailureClass::QuotaExhausted,
            Failure::ProviderAuth { .. } => FailureClass::ProviderAuth,
            Failure::RateLimited { .. } => FailureClass::RateLimited,
            Failure::ProviderUnavailable { .. } => FailureClass::ProviderUnavailable,
            Failure::ContextTooLong { .. } => FailureClass::ContextTooLong,
            Failure::ProviderRejected { .. } => FailureClass::ProviderRejected,
            Failure::ProviderProtocol { .. } => FailureClass::ProviderProtocol,
            Failure::TimedOut { .. } => FailureClass::TimedOut,
            Failure::WorkerCrashed { .. } => FailureClass::WorkerCrashed,
            Failure::Cancelled { .. } => FailureClass::Cancelled,
            Failure::Media { .. } => FailureClass::Media,
            Failure::OverBudget { .. } => FailureClass::OverBudget,
        }
    }

    /// The provider the failure came from, for provider failures.
    pub fn provider(&self) -> Option<&str> {
        match self {
            Failure::QuotaExhausted { provider, .. }
            | Failure::ProviderAuth { provider, .. }
            | Failure::RateLimited { provider, .. }
            | Failure::ProviderUnavailable { provider, .. }
            | Failure::ContextTooLong { provider, .. }
            | Failure::ProviderRejected { provider, .. }
            | Failure::ProviderProtocol { provider, .. } => Some(provider),
            _ => None,
        }
    }
}

/// One line for logs and `hermes-worker ask`: the class, where, and the provider's words.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Every provider's detail already starts with the status it answered.
            Failure::QuotaExhausted { provider, detail }
            | Failure::RateLimited { provider, detail }
            | Failure::ProviderUnavailable { provider, detail }
            | Failure::ContextTooLong { provider, detail }
            | Failure::ProviderProtocol { provider, detail }
            | Failure::ProviderAuth {
                provider, detail, ..
            }
            | Failure::ProviderRejected {
                provider, detail, ..
            } => write!(f, "{} (provider {provider}): {detail}", self.class()),
            Failure::TimedOut { after_ms } => write!(f, "timed_out after {after_ms} ms"),
            Failure::WorkerCrashed { cause } => write!(f, "worker_crashed: {cause}"),
            Failure::Cancelled { reason } => write!(f, "cancelled: {reason:?}"),
            Failure::Media { problem } => write!(f, "media: {problem}"),
            Failure::OverBudget {
                everyone,
                period,
                cap,
                ..
            } => write!(
                f,
                "over_budget: the {} {} budget of {cap} is spent",
                if *everyone { "global" } else { "per-user" },
                period.as_str()
            ),
        }
    }
}

impl fmt::Display for CrashCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrashCause::Exited { code } => write!(f, "exited with code {code}"),
            CrashCause::Signalled { signal, name } => {
                write!(f, "killed by signal {signal} ({name})")
            }
            CrashCause::Disconnected => f.write_str("closed its connection"),
            CrashCause::ProtocolViolation { detail } => write!(f, "protocol violation: {detail}"),
            CrashCause::NotStarted { detail } => write!(f, "could not be started: {detail}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_lines_name_class_and_provider() {
        let f = Failure::QuotaExhausted {
            provider: "main".into(),
            detail: "HTTP 402: Insufficient balance".into(),
        };
        assert_eq!(
            f.to_string(),
            "quota_exhausted (provider main): HTTP 402: Insufficient balance"
        );
        assert_eq!(f.provider(), Some("main"));
        // The status is said once, by the detail, as for every provider failure.
        let auth = Failure::ProviderAuth {
            provider: "main".into(),
            status: 401,
            detail: "HTTP 401: Incorrect API key provided".into(),
        };
        assert_eq!(
            auth.to_string(),
            "provider_auth (provider main): HTTP 401: Incorrect API key provided"
        );
        let c = Failure::WorkerCrashed {
            cause: CrashCause::Signalled {
                signal: 6,
                name: "SIGABRT".into(),
            },
        };
        assert_eq!(
            c.to_string(),
            "worker_crashed: killed by signal 6 (SIGABRT)"
        );
        assert_eq!(c.class(), FailureClass::WorkerCrashed);
    }
}
