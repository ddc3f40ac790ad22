//! The messages gateway and worker exchange, in the order they happen:
//!
//! 1. The worker connects and sends a `Hello` (protocol version first, then the one-time
//!    token the gateway gave it); the gateway answers a `Welcome` (both in
//!    [`handshake`](crate::handshake)).
//! 2. The gateway sends [`ToWorker::Job`]; the worker answers with any number of
//!    [`FromWorker::Event`]s and exactly one [`FromWorker::Outcome`], all carrying the job's
//!    [`JobId`] so anything left over from another job is recognised.
//! 3. During a job, before a call to a tool its entry says to confirm, the worker sends
//!    [`FromWorker::Approval`] and waits; the gateway asks the chat and answers with
//!    [`ToWorker::Decision`] (the only thing it ever says during a job).
//! 4. [`ToWorker::Shutdown`] (or the socket closing) ends the worker.
//!
//! A failed job is not an error of the protocol: it is an [`Outcome::Failed`] carrying a
//! [`Failure`], a typed value from where it happened to the sentence the user reads.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sandbox::Confinement;

/// Bumped on any change to these types. Leads the first frame so a mismatch is reported as
/// one, not as an undecodable frame.
pub const PROTOCOL_VERSION: u32 = 4;

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
    /// Files that came with the new user message (voice notes, photos, documents), each
    /// named in that message's text by its [`Attachment::placeholder`].
    pub attachments: Vec<Attachment>,
    /// How voice notes and audio are transcribed; `None`: they are not (the gateway
    /// answers that itself before a worker is involved).
    pub transcription: Option<Box<TranscriptionPlan>>,
}

/// A file of the user's turn, as the worker reads it. The bytes never travel in a frame:
/// the gateway downloaded the file into a private per-job directory under its runtime
/// directory (0700, hidden from tool servers by their sandbox) and deletes that directory
/// when the job ends, however it ends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub kind: MediaKind,
    /// Where the file is, for this job only.
    pub path: String,
    /// The name the user's client gave it, or one the gateway made up (`photo.jpg`).
    pub file_name: String,
    pub mime_type: Option<String>,
    /// Bytes, as downloaded.
    pub size: u64,
    /// Voice notes and audio: the length Telegram stated.
    pub duration_secs: Option<u32>,
    /// The text standing for the file in the user's message; the worker replaces it with
    /// what the model reads (a transcript, a document's text, or nothing beside an image
    /// part).
    pub placeholder: String,
}

/// What kind of file an [`Attachment`] is, which decides how the model gets it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// Transcribed; the transcript is the user's words.
    Voice,
    /// An audio file (music, a recording): transcribed like a voice note.
    Audio,
    /// A photo, or an image sent as a file: an image part for a provider with vision.
    Image,
    /// A text-like file or a PDF: its text, with its name.
    Document,
}

/// The `[transcription]` section as a job carries it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TranscriptionPlan {
    /// Its base URL and key serve `POST {base_url}/audio/transcriptions`.
    pub provider: ProviderPlan,
    pub model: String,
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
    /// What the server runs under; `None` only when its entry opts out (`sandbox =
    /// false`), and then it runs as the worker's plain child.
    pub sandbox: Option<Confinement>,
    /// Which of its tools need a user's approval before each call.
    pub confirm: Confirm,
    /// How long an approval is waited for; no answer by then is a denial.
    pub confirm_timeout_ms: u64,
}

impl ToolServer {
    /// A server with no secrets passed, sandboxed with an empty confinement, nothing to
    /// confirm: what a caller then adjusts.
    pub fn new(name: impl Into<String>, command: impl Into<String>, args: Vec<String>) -> Self {
        ToolServer {
            name: name.into(),
            command: command.into(),
            args,
            env: Vec::new(),
            call_timeout_ms: 30_000,
            sandbox: Some(Confinement::default()),
            confirm: Confirm::Never,
            confirm_timeout_ms: 120_000,
        }
    }
}

/// Which tools of a server ask the user first (`[[tools.mcp]] confirm`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub enum Confirm {
    #[default]
    Never,
    /// `confirm = true`: every tool of the server.
    All,
    /// `confirm = ["name", ...]`: these tools, by the server's own names.
    Tools(Vec<String>),
}

