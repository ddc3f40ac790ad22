//! What a worker reports while a job runs: attempts, retries, fallbacks, streamed text,
//! tool calls and each answered call's usage, for logs, `hermes-worker ask`, the chat and
//! the usage the gateway keeps.

use serde::{Deserialize, Serialize};

use super::{Failure, Usage};

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
    /// A provider answered a step, and said what the call used; at most one per step.
    /// Sent whatever the job's outcome: a call that was answered was paid for.
    Usage {
        provider: String,
        /// The model the provider says answered.
        model: String,
        usage: Usage,
    },
}
