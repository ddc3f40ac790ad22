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
use hermes_protocol::{Event, Job, Outcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The most of one answer the gateway keeps: streamed text beyond it is not kept, and a
/// final answer longer than it is cut there with a note saying so (64 KiB: sixteen full
/// Telegram messages). A runner cuts each streamed piece to it too, so the events waiting
/// for a chat (at most the channel's bound) stay within a stated size.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A future a [`JobRunner`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs jobs for the chats.
pub trait JobRunner: Send + Sync {
    /// Runs `job`, streaming its events to `events` (a bounded channel: a runner waits for
    /// room, still minding the deadline and `cancel`), and returns its outcome. Never
    /// fails: every problem on the way is an [`Outcome::Failed`]. Cancelling `cancel`
    /// (`/stop`) ends the job with `CancelReason::ByUser` once nothing of it runs any more.
    fn run(
        &self,
        job: Job,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Outcome>;
}

/// Builds the runner that replaces the worker pool, from the configuration `run` loaded.
pub type MakeRunner = Box<dyn FnOnce(&Config) -> Arc<dyn JobRunner>>;