impl Confirm {
    /// Whether a call to the server's tool `tool` needs approval.
    pub fn covers(&self, tool: &str) -> bool {
        match self {
            Confirm::Never => false,
            Confirm::All => true,
            Confirm::Tools(names) => names.iter().any(|n| n == tool),
        }
    }
}

/// A tool call waiting for a user's approval.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    /// Unique within the job; the decision names it.
    pub id: u64,
    /// The tool as the user knows it: `server.tool`.
    pub tool: String,
    /// The arguments as the model wrote them (JSON text).
    pub arguments: String,
    /// No answer within this counts as a denial.
    pub timeout_ms: u64,
}

/// What became of an [`ApprovalRequest`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// An allowed user of the chat pressed Allow; `by` names them.
    Allowed { by: String },
    /// An allowed user of the chat pressed Deny.
    Denied { by: String },
    /// Nobody answered within the request's timeout.
    TimedOut,
    /// The chat could not be asked (the prompt could not be sent).
    Unavailable { reason: String },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
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
    /// The model reads images (`image_url` content parts); a turn with an image goes only
    /// to providers that do.
    pub vision: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    Job(Job),
    /// The answer to the job's [`FromWorker::Approval`] `approval`.
    Decision {
        job_id: JobId,
        approval: u64,
        decision: Decision,
    },
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
    /// A tool call that needs a user's approval; the tool runs only after a
    /// [`ToWorker::Decision`] that allows it.
    Approval {
        job_id: JobId,
        request: ApprovalRequest,
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
    /// What each voice note or audio file of the job said, in the order of the job's
    /// attachments: the user's words, stored as their turn and shown above the answer.
    pub heard: Vec<String>,
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
            vision: false,
        };
        assert!(!format!("{plan:?}").contains("sk-very-secret"));
    }

    /// Both new messages of version 3 travel whole, each its own way, over one socket
    /// pair: the worker asks, the gateway decides.
    #[tokio::test]
    async fn an_approval_goes_to_the_gateway_and_its_decision_back_to_the_worker() {
        use crate::Connection;
        let (a, b) = tokio::io::duplex(4096);
        let (mut worker, mut gateway) = (Connection::new(a), Connection::new(b));
        let asked = FromWorker::Approval {
            job_id: JobId(7),
            request: ApprovalRequest {
                id: 1,
                tool: "shell.run".into(),
                arguments: r#"{"command": "rm -rf /"}"#.into(),
                timeout_ms: 120_000,
            },
        };
        worker.write_frame(&asked).await.unwrap();
        assert_eq!(gateway.read_frame::<FromWorker>().await.unwrap(), asked);
        for decision in [
            Decision::Allowed { by: "Ann".into() },
            Decision::Denied { by: "Ann".into() },
            Decision::TimedOut,
            Decision::Unavailable {
                reason: "Telegram refused the prompt".into(),
            },
        ] {
            let answer = ToWorker::Decision {
                job_id: JobId(7),
                approval: 1,
                decision,
            };
            gateway.write_frame(&answer).await.unwrap();
            assert_eq!(worker.read_frame::<ToWorker>().await.unwrap(), answer);
        }
    }

    /// The layout of what version 3 added, byte for byte: a change to these types without
    /// a new version fails here first (the fix is to bump `PROTOCOL_VERSION` and these
    /// bytes together).
    #[test]
    fn version_3_pins_the_layout_of_approvals_and_tool_servers() {
        let decision = crate::codec::to_bytes(&ToWorker::Decision {
            job_id: JobId(1),
            approval: 2,
            decision: Decision::Denied { by: "A".into() },
        })
        .unwrap();
        let server = crate::codec::to_bytes(&ToolServer {
            confirm: Confirm::Tools(vec!["x".into()]),
            ..ToolServer::new("s", "c", Vec::new())
        })
        .unwrap();
        assert_eq!(
            (PROTOCOL_VERSION, decision, server),
            (
                4,
                vec![1, 1, 2, 1, 1, b'A'],
                vec![
                    1, b's', 1, b'c', 0, 0, 0xb0, 0xea, 0x01, 1, 0, 0, 0, 0, 2, 1, 1, b'x', 0xc0,
                    0xa9, 0x07
                ]
            )
        );
    }

    #[test]
    fn confirm_covers_the_named_tools_or_all() {
        assert!(!Confirm::Never.covers("run"));
        assert!(Confirm::All.covers("run"));
        let some = Confirm::Tools(vec!["run".into()]);
        assert!(some.covers("run"));
        assert!(!some.covers("list"));
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
