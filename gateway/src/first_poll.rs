//! Start-up work that waits until the first `getUpdates` is on its way: the sandbox probe,
//! the pool's first workers, per-request's spares and the command menu.
//!
//! Each of these starts a process (a fork of the gateway and an exec, which hold the
//! gateway's only async thread for a while and then compete with it for two cores) or
//! makes a request the first poll does not need. Between exec and the first poll they
//! tripled the time to the first `getUpdates`; beside it they cost nothing a user waits
//! for: a message in that first poll's answer finds its worker started by then, or starts
//! one as it would anyway.
//!
//! The gate opens when the `getMe` and webhook check sent beside the first `getUpdates`
//! are answered (that poll has gone out by then), or after [`AT_THE_LATEST`] whatever
//! Telegram does: an outage at boot (getMe failing and
//! retried) must not keep workers from starting, nor `READY=1` from being sent.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The gate opens by then even if the first poll has not been sent.
pub const AT_THE_LATEST: Duration = Duration::from_millis(200);

/// Cheap to clone; every clone is the same gate.
#[derive(Clone)]
pub struct FirstPoll {
    sent: CancellationToken,
    /// When start-up began: [`AT_THE_LATEST`] counts from here.
    since: tokio::time::Instant,
}

impl FirstPoll {
    pub fn new() -> FirstPoll {
        FirstPoll {
            sent: CancellationToken::new(),
            since: tokio::time::Instant::now(),
        }
    }

    /// Opens the gate (the first `getUpdates` is on its way). Opening it again does
    /// nothing.
    pub fn open(&self) {
        self.sent.cancel();
    }

    /// Resolves once the gate is open, or [`AT_THE_LATEST`] after start-up began.
    pub async fn passed(&self) {
        tokio::select! {
            _ = self.sent.cancelled() => {}
            _ = tokio::time::sleep_until(self.since + AT_THE_LATEST) => {}
        }
        // The request was handed to its connection's task just now; that task goes first,
        // so the poll is written before a fork holds this thread.
        tokio::task::yield_now().await;
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_gate_opens_with_the_first_poll_or_at_the_latest_bound() {
        let start = tokio::time::Instant::now();
        FirstPoll::new().passed().await;
        assert_eq!(start.elapsed(), AT_THE_LATEST);

        let gate = FirstPoll::new();
        let start = tokio::time::Instant::now();
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.passed().await }
        });
        gate.open();
        waiter.await.unwrap();
        assert!(start.elapsed() < AT_THE_LATEST);
    }
}
