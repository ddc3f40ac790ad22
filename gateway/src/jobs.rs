//! The seam between the chats and whatever runs their jobs.
//!
//! In the product that is always the supervisor (`crate::supervisor::Supervisor`) and its
//! worker processes. The seam exists for the benchmark: its in-process baseline (a binary
//! of `hermes-tests`) runs the same jobs with the agent library inside the gateway's own
//! process, the design this project replaces, so what isolation costs can be measured.
//! That code lives with the benchmark, so `hermes-gateway` never links agent code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hermes_config::Config;
use hermes_protocol::{ApprovalRequest, Decision, Event, Job, Outcome};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The most of one answer the gateway keeps: streamed text beyond it is not kept, and a
/// final answer longer than it is cut there with a note saying so (64 KiB: sixteen full
/// Telegram messages). A runner cuts each streamed piece to it too, so the events waiting
/// for a chat (at most the channel's bound) stay within a stated size.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A future a [`JobRunner`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a running job and its chat talk: the job's progress one way, its tool calls that
/// need a person's approval one way and the decisions back, `/stop` the other way.
pub struct JobLink {
    /// Bounded: a runner waits for room, still minding the deadline and `cancel`.
    pub events: mpsc::Sender<Event>,
    pub approvals: mpsc::UnboundedSender<ApprovalAsk>,
    /// Cancelled by `/stop`.
    pub cancel: CancellationToken,
    /// Where the answer's files go, and where the chat learns what came of them. A runner
    /// that sends none back drops it (the chat then sends none).
    pub files: Option<crate::files_back::FileDrop>,
}

/// A tool call waiting for a person's decision, and where the decision goes. Dropping
/// `decide` leaves the call waiting until the job's deadline; the chat always decides.
pub struct ApprovalAsk {
    pub request: ApprovalRequest,
    pub decide: oneshot::Sender<Decision>,
}

/// Runs jobs for the chats.
pub trait JobRunner: Send + Sync {
    /// Runs `job`, streaming its events to `link.events` and its approvals to
    /// `link.approvals`, and returns its outcome. Never fails: every problem on the way is
    /// an [`Outcome::Failed`]. Cancelling `link.cancel` (`/stop`) ends the job with
    /// `CancelReason::ByUser` once nothing of it runs any more.
    fn run(&self, job: Job, link: JobLink) -> BoxFuture<'_, Outcome>;
}

/// Builds the runner that replaces the worker pool, from the configuration `run` loaded.
pub type MakeRunner = Box<dyn FnOnce(&Config) -> Arc<dyn JobRunner>>;
