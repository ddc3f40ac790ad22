//! What the gateway sends to start a job: the [`Job`] itself, and what it carries (the
//! providers to try, the tool servers the model may use, the files of the user's turn
//! and how voice is transcribed).

use serde::{Deserialize, Serialize};

use super::{ChatMessage, JobId, Prices, Secret};
use crate::sandbox::Confinement;

/// Everything a worker needs to answer one message; the worker keeps nothing between jobs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub chat_id: i64,
    /// The system prompt (if any), the history, and last the new user message.
    pub messages: Vec<ChatMessage>,
    /// Tried in order: the first is the primary, the rest are fallbacks.
    pub providers: Vec<ProviderPlan>,
    /// The worker stops retrying and answers
    /// [`Failure::TimedOut`](super::Failure::TimedOut) by then; the gateway kills the
    /// worker's process group shortly after.
    pub timeout_ms: u64,
    /// Ask providers to stream their answer; the worker then sends
    /// [`Event::Delta`](super::Event::Delta)s.
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
    /// Where files to send back to the chat go (a chart, a CSV, an image): a directory the
    /// gateway made for this job alone, writable by the job's tools. The worker writes
    /// what its tools return as files there, and names each file the model attaches in
    /// [`Reply::files`](super::Reply::files); the gateway checks and takes them from
    /// there. `None`: nothing is sent back.
    pub output_dir: Option<String>,
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
    /// What its calls cost when it does not say itself (`usage.cost`); `None`: the cost
    /// of its calls is unknown.
    pub prices: Option<Prices>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirm_covers_the_named_tools_or_all() {
        assert!(!Confirm::Never.covers("run"));
        assert!(Confirm::All.covers("run"));
        let some = Confirm::Tools(vec!["run".into()]);
        assert!(some.covers("run"));
        assert!(!some.covers("list"));
    }
}
