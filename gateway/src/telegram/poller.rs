//! The `getUpdates` long-poll loop: the one thing that must never stop.
//!
//! Every error Telegram or the network can produce (refused connections, 5xx pages, 409
//! from a second poller, 429 flood control, bodies that are not JSON, a request that never
//! completes) is logged and retried after a capped, jittered backoff, at start-up as later.
//! The offset only moves past updates that were handed to the router, and handing over
//! never blocks on a job, so a slow provider cannot stall polling.

use std::sync::Arc;
use std::time::Duration;

use teloxide_core::RequestError;
use teloxide_core::prelude::*;
use teloxide_core::types::{AllowedUpdate, Update};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::health::Health;

pub struct PollSettings {
    pub timeout_secs: u32,
    pub retry_max: Duration,
}

/// Polls until `stop`, passing every update to `deliver` in order.
pub async fn poll(
    bot: Bot,
    settings: PollSettings,
    health: Arc<Health>,
    stop: CancellationToken,
    mut deliver: impl FnMut(Update),
) {
    let mut offset: i32 = 0;
    let mut backoff = Backoff::new(Duration::from_millis(500), settings.retry_max);
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let request = bot
            .get_updates()
            .offset(offset)
            .timeout(settings.timeout_secs)
            .allowed_updates([AllowedUpdate::Message]);
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = request.send() => result,
        };
        match result {
            Ok(updates) => {
                health.poll_ok();
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        "Telegram reachable again after {:.1} s of failures",
                        since.elapsed().as_secs_f64()
                    );
                }
                backoff.reset();
                for update in updates {
                    offset = offset.max(update_offset(&update));
                    deliver(update);
                }
            }
            Err(error) => {
                failing_since.get_or_insert_with(std::time::Instant::now);
                let delay = match &error {
                    RequestError::RetryAfter(after) => after
                        .duration()
                        .clamp(Duration::from_millis(100), settings.retry_max),
                    _ => backoff.next_delay(),
                };
                let described = describe(&error);
                tracing::warn!(
                    "getUpdates failed: {described}; retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                health.poll_failed(described);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// The offset that acknowledges `update`.
fn update_offset(update: &Update) -> i32 {
    i32::try_from(update.id.0)
        .unwrap_or(i32::MAX)
        .saturating_add(1)
}

fn describe(error: &RequestError) -> String {
    match error {
        RequestError::Api(teloxide_core::ApiError::TerminatedByOtherGetUpdates) => {
            "409 Conflict: another process is polling with this bot token".into()
        }
        RequestError::Network(e) => {
            // reqwest's own message ("error sending request") hides the cause; the last
            // source in the chain names it (connection refused, timed out, …).
            let mut root: &dyn std::error::Error = e.as_ref();
            while let Some(source) = root.source() {
                root = source;
            }
            if e.is_timeout() {
                "no answer before the HTTP timeout".into()
            } else {
                format!("network error: {root}")
            }
        }
        RequestError::InvalidJson { raw, .. } => {
            let snippet: String = raw.chars().take(120).collect();
            format!("response is not Bot API JSON: {snippet:?}")
        }
        other => other.to_string(),
    }
}
