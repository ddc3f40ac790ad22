//! A turn's files: fetched for its job within the limits and the time bound, and the
//! messages whose file is refused or cannot be fetched taken out of the turn, each
//! answered with why, so one bad file does not swallow the questions sent with it.

use hermes_protocol::{CancelReason, Failure, MediaProblem, Outcome};
use tokio_util::sync::CancellationToken;

use super::prepare::{Asked, compose};
use super::{ChatRouter, JobContext, Request};
use crate::media::Fetched;
use crate::replies;
use crate::settings::ChatSettings;

impl ChatRouter {
    /// Takes the messages whose file was `refused` (by index in the turn's media) out of
    /// the turn, each answered with why, and narrows `request` to the rest. When no
    /// message is left, the last refused one stays as the turn, and its refusal is the
    /// failure to answer it with (so the turn's reply, and any `/stop` that came for it,
    /// take the usual way). A replied-to message's file that is refused only leaves the
    /// turn itself: the reply is still asked, its context saying the file is missing.
    pub(super) fn leave_out(
        &self,
        request: &mut Request,
        asked: &mut Vec<Asked>,
        refused: Vec<(usize, MediaProblem)>,
    ) -> Option<Failure> {
        let files: Vec<(i64, bool)> = asked
            .iter()
            .flat_map(|a| a.files().map(|(_, quoted)| (a.row, quoted)))
            .collect();
        let mut refused: Vec<(i64, Failure)> = refused
            .into_iter()
            .filter_map(|(i, problem)| {
                let (row, quoted) = files.get(i).copied()?;
                if quoted {
                    tracing::info!(
                        chat_id = request.chat,
                        "the file of a replied-to message is left out: {problem}"
                    );
                    if let Some(a) = asked.iter_mut().find(|a| a.row == row)
                        && let Some((_, placeholder)) = a.replied.as_mut()
                    {
                        *placeholder = None;
                    }
                    return None;
                }
                tracing::info!(
                    chat_id = request.chat,
                    "a file of the turn is refused: {problem}"
                );
                Some((row, Failure::Media { problem }))
            })
            .collect();
        let everything = asked
            .iter()
            .all(|a| refused.iter().any(|(row, _)| *row == a.row));
        let last = everything.then(|| refused.pop()).flatten();
        for (row, failure) in &refused {
            self.inner
                .ctx
                .health
                .job_done(&Outcome::Failed(failure.clone()));
            self.inner
                .reply(request.place(), &[*row], &replies::failure_text(failure));
        }
        asked.retain(|a| {
            refused.iter().all(|(row, _)| *row != a.row)
                && last.as_ref().is_none_or(|(row, _)| *row == a.row)
        });
        (request.rows, request.text, request.media) = compose(asked);
        last.map(|(_, failure)| failure)
    }
}

/// Fetches the files of `request` for its job, within the limits and the time bound, or
/// until `/stop`.
pub(super) async fn fetch(
    ctx: &JobContext,
    settings: &ChatSettings,
    request: &Request,
    cancel: &CancellationToken,
) -> Result<Fetched, Failure> {
    tokio::select! {
        _ = cancel.cancelled() => Err(Failure::Cancelled { reason: CancelReason::ByUser }),
        fetched = ctx.fetcher.fetch(request.id, &request.media, &settings.media) => {
            fetched.map_err(|problem| {
                tracing::warn!(chat_id = request.chat, "cannot fetch the turn's files: {problem}");
                Failure::Media { problem }
            })
        }
    }
}
