//! `/stop`: cancel the chat's job in flight. Its worker's whole process group is killed
//! (tools included), and then the chat is told, so "stopped" means nothing of it still
//! runs. Messages waiting behind it (sent before the `/stop`) are ended with it: one reply
//! for all of them.
//!
//! `/stop` does not queue behind the very job it is meant to end: the router hands it to
//! the chat's [`InFlight`] slot the moment it arrives, and the job's own task sends the one
//! reply once the group is gone (one reply for the message and its `/stop`s).

use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

/// The chat's job in flight, if any, where `/stop` finds it.
#[derive(Default)]
pub struct InFlight(Mutex<Option<Running>>);

struct Running {
    cancel: CancellationToken,
    /// `/stop` messages that asked for this job's end; answered with it.
    stop_requests: Vec<i64>,
}

/// What a `/stop` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopping {
    /// The job is being ended; its task answers this `/stop` too.
    Cancelled,
    /// Nothing runs in the chat: the `/stop` needs its own answer.
    NothingRunning,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A job starts: the token `/stop` cancels it with.
    pub fn begin(&self) -> CancellationToken {
        let cancel = CancellationToken::new();
        *self.lock() = Some(Running {
            cancel: cancel.clone(),
            stop_requests: Vec::new(),
        });
        cancel
    }

    /// The job is over: the `/stop` messages that came for it, to answer with it.
    pub fn end(&self) -> Vec<i64> {
        self.lock()
            .take()
            .map(|running| running.stop_requests)
            .unwrap_or_default()
    }

    /// `/stop` (inbox row `row`) arrived.
    pub fn stop(&self, row: i64) -> Stopping {
        match self.lock().as_mut() {
            Some(running) => {
                running.stop_requests.push(row);
                running.cancel.cancel();
                Stopping::Cancelled
            }
            None => Stopping::NothingRunning,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_cancels_only_a_job_in_flight_and_is_answered_with_it() {
        let slot = InFlight::default();
        assert_eq!(slot.stop(1), Stopping::NothingRunning);
        let cancel = slot.begin();
        assert_eq!(slot.stop(2), Stopping::Cancelled);
        assert_eq!(slot.stop(3), Stopping::Cancelled);
        assert!(cancel.is_cancelled());
        assert_eq!(slot.end(), [2, 3]);
        assert_eq!(slot.stop(4), Stopping::NothingRunning);
    }
}
