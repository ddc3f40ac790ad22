//! The messages gateway and worker exchange, in the order they happen:
//!
//! 1. The worker connects and sends a `Hello` (protocol version first, then the one-time
//!    token the gateway gave it); the gateway answers a `Welcome` (both in
//!    [`handshake`](crate::handshake)).
//! 2. The gateway sends [`ToWorker::Job`]; the worker answers with any number of
//!    [`FromWorker::Event`]s and exactly one [`FromWorker::Outcome`], all carrying the job's
//!    [`JobId`] so anything left over from another job is recognised.
//! 3. [`ToWorker::Shutdown`] (or the socket closing) ends the worker.
//!
//! A failed job is not an error of the protocol: it is an [`Outcome::Failed`] carrying a
//! [`Failure`], a typed value from where it happened to the sentence the user reads.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Bumped on any change to these types. Leads the first frame so a mismatch is reported as
/// one, not as an undecodable frame.
pub const PROTOCOL_VERSION: u32 = 2;

/// A string that must not end up in logs: API keys, worker tokens.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

/// Everything a worker needs to answer one message; the worker keeps nothing between jobs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub chat_id: i64,
    /// The system prompt (if any), the history, and last the new user message.
    pub messages: Vec<ChatMessage>,
    /// Tried in order: the first is the primary, the rest are fallbacks.
    pub providers: Vec<ProviderPlan>,
    /// The worker stops retrying and answers [`Failure::TimedOut`] by then; the gateway
    /// kills the worker's process group shortly after.
    pub timeout_ms: u64,
    /// Ask providers to stream their answer; the worker then sends [`Event::Delta`]s.
    pub stream: bool,
    /// MCP servers whose tools the model may call; empty: no tools.
    pub tools: Vec<ToolServer>,
    /// Provider round trips the agent loop may make before it stops with a reply saying
    /// so (each answer with tool calls is one step).
    pub max_steps: u32,
}

/// One MCP tool server (stdio), started by the worker inside its own process group.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ToolServer {
    /// Prefixes the names of its tools, so two servers cannot clash.
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    /// Variables passed through from the gateway's environment, values resolved there:
    /// the worker's own environment holds no secret.
    pub env: Vec<(String, Secret)>,
    /// Bound on one tool call; a call that takes longer is an error result for the model.
    pub call_timeout_ms: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// On an assistant message: the tools the model asked to call.
    pub tool_calls: Vec<ToolCall>,
    /// On a tool message: the call it answers.
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// The result of one tool call, as the model reads it.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(call_id.into()),
        }
    }
}

/// A function call the model asked for, as OpenAI-compatible APIs spell it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    /// The function name offered to the model (`{server}__{tool}`).
    pub name: String,
    /// JSON text as the model wrote it; it may be invalid.
    pub arguments: String,
}

impl ToolCall {
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The role's name in OpenAI-compatible APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "tool" => Some(Role::Tool),
            _ => None,
        }
    }
}

/// One provider of the chain, with its key resolved by the gateway: workers get secrets in
/// the job, never in their environment, so nothing they spawn inherits them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProviderPlan {
    pub name: String,
    /// Base of an OpenAI-compatible API; requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<Secret>,
    /// Bound on one HTTP attempt (the job's deadline bounds all of them).
    pub request_timeout_ms: u64,
    /// Retries after the first attempt, for retryable failures only.
    pub max_retries: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    Job(Job),
    Shutdown,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum FromWorker {
    Event {
        job_id: JobId,
        event: Event,
    },
    Outcome {
        job_id: JobId,
        outcome: Outcome,
        /// Something of this job may still run in the worker's process group (a tool call
        /// that outlived the deadline): the gateway ends the group before it replies, and
        /// the worker gets no other job.
        retire: bool,
    },
}

/// Progress of a job, for logs, `hermes-worker ask` and the chat (streamed text, tool
/// status).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An HTTP attempt against a provider starts (1-based within one step). Text streamed
    /// before it belongs to an attempt that failed or to an earlier step: a reader showing
    /// the answer as it grows starts over here.
    Attempt { provider: String, attempt: u32 },
    /// A retryable failure; the next attempt starts after `after_ms`.
    Retrying {
        provider: String,
        after_ms: u64,
        reason: String,
    },
    /// A provider failed for good; the next one in the chain, if any, is tried. Sent for
    /// every failed provider (the last included), so the gateway learns of each one's
    /// quota state even when a fallback answers.
    FellBack { from: String, failure: Failure },
    /// Part of the answer's text, appended to what came since the last `Attempt`.
    Delta(String),
    /// The agent calls a tool (`server.tool`).
    ToolStarted { name: String },
    /// The call ended: `ok` false for an error result (which still goes to the model).
    ToolFinished { name: String, ok: bool, ms: u64 },
}

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
    fn secrets_do_not_print() {
        let plan = ProviderPlan {
            name: "main".into(),
            base_url: "http://x".into(),
            model: "m".into(),
            api_key: Some(Secret::new("sk-very-secret")),
            request_timeout_ms: 1,
            max_retries: 0,
        };
        assert!(!format!("{plan:?}").contains("sk-very-secret"));
    }

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
